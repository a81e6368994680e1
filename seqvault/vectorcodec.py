"""The fixed-size entry codec of :mod:`seqvault.vectors`: one cached user representation per entry.

Plain NumPy, vectorised over entries (no Numba, no per-row Python loop), so the ranker side can
decode what a storage node sent without pulling in the store. Entry layout, little-endian::

    offset    size        field
    0         8           user id (u64)
    8         8           version (u64): a newer representation has a greater one
    16        4           scale (f32): int8's symmetric per-vector scale max|x| / 127 (0 for a
                          zero vector); 1.0 for fp16 and bf16
    20        P           payload: dim x fp16, dim x bf16 (P = 2 dim) or dim x int8 (P = dim)
    20 + P    4           checksum of bytes 0 .. 19 + P (u32)
    24 + P    0 .. 7      zero padding to a multiple of 8 bytes

The checksum is the one SeqVault's record format 2 stores (:func:`seqvault._bitpack.checksum32`,
the low 32 bits of XXH64, seed 0), computed here for all entries at once; the tests check it is
bit-identical. An all-zero entry is never valid (its checksum would have to be 0 and is not),
which is how the table tells a never-written slot from a written one.

bf16 is the top half of a float32 rounded to nearest, ties to even, done on the integer bits
(NaN stays NaN: it is quieted instead of rounded, which could carry it into infinity).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from seqvault.errors import CorruptionError, SeqVaultError

ChecksumFn = Callable[[np.ndarray, int], np.ndarray]  # (entries (n, width) uint8, length) -> uint32[n]

VECTOR_DTYPES: tuple[str, ...] = ("fp16", "bf16", "int8")
HEADER_BYTES = 20
CHECKSUM_BYTES = 4
_U64 = np.uint64

# XXH64 primes (as in seqvault._bitpack). Arithmetic on uint64 arrays wraps mod 2**64, as XXH64 needs.
_P1 = _U64(11400714785074694791)
_P2 = _U64(14029467366897019727)
_P3 = _U64(1609587929392839161)
_P4 = _U64(9650029242287828579)
_P5 = _U64(2870177450012600261)
_S31, _S33 = _U64(31), _U64(33)
_SEEDS = np.array([(int(_P1) + int(_P2)) % 2**64, int(_P2), 0, 2**64 - int(_P1)], np.uint64)


def _check_dtype(dtype: str) -> None:
    if dtype not in VECTOR_DTYPES:
        raise SeqVaultError(f"unknown vector dtype {dtype!r}; choose one of {', '.join(VECTOR_DTYPES)}")


def payload_bytes(dim: int, dtype: str) -> int:
    """Bytes of one vector's payload (no header, checksum or padding)."""
    _check_dtype(dtype)
    if dim < 1:
        raise SeqVaultError(f"vector dim must be at least 1, got {dim}")
    return dim * (1 if dtype == "int8" else 2)


def entry_bytes(dim: int, dtype: str) -> int:
    """Bytes of one encoded entry: header + payload + checksum, padded to a multiple of 8."""
    raw = HEADER_BYTES + payload_bytes(dim, dtype) + CHECKSUM_BYTES
    return (raw + 7) // 8 * 8


# -- checksum -------------------------------------------------------------------------------------
def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U64(r)) | (x >> _U64(64 - r))


def _round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    return _rotl(acc + lane * _P2, 31) * _P1


def _u64_column(rows: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bytes ``start .. start + width`` of every row as a little-endian unsigned integer."""
    col = np.zeros((len(rows), 8), np.uint8)
    col[:, :width] = rows[:, start:start + width]
    return col.view("<u8")[:, 0]


def row_checksums(entries: np.ndarray, length: int) -> np.ndarray:
    """checksum32 (low 32 bits of XXH64, seed 0) of the first ``length`` bytes of every row of a
    (n, width) uint8 array, as uint32.

    The loop runs over the 32-byte stripes (length / 32 steps), each step a few NumPy operations
    over all n rows: ~2 us per 1 KiB entry in big batches, but ~250 us for a batch of one, which
    is why :mod:`seqvault.vectors` passes its Numba kernel (same function) on the store's side.
    """
    rows = entries[:, :length]
    n = len(rows)
    stripes = length // 32
    if stripes:
        # (stripes, n, 4) lanes, one contiguous block per step.
        lanes = np.ascontiguousarray(rows[:, :32 * stripes]).view("<u8").reshape(n, stripes, 4)
        lanes = np.ascontiguousarray(lanes.transpose(1, 0, 2))
        v = np.repeat(_SEEDS[None, :], n, axis=0)
        tmp = np.empty_like(v)
        for s in range(stripes):  # v = rotl(v + lane * P2, 31) * P1, in place (this loop is the cost)
            np.multiply(lanes[s], _P2, out=tmp)
            np.add(v, tmp, out=v)
            np.left_shift(v, _S31, out=tmp)
            np.right_shift(v, _S33, out=v)
            np.bitwise_or(v, tmp, out=v)
            np.multiply(v, _P1, out=v)
        h = _rotl(v[:, 0], 1) + _rotl(v[:, 1], 7) + _rotl(v[:, 2], 12) + _rotl(v[:, 3], 18)
        for k in range(4):
            h = (h ^ _round(np.zeros(n, np.uint64), v[:, k])) * _P1 + _P4
    else:
        h = np.full(n, _P5, np.uint64)
    h = h + _U64(length)
    p = 32 * stripes
    while p + 8 <= length:
        h = _rotl(h ^ _round(np.zeros(n, np.uint64), _u64_column(rows, p, 8)), 27) * _P1 + _P4
        p += 8
    if p + 4 <= length:
        h = _rotl(h ^ (_u64_column(rows, p, 4) * _P1), 23) * _P2 + _P3
        p += 4
    while p < length:
        h = _rotl(h ^ (rows[:, p].astype(np.uint64) * _P5), 11) * _P1
        p += 1
    h = (h ^ (h >> _U64(33))) * _P2
    h = (h ^ (h >> _U64(29))) * _P3
    h = h ^ (h >> _U64(32))
    return (h & _U64(0xFFFFFFFF)).astype(np.uint32)


# -- quantisation ---------------------------------------------------------------------------------
def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) of float32 values: round to nearest even; NaN kept (quieted)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # Adding 0x7FFF plus the bit that becomes the lowest kept one rounds half to even; a carry
    # out of the mantissa bumps the exponent, which is right (up to infinity on overflow).
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    quiet = (bits >> np.uint32(16)) | np.uint32(0x0040)
    return np.where(nan, quiet, rounded).astype(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _quantise(vectors: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale f32[n], payload bytes uint8[n, P])."""
    n = len(vectors)
    if dtype == "fp16":
        with np.errstate(over="ignore"):  # beyond fp16's +-65504 is +-inf, as a cast to float16 gives
            return np.ones(n, np.float32), vectors.astype("<f2").view(np.uint8)
    if dtype == "bf16":
        return np.ones(n, np.float32), float32_to_bf16_bits(vectors).astype("<u2").view(np.uint8)
    if not np.isfinite(vectors).all():
        row = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise SeqVaultError(f"vector at row {row} holds NaN or infinity, which int8 cannot represent")
    scale = (np.abs(vectors).max(axis=1, initial=0.0) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1)).astype(np.float64)
    q = np.clip(np.rint(vectors.astype(np.float64) / safe[:, None]), -127, 127)
    return scale, q.astype(np.int8).view(np.uint8)


# -- entries --------------------------------------------------------------------------------------
def encode_entries(user_ids: np.ndarray, versions: np.ndarray, vectors: np.ndarray, dtype: str, *,
                   checksum: ChecksumFn = row_checksums) -> np.ndarray:
    """Encode n vectors (float32, shape (n, dim)) as a (n, entry_bytes) uint8 array of entries.

    ``checksum`` computes :func:`row_checksums`; the store passes a faster implementation of it.
    """
    vecs = np.asarray(vectors, dtype=np.float32)
    if vecs.ndim != 2:
        raise SeqVaultError(f"vectors must be a 2-d (n, dim) array, got shape {vecs.shape}")
    n, dim = vecs.shape
    uids = np.asarray(user_ids, dtype=np.uint64).reshape(-1)
    vers = np.asarray(versions, dtype=np.uint64).reshape(-1)
    if len(uids) != n or len(vers) != n:
        raise SeqVaultError(f"{len(uids)} user ids and {len(vers)} versions for {n} vectors")
    width, p = entry_bytes(dim, dtype), payload_bytes(dim, dtype)
    scale, payload = _quantise(vecs, dtype)
    out = np.zeros((n, width), np.uint8)
    out[:, 0:8] = uids.astype("<u8").view(np.uint8).reshape(n, 8)
    out[:, 8:16] = vers.astype("<u8").view(np.uint8).reshape(n, 8)
    out[:, 16:20] = scale.astype("<f4").view(np.uint8).reshape(n, 4)
    out[:, HEADER_BYTES:HEADER_BYTES + p] = payload.reshape(n, p)
    crc = checksum(out, HEADER_BYTES + p)
    out[:, HEADER_BYTES + p:HEADER_BYTES + p + 4] = crc.astype("<u4").view(np.uint8).reshape(n, 4)
    return out


def as_entries(entries: object, dim: int, dtype: str) -> np.ndarray:
    """Any bytes-like buffer (or uint8 array) of k whole entries as a (k, entry_bytes) uint8 array."""
    width = entry_bytes(dim, dtype)
    if isinstance(entries, np.ndarray):
        flat = np.ascontiguousarray(entries).reshape(-1).view(np.uint8)
    else:
        flat = np.frombuffer(memoryview(entries).cast("B"), dtype=np.uint8)  # type: ignore[arg-type]
    if len(flat) % width:
        raise CorruptionError(f"{len(flat)} bytes are not a whole number of {width}-byte entries "
                              f"(dim={dim}, {dtype}); the buffer is truncated or of another table")
    return flat.reshape(-1, width)


def entry_headers(entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, versions) of (k, entry_bytes) entries, without checking them."""
    return (np.ascontiguousarray(entries[:, 0:8]).view("<u8")[:, 0].astype(np.uint64),
            np.ascontiguousarray(entries[:, 8:16]).view("<u8")[:, 0].astype(np.uint64))


def checksums_ok(entries: np.ndarray, dim: int, dtype: str, *, checksum: ChecksumFn = row_checksums
                 ) -> np.ndarray:
    """Per entry: does its stored checksum match its bytes?"""
    end = HEADER_BYTES + payload_bytes(dim, dtype)
    stored = np.ascontiguousarray(entries[:, end:end + 4]).view("<u4")[:, 0]
    return checksum(entries, end) == stored


def decode_entries(entries: object, dim: int, dtype: str, *, verify: bool = True,
                   checksum: ChecksumFn = row_checksums) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids u64[k], versions u64[k], vectors f32[k, dim]) of k encoded entries.

    ``entries`` may be any bytes-like object holding k * entry_bytes bytes (what came over the
    wire) or a (k, entry_bytes) uint8 array. Every checksum is checked first; a mismatch raises
    CorruptionError naming the (claimed) user and nothing is decoded. ``verify=False`` skips that
    for entries the caller has just checked itself; ``checksum`` may be the compiled
    :func:`seqvault.vectors.entry_checksums` (the NumPy default costs ~10 ms on one 32 KiB entry).
    """
    rows = as_entries(entries, dim, dtype)
    k, p = len(rows), payload_bytes(dim, dtype)
    uids, versions = entry_headers(rows)
    if verify and k:
        ok = checksums_ok(rows, dim, dtype, checksum=checksum)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise CorruptionError(f"vector entry {bad} of {k} failed its checksum",
                                  offset=bad * rows.shape[1], user_id=int(uids[bad]))
    payload = np.ascontiguousarray(rows[:, HEADER_BYTES:HEADER_BYTES + p])
    if dtype == "fp16":
        vectors = payload.view("<f2").astype(np.float32)
    elif dtype == "bf16":
        vectors = bf16_bits_to_float32(payload.view("<u2"))
    else:
        scale = np.ascontiguousarray(rows[:, 16:20]).view("<f4")[:, 0].astype(np.float32)
        vectors = payload.view(np.int8).astype(np.float32) * scale[:, None]
    return uids, versions, vectors.reshape(k, dim)


def encode_log_record(slots: np.ndarray, entries: np.ndarray) -> list[bytes | memoryview]:
    """The vector table's log record payload: u64 n, i64 slot[n], then the n entries."""
    return [struct.pack("<Q", len(slots)), memoryview(np.ascontiguousarray(slots, "<i8")).cast("B"),
            memoryview(np.ascontiguousarray(entries, np.uint8)).cast("B")]


def decode_log_record(payload: memoryview, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots int64[n], entries uint8[n, width]) of a log record payload."""
    (n,) = struct.unpack_from("<Q", payload, 0)
    if len(payload) != 8 + n * (8 + width):
        raise CorruptionError(f"a vector log record of {len(payload)} bytes does not hold {n} entries of {width} "
                              "bytes; the log belongs to a table of another dim or dtype")
    slots = np.frombuffer(payload, "<i8", n, 8).astype(np.int64)
    return slots, np.frombuffer(payload, np.uint8, n * width, 8 + 8 * n).reshape(n, width).copy()


__all__ = [
    "CHECKSUM_BYTES", "HEADER_BYTES", "VECTOR_DTYPES", "ChecksumFn", "as_entries", "bf16_bits_to_float32",
    "checksums_ok", "decode_entries", "decode_log_record", "encode_entries", "encode_log_record", "entry_bytes",
    "entry_headers", "float32_to_bf16_bits", "payload_bytes", "row_checksums",
]
