"""Numba kernels behind seqvault.codec: encode many records, check and decode one or many.

The record format is documented in seqvault/codec.py. Kernels never raise: they return a status
code (``OK`` or one of the ``E_*`` below) and codec.py turns it into an error with context.

Array layouts shared with codec.py:

* ``smeta``: int64 (3, n_fields), rows SM_CODE (dtype code), SM_SIGNED (0/1), SM_ITEMSIZE.
* ``desc``: int64 (3, n_fields) per record, rows D_KIND, D_WIDTH, D_PAYLOAD (absolute byte
  position of the column's packed payload); ``vals``: uint64 (2, n_fields), rows V_BASE, V_LAST.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from seqvault._bitpack import (
    SIGN_BIT,
    U64,
    bit_width,
    checksum32,
    crc32,
    load_le,
    pack_bits,
    store_le,
    unpack_into_words,
    unpack_to,
)
from seqvault._unpack import MAX_ALIGNED_WIDTH, unpack_aligned

RECORD_MAGIC = 0xA7
RECORD_VERSION = 2          # what the encoder writes: checksums are XXH64's low 32 bits
RECORD_VERSION_CRC32 = 1    # still read: the same layout with CRC-32 checksums
ALIGN = 32                  # unpack_aligned starts at value indices that are multiples of this
HEADER_SIZE = 24
CHECKSUM_SIZE = 4
ENC_FOR = 0
ENC_DELTA = 1
FOR_DESC = 10
DELTA_DESC = 18

SM_CODE, SM_SIGNED, SM_ITEMSIZE = 0, 1, 2
D_KIND, D_WIDTH, D_PAYLOAD = 0, 1, 2
V_BASE, V_LAST = 0, 1

OK, E_SHORT, E_MAGIC, E_VERSION, E_HEADER_CRC, E_LENGTH, E_TRUNCATED, E_CRC = range(8)
E_COLUMNS, E_DESC, E_DTYPE, E_SIZE = range(8, 12)


@njit(cache=True, nogil=True)
def record_checksum(buf: np.ndarray, start: int, end: int, version: int) -> np.uint64:
    """The checksum a record of ``version`` stores for ``buf[start:end]``."""
    if version == RECORD_VERSION_CRC32:
        return U64(crc32(buf, start, end))
    return checksum32(buf, start, end)


@njit(cache=True, nogil=True)
def encode_kernel(mapped: np.ndarray, offsets: np.ndarray, user_ids: np.ndarray, codes: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Encode user i's events ``mapped[:, offsets[i]:offsets[i+1]]`` (uint64, order-preserving
    mapped, one row per field) as record i; returns (buffer, record start offsets, len n + 1)."""
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
                size += FOR_DESC
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
            bytes_for = FOR_DESC + (m * wf + 7) // 8
            if m > 1:
                wd = bit_width(dhi - dlo)
                bytes_delta = DELTA_DESC + ((m - 1) * wd + 7) // 8
            else:  # a single value has no deltas: FOR always
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
        store_le(out, p + 20, checksum32(out, p, p + 20), 4)
        q = p + HEADER_SIZE
        for f in range(nf):
            out[q] = np.uint8(kinds[i, f] | (codes[f] << 4))
            out[q + 1] = np.uint8(widths[i, f])
            store_le(out, q + 2, bases[i, f], 8)
            if kinds[i, f] == ENC_DELTA:
                store_le(out, q + 10, lasts[i, f], 8)
                q += DELTA_DESC
            else:
                q += FOR_DESC
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
        store_le(out, q, checksum32(out, p, q), 4)
    return out, starts


@njit(cache=True, nogil=True)
def check_header(buf: np.ndarray, pos: int, end: int) -> tuple[int, np.uint64, int, int, int]:
    """(status, user id, count, length, n columns) of the header at ``pos``; no payload checks."""
    if pos < 0 or pos + HEADER_SIZE > end:
        return E_SHORT, U64(0), 0, 0, 0
    if buf[pos] != RECORD_MAGIC:
        return E_MAGIC, U64(0), 0, 0, 0
    version = int(buf[pos + 1])
    if version != RECORD_VERSION and version != RECORD_VERSION_CRC32:
        return E_VERSION, U64(0), 0, 0, 0
    if load_le(buf, pos + 20, end, 4) != record_checksum(buf, pos, pos + 20, version):
        return E_HEADER_CRC, U64(0), 0, 0, 0
    # np.int64, not int(): int() of a uint64 stays uint64 in Numba and would poison arithmetic.
    ncols = np.int64(load_le(buf, pos + 2, end, 2))
    count = np.int64(load_le(buf, pos + 4, end, 4))
    user = load_le(buf, pos + 8, end, 8)
    length = np.int64(load_le(buf, pos + 16, end, 4))
    if ncols == 0 or length < HEADER_SIZE + CHECKSUM_SIZE + FOR_DESC * ncols:
        return E_LENGTH, user, count, length, ncols
    if pos + length > end:
        return E_TRUNCATED, user, count, length, ncols
    return OK, user, count, length, ncols


@njit(cache=True, nogil=True)
def check_body(buf: np.ndarray, pos: int, length: int, count: int, smeta: np.ndarray, desc: np.ndarray,
               vals: np.ndarray) -> int:
    """Walk the descriptors into ``desc``/``vals`` and check they account for every byte."""
    nf = smeta.shape[1]
    end = pos + length - CHECKSUM_SIZE
    q = pos + HEADER_SIZE
    for f in range(nf):
        if q + FOR_DESC > end:
            return E_SIZE
        kind = int(buf[q] & 0x0F)
        if int(buf[q] >> 4) != smeta[SM_CODE, f]:
            return E_DTYPE
        w = int(buf[q + 1])
        if kind > ENC_DELTA or w > 64 or (kind == ENC_DELTA and count == 0):
            return E_DESC
        desc[D_KIND, f] = kind
        desc[D_WIDTH, f] = w
        vals[V_BASE, f] = load_le(buf, q + 2, end, 8)
        if kind == ENC_DELTA:
            if q + DELTA_DESC > end:
                return E_SIZE
            vals[V_LAST, f] = load_le(buf, q + 10, end, 8)
            q += DELTA_DESC
        else:
            q += FOR_DESC
    for f in range(nf):
        m = count if desc[D_KIND, f] == ENC_FOR else count - 1
        desc[D_PAYLOAD, f] = q
        q += (m * desc[D_WIDTH, f] + 7) // 8
    if q != end:
        return E_SIZE
    return OK


@njit(cache=True, nogil=True, inline="always")
def _prefix_back(deltas: np.ndarray, n_out: int, last: np.uint64, flip: np.uint64, dst: np.ndarray) -> None:
    """Undo delta coding newest to oldest: ``deltas[k]`` (mapped) lies between output k and k + 1."""
    x = last
    dst[n_out - 1] = x ^ flip
    for k in range(n_out - 2, -1, -1):
        x -= deltas[k] ^ SIGN_BIT
        dst[k] = x ^ flip


@njit(cache=True, nogil=True, inline="always")
def _decode_column(words: np.ndarray, bit0: int, w: int, n_out: int, base: np.uint64, delta: bool,
                   last: np.uint64, flip: np.uint64, scratch: np.ndarray, dst: np.ndarray) -> None:
    if delta:
        unpack_to(words, bit0, w, n_out - 1, base, U64(0), scratch)
        _prefix_back(scratch, n_out, last, flip, dst)
    else:
        unpack_to(words, bit0, w, n_out, base, flip, dst)


@njit(cache=True, nogil=True, inline="always")
def _finish_column(vals: np.ndarray, n_out: int, delta: bool, last: np.uint64, flip: np.uint64,
                   dst: np.ndarray) -> None:
    """Unpacked (base added) uint64 values -> the typed column: undo the deltas, or map and narrow."""
    if delta:
        _prefix_back(vals, n_out, last, flip, dst)
    else:
        for j in range(n_out):
            dst[j] = vals[j] ^ flip


@njit(cache=True, nogil=True)
def _finish_typed(vals: np.ndarray, n_out: int, delta: bool, last: np.uint64, flip: np.uint64, out: np.ndarray,
                  p: int, isz: int) -> None:
    if isz == 1:
        _finish_column(vals, n_out, delta, last, flip, out[p:p + n_out])
    elif isz == 2:
        _finish_column(vals, n_out, delta, last, flip, out[p:p + 2 * n_out].view(np.uint16))
    elif isz == 4:
        _finish_column(vals, n_out, delta, last, flip, out[p:p + 4 * n_out].view(np.uint32))
    else:
        _finish_column(vals, n_out, delta, last, flip, out[p:p + 8 * n_out].view(np.uint64))


@njit(cache=True, nogil=True)
def _decode_typed(words: np.ndarray, bit0: int, w: int, n_out: int, base: np.uint64, delta: bool,
                  last: np.uint64, flip: np.uint64, scratch: np.ndarray, out: np.ndarray, p: int,
                  isz: int) -> None:
    # One branch per output width so every inner loop stores straight into the typed column.
    if isz == 1:
        _decode_column(words, bit0, w, n_out, base, delta, last, flip, scratch, out[p:p + n_out])
    elif isz == 2:
        _decode_column(words, bit0, w, n_out, base, delta, last, flip, scratch,
                       out[p:p + 2 * n_out].view(np.uint16))
    elif isz == 4:
        _decode_column(words, bit0, w, n_out, base, delta, last, flip, scratch,
                       out[p:p + 4 * n_out].view(np.uint32))
    else:
        _decode_column(words, bit0, w, n_out, base, delta, last, flip, scratch,
                       out[p:p + 8 * n_out].view(np.uint64))


@njit(cache=True, nogil=True)
def decode_columns(buf: np.ndarray, count: int, n_out: int, desc: np.ndarray, vals: np.ndarray,
                   smeta: np.ndarray, want: np.ndarray, out: np.ndarray, col_starts: np.ndarray, elem: int,
                   scratch: np.ndarray, words: np.ndarray) -> None:
    """Decode the newest ``n_out`` of ``count`` events of each wanted column of a checked record;
    field f's value j goes to ``out[col_starts[f] + (elem + j) * itemsize]``. ``words`` is uint64
    scratch of at least ``record length // 8 + 2`` entries, ``scratch`` of at least
    ``n_out + ALIGN`` entries."""
    first = count - n_out
    for f in range(smeta.shape[1]):
        if not want[f] or n_out == 0:
            continue
        w = desc[D_WIDTH, f]
        delta = desc[D_KIND, f] == ENC_DELTA
        # FOR value i is packed at index i; DELTA's delta between events i and i+1 at index i.
        # Either way the newest n_out events need packed indices from `first` on only.
        n_packed = n_out - 1 if delta else n_out
        flip = SIGN_BIT if smeta[SM_SIGNED, f] else U64(0)
        isz = smeta[SM_ITEMSIZE, f]
        p = col_starts[f] + elem * isz
        base = vals[V_BASE, f]
        if 0 < w <= MAX_ALIGNED_WIDTH and n_packed > 0:
            # Fast path: a width-specialised kernel from the 32-aligned value at or before `first`
            # (bit position a multiple of 32) into scratch, then one typed pass.
            start = first - first % ALIGN
            skip = first - start
            n_unpack = skip + n_packed
            a = desc[D_PAYLOAD, f] + (start * w >> 3)
            nbytes = 4 * (((n_unpack * w + 31) >> 5) + 1)  # one word past the last value's
            if a + nbytes <= len(buf):
                unpack_aligned(w, buf[a:a + nbytes].view(np.uint32), n_unpack, base, scratch)
            else:  # too close to the end of the buffer: copy into zero-padded scratch words
                unpack_into_words(buf, a, (n_unpack * w + 7) // 8, words)
                unpack_aligned(w, words.view(np.uint32), n_unpack, base, scratch)
            _finish_typed(scratch[skip:skip + n_packed], n_out, delta, vals[V_LAST, f], flip, out, p, isz)
            continue
        first_bit = first * w
        a = desc[D_PAYLOAD, f] + (first_bit >> 3)
        bit0 = first_bit & 7
        nw = ((bit0 + n_packed * w) >> 6) + 2  # unpack_to may read one word past the last value's
        if a + 8 * nw <= len(buf):
            # Read the packed words in place (an unaligned view); bytes past the column only
            # ever land in bits that the width mask drops.
            _decode_typed(buf[a:a + 8 * nw].view(np.uint64), bit0, w, n_out, base, delta,
                          vals[V_LAST, f], flip, scratch, out, p, isz)
        else:  # too close to the end of the buffer: copy into zero-padded scratch words
            unpack_into_words(buf, a, (bit0 + n_packed * w + 7) // 8, words)
            _decode_typed(words, bit0, w, n_out, base, delta, vals[V_LAST, f], flip, scratch,
                          out, p, isz)


@njit(cache=True, nogil=True)
def decode_one(buf: np.ndarray, length: int, count: int, ncols: int, smeta: np.ndarray, want: np.ndarray,
               n_out: int, version: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Check both checksums of the record at ``buf[0:]`` (its header fields the caller has read and
    bounded: ``length <= len(buf)``), then decode it."""
    nf = smeta.shape[1]
    desc = np.empty((3, nf), np.int64)
    vals = np.zeros((2, nf), np.uint64)
    col_starts = np.full(nf, -1, np.int64)
    if load_le(buf, 20, length, 4) != record_checksum(buf, 0, 20, version):
        return E_HEADER_CRC, np.empty(0, np.uint8), col_starts
    if load_le(buf, length - CHECKSUM_SIZE, length, 4) != record_checksum(buf, 0, length - CHECKSUM_SIZE, version):
        return E_CRC, np.empty(0, np.uint8), col_starts
    if ncols != nf:
        return E_COLUMNS, np.empty(0, np.uint8), col_starts
    status = check_body(buf, 0, length, count, smeta, desc, vals)
    if status != OK:
        return status, np.empty(0, np.uint8), col_starts
    total = 0
    for f in range(nf):
        if want[f]:
            col_starts[f] = total
            total += (n_out * smeta[SM_ITEMSIZE, f] + 7) // 8 * 8  # keep every column 8-byte aligned
    out = np.empty(total, np.uint8)
    scratch = np.empty(n_out + ALIGN, np.uint64)
    words = np.empty(length // 8 + 2, np.uint64)
    decode_columns(buf, count, n_out, desc, vals, smeta, want, out, col_starts, 0, scratch, words)
    return OK, out, col_starts


@njit(cache=True, nogil=True)
def decode_many(buf: np.ndarray, rec_offsets: np.ndarray, smeta: np.ndarray, want: np.ndarray, last_n: int
                ) -> tuple[int, int, np.uint64, np.ndarray, np.ndarray, np.ndarray]:
    """Check every record (header, checksum, structure), then decode them all into CSR columns.

    Returns (status, index of the first bad record, its user id, event offsets, out, col_starts).
    """
    n = len(rec_offsets)
    nf = smeta.shape[1]
    end = len(buf)
    counts = np.zeros(n, np.int64)
    desc = np.zeros((n, 3, nf), np.int64)
    vals = np.zeros((n, 2, nf), np.uint64)
    ev_offsets = np.zeros(n + 1, np.int64)
    col_starts = np.full(nf, -1, np.int64)
    max_len = 0
    for i in range(n):
        pos = rec_offsets[i]
        status, user, count, length, ncols = check_header(buf, pos, end)
        if status == OK and ncols != nf:
            status = E_COLUMNS
        if status == OK and load_le(buf, pos + length - CHECKSUM_SIZE, end, 4) != record_checksum(
                buf, pos, pos + length - CHECKSUM_SIZE, int(buf[pos + 1])):
            status = E_CRC
        if status == OK:
            status = check_body(buf, pos, length, count, smeta, desc[i], vals[i])
        if status != OK:
            return status, i, user, ev_offsets, np.empty(0, np.uint8), col_starts
        counts[i] = count
        max_len = max(max_len, length)
        n_out = count if last_n < 0 else min(count, last_n)
        ev_offsets[i + 1] = ev_offsets[i] + n_out
    total_events = ev_offsets[n]
    total = 0
    for f in range(nf):
        if want[f]:
            col_starts[f] = total
            total += (total_events * smeta[SM_ITEMSIZE, f] + 7) // 8 * 8
    out = np.empty(total, np.uint8)
    max_out = 1
    for i in range(n):
        max_out = max(max_out, ev_offsets[i + 1] - ev_offsets[i])
    scratch = np.empty(max_out + ALIGN, np.uint64)
    words = np.empty(max_len // 8 + 2, np.uint64)
    for i in range(n):
        decode_columns(buf, counts[i], ev_offsets[i + 1] - ev_offsets[i], desc[i], vals[i], smeta, want,
                       out, col_starts, ev_offsets[i], scratch, words)
    return OK, -1, U64(0), ev_offsets, out, col_starts
