"""The vector table (seqvault.vectors) and its entry codec (seqvault.vectorcodec): quantisation
against independent references, checksums, highest-version-wins against a dict model, and
durability on the simulated disk (power cut at every mutating call, failed fsyncs, torn slots)."""

from __future__ import annotations

import math
import random
import struct
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from seqvault import VECTOR_DTYPES, CorruptionError, Field, Schema, SeqVault, SeqVaultError, VectorTable
from seqvault.fs import FileSystem, StoreFailedError
from seqvault.simdisk import PowerCut, SimulatedDisk
from seqvault.vectorcodec import (
    HEADER_BYTES,
    checksums_ok,
    decode_entries,
    encode_entries,
    entry_bytes,
    float32_to_bf16_bits,
    payload_bytes,
    row_checksums,
)
from seqvault.vectors import SLOTS_NAME, entry_checksums

DIM = 8
UIDS = np.arange(10, dtype=np.uint64)


def vec(salt: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(salt).standard_normal(dim).astype(np.float32)


def stored(dtype: str, x: np.ndarray) -> np.ndarray:
    """What the table gives back for ``x``: the codec's round trip."""
    return decode_entries(encode_entries([0], [0], x[None, :], dtype), x.shape[-1], dtype)[2][0]


def state(t: VectorTable, uids: np.ndarray = UIDS) -> dict[int, tuple[int, bytes]]:
    found, versions, vectors = t.get(uids)
    return {int(u): (int(v), x.tobytes()) for u, f, v, x in zip(uids, found, versions, vectors, strict=True) if f}


# -- codec ------------------------------------------------------------------------------------------
def _f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _bf16_value(b: int) -> Fraction | None:
    """Exact value of bf16 bits ``b`` (None for inf/NaN)."""
    x = struct.unpack("<f", struct.pack("<I", (b & 0xFFFF) << 16))[0]
    return None if not math.isfinite(x) else Fraction(x)


def bf16_reference(bits: int) -> int:
    """Round float32 ``bits`` to bf16, nearest, ties to even, by exact rational comparison."""
    x = struct.unpack("<f", struct.pack("<I", bits))[0]
    if math.isinf(x):
        return bits >> 16
    sign, down = bits & 0x80000000, (bits & 0x7FFFFFFF) >> 16  # truncation toward zero, and one ulp up
    exact = abs(Fraction(x))
    lo = _bf16_value(down)
    hi = _bf16_value(down + 1)
    hi = Fraction(2) ** 128 if hi is None else hi  # past the largest finite bf16 lies 2**128: infinity
    d_lo, d_hi = exact - lo, hi - exact
    up = d_hi < d_lo or (d_hi == d_lo and down & 1)
    return (sign >> 16) | (down + up)


def _interesting_bits() -> np.ndarray:
    rng = np.random.default_rng(1)
    tops = rng.integers(0, 1 << 16, 60, dtype=np.uint32) << np.uint32(16)
    low = np.array([0x0000, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)  # below, at and above the tie
    special = [0, 0x80000000, 1, 0x8000, 0x00018000, 0x00028000, 0x007FFFFF, 0x00800000, 0x3F808000, 0x3F818000,
               0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000]
    random_bits = rng.integers(0, 1 << 32, 200, dtype=np.uint64).astype(np.uint32)
    bits = np.concatenate([(tops[:, None] | low[None, :]).ravel(), np.array(special, np.uint32), random_bits])
    return bits[~np.isnan(bits.view(np.float32))]


def test_bf16_rounding_matches_an_exact_reference() -> None:
    bits = _interesting_bits()
    assert len(bits) > 400
    got = float32_to_bf16_bits(bits.view(np.float32))
    want = np.array([bf16_reference(int(b)) for b in bits], np.uint16)
    wrong = np.flatnonzero(got != want)
    assert not len(wrong), [(hex(bits[i]), hex(got[i]), hex(want[i])) for i in wrong[:5]]


def test_bf16_keeps_nan_nan() -> None:
    nans = np.array([0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7F80FFFF, 0xFFC00001], np.uint32)
    out = float32_to_bf16_bits(nans.view(np.float32)).astype(np.uint32) << np.uint32(16)
    assert np.isnan(out.view(np.float32)).all()  # truncating 0x7F800001 would give infinity
    assert ((out >> np.uint32(31)) == (nans >> np.uint32(31))).all()


@pytest.mark.parametrize("dtype", VECTOR_DTYPES)
def test_codec_round_trip_against_references(dtype: str) -> None:
    rng = np.random.default_rng(2)
    dim = 37  # odd: int8 entries need padding
    x = (rng.standard_normal((64, dim)) * rng.choice([1e-6, 1e-3, 1, 30, 1e3], (64, 1))).astype(np.float32)
    x[0] = 0  # a zero vector
    if dtype != "int8":
        x[1, :8] = [np.inf, -np.inf, 1e-40, -1e-45, 7e4, 65519, 3e38, -0.0]  # subnormals, overflow
    uids = rng.integers(0, 2**64, 64, dtype=np.uint64)
    versions = rng.integers(0, 2**64, 64, dtype=np.uint64)
    entries = encode_entries(uids, versions, x, dtype)
    width = entry_bytes(dim, dtype)
    assert entries.shape == (64, width) and width % 8 == 0
    assert width == (HEADER_BYTES + payload_bytes(dim, dtype) + 4 + 7) // 8 * 8
    u, v, y = decode_entries(entries, dim, dtype)
    assert (u == uids).all() and (v == versions).all() and y.dtype == np.float32
    scale = np.frombuffer(entries[:, 16:20].tobytes(), "<f4")
    assert struct.unpack_from("<QQ", entries[5].tobytes()) == (int(uids[5]), int(versions[5]))
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))
        assert (scale == 1).all()
    elif dtype == "bf16":
        want = np.array([bf16_reference(int(b)) for b in x.view(np.uint32).ravel()], np.uint32) << np.uint32(16)
        np.testing.assert_array_equal(y.view(np.uint32).ravel(), want)
        assert (scale == 1).all()
    else:
        np.testing.assert_allclose(scale, np.abs(x).max(axis=1) / 127, rtol=1e-6)
        assert scale[0] == 0 and (y[0] == 0).all()
        assert (np.abs(x - y) <= scale[:, None] / 2 * (1 + 1e-5)).all()
    # the wire: any bytes-like buffer of whole entries decodes the same
    for buf in (entries.tobytes(), bytearray(entries.tobytes()), memoryview(entries.tobytes())):
        np.testing.assert_array_equal(decode_entries(buf, dim, dtype)[2], y)
    with pytest.raises(CorruptionError, match="whole number"):
        decode_entries(entries.tobytes()[:-1], dim, dtype)


def test_int8_refuses_non_finite_values() -> None:
    with pytest.raises(SeqVaultError, match="NaN or infinity"):
        encode_entries([1], [1], np.array([[1.0, np.nan]], np.float32), "int8")


def test_checksum_is_xxh64_and_the_compiled_kernel_agrees() -> None:
    rng = np.random.default_rng(3)
    for length in [*range(0, 70), 532, 1044]:
        rows = rng.integers(0, 256, (4, length + 5), dtype=np.uint8)
        want = [xxhash.xxh64_intdigest(r[:length].tobytes()) & 0xFFFFFFFF for r in rows]
        assert row_checksums(rows, length).tolist() == want
        assert entry_checksums(rows, length).tolist() == want


@pytest.mark.parametrize("dtype", VECTOR_DTYPES)
def test_the_checksum_catches_every_flipped_bit(dtype: str) -> None:
    entry = encode_entries([42], [7], vec(0)[None, :], dtype)[0]
    covered = HEADER_BYTES + payload_bytes(DIM, dtype) + 4  # up to and including the checksum itself
    flips = np.repeat(entry[None, :], 8 * covered, axis=0)
    bit = np.arange(8 * covered)
    flips[bit, bit // 8] ^= (1 << (bit % 8)).astype(np.uint8)
    assert not checksums_ok(flips, DIM, dtype).any()
    assert not checksums_ok(flips, DIM, dtype, checksum=entry_checksums).any()
    with pytest.raises(CorruptionError, match="user 42"):  # a payload bit: the header still names the user
        decode_entries(flips[8 * HEADER_BYTES + 3], DIM, dtype)


# -- the table --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", VECTOR_DTYPES)
def test_put_get_flush_reopen_round_trip(tmp_path: Path, dtype: str) -> None:
    x = np.stack([vec(i, 64) for i in range(50)])
    with VectorTable.open(tmp_path / "v", 64, dtype) as t:
        assert t.put(np.arange(50), np.ones(50, np.uint64), x) == 50
        found, versions, y = t.get([3, 999, 3])
        assert found.tolist() == [True, False, True] and versions.tolist() == [1, 0, 1]
        np.testing.assert_array_equal(y[0], stored(dtype, x[3])) and (y[1] == 0).all()
        buffered = t.get_entries(np.arange(50))[1]
        t.flush()
        found, wire = t.get_entries(np.arange(50))
        np.testing.assert_array_equal(wire, buffered)  # the buffer and the disk hand out the same bytes
        s = t.stats()
        assert s["users"] == 50 and s["entry_bytes"] == entry_bytes(64, dtype) and s["buffered_entries"] == 0
        assert s["disk_bytes"] == t.disk_bytes() >= 50 * s["entry_bytes"]
    with VectorTable.open(tmp_path / "v", 64, dtype, create=False) as t:
        found, entries = t.get_entries(np.arange(50))
        u, v, y = decode_entries(entries.tobytes(), 64, dtype)  # as a ranker would, from the wire
        assert found.all() and (u == np.arange(50)).all() and (v == 1).all()
        np.testing.assert_array_equal(y, np.stack([stored(dtype, r) for r in x]))


def test_an_older_or_equal_version_never_replaces_a_newer_one(tmp_path: Path) -> None:
    path = tmp_path / "v"
    t = VectorTable.open(path, DIM, "fp16")
    assert t.put([1, 2], [5, 5], np.stack([vec(1), vec(2)])) == 2
    assert t.put([1, 2], [4, 5], np.stack([vec(3), vec(4)])) == 0  # older, equal: both ignored
    assert t.put([2, 2, 2, 3], [6, 9, 7, 1], np.stack([vec(5), vec(6), vec(7), vec(8)])) == 2  # highest wins
    assert t.put([3, 3], [2, 2], np.stack([vec(9), vec(10)])) == 1  # of equals, the last
    want = {1: (5, vec(1)), 2: (9, vec(6)), 3: (2, vec(10))}

    def check(t: VectorTable) -> None:
        assert state(t, np.array([1, 2, 3], np.uint64)) == {
            u: (v, stored("fp16", x).tobytes()) for u, (v, x) in want.items()}

    check(t)
    s = t.stats()
    assert s["puts"] == 10 and s["stale_puts_ignored"] == 5
    t.flush()
    assert t.put([1, 2], [5, 8], np.stack([vec(11), vec(12)])) == 0  # against flushed entries too
    check(t)
    t.close()
    with VectorTable.open(path, DIM, "fp16") as t:
        check(t)
        assert t.put([1], [3], vec(13)[None, :]) == 0
        check(t)
        assert t.put([1], [2**64 - 1], vec(14)[None, :]) == 1
        assert t.get([1])[1].tolist() == [2**64 - 1]


_OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.lists(st.tuples(st.integers(0, 7), st.integers(0, 4)), min_size=1, max_size=6),
              st.booleans()),
    st.just(("flush",)), st.just(("reopen",)), st.just(("crash",))), max_size=20)


@settings(max_examples=100, deadline=None)
@given(ops=_OPS, dtype=st.sampled_from(VECTOR_DTYPES))
def test_random_puts_flushes_and_reopens_match_a_dict_model(ops: list, dtype: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path, salt = Path(d) / "v", 0
        width = entry_bytes(DIM, dtype)
        open_table = lambda: VectorTable.open(path, DIM, dtype, buffer_bytes=3 * (width + 8))  # noqa: E731
        t = open_table()
        model: dict[int, tuple[int, bytes]] = {}
        for op in ops:
            if op[0] == "put":
                rows, salt = op[1], salt + len(op[1])
                xs = np.stack([vec(salt + i) for i in range(len(rows))])
                batch: dict[int, tuple[int, bytes]] = {}
                for (u, v), x in zip(rows, xs, strict=True):
                    if u not in batch or v >= batch[u][0]:
                        batch[u] = (v, stored(dtype, x).tobytes())
                applied = 0
                for u, (v, x) in batch.items():
                    if u not in model or v > model[u][0]:
                        model[u], applied = (v, x), applied + 1
                assert t.put([u for u, _ in rows], [v for _, v in rows], xs, sync=op[2]) == applied
            elif op[0] == "flush":
                t.flush()
            else:
                t.close() if op[0] == "reopen" else t._abandon()  # a crash keeps the page cache
                t = open_table()
            assert state(t) == model
        t.close()


# -- durability on the simulated disk ---------------------------------------------------------------
def _script(seed: int, n_ops: int = 22) -> list[tuple]:
    rng = random.Random(seed)
    ops: list[tuple] = []
    for i in range(n_ops):
        if i % 7 == 6:
            ops.append(("flush",))
            continue
        users = rng.sample(range(len(UIDS)), rng.randint(1, 3))
        ops.append(("put", users, [rng.randint(1, 8) for _ in users], [rng.randrange(10**6) for _ in users]))
    return ops


def _models(ops: list[tuple]) -> list[dict[int, tuple[int, bytes]]]:
    """The expected state after each prefix of ``ops`` (fp16)."""
    out, model = [{}], {}
    for op in ops:
        if op[0] == "put":
            model = dict(model)
            for u, v, s in zip(op[1], op[2], op[3], strict=True):
                if u not in model or v > model[u][0]:
                    model[u] = (v, stored("fp16", vec(s)).tobytes())
        out.append(model)
    return out


def _trial(path: Path, ops: list[tuple], sync: bool, cut: int | None, seed: int) -> tuple[int, int, SimulatedDisk, int]:
    """Run ``ops`` on a fresh table until the power goes at mutating call ``cut``; returns (ops
    completed, ops completed before the last completed explicit flush, the disk, flushes done)."""
    disk = SimulatedDisk(path)
    if cut is not None:
        disk.cut_power_after(cut)
    done = flushed = flushes = 0
    try:
        t = VectorTable.open(path, DIM, "fp16", fs=disk, buffer_bytes=4 * (entry_bytes(DIM, "fp16") + 8))
        for op in ops:
            if op[0] == "put":
                t.put(op[1], op[2], np.stack([vec(s) for s in op[3]]), sync=sync)
            else:
                t.flush()
                flushed = done + 1
            done += 1
        flushes = t.stats()["flushes"]
        t._abandon()
        disk.cut = True
    except PowerCut:
        pass
    disk.power_loss(random.Random(seed))  # keeps a random prefix of unsynced appends (torn writes)
    return done, flushed, disk, flushes


@pytest.mark.parametrize("sync", [True, False])
def test_power_loss_at_every_mutating_call(tmp_path: Path, sync: bool) -> None:
    """sync=True: every acknowledged put survives. sync=False: what survives is the state after
    some prefix of the puts, at least up to the last completed flush: never a half-applied batch
    nor an entry that fails its checksum."""
    ops = _script(7)
    models = _models(ops)
    done, _, disk, flushes = _trial(tmp_path / "dry", ops, sync, None, 0)
    assert done == len(ops)
    puts = sum(op[0] == "put" for op in ops)
    assert flushes <= puts // 3  # most puts are acknowledged while only their own log fsync covers them
    mutations = disk.mutations
    assert mutations > 60
    for cut in range(1, mutations + 1):
        path = tmp_path / f"cut{cut}"
        done, flushed, _, _ = _trial(path, ops, sync, cut, cut)
        with VectorTable.open(path, DIM, "fp16") as t:
            got = state(t)
            t.get_entries(UIDS)  # every entry checks out
        allowed = range(done, done + 2) if sync else range(flushed, done + 2)
        matches = [k for k in allowed if k < len(models) and models[k] == got]
        assert matches, (f"power cut at mutating call {cut} (after {done} ops, last flush after {flushed}): "
                         f"recovered {sorted((u, v) for u, (v, _) in got.items())}, acknowledged "
                         f"{sorted((u, v) for u, (v, _) in models[done].items())}")


def test_a_synced_put_costs_one_log_fsync_and_an_unsynced_one_none(tmp_path: Path) -> None:
    disk = SimulatedDisk(tmp_path / "v")
    with VectorTable.open(tmp_path / "v", DIM, "fp16", fs=disk) as t:
        before = disk.wal_fsyncs()
        for i in range(5):
            t.put([i], [1], vec(i)[None, :], sync=True)
        assert disk.wal_fsyncs() - before == 5
        t.put([9], [1], vec(9)[None, :], sync=False)
        t.put([9], [1], vec(9)[None, :], sync=True)  # stale: nothing logged, nothing to sync
        assert disk.wal_fsyncs() - before == 5


class _Recorder(FileSystem):
    """Records the order of fsyncs and unlinks (what a power-loss model without metadata
    journaling cannot see: a real file system may make an unlink durable without a directory fsync)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.names: dict[int, str] = {}

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.names[fd] = Path(path).name
        return fd

    def fsync(self, fd: int) -> None:
        self.calls.append(("fsync", self.names.get(fd, "?")))
        super().fsync(fd)

    def unlink(self, path: Path) -> None:
        self.calls.append(("unlink", Path(path).name))
        super().unlink(path)


def test_a_flush_syncs_the_log_then_the_slots_and_only_then_deletes_the_log(tmp_path: Path) -> None:
    fs = _Recorder()
    with VectorTable.open(tmp_path / "v", DIM, "fp16", fs=fs) as t:
        t.put([1, 2], [1, 1], np.stack([vec(1), vec(2)]), sync=False)
        fs.calls.clear()
        t.flush()
        calls = fs.calls
    assert calls.index(("fsync", "wal-00000001.log")) < calls.index(("fsync", SLOTS_NAME)) \
        < calls.index(("unlink", "wal-00000001.log"))


def test_a_failed_log_fsync_fail_stops_the_table_and_reopen_recovers(tmp_path: Path) -> None:
    path = tmp_path / "v"
    disk = SimulatedDisk(path)
    t = VectorTable.open(path, DIM, "int8", fs=disk)
    t.put([1], [1], vec(1)[None, :])
    disk.inject("fsync", path_contains="wal-")
    with pytest.raises(StoreFailedError, match=r"fsync of wal-00000001\.log failed"):
        t.put([1], [2], vec(2)[None, :])
    for write in (lambda: t.put([1], [3], vec(3)[None, :]), lambda: t.put([2], [1], vec(3)[None, :], sync=False),
                  t.flush):
        with pytest.raises(StoreFailedError, match="reopen"):
            write()
    assert t.get([1])[1].tolist() == [2]  # reads still served (ahead of the disk)
    assert t.stats()["failure"].startswith("fsync of wal-") and t.failure
    t.close()  # no flush after a fail-stop
    disk.power_loss()  # the failed fsync's pages never reached the disk
    with VectorTable.open(path, DIM, "int8") as t:
        assert t.get([1])[1].tolist() == [1]
        assert t.put([1], [3], vec(3)[None, :]) == 1
        assert t.get([1])[1].tolist() == [3]


def test_a_failed_slot_fsync_fail_stops_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "v"
    disk = SimulatedDisk(path)
    t = VectorTable.open(path, DIM, "fp16", fs=disk)
    t.put([1, 2], [1, 1], np.stack([vec(1), vec(2)]))
    t.flush()
    t.put([2, 3], [2, 1], np.stack([vec(3), vec(4)]))
    disk.inject("fsync", path_contains=SLOTS_NAME)
    with pytest.raises(StoreFailedError, match=r"fsync of slots\.dat failed"):
        t.flush()
    with pytest.raises(StoreFailedError):
        t.put([4], [1], vec(5)[None, :])
    t.close()
    disk.power_loss()
    with VectorTable.open(path, DIM, "fp16") as t:
        assert state(t, np.arange(5, dtype=np.uint64)) == {
            1: (1, stored("fp16", vec(1)).tobytes()), 2: (2, stored("fp16", vec(3)).tobytes()),
            3: (1, stored("fp16", vec(4)).tobytes())}


def test_a_put_whose_automatic_flush_fails_still_reports_what_it_stored(tmp_path: Path) -> None:
    import errno

    path = tmp_path / "v"
    disk = SimulatedDisk(path)
    t = VectorTable.open(path, DIM, "fp16", fs=disk, buffer_bytes=1)   # every put flushes
    disk.inject("pwrite", path_contains=SLOTS_NAME, errno=errno.ENOSPC, repeat=True)
    assert t.put([7], [1], vec(7)[None, :]) == 1          # logged and applied: acknowledged
    assert t.put([7], [1], vec(7)[None, :]) == 0          # so a retry is (rightly) stale
    stats = t.stats()
    assert stats["flush_failures"] == 1 and "No space left" in stats["last_flush_error"]
    assert stats["buffered_entries"] == 1
    with pytest.raises(SeqVaultError, match="stay buffered"):
        t.flush()
    disk.clear_faults()
    t.flush()
    assert t.stats()["last_flush_error"] is None and t.stats()["buffered_entries"] == 0
    t.close()
    disk.power_loss()
    with VectorTable.open(path, DIM, "fp16") as t:
        assert state(t, np.arange(8, dtype=np.uint64)) == {7: (1, stored("fp16", vec(7)).tobytes())}


# -- torn and corrupt slots -------------------------------------------------------------------------
def _flushed_table(path: Path, n: int = 5) -> None:
    with VectorTable.open(path, DIM, "fp16") as t:
        t.put(np.arange(n), np.ones(n, np.uint64), np.stack([vec(i) for i in range(n)]))


def _slot_of(path: Path, user: int) -> int:
    with VectorTable.open(path, DIM, "fp16") as t:
        return int(t._lookup(np.array([user], np.uint64))[1][0])


def test_a_slot_torn_by_a_crash_mid_flush_is_rewritten_from_the_log(tmp_path: Path) -> None:
    path, width = tmp_path / "v", entry_bytes(DIM, "fp16")
    _flushed_table(path)
    slot = _slot_of(path, 2)
    t = VectorTable.open(path, DIM, "fp16")
    t.put([2], [2], vec(20)[None, :])  # logged and fsynced, then a flush is torn mid-slot:
    t._abandon()
    new = encode_entries([2], [2], vec(20)[None, :], "fp16")[0]
    with open(path / SLOTS_NAME, "r+b") as f:
        f.seek(slot * width)
        f.write(new[:width // 2].tobytes())
    for _ in range(2):  # recovery, then a clean reopen after its flush
        with VectorTable.open(path, DIM, "fp16") as t:
            assert t.get([0, 2])[1].tolist() == [1, 2]
            np.testing.assert_array_equal(t.get([2])[2][0], stored("fp16", vec(20)))


@pytest.mark.parametrize("user", [1, 4])  # a slot in the middle, the last slot
def test_a_corrupt_slot_no_log_record_covers_refuses_to_open(tmp_path: Path, user: int) -> None:
    path, width = tmp_path / "v", entry_bytes(DIM, "fp16")
    _flushed_table(path)
    slot = _slot_of(path, user)
    data = bytearray((path / SLOTS_NAME).read_bytes())
    data[slot * width + HEADER_BYTES + 3] ^= 0x10
    (path / SLOTS_NAME).write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match=f"user {user}"):
        VectorTable.open(path, DIM, "fp16")


def test_never_written_zeros_and_a_partial_slot_at_the_end_are_cut(tmp_path: Path) -> None:
    path, width = tmp_path / "v", entry_bytes(DIM, "fp16")
    _flushed_table(path)
    with open(path / SLOTS_NAME, "ab") as f:
        f.write(bytes(3 * width + 5))
    with VectorTable.open(path, DIM, "fp16") as t:
        assert t.get(np.arange(5))[0].all()
        assert (path / SLOTS_NAME).stat().st_size == 5 * width
        t.put([7], [1], vec(7)[None, :])
    with VectorTable.open(path, DIM, "fp16") as t:
        assert t.get([7])[0].all() and (path / SLOTS_NAME).stat().st_size == 6 * width


def test_a_slot_corrupted_under_an_open_table_fails_the_read_naming_the_user(tmp_path: Path) -> None:
    path, width = tmp_path / "v", entry_bytes(DIM, "fp16")
    with VectorTable.open(path, DIM, "fp16") as t:
        t.put(np.arange(3), np.ones(3, np.uint64), np.stack([vec(i) for i in range(3)]))
        t.flush()
        slot = int(t._lookup(np.array([1], np.uint64))[1][0])
        with open(path / SLOTS_NAME, "r+b") as f:
            f.seek(slot * width + 30)
            f.write(b"\xff")
        with pytest.raises(CorruptionError, match="user 1"):
            t.get([0, 1])
        assert t.get([0, 2])[0].all()
        t._abandon()


# -- metadata and the engine ------------------------------------------------------------------------
def test_reopening_with_another_dim_or_dtype_is_refused(tmp_path: Path) -> None:
    VectorTable.open(tmp_path / "v", DIM, "fp16").close()
    with pytest.raises(SeqVaultError, match=r"stores dim=8 fp16 vectors .* but dim=16 fp16 was asked"):
        VectorTable.open(tmp_path / "v", 16, "fp16")
    with pytest.raises(SeqVaultError, match=r"stores dim=8 fp16 .* but dim=8 int8 was asked"):
        VectorTable.open(tmp_path / "v", DIM, "int8")
    with pytest.raises(SeqVaultError, match="create=False"):
        VectorTable.open(tmp_path / "w", DIM, "fp16", create=False)
    with pytest.raises(SeqVaultError, match="unknown vector dtype"):
        VectorTable.open(tmp_path / "w", DIM, "fp32")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "other").write_text("")
    with pytest.raises(SeqVaultError, match="not a vector table"):
        VectorTable.open(tmp_path / "x", DIM, "fp16")
    with VectorTable.open(tmp_path / "v", DIM, "fp16"), pytest.raises(SeqVaultError, match="already open"):
        VectorTable.open(tmp_path / "v", DIM, "fp16")


def test_seqvault_open_vectors_round_trip_and_closed_with_the_store(tmp_path: Path) -> None:
    schema = Schema([Field("ts", "int64"), Field("item", "uint32")], time_field="ts")
    with SeqVault.open(tmp_path / "s", schema=schema) as sv:
        assert "vectors" not in sv.stats()
        t = sv.open_vectors(DIM, "int8")
        assert sv.open_vectors(DIM, "int8") is t and t.directory == tmp_path / "s" / "vectors"
        with pytest.raises(SeqVaultError, match="open with dim=8 int8"):
            sv.open_vectors(16, "int8")
        t.put([1, 2], [1, 1], np.stack([vec(1), vec(2)]))
        sv.append([1], {"ts": [1], "item": [5]})
        assert sv.stats()["vectors"]["users"] == 2
    assert t.closed
    with pytest.raises(SeqVaultError, match="closed"):
        t.put([3], [1], vec(3)[None, :])
    with SeqVault.open(tmp_path / "s") as sv:
        assert sv.get(1)["item"].tolist() == [5]
        t = sv.open_vectors(DIM, "int8")
        assert t.get([1, 2, 3])[0].tolist() == [True, True, False]
        np.testing.assert_array_equal(t.get([2])[2][0], stored("int8", vec(2)))
