"""Table 1 of the paper, measured here: RocksDB LastN vs RocksDB packed vs SeqVault on one workload.

SeqVault runs first: its DRAM (index + update buffer) after the window sets the block-cache size of
both RocksDB stores, so every store gets the same DRAM budget.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, replace
from statistics import median
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from storagebench.cluster import ClusterSpec, run_store_sharded
from storagebench.crosscheck import CrossCheckError, compare_samples
from storagebench.experiments.run import RunConfig, WorkloadLike, prepare, run_store
from storagebench.measure import machine_info
from storagebench.results import write_result

TABLE1_ROWS = ("rocksdb_lastn", "rocksdb_packed", "seqvault")
RUN_ORDER = ("seqvault", "rocksdb_packed", "rocksdb_lastn")
ROW_LABELS = {"rocksdb_lastn": "RocksDB LastN", "rocksdb_packed": "RocksDB packed", "seqvault": "SeqVault"}
REDUCED = ("cpu_cores", "cpu_usage_pct", "p50_ms", "p99_ms", "p999_ms", "disk_bytes")

# Scales: the workload preset, replay speed and window. `small` is what `tox -e bench` runs on 2 cores
# (three interleaved repeats in <= 15 min): its trace offers ~1,200 ops/s (reads plus 10 ingestion
# batches/s); at 0.2x (~240 ops/s) the costliest store, RocksDB LastN with the tuned profile and
# batched read-modify-write appends, measured 38 % of its one core (54 % at 0.25x, where its
# append latency began to grow): loaded, with headroom, valid. 25 s warm-up: after the bulk load
# and its full compaction, RocksDB's first L0 -> bottommost compactions make its first appends
# slow, and with 10 s the window opened on that backlog (1.2-1.5 s append p50 in its first tenth).
# Then 25 s measured: several SeqVault merges and many RocksDB flushes and compactions inside it.
SCALES: dict[str, dict[str, Any]] = {
    "small": {"preset": "small", "speed": 0.2, "warmup_s": 25.0, "window_s": 25.0, "crosscheck_users": None},
    "medium": {"preset": "medium", "speed": 0.2, "warmup_s": 30.0, "window_s": 180.0, "crosscheck_users": 2000},
    "large": {"preset": "large", "speed": 1.0, "warmup_s": 60.0, "window_s": 300.0, "crosscheck_users": 2000},
}

PAPER_TABLE1 = {
    "source": "LASER (Xiaohongshu, 2026), section 4.2, Table 1: production, CPU cores per zone",
    "rows": {
        "rocksdb_lastn": {"cpu_cores": 4327.13, "cpu_usage_pct": "16~24", "p99_ms": "3~5", "disk": "140 TiB"},
        "seqvault": {"cpu_cores": 3686.4, "cpu_usage_pct": "~5", "p99_ms": "~2", "disk": "76.8 TiB"},
    },
    "reduction_pct": {"cpu_cores": 14.8, "cpu_usage_pct": 75, "p99_ms": "> 50", "disk": 45},
}


HEADLINE = ("cpu_cores", "cpu_usage_pct", "p50_ms", "p99_ms", "p999_ms", "disk_bytes", "disk_bytes_max",
            "disk_bytes_compacted", "ops_per_s", "cpu_s_per_op", "dram_bytes")
FLOOR_STORE = "null"


def rotated(stores: Sequence[str], round_index: int) -> list[str]:
    """The run order of one round: A B C, then B C A, then C A B, ..."""
    k = round_index % len(stores) if stores else 0
    return list(stores[k:]) + list(stores[:k])


def measure_stores(wl: WorkloadLike, cfg: RunConfig, stores: Sequence[str], out_dir: str, *,
                   repeats: int = 1, match_dram: bool = False, keep_stores: bool = False,
                   console: Console | None = None, cluster: ClusterSpec | None = None) -> dict[str, Any]:
    """Prepare the schedule once, measure each store ``repeats`` times interleaved (the order rotating
    each round), cross-check every round. Returns the result document (without writing it); a
    cross-check mismatch is recorded in the document (``crosscheck_failed``). The floor store
    (``null``), if listed, is also summarised as ``doc["floor"]``. With ``cluster`` every store
    runs as ``cluster.shards`` shards on Ray and its row is the merged cluster row."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    console = console or Console(stderr=True)
    hdr_dir = os.path.join(out_dir, "hdr")
    os.makedirs(hdr_dir, exist_ok=True)
    store_root = os.path.join(out_dir, "stores")
    columns = (TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in stores}
    warnings: list[str] = []
    crosscheck: dict[str, Any] = {}
    # No refresh thread: it would share the generator's GIL. The bar redraws when the replay
    # reports progress, which it does only in gaps between operations.
    with Progress(*columns, console=console, transient=False, auto_refresh=False) as bar:
        task = bar.add_task("prepare schedule", total=None)
        prepared = prepare(wl, cfg)
        bar.update(task, total=1, completed=1)
        for r in range(repeats):
            samples: dict[str, Any] = {}
            for store in rotated(stores, r):
                label = f"{store}" + (f" (repeat {r + 1}/{repeats})" if repeats > 1 else "")
                tasks = {"load": bar.add_task(f"{label}: bulk load", total=prepared.backfill_events),
                         "replay": bar.add_task(f"{label}: replay", total=len(prepared.schedule))}

                def progress(phase: str, done: int, total: int, tasks: dict = tasks) -> None:
                    bar.update(tasks[phase], completed=done, total=total)
                    bar.refresh()

                def status(s: dict[str, Any], label: str = label) -> None:
                    p99 = "n/a" if s["read_p99_ms"] is None else f"{s['read_p99_ms']:.2f} ms"
                    bar.console.log(f"{label}: {'window' if s['measuring'] else 'warm-up'} {s['t_s']:+.0f} s, "
                                    f"{s['ops_per_s']:.0f} ops/s, read p99 {p99} (last 10 s), "
                                    f"{s['in_flight']} in flight")

                bar.console.log(f"{label}: bulk-loading {prepared.backfill_events:,} events, then replaying "
                                f"{len(prepared.schedule):,} ops ({prepared.schedule_info['warmup_s']:.0f} s "
                                f"warm-up, {prepared.schedule_info['window_s']:.0f} s measured)")
                prefix = f"{store}." if repeats == 1 else f"{store}.r{r + 1}."
                if cluster is None:
                    block, sample = run_store(wl, prepared, store, os.path.join(store_root, store), cfg,
                                              hist_log_dir=hdr_dir, log_prefix=prefix, progress=progress,
                                              status=status)
                else:
                    block, sample = run_store_sharded(wl, prepared, store, os.path.join(store_root, store), cfg,
                                                      cluster, hist_log_dir=hdr_dir, log_prefix=prefix,
                                                      progress=progress)
                block["round"], block["position"] = r, rotated(stores, r).index(store)
                bar.console.log(f"{label}: done: read p99 {block['p99_ms']:.2f} ms, CPU {block['cpu_usage_pct']:.1f}%, "
                                f"{block['ops_per_s']:.0f} ops/s, disk {block['disk_bytes'] / 2**20:.1f} MiB"
                                + ("" if block["valid"] else
                                   f" [red](not valid: {'; '.join(block['invalid_reasons'])})[/red]"))
                runs[store].append(block)
                if sample is not None:
                    samples[store] = sample
                warnings += [w for w in (f"{store}: {w}" for w in block["warnings"]) if w not in warnings]
                warnings += [f"{store}" + (f" (repeat {r + 1})" if repeats > 1 else "") + f": not valid: {why}"
                             for why in block["invalid_reasons"]]
                if match_dram and store == "seqvault" and r == 0:
                    # Per storage node: with shards, the largest shard's SeqVault sets every shard's budget.
                    budget = max(seqvault_dram_budget(b, wl.schema.row_bytes) for b in block.get("shards", [block]))
                    cfg = replace(cfg, dram_budget_bytes=budget)
            if not crosscheck.get("failed"):
                try:
                    crosscheck = compare_samples(prepared.crosscheck_users, samples)
                    crosscheck["rounds"] = r + 1
                except CrossCheckError as e:
                    crosscheck = {"identical": False, "error": f"round {r + 1}: {e}", "failed": True,
                                  "users": len(prepared.crosscheck_users), "stores": list(samples)}
    if not keep_stores:
        shutil.rmtree(store_root, ignore_errors=True)
    rows = {name: aggregate(blocks) for name, blocks in runs.items()}
    doc: dict[str, Any] = {
        "machine": machine_info(out_dir),
        "workload": wl.manifest,
        "run_config": asdict(cfg),
        "repeats": repeats,
        "schedule": prepared.schedule_info,
        "stores": {name: rows[name]["config"] for name in rows},
        "rows": rows,
        "hdr_logs": sorted(os.path.join("hdr", f) for f in os.listdir(hdr_dir)),
        "warnings": warnings,
        "crosscheck": crosscheck,
    }
    if cluster is not None:
        doc["cluster"] = next((r["cluster"] for r in rows.values() if "cluster" in r), {"spec": cluster.describe()})
    if FLOOR_STORE in runs:
        doc["floor"] = floor_block(rows[FLOOR_STORE])
    if crosscheck.get("failed"):
        doc["crosscheck_failed"] = True
    return doc


def aggregate(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a store's repeats: the run with the median P99 in full, every headline figure
    replaced by its median over the repeats, ``spread`` [min, max] per figure, and ``repeats``."""
    by_p99 = sorted(blocks, key=lambda b: b["p99_ms"])
    row = dict(by_p99[(len(by_p99) - 1) // 2])
    row["spread"] = {}
    for key in HEADLINE:
        values = [b[key] for b in blocks]
        row[key] = float(median(values))
        row["spread"][key] = [float(min(values)), float(max(values))]
    lo, hi = row["spread"]["p99_ms"]
    row["p99_max_over_min"] = hi / lo if lo > 0 else None
    row["repeats"] = [{"round": b.get("round", 0), "position": b.get("position", 0), "valid": b["valid"],
                       "invalid_reasons": b["invalid_reasons"],
                       "read_service_p99_ms": b["latency"]["read"]["service"]["p99_ms"],
                       "append_p99_ms": b["latency"]["append"]["latency"]["p99_ms"],
                       "dispatch_lag_p99_ms": b["generator"]["dispatch_lag_p99_ms"],
                       **{k: b[k] for k in HEADLINE}} for b in blocks]
    row["valid"] = all(b["valid"] for b in blocks)
    row["invalid_reasons"] = [f"repeat {b.get('round', 0) + 1}: {why}" if len(blocks) > 1 else why
                              for b in blocks for why in b["invalid_reasons"]]
    return row


def floor_block(row: dict[str, Any]) -> dict[str, Any]:
    """The harness floor: the null store's latencies (no CPU or disk: it does no work)."""
    lat = row["latency"]
    return {"store": FLOOR_STORE, "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"], "p999_ms": row["p999_ms"],
            "spread": {k: row["spread"][k] for k in ("p50_ms", "p99_ms", "p999_ms")},
            "read_service_p99_ms": lat["read"]["service"]["p99_ms"],
            "append_p99_ms": lat["append"]["latency"]["p99_ms"],
            "dispatch_lag_p99_ms": row["generator"]["dispatch_lag_p99_ms"],
            "valid": row["valid"], "invalid_reasons": row["invalid_reasons"], "repeats": row["repeats"],
            "keep_awake": row["keep_awake"], "latency": lat,
            "what": "a store that returns a prebuilt sequence and drops appends, through the same node, "
                    "protocol and replay path: the harness's own latency"}


def seqvault_dram_budget(block: dict[str, Any], row_bytes: int) -> int:
    """SeqVault's DRAM budget: its hash index as measured plus a full update buffer (the merge
    policy's event limit, each event with its user id). This, not the momentary buffer fill,
    is what an operator provisions, so it sizes the RocksDB block caches."""
    stats, policy = block["stats"], block["config"].get("merge_policy", {})
    full_buffer = int(policy.get("max_buffer_events", 0)) * (row_bytes + 8)
    return max(int(stats.get("index_bytes", 0)) + full_buffer, int(stats.get("dram_bytes", 0)), 1 << 20)


def reduction_pct(rows: dict[str, Any]) -> dict[str, float | None]:
    """100 * (1 - SeqVault / RocksDB LastN) per headline metric (medians over repeats)."""
    base, new = rows.get("rocksdb_lastn"), rows.get("seqvault")
    if not base or not new:
        return {}
    return {k: (100.0 * (1.0 - new[k] / base[k]) if base[k] else None) for k in REDUCED}


def reduction_validity(rows: dict[str, Any]) -> str | None:
    """Why the reduction cannot be trusted (a row not valid), or None when every row is valid."""
    bad = [f"{ROW_LABELS.get(n, n)}: {'; '.join(r['invalid_reasons']) or 'not valid'}"
           for n, r in rows.items() if not r["valid"]]
    return " | ".join(bad) or None


def run_table1(wl: WorkloadLike, cfg: RunConfig, out_dir: str, *, repeats: int = 1, floor: bool = True,
               keep_stores: bool = False, console: Console | None = None,
               cluster: ClusterSpec | None = None) -> dict[str, Any]:
    """Measure the three stores (and the harness floor), write ``table1.json``/``.csv`` and the HDR
    logs; return the document."""
    order = RUN_ORDER + ((FLOOR_STORE,) if floor else ())
    doc = measure_stores(wl, cfg, order, out_dir, repeats=repeats, match_dram=True, keep_stores=keep_stores,
                         console=console, cluster=cluster)
    doc["rows"] = {k: doc["rows"][k] for k in TABLE1_ROWS if k in doc["rows"]}
    doc["stores"] = {k: doc["stores"][k] for k in doc["rows"]}
    why = reduction_validity(doc["rows"])
    if why is None:
        doc["reduction_pct"] = reduction_pct(doc["rows"])
    else:
        doc["reduction_pct"] = None
        doc["reduction_invalid_reason"] = why
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


def _spread(block: dict[str, Any], key: str, spec: str, scale: float = 1.0) -> str:
    lo, hi = (block.get("spread") or {}).get(key, (None, None))
    if lo is None or len(block.get("repeats", [])) < 2:
        return ""
    return f" ({format(lo * scale, spec)}-{format(hi * scale, spec)})"


def render_tables(doc: dict[str, Any], console: Console) -> None:
    """Print Table 1 in the paper's shape (medians over repeats, min-max in brackets), the harness
    floor, then the detail table."""
    rows = doc["rows"]
    cfg = doc["run_config"]
    repeats = doc.get("repeats", 1)
    t = Table(title=f"Table 1, measured here ({doc['machine']['cpu_model']}, io={cfg['io']}, "
                    f"{'median of ' + str(repeats) + ' repeats (min-max)' if repeats > 1 else 'one run'})",
              caption=(f"CPU cores: to serve {cfg['target_qps']:,.0f} ops/s at {cfg['target_utilisation']:.0%} "
                       f"utilisation. P99: reads, from intended start. Disk: time-weighted mean over the window. "
                       f"Paper: RocksDB 4327 cores, 16~24%, 3~5 ms, 140 TiB; SeqVault 3686, ~5%, ~2 ms, 76.8 TiB; "
                       f"reduction 14.8%, 75%, >50%, 45%."))
    for col in ("", "CPU cores", "CPU usage", "P99 (ms)", "Disk"):
        t.add_column(col, justify="right" if col else "left")
    for name, block in rows.items():
        mark = "" if block["valid"] else " (not valid)"
        t.add_row(ROW_LABELS.get(name, name) + mark, f"{block['cpu_cores']:.1f}",
                  f"{block['cpu_usage_pct']:.1f}%" + _spread(block, "cpu_usage_pct", ".1f"),
                  f"{block['p99_ms']:.2f}" + _spread(block, "p99_ms", ".2f"),
                  _fmt_bytes(block["disk_bytes"]))
    floor = doc.get("floor")
    if floor:
        t.add_row("Harness floor (null store)", "", "", f"{floor['p99_ms']:.2f}" + _spread(floor, "p99_ms", ".2f"),
                  "", style="dim")
    red = doc.get("reduction_pct")
    if red:
        t.add_row("Reduction", *(_fmt(red.get(k), ".1f") + "%" for k in ("cpu_cores", "cpu_usage_pct", "p99_ms",
                                                                          "disk_bytes")), style="bold")
    elif "reduction_invalid_reason" in doc:
        t.add_row("Reduction", "not valid", "", "", "", style="bold red")
    console.print(t)
    if "reduction_invalid_reason" in doc:
        console.print(f"[red]Reduction not valid: {doc['reduction_invalid_reason']}[/red]")
    if floor:
        console.print(f"harness floor: read p50 {floor['p50_ms']:.3f} ms, p99 {floor['p99_ms']:.3f} ms, "
                      f"p99.9 {floor['p999_ms']:.3f} ms (node service p99 {floor['read_service_p99_ms']:.3f} ms, "
                      f"generator lag p99 {floor['dispatch_lag_p99_ms']:.3f} ms)")
    d = Table(title="Detail (reads from intended start; service = store call alone; medians over repeats)")
    for col in ("", "p50 ms", "p99.9 ms", "svc p99", "append p99", "ops/s got/offered",
                "disk max / compacted", "B/event", "write amp", "read amp", "CPU µs/op", "gen lag p99"):
        d.add_column(col, justify="right" if col else "left")
    for name, block in rows.items():
        lat = block["latency"]
        d.add_row(ROW_LABELS.get(name, name), f"{block['p50_ms']:.2f}", f"{block['p999_ms']:.2f}",
                  f"{lat['read']['service']['p99_ms']:.2f}", f"{lat['append']['latency']['p99_ms']:.2f}",
                  f"{block['ops_per_s']:.0f}/{block['offered_ops_per_s']:.0f}",
                  f"{_fmt_bytes(block['disk_bytes_max'])} / {_fmt_bytes(block['disk_bytes_compacted'])}",
                  _fmt(block["disk"]["bytes_per_event"], ".1f"), _fmt(block["io"]["write_amplification"], ".2f"),
                  _fmt(block["io"]["read_amplification"], ".2f"), f"{1e6 * block['cpu']['cpu_s_per_op']:.0f}",
                  f"{block['generator']['dispatch_lag_p99_ms']:.2f}")
    console.print(d)
    cc = doc.get("crosscheck", {})
    if cc:
        console.print(f"cross-check: {cc.get('users')} users, stores {', '.join(cc.get('stores', []))}, "
                      f"{cc.get('rounds', 1)} round(s): "
                      + ("identical" if cc.get("identical") else f"[red]MISMATCH[/red] {cc.get('error', '')}"))
    if doc.get("cluster"):
        render_shards(doc, console)
    checked = [r["correctness"] for r in rows.values() if r.get("correctness")]
    if checked:
        console.print(f"read-your-writes: {sum(c['checked_reads'] for c in checked)} in-window reads checked "
                      f"(median run of each store), all consistent with acknowledged appends")
    for w in doc.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")


def render_shards(doc: dict[str, Any], console: Console) -> None:
    """The cluster: where the shards ran, and each shard's row beside the merged one."""
    c = doc["cluster"]
    spec = c.get("spec", {})
    console.print(f"cluster: {spec.get('shards')} shards per store on {c.get('nodes', '?')} Ray node(s) "
                  f"({c.get('address', spec.get('address'))}, Ray {c.get('ray_version', '?')}), placement "
                  f"{c.get('placement', {}).get('strategy', '?')}, generators on {spec.get('generators_on')} "
                  f"node(s); rows above are the merged cluster rows (HDR histograms added, CPU and disk summed)")
    t = Table(title="Shards (the median repeat of each store)")
    for col in ("store", "shard", "Ray node", "ops measured", "P99 ms", "svc p99", "CPU µs/op", "CPU", "disk",
                "valid"):
        t.add_column(col, justify="left" if col in ("store", "Ray node") else "right")
    for name, row in doc["rows"].items():
        for b in row.get("shards", []):
            t.add_row(ROW_LABELS.get(name, name), str(b["shard"]), b["placement"]["ray_node_id"][:8],
                      f"{b['measured_ops']:,}", f"{b['p99_ms']:.2f}", f"{b['latency']['read']['service']['p99_ms']:.2f}",
                      f"{1e6 * b['cpu_s_per_op']:.0f}", f"{b['cpu_usage_pct']:.1f}%", _fmt_bytes(b["disk_bytes"]),
                      "yes" if b["valid"] else "no")
        if row.get("skew"):
            sk = row["skew"]
            console.print(f"{ROW_LABELS.get(name, name)}: shard skew (max / mean) ops "
                          f"{_fmt(sk['measured_ops']['max_over_mean'], '.2f')}, stored events "
                          f"{_fmt(sk['stored_events']['max_over_mean'], '.2f')}, CPU "
                          f"{_fmt(sk['cpu_s']['max_over_mean'], '.2f')}")
    console.print(t)
