"""SeqVault under test: DRAM hash index, packed records on SSD, update buffer + WAL, sequence-level merge.

The engine's own background thread is off: the storage node's maintenance thread calls
``maintain()`` (which runs the merge policy), so merge work shows up in the node's CPU exactly as
RocksDB's compaction threads do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from seqvault import MergePolicy
from seqvault.engine import SeqVault
from seqvault.schema import Schema
from storagebench.stores.base import Store, StoreError, register_store

DEFAULT_MERGE = {"max_buffer_events": 250_000, "max_age_s": 10.0}


@register_store
class SeqVaultStore(Store):
    name = "seqvault"
    thread_safe = True
    keeps_vectors = True  # the engine's own locks order jobs, appends and reads

    def __init__(self, path: str, schema: Schema, *, merge_policy: Mapping[str, Any] | None = None,
                 **kw: Any) -> None:
        policy = {**DEFAULT_MERGE, **(merge_policy or {}), "background": False}
        super().__init__(path, schema, merge_policy=policy, **kw)
        self._sv = SeqVault.open(self.path, schema=schema, max_len=self.max_len, direct_io=self.direct_io,
                                 merge_policy=MergePolicy(**policy))
        self._policy = self._sv.policy
        self._vectors: Any = None

    def append(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        self._sv.append(user_ids, columns, sync=False)

    def bulk_load(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        self._sv.bulk_load(user_ids, columns)

    def get_many(self, user_ids: np.ndarray, last_n: int | None = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self._sv.get_many(user_ids, last_n=self.keep(last_n))

    def open_vectors(self, dim: int, dtype: str) -> dict[str, Any]:
        self._vectors = self._sv.open_vectors(dim, dtype)
        return {"dim": dim, "dtype": dtype, "entry_bytes": self._vectors.entry_bytes}

    def _table(self) -> Any:
        if self._vectors is None:
            raise StoreError(f"store {self.name!r} has no cached vectors: call open_vectors first")
        return self._vectors

    def put_vectors(self, user_ids: np.ndarray, versions: np.ndarray, vectors: np.ndarray) -> int:
        # Not synced per put, as appends are not: flush() makes both durable.
        return self._table().put(user_ids, versions, vectors, sync=False)

    def get_vector_entries(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._table().get_entries(user_ids)

    def vector_stats(self) -> dict[str, Any]:
        return {} if self._vectors is None else self._vectors.stats()

    def maintain(self) -> bool:
        return bool(self._sv.maintain())

    def flush(self) -> None:
        self._sv.flush()
        if self._vectors is not None:
            self._vectors.flush()

    def compact(self) -> dict[str, int]:
        # Everything buffered merged to disk, then every file with any dead space rewritten.
        self._sv.merge()
        self._sv.reclaim(live_fraction=1.0)
        self._sv.flush()
        return self.disk_bytes()

    def disk_files(self) -> dict[str, str]:
        out = {}
        vectors = os.path.join(self.path, "vectors")
        if os.path.isdir(vectors):
            out.update({e.path: "vectors" for e in os.scandir(vectors) if e.is_file()})
        for entry in os.scandir(self.path):
            if entry.is_file():
                n = entry.name
                out[entry.path] = ("data" if n.endswith(".svd") else "wal" if n.startswith("wal-")
                                   else "index" if n.endswith(".snap") else "manifest")
        return out

    def stats(self) -> dict[str, Any]:
        return self._sv.stats()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "merge_policy": asdict(self._policy),
                "value_format": "seqvault.codec packed column record", "wal": "on, not synced per append"}

    def close(self) -> None:
        self._sv.close()
