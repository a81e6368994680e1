"""Result directories written by ``storagebench run`` and ``storagebench table1``.

Format (field names are stable; the reports package renders these files):

``DIR/table1.json`` (``DIR/run.json`` for ``run``, with ``"kind": "run"`` and one entry in ``stores_measured``)::

    kind            "table1" | "run"
    created         ISO-8601 UTC time the file was written
    machine         cpu_model, logical_cores, physical_cores, ram_bytes, kernel, os, python, packages{},
                    store_filesystem{mount, device, type}, load_average[3] (other users of the machine)
    workload        the workload's manifest (as produced by ``workloads``)
    run_config      io, max_len, rate | speed, warmup_s, window_s, workers, node_cpus, dram_budget_bytes,
                    target_qps, target_utilisation, backlog_threshold_ms, crosscheck_users, seed
    schedule        ops, warmup_ops, measured_ops, measured_reads, measured_appends, speed, window_s
    stores          {store name: the store's full configuration as opened}
    rows            {store name: per-store block, below}  (table1 keys: rocksdb_lastn, rocksdb_packed, seqvault)
    reduction_pct   {cpu_cores, cpu_usage_pct, p99_ms, disk_bytes, p50_ms, p999_ms}: 100 * (1 - seqvault / rocksdb_lastn)
    crosscheck      {users, stores, events, identical}
    paper           the paper's Table 1 figures, for side-by-side reading
    hdr_logs        relative paths of the interval histogram logs
    warnings        anything the reader must know (backlog, O_DIRECT fallback, ...)

Per-store block (``rows[name]``)::

    cpu_cores, cpu_usage_pct, p50_ms, p99_ms, p999_ms, disk_bytes, ops_per_s   Table 1 headline values;
        latencies are reads, from the intended start (coordinated omission corrected)
    valid           false if the backlog grew during the window, or the window opened on a backlog
                    left by warm-up (percentiles then not valid)
    latency         {append|read: {latency: summary, service: summary, from_send: summary, count}};
                    latency is from the intended start, service the store call alone, from_send from
                    the actual send (diagnostic only: excludes generator stalls); a summary is
                    {p50_ms, p90_ms, p99_ms, p999_ms, max_ms, mean_ms, count}
    all_ops_latency summary over both op types
    offered_ops_per_s, achieved_ops_per_s
    backlog         {grew, started_backlogged, threshold_ms, latency_first_tenth_p50_ms, latency_last_tenth_p50_ms,
                     unanswered_ops, drain_s}
    generator       {dispatch_lag_p50_ms, dispatch_lag_p99_ms, dispatch_lag_max_ms, cpu_s}
    cpu             {cpu_s, cpu_user_s, cpu_system_s, wall_s, node_cores, cpu_usage_pct, cpu_s_per_op,
                     cpu_cores_for_target, target_qps, target_utilisation,
                     series: [[t_s, node_cpu_pct, generator_cpu_pct], ...] one per second (100 = one core)}
    disk            {bytes: {category: bytes, total}, stored_events, bytes_per_event}
    io              {window: /proc/<pid>/io deltas, appended_events, appended_logical_bytes, returned_bytes,
                     write_amplification, read_amplification}
    load            bulk load: {wall_s, cpu_s, cpu_user_s, cpu_system_s, io, events, write_amplification}
    io_mode, warnings, stats (store counters), config (store configuration), run_config

``DIR/table1.csv`` (``run.csv``): one line per store with the headline values.
``DIR/hdr/<store>.<op>.<latency|service>.hlog``: HdrHistogram interval logs (1 s intervals, microseconds).
"""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime
from typing import Any

CSV_COLUMNS = ("store", "cpu_cores", "cpu_usage_pct", "p50_ms", "p99_ms", "p999_ms", "disk_bytes",
               "bytes_per_event", "ops_per_s", "offered_ops_per_s", "write_amplification",
               "read_amplification", "valid")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def csv_row(name: str, block: dict[str, Any]) -> dict[str, Any]:
    return {
        "store": name, "cpu_cores": block["cpu_cores"], "cpu_usage_pct": block["cpu_usage_pct"],
        "p50_ms": block["p50_ms"], "p99_ms": block["p99_ms"], "p999_ms": block["p999_ms"],
        "disk_bytes": block["disk_bytes"], "bytes_per_event": block["disk"]["bytes_per_event"],
        "ops_per_s": block["ops_per_s"], "offered_ops_per_s": block["offered_ops_per_s"],
        "write_amplification": block["io"]["write_amplification"],
        "read_amplification": block["io"]["read_amplification"], "valid": block["valid"],
    }


def write_result(out_dir: str, kind: str, doc: dict[str, Any]) -> tuple[str, str]:
    """Write ``<kind>.json`` and ``<kind>.csv`` atomically (a crash never leaves a half-written file)."""
    json_path = write_json(out_dir, kind, doc)
    csv_path = os.path.join(out_dir, f"{kind}.csv")
    tmp = csv_path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for name, block in doc["rows"].items():
            w.writerow(csv_row(name, block))
    os.replace(tmp, csv_path)
    return json_path, csv_path


def write_json(out_dir: str, kind: str, doc: dict[str, Any]) -> str:
    """Write ``<kind>.json`` with ``kind`` and ``created`` added, atomically; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{kind}.json")
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"kind": kind, "created": now_iso(), **doc}, f, indent=1, default=_default)
    os.replace(tmp, json_path)
    return json_path


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot write {type(o).__name__} to a result file")
