"""The storage node's wire protocol: length-prefixed binary frames carrying raw NumPy buffers.

No pickle anywhere: a frame is a fixed 16-byte header and a payload whose layout the op code
fixes, so a node can sit on a network and a hostile or broken peer can, at worst, get an error
reply or a closed connection. Every integer is little-endian.

Header (``HEADER``, 16 bytes)::

    u8  version      PROTOCOL_VERSION (1); any other value closes the connection
    u8  op           request op code (below); a reply carries ``op | REPLY``
    u16 flags        request: FLAG_FULL on READ; reply: STATUS_OK (0) or STATUS_ERROR (1)
    u64 req_id       chosen by the client, echoed in the reply
    u32 length       payload bytes that follow; a request over ``max_payload`` closes the connection

Request payloads (``n`` users, schema fields in schema order, each at its declared dtype)::

    APPEND, BULK_LOAD   u32 n, u64[n] user ids, then per field dtype[n]      (a batch of events)
    READ, GET           i32 last_n (-1: the store's N), u32 n, u64[n] user ids
    FETCH               i32 last_n, u8 format, u8 codec, u64 user id          (storagebench.wire)
    FETCH_CACHED        as FETCH (last_n may be 0: the cached vector alone)
    VECTOR_PUT          u32 n, u32 dim, u64[n] user ids, u64[n] versions, f32[n*dim] vectors
    WIRE_DICT           u32 zstd level, then the dictionary bytes (may be empty)
    CONTROL             UTF-8 JSON {"op": name}: finish_load, flush, maintain, compact, disk_bytes,
                        stats, config, vector_stats; {"op": "open_vectors", "dim": D, "dtype": T}
                        (JSON replies only; no arrays travel this way)

Reply payloads: every reply starts with ``u64 t_start_ns, u64 t_end_ns``, the node's
``time.monotonic_ns()`` around the store call (a clock all processes of one Linux host share).
An error reply follows them with a UTF-8 message. Ok replies follow them with::

    READ                u64 events, u64 bytes; with FLAG_FULL then a CSR block
    GET                 a CSR block: u32 n, i64[n+1] offsets, per field dtype[offsets[n]]
    FETCH               u64 events, u64 encode_ns, then the wire payload bytes
    FETCH_CACHED        u64 events, u64 encode_ns, u32 k, the user's k-byte vector entry
                        (seqvault.vectors format; k = 0: none stored), then the wire payload bytes
    VECTOR_PUT          u64 entries applied (an entry older than the stored one is not)
    CONTROL, HELLO      UTF-8 JSON
    others              nothing

HELLO (op 0) is the node's first frame on a new connection: its store configuration as JSON, or
an error reply if the store could not be opened.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from seqvault.schema import Schema

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBHQI")
TIMES = struct.Struct("<QQ")
READ_REPLY = struct.Struct("<BBHQIQQQQ")  # header, times and counts of a READ reply in one pack
HELLO, APPEND, BULK_LOAD, READ, GET, FETCH, WIRE_DICT, CONTROL, FETCH_CACHED, VECTOR_PUT = range(10)
OP_NAMES = {HELLO: "hello", APPEND: "append", BULK_LOAD: "bulk_load", READ: "read", GET: "get",
            FETCH: "fetch", WIRE_DICT: "wire_dict", CONTROL: "control", FETCH_CACHED: "fetch_cached",
            VECTOR_PUT: "vector_put"}
REPLY = 0x80
FLAG_FULL = 1
STATUS_OK, STATUS_ERROR = 0, 1
CONTROL_OPS = ("finish_load", "flush", "maintain", "compact", "disk_bytes", "stats", "config", "vector_stats",
               "open_vectors")
MAX_VECTOR_DIM = 1 << 20
DEFAULT_MAX_PAYLOAD = 64 << 20      # a request larger than this closes the connection
MAX_USERS_PER_REQUEST = 1 << 20
MAX_LAST_N = 1 << 24

_U32 = struct.Struct("<I")
_READ = struct.Struct("<iI")
_FETCH = struct.Struct("<iBBQ")
_QQ = struct.Struct("<QQ")


class ProtocolError(ValueError):
    """A frame that breaks the format; the message says which rule."""


def frame(op: int, req_id: int, payload: bytes | bytearray | memoryview = b"", flags: int = 0) -> bytes:
    """One frame: header + payload."""
    return HEADER.pack(PROTOCOL_VERSION, op, flags, req_id, len(payload)) + bytes(payload)


def parse_header(buf: bytes | bytearray | memoryview, max_payload: int, pos: int = 0) -> tuple[int, int, int, int]:
    """(op, flags, req_id, payload length) of the header at ``buf[pos:]``."""
    version, op, flags, req_id, length = HEADER.unpack_from(buf, pos)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version} (this node speaks {PROTOCOL_VERSION})")
    if length > max_payload:
        raise ProtocolError(f"payload of {length} bytes exceeds the limit of {max_payload}")
    return op, flags, req_id, length


# -- request payloads ------------------------------------------------------------------------

def encode_batch(schema: Schema, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> bytes:
    """An APPEND / BULK_LOAD payload."""
    uids = np.ascontiguousarray(user_ids, dtype=np.uint64)
    parts = [_U32.pack(len(uids)), uids.tobytes()]
    for f in schema.fields:
        col = np.ascontiguousarray(columns[f.name], dtype=f.np_dtype)
        if len(col) != len(uids):
            raise ValueError(f"column {f.name!r} has {len(col)} values for {len(uids)} user ids")
        parts.append(col.tobytes())
    return b"".join(parts)


def decode_batch(schema: Schema, payload: bytes | bytearray | memoryview) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The inverse of :func:`encode_batch`; the arrays own a fresh copy of the bytes."""
    if len(payload) < 4:
        raise ProtocolError("a batch payload needs at least 4 bytes (its user count)")
    (n,) = _U32.unpack_from(payload, 0)
    expected = 4 + n * (8 + schema.row_bytes)
    if n > MAX_USERS_PER_REQUEST or len(payload) != expected:
        raise ProtocolError(f"a batch of {n} events needs {expected} payload bytes, got {len(payload)}")
    data = bytearray(payload[4:])  # writable copy: the store may keep these arrays
    uids = np.frombuffer(data, dtype=np.uint64, count=n, offset=0)
    cols, pos = {}, 8 * n
    for f in schema.fields:
        cols[f.name] = np.frombuffer(data, dtype=f.np_dtype, count=n, offset=pos)
        pos += n * f.np_dtype.itemsize
    return uids, cols


def encode_read(user_ids: np.ndarray, last_n: int | None) -> bytes:
    uids = np.ascontiguousarray(user_ids, dtype=np.uint64)
    return _READ.pack(-1 if last_n is None else int(last_n), len(uids)) + uids.tobytes()


def decode_read(payload: bytes | bytearray | memoryview) -> tuple[np.ndarray, int | None]:
    if len(payload) < _READ.size:
        raise ProtocolError(f"a read payload needs at least {_READ.size} bytes, got {len(payload)}")
    last_n, n = _READ.unpack_from(payload, 0)
    if len(payload) != _READ.size + 8 * n or n > MAX_USERS_PER_REQUEST:
        raise ProtocolError(f"a read of {n} users needs {_READ.size + 8 * n} payload bytes, got {len(payload)}")
    if last_n != -1 and not 1 <= last_n <= MAX_LAST_N:
        raise ProtocolError(f"last_n must be -1 (the store's N) or in 1..{MAX_LAST_N}, got {last_n}")
    # No copy: the node hands each request its own buffer.
    uids = np.frombuffer(payload, dtype=np.uint64, count=n, offset=_READ.size)
    return uids, (None if last_n == -1 else last_n)


def encode_fetch(user_id: int, last_n: int, fmt: int, codec: int) -> bytes:
    return _FETCH.pack(int(last_n), fmt, codec, int(user_id))


def decode_fetch(payload: bytes | bytearray | memoryview, *, cached: bool = False) -> tuple[int, int, int, int]:
    """(user id, last_n, format, codec) of a FETCH (last_n >= 1) or FETCH_CACHED (last_n >= 0) payload."""
    if len(payload) != _FETCH.size:
        raise ProtocolError(f"a fetch payload is {_FETCH.size} bytes, got {len(payload)}")
    last_n, fmt, codec, uid = _FETCH.unpack_from(payload, 0)
    low = 0 if cached else 1
    if not low <= last_n <= MAX_LAST_N:
        raise ProtocolError(f"fetch last_n must be in {low}..{MAX_LAST_N}, got {last_n}")
    return uid, last_n, fmt, codec


def encode_vector_put(user_ids: np.ndarray, versions: np.ndarray, vectors: np.ndarray) -> bytes:
    uids = np.ascontiguousarray(user_ids, dtype=np.uint64).reshape(-1)
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    if vecs.ndim != 2 or len(vecs) != len(uids) or len(versions) != len(uids):
        raise ProtocolError(f"a vector put needs one version and one row per user: {len(uids)} users, "
                            f"{len(versions)} versions, vectors of shape {vecs.shape}")
    return b"".join([_U32.pack(len(uids)) + _U32.pack(vecs.shape[1]), uids.tobytes(),
                     np.ascontiguousarray(versions, dtype=np.uint64).tobytes(), vecs.tobytes()])


def decode_vector_put(payload: bytes | bytearray | memoryview) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, versions, vectors [n, dim] float32) of a VECTOR_PUT payload, refusing a bad size."""
    if len(payload) < 8:
        raise ProtocolError("a vector put needs u32 n and u32 dim")
    (n,), (dim,) = _U32.unpack_from(payload, 0), _U32.unpack_from(payload, 4)
    if n > MAX_USERS_PER_REQUEST or not 1 <= dim <= MAX_VECTOR_DIM:
        raise ProtocolError(f"a vector put of {n} users (<= {MAX_USERS_PER_REQUEST}) at dim {dim} "
                            f"(1..{MAX_VECTOR_DIM}) is out of range")
    expected = 8 + n * (16 + 4 * dim)
    if len(payload) != expected:
        raise ProtocolError(f"a vector put of {n} users at dim {dim} is {expected} bytes, got {len(payload)}")
    uids = np.frombuffer(payload, dtype=np.uint64, count=n, offset=8)
    versions = np.frombuffer(payload, dtype=np.uint64, count=n, offset=8 + 8 * n)
    vectors = np.frombuffer(payload, dtype=np.float32, count=n * dim, offset=8 + 16 * n).reshape(n, dim)
    return uids, versions, vectors


def encode_wire_dict(dictionary: bytes | None, level: int) -> bytes:
    return _U32.pack(int(level)) + (dictionary or b"")


def decode_wire_dict(payload: bytes | bytearray | memoryview) -> tuple[bytes | None, int]:
    """(dictionary bytes or None, zstd level) of a WIRE_DICT payload."""
    if len(payload) < 4:
        raise ProtocolError("a wire_dict payload needs a 4-byte zstd level")
    (level,) = _U32.unpack_from(payload, 0)
    return bytes(payload[4:]) or None, level


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, default=_jsonable).encode()


def decode_json(payload: bytes | bytearray | memoryview) -> Any:
    try:
        return json.loads(bytes(payload).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"a JSON payload did not parse: {e}") from None


# -- reply payloads --------------------------------------------------------------------------

def encode_csr(schema: Schema, offsets: np.ndarray, columns: Mapping[str, np.ndarray]) -> list[bytes]:
    """A CSR block as a list of buffers (joined by the sender)."""
    parts = [_U32.pack(len(offsets) - 1), np.ascontiguousarray(offsets, dtype=np.int64).tobytes()]
    for f in schema.fields:
        parts.append(np.ascontiguousarray(columns[f.name], dtype=f.np_dtype).tobytes())
    return parts


def decode_csr(schema: Schema, payload: bytes | bytearray | memoryview, pos: int = 0
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    (n,) = _U32.unpack_from(payload, pos)
    pos += 4
    offsets = np.frombuffer(payload, dtype=np.int64, count=n + 1, offset=pos).copy()
    pos += 8 * (n + 1)
    total = int(offsets[-1]) if n >= 0 else 0
    cols = {}
    for f in schema.fields:
        cols[f.name] = np.frombuffer(payload, dtype=f.np_dtype, count=total, offset=pos).copy()
        pos += total * f.np_dtype.itemsize
    if pos != len(payload):
        raise ProtocolError(f"a CSR block of {total} events left {len(payload) - pos} bytes over")
    return offsets, cols


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


def decode_u32(payload: bytes | bytearray | memoryview, pos: int = 0) -> int:
    if len(payload) < pos + 4:
        raise ProtocolError(f"a reply ended at byte {len(payload)}, before its u32 at {pos}")
    return _U32.unpack_from(payload, pos)[0]


def encode_counts(events: int, nbytes: int) -> bytes:
    return _QQ.pack(events, nbytes)


def decode_counts(payload: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    return _QQ.unpack_from(payload, pos)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return repr(o)
