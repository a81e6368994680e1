"""The DRAM hash index against a Python dict model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqvault.index import (
    MAX_COUNT,
    MAX_FILE_ID,
    MAX_LENGTH,
    MAX_OFFSET,
    SLOT_BYTES,
    HashIndex,
    IndexEntries,
    IndexEntry,
)

Value = tuple[int, int, int, int, int]  # file_id, offset, length, count, checksum

# A small key pool makes updates, deletes of present keys and re-inserts after deletes common;
# the extremes must work as ordinary keys.
SPECIAL = [0, 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
keys_st = st.one_of(st.sampled_from(SPECIAL), st.integers(0, 40), st.integers(0, 2**64 - 1))
value_st = st.tuples(st.integers(0, MAX_FILE_ID), st.integers(0, MAX_OFFSET), st.integers(0, MAX_LENGTH),
                     st.integers(0, MAX_COUNT), st.integers(0, 2**32 - 1))
op_st = st.one_of(
    st.tuples(st.just("upsert"), st.lists(st.tuples(keys_st, value_st), max_size=30)),
    st.tuples(st.just("delete"), st.lists(keys_st, max_size=12)),
    st.tuples(st.just("rebuild"), st.none()),
)


def upsert(idx: HashIndex, rows: list[tuple[int, Value]]) -> None:
    cols = list(zip(*[(k, *v) for k, v in rows], strict=True)) if rows else [[]] * 6
    uid, fid, off, ln, cnt, crc = (np.array(c, dtype=np.uint64) for c in cols)
    idx.upsert(uid, fid, off, ln, cnt, crc)


def check_against(idx: HashIndex, model: dict[int, Value], probes: list[int]) -> None:
    assert len(idx) == len(model)
    assert idx.nbytes == SLOT_BYTES * idx.capacity
    assert len(model) <= idx.capacity * idx.max_load
    queries = list(model) + probes
    found = idx.lookup(np.array(queries, dtype=np.uint64))
    for i, key in enumerate(queries):
        want = model.get(key)
        got = found.entry(i)
        assert got == (None if want is None else IndexEntry(key, *want)), key
        assert idx.get(key) == got
    e = idx.entries()
    assert e.found.all()
    as_dict = {int(e.user_id[i]): e.entry(i)[1:] for i in range(len(e))}
    assert as_dict == model


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # examples: see conftest
@given(ops=st.lists(op_st, max_size=25), capacity=st.integers(1, 20),
       max_load=st.sampled_from([0.5, 0.85, 0.95]), probes=st.lists(keys_st, max_size=10))
def test_matches_dict_model(ops: list, capacity: int, max_load: float, probes: list[int]) -> None:
    idx = HashIndex(capacity, max_load=max_load)
    model: dict[int, Value] = {}
    for kind, arg in ops:
        if kind == "upsert":
            upsert(idx, arg)
            model.update(dict(arg))  # later duplicates win, as in the index
        elif kind == "delete":
            removed = idx.delete(np.array(arg, dtype=np.uint64))
            # Duplicates in one call count once: the second finds the key already gone.
            assert removed == sum(1 for k in dict.fromkeys(arg) if k in model)
            for k in arg:
                model.pop(k, None)
        else:
            snapshot = idx.copy()
            idx = HashIndex.from_entries(idx.entries(), max_load=max_load)
            check_against(snapshot, model, probes)
        check_against(idx, model, probes)


def test_copy_is_independent() -> None:
    idx = HashIndex()
    idx.upsert(np.array([1, 2], np.uint64), 1, 10, 100, 5, 7)
    other = idx.copy()
    idx.upsert(np.array([3], np.uint64), 2, 20, 200, 6, 8)
    idx.delete(np.array([1], np.uint64))
    assert other.get(1) == IndexEntry(1, 1, 10, 100, 5, 7)
    assert other.get(3) is None and len(other) == 2
    assert idx.get(1) is None and len(idx) == 2


def test_from_entries_skips_not_found_rows_and_round_trips() -> None:
    rng = np.random.default_rng(5)
    uids = np.unique(rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True))
    idx = HashIndex()
    idx.upsert(uids, uids % 7, uids % 1000, uids % 977, uids % 300, uids >> np.uint64(32))
    queried = idx.lookup(np.concatenate([uids[:100], np.array([12345678901], np.uint64)]))
    assert queried.found[:100].all() and not queried.found[100]
    rebuilt = HashIndex.from_entries(queried)
    assert len(rebuilt) == 100
    full = HashIndex.from_entries(idx.entries())
    assert full.nbytes / len(full) <= 32
    e1, e2 = idx.entries(), full.entries()
    o1, o2 = np.argsort(e1.user_id), np.argsort(e2.user_id)
    for name in ("user_id", "file_id", "offset", "length", "count", "checksum"):
        np.testing.assert_array_equal(getattr(e1, name)[o1], getattr(e2, name)[o2], err_msg=name)
    assert isinstance(e1, IndexEntries) and e1.checksum.dtype == np.uint32


def test_bytes_per_user_after_grow_and_at_max_load() -> None:
    idx = HashIndex(1000)
    limit = int(1000 * idx.max_load)
    idx.upsert(np.arange(limit, dtype=np.uint64), 1, 2, 3, 4, 5)
    assert idx.capacity == 1000
    at_max = idx.nbytes / len(idx)
    assert at_max <= 32, at_max
    idx.upsert(np.array([10**12], np.uint64), 1, 2, 3, 4, 5)  # one more: grows 1.5x
    assert idx.capacity > 1000
    after_grow = idx.nbytes / len(idx)
    assert 40 < after_grow < 50, after_grow


def test_a_big_upsert_grows_once_to_the_packed_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk load of many new keys rebuilds once, straight to from_entries' size (<= 32 B/user),
    instead of once per 1.5x step (ending anywhere up to 46 B/user)."""
    idx = HashIndex()
    idx.upsert(np.arange(100, dtype=np.uint64), 1, 2, 3, 4, 5)
    rebuilds: list[int] = []
    real = HashIndex._rebuild
    monkeypatch.setattr(HashIndex, "_rebuild", lambda self, cap: (rebuilds.append(cap), real(self, cap))[1])
    keys = np.arange(200_000, dtype=np.uint64) * np.uint64(3)  # 34 of them are present already
    idx.upsert(np.concatenate([keys, keys[:1000]]), 1, 2, 3, 4, 5)  # duplicates count once
    assert len(rebuilds) == 1 and len(idx) == 200_000 + 100 - 34
    assert idx.nbytes / len(idx) <= 32, idx
    assert idx.lookup(keys).found.all() and idx.lookup(np.arange(100, dtype=np.uint64)).found.all()


def test_a_full_table_grows_by_its_new_keys_not_its_batch_size() -> None:
    idx = HashIndex(1000)
    keys = np.arange(int(1000 * idx.max_load), dtype=np.uint64)
    idx.upsert(keys, 1, 2, 3, 4, 5)
    # Mostly updates of present keys (a merge's batch), one new key at the end: a 1.5x grow only.
    idx.upsert(np.concatenate([keys, keys, keys, np.full(50, 10**12, np.uint64)]), 2, 2, 3, 4, 5)
    assert idx.capacity == int(1000 * idx.growth) + 1 and len(idx) == len(keys) + 1
    # After deletes, a batch of updates and a few new keys fits without growing.
    assert idx.delete(keys[:600]) == 600
    before = idx.capacity
    idx.upsert(np.concatenate([keys[600:], np.arange(10**6, 10**6 + 300, dtype=np.uint64)]), 3, 2, 3, 4, 5)
    assert idx.capacity == before and len(idx) == len(keys) - 600 + 1 + 300
    assert (idx.lookup(keys[600:]).file_id == 3).all()


def test_deletes_then_inserts_reuse_space_without_growing() -> None:
    idx = HashIndex(100)
    for round_ in range(20):
        ids = np.arange(round_ * 50, round_ * 50 + 50, dtype=np.uint64)
        idx.upsert(ids, 1, 2, 3, 4, 5)
        assert idx.delete(ids) == 50
    assert len(idx) == 0 and idx.capacity == 100


def test_out_of_range_values_are_refused_whole() -> None:
    idx = HashIndex()
    good = dict(file_ids=[1, 1], offsets=[0, 0], lengths=[10, 10], counts=[1, 1], checksums=[0, 0])
    for name, bad in (("file_ids", MAX_FILE_ID + 1), ("offsets", MAX_OFFSET + 1), ("counts", MAX_COUNT + 1),
                      ("lengths", MAX_LENGTH + 1), ("checksums", 2**32), ("offsets", -1)):
        args = {**good, name: [1, bad]}
        with pytest.raises(ValueError, match="row 1"):
            idx.upsert(np.array([1, 2], np.uint64), **args)
    assert len(idx) == 0
    with pytest.raises(ValueError, match="shape"):
        idx.upsert(np.array([1, 2], np.uint64), [1, 2, 3], 0, 0, 0, 0)


def test_readers_see_present_keys_while_a_writer_inserts_and_grows() -> None:
    idx = HashIndex(64)
    stable = np.arange(1, 41, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    idx.upsert(stable, 3, stable % np.uint64(1000), 77, 9, 11)
    failures: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            e = idx.lookup(stable)
            if not e.found.all() or not (e.offset == (stable % np.uint64(1000)).astype(np.int64)).all():
                failures.append("lookup")
            got = idx.get(int(stable[7]))
            if got is None or got.length != 77:
                failures.append("get")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for start in range(0, 200_000, 5_000):  # many grows while the reader runs
            idx.upsert(np.arange(start, start + 5_000, dtype=np.uint64) * np.uint64(2) + np.uint64(2**40),
                       1, 2, 3, 4, 5)
    finally:
        stop.set()
        t.join()
    assert not failures, failures[:5]
    assert len(idx) == 200_040


def test_colliding_keys_wrap_around_and_survive_deletes() -> None:
    from seqvault.index import _home

    cap = 16
    # Keys whose home is the last slot: their probe chain must wrap around to slot 0.
    same_home = [k for k in range(20_000) if _home(np.uint64(k), cap) == cap - 1][:6]
    assert len(same_home) == 6
    idx = HashIndex(cap, max_load=0.5)
    keys = np.array(same_home, np.uint64)
    idx.upsert(keys, np.arange(6), np.arange(6) * 10, 1, 1, 0)
    assert idx.capacity == cap
    assert idx.delete(keys[[1, 3]]) == 2  # tombstones in the middle of the chain
    for i, k in enumerate(same_home):
        got = idx.get(k)
        assert (got is None) if i in (1, 3) else (got.offset == i * 10), i
    idx.upsert(keys[[3]], 9, 99, 1, 1, 0)  # re-insert reuses a tombstone
    assert idx.get(same_home[3]).offset == 99 and len(idx) == 5
    assert idx.capacity == cap
