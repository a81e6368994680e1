"""``storagebench plan``: the report's capacity-planning model, for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

# option name -> (PlanInputs field, type, help)
_OPTIONS: tuple[tuple[str, str, click.ParamType, str], ...] = (
    ("--dau", "dau", click.FloatRange(min=0, min_open=True), "Daily active users (each has a stored sequence)."),
    ("--events-per-user-per-day", "events_per_user_per_day", click.FloatRange(min=0, min_open=True), "Appended events per user per day."),
    ("--seq-len", "seq_len", click.IntRange(min=1), "Sequence length N kept per user and read per request."),
    ("--peak-qps", "peak_qps", click.FloatRange(min=0, min_open=True), "Peak ranking requests per second, all zones together."),
    ("--candidates", "candidates", click.IntRange(min=1), "Candidates scored per ranking request."),
    ("--replication", "replication", click.IntRange(min=1), "Copies of the data within each zone."),
    ("--zones", "zones", click.IntRange(min=1), "Zones, each holding the full data set."),
    ("--target-util", "target_util", click.FloatRange(min=0, max=1, min_open=True), "Target CPU utilisation, 0-1 (0.5 = 50%)."),
    ("--node-cores", "node_cores", click.IntRange(min=1), "CPU cores per storage node."),
    ("--node-dram-gib", "node_dram_gib", click.FloatRange(min=0, min_open=True), "DRAM per storage node, GiB."),
    ("--node-ssd-tib", "node_ssd_tib", click.FloatRange(min=0, min_open=True), "SSD per storage node, TiB."),
    ("--ssd-headroom", "ssd_headroom", click.FloatRange(min=0), "Free SSD kept on top of the data, 0.3 = 30%."),
)


def plan_input_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The PlanInputs fields as click options, defaults from PlanInputs (shared with `report`)."""
    from reports.planning import PlanInputs

    defaults = {fl.name: fl.default for fl in fields(PlanInputs)}
    for opt, name, typ, help_text in reversed(_OPTIONS):
        f = click.option(opt, name, type=typ, default=defaults[name], show_default=True, help=help_text)(f)
    return f


def _fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


@click.command("plan")
@click.option("--results", "results", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Result directory with measured costs (table1 / run; serve-bench and e2e for ranking). Repeatable.")
@plan_input_options
@click.option("--json", "as_json", is_flag=True, help="Print the whole plan as JSON (inputs, costs, assumptions).")
def plan(results: tuple[Path, ...], as_json: bool, **plan_inputs: float) -> None:
    """Size the fleet from measured per-operation costs: for each store, nodes, cores, DRAM (index +
    buffers + cache) and SSD (data + amplification + headroom) per zone and in total, and the ranking
    devices needed for the peak QPS. The same model as the report's capacity-planning section; every
    assumption is printed with --json and on the report page.

    Example: storagebench plan --results results/table1 --dau 2e8 --peak-qps 150000 --json
    """
    from reports import PlanInputs, PlanningError, plan_from_results

    try:
        out = plan_from_results(results, PlanInputs(**plan_inputs))
    except PlanningError as e:
        raise click.ClickException(f"cannot plan: {e}") from e
    for problem in out["problems"]:
        click.echo(f"warning: {problem}", err=True)
    for msg in out["not_planned"]:
        click.echo(f"not planned: {msg}", err=True)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    if not out["stores"] and not out["rankers"]:
        raise click.ClickException(
            "no store or ranker with measured costs under " + ", ".join(map(str, results))
            + "; pass a directory written by `storagebench table1`, `run`, `serve-bench` or `e2e`")
    from rich.console import Console
    from rich.table import Table

    inputs = out["inputs"]
    table = Table(title=f"Storage fleet: {inputs['dau']:,.0f} users, N={inputs['seq_len']}, "
                        f"{inputs['peak_qps']:,.0f} QPS, {inputs['zones']} zones x {inputs['replication']} replicas")
    for col in ("store", "nodes/zone", "bound by", "cores/zone", "DRAM/zone", "SSD/zone", "nodes", "cores",
                "DRAM", "SSD"):
        table.add_column(col, justify="left" if col in ("store", "bound by") else "right", no_wrap=col == "store")
    for s in out["stores"]:
        table.add_row(s["store"], str(s["nodes_zone"]), s["binding"], f"{s['cores_zone']:,.1f}",
                      _fmt_bytes(s["dram_bytes_zone"]), _fmt_bytes(s["ssd_bytes_zone"]), str(s["nodes_total"]),
                      f"{s['cores_total']:,.1f}", _fmt_bytes(s["dram_bytes_total"]), _fmt_bytes(s["ssd_bytes_total"]))
    console = Console()
    console.print(table)
    if out["rankers"]:
        rt = Table(title=f"Ranking devices at {inputs['candidates']} candidates per request")
        for col in ("model on device (source)", "measured at L", "req/s per device", "devices/zone", "devices"):
            rt.add_column(col, justify="left" if col.startswith("model") else "right")
        for r in out["rankers"]:
            rt.add_row(r["label"], str(r["seq_len"]), f"{r['requests_per_s_per_device']:,.1f}",
                       str(r["devices_zone"]), str(r["devices_total"]))
        console.print(rt)
    console.print("Assumptions:", style="bold")
    for a in out.get("assumptions", []):
        console.print(f"- {a}", style="dim")
    for c in out.get("costs", []):
        if c.get("source"):
            console.print(f"- {c['store']}: measured in {c['source']}", style="dim")
