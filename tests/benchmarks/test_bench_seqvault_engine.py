"""SeqVault engine benchmarks: read latency, append / merge / decode throughput, bytes per event.

Sizes scale with SEQVAULT_BENCH_SCALE (default 1 for the smoke run under --benchmark-disable;
use e.g. 10 for the figures). Throughputs land in each benchmark's extra_info.

Targets: append >= 1M events/s/core (batched), merge >= 1M events/s/core, decode >= 1 GB/s of
decoded columns per core, data bytes per event <= 30% of every field stored as int64.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from seqvault import Field, MergePolicy, Schema, SeqVault
from seqvault.codec import decode_records

SCALE = max(1, int(os.environ.get("SEQVAULT_BENCH_SCALE", "1")))
SCHEMA = Schema([Field("item_id", "uint32"), Field("ts", "int64"), Field("action", "uint8"),
                 Field("scenario", "uint8"), Field("dwell_ms", "uint32"), Field("category", "uint16"),
                 Field("author_id", "uint32")], time_field="ts")


def events(rng: np.random.Generator, uids: np.ndarray) -> dict[str, np.ndarray]:
    """Workload-like columns: increasing times with gaps, Zipf-ish ids, small codes."""
    n = len(uids)
    return {
        "item_id": (rng.zipf(1.3, n) % 500_000).astype(np.uint32),
        "ts": 1_700_000_000_000 + np.cumsum(rng.exponential(8000, n)).astype(np.int64),
        "action": rng.integers(0, 6, n).astype(np.uint8),
        "scenario": rng.integers(0, 3, n).astype(np.uint8),
        "dwell_ms": rng.exponential(5000, n).astype(np.uint32),
        "category": (rng.zipf(1.5, n) % 1000).astype(np.uint16),
        "author_id": (rng.zipf(1.3, n) % 60_000).astype(np.uint32),
    }


def full_store(path: Path, n_users: int, per_user: int = 1000) -> SeqVault:
    """n_users users with ``per_user`` events each, on disk (bulk loaded)."""
    rng = np.random.default_rng(0)
    sv = SeqVault.open(path, schema=SCHEMA, max_len=1000, merge_policy=MergePolicy(max_buffer_events=10**9))
    uids = np.repeat(np.arange(n_users, dtype=np.uint64), per_user)
    sv.bulk_load(uids, events(rng, uids))
    return sv


@pytest.fixture(scope="module")
def read_store(tmp_path_factory: pytest.TempPathFactory) -> SeqVault:
    sv = full_store(tmp_path_factory.mktemp("svbench") / "read", n_users=512)
    yield sv
    sv.close()


def _rate(benchmark: object, amount: float, unit: str) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        benchmark.extra_info[unit] = round(amount / stats.stats.median)


@pytest.fixture(scope="module")
def buffered_store(tmp_path_factory: pytest.TempPathFactory) -> SeqVault:
    """512 users on disk plus a replay-like update buffer: 21k small single-user appends (1 + ~4
    events, as the workload's live sessions send), folded into sorted runs every 20 appends as
    background maintenance does (the storage node calls it every 50 ms), the last 10 not yet."""
    sv = full_store(tmp_path_factory.mktemp("svbench") / "buffered", n_users=512)
    rng = np.random.default_rng(6)
    for i, u in enumerate(rng.integers(0, 512, 21_000)):
        uids = np.full(1 + rng.poisson(4), u, np.uint64)
        sv.append(uids, events(rng, uids))
        if i % 20 == 9:
            sv.active.fold_pending()  # the fold step of SeqVault.maintain, without its merge policy
    sv.append([17] * 3, events(rng, np.full(3, 17, np.uint64)))
    yield sv
    sv.close()


# read_store: every event on disk; buffered_store: the newest events in the update buffer too
# (a read merges disk + buffer).
STORES = ["read_store", "buffered_store"]


@pytest.mark.parametrize("store", STORES)
def test_bench_get_1000_events(benchmark: object, store: str, request: pytest.FixtureRequest) -> None:
    sv = request.getfixturevalue(store)
    cols = benchmark(sv.get, 17)
    assert len(cols["ts"]) == 1000 and np.all(np.diff(cols["ts"]) >= 0)


@pytest.mark.parametrize("store", STORES)
def test_bench_get_many_256_users(benchmark: object, store: str, request: pytest.FixtureRequest) -> None:
    sv = request.getfixturevalue(store)
    users = np.random.default_rng(1).choice(512, 256, replace=False).astype(np.uint64)
    offsets, cols = benchmark(sv.get_many, users)
    assert offsets[-1] == 256 * 1000
    np.testing.assert_array_equal(cols["ts"][offsets[3]:offsets[4]], sv.get(int(users[3]))["ts"])
    _rate(benchmark, 256 * 1000, "events_per_s")


def test_bench_open(benchmark: object, tmp_path: Path) -> None:
    """Reopen a store of 200k users (index rebuilt from its snapshot); DRAM bytes per user in extra_info."""
    n_users = 200_000 * SCALE
    rng = np.random.default_rng(7)
    uids = np.arange(n_users, dtype=np.uint64)
    path = tmp_path / "o"
    with SeqVault.open(path, schema=SCHEMA, max_len=1000) as sv:
        sv.bulk_load(uids, events(rng, uids))
        loaded = sv.stats()["index_bytes"] / n_users

    def reopen() -> float:
        with SeqVault.open(path) as sv:
            return sv.stats()["index_bytes"] / n_users

    per_user = benchmark.pedantic(reopen, rounds=3)
    benchmark.extra_info.update(index_bytes_per_user_open=round(per_user, 1),
                                index_bytes_per_user_bulk_load=round(loaded, 1))


def test_bench_decode(benchmark: object, read_store: SeqVault) -> None:
    """Batch decode of 256 stored 1000-event records (the get_many decode step)."""
    e = read_store.index.lookup(np.arange(256, dtype=np.uint64))
    starts = np.zeros(257, np.int64)
    np.cumsum(e.length, out=starts[1:])
    buf = np.empty(int(starts[-1]), np.uint8)
    for i in range(256):
        read_store.files[int(e.file_id[i])].read_into(buf[starts[i]:starts[i + 1]], int(e.offset[i]))
    offsets, cols = benchmark(decode_records, buf, starts[:-1], SCHEMA)
    decoded = sum(c.nbytes for c in cols.values())
    assert offsets[-1] == 256 * 1000
    _rate(benchmark, decoded, "decoded_bytes_per_s")


def test_bench_append_batched(benchmark: object, tmp_path: Path) -> None:
    n_batches, batch = 10 * SCALE, 10_000
    rng = np.random.default_rng(2)
    batches = []
    for _ in range(n_batches):
        uids = rng.integers(0, 100_000, batch).astype(np.uint64)
        batches.append((uids, events(rng, uids)))
    stores = iter(range(10**6))

    def setup() -> tuple[tuple[SeqVault], dict]:
        path = tmp_path / f"a{next(stores)}"
        return (SeqVault.open(path, schema=SCHEMA, merge_policy=MergePolicy(max_buffer_events=10**9)),), {}

    def run(sv: SeqVault) -> None:
        for uids, cols in batches:
            sv.append(uids, cols)
        sv.close()

    benchmark.pedantic(run, setup=setup, rounds=3)
    _rate(benchmark, n_batches * batch, "events_per_s")


def test_bench_merge(benchmark: object, tmp_path: Path) -> None:
    """Merge 10 new events into each of N users holding 1000 on disk: counts events written."""
    n_users = 100 * SCALE
    sv = full_store(tmp_path / "m", n_users=n_users)
    rng = np.random.default_rng(3)

    def setup() -> tuple[tuple, dict]:
        uids = np.repeat(np.arange(n_users, dtype=np.uint64), 10)
        sv.append(uids, events(rng, uids))
        return (), {}

    benchmark.pedantic(sv.merge, setup=setup, rounds=3)
    assert sv.get(5)["ts"].shape == (1000,)
    _rate(benchmark, n_users * 1000, "events_per_s")
    sv.close()


def test_bench_bytes_per_event_default_workload(benchmark: object, tmp_path: Path) -> None:
    """The default workload schema's data bytes per event vs every field stored as int64."""
    from workloads import DEFAULT_SCHEMA, generate

    wl = generate(users=100 * SCALE, seed=4)
    path = tmp_path / "w"

    def load() -> SeqVault:
        shutil.rmtree(path, ignore_errors=True)
        sv = SeqVault.open(path, schema=DEFAULT_SCHEMA, max_len=10**6)
        for uids, cols in wl.iter_backfill():
            sv.bulk_load(uids, cols)
        return sv

    sv = benchmark.pedantic(load, rounds=1)
    s = sv.stats()
    per_event = (s["data_bytes"] - s["dead_bytes"]) / s["stored_events"]  # live records only
    as_int64 = 8 * len(DEFAULT_SCHEMA.fields)
    benchmark.extra_info.update(bytes_per_event=round(per_event, 2), int64_bytes_per_event=as_int64,
                                ratio=round(per_event / as_int64, 3), events=s["stored_events"])
    _rate(benchmark, s["stored_events"], "bulk_load_events_per_s")
    sv.close()
    assert per_event <= 0.30 * as_int64, f"{per_event:.1f} bytes/event vs {as_int64} as int64"


def test_bench_append_sync_group_commit(benchmark: object, tmp_path: Path) -> None:
    """8 threads each appending 100-event batches with sync=True: fsyncs are shared."""
    import threading

    rng = np.random.default_rng(5)
    uids = rng.integers(0, 10_000, 100).astype(np.uint64)
    batch = events(rng, uids)
    per_thread = 5 * SCALE
    sv = SeqVault.open(tmp_path / "g", schema=SCHEMA, merge_policy=MergePolicy(max_buffer_events=10**9))

    def run() -> None:
        threads = [threading.Thread(target=lambda: [sv.append(uids, batch, sync=True) for _ in range(per_thread)])
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    benchmark.pedantic(run, rounds=3)
    _rate(benchmark, 8 * per_thread, "synced_appends_per_s")
    sv.close()
