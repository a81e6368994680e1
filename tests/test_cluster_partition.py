"""Sharding without Ray: the stable hash, the split of a workload, and the merge of shard results."""

from __future__ import annotations

import numpy as np
import pytest

from storagebench.cluster import merge_samples, merge_shard_blocks, shard_of, split_schedule
from storagebench.cluster.partition import split_chunks, stable_hash
from storagebench.measure import encode_histogram, histogram_of, latency_summary
from storagebench.replay import OP_NAMES, Schedule

MASK = (1 << 64) - 1


def splitmix64_reference(x: int) -> int:
    """SplitMix64's finaliser in plain Python integers."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_stable_hash_is_splitmix64_and_spreads_users_evenly() -> None:
    ids = np.array([0, 1, 2, 12345, 2**63, MASK], dtype=np.uint64)
    assert stable_hash(ids).tolist() == [splitmix64_reference(int(x)) for x in ids.tolist()]
    users = np.arange(100_000, dtype=np.uint64)  # dense ids, as generated workloads have them
    counts = np.bincount(shard_of(users, 4), minlength=4)
    assert counts.min() > 0.97 * 25_000 and counts.max() < 1.03 * 25_000
    assert (shard_of(users, 1) == 0).all()
    with pytest.raises(ValueError):
        shard_of(users, 0)


def _schedule() -> Schedule:
    read, append = OP_NAMES.index("read"), OP_NAMES.index("append")
    rng = np.random.default_rng(0)
    kinds, offsets, args, appended = [], [], [], []
    for i in range(400):
        if i % 3:
            kinds.append(read)
            args.append((np.array([rng.integers(0, 50)], dtype=np.uint64), 100))
            appended.append(0)
        else:  # some appends carry events of several users (and must be split)
            uids = np.sort(rng.integers(0, 50, size=rng.integers(1, 6))).astype(np.uint64)
            args.append((uids, {"ts": np.arange(len(uids), dtype=np.int64) + i, "item": uids.astype(np.int64)}))
            kinds.append(append)
            appended.append(len(uids))
        offsets.append(i * 1_000_000)
    return Schedule(np.array(kinds, np.uint8), np.array(offsets, np.int64), args, 100, np.array(appended, np.int64))


def test_split_schedule_keeps_every_op_and_event_on_its_users_shard_at_its_time() -> None:
    sched = _schedule()
    parts = split_schedule(sched, 3, warmup_ns=100_000_000)
    read = OP_NAMES.index("read")
    assert sum(int((p.kinds == read).sum()) for p in parts) == int((sched.kinds == read).sum())
    assert sum(int(p.appended_events.sum()) for p in parts) == int(sched.appended_events.sum())
    for s, p in enumerate(parts):
        assert (np.diff(p.offsets_ns) >= 0).all()
        assert p.measured_from == int(np.searchsorted(p.offsets_ns, 100_000_000))
        for a in p.args:
            assert (shard_of(a[0], 3) == s).all()
    # Every event of every original append is in exactly one shard's append at the same offset.
    want = sorted((int(o), int(u), int(t)) for k, o, a in zip(sched.kinds, sched.offsets_ns, sched.args, strict=True)
                  if k != read for u, t in zip(a[0], a[1]["ts"], strict=True))
    got = sorted((int(o), int(u), int(t)) for p in parts for k, o, a in zip(p.kinds, p.offsets_ns, p.args, strict=True)
                 if k != read for u, t in zip(a[0], a[1]["ts"], strict=True))
    assert got == want


def test_split_chunks_and_merge_samples_restore_the_single_node_layout() -> None:
    users = np.arange(20, dtype=np.uint64)
    lens = np.arange(20) % 4
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    uid_per_event = np.repeat(users, lens)
    cols = {"ts": np.arange(offsets[-1], dtype=np.int64)}
    parts = next(split_chunks([(uid_per_event, cols)], 3))
    assert sum(len(u) for u, _ in parts) == len(uid_per_event)
    samples = []
    for s, (uids, c) in enumerate(parts):
        mine = users[shard_of(users, 3) == s]
        counts = np.array([(uids == u).sum() for u in mine])
        samples.append((mine, (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), c)))
    got_off, got_cols = merge_samples(users, samples)
    assert np.array_equal(got_off, offsets) and np.array_equal(got_cols["ts"], cols["ts"])
    with pytest.raises(ValueError):
        merge_samples(users[:-1], samples)


def _block(shard: int, lat_us: np.ndarray, cpu_s: float, ops: int) -> dict:
    summary = latency_summary(histogram_of(lat_us))
    hist = {m: encode_histogram(histogram_of(lat_us)) for m in ("latency", "service", "from_send", "to_node",
                                                                  "from_node")}
    lat = {op: {m: summary for m in hist} | {"count": len(lat_us)} for op in ("append", "read")}
    backlog = {"grew": False, "started_backlogged": False, "below_offered": False, "unanswered_ops": 0}
    return {
        "store": "seqvault", "shard": shard, "config": {}, "io_mode": "direct", "warnings": [],
        "load": {"cpu_s": 1.0, "wall_s": 2.0, "io": {"write_bytes": 10}, "events": 5, "write_amplification": 0.2},
        "cpu": {"cpu_s": cpu_s, "cpu_user_s": cpu_s, "cpu_system_s": 0.0, "wall_s": 10.0, "node_cores": 1,
                "cpu_usage_pct": 10 * cpu_s, "cpu_s_per_op": cpu_s / ops, "target_qps": 1e6,
                "target_utilisation": 0.5, "series": [[1.0, 5.0, None], [2.0, 6.0, None]]},
        "latency": lat, "all_ops_latency": summary, "offered_ops_per_s": ops / 10, "achieved_ops_per_s": ops / 10,
        "measured_ops": ops, "backlog": backlog, "valid": True, "invalid_reasons": [],
        "generator": {"dispatch_lag_p99_ms": 0.1 * (shard + 1), "dispatch_lag_p50_ms": 0.01, "cpu_s": 1.0},
        "keep_awake": {}, "correctness": {"checked_reads": 3, "unanswered": 0, "ok": True, "share": 0.01},
        "disk": {"bytes": {"total": 100}, "stored_events": 50, "mean_bytes": 100, "max_bytes": 120,
                 "final_bytes": 100, "compacted_bytes": 90, "series": [[1.0, 100], [2.0, 100]]},
        "io": {"window": {"read_bytes": 5, "write_bytes": 7}, "appended_events": 4, "appended_logical_bytes": 40,
               "returned_bytes": 50},
        "stats": {"dram_bytes": 1000, "index_bytes": 400, "max_len": 1000, "merges": 2, "background_error": None,
                  "level": shard},
        "run_config": {},
        "histograms": {op: hist for op in ("append", "read")} | {"all_ops": hist["latency"]},
        "p99_ms": summary["p99_ms"],
    }


def test_merged_row_adds_histograms_and_sums_costs() -> None:
    fast = np.full(990, 1000)                                   # shard 0: 990 reads at 1 ms
    slow = np.concatenate([np.full(10, 1000), np.full(10, 50_000)])  # shard 1: 20 reads, half at 50 ms
    row = merge_shard_blocks([_block(0, fast, 2.0, 990), _block(1, slow, 1.0, 20)])
    read = row["latency"]["read"]["latency"]
    assert read["count"] == 990 + 20 and row["latency"]["read"]["count"] == 1010
    # 10 slow of 1010: below 1 %, so the cluster's p99 is the fast value (averaging the shards' p99s
    # would give ~25 ms) and its max is the slow one.
    assert read["p99_ms"] == pytest.approx(1.0, rel=0.01)
    assert read["max_ms"] == pytest.approx(50.0, rel=0.01)
    assert row["p99_ms"] == read["p99_ms"] and row["shard_count"] == 2
    assert row["cpu"]["cpu_s"] == 3.0 and row["cpu"]["node_cores"] == 2
    assert row["cpu_s_per_op"] == pytest.approx(3.0 / 1010)
    assert row["cpu"]["cpu_usage_pct"] == pytest.approx(100 * 3.0 / (10.0 * 2))
    assert row["disk_bytes"] == 200 and row["disk"]["bytes_per_event"] == 2.0
    assert row["dram_bytes"] == 2000 and row["stats"]["index_bytes"] == 800
    assert row["correctness"]["checked_reads"] == 6
    assert row["generator"]["dispatch_lag_p99_ms"] == pytest.approx(0.2)
    assert row["skew"]["measured_ops"]["max_over_mean"] == pytest.approx(990 / 505)
    assert row["cpu"]["series"] == [[1.0, 10.0, None], [2.0, 12.0, None]]
    assert row["valid"]


def test_a_shard_that_is_not_valid_makes_the_cluster_row_not_valid() -> None:
    bad = _block(1, np.full(10, 1000), 1.0, 10)
    bad["valid"], bad["invalid_reasons"] = False, ["read: backlog grew"]
    row = merge_shard_blocks([_block(0, np.full(10, 1000), 1.0, 10), bad])
    assert not row["valid"] and row["invalid_reasons"] == ["shard 1: read: backlog grew"]


def test_merged_row_counts_the_workloads_ops_sums_counters_and_keeps_settings_and_errors() -> None:
    a, b = _block(0, np.full(10, 1000), 1.0, 10), _block(1, np.full(10, 1000), 1.0, 10)
    b["stats"]["background_error"] = "merge failed: disk full"
    a["load"]["write_amplification"] = None  # a shard that loaded nothing has no ratio
    row = merge_shard_blocks([a, b], measured_ops=16, row_bytes=2)
    # 20 shard ops, 16 of the workload's (4 appends were split in two): per-op cost and rates use 16
    assert row["measured_ops"] == 16 and row["measured_shard_ops"] == 20
    assert row["cpu_s_per_op"] == pytest.approx(2.0 / 16)
    assert row["offered_ops_per_s"] == pytest.approx(16 / 10)
    stats = row["stats"]
    assert stats["merges"] == 4 and stats["dram_bytes"] == 2000   # counters and sizes add up
    assert stats["max_len"] == 1000                               # a setting: the shards' common value
    assert stats["level"] == [0, 1]                               # a per-node state that differs: both kept
    assert stats["background_error"] == ["shard 1: merge failed: disk full"]
    # write amplification from the sums: 20 bytes written for 10 events of 2 bytes
    assert row["load"]["write_amplification"] == pytest.approx(1.0) and row["load"]["events"] == 10


def test_a_shard_without_measured_operations_is_a_clear_error() -> None:
    from storagebench.cluster import split_prepared
    from storagebench.experiments.run import PreparedWorkload

    sched = _schedule()
    one_user = Schedule(sched.kinds[:5], sched.offsets_ns[:5], [(np.array([7], np.uint64), 10)] * 5, 1,
                        np.zeros(5, np.int64))
    one_user.kinds[:] = OP_NAMES.index("read")
    prepared = PreparedWorkload(one_user, np.array([7], np.uint64), 10, 10, {}, np.array([7], np.uint64),
                                np.array([10]), np.array([10]))
    with pytest.raises(ValueError, match="gets no operation inside the measured window"):
        split_prepared(prepared, 2, warmup_s=0.0)
