"""SeqVault's on-disk record: one user's whole sequence as packed integer columns.

A record is self-describing (a recovery scan reads the header and knows where the next record
starts) and fully checksummed (a corruption goes undetected with probability 2**-32 in format 2,
never for a burst of up to 32 bits in format 1; nothing is decoded from a record whose checksum
fails). All integers are little-endian.

Record layout, byte by byte (``L`` = record length, ``n`` = event count)::

    offset  size  field
    0       1     magic, RECORD_MAGIC (0xA7); a zeroed or torn tail never starts with it
    1       1     format version: RECORD_VERSION (2) is written; 1 (RECORD_VERSION_CRC32) is still read
    2       2     number of columns (u16), must equal the reader's schema
    4       4     event count n (u32)
    8       8     user id (u64)
    16      4     L, the whole record's length in bytes, trailing checksum included (u32)
    20      4     header checksum of bytes 0..19, so a scan can trust L before reading on
    24      ...   one column descriptor per schema field, in schema order:
                    1 byte  bits 0-3: encoding (0 = FOR, 1 = DELTA); bits 4-7: dtype code
                            (index of the field's dtype in seqvault.schema.INTEGER_DTYPES)
                    1 byte  bit width w (0..64)
                    8 bytes base (u64)
                    8 bytes last value (u64, mapped; DELTA only)
    ...     ...   the packed payload of each column, in schema order, each ceil(m * w / 8) bytes
                  where m = n for FOR and n - 1 for DELTA (0 when n = 0); values LSB-first
    L-4     4     checksum of bytes 0..L-5

Value mapping: each value is taken as a 64-bit two's complement integer ``u``; signed dtypes
additionally flip the sign bit so that the unsigned order of ``u`` is the numeric order.

* FOR (frame of reference): base = min(u); packed[i] = u[i] - base, bit-packed at the width of
  max - min. A constant column has w = 0 and costs no payload bytes.
* DELTA: d[i] = u[i] - u[i-1] (mod 2**64) for i >= 1, taken as a signed number and mapped like a
  signed value; base = min(d); packed[i-1] = d[i] - base. The last value is stored, so decoding
  runs newest to oldest and ``last_n`` needs only the newest deltas.

The encoder picks, per column and per record, whichever of FOR and DELTA is smaller, so the
sorted time field and other monotone fields get delta coding and everything else FOR.
Zig-zag is not used: because a per-column minimum is stored, FOR over the (possibly negative)
values or deltas is never wider than zig-zag, whose width follows the largest magnitude.

Checksums: version 2 stores the low 32 bits of XXH64 (seed 0; ``xxhash.xxh64_intdigest(data) &
0xFFFFFFFF``), version 1 CRC-32 (``zlib.crc32``); the layout is otherwise identical, and a store
holds records of both versions side by side (old records stay readable; merges rewrite them as
version 2). XXH64 runs ~3x faster here than slicing-by-16 CRC-32, which was a third of a record's
decode time; the price is the guarantee: CRC-32 detects every error burst of up to 32 bits, XXH64's
32 bits miss a given corruption with probability 2**-32 (RocksDB made the same trade: XXH3 is its
default block checksum). The record's stored checksum is also what the DRAM index keeps per user.

Limits: n < 2**32 events and L < 2**32 bytes per record.

The Numba kernels live in seqvault/_recordkern.py (bit-level primitives in _bitpack.py, and one
unpack kernel per width up to 32 bits in the generated _unpack.py, which LLVM vectorises); they
release the GIL and share no state, so threads may encode and decode concurrently.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seqvault import _recordkern as k
from seqvault._bitpack import SIGN_BIT
from seqvault._recordkern import (
    CHECKSUM_SIZE,
    ENC_DELTA,
    ENC_FOR,
    HEADER_SIZE,
    RECORD_MAGIC,
    RECORD_VERSION,
    RECORD_VERSION_CRC32,
)
from seqvault.errors import CorruptionError
from seqvault.schema import INTEGER_DTYPES, Schema, SchemaError

__all__ = [
    "CHECKSUM_SIZE", "ENC_DELTA", "ENC_FOR", "HEADER_SIZE", "RECORD_MAGIC", "RECORD_VERSION", "RECORD_VERSION_CRC32",
    "RecordHeader",
    "decode_record", "decode_records", "encode_record", "encode_records", "parse_header", "record_checksum",
    "record_checksum_ok",
]

_HEADER = struct.Struct("<BBHIQII")
_MAX_U32 = 2**32 - 1
_VERSIONS = (RECORD_VERSION_CRC32, RECORD_VERSION)


def _checksum(data: object, version: int) -> int:
    """The checksum a record of ``version`` stores for ``data`` (CRC-32 for 1, XXH64's low 32 bits for 2)."""
    if version == RECORD_VERSION_CRC32:
        return zlib.crc32(data)
    arr = _as_u8(data)
    return int(k.record_checksum(arr, 0, len(arr), version))


@dataclass(frozen=True)
class RecordHeader:
    """What a record's first HEADER_SIZE bytes say: whose it is, how many events, how long it is."""

    user_id: int
    count: int
    length: int


# -- per-schema constants ------------------------------------------------------------------------
class _Plan:
    """Per-schema arrays the kernels need, computed once per Schema object."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.names = schema.names
        dts = [f.np_dtype for f in schema.fields]
        self.codes = np.array([INTEGER_DTYPES.index(f.dtype) for f in schema.fields], dtype=np.int64)
        self.signed = np.array([dt.kind == "i" for dt in dts], dtype=np.bool_)
        self.smeta = np.stack([self.codes, self.signed.astype(np.int64),
                               np.array([dt.itemsize for dt in dts], dtype=np.int64)])
        self.dtypes = dts
        self.index = {name: f for f, name in enumerate(self.names)}
        self.all_fields = np.ones(len(dts), dtype=np.bool_)


_PLANS: dict[int, _Plan] = {}


def _plan(schema: Schema) -> _Plan:
    plan = _PLANS.get(id(schema))
    if plan is None or plan.schema is not schema:
        if len(_PLANS) > 64:
            _PLANS.clear()
        plan = _PLANS[id(schema)] = _Plan(schema)
    return plan


def _field_mask(plan: _Plan, fields: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    if fields is None:
        return plan.all_fields, plan.names
    if isinstance(fields, str):
        fields = (fields,)
    mask = np.zeros(len(plan.names), dtype=np.bool_)
    for name in fields:
        try:
            mask[plan.names.index(name)] = True
        except ValueError:
            raise SchemaError(f"unknown field {name!r}; the schema has {', '.join(plan.names)}",
                              field=name) from None
    return mask, tuple(fields)


# -- encoding ------------------------------------------------------------------------------------
def _check_columns(columns: dict[str, np.ndarray], plan: _Plan, n_events: int) -> list[np.ndarray]:
    missing = [name for name in plan.names if name not in columns]
    if missing:
        raise SchemaError(f"missing column {missing[0]!r} (schema fields: {', '.join(plan.names)})",
                          field=missing[0])
    extra = [name for name in columns if name not in plan.names]
    if extra:
        raise SchemaError(f"unexpected column {extra[0]!r} (schema fields: {', '.join(plan.names)})",
                          field=extra[0])
    cols = []
    for f, name in enumerate(plan.names):
        col = np.asarray(columns[name])
        if col.dtype != plan.dtypes[f]:
            raise SchemaError(f"column {name!r} has dtype {col.dtype} but the schema says {plan.dtypes[f]}; "
                              f"validate the batch with Schema.validate first", field=name)
        if col.shape != (n_events,):
            raise SchemaError(f"column {name!r} has shape {col.shape}, expected ({n_events},)", field=name)
        cols.append(col)
    return cols


def _mapped_matrix(cols: list[np.ndarray], plan: _Plan, start: int, stop: int) -> np.ndarray:
    """Events start..stop of every column as uint64 in the codec's order-preserving mapping."""
    mapped = np.empty((len(cols), stop - start), dtype=np.uint64)
    for f, col in enumerate(cols):
        # Unsafe cast = two's complement reinterpretation for negative values, which is what we want.
        np.copyto(mapped[f], col[start:stop], casting="unsafe")
        if plan.signed[f]:
            mapped[f] ^= SIGN_BIT
    return mapped


# Events per kernel call: bounds the uint64 staging matrix (8 bytes per event per field).
ENCODE_CHUNK_EVENTS = 1 << 20


def encode_records(user_ids: np.ndarray, offsets: np.ndarray, columns: dict[str, np.ndarray],
                   schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Encode many users' sequences (CSR: user i owns ``columns[f][offsets[i]:offsets[i+1]]``).

    Returns one uint8 buffer with the records back to back and their int64 start offsets
    (length n + 1, the last being the buffer length).
    """
    plan = _plan(schema)
    uids = np.ascontiguousarray(user_ids, dtype=np.uint64)
    offs = np.ascontiguousarray(offsets, dtype=np.int64)
    if offs.ndim != 1 or len(offs) != len(uids) + 1:
        raise ValueError(f"offsets must have len(user_ids) + 1 = {len(uids) + 1} entries, got {offs.shape}")
    if len(offs) and offs[0] != 0:
        raise ValueError(f"offsets must start at 0, got {offs[0]}")
    counts = np.diff(offs)
    if len(counts) and counts.min() < 0:
        raise ValueError(f"offsets must be non-decreasing (user {int(np.argmin(counts))} has a negative count)")
    n_events = int(offs[-1])
    if len(counts) and counts.max() * (8 * len(plan.names)) + 64 * len(plan.names) > _MAX_U32:
        raise ValueError(f"a sequence of {counts.max()} events may not fit in one record (< 4 GiB); "
                         f"split or trim it")
    cols = _check_columns(columns, plan, n_events)
    if n_events <= ENCODE_CHUNK_EVENTS:
        return k.encode_kernel(_mapped_matrix(cols, plan, 0, n_events), offs, uids, plan.codes)
    # Whole users per chunk (a user longer than a chunk gets one to itself).
    cuts = np.searchsorted(offs, np.arange(ENCODE_CHUNK_EVENTS, n_events, ENCODE_CHUNK_EVENTS), side="right") - 1
    bounds = np.unique(np.concatenate([[0], cuts, [len(uids)]]))
    bufs, starts, base = [], [], 0
    for u0, u1 in itertools.pairwise(bounds.tolist()):
        e0, e1 = int(offs[u0]), int(offs[u1])
        buf, st = k.encode_kernel(_mapped_matrix(cols, plan, e0, e1), offs[u0:u1 + 1] - e0, uids[u0:u1],
                                  plan.codes)
        bufs.append(buf)
        starts.append(st[:-1] + base)
        base += len(buf)
    starts.append(np.array([base], np.int64))
    return np.concatenate(bufs), np.concatenate(starts)


def encode_record(user_id: int, columns: dict[str, np.ndarray], schema: Schema) -> np.ndarray:
    """Encode one user's sequence (columns at schema dtypes, equal length) as one record."""
    if not 0 <= int(user_id) <= 2**64 - 1:
        raise ValueError(f"user id {user_id} is outside the uint64 range")
    n = len(next(iter(columns.values()))) if columns else 0
    buf, _ = encode_records(np.array([user_id], dtype=np.uint64), np.array([0, n], dtype=np.int64),
                            columns, schema)
    return buf


# -- validation and decoding ---------------------------------------------------------------------
_MESSAGES = {
    k.E_SHORT: "fewer than HEADER_SIZE bytes where a record header should be (torn tail or bad offset)",
    k.E_MAGIC: f"bad magic byte (expected 0x{RECORD_MAGIC:02X}): not a record start, or a zeroed/torn tail",
    k.E_VERSION: f"unsupported record format version (this build reads versions {RECORD_VERSION_CRC32} and "
                 f"{RECORD_VERSION})",
    k.E_HEADER_CRC: "record header checksum mismatch",
    k.E_LENGTH: "record header gives an impossible length",
    k.E_TRUNCATED: "record runs past the end of the available bytes (torn write or short read)",
    k.E_CRC: "record checksum mismatch",
    k.E_DESC: "invalid column descriptor",
    k.E_SIZE: "column descriptors do not add up to the record length",
}


def _raise(status: int, *, path: str | None, offset: int | None, user: int | None, detail: str = "") -> None:
    if status in (k.E_COLUMNS, k.E_DTYPE):
        where = ", ".join(p for p in (f"file {path}" if path else "", f"offset {offset}"
                                      if offset is not None else "") if p)
        raise SchemaError(f"record {('at ' + where) if where else ''} was written with a different schema "
                          f"({'column count' if status == k.E_COLUMNS else 'column dtype'} differs); "
                          f"read it with the schema it was written with")
    msg = _MESSAGES.get(status, f"record failed check {status}")
    raise CorruptionError(msg + (f": {detail}" if detail else "") + "; the record cannot be used",
                          path=path, offset=offset, user_id=user)


def _as_u8(buf: object) -> np.ndarray:
    """A contiguous 1-D uint8 array over ``buf`` (no copy for bytes, bytearray, memoryview, mmap)."""
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8 or buf.ndim != 1 or not buf.flags.c_contiguous:
            buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        return buf
    if isinstance(buf, memoryview) and not buf.c_contiguous:
        buf = buf.tobytes()
    return np.frombuffer(buf, dtype=np.uint8)


def parse_header(buf: object, offset: int = 0) -> RecordHeader:
    """Read and check the header at ``buf[offset:]`` (only HEADER_SIZE bytes are needed).

    Raises CorruptionError on a short buffer, bad magic, unknown version, header checksum
    mismatch or an impossible length.
    """
    mv = memoryview(buf).cast("B") if not isinstance(buf, np.ndarray) else memoryview(_as_u8(buf))
    if offset < 0 or len(mv) - offset < HEADER_SIZE:
        _raise(k.E_SHORT, path=None, offset=offset, user=None,
               detail=f"{max(len(mv) - offset, 0)} bytes available")
    magic, version, ncols, count, user, length, hcrc = _HEADER.unpack_from(mv, offset)
    if magic != RECORD_MAGIC:
        _raise(k.E_MAGIC, path=None, offset=offset, user=None, detail=f"found 0x{magic:02X}")
    if version not in _VERSIONS:
        _raise(k.E_VERSION, path=None, offset=offset, user=None, detail=f"found {version}")
    if _checksum(mv[offset:offset + 20], version) != hcrc:
        _raise(k.E_HEADER_CRC, path=None, offset=offset, user=None)
    if ncols == 0 or length < HEADER_SIZE + CHECKSUM_SIZE + k.FOR_DESC * ncols:
        _raise(k.E_LENGTH, path=None, offset=offset, user=user, detail=f"{length} bytes for {ncols} columns")
    return RecordHeader(user_id=user, count=count, length=length)


def record_checksum(buf: object, offset: int = 0) -> int:
    """The checksum stored at the end of the record at ``offset`` (what the index keeps); header is checked."""
    h = parse_header(buf, offset)
    mv = memoryview(_as_u8(buf))
    if offset + h.length > len(mv):
        _raise(k.E_TRUNCATED, path=None, offset=offset, user=h.user_id)
    return int.from_bytes(mv[offset + h.length - CHECKSUM_SIZE:offset + h.length], "little")


def record_checksum_ok(buf: object, offset: int = 0) -> bool:
    """True if a complete record with a valid header and checksum starts at ``offset``."""
    try:
        h = parse_header(buf, offset)
    except CorruptionError:
        return False
    mv = memoryview(_as_u8(buf))
    end = offset + h.length
    if end > len(mv):
        return False
    return _checksum(mv[offset:end - CHECKSUM_SIZE], mv[offset + 1]) == int.from_bytes(mv[end - CHECKSUM_SIZE:end],
                                                                                       "little")


def _views(out: np.ndarray, col_starts: np.ndarray, plan: _Plan, names: tuple[str, ...], n: int
           ) -> dict[str, np.ndarray]:
    result: dict[str, np.ndarray] = {}
    starts = col_starts.tolist()
    for name in names:
        f = plan.index[name]
        # np.frombuffer is the cheapest typed view here (measured: ~10% below the ndarray
        # constructor, ~35% below slice + view); with 7 columns it is a quarter of a 1000-event decode.
        result[name] = np.frombuffer(out, plan.dtypes[f], n, starts[f])
    return result


def decode_record(buf: object, schema: Schema, fields: Sequence[str] | None = None, last_n: int | None = None,
                  *, path: str | None = None, offset: int | None = None, expect_user: int | None = None
                  ) -> dict[str, np.ndarray]:
    """Check and decode the one record at the start of ``buf`` (trailing bytes are ignored).

    Returns oldest-first columns at the schema dtypes: only ``fields`` (default all) and only
    the newest ``last_n`` events if given. ``path``/``offset`` only label errors. Raises
    CorruptionError (naming path, offset and user) if any check fails or the record belongs to
    another user than ``expect_user``; nothing is decoded from a record that fails.
    """
    plan = _plan(schema)
    want, names = _field_mask(plan, fields)
    arr = _as_u8(buf)
    n_avail = len(arr)
    if n_avail >= HEADER_SIZE:
        magic, version, ncols, count, user, length, _ = _HEADER.unpack_from(arr, 0)
        # Fast path: the header's fields in one expression (the kernel checks both checksums);
        # _check_record names the failure otherwise.
        ok = (magic == RECORD_MAGIC and version in _VERSIONS and ncols
              and HEADER_SIZE + CHECKSUM_SIZE + k.FOR_DESC * ncols <= length <= n_avail)
    else:
        ok = False
    if not ok:
        _check_record(arr, path=path, offset=offset, expect_user=expect_user)
        raise AssertionError("unreachable: _check_record raises on every failed check")
    if last_n is None:
        n_out = count
    elif last_n >= 0:
        n_out = min(count, last_n)
    else:
        raise ValueError(f"last_n must be >= 0, got {last_n}")
    status, out, col_starts = k.decode_one(arr, length, count, ncols, plan.smeta, want, n_out, version)
    if status == k.E_HEADER_CRC:  # the header is not to be trusted: name no user from it
        _raise(status, path=path, offset=offset, user=expect_user)
    if expect_user is not None and user != expect_user:
        raise CorruptionError(f"record belongs to user {user}, not the expected user {expect_user} "
                              f"(stale or misdirected index entry)", path=path, offset=offset, user_id=expect_user)
    if status != k.OK:
        _raise(status, path=path, offset=offset, user=user)
    return _views(out, col_starts, plan, names, n_out)


def _check_record(arr: np.ndarray, *, path: str | None, offset: int | None, expect_user: int | None) -> None:
    """Raise the CorruptionError that names the first failed check of the record at ``arr[0:]``."""
    n_avail = len(arr)
    if n_avail < HEADER_SIZE:
        _raise(k.E_SHORT, path=path, offset=offset, user=expect_user, detail=f"{n_avail} bytes available")
    magic, version, ncols, _, user, length, hcrc = _HEADER.unpack_from(arr, 0)
    if magic != RECORD_MAGIC:
        _raise(k.E_MAGIC, path=path, offset=offset, user=expect_user, detail=f"found 0x{magic:02X}")
    if version not in _VERSIONS:
        _raise(k.E_VERSION, path=path, offset=offset, user=expect_user, detail=f"found {version}")
    if _checksum(arr[:20], version) != hcrc:
        _raise(k.E_HEADER_CRC, path=path, offset=offset, user=expect_user)
    if ncols == 0 or length < HEADER_SIZE + CHECKSUM_SIZE + k.FOR_DESC * ncols:
        _raise(k.E_LENGTH, path=path, offset=offset, user=user, detail=f"{length} bytes for {ncols} columns")
    if length > n_avail:
        _raise(k.E_TRUNCATED, path=path, offset=offset, user=user,
               detail=f"header says {length} bytes, {n_avail} available")
    _raise(k.E_CRC, path=path, offset=offset, user=user)


def decode_records(buf: np.ndarray, record_offsets: np.ndarray, schema: Schema,
                   fields: Sequence[str] | None = None, last_n: int | None = None, *, path: str | None = None
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Check and decode many records in one buffer (record i starts at ``record_offsets[i]``).

    Returns CSR: int64 event offsets (len n + 1) and the requested columns, user i's events at
    ``col[offsets[i]:offsets[i+1]]``. Any failing record raises CorruptionError naming its offset
    and user (when its header is readable); nothing is returned in that case.
    """
    plan = _plan(schema)
    want, names = _field_mask(plan, fields)
    arr = _as_u8(buf)
    offs = np.ascontiguousarray(record_offsets, dtype=np.int64)
    if last_n is not None and last_n < 0:
        raise ValueError(f"last_n must be >= 0, got {last_n}")
    status, bad, user, ev_offsets, out, col_starts = k.decode_many(
        arr, offs, plan.smeta, want, -1 if last_n is None else last_n)
    if status != k.OK:
        header_ok = status not in (k.E_SHORT, k.E_MAGIC, k.E_VERSION, k.E_HEADER_CRC)
        _raise(status, path=path, offset=int(offs[bad]), user=int(user) if header_ok else None)
    return ev_offsets, _views(out, col_starts, plan, names, int(ev_offsets[-1]))
