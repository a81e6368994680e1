"""Result directories written by ``storagebench run`` and ``storagebench table1``.

Format (field names are stable; the reports package renders these files):

``DIR/table1.json`` (``DIR/run.json`` for ``run``, with ``"kind": "run"`` and one entry in ``stores_measured``)::

    kind            "table1" | "run"
    created         ISO-8601 UTC time the file was written
    machine         cpu_model, logical_cores, physical_cores, ram_bytes, kernel, os, python, packages{},
                    store_filesystem{mount, device, type}, load_average[3] (other users of the machine)
    workload        the workload's manifest (as produced by ``workloads``)
    run_config      io, max_len, rate | speed, warmup_s, window_s, node_cpus, keep_awake, dram_budget_bytes,
                    store_options, backlog_threshold_ms, min_achieved_ratio, check_share, target_qps,
                    target_utilisation, crosscheck_users (null: every user), seed
    repeats         how many interleaved rounds every store ran (order rotated each round)
    schedule        ops, warmup_ops, measured_ops, measured_reads, measured_appends, speed, window_s
    stores          {store name: the store's full configuration as opened}
    rows            {store name: per-store block, below}  (table1 keys: rocksdb_lastn, rocksdb_packed, seqvault)
    reduction_pct   {cpu_cores, cpu_usage_pct, p99_ms, disk_bytes, p50_ms, p999_ms}: 100 * (1 - seqvault / rocksdb_lastn)
                    of the medians; null when any row is not valid, and then
    reduction_invalid_reason  which rows are not valid and why
    floor           the harness floor (the null store through the same path): p50_ms, p99_ms, p999_ms,
                    spread, read_service_p99_ms, append_p99_ms, dispatch_lag_p99_ms, repeats, keep_awake
    crosscheck      {users, stores, events, identical, rounds}: every round's final state compared
    paper           the paper's Table 1 figures, for side-by-side reading
    hdr_logs        relative paths of the interval histogram logs
    warnings        anything the reader must know (backlog, O_DIRECT fallback, ...)

Per-store block (``rows[name]``)::

    cpu_cores, cpu_usage_pct, p50_ms, p99_ms, p999_ms, disk_bytes, disk_bytes_max, disk_bytes_compacted,
        ops_per_s   Table 1 headline values, each the median over the repeats; latencies are reads,
        from the intended start (coordinated omission corrected); disk_bytes is the time-weighted
        mean of a once-a-second sample through the window, disk_bytes_compacted after a full
        compaction / merge + reclaim at the end
    spread          {headline key: [min, max] over the repeats}; p99_max_over_min
    repeats         one block per run: round, position in the round's order, valid, invalid_reasons and
                    the headline values; the row's other fields are those of its median-P99 run
    valid           false if, for reads or appends (``backlog.by_op``), the backlog grew during the
                    window, the window opened on a backlog left by warm-up, an op went unanswered, or
                    the achieved rate fell below min_achieved_ratio of the offered; invalid_reasons says
    latency         {append|read: {latency, service, from_send, to_node, from_node: summary, count}};
                    latency is from the intended start, service the store call alone, from_send from
                    the actual send (diagnostic only: excludes generator stalls), to_node / from_node
                    the transport legs either side of the store call; a summary is
                    {p50_ms, p90_ms, p99_ms, p999_ms, max_ms, mean_ms, count}
    correctness     the in-window read-your-writes check: {checked_reads, unanswered, ok, share}
    keep_awake      {enabled, cpus, policy, counted_in_store_cpu}
    all_ops_latency summary over both op types
    offered_ops_per_s, achieved_ops_per_s
    backlog         {grew, started_backlogged, below_offered, threshold_ms, min_achieved_ratio,
                     latency_first_tenth_p50_ms, latency_last_tenth_p50_ms (reads), unanswered_ops, drain_s,
                     invalid_reasons, by_op: {append|read: {count, offered_ops_per_s, achieved_ops_per_s,
                     latency_first_tenth_p50_ms, latency_last_tenth_p50_ms, grew, started_backlogged,
                     unanswered_ops, below_offered, reasons}}}
    generator       {dispatch_lag_p50_ms, dispatch_lag_p99_ms, dispatch_lag_max_ms, cpu_s, mode, late_start_ms
                     (how far past its given start the dispatch clock began; 0 unless shards were started
                     at a shared instant)}
    cpu             {cpu_s, cpu_user_s, cpu_system_s, wall_s, node_cores, cpu_usage_pct, cpu_s_per_op,
                     cpu_cores_for_target, target_qps, target_utilisation,
                     series: [[t_s, node_cpu_pct, generator_cpu_pct], ...] one per second (100 = one core)}
    disk            {bytes: {category: bytes, total} after the run, stored_events, bytes_per_event (of the mean),
                     series: [[t_s, bytes], ...], mean_bytes, max_bytes, final_bytes, compacted_bytes}
    io              {window: /proc/<pid>/io deltas, appended_events, appended_logical_bytes, returned_bytes,
                     write_amplification, read_amplification}
    load            bulk load: {wall_s, cpu_s, cpu_user_s, cpu_system_s, io, events, write_amplification}
    io_mode, warnings, stats (store counters), config (store configuration), run_config

A sharded run (``--shards K``, ``--cluster``) writes the same document; each ``rows[name]`` is then the
merged cluster row (latency summaries from the shards' HDR histograms added together; CPU seconds,
I/O, disk, DRAM and ops summed; utilisation = summed CPU over the summed reserved cores; valid only
when every shard is; ``generator`` is the worst shard's dispatch lag and the shards' summed CPU;
``backlog`` keeps grew / started_backlogged / below_offered / unanswered_ops / invalid_reasons and the
shards' own blocks in ``by_shard``; utilisation's wall time is the longest shard's; ``stats`` sums
sizes and counters, keeps a setting the shards share, lists a state that differs per shard, and an
error as ``["shard i: ..."]``). An append carrying several users' events is split into one append
per shard: ``measured_ops``, ``cpu_s_per_op`` and the ops/s figures count the workload's own
operations (``measured_shard_ops`` the shards'), while ``latency.append`` is per shard's part.
Cores are the CPUs each shard reserved in Ray (unpinned: usage can exceed 100 %). Plus::

    shard_count     K
    shards          one per-shard block (the fields above) each, plus shard, placement {ray_node_id,
                    host, ip, address, log}, schedule (the shard's share), measured_ops and histograms
                    {append|read: {latency, service, from_send, to_node, from_node}, all_ops}: the
                    HdrHistograms, base64 (HdrHistogram's own encoding), from which the row was merged
    skew            {measured_ops|stored_events|cpu_s: {per_shard, max_over_mean}, read_p99_ms}
    measured_shard_ops  the shards' measured operations (split appends counted per shard)
    cluster         {address, ray_version, nodes, node_ips, cluster_cpus, spec {shards, address,
                     generators_on, node_cpus, generator_cpus, node_host}, placement {strategy, bundles,
                     node_bundle, generator_bundle}, ray_nodes_used, warnings}

and the document gains ``cluster`` (the first row's). The shards' logs are ``DIR/logs/<store>.shard-<i>.log``
and their interval logs ``DIR/hdr/<store>.shard-<i>.<op>.<metric>.hlog``.

``DIR/compare.json`` (``storagebench compare``): the same document as ``run.json`` (``rows`` keyed by
store, ``floor``, ``crosscheck``; every headline value also gains ``cpu_s_per_op`` and ``dram_bytes``),
plus ``compare``::

    rows            {store: {valid, invalid_reasons, p50_ms, p99_ms, p999_ms, append_p99_ms,
                     read_service_p99_ms, cpu_usage_pct, cpu_us_per_op, disk_bytes, disk_bytes_per_user,
                     dram_bytes, dram_bytes_per_user, ops_per_s, offered_ops_per_s, spread, repeat_count,
                     cost {cores_per_million_users, cpu_usd, dram_usd, ssd_usd, total_usd, ...},
                     cost_per_million_users_month}}
    users           users with a stored sequence (the per-user divisor)
    prices          {core_hour_usd, dram_gib_month_usd, ssd_tib_month_usd, source}
    demand          {target_qps, fleet_users, target_utilisation, ops_per_s_per_million_users}
    assumptions     the cost model in words

``DIR/<store>/sweep.json`` (``storagebench sweep``)::

    store, mode ("auto" | "rates"), slo_ms, repeats, machine, workload, run_config
    steps           one per offered rate, rising: {target_ops_per_s, offered_ops_per_s, achieved_ops_per_s,
                     p50_ms, p99_ms, p999_ms, append_p99_ms, read_service_p99_ms, cpu_usage_pct, cpu_s_per_op,
                     cpu_us_per_op, node_cores, dispatch_lag_p99_ms, disk_bytes, dram_bytes, valid,
                     invalid_reasons, within_slo, repeats}
    sustainable_ops_per_s           achieved rate of the highest step within the SLO (null: none)
    sustainable_ops_per_s_per_core  that / the node's pinned cores
    sustainable_target_ops_per_s, lowest_failing_ops_per_s, cpu_usage_pct_at_sustainable, node_cores
    rows            {store: the full per-store block (below) of the sustainable step}

``DIR/table1.csv`` (``run.csv``, ``compare.csv``): one line per store with the headline values.
``DIR/hdr/<store>[.r<repeat>].<op>.<latency|service>.hlog``: HdrHistogram interval logs (1 s intervals,
microseconds; ``.r<k>`` when the run had repeats).
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
