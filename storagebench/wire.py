"""The wire between a storage node and the ranker: one user's newest events per request.

Two payload formats, chosen per store so that "raw" is what that store's service would ship:

- ``text``: the RocksDB LastN value format (decimal text, :mod:`storagebench.stores.text_codec`),
  for ``rocksdb_lastn``. The binding decodes the stored text in ``get_many``, so the node re-encodes
  the columns it got; that extra encode is in the fetch stage (a production LastN service would
  ship the stored value as is, so the baseline's fetch is slightly pessimistic).
- ``columns``: schema-aware packing, every column at its declared dtype, concatenated in schema
  order, for every other store (SeqVault returns exactly these columns).

Compression: ``raw`` (none), ``zstd`` (no dictionary) or ``zstd_dict`` (a dictionary trained with
``zstandard.train_dictionary`` on other users' payloads, as paper section 3.5.2 does for the
embeddings it ships between CPU and GPU workers). Compression runs in the storage node (fetch
stage); decompression and parsing run in the ranker (decode stage).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zstandard

from seqvault.schema import Schema
from storagebench.stores.text_codec import decode_text, encode_text

FORMATS = ("text", "columns")
CODECS = ("raw", "zstd", "zstd_dict")
DEFAULT_LEVEL = 3          # zstd's default level: fast enough to sit in a millisecond budget
DEFAULT_DICT_BYTES = 32 << 10

# The dictionary the node compresses with, set by the ranker once before traffic (control op
# "wire_dict"). Compressor objects are not thread-safe, so each node worker thread keeps its own.
_node_dict: dict[str, Any] = {"dict": None, "level": DEFAULT_LEVEL}
_local = threading.local()


def wire_format(store: str) -> str:
    """The payload format a store ships: its own value format for LastN, packed columns otherwise."""
    return "text" if store == "rocksdb_lastn" else "columns"


def encode(columns: Mapping[str, np.ndarray], schema: Schema, fmt: str) -> bytes:
    """One user's events (oldest first) as a wire payload, uncompressed."""
    if fmt == "text":
        return encode_text(columns, schema)
    if fmt == "columns":
        return b"".join(np.ascontiguousarray(columns[f.name], dtype=f.np_dtype).tobytes() for f in schema.fields)
    raise ValueError(f"unknown wire format {fmt!r}; choose one of {', '.join(FORMATS)}")


def decode(payload: bytes, schema: Schema, fmt: str) -> dict[str, np.ndarray]:
    """The inverse of :func:`encode`."""
    if fmt == "text":
        return decode_text(payload, schema)
    if fmt != "columns":
        raise ValueError(f"unknown wire format {fmt!r}; choose one of {', '.join(FORMATS)}")
    n, rest = divmod(len(payload), schema.row_bytes)
    if rest:
        raise ValueError(f"a 'columns' payload of {len(payload)} bytes is not a whole number of "
                         f"{schema.row_bytes}-byte events")
    out, pos = {}, 0
    for f in schema.fields:
        size = n * f.np_dtype.itemsize
        out[f.name] = np.frombuffer(payload, dtype=f.np_dtype, count=n, offset=pos)
        pos += size
    return out


def compressor(codec: str, dictionary: zstandard.ZstdCompressionDict | None,
               level: int = DEFAULT_LEVEL) -> zstandard.ZstdCompressor | None:
    """A compressor for ``codec`` (None for ``raw``)."""
    if codec == "raw":
        return None
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=level)
    if codec == "zstd_dict":
        if dictionary is None:
            raise ValueError("codec 'zstd_dict' needs a trained dictionary (train_dictionary)")
        return zstandard.ZstdCompressor(level=level, dict_data=dictionary)
    raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def decompressor(codec: str, dictionary: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdDecompressor | None:
    if codec == "raw":
        return None
    return zstandard.ZstdDecompressor(dict_data=dictionary if codec == "zstd_dict" else None)


def train_dictionary(samples: Sequence[bytes], dict_bytes: int = DEFAULT_DICT_BYTES,
                     level: int = DEFAULT_LEVEL) -> zstandard.ZstdCompressionDict:
    """A zstd dictionary trained on sample payloads (other users' than the ones measured)."""
    samples = [s for s in samples if s]
    if len(samples) < 8:
        raise ValueError(f"need at least 8 non-empty sample payloads to train a dictionary, got {len(samples)}")
    return zstandard.train_dictionary(dict_bytes, samples, level=level)


# -- node side: runs inside the storage-node process ----------------------------------------------

def set_node_dictionary(dict_data: bytes | None, level: int = DEFAULT_LEVEL) -> None:
    """Install the dictionary (and level) the node's ``fetch`` replies are compressed with."""
    _node_dict["dict"] = zstandard.ZstdCompressionDict(dict_data) if dict_data else None
    _node_dict["level"] = int(level)
    # each worker thread notices the new version and rebuilds its compressors
    _node_dict["version"] = _node_dict.get("version", 0) + 1


def node_fetch(store: Any, user_id: np.ndarray, last_n: int, fmt: str, codec: str) -> tuple[bytes, int, int]:
    """Read one user's newest ``last_n`` events and encode them for the wire.

    Returns (payload, events, ns spent encoding + compressing), the last so the report can say how
    much of the fetch stage the wire work is.
    """
    offsets, cols = store.get_many(user_id, last_n)
    t0 = time.perf_counter_ns()
    payload = encode(cols, store.schema, fmt)
    comp = _thread_compressor(codec)
    if comp is not None:
        payload = comp.compress(payload)
    return payload, int(offsets[-1]), time.perf_counter_ns() - t0


def _thread_compressor(codec: str) -> zstandard.ZstdCompressor | None:
    version = _node_dict.get("version", 0)
    cache = _local.__dict__
    if cache.get("version") != version:
        cache.clear()
        cache["version"] = version
    if codec not in cache:
        cache[codec] = compressor(codec, _node_dict["dict"], _node_dict["level"])
    return cache[codec]


# -- ranker side -------------------------------------------------------------------------------

def measure_sizes(payloads: Sequence[bytes], dictionary: zstandard.ZstdCompressionDict,
                  level: int = DEFAULT_LEVEL) -> dict[str, Any]:
    """Mean bytes per request raw, with zstd and with zstd + dictionary, and the ranker-side
    compress/decompress time of each (µs per request), over the same raw payloads."""
    out: dict[str, Any] = {"requests": len(payloads)}
    if not payloads:
        return out
    raw = [len(p) for p in payloads]
    out["raw"] = float(np.mean(raw))
    out["times_us"] = {}
    for codec in ("zstd", "zstd_dict"):
        comp, dec = compressor(codec, dictionary, level), decompressor(codec, dictionary)
        assert comp is not None and dec is not None
        t0 = time.perf_counter_ns()
        packed = [comp.compress(p) for p in payloads]
        t1 = time.perf_counter_ns()
        for p in packed:
            dec.decompress(p)
        t2 = time.perf_counter_ns()
        out[codec] = float(np.mean([len(p) for p in packed]))
        out["times_us"][codec] = {"compress": (t1 - t0) / 1e3 / len(payloads),
                                  "decompress": (t2 - t1) / 1e3 / len(payloads)}
    out["saving_pct"] = {c: 100.0 * (1.0 - out[c] / out["raw"]) if out["raw"] else None
                         for c in ("zstd", "zstd_dict")}
    return out
