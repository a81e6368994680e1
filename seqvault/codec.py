"""SeqVault's on-disk record: one user's whole sequence as packed integer columns.

A record is self-describing (a recovery scan reads the header and knows where the next record
starts) and fully checksummed (any single corrupted byte is detected; nothing is decoded from a
record whose checksum fails). All integers are little-endian.

Record layout, byte by byte (``L`` = record length, ``n`` = event count)::

    offset  size  field
    0       1     magic, RECORD_MAGIC (0xA7); a zeroed or torn tail never starts with it
    1       1     format version, RECORD_VERSION (1)
    2       2     number of columns (u16), must equal the reader's schema
    4       4     event count n (u32)
    8       8     user id (u64)
    16      4     L, the whole record's length in bytes, trailing checksum included (u32)
    20      4     header checksum: CRC-32 of bytes 0..19, so a scan can trust L before reading on
    24      ...   one column descriptor per schema field, in schema order:
                    1 byte  bits 0-3: encoding (0 = FOR, 1 = DELTA); bits 4-7: dtype code
                            (index of the field's dtype in seqvault.schema.INTEGER_DTYPES)
                    1 byte  bit width w (0..64)
                    8 bytes base (u64)
                    8 bytes last value (u64, mapped; DELTA only)
    ...     ...   the packed payload of each column, in schema order, each ceil(m * w / 8) bytes
                  where m = n for FOR and n - 1 for DELTA (0 when n = 0); values LSB-first
    L-4     4     CRC-32 (zlib's polynomial) of bytes 0..L-5

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

Limits: n < 2**32 events and L < 2**32 bytes per record.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from seqvault._bitpack import (
    SIGN_BIT,
    U64,
    bit_width,
    crc32,
    load_le,
    pack_bits,
    store_le,
    unpack_into_words,
    unpack_to,
)
from seqvault.errors import CorruptionError
from seqvault.schema import INTEGER_DTYPES, Schema, SchemaError

RECORD_MAGIC: int = 0xA7
RECORD_VERSION: int = 1
HEADER_SIZE: int = 24
CHECKSUM_SIZE: int = 4
ENC_FOR = 0
ENC_DELTA = 1
_FOR_DESC = 10
_DELTA_DESC = 18
_HEADER = struct.Struct("<BBHIQII")
_U32 = struct.Struct("<I")
_MAX_U32 = 2**32 - 1

# Status codes returned by the kernels; Python turns them into errors with context.
_OK, _E_SHORT, _E_MAGIC, _E_VERSION, _E_HEADER_CRC, _E_LENGTH, _E_TRUNCATED, _E_CRC = range(8)
_E_COLUMNS, _E_DESC, _E_DTYPE, _E_SIZE = range(8, 12)


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
        self.itemsizes = np.array([dt.itemsize for dt in dts], dtype=np.int64)
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
@njit(cache=True, nogil=True)
def _encode_kernel(mapped: np.ndarray, offsets: np.ndarray, user_ids: np.ndarray, codes: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    n = len(user_ids)
    nf = mapped.shape[0]
    kinds = np.zeros((n, nf), np.uint8)
    widths = np.zeros((n, nf), np.int64)
    bases = np.zeros((n, nf), np.uint64)
    lasts = np.zeros((n, nf), np.uint64)
    starts = np.zeros(n + 1, np.int64)
    max_count = 0
    # Pass 1: choose each column's encoding and size every record.
    for i in range(n):
        s = offsets[i]
        e = offsets[i + 1]
        m = e - s
        max_count = max(max_count, m)
        size = HEADER_SIZE + CHECKSUM_SIZE
        for f in range(nf):
            if m == 0:
                size += _FOR_DESC
                continue
            col = mapped[f]
            lo = col[s]
            hi = lo
            dlo = U64(0xFFFFFFFFFFFFFFFF)
            dhi = U64(0)
            for j in range(s + 1, e):
                v = col[j]
                lo = min(lo, v)
                hi = max(hi, v)
                d = (v - col[j - 1]) ^ SIGN_BIT
                dlo = min(dlo, d)
                dhi = max(dhi, d)
            wf = bit_width(hi - lo)
            bytes_for = _FOR_DESC + (m * wf + 7) // 8
            if m > 1:
                wd = bit_width(dhi - dlo)
                bytes_delta = _DELTA_DESC + ((m - 1) * wd + 7) // 8
            else:
                wd = 0
                bytes_delta = bytes_for + 1
            if bytes_delta < bytes_for:
                kinds[i, f] = ENC_DELTA
                widths[i, f] = wd
                bases[i, f] = dlo
                lasts[i, f] = col[e - 1]
                size += bytes_delta
            else:
                widths[i, f] = wf
                bases[i, f] = lo
                size += bytes_for
        starts[i + 1] = starts[i] + size
    out = np.empty(starts[n], np.uint8)
    scratch = np.empty(max(max_count, 1), np.uint64)
    # Pass 2: write the records.
    for i in range(n):
        s = offsets[i]
        e = offsets[i + 1]
        m = e - s
        p = starts[i]
        length = starts[i + 1] - p
        out[p] = RECORD_MAGIC
        out[p + 1] = RECORD_VERSION
        store_le(out, p + 2, U64(nf), 2)
        store_le(out, p + 4, U64(m), 4)
        store_le(out, p + 8, user_ids[i], 8)
        store_le(out, p + 16, U64(length), 4)
        store_le(out, p + 20, U64(crc32(out, p, p + 20)), 4)
        q = p + HEADER_SIZE
        for f in range(nf):
            out[q] = np.uint8(kinds[i, f] | (codes[f] << 4))
            out[q + 1] = np.uint8(widths[i, f])
            store_le(out, q + 2, bases[i, f], 8)
            if kinds[i, f] == ENC_DELTA:
                store_le(out, q + 10, lasts[i, f], 8)
                q += _DELTA_DESC
            else:
                q += _FOR_DESC
        for f in range(nf):
            w = widths[i, f]
            if w == 0 or m == 0:
                continue
            col = mapped[f]
            base = bases[i, f]
            if kinds[i, f] == ENC_DELTA:
                for j in range(s + 1, e):
                    scratch[j - s - 1] = ((col[j] - col[j - 1]) ^ SIGN_BIT) - base
                q = pack_bits(scratch, 0, m - 1, w, out, q)
            else:
                for j in range(s, e):
                    scratch[j - s] = col[j] - base
                q = pack_bits(scratch, 0, m, w, out, q)
        store_le(out, q, U64(crc32(out, p, q)), 4)
    return out, starts


def _mapped_matrix(columns: dict[str, np.ndarray], plan: _Plan, n_events: int) -> np.ndarray:
    missing = [name for name in plan.names if name not in columns]
    if missing:
        raise SchemaError(f"missing column {missing[0]!r} (schema fields: {', '.join(plan.names)})",
                          field=missing[0])
    extra = [name for name in columns if name not in plan.names]
    if extra:
        raise SchemaError(f"unexpected column {extra[0]!r} (schema fields: {', '.join(plan.names)})",
                          field=extra[0])
    mapped = np.empty((len(plan.names), n_events), dtype=np.uint64)
    for f, name in enumerate(plan.names):
        col = np.asarray(columns[name])
        if col.dtype != plan.dtypes[f]:
            raise SchemaError(f"column {name!r} has dtype {col.dtype} but the schema says {plan.dtypes[f]}; "
                              f"validate the batch with Schema.validate first", field=name)
        if col.shape != (n_events,):
            raise SchemaError(f"column {name!r} has shape {col.shape}, expected ({n_events},)", field=name)
        # Unsafe cast = two's complement reinterpretation for negative values, which is what we want.
        np.copyto(mapped[f], col, casting="unsafe")
        if plan.signed[f]:
            mapped[f] ^= SIGN_BIT
    return mapped


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
    mapped = _mapped_matrix(columns, plan, n_events)
    return _encode_kernel(mapped, offs, uids, plan.codes)


def encode_record(user_id: int, columns: dict[str, np.ndarray], schema: Schema) -> np.ndarray:
    """Encode one user's sequence (columns at schema dtypes, equal length) as one record."""
    if not 0 <= int(user_id) <= 2**64 - 1:
        raise ValueError(f"user id {user_id} is outside the uint64 range")
    n = len(next(iter(columns.values()))) if columns else 0
    buf, _ = encode_records(np.array([user_id], dtype=np.uint64), np.array([0, n], dtype=np.int64),
                            columns, schema)
    return buf


# -- validation and decoding ---------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _check_header(buf: np.ndarray, pos: int, end: int) -> tuple[int, np.uint64, int, int, int]:
    """(status, user id, count, length, n columns) of the header at ``pos``; no payload checks."""
    if pos < 0 or pos + HEADER_SIZE > end:
        return _E_SHORT, U64(0), 0, 0, 0
    if buf[pos] != RECORD_MAGIC:
        return _E_MAGIC, U64(0), 0, 0, 0
    if buf[pos + 1] != RECORD_VERSION:
        return _E_VERSION, U64(0), 0, 0, 0
    if load_le(buf, pos + 20, end, 4) != U64(crc32(buf, pos, pos + 20)):
        return _E_HEADER_CRC, U64(0), 0, 0, 0
    ncols = int(load_le(buf, pos + 2, end, 2))
    count = int(load_le(buf, pos + 4, end, 4))
    user = load_le(buf, pos + 8, end, 8)
    length = int(load_le(buf, pos + 16, end, 4))
    if ncols == 0 or length < HEADER_SIZE + CHECKSUM_SIZE + _FOR_DESC * ncols:
        return _E_LENGTH, user, count, length, ncols
    if pos + length > end:
        return _E_TRUNCATED, user, count, length, ncols
    return _OK, user, count, length, ncols


@njit(cache=True, nogil=True)
def _check_body(buf: np.ndarray, pos: int, length: int, count: int, codes: np.ndarray,
                kinds: np.ndarray, widths: np.ndarray, bases: np.ndarray, lasts: np.ndarray,
                payload: np.ndarray) -> int:
    """Walk the descriptors into the given arrays and check they account for every byte."""
    nf = len(codes)
    end = pos + length - CHECKSUM_SIZE
    q = pos + HEADER_SIZE
    for f in range(nf):
        if q + _FOR_DESC > end:
            return _E_SIZE
        kind = buf[q] & 0x0F
        if (buf[q] >> 4) != codes[f]:
            return _E_DTYPE
        w = int(buf[q + 1])
        if kind > ENC_DELTA or w > 64:
            return _E_DESC
        kinds[f] = kind
        widths[f] = w
        bases[f] = load_le(buf, q + 2, end, 8)
        if kind == ENC_DELTA:
            if q + _DELTA_DESC > end:
                return _E_SIZE
            lasts[f] = load_le(buf, q + 10, end, 8)
            q += _DELTA_DESC
        else:
            q += _FOR_DESC
    for f in range(nf):
        m = count if kinds[f] == ENC_FOR else max(count - 1, 0)
        if kinds[f] == ENC_DELTA and count == 0:
            return _E_DESC
        payload[f] = q
        q += (m * widths[f] + 7) // 8
    if q != end:
        return _E_SIZE
    return _OK


@njit(cache=True, nogil=True, inline="always")
def _prefix_back(deltas: np.ndarray, n_out: int, last: np.uint64, flip: np.uint64, dst: np.ndarray) -> None:
    """Undo delta coding newest to oldest: ``deltas[k]`` (mapped) lies between output k and k + 1."""
    x = last
    dst[n_out - 1] = x ^ flip
    for k in range(n_out - 2, -1, -1):
        x -= deltas[k] ^ SIGN_BIT
        dst[k] = x ^ flip


@njit(cache=True, nogil=True)
def _decode_column(words: np.ndarray, bit0: int, w: int, n_out: int, base: np.uint64, delta: bool,
                   last: np.uint64, flip: np.uint64, scratch: np.ndarray, dst: np.ndarray) -> None:
    if delta:
        unpack_to(words, bit0, w, n_out - 1, base, U64(0), scratch)
        _prefix_back(scratch, n_out, last, flip, dst)
    else:
        unpack_to(words, bit0, w, n_out, base, flip, dst)


@njit(cache=True, nogil=True)
def _decode_columns(buf: np.ndarray, pos: int, length: int, count: int, n_out: int,
                    kinds: np.ndarray, widths: np.ndarray, bases: np.ndarray, lasts: np.ndarray,
                    payload: np.ndarray, signed: np.ndarray, itemsizes: np.ndarray, want: np.ndarray,
                    out: np.ndarray, col_starts: np.ndarray, elem: int, scratch: np.ndarray,
                    words: np.ndarray) -> None:
    """Decode the newest ``n_out`` events of each wanted column; field f's value j goes to
    ``out[col_starts[f] + (elem + j) * itemsize]``. ``words`` is uint64 scratch of at least
    ``length // 8 + 2`` entries, ``scratch`` of at least ``n_out``."""
    first = count - n_out
    for f in range(len(kinds)):
        if not want[f] or n_out == 0:
            continue
        w = widths[f]
        delta = kinds[f] == ENC_DELTA
        # FOR value i is packed at index i; DELTA's delta between events i and i+1 at index i.
        # Either way the newest n_out events need packed indices first.. only.
        n_packed = n_out - 1 if delta else n_out
        first_bit = first * w
        byte_lo = first_bit >> 3
        unpack_into_words(buf, payload[f] + byte_lo, (first_bit + n_packed * w + 7) // 8 - byte_lo, words)
        bit0 = first_bit - 8 * byte_lo
        flip = SIGN_BIT if signed[f] else U64(0)
        isz = itemsizes[f]
        p = col_starts[f] + elem * isz
        # One call per output width so every inner loop stores straight into the typed column.
        if isz == 1:
            _decode_column(words, bit0, w, n_out, bases[f], delta, lasts[f], flip, scratch,
                           out[p:p + n_out])
        elif isz == 2:
            _decode_column(words, bit0, w, n_out, bases[f], delta, lasts[f], flip, scratch,
                           out[p:p + 2 * n_out].view(np.uint16))
        elif isz == 4:
            _decode_column(words, bit0, w, n_out, bases[f], delta, lasts[f], flip, scratch,
                           out[p:p + 4 * n_out].view(np.uint32))
        else:
            _decode_column(words, bit0, w, n_out, bases[f], delta, lasts[f], flip, scratch,
                           out[p:p + 8 * n_out].view(np.uint64))


@njit(cache=True, nogil=True)
def _decode_one(buf: np.ndarray, pos: int, length: int, count: int, codes: np.ndarray, signed: np.ndarray,
                itemsizes: np.ndarray, want: np.ndarray, n_out: int) -> tuple[int, np.ndarray, np.ndarray]:
    nf = len(codes)
    kinds = np.zeros(nf, np.uint8)
    widths = np.zeros(nf, np.int64)
    bases = np.zeros(nf, np.uint64)
    lasts = np.zeros(nf, np.uint64)
    payload = np.zeros(nf, np.int64)
    col_starts = np.full(nf, -1, np.int64)
    status = _check_body(buf, pos, length, count, codes, kinds, widths, bases, lasts, payload)
    if status != _OK:
        return status, np.empty(0, np.uint8), col_starts
    total = 0
    for f in range(nf):
        if want[f]:
            col_starts[f] = total
            total += (n_out * itemsizes[f] + 7) // 8 * 8  # keep every column 8-byte aligned
    out = np.empty(total, np.uint8)
    scratch = np.empty(max(n_out, 1), np.uint64)
    words = np.empty(length // 8 + 2, np.uint64)
    _decode_columns(buf, pos, length, count, n_out, kinds, widths, bases, lasts, payload, signed,
                    itemsizes, want, out, col_starts, 0, scratch, words)
    return _OK, out, col_starts


@njit(cache=True, nogil=True)
def _decode_many(buf: np.ndarray, rec_offsets: np.ndarray, codes: np.ndarray, signed: np.ndarray,
                 itemsizes: np.ndarray, want: np.ndarray, last_n: int
                 ) -> tuple[int, int, np.uint64, np.ndarray, np.ndarray, np.ndarray]:
    """Check every record (header, checksum, structure), then decode them all into CSR columns.

    Returns (status, index of the first bad record, its user id, event offsets, out, col_starts).
    """
    n = len(rec_offsets)
    nf = len(codes)
    end = len(buf)
    counts = np.zeros(n, np.int64)
    lengths = np.zeros(n, np.int64)
    kinds = np.zeros((n, nf), np.uint8)
    widths = np.zeros((n, nf), np.int64)
    bases = np.zeros((n, nf), np.uint64)
    lasts = np.zeros((n, nf), np.uint64)
    payload = np.zeros((n, nf), np.int64)
    ev_offsets = np.zeros(n + 1, np.int64)
    col_starts = np.full(nf, -1, np.int64)
    for i in range(n):
        pos = rec_offsets[i]
        status, user, count, length, ncols = _check_header(buf, pos, end)
        if status == _OK and ncols != nf:
            status = _E_COLUMNS
        if status == _OK and load_le(buf, pos + length - CHECKSUM_SIZE, end, 4) != U64(
                crc32(buf, pos, pos + length - CHECKSUM_SIZE)):
            status = _E_CRC
        if status == _OK:
            status = _check_body(buf, pos, length, count, codes, kinds[i], widths[i], bases[i], lasts[i],
                                 payload[i])
        if status != _OK:
            return status, i, user, ev_offsets, np.empty(0, np.uint8), col_starts
        counts[i] = count
        lengths[i] = length
        n_out = count if last_n < 0 else min(count, last_n)
        ev_offsets[i + 1] = ev_offsets[i] + n_out
    total_events = ev_offsets[n]
    total = 0
    for f in range(nf):
        if want[f]:
            col_starts[f] = total
            total += (total_events * itemsizes[f] + 7) // 8 * 8
    out = np.empty(total, np.uint8)
    max_out = 1
    max_len = 0
    for i in range(n):
        max_out = max(max_out, ev_offsets[i + 1] - ev_offsets[i])
        max_len = max(max_len, lengths[i])
    scratch = np.empty(max_out, np.uint64)
    words = np.empty(max_len // 8 + 2, np.uint64)
    for i in range(n):
        _decode_columns(buf, rec_offsets[i], lengths[i], counts[i], ev_offsets[i + 1] - ev_offsets[i],
                        kinds[i], widths[i], bases[i], lasts[i], payload[i], signed, itemsizes, want,
                        out, col_starts, ev_offsets[i], scratch, words)
    return _OK, -1, U64(0), ev_offsets, out, col_starts


_MESSAGES = {
    _E_SHORT: "fewer than HEADER_SIZE bytes where a record header should be (torn tail or bad offset)",
    _E_MAGIC: f"bad magic byte (expected 0x{RECORD_MAGIC:02X}): not a record start, or a zeroed/torn tail",
    _E_VERSION: f"unsupported record format version (this build reads version {RECORD_VERSION})",
    _E_HEADER_CRC: "record header checksum mismatch",
    _E_LENGTH: "record header gives an impossible length",
    _E_TRUNCATED: "record runs past the end of the available bytes (torn write or short read)",
    _E_CRC: "record checksum mismatch",
    _E_DESC: "invalid column descriptor",
    _E_SIZE: "column descriptors do not add up to the record length",
}


def _raise(status: int, *, path: str | None, offset: int | None, user: int | None, detail: str = "") -> None:
    if status in (_E_COLUMNS, _E_DTYPE):
        where = ", ".join(p for p in (f"file {path}" if path else "", f"offset {offset}"
                                      if offset is not None else "") if p)
        raise SchemaError(f"record {('at ' + where) if where else ''} was written with a different schema "
                          f"({'column count' if status == _E_COLUMNS else 'column dtype'} differs); "
                          f"read it with the schema it was written with")
    msg = _MESSAGES.get(status, f"record failed check {status}")
    raise CorruptionError(msg + (f": {detail}" if detail else "") + "; the record cannot be used",
                          path=path, offset=offset, user_id=user)


def _as_u8(buf: object) -> np.ndarray:
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8 or buf.ndim != 1:
            buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        return buf
    return np.frombuffer(buf, dtype=np.uint8)


def parse_header(buf: object, offset: int = 0) -> RecordHeader:
    """Read and check the header at ``buf[offset:]`` (only HEADER_SIZE bytes are needed).

    Raises CorruptionError on a short buffer, bad magic, unknown version, header checksum
    mismatch or an impossible length.
    """
    mv = memoryview(buf).cast("B") if not isinstance(buf, np.ndarray) else memoryview(_as_u8(buf))
    if offset < 0 or len(mv) - offset < HEADER_SIZE:
        _raise(_E_SHORT, path=None, offset=offset, user=None,
               detail=f"{max(len(mv) - offset, 0)} bytes available")
    magic, version, ncols, count, user, length, hcrc = _HEADER.unpack_from(mv, offset)
    if magic != RECORD_MAGIC:
        _raise(_E_MAGIC, path=None, offset=offset, user=None, detail=f"found 0x{magic:02X}")
    if version != RECORD_VERSION:
        _raise(_E_VERSION, path=None, offset=offset, user=None, detail=f"found {version}")
    if zlib.crc32(mv[offset:offset + 20]) != hcrc:
        _raise(_E_HEADER_CRC, path=None, offset=offset, user=None)
    if ncols == 0 or length < HEADER_SIZE + CHECKSUM_SIZE + _FOR_DESC * ncols:
        _raise(_E_LENGTH, path=None, offset=offset, user=user, detail=f"{length} bytes for {ncols} columns")
    return RecordHeader(user_id=user, count=count, length=length)


def record_checksum(buf: object, offset: int = 0) -> int:
    """The checksum stored at the end of the record at ``offset`` (what the index keeps); header is checked."""
    h = parse_header(buf, offset)
    mv = memoryview(_as_u8(buf))
    if offset + h.length > len(mv):
        _raise(_E_TRUNCATED, path=None, offset=offset, user=h.user_id)
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
    return zlib.crc32(mv[offset:end - CHECKSUM_SIZE]) == int.from_bytes(mv[end - CHECKSUM_SIZE:end], "little")


def _views(out: np.ndarray, col_starts: np.ndarray, plan: _Plan, names: tuple[str, ...], n: int
           ) -> dict[str, np.ndarray]:
    result: dict[str, np.ndarray] = {}
    starts = col_starts.tolist()
    for name in names:
        f = plan.index[name]
        s = starts[f]
        dt = plan.dtypes[f]
        result[name] = out[s:s + n * dt.itemsize].view(dt)
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
    if n_avail < HEADER_SIZE:
        _raise(_E_SHORT, path=path, offset=offset, user=expect_user, detail=f"{n_avail} bytes available")
    magic, version, ncols, count, user, length, hcrc = _HEADER.unpack_from(arr, 0)
    if magic != RECORD_MAGIC:
        _raise(_E_MAGIC, path=path, offset=offset, user=expect_user, detail=f"found 0x{magic:02X}")
    if version != RECORD_VERSION:
        _raise(_E_VERSION, path=path, offset=offset, user=expect_user, detail=f"found {version}")
    if zlib.crc32(arr[:20]) != hcrc:
        _raise(_E_HEADER_CRC, path=path, offset=offset, user=expect_user)
    if ncols == 0 or length < HEADER_SIZE + CHECKSUM_SIZE + _FOR_DESC * ncols:
        _raise(_E_LENGTH, path=path, offset=offset, user=user, detail=f"{length} bytes for {ncols} columns")
    if length > n_avail:
        _raise(_E_TRUNCATED, path=path, offset=offset, user=user,
               detail=f"header says {length} bytes, {n_avail} available")
    body_end = length - CHECKSUM_SIZE
    # zlib's CRC-32 is ~2x faster than the Numba one; the batch path uses the Numba one.
    if zlib.crc32(arr[:body_end]) != _U32.unpack_from(arr, body_end)[0]:
        _raise(_E_CRC, path=path, offset=offset, user=user)
    if expect_user is not None and user != expect_user:
        raise CorruptionError(f"record belongs to user {user}, not the expected user {expect_user} "
                              f"(stale or misdirected index entry)", path=path, offset=offset, user_id=expect_user)
    if ncols != len(plan.names):
        _raise(_E_COLUMNS, path=path, offset=offset, user=user)
    if last_n is not None and last_n < 0:
        raise ValueError(f"last_n must be >= 0, got {last_n}")
    n_out = count if last_n is None else min(count, last_n)
    status, out, col_starts = _decode_one(arr, 0, length, count, plan.codes, plan.signed, plan.itemsizes,
                                          want, n_out)
    if status != _OK:
        _raise(status, path=path, offset=offset, user=user)
    return _views(out, col_starts, plan, names, n_out)


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
    status, bad, user, ev_offsets, out, col_starts = _decode_many(
        arr, offs, plan.codes, plan.signed, plan.itemsizes, want, -1 if last_n is None else last_n)
    if status != _OK:
        header_ok = status not in (_E_SHORT, _E_MAGIC, _E_VERSION, _E_HEADER_CRC)
        _raise(status, path=path, offset=int(offs[bad]), user=int(user) if header_ok else None)
    return ev_offsets, _views(out, col_starts, plan, names, int(ev_offsets[-1]))
