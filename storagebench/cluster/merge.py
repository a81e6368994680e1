"""K shard blocks -> one cluster row, the way a fleet adds up.

Latency percentiles come from the shards' HDR histograms added together (every recorded value of
every shard), never from averaging shard percentiles. CPU seconds, I/O, disk and operations are
summed; utilisation is the summed CPU over the summed reserved cores. A cluster row is valid only
when every shard is. Skew (how unevenly the hash spread the load) is reported beside it.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

from storagebench.experiments.run import add_headline, ratio
from storagebench.measure import cores_for_target, latency_summary, merge_histograms
from storagebench.replay import LATENCY_METRICS

# Stats that add up over shards (sizes and counters); any other figure is a per-node setting or state.
ADDITIVE = ("bytes", "events", "users", "count", "merges", "records", "keys", "moved", "reads", "writes",
            "appends", "files", "memory", "-mem")


def _additive(key: str) -> bool:
    return any(part in key for part in ADDITIVE)


def _sum_dicts(dicts: list[dict[str, Any]], additive: bool = True) -> dict[str, Any]:
    """Numbers summed key by key (nested dicts too), ``None`` skipped. With ``additive=False`` only
    keys named like sizes or counters are summed; a key whose shards differ otherwise becomes the
    list of the shards' values, and a non-null message (an error) the list of "shard i: ..."."""
    out: dict[str, Any] = {}
    for k in dict.fromkeys(k for d in dicts for k in d):
        values = [d.get(k) for d in dicts]
        present = [v for v in values if v is not None]
        if not present:
            out[k] = None
        elif all(isinstance(v, dict) for v in present):
            out[k] = _sum_dicts(present, additive)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in present) and (
                additive or _additive(k)):
            out[k] = sum(present)
        elif len(present) == len(values) and all(v == present[0] for v in present):
            out[k] = present[0]
        elif all(isinstance(v, str) for v in present):
            out[k] = [f"shard {i}: {v}" for i, v in enumerate(values) if v is not None]
        else:
            out[k] = values
    return out


def _sum_series(series: list[list[list[Any]]], columns: int) -> list[list[Any]]:
    """Per-second samples of the shards summed row by row (each shard sampled once a second from its
    own window start; rows up to the shortest shard's)."""
    if not series or not all(series):
        return []
    rows = []
    for i in range(min(len(s) for s in series)):
        row = [series[0][i][0]]
        for c in range(1, columns):
            vals = [s[i][c] for s in series if s[i][c] is not None]
            row.append(round(sum(vals), 2) if vals else None)
        rows.append(row)
    return rows


def skew(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """How evenly the shards were loaded: max over mean of ops, stored events and CPU."""
    def of(values: list[float]) -> dict[str, Any]:
        m = mean(values) if values else 0.0
        return {"per_shard": values, "max_over_mean": (max(values) / m) if m else None}

    return {"measured_ops": of([float(b["measured_ops"]) for b in blocks]),
            "stored_events": of([float(b["disk"]["stored_events"]) for b in blocks]),
            "cpu_s": of([float(b["cpu"]["cpu_s"]) for b in blocks]),
            "read_p99_ms": [b["p99_ms"] for b in blocks]}


def merge_shard_blocks(blocks: list[dict[str, Any]], measured_ops: int | None = None,
                       row_bytes: int | None = None) -> dict[str, Any]:
    """The cluster row of one store from its shard blocks. ``measured_ops``: the workload's own
    measured operations (an append split over shards counts once); default the shards' sum."""
    if not blocks:
        raise ValueError("no shard blocks to merge")
    first = blocks[0]
    latency: dict[str, Any] = {}
    for op in first["histograms"]:
        if op == "all_ops":
            continue
        latency[op] = {m: latency_summary(merge_histograms([b["histograms"][op][m] for b in blocks]))
                       for m in LATENCY_METRICS}
        latency[op]["count"] = sum(b["latency"][op]["count"] for b in blocks)
    shard_ops = sum(b["measured_ops"] for b in blocks)
    measured = shard_ops if measured_ops is None else measured_ops
    per_shard_op = measured / shard_ops if shard_ops else 1.0  # rates in the workload's own ops
    cpu_s = sum(b["cpu"]["cpu_s"] for b in blocks)
    wall_s = max(b["cpu"]["wall_s"] for b in blocks)
    cores = sum(b["cpu"]["node_cores"] for b in blocks)
    cpu_s_per_op = cpu_s / max(measured, 1)
    target_qps, target_util = first["cpu"]["target_qps"], first["cpu"]["target_utilisation"]
    disk_mean = sum(b["disk"]["mean_bytes"] for b in blocks)
    stored = sum(b["disk"]["stored_events"] for b in blocks)
    io_window = _sum_dicts([b["io"]["window"] for b in blocks])
    appended_logical = sum(b["io"]["appended_logical_bytes"] for b in blocks)
    returned = sum(b["io"]["returned_bytes"] for b in blocks)
    reasons = [f"shard {b['shard']}: {why}" for b in blocks for why in b["invalid_reasons"]]
    checks = [b["correctness"] for b in blocks if b.get("correctness")]
    row: dict[str, Any] = {
        "store": first["store"],
        "config": first["config"],
        "io_mode": first["io_mode"],
        "warnings": list(dict.fromkeys(w for b in blocks for w in b["warnings"])),
        "load": _merged_load(blocks, row_bytes),
        "cpu": {
            "cpu_s": cpu_s, "cpu_user_s": sum(b["cpu"]["cpu_user_s"] for b in blocks),
            "cpu_system_s": sum(b["cpu"]["cpu_system_s"] for b in blocks), "wall_s": wall_s, "node_cores": cores,
            "cpu_usage_pct": 100.0 * cpu_s / max(wall_s * cores, 1e-9), "cpu_s_per_op": cpu_s_per_op,
            "cpu_cores_for_target": cores_for_target(cpu_s_per_op, target_qps, target_util),
            "target_qps": target_qps, "target_utilisation": target_util,
            "series": _sum_series([b["cpu"]["series"] for b in blocks], 3),
            "how": "shards summed: CPU seconds over the sum of the cores the shards reserved",
        },
        "latency": latency,
        "all_ops_latency": latency_summary(merge_histograms([b["histograms"]["all_ops"] for b in blocks])),
        "offered_ops_per_s": per_shard_op * sum(b["offered_ops_per_s"] for b in blocks),
        "achieved_ops_per_s": per_shard_op * sum(b["achieved_ops_per_s"] for b in blocks),
        "measured_ops": measured,
        "measured_shard_ops": shard_ops,
        "backlog": {"grew": any(b["backlog"]["grew"] for b in blocks),
                    "started_backlogged": any(b["backlog"]["started_backlogged"] for b in blocks),
                    "below_offered": any(b["backlog"]["below_offered"] for b in blocks),
                    "unanswered_ops": sum(b["backlog"]["unanswered_ops"] for b in blocks),
                    "invalid_reasons": reasons, "by_shard": [b["backlog"] for b in blocks]},
        "valid": not reasons,
        "invalid_reasons": reasons,
        "generator": {
            "dispatch_lag_p99_ms": max(b["generator"]["dispatch_lag_p99_ms"] for b in blocks),
            "dispatch_lag_p50_ms": max(b["generator"]["dispatch_lag_p50_ms"] for b in blocks),
            "late_start_ms": max(b["generator"].get("late_start_ms", 0.0) for b in blocks),
            "cpu_s": sum(b["generator"]["cpu_s"] for b in blocks),
            "how": "the worst shard's generator (lag percentiles are per generator, not merged)",
        },
        "keep_awake": first["keep_awake"],
        "correctness": ({"checked_reads": sum(c["checked_reads"] for c in checks),
                         "unanswered": sum(c["unanswered"] for c in checks), "ok": all(c["ok"] for c in checks),
                         "share": checks[0]["share"]} if checks else None),
        "disk": {"bytes": _sum_dicts([b["disk"]["bytes"] for b in blocks]), "stored_events": stored,
                 "bytes_per_event": ratio(disk_mean, stored), "mean_bytes": disk_mean,
                 "max_bytes": sum(b["disk"]["max_bytes"] for b in blocks),
                 "final_bytes": sum(b["disk"]["final_bytes"] for b in blocks),
                 "compacted_bytes": sum(b["disk"]["compacted_bytes"] for b in blocks),
                 "series": _sum_series([b["disk"]["series"] for b in blocks], 2),
                 "how": "shards summed (max_bytes: the sum of each shard's maximum, an upper bound)"},
        "io": {"window": io_window,
               "appended_events": sum(b["io"]["appended_events"] for b in blocks),
               "appended_logical_bytes": appended_logical, "returned_bytes": returned,
               "write_amplification": ratio(io_window.get("write_bytes", 0), appended_logical),
               "read_amplification": ratio(io_window.get("read_bytes", 0), returned)},
        "stats": _sum_dicts([b["stats"] for b in blocks], additive=False),
        "run_config": first["run_config"],
        "shard_count": len(blocks),
        "skew": skew(blocks),
        "shards": blocks,
    }
    late = [f"shard {b['shard']}: its generator started {b['generator']['late_start_ms']:.0f} ms after the shared "
            f"start (its schedule was shifted, the shards were not simultaneous)"
            for b in blocks if b["generator"].get("late_start_ms", 0.0) > 0]
    row["warnings"] += late
    add_headline(row)
    return row


def _merged_load(blocks: list[dict[str, Any]], row_bytes: int | None) -> dict[str, Any]:
    """The shards' bulk loads together (concurrent: wall time is the longest); the write
    amplification recomputed from the sums, never a sum of ratios."""
    load = _sum_dicts([{k: v for k, v in b["load"].items() if k != "write_amplification"} for b in blocks])
    load["wall_s"] = max(b["load"]["wall_s"] for b in blocks)
    if row_bytes is None:  # the logical size of an event, from any shard that appended some
        row_bytes = next((b["io"]["appended_logical_bytes"] // b["io"]["appended_events"] for b in blocks
                          if b["io"].get("appended_events")), None)
    logical = load.get("events", 0) * row_bytes if row_bytes else 0
    load["write_amplification"] = load["io"].get("write_bytes", 0) / logical if logical else None
    return load
