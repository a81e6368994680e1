"""One contract, every store binding: the same appends must give the same sequences back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from needs_redis import require_redis_server

from seqvault.schema import Field, Schema, SchemaError
from storagebench.stores import StoreError, open_store, store_names
from storagebench.stores.text_codec import (
    TextCodecError,
    decode_text,
    decode_text_many,
    encode_text,
    encode_text_many,
)

SCHEMA = Schema([Field("item", "uint64"), Field("action", "int8"), Field("dwell", "int32"),
                 Field("ts", "int64")], time_field="ts", name="contract")
STORES = ["memory", "rocksdb_lastn", "rocksdb_packed", "seqvault", "redis_lastn"]
DISK_STORES = [s for s in STORES if s != "memory"]


def _open(name: str, path, **kw):
    if name == "redis_lastn":
        require_redis_server()
    if name not in store_names():
        pytest.skip(f"store {name!r} is not available in this checkout")
    return open_store(name, str(path), SCHEMA, **kw)


def batch(rng: np.random.Generator, n: int, users: int, t0: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    uids = rng.integers(0, users, n).astype(np.uint64) * np.uint64(2**40 + 1)  # large, sparse ids
    return uids, {
        "item": rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True),
        "action": rng.integers(-128, 128, n).astype(np.int8),
        "dwell": rng.integers(-(2**31), 2**31, n).astype(np.int32),
        # distinct timestamps, not in arrival order: stores must sort
        "ts": t0 + rng.permutation(n).astype(np.int64) * 3,
    }


class Reference:
    """The contract in a few lines: per user, events by time (ties in arrival order), newest max_len."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.rows: dict[int, list[tuple]] = {}

    def append(self, uids, cols) -> None:
        for i, u in enumerate(uids.tolist()):
            self.rows.setdefault(u, []).append(tuple(int(cols[k][i]) for k in SCHEMA.names))
            rows = sorted(self.rows[u], key=lambda r: r[-1])
            self.rows[u] = rows[-self.max_len:]

    def expect(self, u: int, last_n: int) -> list[tuple]:
        return self.rows.get(u, [])[-last_n:] if last_n else []


def rows_of(offsets, cols, i: int) -> list[tuple]:
    s, e = int(offsets[i]), int(offsets[i + 1])
    return list(zip(*(cols[k][s:e].tolist() for k in SCHEMA.names), strict=True))


@pytest.mark.parametrize("name", STORES)
def test_random_appends_match_the_reference(name, tmp_path):
    rng = np.random.default_rng(7)
    ref = Reference(max_len=20)
    with _open(name, tmp_path / "s", max_len=20) as store:
        for b in range(6):
            uids, cols = batch(rng, 150, users=25, t0=1_000_000 - b * 200)
            store.append(uids, cols)
            ref.append(uids, cols)
            if b == 3:
                store.maintain()
        users = np.array([*sorted(ref.rows), 12345], dtype=np.uint64)  # one unknown user
        for last_n in (None, 5, 0):
            offsets, cols = store.get_many(users, last_n=last_n)
            assert offsets.dtype == np.int64 and offsets[0] == 0 and len(offsets) == len(users) + 1
            assert {k: v.dtype for k, v in cols.items()} == {f.name: f.np_dtype for f in SCHEMA.fields}
            for i, u in enumerate(users.tolist()):
                assert rows_of(offsets, cols, i) == ref.expect(u, 20 if last_n is None else last_n), (name, u)


@pytest.mark.parametrize("name", STORES)
def test_bulk_load_then_live_appends(name, tmp_path):
    rng = np.random.default_rng(3)
    ref = Reference(max_len=50)
    uids, cols = batch(rng, 400, users=40, t0=10_000)
    order = np.lexsort((cols["ts"], uids))  # backfill arrives sorted by (user, ts)
    uids, cols = uids[order], {k: v[order] for k, v in cols.items()}
    with _open(name, tmp_path / "s", max_len=50) as store:
        store.bulk_load(uids, cols)
        store.finish_load()
        ref.append(uids, cols)
        live_u, live_c = batch(rng, 100, users=40, t0=20_000)
        store.append(live_u, live_c)
        ref.append(live_u, live_c)
        users = np.array(sorted(ref.rows), dtype=np.uint64)
        offsets, got = store.get_many(users)
        for i, u in enumerate(users.tolist()):
            assert rows_of(offsets, got, i) == ref.expect(u, 50)


@pytest.mark.parametrize("name", STORES)
@pytest.mark.parametrize("how", ["append", "bulk_load"])
def test_the_caller_may_reuse_its_arrays_at_once(name, how, tmp_path):
    """A binding stores the values it was given, not views of the caller's arrays."""
    rng = np.random.default_rng(11)
    uids, cols = batch(rng, 60, users=6, t0=1_000)
    if how == "bulk_load":
        order = np.lexsort((cols["ts"], uids))
        uids, cols = uids[order], {k: v[order] for k, v in cols.items()}
    ref = Reference(max_len=100)
    ref.append(uids.copy(), {k: v.copy() for k, v in cols.items()})
    with _open(name, tmp_path / "s", max_len=100) as store:
        getattr(store, how)(uids, cols)
        if how == "bulk_load":
            store.finish_load()
        uids += np.uint64(1)  # the caller reuses its buffers for the next batch
        for v in cols.values():
            v[:] = 7
        store.maintain()
        users = np.array(sorted(ref.rows), dtype=np.uint64)
        offsets, got = store.get_many(users)
        for i, u in enumerate(users.tolist()):
            assert rows_of(offsets, got, i) == ref.expect(u, 100)


@pytest.mark.parametrize("name", DISK_STORES)
def test_data_survives_close_and_reopen(name, tmp_path):
    rng = np.random.default_rng(11)
    uids, cols = batch(rng, 200, users=10, t0=5)
    with _open(name, tmp_path / "s", max_len=1000) as store:
        store.append(uids, cols)
        before = store.get_many(np.unique(uids))
    with _open(name, tmp_path / "s", max_len=1000) as store:
        after = store.get_many(np.unique(uids))
        np.testing.assert_array_equal(before[0], after[0])
        for k in SCHEMA.names:
            np.testing.assert_array_equal(before[1][k], after[1][k])
        store.flush()
        disk = store.disk_bytes()
        assert disk["total"] == sum(v for k, v in disk.items() if k != "total") > 0
        json.dumps(store.config())
        json.dumps(store.stats())


@pytest.mark.parametrize("name", STORES)
def test_bad_batch_is_refused_and_stores_nothing(name, tmp_path):
    with _open(name, tmp_path / "s") as store:
        with pytest.raises(SchemaError, match="dwell"):
            store.append(np.array([1, 2], dtype=np.uint64),
                         {"item": np.array([1, 2], dtype=np.uint64), "action": np.array([0, 0], dtype=np.int8),
                          "ts": np.array([1, 2])})
        offsets, _ = store.get_many(np.array([1, 2], dtype=np.uint64))
        assert offsets.tolist() == [0, 0, 0]


def test_unknown_store_names_the_available_ones(tmp_path):
    with pytest.raises(StoreError, match="rocksdb_lastn"):
        open_store("no_such_store", str(tmp_path), SCHEMA)


def test_text_codec_matches_a_plain_python_reference():
    rng = np.random.default_rng(5)
    _uids, cols = batch(rng, 300, users=1, t0=-50)
    text = encode_text(cols, SCHEMA)
    expected = ";".join(",".join(str(int(cols[k][i])) for k in SCHEMA.names) for i in range(300))
    assert text == expected.encode()
    back = decode_text(text, SCHEMA)
    for k in SCHEMA.names:
        np.testing.assert_array_equal(back[k], cols[k])
        assert back[k].dtype == SCHEMA.dtype(k)
    assert {k: len(v) for k, v in decode_text(b"", SCHEMA).items()} == dict.fromkeys(SCHEMA.names, 0)


@pytest.mark.parametrize("bad", [b"1,2,3", b"1,2,3,4;", b"1,2,x,4", b"1,,3,4", b"1,2,3,4,5"])
def test_text_codec_refuses_malformed_values(bad):
    with pytest.raises(TextCodecError, match="comma-separated"):
        decode_text(bad, SCHEMA)


def test_batch_text_codec_equals_the_one_value_codec():
    # The append path encodes and decodes a whole batch per kernel call; each value must be
    # byte-for-byte what the one-user codec writes (reads decode one value with it).
    rng = np.random.default_rng(11)
    _uids, cols = batch(rng, 400, users=1, t0=-50)
    offsets = np.array([0, 0, 7, 150, 150, 400], dtype=np.int64)  # users with no events included
    buf, starts = encode_text_many(offsets, cols, SCHEMA)
    values = [buf[starts[i]:starts[i + 1]].tobytes() for i in range(5)]
    for i in range(5):
        part = {k: v[offsets[i]:offsets[i + 1]] for k, v in cols.items()}
        assert values[i] == encode_text(part, SCHEMA)
    back_off, back = decode_text_many([values[0], None, *values[1:]], SCHEMA)
    assert back_off.tolist() == [0, 0, 0, 7, 150, 150, 400]
    for k in SCHEMA.names:
        np.testing.assert_array_equal(back[k], cols[k])
        assert back[k].dtype == SCHEMA.dtype(k)
    with pytest.raises(TextCodecError, match="value 1 of the batch"):
        decode_text_many([values[2], b"1,2,x,4"], SCHEMA)
