"""The packed-column record codec against a pure-NumPy reference of the documented format."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqvault._bitpack import crc32, pack_bits, unpack_into_words, unpack_to, xxh64
from seqvault._unpack import MAX_ALIGNED_WIDTH, unpack_aligned
from seqvault.codec import (
    CHECKSUM_SIZE,
    HEADER_SIZE,
    RECORD_MAGIC,
    RECORD_VERSION_CRC32,
    RecordHeader,
    decode_record,
    decode_records,
    encode_record,
    encode_records,
    parse_header,
    record_checksum,
    record_checksum_ok,
)
from seqvault.errors import CorruptionError
from seqvault.schema import INTEGER_DTYPES, Field, Schema, SchemaError

SIGN = np.uint64(1 << 63)

DEFAULT = Schema([
    Field("item_id", "uint32"), Field("ts", "int64"), Field("action", "uint8"), Field("scenario", "uint8"),
    Field("dwell_ms", "uint32"), Field("category", "uint16"), Field("author_id", "uint32"),
], time_field="ts", name="default")


def default_sequence(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Realistic default-schema events: sessions seconds apart inside, hours/days between."""
    new_session = rng.random(n) < 1 / 20
    gaps = np.where(new_session, rng.exponential(8 * 3600e3, n), rng.exponential(5e3, n)).astype(np.int64)
    gaps[rng.random(n) < 0.05] = 0
    return {
        "item_id": ((rng.zipf(1.2, n) - 1) % 1_000_000).astype(np.uint32),
        "ts": 1_700_000_000_000 + np.cumsum(gaps),
        "action": np.minimum(rng.geometric(0.5, n) - 1, 7).astype(np.uint8),
        "scenario": rng.integers(0, 3, n).astype(np.uint8),
        "dwell_ms": np.minimum(rng.lognormal(8, 1.5, n), 600_000).astype(np.uint32),
        "category": ((rng.zipf(1.3, n) - 1) % 1000).astype(np.uint16),
        "author_id": ((rng.zipf(1.2, n) - 1) % 100_000).astype(np.uint32),
    }


# -- pure-NumPy reference of the format in seqvault/codec.py's docstring ----------------------------
def ref_map(col: np.ndarray) -> np.ndarray:
    if col.dtype.kind == "i":
        return col.astype(np.int64).view(np.uint64) ^ SIGN
    return col.astype(np.uint64)


def ref_pack(values: np.ndarray, width: int) -> bytes:
    if width == 0 or len(values) == 0:
        return b""
    bits = ((values[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def ref_unpack(data: bytes, n: int, width: int) -> np.ndarray:
    if width == 0:
        return np.zeros(n, np.uint64)
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: n * width]
    bits = bits.reshape(n, width).astype(np.uint64)
    return (bits << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def ref_checksum(data: bytes, version: int) -> int:
    """Record format 1: CRC-32 (zlib); format 2: XXH64's low 32 bits (the xxhash library)."""
    return zlib.crc32(data) if version == 1 else xxhash.xxh64_intdigest(data) & 0xFFFFFFFF


def ref_encode(user_id: int, columns: dict[str, np.ndarray], schema: Schema, version: int = 2) -> bytes:
    n = len(columns[schema.names[0]])
    descs, payloads = b"", b""
    for f in schema.fields:
        u = ref_map(columns[f.name])
        code = INTEGER_DTYPES.index(f.dtype) << 4
        if n == 0:
            descs += struct.pack("<BBQ", code, 0, 0)
            continue
        lo, hi = int(u.min()), int(u.max())
        wf = (hi - lo).bit_length()
        size_for = 10 + (n * wf + 7) // 8
        if n > 1:
            d = (u[1:] - u[:-1]) ^ SIGN
            dlo, dhi = int(d.min()), int(d.max())
            wd = (dhi - dlo).bit_length()
            size_delta = 18 + ((n - 1) * wd + 7) // 8
        if n > 1 and size_delta < size_for:
            descs += struct.pack("<BBQQ", code | 1, wd, dlo, int(u[-1]))
            payloads += ref_pack(d - np.uint64(dlo), wd)
        else:
            descs += struct.pack("<BBQ", code, wf, lo)
            payloads += ref_pack(u - np.uint64(lo), wf)
    length = HEADER_SIZE + len(descs) + len(payloads) + CHECKSUM_SIZE
    head = struct.pack("<BBHIQI", RECORD_MAGIC, version, len(schema.fields), n, user_id, length)
    body = head + struct.pack("<I", ref_checksum(head, version)) + descs + payloads
    return body + struct.pack("<I", ref_checksum(body, version))


def ref_decode(rec: bytes, schema: Schema) -> tuple[int, dict[str, np.ndarray]]:
    magic, version, ncols, n, user, length, hcrc = struct.unpack_from("<BBHIQII", rec)
    assert (magic, ncols) == (RECORD_MAGIC, len(schema.fields)) and version in (1, 2)
    assert hcrc == ref_checksum(rec[:20], version) and len(rec) >= length
    assert struct.unpack_from("<I", rec, length - 4)[0] == ref_checksum(rec[: length - 4], version)
    pos, descs = HEADER_SIZE, []
    for _ in schema.fields:
        kind, width, base = struct.unpack_from("<BBQ", rec, pos)
        last = struct.unpack_from("<Q", rec, pos + 10)[0] if kind & 15 else None
        descs.append((kind & 15, width, base, last))
        pos += 18 if kind & 15 else 10
    out = {}
    for f, (kind, width, base, last) in zip(schema.fields, descs, strict=True):
        m = n - 1 if kind else n
        nbytes = (m * width + 7) // 8
        packed = ref_unpack(rec[pos:pos + nbytes], m, width) + np.uint64(base)
        pos += nbytes
        if kind:
            d = packed ^ SIGN
            u = np.empty(n, np.uint64)
            u[-1] = last
            u[:-1] = np.uint64(last) - np.cumsum(d[::-1], dtype=np.uint64)[::-1]
        else:
            u = packed
        if f.np_dtype.kind == "i":
            u = u ^ SIGN
        out[f.name] = u.view(np.int64).astype(f.np_dtype) if f.np_dtype.kind == "i" else u.astype(f.np_dtype)
    assert pos == length - 4
    return user, out


# -- strategies ------------------------------------------------------------------------------------
MODES = ("full", "constant", "near_min", "near_max", "small", "sorted", "extremes")


def make_column(rng: np.random.Generator, dtype: str, n: int, mode: str) -> np.ndarray:
    info = np.iinfo(dtype)
    if mode == "constant":
        return np.full(n, [info.min, info.max, 0][int(rng.integers(0, 3))], dtype=dtype)
    if mode == "extremes":
        return rng.choice(np.array([info.min, info.max, 0], dtype=dtype), n)
    if mode == "near_min":
        return (info.min + rng.integers(0, 5, n)).astype(dtype)
    if mode == "near_max":
        return np.array([info.max - int(x) for x in rng.integers(0, 5, n)], dtype=dtype)
    if mode == "small":
        return rng.integers(max(info.min, -100), 100, n, endpoint=True).astype(dtype)
    col = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    return np.sort(col) if mode == "sorted" else col


@st.composite
def schemas_and_columns(draw: st.DrawFn, max_events: int = 40) -> tuple[Schema, dict[str, np.ndarray]]:
    nf = draw(st.integers(1, 5))
    dtypes = draw(st.lists(st.sampled_from(INTEGER_DTYPES), min_size=nf, max_size=nf))
    fields = [Field(f"f{i}", dt) for i, dt in enumerate(dtypes)]
    schema = Schema(fields, time_field=f"f{draw(st.integers(0, nf - 1))}")
    n = draw(st.sampled_from([0, 1, 2, 3, draw(st.integers(0, max_events))]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cols = {}
    for f in schema.fields:
        mode = "sorted" if f.name == schema.time_field and draw(st.booleans()) else draw(st.sampled_from(MODES))
        cols[f.name] = make_column(rng, f.dtype, n, mode)
    if n and draw(st.booleans()):  # equal timestamps
        cols[schema.time_field][:] = cols[schema.time_field][0]
    return schema, cols


def assert_columns_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, col in want.items():
        assert got[name].dtype == col.dtype, name
        np.testing.assert_array_equal(got[name], col, err_msg=name)


SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # examples: see conftest


# -- the Numba primitives against the references --------------------------------------------------
@SETTINGS
@given(data=st.binary(max_size=300), start=st.integers(0, 40), cut=st.integers(0, 40))
def test_crc32_kernel_matches_zlib(data: bytes, start: int, cut: int) -> None:
    arr = np.frombuffer(data, np.uint8)
    start = min(start, len(arr))
    end = max(start, len(arr) - cut)
    assert int(crc32(arr, start, end)) == zlib.crc32(data[start:end])


@SETTINGS
@given(data=st.binary(max_size=300), start=st.integers(0, 40), cut=st.integers(0, 40))
def test_xxh64_kernel_matches_the_xxhash_library(data: bytes, start: int, cut: int) -> None:
    arr = np.frombuffer(data, np.uint8)
    start = min(start, len(arr))
    end = max(start, len(arr) - cut)
    assert int(xxh64(arr, start, end)) == xxhash.xxh64_intdigest(data[start:end])


@SETTINGS
@given(width=st.integers(1, MAX_ALIGNED_WIDTH), n=st.integers(0, 200), seed=st.integers(0, 2**32 - 1),
       base=st.integers(0, 2**64 - 1))
def test_width_specialised_unpack_kernels_match_reference(width: int, n: int, seed: int, base: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, (1 << width) - 1, n, dtype=np.uint64, endpoint=True)
    packed = ref_pack(values, width)
    # One readable word past the last value's, garbage in it: the kernel must mask it off.
    stream = np.frombuffer(packed + b"\xff" * 8, np.uint8)
    words32 = np.frombuffer(stream[: len(stream) // 4 * 4].tobytes(), np.uint32)
    got = np.zeros(n, np.uint64)
    unpack_aligned(width, words32, n, np.uint64(base), got)
    np.testing.assert_array_equal(got, values + np.uint64(base))


def test_the_generated_unpack_module_is_up_to_date() -> None:
    import runpy

    gen = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "gen_unpack_kernels.py"))
    assert Path(gen["TARGET"]).read_text() == gen["generate"](), "run python scripts/gen_unpack_kernels.py"


@pytest.mark.parametrize("width", [*range(1, 65)])
def test_every_width_decodes_every_tail_length(width: int) -> None:
    """Columns of every width, sequences around the 32-value alignment the fast unpack starts at,
    read whole and as every kind of tail (last_n), one record and many in one buffer."""
    schema = Schema([Field("t", "int64"), Field("v", "uint64")], time_field="t", name=f"w{width}")
    rng = np.random.default_rng(width)
    cases = []
    for n in (1, 2, 31, 32, 33, 64, 65, 100, 257):
        v = rng.integers(0, 2**width - 1, n, dtype=np.uint64, endpoint=True) if width < 64 else \
            rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
        v[0] = 0  # so FOR needs all `width` bits
        v[-1] = 2**width - 1
        t = np.cumsum(rng.integers(0, 2**min(width, 40), n, dtype=np.int64, endpoint=True)) - 5
        cases.append({"t": t, "v": v})
    for i, cols in enumerate(cases):
        rec = encode_record(i, cols, schema)
        for last_n in sorted({0, 1, 2, 31, 32, 33, 40, len(cols["t"]) - 1, len(cols["t"])}):
            if last_n < 0:
                continue
            got = decode_record(rec, schema, last_n=last_n)
            want = {k: v[len(v) - min(last_n, len(v)):] for k, v in cols.items()}
            assert_columns_equal(got, want)
    uids = np.arange(len(cases), dtype=np.uint64)
    offsets = np.concatenate([[0], np.cumsum([len(c["t"]) for c in cases])]).astype(np.int64)
    merged = {k: np.concatenate([c[k] for c in cases]) for k in ("t", "v")}
    buf, starts = encode_records(uids, offsets, merged, schema)
    for last_n in (None, 33, 5):
        ev, got = decode_records(buf, starts[:-1], schema, last_n=last_n)
        for i, c in enumerate(cases):
            keep = len(c["t"]) if last_n is None else min(last_n, len(c["t"]))
            assert_columns_equal({k: v[ev[i]:ev[i + 1]] for k, v in got.items()},
                                 {k: v[len(v) - keep:] for k, v in c.items()})


@SETTINGS
@given(case=schemas_and_columns(), user_id=st.integers(0, 2**64 - 1))
def test_format_1_records_still_decode(case: tuple[Schema, dict[str, np.ndarray]], user_id: int) -> None:
    """Stores written before format 2 (CRC-32 checksums) still open: every reader takes both."""
    schema, cols = case
    old = np.frombuffer(ref_encode(user_id, cols, schema, version=1), np.uint8)
    assert old[1] == RECORD_VERSION_CRC32
    assert_columns_equal(decode_record(old, schema, expect_user=user_id), cols)
    assert parse_header(old).user_id == user_id and record_checksum_ok(old)
    _, got = decode_records(old, np.array([0]), schema)
    assert_columns_equal(got, cols)
    damaged = old.copy()
    damaged[len(damaged) // 2] ^= 0x10
    assert not record_checksum_ok(damaged) or len(damaged) <= HEADER_SIZE + CHECKSUM_SIZE


@SETTINGS
@given(width=st.integers(0, 64), n=st.integers(0, 70), bit0=st.integers(0, 7), seed=st.integers(0, 2**32 - 1),
       base=st.integers(0, 2**64 - 1), signed=st.booleans())
def test_pack_and_unpack_kernels_match_reference(width: int, n: int, bit0: int, seed: int, base: int,
                                                 signed: bool) -> None:
    rng = np.random.default_rng(seed)
    hi = (1 << width) - 1
    values = rng.integers(0, hi, n, dtype=np.uint64, endpoint=True) if width else np.zeros(n, np.uint64)
    out = np.full(n * 8 + 8, 0xAB, np.uint8)
    end = pack_bits(values, 0, n, width, out, 3)
    assert end == 3 + (n * width + 7) // 8
    packed = ref_pack(values, width)
    assert out[3:end].tobytes() == packed
    np.testing.assert_array_equal(ref_unpack(packed, n, width), values)
    # Unpack from a stream in which the values start bit0 bits (plus a whole byte) in.
    bits = ((values[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    stream_bits = np.concatenate([np.ones(8 + bit0, np.uint8), bits.reshape(-1), np.ones(5, np.uint8)])
    stream = np.packbits(stream_bits, bitorder="little")
    words = np.empty(len(stream) // 8 + 2, np.uint64)
    unpack_into_words(stream, 1, len(stream) - 1, words)
    flip = SIGN if signed else np.uint64(0)
    got = np.empty(n, np.uint64)
    unpack_to(words, bit0, width, n, np.uint64(base), flip, got)
    np.testing.assert_array_equal(got, (values + np.uint64(base)) ^ flip)


# -- round trip ------------------------------------------------------------------------------------
@SETTINGS
@given(case=schemas_and_columns(), user_id=st.integers(0, 2**64 - 1))
def test_round_trip_matches_reference(case: tuple[Schema, dict[str, np.ndarray]], user_id: int) -> None:
    schema, cols = case
    rec = encode_record(user_id, cols, schema)
    assert rec.dtype == np.uint8
    assert rec.tobytes() == ref_encode(user_id, cols, schema)
    ref_user, ref_cols = ref_decode(rec.tobytes(), schema)
    assert ref_user == user_id
    assert_columns_equal(ref_cols, cols)
    assert_columns_equal(decode_record(rec, schema, expect_user=user_id), cols)
    assert parse_header(rec) == RecordHeader(user_id, len(cols[schema.names[0]]), len(rec))
    assert record_checksum_ok(rec)


@SETTINGS
@given(case=schemas_and_columns(), last_n=st.integers(0, 45), data=st.data())
def test_last_n_and_field_selection(case: tuple[Schema, dict[str, np.ndarray]], last_n: int,
                                    data: st.DataObject) -> None:
    schema, cols = case
    fields = data.draw(st.lists(st.sampled_from(schema.names), min_size=1, unique=True))
    rec = encode_record(3, cols, schema)
    got = decode_record(bytes(rec) + b"trailing junk", schema, fields=fields, last_n=last_n)
    n = len(cols[schema.names[0]])
    assert_columns_equal(got, {f: cols[f][max(n - last_n, 0):] for f in fields})


@SETTINGS
@given(case=schemas_and_columns(max_events=0), lengths=st.lists(st.integers(0, 12), max_size=6),
       seed=st.integers(0, 2**32 - 1), modes=st.lists(st.sampled_from(MODES), min_size=6, max_size=6),
       last_n=st.one_of(st.none(), st.integers(0, 15)))
def test_batch_equals_single(case: tuple[Schema, dict[str, np.ndarray]], lengths: list[int], seed: int,
                             modes: list[str], last_n: int | None) -> None:
    schema = case[0]
    rng = np.random.default_rng(seed)
    seqs = [{f.name: make_column(rng, f.dtype, n, mode) for f in schema.fields}
            for n, mode in zip(lengths, modes, strict=False)]
    uids = rng.integers(0, 2**64 - 1, len(seqs), dtype=np.uint64, endpoint=True)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cols = {f: np.concatenate([s[f] for s in seqs] + [np.empty(0, schema.dtype(f))]) for f in schema.names}
    buf, starts = encode_records(uids, offsets, cols, schema)
    singles = [encode_record(int(u), s, schema) for u, s in zip(uids, seqs, strict=True)]
    assert buf.tobytes() == b"".join(r.tobytes() for r in singles)
    np.testing.assert_array_equal(np.diff(starts), [len(r) for r in singles])
    ev_off, got = decode_records(buf, starts[:-1], schema, last_n=last_n)
    assert len(ev_off) == len(seqs) + 1
    for i, (u, s) in enumerate(zip(uids, seqs, strict=True)):
        one = decode_record(buf[starts[i]:], schema, last_n=last_n, expect_user=int(u))
        assert_columns_equal({f: got[f][ev_off[i]:ev_off[i + 1]] for f in schema.names}, one)
        n = lengths[i]
        keep = n if last_n is None else min(n, last_n)
        assert_columns_equal(one, {f: s[f][n - keep:] for f in schema.names})


def test_chunked_batch_encode_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import seqvault.codec as codec

    rng = np.random.default_rng(11)
    counts = np.array([0, 5, 40, 1, 0, 33, 7, 100, 2, 0], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    cols = default_sequence(rng, int(offsets[-1]))
    uids = np.arange(len(counts), dtype=np.uint64)
    whole, whole_starts = encode_records(uids, offsets, cols, DEFAULT)
    for chunk in (1, 16, 39, 150):
        monkeypatch.setattr(codec, "ENCODE_CHUNK_EVENTS", chunk)
        buf, starts = encode_records(uids, offsets, cols, DEFAULT)
        assert buf.tobytes() == whole.tobytes()
        np.testing.assert_array_equal(starts, whole_starts)


def test_extreme_values_every_dtype() -> None:
    fields = [Field(f"c_{dt}", dt) for dt in INTEGER_DTYPES]
    schema = Schema(fields, time_field="c_int64")
    cols = {}
    for f in fields:
        info = np.iinfo(f.dtype)
        cols[f.name] = np.array([info.max, info.min, 0, info.max, info.min, 1], dtype=f.dtype)
    for uid in (0, 2**64 - 1):
        rec = encode_record(uid, cols, schema)
        assert_columns_equal(decode_record(rec, schema, expect_user=uid), cols)
        assert rec.tobytes() == ref_encode(uid, cols, schema)


def test_encoding_choice_is_compact() -> None:
    rng = np.random.default_rng(7)
    cols = default_sequence(rng, 1000)
    cols["scenario"][:] = 2  # a constant column
    rec = encode_record(1, cols, DEFAULT)
    descs = rec[HEADER_SIZE:]
    kinds = []
    pos = 0
    for _ in DEFAULT.fields:
        kinds.append((int(descs[pos]) & 15, int(descs[pos + 1])))
        pos += 18 if descs[pos] & 15 else 10
    by_name = dict(zip(DEFAULT.names, kinds, strict=True))
    assert by_name["ts"][0] == 1, "the sorted time field should be delta coded"
    assert by_name["scenario"] == (0, 0), "a constant column should cost no payload bits"
    assert by_name["action"] == (0, 3)
    assert len(rec) / 1000 <= 0.30 * 56


def test_signed_deltas_and_unsorted_time_round_trip() -> None:
    schema = Schema([Field("t", "int64"), Field("v", "int16")], time_field="t")
    cols = {"t": np.array([5, 3, 3, -2**63, 2**63 - 1, 0, 7], dtype=np.int64),
            "v": np.array([-1, -32768, 32767, 0, -5, 4, 4], dtype=np.int16)}
    assert_columns_equal(decode_record(encode_record(9, cols, schema), schema), cols)
    desc = np.arange(1000, 0, -1, dtype=np.int64) * 1000  # strictly decreasing: delta coded
    cols = {"t": desc, "v": np.zeros(1000, np.int16)}
    rec = encode_record(9, cols, schema)
    assert len(rec) < 200
    assert_columns_equal(decode_record(rec, schema, last_n=10), {f: c[-10:] for f, c in cols.items()})


# -- corruption ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_record() -> np.ndarray:
    cols = default_sequence(np.random.default_rng(1), 6)
    return encode_record(12345, cols, DEFAULT)


def test_every_single_byte_change_is_detected(small_record: np.ndarray) -> None:
    assert len(small_record) > 100
    good = decode_record(small_record, DEFAULT)
    for pos in range(len(small_record)):
        for xor in range(1, 256):
            bad = small_record.copy()
            bad[pos] ^= xor
            with pytest.raises(CorruptionError):
                decode_record(bad, DEFAULT, path="f.dat", offset=77, expect_user=12345)
            if xor in (1, 0x80, 0xFF):
                assert not record_checksum_ok(bad)
                with pytest.raises(CorruptionError):
                    decode_records(bad, np.array([0]), DEFAULT)
    # The original still decodes (the loop above worked on copies).
    assert_columns_equal(decode_record(small_record, DEFAULT), good)


def test_error_names_file_offset_and_user(small_record: np.ndarray) -> None:
    bad = small_record.copy()
    bad[HEADER_SIZE + 3] ^= 0x10  # inside the body: the header still names the user
    with pytest.raises(CorruptionError) as e:
        decode_record(bad, DEFAULT, path="/data/seq-0003.dat", offset=4096)
    assert (e.value.path, e.value.offset, e.value.user_id) == ("/data/seq-0003.dat", 4096, 12345)
    assert "/data/seq-0003.dat" in str(e.value) and "4096" in str(e.value) and "12345" in str(e.value)
    with pytest.raises(CorruptionError) as e:
        decode_record(small_record, DEFAULT, path="p", offset=0, expect_user=999)
    assert e.value.user_id == 999 and "12345" in str(e.value)
    buf = np.concatenate([small_record, bad])
    with pytest.raises(CorruptionError) as e:
        decode_records(buf, np.array([0, len(small_record)]), DEFAULT, path="p")
    assert (e.value.offset, e.value.user_id) == (len(small_record), 12345)


def test_truncation_and_zeroed_tail_are_detected(small_record: np.ndarray) -> None:
    for cut in range(len(small_record)):
        with pytest.raises(CorruptionError):
            decode_record(small_record[:cut], DEFAULT)
        assert not record_checksum_ok(small_record[:cut])
        with pytest.raises(CorruptionError):
            decode_records(small_record[:cut], np.array([0]), DEFAULT)
    for zero_from in range(len(small_record)):
        bad = small_record.copy()
        bad[zero_from:] = 0
        with pytest.raises(CorruptionError):
            decode_record(bad, DEFAULT)


def test_recovery_scan_walks_records_and_stops_at_torn_tail() -> None:
    rng = np.random.default_rng(3)
    seqs = [default_sequence(rng, n) for n in (0, 1, 50, 7)]
    data = b"".join(encode_record(100 + i, s, DEFAULT).tobytes() for i, s in enumerate(seqs))
    torn = encode_record(200, default_sequence(rng, 30), DEFAULT).tobytes()[:-9]
    data = data + torn + bytes(64)
    pos, found = 0, []
    while True:
        try:
            h = parse_header(data, pos)
        except CorruptionError:
            break
        if not record_checksum_ok(data, pos):
            break
        found.append(h.user_id)
        assert record_checksum(data, pos) == struct.unpack_from("<I", data, pos + h.length - 4)[0]
        pos += h.length
    assert found == [100, 101, 102, 103]
    assert parse_header(data, pos).user_id == 200  # the torn record's header is intact ...
    with pytest.raises(CorruptionError, match="past the end"):  # ... but its body is cut off
        decode_record(memoryview(data)[pos:pos + len(torn)], DEFAULT)
    with pytest.raises(CorruptionError, match="checksum mismatch"):  # or reads zeros after the tear
        decode_record(memoryview(data)[pos:], DEFAULT)
    with pytest.raises(CorruptionError, match="magic"):
        parse_header(bytes(64))
    with pytest.raises(CorruptionError):
        parse_header(data[:10])


def test_schema_mismatch_and_bad_input_are_refused() -> None:
    cols = default_sequence(np.random.default_rng(0), 5)
    rec = encode_record(1, cols, DEFAULT)
    other = Schema([Field("ts", "int64")], time_field="ts")
    with pytest.raises(SchemaError, match="different schema"):
        decode_record(rec, other)
    wider = Schema([Field(f.name, "uint64" if f.name == "item_id" else f.dtype) for f in DEFAULT.fields], "ts")
    with pytest.raises(SchemaError, match="different schema"):
        decode_record(rec, wider)
    with pytest.raises(SchemaError, match="unknown field"):
        decode_record(rec, DEFAULT, fields=["nope"])
    with pytest.raises(SchemaError, match="dtype"):
        encode_record(1, {**cols, "action": cols["action"].astype(np.int64)}, DEFAULT)
    with pytest.raises(SchemaError, match="missing column"):
        encode_record(1, {k: v for k, v in cols.items() if k != "ts"}, DEFAULT)
    with pytest.raises(ValueError, match="offsets"):
        encode_records(np.array([1, 2], np.uint64), np.array([0, 5]), cols, DEFAULT)
