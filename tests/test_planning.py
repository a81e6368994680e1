"""The capacity-planning arithmetic against cases worked out by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reports.costs import ranker_capacities, store_costs, store_runs
from reports.loader import load_results
from reports.planning import (
    GIB,
    TIB,
    PlanInputs,
    PlanningError,
    RankerCapacity,
    StoreCosts,
    ceil_count,
    pick_ranker_capacities,
    plan,
    plan_ranking,
    plan_store,
)

FIXTURES = Path(__file__).parent / "fixtures" / "results"

# 1e6 users × 86.4 events/day = 1000 appends/s; 30,000 QPS over 3 zones = 10,000 reads/s per zone.
BASE = PlanInputs(dau=1_000_000, events_per_user_per_day=86.4, seq_len=1000, peak_qps=30_000, candidates=100,
                  replication=2, zones=3, target_util=0.5, node_cores=10, node_dram_gib=16, node_ssd_tib=1,
                  ssd_headroom=0.25)
COSTS = StoreCosts(store="s", cpu_s_per_read=1e-4, cpu_s_per_append=5e-4, measured_seq_len=500,
                   bytes_per_event=10, space_amplification=1.2, index_bytes_per_user=1024,
                   buffer_bytes_per_node=1 * GIB, cache_bytes_per_node=3 * GIB)


def test_base_case_is_bound_by_replication() -> None:
    p = plan_store(BASE, COSTS)
    # reads: 10,000/s × (1e-4 s × 1000/500) = 2 cores; appends: 1000/s × 2 replicas × 5e-4 s = 1 core
    assert p["reads_per_s_zone"] == pytest.approx(10_000)
    assert p["appends_per_s_zone"] == pytest.approx(2000)
    assert p["busy_cores_zone"] == pytest.approx(3.0)
    assert p["cores_zone"] == pytest.approx(6.0)  # ÷ 50% target utilisation
    assert p["nodes_cpu"] == 1  # 6 cores on 10-core nodes
    # index 1024 B × 1e6 users × 2 replicas = 2.048 GB in 12 GiB usable per node
    assert p["nodes_dram"] == 1
    # SSD 10 B × 1000 × 1e6 × 1.2 × 1.25 × 2 = 30 GB
    assert p["ssd_bytes_zone"] == pytest.approx(3.0e10)
    assert p["nodes_ssd"] == 1
    assert p["nodes_zone"] == 2 and p["binding"] == "replication"
    assert p["dram_bytes_zone"] == pytest.approx(2.048e9 + 2 * 4 * GIB)
    assert p["nodes_total"] == 6
    assert p["cores_total"] == pytest.approx(18.0)
    assert p["ssd_bytes_total"] == pytest.approx(9.0e10)
    assert p["dram_bytes_total"] == pytest.approx(3 * (2.048e9 + 8 * GIB))


def test_cpu_bound() -> None:
    p = plan_store(replace(BASE, node_cores=2), COSTS)
    assert (p["nodes_cpu"], p["nodes_zone"], p["binding"]) == (3, 3, "cpu")  # 6 cores / 2 exactly: no 4th node


def test_dram_bound() -> None:
    # 4.5 GiB node - 4 GiB buffer+cache = 0.5 GiB for the index: 2.048e9 / 536,870,912 = 3.8 -> 4 nodes
    p = plan_store(replace(BASE, node_dram_gib=4.5), COSTS)
    assert (p["nodes_dram"], p["nodes_zone"], p["binding"]) == (4, 4, "dram")
    assert p["dram_bytes_zone"] == pytest.approx(2.048e9 + 4 * 4 * GIB)


def test_ssd_bound() -> None:
    # 30 GB on 0.01 TiB (10.995 GB) drives -> 2.73 -> 3 nodes
    p = plan_store(replace(BASE, node_ssd_tib=0.01), COSTS)
    assert p["nodes_ssd"] == 3 and p["binding"] == "ssd"
    assert 3.0e10 / (0.01 * TIB) == pytest.approx(2.7285, abs=1e-3)


def test_more_events_per_day_costs_more_cores_but_not_more_ssd() -> None:
    a = plan_store(BASE, COSTS)
    b = plan_store(replace(BASE, events_per_user_per_day=2 * 86.4), COSTS)
    assert b["busy_cores_zone"] == pytest.approx(a["busy_cores_zone"] + 1.0)  # appends double: +1 core
    assert b["ssd_bytes_zone"] == a["ssd_bytes_zone"]  # N events per user are kept either way


def test_node_without_room_for_buffer_and_cache_is_a_clear_error() -> None:
    with pytest.raises(PlanningError, match="more DRAM"):
        plan_store(replace(BASE, node_dram_gib=4), COSTS)


@pytest.mark.parametrize("change", [{"target_util": 0}, {"target_util": 1.5}, {"dau": -1}, {"zones": 0},
                                    {"ssd_headroom": -0.1}, {"peak_qps": float("nan")}])
def test_bad_inputs_are_rejected_with_the_field_named(change: dict) -> None:
    name = next(iter(change))
    with pytest.raises(PlanningError, match=name):
        plan_store(replace(BASE, **change), COSTS)


def test_ceil_count_ignores_float_noise() -> None:
    assert ceil_count(3.0000000000000004) == 3
    assert ceil_count(3.001) == 4
    assert ceil_count(0.0) == 0


def test_ranking_devices() -> None:
    # 50 req/s at 200 candidates = 100 req/s at 100; 10,000 req/s per zone / (100 × 0.5) = 200 per zone
    r = plan_ranking(BASE, RankerCapacity("laser on cuda", 50, 200, 1000))
    assert r["requests_per_s_per_device"] == pytest.approx(100)
    assert (r["devices_zone"], r["devices_total"]) == (200, 600)


def test_ranker_measurement_closest_to_planned_length_is_used() -> None:
    caps = [RankerCapacity("m", 500, 100, 100), RankerCapacity("m", 50, 100, 1000), RankerCapacity("x", 5, 1, 4000)]
    by_n = {n: {c.label: c.seq_len for c in pick_ranker_capacities(caps, n)} for n in (100, 550, 1000, 300)}
    assert by_n[100] == {"m": 100, "x": 4000}
    assert by_n[550] == {"m": 1000, "x": 4000}  # tie at 450 away: the longer one, the safer estimate
    assert by_n[1000]["m"] == 1000 and by_n[300]["m"] == 100


def test_plan_from_fixture_results() -> None:
    results = load_results([FIXTURES / "table1", FIXTURES / "serve_bench", FIXTURES / "e2e"])
    runs = {r.store: r for r in store_runs(results)}
    assert set(runs) == {"rocksdb_lastn", "rocksdb_packed", "seqvault"}
    costs, missing = store_costs(runs["seqvault"])
    assert missing == [] and costs is not None
    # the fixture's blended 7e-5 CPU s per op; appends carry 480,000 events in 240,000 operations
    assert costs.cpu_s_per_read == 7e-5 and costs.cpu_s_per_append == pytest.approx(3.5e-5)
    assert costs.measured_seq_len == 1000 and costs.space_amplification == 1.0
    assert costs.index_bytes_per_user == pytest.approx(640_000 / 20_000)  # stats.index_bytes / stats.users
    assert costs.buffer_bytes_per_node == 12 * 2**20 and costs.cache_bytes_per_node == 0
    rocks, _ = store_costs(runs["rocksdb_lastn"])
    assert rocks.buffer_bytes_per_node == 32 * 2**20  # 2 memtables of 16 MiB
    assert rocks.cache_bytes_per_node == 64 * 2**20
    assert rocks.index_bytes_per_user == pytest.approx(1_900_000 / 20_000)  # users taken from SeqVault's stats
    all_costs = [store_costs(r)[0] for r in runs.values()]
    caps = ranker_capacities(results)
    assert len(caps) == 5  # three serve-bench cells, two e2e runs
    p = plan(PlanInputs(), all_costs, caps)
    by_store = {s["store"]: s for s in p["stores"]}
    # the fixture's SeqVault is cheaper per operation and per event on disk than RocksDB LastN
    assert by_store["seqvault"]["cores_zone"] < by_store["rocksdb_lastn"]["cores_zone"]
    assert by_store["seqvault"]["ssd_bytes_zone"] < by_store["rocksdb_lastn"]["ssd_bytes_zone"]
    # serve-bench laser at C=200 has L=100 and L=1000 cells: only the L=1000 one is planned with N=1000
    assert len(p["rankers"]) == 4 and p["assumptions"]
    laser200 = next(r for r in p["rankers"] if r["label"].startswith("laser on cpu (fp32, C=200"))
    assert laser200["seq_len"] == 1000


def test_store_missing_costs_names_what_is_missing() -> None:
    results = load_results([FIXTURES / "partial_table1"])
    (run,) = store_runs(results)
    costs, missing = store_costs(run)
    assert costs is None
    assert "cpu.cpu_s_per_op" in missing and "disk.bytes_per_event" in missing


def test_a_swept_store_is_sized_by_its_slo_not_by_the_utilisation_target() -> None:
    bound = replace(COSTS, slo_bound=True)
    for util in (0.25, 0.5, 1.0):
        p = plan_store(replace(BASE, target_util=util), bound)
        # 10,000 reads/s × 1e-4 s × (1000 / 500) + 2,000 appends/s × 5e-4 s = 3 cores, whatever the target
        assert p["cores_zone"] == pytest.approx(3.0) == p["busy_cores_zone"]
    assert plan_store(BASE, COSTS)["cores_zone"] == pytest.approx(6.0)  # single-rate: 3 / 0.5


def test_sweep_costs_come_from_the_sustainable_rate_and_replace_single_rate_runs() -> None:
    from reports.costs import all_store_costs, sweep_runs, sweep_store_costs

    results = load_results([FIXTURES / "table1", FIXTURES / "sweep_seqvault"])
    (sweep,) = sweep_runs(results)
    costs, missing = sweep_store_costs(sweep)
    assert missing == [] and costs.slo_bound
    per_core = sweep.doc["sustainable_ops_per_s_per_core"]
    assert costs.cpu_s_per_read == pytest.approx(1 / per_core)
    block = sweep.doc["rows"]["seqvault"]
    events_per_append = block["io"]["appended_events"] / block["latency"]["append"]["count"]
    assert costs.cpu_s_per_append == pytest.approx(1 / per_core / events_per_append)
    assert costs.bytes_per_event == block["disk"]["bytes_per_event"]  # bytes per user from the sweep's block
    planned, notes = all_store_costs(store_runs(results), sweep_runs(results))
    names = [c.store for c in planned]
    assert "seqvault" not in names and sweep.label in names and "rocksdb_lastn" in names
    assert any("seqvault (table1): planned from its capacity sweep" in n for n in notes)


def test_a_sharded_row_is_planned_from_the_cluster_totals_with_per_node_buffers_from_its_largest_shard() -> None:
    from reports.costs import StoreRun

    results = load_results([FIXTURES / "table1"])
    run = {r.store: r for r in store_runs(results)}["seqvault"]
    shard_blocks = [{**run.detail, "stats": {**run.detail["stats"], "buffer_bytes": mib * 2**20},
                     "cpu_s_per_op": us * 1e-6} for mib, us in ((5, 60), (7, 80))]
    detail = {**run.detail, "stats": {**run.detail["stats"], "buffer_bytes": 12 * 2**20}, "shards": shard_blocks,
              "shard_count": 2, "skew": {"measured_ops": {"max_over_mean": 1.25}},
              "cluster": {"ray_nodes_used": 2}}
    costs, missing = store_costs(StoreRun("seqvault", run.source, detail, run.doc))
    assert missing == [] and costs is not None
    assert costs.buffer_bytes_per_node == 7 * 2**20  # one node holds its own shard's buffer, not the sum
    assert costs.cpu_s_per_read == 7e-5              # the cluster row's CPU per op
    assert "2 hash-partitioned shards on 2 Ray node(s)" in costs.source and "60, 80 µs/op" in costs.source
    assert "load skew (max/mean ops) 1.25" in costs.source
