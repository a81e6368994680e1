"""``storagebench workload generate|import|describe``."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import click

from seqvault.clierrors import BadUsage
from workloads import GeneratorConfig, WorkloadDirError, generate, import_log, open_workload
from workloads.loaders import FORMATS


@click.group()
def workload() -> None:
    """Generate, import and describe user-event workloads.

    A workload is a directory: Parquet chunks of the backfill (lifelong histories to bulk-load)
    and of the live stream (time-ordered appends and ranking reads), plus manifest.json with the
    schema, parameters, seed and summary statistics.
    """


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(GeneratorConfig)}
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}",
                                     param_hint="--set")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
        if key == "scenario_probs":
            out[key] = tuple(out[key])
    return out


def _finish(path: Path, summary: dict[str, Any]) -> None:
    click.echo(f"wrote {path}")
    _print_summary(summary)


@workload.command("generate")
@click.option("--preset", type=click.Choice(GeneratorConfig.PRESETS), default="small", show_default=True,
              help="Named scale: small (~2M backfill events), medium (10x), large (100x).")
@click.option("--users", type=click.IntRange(min=1), help="Number of users (overrides the preset).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--live-seconds", type=click.FloatRange(min=0, min_open=True), help="Length of the live window in trace seconds.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="Any other GeneratorConfig parameter, e.g. --set episode_prob=0.3 (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write the workload to.")
@click.option("--overwrite", is_flag=True, help="Replace an existing workload directory.")
@click.option("--chunk-events", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Backfill events per Parquet chunk (bounds memory).")
def generate_cmd(preset: str, users: int | None, seed: int, live_seconds: float | None,
                 settings: tuple[str, ...], out: Path, overwrite: bool, chunk_events: int) -> None:
    """Generate a synthetic workload and save it to --out."""
    overrides = _parse_set(settings)
    overrides["seed"] = seed
    if users is not None:
        overrides["users"] = users
    if live_seconds is not None:
        overrides["live_seconds"] = live_seconds
    try:
        cfg = GeneratorConfig.preset(preset, **overrides)
    except TypeError as e:  # an unknown --set name
        raise BadUsage(f"--set: {e}") from e
    wl = generate(cfg)
    path = wl.save(out, chunk_events=chunk_events, progress=True, overwrite=overwrite)
    _finish(path, wl.summary())


@workload.command("import")
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="csv/parquet need --mapping; taobao is UserBehavior.csv; movielens tells ratings.dat "
                   "(::), u.data (tab) and ratings.csv (header) apart by itself.")
@click.option("--mapping", help="Column mapping as JSON or a JSON file: {\"user\": COL, \"time\": COL, "
                                "\"fields\": {FIELD: COL}, \"time_unit\": \"s\"|\"ms\", \"actions\": "
                                "{\"pv\": \"click\"}, \"header\": true, \"columns\": [...], \"delimiter\": \",\"}.")
@click.option("--live-fraction", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1, show_default=True,
              help="Share of the log's time span (the end of it) that becomes the live stream.")
@click.option("--split-time", type=int, help="Split at this time (ms since epoch) instead of --live-fraction.")
@click.option("--skip-bad-rows", is_flag=True, help="Skip malformed rows (and report how many) instead of failing.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write the workload to.")
@click.option("--overwrite", is_flag=True, help="Replace an existing workload directory.")
def import_cmd(log: Path, fmt: str, mapping: str | None, live_fraction: float, split_time: int | None,
               skip_bad_rows: bool, out: Path, overwrite: bool) -> None:
    """Import the event log LOG as a workload and save it to --out."""
    try:
        with warnings.catch_warnings():  # the skipped rows are reported below instead
            warnings.simplefilter("ignore", UserWarning)
            wl = import_log(log, format=fmt, mapping=mapping, live_fraction=live_fraction,
                            skip_bad_rows=skip_bad_rows, split_time_ms=split_time)
    except TypeError as e:
        raise BadUsage(str(e)) from e
    path = wl.save(out, progress=True, overwrite=overwrite)
    src = wl.manifest["source"]
    click.echo(f"read {src['rows_read']:,} rows ({src['layout']}); skipped {src['rows_skipped']:,} bad rows")
    for example in src["bad_row_examples"]:
        click.echo(f"  skipped: {example}")
    _finish(path, wl.summary())


@workload.command("describe")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def describe_cmd(directory: Path, as_json: bool) -> None:
    """Print users, events, history-length percentiles, rates and skew of a saved workload."""
    try:
        wl = open_workload(directory)
        summary = wl.summary(progress=not as_json)
    except WorkloadDirError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        m = wl.manifest
        click.echo(f"{directory}: {m.get('kind')} workload, schema {wl.schema!r}, seed {m.get('seed')}")
        _print_summary(summary)


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    ev, hl, live, skew = s["events"], s["history_length"], s["live"], s["skew"]
    t = Table(show_header=False, box=None)
    rows = [
        ("users", f"{s['users']:,}"),
        ("events", f"{ev['total']:,} (backfill {ev['backfill']:,}, live {ev['live']:,})"),
        ("history length", f"p50 {hl['p50']:,.0f}  p90 {hl['p90']:,.0f}  p99 {hl['p99']:,.0f}  max {hl['max']:,}"),
        ("live window", f"{live['window_s']:,.1f} s"),
        ("reads", f"{live['reads']:,} ({live['reads_per_s']:,.1f}/s)"),
        ("appends", f"{live['appends']:,} ({live['appends_per_s']:,.1f}/s, "
                    f"{live['appended_events_per_s']:,.1f} events/s)"),
        ("skew (top 1% users)", f"{skew['top1pct_read_share']:.1%} of reads, "
                                f"{skew['top1pct_live_event_share']:.1%} of live events, "
                                f"{skew['top1pct_backfill_share']:.1%} of backfill"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)
