"""Cached user representations end to end: the store bindings' vector path, the node's wire ops, the
refresh job's policy and staleness, and the e2e arms of the cached models (VISTA, LLaTTE) on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rankers.inputs import candidates_from_numpy, history_from_csr
from seqvault.vectorcodec import decode_entries, encode_entries, entry_bytes
from storagebench import protocol as p
from storagebench.cli import main
from storagebench.e2e_driver import STAGES
from storagebench.experiments.e2e import (
    Arm,
    E2EConfig,
    backfill_counts,
    candidate_bank,
    collect_reads,
    run_arm,
    run_e2e,
)
from storagebench.node import FETCH_CACHED, VECTOR_PUT, NodeClient
from storagebench.ranker_stage import RankerStage
from storagebench.refresh import RefreshPolicy, initial_refresh, live_refresh
from storagebench.stores.base import StoreError, open_store
from workloads import ACTIONS, GeneratorConfig, generate

VECTOR_STORES = ("seqvault", "rocksdb_lastn", "rocksdb_packed")
DIM = 48


@pytest.fixture(scope="module")
def workload():
    return generate(GeneratorConfig.preset("small", users=40, live_seconds=4.0, seed=5))


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.mark.parametrize("store", VECTOR_STORES)
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_store_vectors_round_trip_keep_the_newest_version_and_survive_reopen(store: str, dtype: str, workload,
                                                                             tmp_path: Path) -> None:
    path = str(tmp_path / store)
    users = np.arange(10, 20, dtype=np.uint64)
    first, second = vectors(10, 1), vectors(10, 2)
    with open_store(store, path, workload.schema, max_len=50) as s:
        assert s.keeps_vectors
        layout = s.open_vectors(DIM, dtype)
        assert layout["entry_bytes"] == entry_bytes(DIM, dtype)
        assert s.put_vectors(users, np.full(10, 5, np.uint64), first) == 10
        # Older or equal versions never replace a newer one; newer ones do.
        assert s.put_vectors(users[:4], np.array([4, 5, 3, 5], np.uint64), second[:4]) == 0
        assert s.put_vectors(users[4:6], np.array([6, 9], np.uint64), second[4:6]) == 2
        # Within one call, the highest version of a user wins whatever the order.
        assert s.put_vectors(np.array([30, 30, 30], np.uint64), np.array([2, 7, 1], np.uint64), second[6:9]) == 1
        again = s.open_vectors(DIM, dtype)                   # idempotent for the same layout
        assert {k: again[k] for k in ("dim", "dtype", "entry_bytes")} == {
            k: layout[k] for k in ("dim", "dtype", "entry_bytes")}
        with pytest.raises(Exception, match="dim"):          # the same table, never another layout
            s.open_vectors(DIM + 1, dtype)
        s.flush()
    with open_store(store, path, workload.schema, max_len=50) as s:
        s.open_vectors(DIM, dtype)
        query = np.array([*users.tolist(), 30, 999], dtype=np.uint64)
        found, entries = s.get_vector_entries(query)
        assert found.tolist() == [True] * 11 + [False]
        uids, versions, got = decode_entries(entries[found].tobytes(), DIM, dtype)
        assert uids.tolist() == query[:11].tolist()
        assert versions.tolist() == [5, 5, 5, 5, 6, 9, 5, 5, 5, 5, 7]
        expected = np.concatenate([first[:4], second[4:6], first[6:], second[7:8]])
        _, _, quantised = decode_entries(encode_entries(query[:11], versions, expected, dtype).tobytes(), DIM, dtype)
        np.testing.assert_array_equal(got, quantised)   # the same bytes in every store
        tolerance = 1e-2 if dtype == "fp16" else np.abs(expected).max() / 127
        np.testing.assert_allclose(got, expected, atol=tolerance)
        assert not entries[~found].any()


def test_stores_without_vectors_say_which_do(workload, tmp_path: Path) -> None:
    with open_store("memory", str(tmp_path / "m"), workload.schema, max_len=10) as s:
        assert not s.keeps_vectors
        with pytest.raises(StoreError, match="seqvault, rocksdb_lastn, rocksdb_packed"):
            s.open_vectors(DIM, "fp16")
        with pytest.raises(StoreError, match="does not keep cached vectors"):   # not "call open_vectors"
            s.get_vector_entries(np.array([1], np.uint64))
    with open_store("rocksdb_packed", str(tmp_path / "r"), workload.schema, max_len=10) as s:
        with pytest.raises(StoreError, match="open_vectors first"):
            s.put_vectors(np.array([1], np.uint64), np.array([1], np.uint64), vectors(1, 0))
        with pytest.raises(StoreError, match="dtype"):
            s.open_vectors(DIM, "fp8")


def test_vector_put_payload_is_checked() -> None:
    uids, versions = np.arange(3, dtype=np.uint64), np.arange(3, dtype=np.uint64)
    payload = p.encode_vector_put(uids, versions, vectors(3, 0))
    got = p.decode_vector_put(payload)
    assert got[0].tolist() == [0, 1, 2] and got[2].shape == (3, DIM)
    with pytest.raises(p.ProtocolError, match="bytes"):
        p.decode_vector_put(payload[:-4])
    with pytest.raises(p.ProtocolError, match="out of range"):
        p.decode_vector_put(p.encode_u32(3) + p.encode_u32(0))
    with pytest.raises(p.ProtocolError, match="one version and one row per user"):
        p.encode_vector_put(uids, versions[:2], vectors(3, 0))
    assert p.decode_fetch(p.encode_fetch(7, 0, 0, 0), cached=True)[1] == 0
    with pytest.raises(p.ProtocolError, match=r"in 1\.\."):
        p.decode_fetch(p.encode_fetch(7, 0, 0, 0))


def test_node_serves_vectors_beside_the_events(workload, tmp_path: Path) -> None:
    with NodeClient("seqvault", str(tmp_path / "sv"), workload.schema, {"max_len": 30}) as client:
        for uids, cols in workload.iter_backfill():
            client.call("bulk_load", uids, cols)
        client.call("finish_load")
        assert client.call("open_vectors", DIM, "bf16")["entry_bytes"] == entry_bytes(DIM, "bf16")
        user = int(next(iter(backfill_counts(workload))))
        assert client.call(VECTOR_PUT, np.array([user], np.uint64), np.array([11], np.uint64), vectors(1, 3)) == 1
        payload, events, _, entry = client.call(FETCH_CACHED, np.array([user], np.uint64), 8, "columns", "raw")
        assert events == 8 and len(payload) > 0
        uids, versions, got = decode_entries(entry, DIM, "bf16")
        assert uids.tolist() == [user] and versions.tolist() == [11]
        np.testing.assert_allclose(got[0], vectors(1, 3)[0], rtol=1e-2, atol=1e-2)
        # A user without a vector: no entry, the events still come; last_n 0 sends the vector alone.
        other = np.array([user + 10**9], np.uint64)
        assert client.call(FETCH_CACHED, other, 8, "columns", "raw")[3] is None
        assert client.call(FETCH_CACHED, np.array([user], np.uint64), 0, "columns", "raw")[1] == 0
        assert client.call("vector_stats")["dim"] == DIM


def test_refresh_policy_bounds_staleness_and_versions_are_event_positions(workload, tmp_path: Path) -> None:
    """Refreshing after every op with K=5: no read sees a summary 5 or more events behind; every stored
    version is the user's event count when it was computed, never more than it has."""
    policy = RefreshPolicy(every_events=5, on_conversion=False, batch_ops=1, batch_users=16)
    with NodeClient("seqvault", str(tmp_path / "sv"), workload.schema, {"max_len": 200}) as client:
        for uids, cols in workload.iter_backfill():
            client.call("bulk_load", uids, cols)
        client.call("finish_load")
        ranker = RankerStage("llatte", 16, workload.schema, "columns", "raw", device="cpu", history_len=200)
        client.call("open_vectors", ranker.vector_dim, "fp16")
        counts = backfill_counts(workload)
        initial = initial_refresh(client, ranker, counts, 0, policy)
        assert initial["users"] == len(counts) and initial["cpu_s"] > 0
        covered = dict(counts)
        live = live_refresh(client, ranker, workload.iter_live(chunk_ops=1), counts, covered, policy, 600)
        assert live["ops"] == 600 and live["events"] > 0 and live["refreshes"] > 0
        assert live["staleness_events"]["max"] < 5
        assert live["cpu_us_per_event"] > 0
        users = np.fromiter(covered, dtype=np.uint64)
        payloads = [client.call(FETCH_CACHED, users[i : i + 1], 0, "columns", "raw")[3] for i in range(len(users))]
        uids, versions, _ = decode_entries(b"".join(payloads), ranker.vector_dim, "fp16")
        stored = dict(zip(uids.tolist(), versions.tolist(), strict=True))
        assert stored == covered
        assert all(stored[u] <= counts[u] and counts[u] - stored[u] < 5 for u in stored)


def test_refresh_on_conversion_refreshes_converting_users(workload, tmp_path: Path) -> None:
    by_count = RefreshPolicy(every_events=10**6, on_conversion=False, batch_ops=50)
    by_conversion = RefreshPolicy(every_events=10**6, on_conversion=True, batch_ops=50)
    results = []
    for i, policy in enumerate((by_count, by_conversion)):
        with NodeClient("rocksdb_packed", str(tmp_path / f"r{i}"), workload.schema, {"max_len": 100}) as client:
            for uids, cols in workload.iter_backfill():
                client.call("bulk_load", uids, cols)
            ranker = RankerStage("vista", 0, workload.schema, "columns", "raw", device="cpu", history_len=100)
            client.call("open_vectors", ranker.vector_dim, "int8")
            counts = backfill_counts(workload)
            covered = dict(counts)
            results.append(live_refresh(client, ranker, workload.iter_live(chunk_ops=50), counts, covered,
                                        policy, 2000))
    conversions = sum(int(np.isin(c.events[1]["action"], [ACTIONS[a] for a in by_conversion.conversion_actions]).sum())
                      for c in [next(workload.iter_live(chunk_ops=2000))])
    assert conversions > 0
    assert results[0]["refreshes"] == 0
    assert 0 < results[1]["refreshes"] <= conversions
    assert results[1]["staleness_events"]["mean"] <= results[0]["staleness_events"]["mean"]


def test_policy_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="never refreshes"):
        RefreshPolicy(every_events=0, on_conversion=False)
    with pytest.raises(ValueError, match="unknown conversion"):
        RefreshPolicy(conversion_actions=("buy",))


def tiny(**kw: object) -> E2EConfig:
    base = {"seq_len": 64, "candidates": 8, "top_k": 3, "rate": 20.0, "warmup_s": 0.2, "window_s": 1.0,
            "budget_ms": 1000.0, "search_s": 0.0, "io": "buffered", "wire_sample_users": 10,
            "dict_train_users": 20, "dict_bytes": 2048, "device": "cpu", "refresh_ops": 500}
    return E2EConfig(**{**base, **kw})


def test_cached_arm_serves_the_stored_summary_and_newest_events(workload, tmp_path: Path) -> None:
    """LLaTTE N=16: each request's top k equals scoring the user's stored vector and newest 16 events
    directly with the same weights."""
    cfg = tiny()
    reads, bank = collect_reads(workload), candidate_bank(workload, cfg.candidates, seed=cfg.seed)
    path = str(tmp_path / "store")
    run, result, reqs = run_arm(workload, "seqvault", "llatte", cfg, reads, bank, path, events=16)
    assert result.completed and run["cached"] and run["events_per_request"] == 16
    assert run["refresh"]["initial"]["users"] == len(backfill_counts(workload))
    live = run["refresh"]["live"]
    assert live["ops"] == 500 and live["staleness_events"] is not None
    width = run["refresh"]["layout"]["entry_bytes"]
    assert run["wire"]["vector_bytes_per_request"] == width
    assert run["requests_without_cached_vector"] == 0          # every loaded user was summarised first
    assert run["stored"]["vectors"]["dim"] == 4 * 128
    assert run["flops"]["per_request_macs"] > 0 and run["flops"]["refresh_macs"] > run["flops"]["history_macs"]

    ranker = RankerStage("llatte", 16, workload.schema, "columns", "raw", device="cpu", seed=cfg.seed,
                         history_len=cfg.seq_len)
    sets = len(reqs.cand_items)
    with open_store("seqvault", path, workload.schema, max_len=cfg.seq_len) as store:
        store.open_vectors(ranker.vector_dim, cfg.vector_dtype)
        for row, i in enumerate(range(reqs.measured_from, min(len(reqs), reqs.measured_from + 6))):
            user = reqs.users[i : i + 1]
            offsets, cols = store.get_many(user, 16)
            found, entries = store.get_vector_entries(user)
            assert found[0]
            cache, cold = ranker.decode_vectors([entries[0].tobytes()])
            hist = history_from_csr(offsets, cols, max_len=16, request_time_ms=reqs.request_time_ms[i : i + 1])
            cands = candidates_from_numpy(reqs.cand_items[i % sets][None],
                                          {"category": reqs.cand_side["category"][i % sets][None]})
            with ranker.torch.inference_mode():
                scores = ranker.model.score(ranker.model.encode_cached(cache, hist), cands)[0].numpy()
            assert cold == 0
            assert result.topk[row].tolist() == np.argsort(-scores, kind="stable")[: cfg.top_k].tolist()


def test_e2e_runs_the_cached_arms_and_the_cli_checks_them(workload, tmp_path: Path) -> None:
    out = tmp_path / "e2e"
    doc = run_e2e(workload, tiny(), str(out), arms=[Arm("rocksdb_lastn", "transformer", 16), Arm("seqvault", "vista"),
                                                   Arm("seqvault", "llatte", 16)])
    runs = {r["arm"]: r for r in doc["runs"]}
    assert set(runs) == {"rocksdb_lastn+transformer", "seqvault+vista", "seqvault+llatte"}
    assert runs["seqvault+vista"]["events_per_request"] == 0
    assert runs["seqvault+vista"]["mean_events_per_request"] == 0
    assert runs["seqvault+vista"]["wire"]["codec_on_data_path"] == "raw"
    assert runs["rocksdb_lastn+transformer"]["store_max_len"] == 16
    assert runs["rocksdb_lastn+transformer"]["refresh"] is None
    for r in runs.values():
        assert all(r["stages"][s]["p99_ms"] >= 0 for s in STAGES)
        assert r["stored"]["disk_bytes_per_user"] > 0
    written = json.loads((out / "e2e.json").read_text())
    assert written["runs"][1]["refresh"]["live"]["policy"]["every_events"] == 64
    runner = CliRunner()
    res = runner.invoke(main, ["e2e", "--arm", "memory:vista"])
    assert res.exit_code == 2 and "keeps no cached vectors" in res.output
    res = runner.invoke(main, ["e2e", "--arm", "seqvault:laser:many"])
    assert res.exit_code == 2 and "whole number" in res.output
    res = runner.invoke(main, ["e2e", "--arm", "seqvault:laser", "--arm", "seqvault:laser"])
    assert res.exit_code == 2 and "twice" in res.output
    res = runner.invoke(main, ["e2e", "--arm", "seqvault:llatte:0"])     # refused before any load
    assert res.exit_code == 2 and "N must be >= 1 for llatte" in res.output
    assert runner.invoke(main, ["e2e", "--arm", "seqvault:vista:0", "--help"]).exit_code == 0


def test_bf16_and_compile_fallback_on_the_serving_path(workload, tmp_path: Path, monkeypatch) -> None:
    """bf16 weights score the cached path; a torch.compile that fails falls back to eager with a note."""
    import torch

    def broken_compile(fn, **_kw):
        def call(*_a, **_k):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    cfg = tiny(dtype="bf16", compiled=True, refresh_ops=100, window_s=0.5)
    reads, bank = collect_reads(workload), candidate_bank(workload, cfg.candidates, seed=cfg.seed)
    run, result, _ = run_arm(workload, "seqvault", "llatte", cfg, reads, bank, str(tmp_path / "s"), events=8)
    assert result.completed and (result.topk >= 0).all()
    assert run["ranker"]["dtype"] == "bf16" and run["ranker"]["compiled"] is False
    assert "no compiler here" in run["ranker"]["compile_note"]
    with pytest.raises(ValueError, match="dtype"):
        tiny(dtype="fp8")
