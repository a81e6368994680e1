"""The ``seqvault`` command: verify, stats and dump a store directory."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click
import numpy as np

from seqvault.clierrors import GuardedGroup
from seqvault.errors import SeqVaultError
from seqvault.schema import SchemaError

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect a SeqVault store (a directory made by SeqVault.open).

    \b
    seqvault verify PATH      check every record, data file and WAL segment (read-only)
    seqvault stats PATH       sizes and counts as JSON
    seqvault dump PATH USER   one user's events, oldest first
    seqvault recover PATH     open, replay and merge the WAL; --salvage past mid-log damage
    seqvault crashtest        kill / power-loss campaign against the engine; non-zero on any loss

    An error is one line on stderr; add --debug to any command for the full traceback.
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
@click.argument("user", type=click.IntRange(0, 2**64 - 1))
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


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--salvage", is_flag=True,
              help="Open even if the WAL is damaged in the middle: keep every intact record, drop the damaged "
                   "bytes (each stretch is listed), and merge at once so the damaged segments are gone.")
def recover(path: str, salvage: bool) -> None:
    """Open the store, replay its WAL (cutting a torn tail) and merge everything into data files.

    Without --salvage a WAL damaged in the middle (not just torn at its end by a crash) is refused
    and nothing is changed; `seqvault verify` shows where. Prints what was cut or dropped as JSON."""
    from seqvault.engine import SeqVault

    def run() -> dict:
        with SeqVault.open(path, create=False, salvage=salvage) as sv:
            merged = sv.merge()
            return {**sv.recovery_report, "merged_users": merged, "users": sv.stats()["users"]}

    click.echo(json.dumps(_run(run), indent=2))


@main.command()
@click.option("--trials", type=click.IntRange(min=1), default=200, show_default=True,
              help="Trials in all (alternating over the modes).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Campaign seed; a failing trial prints the seed and trial count that replay it.")
@click.option("--mode", type=click.Choice(["kill", "powerloss", "both"]), default="both", show_default=True,
              help="kill: SIGKILL a forked writer at a named kill point or a random time; powerloss: cut "
                   "a simulated disk's power at a random I/O call and keep only what was fsynced.")
@click.option("--dir", "root", type=click.Path(file_okay=False), default=None,
              help="Where trial stores go (default: a temporary directory, removed afterwards).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def crashtest(trials: int, seed: int, mode: str, root: str | None, as_json: bool) -> None:
    """Crash the engine over and over and check that no acknowledged event is lost or duplicated.

    \b
    Each trial replays a seeded workload (synced appends, deletes, merges, reclamations,
    bulk loads) on a tiny-file store, crashes it, reopens it and compares every user with
    the state after the last acknowledged operation (or the one in flight). Exits 1 on any
    lost or duplicated event, mismatch, verify failure or store that does not reopen.

    \b
      seqvault crashtest --trials 1000 --mode kill --seed 7
      seqvault crashtest --trials 1000 --mode powerloss"""
    import tempfile

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from seqvault.crashtest import MODES, run_campaign

    modes = MODES if mode == "both" else (mode,)
    with tempfile.TemporaryDirectory(prefix="seqvault-crashtest-") as tmp, \
            Progress(TextColumn("crash trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     TextColumn("{task.fields[status]}"), console=_stderr_console(), transient=True) as bar:
        task = bar.add_task("trials", total=trials, status="")

        def progress(r: object) -> None:
            bar.update(task, completed=r.trials, status=f"lost {r.lost} dup {r.duplicated} bad {len(r.failures)}")

        result = run_campaign(root or tmp, trials, seed, modes, progress)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        points = sum(result.kills_at_points.values())
        click.echo(f"trials: {result.trials} ({result.kill_trials} kill, {result.powerloss_trials} power loss)")
        click.echo(f"kill points hit: {points} trials at {len(result.kills_at_points)} distinct points; "
                   f"random-time kills: {result.random_kills}; power cuts: {result.power_cuts}")
        click.echo(f"acknowledged operations: {result.acked_ops}; acknowledged events checked: "
                   f"{result.acked_events_checked}")
        click.echo(f"lost: {result.lost}  duplicated: {result.duplicated}  mismatched trials: "
                   f"{result.mismatched_trials}  verify failures: {result.verify_failures}  "
                   f"unrecoverable: {result.unrecoverable}")
        for line in result.failures[:20]:
            click.echo(f"FAIL {line}")
        click.echo("OK" if result.ok else "FAILED")
    sys.exit(0 if result.ok else 1)


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
