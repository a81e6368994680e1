"""Build the one-file HTML report from a set of result directories.

Every section either shows its data or says what is missing and which command produces it; a
broken or partial result never stops the rest of the page from rendering.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2
from plotly.offline import get_plotlyjs

from reports import charts
from reports.costs import (
    REPLAY_KINDS,
    SweepRun,
    all_store_costs,
    e2e_runs,
    ranker_capacities,
    store_runs,
    sweep_runs,
)
from reports.hlog import curve_from_hlog
from reports.loader import PRODUCED_BY, ResultSet, load_results, number, pick
from reports.planning import ASSUMPTIONS, PlanInputs, pick_ranker_capacities

TEMPLATES = Path(__file__).parent / "templates"

# The paper's own figures (LASER, section 4.2 Table 1 and 4.3 Table 2), quoted for comparison only.
PAPER_TABLE1 = {
    "rocksdb": {"cpu_cores": "4327.13", "cpu_usage": "16~24%", "p99": "3~5ms", "disk": "140 TiB"},
    "seqvault": {"cpu_cores": "3686.4", "cpu_usage": "~5%", "p99": "~2ms", "disk": "76.8 TiB"},
    "reduction": {"cpu_cores": "14.8%", "cpu_usage": "75%", "p99": "> 50%", "disk": "45%"},
}
PAPER_TABLE2 = (("Base", 1.3e7, 0.7802), ("DIN", 3.3e7, 0.7814), ("HSTU", 3.7e8, 0.7822),
                ("Transformer", 3.6e8, 0.7824), ("LASER", 4.0e7, 0.7826))
STAGES = ("queue", "fetch", "decode", "h2d", "forward", "total")
TABLE1_COLUMNS = (("cpu_cores", "CPU cores"), ("cpu_usage_pct", "CPU usage %"), ("p50_ms", "p50 ms"),
                  ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"), ("disk_bytes", "disk"),
                  ("ops_per_s", "ops/s"))
PLAN_FIELDS = {  # field -> (label, step) for the page's input form
    "dau": ("daily active users", "1000000"), "events_per_user_per_day": ("events per user per day", "1"),
    "seq_len": ("sequence length N", "100"), "peak_qps": ("peak ranking QPS", "1000"),
    "candidates": ("candidates per request", "10"), "replication": ("replication factor (per zone)", "1"),
    "zones": ("zones", "1"), "target_util": ("target CPU utilisation (0-1)", "0.05"),
    "node_cores": ("node cores", "1"), "node_dram_gib": ("node DRAM (GiB)", "16"),
    "node_ssd_tib": ("node SSD (TiB)", "0.5"), "ssd_headroom": ("SSD headroom (0.3 = 30%)", "0.05"),
}


def fmt_bytes(v: Any) -> str:
    n = number(v)
    if n is None:
        return "–"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def fmt_num(v: Any, digits: int = 3) -> str:
    n = number(v)
    if n is None:
        return "–" if v is None else str(v)
    if n != 0 and (abs(n) >= 1e7 or abs(n) < 1e-3):
        return f"{n:.{digits}g}"
    if abs(n) >= 100 or n.is_integer():
        return f"{n:,.0f}"
    return f"{n:,.{digits}g}" if abs(n) < 1 else f"{n:,.2f}"


def _missing(kind: str, what: str) -> str:
    return f"No {what} among the inputs. Produce it with `{PRODUCED_BY[kind]}` and pass that directory to storagebench report."


def _json_for_script(obj: Any) -> str:
    # keep "</script>" (and "<!--") from ending the inline block early
    return json.dumps(obj).replace("<", "\\u003c")


def _paper_rows(paper: Any) -> list[list[str]]:
    """The paper's Table 1 as [label, cpu cores, cpu usage, p99, disk] rows, from the file or our quote."""
    if isinstance(paper, dict) and isinstance(paper.get("rows"), dict):
        out = []
        for name, r in paper["rows"].items():
            if isinstance(r, dict):
                out.append([name, str(r.get("cpu_cores", "")), f"{r.get('cpu_usage_pct', '')}%",
                            f"{r.get('p99_ms', '')} ms", str(r.get("disk", ""))])
        red = paper.get("reduction_pct") if isinstance(paper.get("reduction_pct"), dict) else {}
        if red:
            out.append(["reduction"] + [f"{red.get(k, '')}%" for k in ("cpu_cores", "cpu_usage_pct", "p99_ms", "disk")])
        return out
    return [[name, r["cpu_cores"], r["cpu_usage"], r["p99"], r["disk"]] for name, r in PAPER_TABLE1.items()]


def _table1_section(results: ResultSet) -> dict[str, Any]:
    tables = []
    for res in results.of_kind("table1") + results.of_kind("run"):
        rows = res.data.get("rows") if isinstance(res.data.get("rows"), dict) else {}
        body = [{"store": name, "valid": r.get("valid", True),
                 "cells": [_cell(r, k) for k, _ in TABLE1_COLUMNS]}
                for name, r in rows.items() if isinstance(r, dict)]
        floor = res.data.get("floor")
        if isinstance(floor, dict):
            body.append({"store": "harness floor (null store)", "valid": floor.get("valid", True),
                         "cells": [_cell(floor, k) if k in ("p50_ms", "p99_ms", "p999_ms") else ""
                                   for k, _ in TABLE1_COLUMNS]})
        red = res.data.get("reduction_pct") if isinstance(res.data.get("reduction_pct"), dict) else {}
        reduction = [f"{number(red[k]):.1f}%" if number(red.get(k)) is not None else "" for k, _ in TABLE1_COLUMNS]
        warnings = res.data.get("warnings") if isinstance(res.data.get("warnings"), list) else []
        expected = {"rocksdb_lastn", "rocksdb_packed", "seqvault"}
        cluster = res.data.get("cluster") if isinstance(res.data.get("cluster"), dict) else None
        tables.append({"source": f"{res.kind}: {res.label}", "path": str(res.path), "rows": body,
                       "cluster": _cluster_line(cluster, rows) if cluster else None,
                       "reduction": reduction if any(reduction) else None,
                       "paper": _paper_rows(res.data.get("paper")), "warnings": [str(w) for w in warnings],
                       "crosscheck": res.data.get("crosscheck"),
                       "reduction_invalid": res.data.get("reduction_invalid_reason"),
                       "repeats": res.data.get("repeats", 1),
                       # a `run` measures the stores it was asked for; only table1 promises all three
                       "missing_rows": sorted(expected - set(rows)) if res.kind == "table1" else []})
    return {"tables": tables, "columns": [c for _, c in TABLE1_COLUMNS],
            "missing": None if tables else _missing("table1", "Table 1 result (table1.json)")}

def _cluster_line(cluster: dict[str, Any], rows: dict[str, Any]) -> str:
    """What a sharded run's rows are: merged cluster rows, with where the shards ran and their skew."""
    spec = cluster.get("spec") if isinstance(cluster.get("spec"), dict) else {}
    skews = [f"{name} {number(pick(r, 'skew.measured_ops.max_over_mean')):.2f}" for name, r in rows.items()
             if isinstance(r, dict) and number(pick(r, "skew.measured_ops.max_over_mean")) is not None]
    return (f"Each row is the merged cluster row of {spec.get('shards', '?')} shards (users hash-partitioned; "
            f"HDR histograms added, CPU and disk summed) on {cluster.get('nodes', '?')} Ray node(s), placement "
            f"{pick(cluster, 'placement.strategy') or '?'}, generators on {spec.get('generators_on', '?')} node(s)."
            + (f" Load skew (max/mean ops per shard): {', '.join(skews)}." if skews else ""))


def _cell(row: dict[str, Any], key: str) -> str:
    """A Table 1 cell: the value (median over repeats) and, with repeats, its [min-max]."""
    fmt = fmt_bytes if key == "disk_bytes" else fmt_num
    text = fmt(row.get(key))
    spread = row.get("spread", {}).get(key) if isinstance(row.get("spread"), dict) else None
    if isinstance(spread, list) and len(spread) == 2 and len(row.get("repeats") or []) > 1:
        text += f" [{fmt(spread[0])}-{fmt(spread[1])}]"
    return text


def _compare_section(results: ResultSet) -> dict[str, Any]:
    """One cost table per compare.json: the shoot-out as measured, with its prices and assumptions."""
    tables = []
    for res in results.of_kind("compare"):
        cmp = res.data.get("compare") if isinstance(res.data.get("compare"), dict) else {}
        rows = cmp.get("rows") if isinstance(cmp.get("rows"), dict) else {}
        blocks = res.data.get("rows") if isinstance(res.data.get("rows"), dict) else {}
        if not rows:
            results.problems.append(f"{res.path} has no \"compare.rows\" object of per-store costs; skipped")
            continue
        body = []
        for name, r in rows.items():
            if not isinstance(r, dict):
                continue
            cost = r.get("cost") if isinstance(r.get("cost"), dict) else {}
            block = blocks.get(name) if isinstance(blocks.get(name), dict) else r
            body.append({"store": name, "valid": r.get("valid", True),
                         "reasons": "; ".join(str(x) for x in r.get("invalid_reasons") or []),
                         "cells": [_cell(block, "cpu_usage_pct"), _cell(block, "p99_ms"), fmt_num(r.get("p999_ms")),
                                   fmt_bytes(r.get("disk_bytes")), fmt_num(r.get("dram_bytes_per_user")),
                                   fmt_num(r.get("cpu_us_per_op")),
                                   f"${fmt_num(r.get('cost_per_million_users_month'))}",
                                   f"${fmt_num(cost.get('cpu_usd'))}", f"${fmt_num(cost.get('dram_usd'))}",
                                   f"${fmt_num(cost.get('ssd_usd'))}"]})
        floor = res.data.get("floor") if isinstance(res.data.get("floor"), dict) else None
        prices = cmp.get("prices") if isinstance(cmp.get("prices"), dict) else {}
        assumptions = cmp.get("assumptions") if isinstance(cmp.get("assumptions"), list) else []
        tables.append({"source": res.label, "path": str(res.path), "rows": body, "users": cmp.get("users"),
                       "floor_p99": fmt_num(floor.get("p99_ms")) if floor else None,
                       "prices": [f"core-hour ${fmt_num(prices.get('core_hour_usd'), 4)}",
                                  f"DRAM ${fmt_num(prices.get('dram_gib_month_usd'))}/GiB-month",
                                  f"SSD ${fmt_num(prices.get('ssd_tib_month_usd'))}/TiB-month"] if prices else [],
                       "price_source": prices.get("source"), "repeats": number(res.data.get("repeats")) or 1,
                       "assumptions": [str(a) for a in assumptions]})
    return {"tables": tables, "columns": ["CPU usage %", "P99 ms", "p99.9 ms", "disk", "DRAM B / user",
                                          "CPU µs / op", "$ / M users / month", "CPU $", "DRAM $", "SSD $"],
            "missing": None if tables else _missing("compare", "store shoot-out (compare.json)")}


def _sweep_section(sweeps: list[SweepRun]) -> dict[str, Any]:
    """Latency-vs-throughput curves of every swept store on one chart, and each one's sustainable rate."""
    curves, rows = [], []
    for sw in sweeps:
        d = sw.doc
        steps = [s for s in d["steps"] if isinstance(s, dict)]
        curves.append({"label": f"{sw.store} ({sw.source})", "steps": steps, "slo_ms": d.get("slo_ms"),
                       "sustainable": d.get("sustainable_ops_per_s")})
        rows.append([sw.store, sw.source, fmt_num(d.get("slo_ms")), str(len(steps)), str(d.get("bound_by", "?"))
                     + ("" if d.get("complete", True) else " (sweep interrupted)"),
                     fmt_num(d.get("sustainable_ops_per_s")) if d.get("sustainable_ops_per_s") is not None
                     else "none within the SLO",
                     fmt_num(d.get("sustainable_ops_per_s_per_core")), fmt_num(d.get("cpu_usage_pct_at_sustainable")),
                     fmt_num(d.get("lowest_failing_ops_per_s"))])
    chart = charts.capacity_curves(curves, "chart-capacity") if curves else None
    return {"chart": chart, "rows": rows,
            "missing": None if chart else _missing("sweep", "capacity sweep (sweep.json)")}


def _latency_section(runs: list, results: ResultSet) -> dict[str, Any]:
    curves = []
    for res in [r for kind in REPLAY_KINDS for r in results.of_kind(kind)]:
        for hlog in res.hlogs:
            if ".service." in hlog.name:  # service-time logs are summarised in the table below
                continue
            label = f"{hlog.name.removesuffix('.hlog').removesuffix('.latency')} ({res.label})"
            try:
                curve = curve_from_hlog(hlog, label)  # results.py: values in microseconds
            except Exception as e:  # a corrupt log must not sink the page
                results.problems.append(f"{hlog} could not be read as an HdrHistogram log ({e}); skipped")
                continue
            if curve is not None:
                curves.append(curve)
    source = "HDR interval logs (hdr/*.hlog, latency from the intended start)"
    if not curves:
        curves, source = charts.curves_from_percentiles(runs), "recorded percentiles (no HDR log found)"
    ops_rows = []
    for run in runs:
        ops = run.get("latency")
        if isinstance(ops, dict):
            for op, s in ops.items():
                if isinstance(s, dict):
                    lat = s.get("latency") if isinstance(s.get("latency"), dict) else {}
                    svc = s.get("service") if isinstance(s.get("service"), dict) else {}
                    ops_rows.append([run.label, op, fmt_num(s.get("count", lat.get("count")))]
                                    + [fmt_num(lat.get(k)) for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")]
                                    + [fmt_num(svc.get("p99_ms"))])
    chart = charts.latency_curves(curves, "chart-latency", "Latency percentiles per store and operation") \
        if curves else None
    return {"chart": chart, "source": source, "ops_rows": ops_rows,
            "missing": None if chart else _missing("table1", "latency distributions (HDR logs or per-op percentiles)")}

def _resources_section(runs: list) -> dict[str, Any]:
    names = [r.label for r in runs]
    disk = charts.grouped_bars("Disk bytes per stored event", names,
                               {"on disk": [number(r.get("disk.bytes_per_event")) for r in runs]},
                               "chart-disk", "bytes / event")
    amp = charts.grouped_bars(
        "I/O amplification during the replay", names,
        {"write (device bytes / logical appended bytes)": [number(r.get("io.write_amplification")) for r in runs],
         "read (device bytes / bytes returned)": [number(r.get("io.read_amplification")) for r in runs]},
        "chart-amp", "× (log scale)", log_y=True)  # LastN's read-modify-write amplification dwarfs the rest
    rows = [[r.label, fmt_bytes(r.get("disk_bytes")), fmt_num(r.get("disk.bytes_per_event")),
             fmt_num(r.get("io.write_amplification")), fmt_num(r.get("io.read_amplification")),
             fmt_bytes(r.get("stats.dram_bytes")), fmt_bytes(r.get("stats.index_bytes")),
             fmt_num(r.get("cpu.cpu_s_per_op")), fmt_num(r.get("cpu_cores")), fmt_num(r.get("cpu_usage_pct")),
             "yes" if r.get("valid") is not False else "NO (backlog grew)"] for r in runs]
    return {"cpu_chart": charts.cpu_usage(runs, "chart-cpu"), "disk_chart": disk, "amp_chart": amp, "rows": rows,
            "missing": None if runs else _missing("table1", "store measurements (table1.json or run.json)")}



def _e2e_section(results: ResultSet) -> dict[str, Any]:
    rows = []
    budget = None
    for source, run, b in e2e_runs(results):
        budget = budget or b
        stages = run.get("stages") if isinstance(run.get("stages"), dict) else {}
        wire = run.get("wire_bytes") if isinstance(run.get("wire_bytes"), dict) else {}
        raw = number(wire.get("raw"))
        events = run.get("events_per_request", run.get("seq_len"))
        label = f"{run.get('store', '?')} + {run.get('model', '?')} (N={events}) on {run.get('device', '?')}"
        stage_rows = []
        for st in STAGES:
            s = stages.get(st) if isinstance(stages.get(st), dict) else {}
            p99 = number(s.get("p99_ms"))
            stage_rows.append([st, fmt_num(s.get("p50_ms")), fmt_num(s.get("p99_ms")), fmt_num(s.get("p999_ms")),
                               f"{100 * p99 / b:.1f}%" if p99 is not None and b else "–"])
        wire_rows = [[k, fmt_num(wire.get(k)), (f"{100 * (1 - number(wire[k]) / raw):.1f}%"
                                                if raw and number(wire.get(k)) is not None else "–")]
                     for k in ("raw", "zstd", "zstd_dict") if k in wire]
        rows.append({"label": label, "source": source, "stages": stages, "stage_rows": stage_rows,
                     "wire_rows": wire_rows, "budget_ms": b, "note": run.get("note"),
                     "facts": _e2e_facts(run, b)})
    chart = charts.e2e_breakdown(rows, budget, "chart-e2e") if rows else None
    return {"runs": rows, "chart": chart, "budget_ms": budget,
            "missing": None if rows else _missing("e2e", "end-to-end result (e2e.json)")}


def _e2e_facts(run: dict[str, Any], budget_ms: float | None) -> dict[str, Any]:
    facts = {k: run.get(k) for k in ("store", "model", "device", "seq_len", "candidates", "top_k", "rate_per_s",
                                     "max_rate_within_budget_per_s") if k in run}
    if "max_rate_within_budget_per_s" in facts and facts["max_rate_within_budget_per_s"] is None:
        facts["max_rate_within_budget_per_s"] = f"none: no searched rate kept total p99 within {fmt_num(budget_ms)} ms"
    batching = run.get("batching")
    if isinstance(batching, dict):
        facts["batching"] = (f"up to {batching.get('max_batch')} requests, waiting at most "
                             f"{fmt_num(batching.get('max_wait_ms'))} ms")
    flops = run.get("flops") if isinstance(run.get("flops"), dict) else {}
    if number(flops.get("per_request_macs")) is not None:
        facts["MACs per request"] = (f"{fmt_num(flops.get('per_request_macs'))} (history side "
                                     f"{fmt_num(flops.get('history_macs'))} + C x {fmt_num(flops.get('per_candidate_macs'))})")
    stored = run.get("stored") if isinstance(run.get("stored"), dict) else {}
    if number(stored.get("disk_bytes_per_user")) is not None:
        facts["bytes stored per user"] = fmt_num(stored.get("disk_bytes_per_user"))
    vector = number((run.get("wire") or {}).get("vector_bytes_per_request")) if isinstance(run.get("wire"), dict) else None
    if vector:
        facts["cached vector bytes per request"] = fmt_num(vector)
    live = pick(run, "refresh.live", default=None)
    if isinstance(live, dict):
        stale = live.get("staleness_events") if isinstance(live.get("staleness_events"), dict) else {}
        facts["refresh"] = (f"{fmt_num(live.get('cpu_us_per_event'))} µs CPU per live event, "
                            f"{fmt_num(live.get('refreshes_per_1k_events'))} refreshes per 1k events; staleness "
                            f"at read p50 {fmt_num(stale.get('p50'))} / p99 {fmt_num(stale.get('p99'))} events")
    return facts


def _scalar_table(title: str, rows: list[Any]) -> dict[str, Any] | None:
    rows = [r for r in rows if isinstance(r, dict)]
    cols = [k for k in dict.fromkeys(k for r in rows for k in r)
            if not any(isinstance(r.get(k), dict | list) for r in rows)]  # nested config: see Configuration
    if not rows or not cols:
        return None
    return {"title": title, "columns": cols, "rows": [[fmt_num(r.get(c), 4) for c in cols] for r in rows]}


def _models_section(results: ResultSet) -> dict[str, Any]:
    # AUC gain over each table's own Base (percentage points): comparable across data sets, AUC levels are not
    paper_base = PAPER_TABLE2[0][2]
    points = [("paper (Xiaohongshu Ads, Table 2)", m, f, round(100 * (a - paper_base), 4)) for m, f, a in PAPER_TABLE2]
    tables = []
    for res in results.of_kind("paper_tables"):
        t = res.data.get("tables") if isinstance(res.data.get("tables"), dict) else {}
        t2 = [r for r in t.get("table2") or [] if isinstance(r, dict)] if isinstance(t.get("table2"), list) else []
        series = f"this repo ({pick(res.data, 'setting.source', default=res.label)})"
        for row in t2:
            f = number(row.get("flops"))
            gain = 0.0 if str(row.get("model", "")).lower() == "base" else number(row.get("auc_gain_pts"))
            if f and gain is not None:
                points.append((series, str(row.get("model")), f, gain))
        if res.data.get("complete") is False:
            results.problems.append(f"{res.path} is incomplete (some training runs have not finished); "
                                    f"finish it with storagebench paper-tables --resume")
        for key in ("heuristics", "table2", "table3", "table4"):
            table = _scalar_table(f"{key} ({res.label})", t.get(key) if isinstance(t.get(key), list) else [])
            if table:
                tables.append(table)
    flops_rows = [r for res in results.of_kind("flops")
                  for r in (res.data.get("rows") if isinstance(res.data.get("rows"), list) else [])
                  if isinstance(r, dict)]
    serve_rows = [r for res in results.of_kind("serve_bench")
                  for r in (res.data.get("cells") if isinstance(res.data.get("cells"), list) else [])
                  if isinstance(r, dict)]
    missing = []
    if not results.of_kind("paper_tables"):
        missing.append(_missing("paper_tables", "paper_tables.json (AUC of this repo's models)"))
    if not flops_rows:
        missing.append(_missing("flops", "FLOPs measurement (flops.json)"))
    if not serve_rows:
        missing.append(_missing("serve_bench", "serving benchmark (serve_bench.json)"))
    return {"auc_chart": charts.flops_vs_auc(points, "chart-auc"), "tables": tables,
            "flops_chart": charts.flops_by_length(flops_rows, "chart-flops"),
            "flops_request_chart": charts.flops_per_request(flops_rows, "chart-flops-request"),
            "flops_table": _scalar_table("FLOPs per (user, candidate) and per request at C candidates", flops_rows),
            "serve_table": _scalar_table("Serving throughput (serve-bench)", serve_rows),
            "missing": missing}

def _planning_section(runs: list, sweeps: list[SweepRun], results: ResultSet, inputs: PlanInputs) -> dict[str, Any]:
    costs, incomplete = all_store_costs(runs, sweeps)
    caps = ranker_capacities(results)
    return {"inputs": asdict(inputs), "fields": PLAN_FIELDS, "costs": [asdict(c) for c in costs],
            "rankers": [asdict(r) for r in caps], "incomplete": incomplete, "assumptions": ASSUMPTIONS,
            "data_json": _json_for_script({"inputs": asdict(inputs), "stores": [asdict(c) for c in costs],
                                           "rankers": [asdict(r) for r in caps]}),
            "initial_rankers": [asdict(r) for r in pick_ranker_capacities(caps, inputs.seq_len)],
            "missing": None if costs else _missing("table1", "store with complete per-operation costs")}


def _config_section(results: ResultSet) -> list[dict[str, Any]]:
    out = []
    for res in results.results:
        d = res.data
        blocks = {k: json.dumps(d[k], indent=2, default=str) for k in
                  ("machine", "workload", "run_config", "schedule", "stores", "setting", "task", "budget_ms",
                   "warnings", "crosscheck", "notes", "convention", "scope", "device", "device_name", "torch")
                  if k in d}
        out.append({"label": res.label, "kind": res.kind, "path": str(res.path), "note": d.get("note"),
                    "created": d.get("created"), "blocks": blocks})
    return out

def build_context(results: ResultSet, inputs: PlanInputs | None = None,
                  sources: Iterable[str] = ()) -> dict[str, Any]:
    inputs = inputs or PlanInputs()
    runs = store_runs(results)
    sweeps = sweep_runs(results)
    latency = _latency_section(runs, results)  # may add problems (bad logs): build it before reading them
    return {
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "sources": list(sources),
        "kinds": sorted(results.kinds),
        "fixture_notes": sorted({str(r.data["note"]) for r in results.results if r.data.get("note")}),
        "table1": _table1_section(results),
        "latency": latency,
        "compare": _compare_section(results),
        "sweep": _sweep_section(sweeps),
        "resources": _resources_section(runs),
        "e2e": _e2e_section(results),
        "models": _models_section(results),
        "planning": _planning_section(runs, sweeps, results, inputs),
        "config": _config_section(results),
        "problems": results.problems,
    }


def render_html(results: ResultSet, inputs: PlanInputs | None = None, sources: Iterable[str] = ()) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["bytes"] = fmt_bytes
    env.filters["num"] = fmt_num
    template = env.get_template("report.html.j2")
    ctx = build_context(results, inputs, sources)
    return template.render(**ctx, plotly_js=get_plotlyjs(), planning_js=(TEMPLATES / "planning.js").read_text(),
                           style_css=(TEMPLATES / "style.css").read_text())


def write_report(paths: Iterable[str | Path], output: str | Path, inputs: PlanInputs | None = None,
                 results: ResultSet | None = None) -> ResultSet:
    """Load ``paths`` (unless ``results`` already holds them), render the report to ``output``
    (written atomically) and return what was loaded."""
    paths = [str(p) for p in paths]
    if results is None:
        results = load_results(paths)
    html = render_html(results, inputs, paths)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a report
    return results
