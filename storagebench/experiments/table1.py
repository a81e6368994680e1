"""Table 1 of the paper, measured here: RocksDB LastN vs RocksDB packed vs SeqVault on one workload.

SeqVault runs first: its DRAM (index + update buffer) after the window sets the block-cache size of
both RocksDB stores, so every store gets the same DRAM budget.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from storagebench.crosscheck import CrossCheckError, compare_samples
from storagebench.experiments.run import RunConfig, WorkloadLike, prepare, run_store
from storagebench.measure import machine_info
from storagebench.results import write_result

TABLE1_ROWS = ("rocksdb_lastn", "rocksdb_packed", "seqvault")
RUN_ORDER = ("seqvault", "rocksdb_packed", "rocksdb_lastn")
ROW_LABELS = {"rocksdb_lastn": "RocksDB LastN", "rocksdb_packed": "RocksDB packed", "seqvault": "SeqVault"}
REDUCED = ("cpu_cores", "cpu_usage_pct", "p50_ms", "p99_ms", "p999_ms", "disk_bytes")

# Scales: the workload preset, replay speed and window. `small` is what `tox -e bench` runs on 2 cores:
# its trace offers ~1,200 ops/s (reads plus 10 ingestion batches/s); at 0.25x (~300 ops/s) the
# RocksDB LastN node, the costliest, measured ~55 % of its one core on a shared 2-core machine:
# loaded, with headroom, no backlog. 20 s warm-up, then 120 s measured: several SeqVault merges and
# many RocksDB flushes and compactions happen inside the window.
SCALES: dict[str, dict[str, Any]] = {
    "small": {"preset": "small", "speed": 0.25, "warmup_s": 20.0, "window_s": 120.0},
    "medium": {"preset": "medium", "speed": 0.25, "warmup_s": 30.0, "window_s": 180.0},
    "large": {"preset": "large", "speed": 1.0, "warmup_s": 60.0, "window_s": 300.0},
}

PAPER_TABLE1 = {
    "source": "LASER (Xiaohongshu, 2026), section 4.2, Table 1: production, CPU cores per zone",
    "rows": {
        "rocksdb_lastn": {"cpu_cores": 4327.13, "cpu_usage_pct": "16~24", "p99_ms": "3~5", "disk": "140 TiB"},
        "seqvault": {"cpu_cores": 3686.4, "cpu_usage_pct": "~5", "p99_ms": "~2", "disk": "76.8 TiB"},
    },
    "reduction_pct": {"cpu_cores": 14.8, "cpu_usage_pct": 75, "p99_ms": "> 50", "disk": 45},
}


def measure_stores(wl: WorkloadLike, cfg: RunConfig, stores: Sequence[str], out_dir: str, *,
                   match_dram: bool = False, keep_stores: bool = False,
                   console: Console | None = None) -> dict[str, Any]:
    """Prepare the schedule once, measure each store in turn, cross-check. Returns the result document
    (without writing it); raises :class:`CrossCheckError` after recording the mismatch in the document."""
    console = console or Console(stderr=True)
    hdr_dir = os.path.join(out_dir, "hdr")
    os.makedirs(hdr_dir, exist_ok=True)
    store_root = os.path.join(out_dir, "stores")
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    rows: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    warnings: list[str] = []
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("prepare schedule", total=None)
        prepared = prepare(wl, cfg)
        bar.update(task, total=1, completed=1)
        for store in stores:
            tasks = {"load": bar.add_task(f"{store}: bulk load", total=prepared.backfill_events),
                     "replay": bar.add_task(f"{store}: replay", total=len(prepared.schedule))}

            def progress(phase: str, done: int, total: int, tasks: dict = tasks) -> None:
                bar.update(tasks[phase], completed=done, total=total)

            bar.console.log(f"{store}: bulk-loading {prepared.backfill_events:,} events, then replaying "
                            f"{len(prepared.schedule):,} ops ({prepared.schedule_info['warmup_s']:.0f} s warm-up, "
                            f"{prepared.schedule_info['window_s']:.0f} s measured)")
            block, sample = run_store(wl, prepared, store, os.path.join(store_root, store), cfg,
                                      hist_log_dir=hdr_dir, progress=progress)
            bar.console.log(f"{store}: done: read p99 {block['p99_ms']:.2f} ms, CPU {block['cpu_usage_pct']:.1f}%, "
                            f"{block['ops_per_s']:.0f} ops/s, disk {block['disk_bytes'] / 2**20:.1f} MiB"
                            + ("" if block["valid"] else " [red](backlog grew: not valid)[/red]"))
            rows[store] = block
            samples[store] = sample
            warnings += [f"{store}: {w}" for w in block["warnings"]]
            if block["backlog"]["started_backlogged"]:
                warnings.append(
                    f"{store}: the window opened on a backlog left by warm-up (read p50 from intended start "
                    f"{block['backlog']['latency_first_tenth_p50_ms']:.1f} ms in the first tenth, "
                    f"{block['backlog']['latency_last_tenth_p50_ms']:.1f} ms in the last): its percentiles mix "
                    f"in that transient and are not valid. Lengthen --warmup-s.")
            elif not block["valid"]:
                warnings.append(
                    f"{store}: backlog grew during the window (read p50 from intended start went from "
                    f"{block['backlog']['latency_first_tenth_p50_ms']:.1f} to "
                    f"{block['backlog']['latency_last_tenth_p50_ms']:.1f} ms): the offered rate is above what "
                    f"it sustains here; its percentiles are not valid. Lower --speed/--rate.")
            if match_dram and store == "seqvault":
                cfg = replace(cfg, dram_budget_bytes=seqvault_dram_budget(block, wl.schema.row_bytes))
    if not keep_stores:
        shutil.rmtree(store_root, ignore_errors=True)
    doc: dict[str, Any] = {
        "machine": machine_info(out_dir),
        "workload": wl.manifest,
        "run_config": asdict(cfg),
        "schedule": prepared.schedule_info,
        "stores": {name: rows[name]["config"] for name in rows},
        "rows": rows,
        "hdr_logs": sorted(os.path.join("hdr", f) for f in os.listdir(hdr_dir)),
        "warnings": warnings,
    }
    try:
        doc["crosscheck"] = compare_samples(prepared.crosscheck_users, samples)
    except CrossCheckError as e:
        doc["crosscheck"] = {"identical": False, "error": str(e), "users": len(prepared.crosscheck_users),
                             "stores": list(samples)}
        doc["crosscheck_failed"] = True
    return doc


def seqvault_dram_budget(block: dict[str, Any], row_bytes: int) -> int:
    """SeqVault's DRAM budget: its hash index as measured plus a full update buffer (the merge
    policy's event limit, each event with its user id). This, not the momentary buffer fill,
    is what an operator provisions, so it sizes the RocksDB block caches."""
    stats, policy = block["stats"], block["config"].get("merge_policy", {})
    full_buffer = int(policy.get("max_buffer_events", 0)) * (row_bytes + 8)
    return max(int(stats.get("index_bytes", 0)) + full_buffer, int(stats.get("dram_bytes", 0)), 1 << 20)


def reduction_pct(rows: dict[str, Any]) -> dict[str, float | None]:
    """100 * (1 - SeqVault / RocksDB LastN) per headline metric."""
    base, new = rows.get("rocksdb_lastn"), rows.get("seqvault")
    if not base or not new:
        return {}
    return {k: (100.0 * (1.0 - new[k] / base[k]) if base[k] else None) for k in REDUCED}


def run_table1(wl: WorkloadLike, cfg: RunConfig, out_dir: str, *, keep_stores: bool = False,
               console: Console | None = None) -> dict[str, Any]:
    """Measure the three stores, write ``table1.json``/``.csv`` and the HDR logs; return the document."""
    doc = measure_stores(wl, cfg, RUN_ORDER, out_dir, match_dram=True, keep_stores=keep_stores, console=console)
    doc["rows"] = {k: doc["rows"][k] for k in TABLE1_ROWS if k in doc["rows"]}
    doc["reduction_pct"] = reduction_pct(doc["rows"])
    doc["paper"] = PAPER_TABLE1
    write_result(out_dir, "table1", doc)
    if doc.get("crosscheck_failed"):
        raise CrossCheckError(doc["crosscheck"]["error"])
    return doc


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def render_tables(doc: dict[str, Any], console: Console) -> None:
    """Print Table 1 in the paper's shape, then the detail table."""
    rows = doc["rows"]
    cfg = doc["run_config"]
    t = Table(title=f"Table 1, measured here ({doc['machine']['cpu_model']}, io={cfg['io']})",
              caption=(f"CPU cores: to serve {cfg['target_qps']:,.0f} ops/s at {cfg['target_utilisation']:.0%} "
                       f"utilisation. P99: reads, from intended start. "
                       f"Paper: RocksDB 4327 cores, 16~24%, 3~5 ms, 140 TiB; SeqVault 3686, ~5%, ~2 ms, 76.8 TiB; "
                       f"reduction 14.8%, 75%, >50%, 45%."))
    for col in ("", "CPU cores", "CPU usage", "P99 (ms)", "Disk"):
        t.add_column(col, justify="right" if col else "left")
    for name, block in rows.items():
        mark = "" if block["valid"] else " (backlog!)"
        t.add_row(ROW_LABELS.get(name, name) + mark, f"{block['cpu_cores']:.1f}", f"{block['cpu_usage_pct']:.1f}%",
                  f"{block['p99_ms']:.2f}", _fmt_bytes(block["disk_bytes"]))
    red = doc.get("reduction_pct") or {}
    if red:
        t.add_row("Reduction", *(_fmt(red.get(k), ".1f") + "%" for k in ("cpu_cores", "cpu_usage_pct", "p99_ms",
                                                                          "disk_bytes")), style="bold")
    console.print(t)
    d = Table(title="Detail (reads from intended start; service = store call alone)")
    for col in ("", "p50 ms", "p99.9 ms", "svc p99", "append p99", "ops/s got/offered",
                "B/event", "write amp", "read amp", "CPU µs/op", "gen lag p99"):
        d.add_column(col, justify="right" if col else "left")
    for name, block in rows.items():
        lat = block["latency"]
        d.add_row(ROW_LABELS.get(name, name), f"{block['p50_ms']:.2f}", f"{block['p999_ms']:.2f}",
                  f"{lat['read']['service']['p99_ms']:.2f}", f"{lat['append']['latency']['p99_ms']:.2f}",
                  f"{block['ops_per_s']:.0f}/{block['offered_ops_per_s']:.0f}",
                  _fmt(block["disk"]["bytes_per_event"], ".1f"), _fmt(block["io"]["write_amplification"], ".2f"),
                  _fmt(block["io"]["read_amplification"], ".2f"), f"{1e6 * block['cpu']['cpu_s_per_op']:.0f}",
                  f"{block['generator']['dispatch_lag_p99_ms']:.1f}")
    console.print(d)
    cc = doc.get("crosscheck", {})
    if cc:
        console.print(f"cross-check: {cc.get('users')} users, stores {', '.join(cc.get('stores', []))}: "
                      + ("identical" if cc.get("identical") else f"[red]MISMATCH[/red] {cc.get('error', '')}"))
    for w in doc.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")
