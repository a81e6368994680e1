"""Store bindings in-process: one read of a full N=1000 sequence, one ingestion append, the text codec.

These isolate the per-operation cost each store pays (no process boundary, no queueing), which is
what the CPU columns of Table 1 are made of. Sizes: STORES_BENCH_USERS (default 2,000 users of
1,000 events each). Run: ``tox -e perf -- -k bench_stores`` or
``pytest tests/benchmarks/test_bench_stores.py --benchmark-enable``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from seqvault.schema import Field, Schema
from storagebench.stores import open_store, store_names
from storagebench.stores.text_codec import decode_text, encode_text

USERS = int(os.environ.get("STORES_BENCH_USERS", "2000"))
N = 1000
SCHEMA = Schema([
    Field("item_id", "uint32"), Field("ts", "int64"), Field("action", "uint8"), Field("scenario", "uint8"),
    Field("dwell_ms", "uint32"), Field("category", "uint16"), Field("author_id", "uint32"),
], time_field="ts", name="default")
DISK_STORES = ["rocksdb_lastn", "rocksdb_packed", "seqvault"]


def events(rng: np.random.Generator, uids: np.ndarray, t0: int) -> dict[str, np.ndarray]:
    n = len(uids)
    return {"item_id": rng.integers(0, 500_000, n).astype(np.uint32),
            "ts": t0 + np.arange(n, dtype=np.int64) * 1000,
            "action": rng.integers(0, 6, n).astype(np.uint8), "scenario": rng.integers(0, 3, n).astype(np.uint8),
            "dwell_ms": rng.integers(0, 60_000, n).astype(np.uint32),
            "category": rng.integers(0, 1000, n).astype(np.uint16),
            "author_id": rng.integers(0, 60_000, n).astype(np.uint32)}


@pytest.fixture(scope="module", params=DISK_STORES)
def loaded(request, tmp_path_factory):
    if request.param not in store_names():
        pytest.skip(f"{request.param} not available")
    rng = np.random.default_rng(0)
    uids = np.repeat(np.arange(USERS, dtype=np.uint64), N)
    store = open_store(request.param, str(tmp_path_factory.mktemp(request.param)), SCHEMA, max_len=N,
                       direct_io=False, dram_budget_bytes=16 << 20)
    store.bulk_load(uids, events(rng, uids, 1_600_000_000_000))
    store.finish_load()
    yield request.param, store, rng
    store.close()


def test_read_one_full_sequence(benchmark, loaded):
    _, store, rng = loaded
    users = rng.integers(0, USERS, 10_000).astype(np.uint64)
    it = iter(users.tolist() * 100)

    def read():
        return store.get_many(np.array([next(it)], dtype=np.uint64), N)

    offsets, _ = benchmark(read)
    assert offsets[-1] == N


def test_append_one_ingestion_batch(benchmark, loaded):
    # One batch: 100 users with 4 new events each, the read-modify-write case for RocksDB.
    _, store, rng = loaded
    clock = iter(range(1, 10**9))

    def append():
        uids = np.repeat(rng.choice(USERS, 100, replace=False).astype(np.uint64), 4)
        store.append(uids, events(rng, uids, 1_700_000_000_000 + next(clock) * 10_000_000))

    benchmark(append)
    store.maintain()


def test_text_codec_round_trip_of_one_sequence(benchmark):
    rng = np.random.default_rng(1)
    cols = events(rng, np.zeros(N, dtype=np.uint64), 1_600_000_000_000)

    def round_trip():
        return decode_text(encode_text(cols, SCHEMA), SCHEMA)

    back = benchmark(round_trip)
    np.testing.assert_array_equal(back["item_id"], cols["item_id"])
