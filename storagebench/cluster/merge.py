"""K shard blocks -> one cluster row, the way a fleet adds up.

Latency percentiles come from the shards' HDR histograms added together (every recorded value of
every shard), never from averaging shard percentiles. CPU seconds, I/O, disk and operations are
summed; utilisation is the summed CPU over the summed reserved cores. A cluster row is valid only
when every shard is. Skew (how unevenly the hash spread the load) is reported beside it.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

from storagebench.experiments.run import add_headline
from storagebench.measure import cores_for_target, latency_summary, merge_histograms

LATENCY_METRICS = ("latency", "service", "from_send", "to_node", "from_node")


def _sum_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers summed key by key (nested dicts too); other values from the first."""
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, int | float | dict):
                out.setdefault(k, v)
            elif isinstance(v, dict):
                out[k] = _sum_dicts([out[k], v]) if isinstance(out.get(k), dict) else _sum_dicts([v])
            elif v is not None:
                out[k] = out.get(k, 0) + v
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


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def skew(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """How evenly the shards were loaded: max over mean of ops, stored events and CPU."""
    def of(values: list[float]) -> dict[str, Any]:
        m = mean(values) if values else 0.0
        return {"per_shard": values, "max_over_mean": (max(values) / m) if m else None}

    return {"measured_ops": of([float(b["measured_ops"]) for b in blocks]),
            "stored_events": of([float(b["disk"]["stored_events"]) for b in blocks]),
            "cpu_s": of([float(b["cpu"]["cpu_s"]) for b in blocks]),
            "read_p99_ms": [b["p99_ms"] for b in blocks]}


def merge_shard_blocks(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """The cluster row of one store from its shard blocks (each from :func:`shard_block`)."""
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
    measured = sum(b["measured_ops"] for b in blocks)
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
        "load": {**_sum_dicts([b["load"] for b in blocks]), "wall_s": max(b["load"]["wall_s"] for b in blocks)},
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
        "offered_ops_per_s": sum(b["offered_ops_per_s"] for b in blocks),
        "achieved_ops_per_s": sum(b["achieved_ops_per_s"] for b in blocks),
        "measured_ops": measured,
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
                 "bytes_per_event": _ratio(disk_mean, stored), "mean_bytes": disk_mean,
                 "max_bytes": sum(b["disk"]["max_bytes"] for b in blocks),
                 "final_bytes": sum(b["disk"]["final_bytes"] for b in blocks),
                 "compacted_bytes": sum(b["disk"]["compacted_bytes"] for b in blocks),
                 "series": _sum_series([b["disk"]["series"] for b in blocks], 2),
                 "how": "shards summed (max_bytes: the sum of each shard's maximum, an upper bound)"},
        "io": {"window": io_window,
               "appended_events": sum(b["io"]["appended_events"] for b in blocks),
               "appended_logical_bytes": appended_logical, "returned_bytes": returned,
               "write_amplification": _ratio(io_window.get("write_bytes", 0), appended_logical),
               "read_amplification": _ratio(io_window.get("read_bytes", 0), returned)},
        "stats": _sum_dicts([b["stats"] for b in blocks]),
        "run_config": first["run_config"],
        "shard_count": len(blocks),
        "skew": skew(blocks),
        "shards": blocks,
    }
    add_headline(row)
    return row
