"""The harness's own rules: the floor store, validity per op type, repeats in rotation, read-your-writes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from storagebench.correctness import CorrectnessError, check_reads
from storagebench.experiments.run import RunConfig, prepare, run_store
from storagebench.experiments.table1 import (
    aggregate,
    measure_stores,
    reduction_pct,
    reduction_validity,
    render_tables,
    rotated,
)
from storagebench.node import NodeClient
from storagebench.replay import OP_NAMES, Schedule, replay
from storagebench.stores import open_store
from workloads import DEFAULT_SCHEMA, GeneratorConfig, generate

SCHEMA = DEFAULT_SCHEMA


def tiny_workload(seed: int = 5):
    return generate(GeneratorConfig(users=60, history_median=40, history_max=400, live_seconds=20.0,
                                    live_sessions_per_s=8.0, seed=seed))


def cfg(**kw) -> RunConfig:
    base = {"io": "buffered", "max_len": 100, "rate": 150.0, "speed": None, "warmup_s": 1.0, "window_s": 4.0,
            "crosscheck_users": None, "keep_awake": False}
    return RunConfig(**{**base, **kw})


# -- the null store: the harness floor ---------------------------------------------------------

def test_null_store_returns_the_requested_size_and_drops_appends(tmp_path):
    store = open_store("null", str(tmp_path), SCHEMA, max_len=50)
    store.append(np.array([1, 2], np.uint64), {f.name: np.zeros(2, f.np_dtype) for f in SCHEMA.fields})
    off, cols = store.get_many(np.array([1, 2, 3], np.uint64), 20)
    assert off.tolist() == [0, 20, 40, 60]
    assert all(len(c) == 60 and c.dtype == f.np_dtype for f, c in zip(SCHEMA.fields, cols.values(), strict=True))
    off, cols = store.get_many(np.array([9], np.uint64), None)
    assert off.tolist() == [0, 50]
    assert store.disk_bytes()["total"] == 0 and not store.returns_stored_data


def test_the_floor_runs_through_the_same_node_and_replay_path(tmp_path):
    wl = tiny_workload()
    c = cfg()
    prepared = prepare(wl, c)
    block, sample = run_store(wl, prepared, "null", str(tmp_path / "null"), c)
    read = block["latency"]["read"]
    assert read["count"] > 300 and read["latency"]["count"] == read["count"]
    # every read returned max_len events of the schema's row size, through the node's reply
    assert block["io"]["returned_bytes"] == prepared.schedule_info["measured_reads"] * 100 * SCHEMA.row_bytes
    assert sample is None and block["correctness"] is None  # its reads are not stored data
    assert block["valid"], block["invalid_reasons"]
    for leg in ("to_node", "from_node", "service"):
        assert 0 < read[leg]["p50_ms"] <= read["latency"]["p99_ms"] + 1e-9


# -- validity per operation type ----------------------------------------------------------------

def mixed_schedule(n: int, rate: float, append_every: int) -> Schedule:
    kinds = np.full(n, OP_NAMES.index("read"), dtype=np.uint8)
    kinds[::append_every] = OP_NAMES.index("append")
    offsets = (np.arange(n) * (1e9 / rate)).astype(np.int64)
    args, events = [], np.zeros(n, dtype=np.int64)
    for i in range(n):
        if kinds[i] == OP_NAMES.index("read"):
            args.append((np.array([i % 5], np.uint64), None))
        else:
            args.append((np.array([i % 5], np.uint64), {f.name: np.full(1, i % 200, f.np_dtype) for f in SCHEMA.fields}))
            events[i] = 1
    return Schedule(kinds, offsets, args, n // 5, events)


def test_a_slow_append_path_makes_only_appends_invalid(tmp_path):
    # Appends take 40 ms each and come every 20 ms: the write path falls behind; reads stay fast.
    with NodeClient("memory", str(tmp_path), SCHEMA, {"append_delay_ms": 40.0}) as client:
        res = replay(client, mixed_schedule(1000, rate=250.0, append_every=5))
    by_op = res["backlog"]["by_op"]
    assert by_op["append"]["grew"] and by_op["append"]["below_offered"]
    assert by_op["append"]["achieved_ops_per_s"] < 0.7 * by_op["append"]["offered_ops_per_s"]
    assert not by_op["read"]["grew"] and not by_op["read"]["below_offered"] and not by_op["read"]["reasons"]
    assert res["ops"]["read"]["latency"]["p99_ms"] < 100  # the old all-ops median check saw nothing wrong here
    assert res["backlog"]["invalid_reasons"] and all("append" in r for r in res["backlog"]["invalid_reasons"])


def test_an_invalid_row_voids_the_reduction_and_says_why(tmp_path):
    wl = tiny_workload()
    slow = measure_stores(wl, cfg(rate=200.0, window_s=3.0, store_options={"memory": {"append_delay_ms": 150.0}}),
                          ["memory"], str(tmp_path / "slow"))["rows"]["memory"]
    fast = measure_stores(wl, cfg(rate=200.0, window_s=3.0), ["memory"], str(tmp_path / "fast"))["rows"]["memory"]
    assert not slow["valid"] and any("append" in r for r in slow["invalid_reasons"])
    assert fast["valid"], fast["invalid_reasons"]
    rows = {"rocksdb_lastn": slow, "rocksdb_packed": fast, "seqvault": fast}
    why = reduction_validity(rows)
    assert why is not None and why.startswith("RocksDB LastN:") and "append" in why
    assert reduction_validity({"rocksdb_lastn": fast, "seqvault": fast}) is None
    doc = {"rows": rows, "run_config": {"io": "buffered", "target_qps": 1e6, "target_utilisation": 0.5},
           "machine": {"cpu_model": "test"}, "reduction_pct": None, "reduction_invalid_reason": why}
    out = io.StringIO()
    render_tables(doc, Console(file=out, width=200))
    text = out.getvalue()
    assert "Reduction not valid: RocksDB LastN" in text and "not valid" in text.split("Reduction")[1]
    assert reduction_pct(rows)  # the arithmetic alone would have printed a number


# -- repeats ------------------------------------------------------------------------------------

def test_rotation_gives_each_store_each_position():
    assert [rotated("ABC", r) for r in range(4)] == [list("ABC"), list("BCA"), list("CAB"), list("ABC")]


def test_repeats_run_interleaved_in_rotated_order_and_report_medians_with_spread(tmp_path):
    wl = tiny_workload()
    doc = measure_stores(wl, cfg(window_s=2.0), ["memory", "null"], str(tmp_path), repeats=3)
    assert doc["repeats"] == 3
    for name, row in doc["rows"].items():
        reps = row["repeats"]
        assert [r["round"] for r in reps] == [0, 1, 2]
        assert [r["position"] for r in reps] == [rotated(["memory", "null"], k).index(name) for k in range(3)]
        values = sorted(r["p99_ms"] for r in reps)
        assert row["p99_ms"] == values[1] and row["spread"]["p99_ms"] == [values[0], values[2]]
    assert doc["floor"]["p99_ms"] == doc["rows"]["null"]["p99_ms"]
    assert doc["crosscheck"]["rounds"] == 3 and doc["crosscheck"]["stores"] == ["memory"]
    assert len([f for f in doc["hdr_logs"] if f.startswith("hdr/memory.r")]) == 3 * 4  # 2 ops x 2 metrics


def test_aggregate_takes_the_median_run_and_keeps_every_repeat():
    def block(p99, valid=True):
        return {"p99_ms": p99, "valid": valid, "invalid_reasons": [] if valid else ["x"], "round": 0,
                "latency": {"read": {"service": {"p99_ms": 1}}, "append": {"latency": {"p99_ms": 2}}},
                "generator": {"dispatch_lag_p99_ms": 0}, **dict.fromkeys(
                    ("cpu_cores", "cpu_usage_pct", "p50_ms", "p999_ms", "disk_bytes", "disk_bytes_max",
                     "disk_bytes_compacted", "ops_per_s", "cpu_s_per_op", "dram_bytes"), p99)}
    row = aggregate([block(3.0), block(1.0), block(2.0, valid=False)])
    assert row["p99_ms"] == 2.0 and row["spread"]["p99_ms"] == [1.0, 3.0] and row["p99_max_over_min"] == 3.0
    assert not row["valid"] and row["invalid_reasons"] == ["repeat 1: x"]


# -- read-your-writes inside the window --------------------------------------------------------

def _cols(times):
    return {f.name: np.asarray(times, dtype=f.np_dtype) for f in SCHEMA.fields}


def test_check_reads_accepts_any_state_between_acked_and_sent_and_nothing_else():
    base = {7: _cols([1, 2])}
    appends = [(np.array([7], np.uint64), _cols([3])), (np.array([8], np.uint64), _cols([5])),
               (np.array([7], np.uint64), _cols([4]))]

    def read(events, acked, sent):
        state = _cols(events)
        return {"op": 0, "user": 7, "last_n": None, "appends_acked": acked, "appends_sent": sent,
                "result": (np.array([0, len(events)]), state)}

    check_reads([read([1, 2, 3], 1, 3), read([1, 2, 3, 4], 1, 3), read([1, 2], 0, 1)], appends, base, SCHEMA, 10)
    with pytest.raises(CorrectnessError, match="read-your-writes failed"):
        check_reads([read([1, 2], 1, 3)], appends, base, SCHEMA, 10)        # stale: misses an acked append
    with pytest.raises(CorrectnessError):
        check_reads([read([1, 2, 3, 4], 1, 2)], appends, base, SCHEMA, 10)  # holds an append not yet sent
    with pytest.raises(CorrectnessError):
        check_reads([read([1, 3], 1, 1)], appends, base, SCHEMA, 10)        # lost a backfill event


def test_a_store_that_loses_acknowledged_appends_fails_the_run(tmp_path):
    wl = tiny_workload()
    c = cfg(check_share=1.0, store_options={"memory": {"lose_every_nth_append": 2}})
    with pytest.raises(CorrectnessError, match="read-your-writes failed"):
        run_store(wl, prepare(wl, c), "memory", str(tmp_path / "m"), c)


def test_an_honest_store_passes_the_in_window_check(tmp_path):
    wl = tiny_workload()
    c = cfg(check_share=0.5)
    block, _ = run_store(wl, prepare(wl, c), "memory", str(tmp_path / "m"), c)
    assert block["correctness"]["ok"] and block["correctness"]["checked_reads"] > 100
