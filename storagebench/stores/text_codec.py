"""The RocksDB LastN value format: events as decimal text, schema-unaware.

One value holds a user's events oldest first: fields separated by ``,`` in schema order, events
separated by ``;`` (``"17,3,1700000000;18,3,1700000009"``). This is how the production LastN store
kept sequences (every field as a string), and what makes it large and costly to parse. The kernels
are written for speed so the baseline is not handicapped by a slow Python parser.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numba import njit

from seqvault.schema import Schema

_COMMA = 44
_SEMI = 59
_MINUS = 45
_ZERO = 48


@njit(cache=True, nogil=True)
def _digits(v: np.uint64) -> int:
    n = 1
    while v >= 10:
        v //= np.uint64(10)
        n += 1
    return n


@njit(cache=True, nogil=True)
def encode_text_kernel(values: np.ndarray, unsigned: np.ndarray) -> np.ndarray:
    """int64[n_events, n_fields] (unsigned fields bit-cast) -> uint8 text."""
    n, m = values.shape
    size = 0
    for i in range(n):
        for j in range(m):
            v = values[i, j]
            if unsigned[j] or v >= 0:
                size += _digits(np.uint64(v))
            else:
                size += 1 + _digits(np.uint64(-(v + 1)) + np.uint64(1))
    size += max(n * m - 1, 0)  # separators
    out = np.empty(size, dtype=np.uint8)
    pos = 0
    for i in range(n):
        for j in range(m):
            if i > 0 and j == 0:
                out[pos] = _SEMI
                pos += 1
            elif j > 0:
                out[pos] = _COMMA
                pos += 1
            v = values[i, j]
            if unsigned[j] or v >= 0:
                u = np.uint64(v)
            else:
                out[pos] = _MINUS
                pos += 1
                u = np.uint64(-(v + 1)) + np.uint64(1)
            nd = _digits(u)
            for k in range(nd - 1, -1, -1):
                out[pos + k] = _ZERO + np.uint8(u % np.uint64(10))
                u //= np.uint64(10)
            pos += nd
    return out


@njit(cache=True, nogil=True)
def decode_text_kernel(buf: np.ndarray, n_fields: int) -> np.ndarray:
    """uint8 text -> int64[n_events, n_fields] (values above int64 range come back bit-cast).

    Returns shape (-1, n_fields) filled with a sentinel row count of -1 on malformed input: the
    caller raises, because a kernel cannot carry a useful message.
    """
    if len(buf) == 0:
        return np.empty((0, n_fields), dtype=np.int64)
    n_events = 1
    for b in buf:
        if b == _SEMI:
            n_events += 1
    out = np.empty((n_events, n_fields), dtype=np.int64)
    i = 0
    j = 0
    acc = np.uint64(0)
    neg = False
    digits = 0
    for b in buf:
        if b == _COMMA or b == _SEMI:
            if digits == 0 or j >= n_fields:
                return np.empty((0, 0), dtype=np.int64)
            out[i, j] = -np.int64(acc) if neg else np.int64(acc)
            if b == _COMMA:
                j += 1
            else:
                if j != n_fields - 1:
                    return np.empty((0, 0), dtype=np.int64)
                i += 1
                j = 0
            acc = np.uint64(0)
            neg = False
            digits = 0
        elif b == _MINUS and digits == 0 and not neg:
            neg = True
        elif _ZERO <= b <= _ZERO + 9:
            acc = acc * np.uint64(10) + np.uint64(b - _ZERO)
            digits += 1
        else:
            return np.empty((0, 0), dtype=np.int64)
    if digits == 0 or j != n_fields - 1:
        return np.empty((0, 0), dtype=np.int64)
    out[i, j] = -np.int64(acc) if neg else np.int64(acc)
    return out


class TextCodecError(ValueError):
    """A stored LastN value is not well-formed text for this schema."""


def _unsigned_mask(schema: Schema) -> np.ndarray:
    return np.array([f.np_dtype.kind == "u" for f in schema.fields], dtype=np.bool_)


def encode_text(columns: Mapping[str, np.ndarray], schema: Schema) -> bytes:
    """Columns of one user (oldest first) -> the LastN text value."""
    n = len(columns[schema.names[0]])
    values = np.empty((n, len(schema.fields)), dtype=np.int64)
    for j, name in enumerate(schema.names):
        col = np.asarray(columns[name])
        values[:, j] = col.view(np.int64) if col.dtype == np.uint64 else col
    return encode_text_kernel(values, _unsigned_mask(schema)).tobytes()


def decode_text(value: bytes, schema: Schema) -> dict[str, np.ndarray]:
    """A LastN text value -> columns at the schema's dtypes."""
    m = len(schema.fields)
    values = decode_text_kernel(np.frombuffer(value, dtype=np.uint8), m)
    if values.shape[1] != m:
        raise TextCodecError(
            f"LastN value is not {m} comma-separated integers per ';'-separated event "
            f"(first bytes: {value[:60]!r}); the store is corrupt or was written with another schema"
        )
    out: dict[str, np.ndarray] = {}
    for j, f in enumerate(schema.fields):
        col = values[:, j]
        out[f.name] = col.view(np.uint64).copy() if f.np_dtype == np.uint64 else col.astype(f.np_dtype)
    return out


# -- many values at once: what an append's read-modify-write over a whole batch uses ------------

@njit(cache=True, nogil=True)
def encode_text_many_kernel(values: np.ndarray, offsets: np.ndarray, unsigned: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """int64[n_events, n_fields] in CSR (user i owns rows offsets[i]:offsets[i+1]) -> one buffer
    with every user's text value back to back, and their start offsets (n + 1)."""
    n = len(offsets) - 1
    parts = [np.empty(0, dtype=np.uint8) for _ in range(n)]
    total = 0
    for i in range(n):
        parts[i] = encode_text_kernel(values[offsets[i]:offsets[i + 1]], unsigned)
        total += len(parts[i])
    out = np.empty(total, dtype=np.uint8)
    starts = np.empty(n + 1, dtype=np.int64)
    pos = 0
    for i in range(n):
        starts[i] = pos
        out[pos:pos + len(parts[i])] = parts[i]
        pos += len(parts[i])
    starts[n] = pos
    return out, starts


@njit(cache=True, nogil=True)
def decode_text_many_kernel(buf: np.ndarray, starts: np.ndarray, n_fields: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Values back to back in ``buf`` (value i at starts[i]:starts[i+1]) -> (CSR event offsets,
    int64[n_events, n_fields], index of the first malformed value or -1)."""
    n = len(starts) - 1
    parts = [np.empty((0, n_fields), dtype=np.int64) for _ in range(n)]
    offsets = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        m = decode_text_kernel(buf[starts[i]:starts[i + 1]], n_fields)
        if m.shape[1] != n_fields:
            return offsets, np.empty((0, n_fields), dtype=np.int64), i
        parts[i] = m
        offsets[i + 1] = offsets[i] + m.shape[0]
    out = np.empty((offsets[n], n_fields), dtype=np.int64)
    for i in range(n):
        out[offsets[i]:offsets[i + 1]] = parts[i]
    return offsets, out, -1


def encode_text_many(offsets: np.ndarray, columns: Mapping[str, np.ndarray], schema: Schema
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Many users' columns in CSR -> (buffer, value start offsets); value i is the LastN text of user i."""
    n = int(offsets[-1]) if len(offsets) else 0
    values = np.empty((n, len(schema.fields)), dtype=np.int64)
    for j, name in enumerate(schema.names):
        col = np.asarray(columns[name])
        values[:, j] = col.view(np.int64) if col.dtype == np.uint64 else col
    return encode_text_many_kernel(values, np.ascontiguousarray(offsets, dtype=np.int64), _unsigned_mask(schema))


def decode_text_many(values: list[bytes | None], schema: Schema) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """LastN text values (None: no value) -> CSR offsets and columns at the schema's dtypes."""
    sizes = np.array([0 if v is None else len(v) for v in values], dtype=np.int64)
    starts = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    buf = np.frombuffer(b"".join(v for v in values if v is not None), dtype=np.uint8)
    offsets, matrix, bad = decode_text_many_kernel(buf, starts, len(schema.fields))
    if bad >= 0:
        raise TextCodecError(f"LastN value {bad} of the batch is not {len(schema.fields)} comma-separated integers "
                             f"per ';'-separated event; the store is corrupt or was written with another schema")
    out: dict[str, np.ndarray] = {}
    for j, f in enumerate(schema.fields):
        col = matrix[:, j]
        out[f.name] = col.view(np.uint64).copy() if f.np_dtype == np.uint64 else col.astype(f.np_dtype)
    return offsets, out
