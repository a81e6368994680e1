"""The ``seqvault`` command: verify, stats and dump a store directory."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click
import numpy as np

from seqvault.errors import SeqVaultError
from seqvault.schema import SchemaError

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect a SeqVault store (a directory made by SeqVault.open).

    \b
    seqvault verify PATH      check every record, data file and WAL segment (read-only)
    seqvault stats PATH       sizes and counts as JSON
    seqvault dump PATH USER   one user's events, oldest first
    """


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def verify(path: str, as_json: bool) -> None:
    """Check every indexed record (checksum, header, decode), walk each data file and each WAL
    segment, and report every bad record. Read-only: a torn WAL tail is reported, not cut.
    Exits with status 1 if anything is wrong."""
    from rich.progress import Progress

    from seqvault.verify import verify_store

    # The bar goes to stderr so `--json` output stays clean on stdout.
    with Progress(transient=True, console=_stderr_console()) as bar:
        task = bar.add_task("verifying data files", total=None)
        report = _run(lambda: verify_store(path, lambda done, total: bar.update(task, completed=done, total=total)))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"{path}: {report.users} users, {report.records_checked} records checked, "
                   f"{report.events} events, {report.wal_records} WAL records")
        for p in report.problems:
            where = ", ".join(x for x in (f"offset {p.offset}" if p.offset is not None else "",
                                          f"user {p.user_id}" if p.user_id is not None else "") if x)
            click.echo(f"BAD {p.kind}: {p.path}{' (' + where + ')' if where else ''}: {p.message}")
        click.echo("OK" if report.ok else f"{len(report.problems)} problem(s) found")
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
def stats(path: str) -> None:
    """Users, events, bytes on disk and in DRAM, merges and dead bytes, as JSON.

    Opens the store (so it must not be open elsewhere); opening replays the WAL."""
    from seqvault.engine import SeqVault

    def run() -> dict:
        with SeqVault.open(path, create=False) as sv:
            return sv.stats()

    click.echo(json.dumps(_run(run), indent=2))


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.argument("user", type=int)
@click.option("--last-n", type=click.IntRange(min=0), default=None, help="Only the newest N events.")
@click.option("--fields", default=None, help="Comma-separated fields to show (default: all).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def dump(path: str, user: int, last_n: int | None, fields: str | None, fmt: str) -> None:
    """Print USER's events, oldest first."""
    from seqvault.engine import SeqVault

    def run() -> dict[str, np.ndarray]:
        with SeqVault.open(path, create=False) as sv:
            return sv.get(user, last_n=last_n, fields=fields.split(",") if fields else None)

    cols = _run(run)
    names = list(cols)
    rows = list(zip(*(cols[n].tolist() for n in names), strict=True))
    if fmt == "json":
        click.echo(json.dumps({"user_id": user, "events": [dict(zip(names, r, strict=True)) for r in rows]}))
    elif fmt == "csv":
        click.echo(",".join(names))
        for r in rows:
            click.echo(",".join(str(v) for v in r))
    else:
        widths = [max([len(n)] + [len(str(r[i])) for r in rows]) for i, n in enumerate(names)]
        click.echo("  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True)))
        for r in rows:
            click.echo("  ".join(str(v).rjust(w) for v, w in zip(r, widths, strict=True)))
        click.echo(f"({len(rows)} events for user {user})")


def _stderr_console() -> Console:
    from rich.console import Console
    return Console(stderr=True)


class StoreError(click.ClickException):
    exit_code = 2


def _run(fn: Callable[[], T]) -> T:
    """Turn the store's own errors into a clean message and exit status 2."""
    try:
        return fn()
    except (SeqVaultError, SchemaError) as e:
        raise StoreError(str(e)) from e


if __name__ == "__main__":
    main()
