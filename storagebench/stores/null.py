"""The harness floor: a store that does (almost) nothing, driven through exactly the same node,
protocol and replay path as every other store.

Reads return a prebuilt sequence of the requested size (``last_n`` or N events per user, the same
arrays every time); appends are accepted and dropped. Whatever latency it shows is the harness's
own: generator, transport, node loop. Table 1 prints it as the "harness floor" row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from seqvault.schema import Schema
from storagebench.stores.base import Store, register_store


@register_store
class NullStore(Store):
    name = "null"
    thread_safe = True
    returns_stored_data: ClassVar[bool] = False  # its reads are not what was appended: no correctness check

    def __init__(self, path: str, schema: Schema, **kw: Any) -> None:
        super().__init__(path, schema, **kw)
        n = self.max_len
        rng = np.random.default_rng(0)
        cols = {}
        for f in schema.fields:
            if f.name == schema.time_field:
                cols[f.name] = np.arange(n, dtype=f.np_dtype)
            else:
                cols[f.name] = rng.integers(0, 1000, n).astype(f.np_dtype)
        self._sequence = cols
        self._one: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}  # last_n -> one user's reply

    def append(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        # Stores nothing, but refuses what the others refuse: the floor must not be cheaper for it.
        self.schema.validate(user_ids, columns)

    def get_many(self, user_ids: np.ndarray, last_n: int | None = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = self.keep(last_n)
        users = len(user_ids)
        if users == 1:
            if n not in self._one:
                self._one[n] = (np.array([0, n], dtype=np.int64), {k: v[-n:] for k, v in self._sequence.items()})
            return self._one[n]
        offsets = np.arange(users + 1, dtype=np.int64) * n
        return offsets, {k: np.tile(v[-n:], users) for k, v in self._sequence.items()}

    def disk_files(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass
