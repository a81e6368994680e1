"""An in-memory reference store: the oracle for contract tests, and a harness calibrator.

``delay_ms`` makes every append and read take at least that long (a sleep, so no CPU is used),
``append_delay_ms`` only every append: driving it through the replay harness checks that the
latency accounting and the validity rules report what is known to be true, including a backlog
of one op type only. ``lose_every_nth_append`` acknowledges but silently drops every n-th append
(a fault to inject): the in-window read-your-writes check must catch it. ``fail_maintenance_after_s``
makes background maintenance raise once that long has passed since open (the node then reports a
background failure, which every run must turn into an error).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from seqvault.schema import Schema
from storagebench.stores.base import Store, register_store
from storagebench.stores.sequences import merge_newest, pack_csr, split_by_user


@register_store
class MemoryStore(Store):
    name = "memory"
    thread_safe = True

    def __init__(self, path: str, schema: Schema, *, delay_ms: float = 0.0, append_delay_ms: float = 0.0,
                 lose_every_nth_append: int = 0, fail_maintenance_after_s: float = 0.0, **kw: Any) -> None:
        super().__init__(path, schema, delay_ms=delay_ms, append_delay_ms=append_delay_ms,
                         lose_every_nth_append=lose_every_nth_append,
                         fail_maintenance_after_s=fail_maintenance_after_s, **kw)
        self.fail_at = time.monotonic() + fail_maintenance_after_s if fail_maintenance_after_s > 0 else None
        self.delay_s = float(delay_ms) / 1e3
        self.append_delay_s = float(append_delay_ms) / 1e3
        self.lose_every = int(lose_every_nth_append)
        self._appends = 0
        self._users: dict[int, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def append(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        user_ids, columns = self.schema.validate(user_ids, columns)
        self._delay()
        if self.append_delay_s > 0:
            time.sleep(self.append_delay_s)
        self._appends += 1
        if self.lose_every and self._appends % self.lose_every == 0:
            return
        with self._lock:
            for uid, cols in split_by_user(user_ids, columns):
                self._users[uid] = merge_newest(self._users.get(uid), cols, self.schema, self.max_len)

    def maintain(self) -> bool:
        if self.fail_at is not None and time.monotonic() >= self.fail_at:
            raise RuntimeError("injected maintenance failure (fail_maintenance_after_s)")
        return False

    def bulk_load(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        user_ids, columns = self.schema.validate(user_ids, columns)
        with self._lock:
            for uid, cols in split_by_user(user_ids, columns):
                self._users[uid] = merge_newest(self._users.get(uid), cols, self.schema, self.max_len)

    def get_many(self, user_ids: np.ndarray, last_n: int | None = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        self._delay()
        with self._lock:
            per_user = [self._users.get(int(u)) for u in np.asarray(user_ids, dtype=np.uint64)]
        return pack_csr(per_user, self.schema, self.keep(last_n))

    def disk_files(self) -> dict[str, str]:
        return {}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"users": len(self._users),
                    "events": int(sum(len(c[self.schema.time_field]) for c in self._users.values()))}

    def close(self) -> None:
        pass

    def _delay(self) -> None:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
