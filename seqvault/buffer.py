"""The in-memory update buffer: appended events waiting for the next sequence-level merge.

Appends only add a batch to a list (cheap). Reads take an immutable :class:`BufferView`; when the
unsorted tail has grown, the view first folds it into a part sorted by user (stable, so each user's
rows stay in arrival order), which turns a lookup into a binary search. Every change builds new
arrays instead of mutating old ones, so a reader holding a view never sees a half-done update.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from seqvault.schema import Schema
from seqvault.seqmerge import _ranges

_MIN_TAIL_TO_FOLD = 16384


@dataclass(frozen=True)
class _Batch:
    uids: np.ndarray
    columns: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Sorted:
    """Rows grouped by user: ``users`` ascending, user i's rows at ``offsets[i]:offsets[i+1]``."""

    users: np.ndarray
    offsets: np.ndarray
    columns: dict[str, np.ndarray]

    @property
    def events(self) -> int:
        return int(self.offsets[-1])


@dataclass(frozen=True)
class BufferView:
    """A consistent snapshot of one buffer. Rows of ``sorted`` arrived before rows of ``tail``."""

    sorted: _Sorted
    tail: tuple[_Batch, ...] = field(default=())

    def rows_for(self, users: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Buffered rows of the given *unique, ascending* users: (index into ``users`` per row, columns).

        Rows are grouped by the request index and, within a user, in arrival order.
        """
        parts_idx: list[np.ndarray] = []
        parts_rows: list[dict[str, np.ndarray]] = []
        s = self.sorted
        if len(s.users):
            pos = np.searchsorted(s.users, users)
            pos_c = np.minimum(pos, len(s.users) - 1)
            hit = s.users[pos_c] == users
            if hit.any():
                which = np.nonzero(hit)[0]
                starts, ends = s.offsets[pos_c[which]], s.offsets[pos_c[which] + 1]
                counts = ends - starts
                rows = _ranges(starts, counts)
                parts_idx.append(np.repeat(which, counts))
                parts_rows.append({k: v[rows] for k, v in s.columns.items()})
        for batch in self.tail:
            pos = np.searchsorted(users, batch.uids)
            pos_c = np.minimum(pos, len(users) - 1)
            hit = users[pos_c] == batch.uids if len(users) else np.zeros(len(batch.uids), bool)
            if hit.any():
                rows = np.nonzero(hit)[0]
                parts_idx.append(pos_c[rows])
                parts_rows.append({k: v[rows] for k, v in batch.columns.items()})
        if not parts_idx:
            return np.empty(0, np.int64), {}
        idx = np.concatenate(parts_idx).astype(np.int64, copy=False)
        cols = {k: np.concatenate([p[k] for p in parts_rows]) for k in parts_rows[0]}
        if len(parts_idx) > 1:
            order = np.argsort(idx, kind="stable")
            idx = idx[order]
            cols = {k: v[order] for k, v in cols.items()}
        return idx, cols

    def users(self) -> np.ndarray:
        parts = [self.sorted.users] + [b.uids for b in self.tail]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)

    @property
    def events(self) -> int:
        return self.sorted.events + sum(len(b.uids) for b in self.tail)

    def all_rows(self) -> _Sorted:
        """Everything, grouped by user in arrival order (what a merge consumes)."""
        return _fold(self.sorted, list(self.tail))


def _fold(base: _Sorted, tail: list[_Batch]) -> _Sorted:
    if not tail:
        return base
    uids = np.concatenate([np.repeat(base.users, np.diff(base.offsets))] + [b.uids for b in tail])
    order = np.argsort(uids, kind="stable")  # stable: a user's rows keep their arrival order
    su = uids[order]
    cols = {k: np.concatenate([base.columns[k]] + [b.columns[k] for b in tail])[order] for k in base.columns}
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]]) if len(su) else np.empty(0, np.int64)
    offsets = np.append(starts, len(su)).astype(np.int64)
    return _Sorted(su[starts], offsets, cols)


class UpdateBuffer:
    """Events appended since the last merge, per user, columnar."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._lock = threading.Lock()
        self._sorted = _Sorted(np.empty(0, np.uint64), np.zeros(1, np.int64), schema.empty_columns())
        self._tail: list[_Batch] = []
        self._tail_events = 0
        self._nbytes = 0
        self.first_append_time: float | None = None

    def add(self, uids: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        if len(uids) == 0:
            return
        with self._lock:
            self._tail = [*self._tail, _Batch(uids, columns)]
            self._tail_events += len(uids)
            self._nbytes += uids.nbytes + sum(c.nbytes for c in columns.values())
            if self.first_append_time is None:
                self.first_append_time = time.monotonic()

    def view(self) -> BufferView:
        with self._lock:
            if self._tail_events > max(_MIN_TAIL_TO_FOLD, self._sorted.events // 4):
                self._sorted = _fold(self._sorted, self._tail)
                self._tail, self._tail_events = [], 0
            return BufferView(self._sorted, tuple(self._tail))

    def remove_users(self, users: np.ndarray) -> int:
        """Drop every buffered event of these users (a delete); returns how many were dropped."""
        with self._lock:
            folded = _fold(self._sorted, self._tail)
            row_users = np.repeat(folded.users, np.diff(folded.offsets))
            drop = np.isin(row_users, users)
            dropped = int(drop.sum())
            if dropped:
                keep = ~drop
                folded = _fold(_Sorted(np.empty(0, np.uint64), np.zeros(1, np.int64),
                                       self.schema.empty_columns()),
                               [_Batch(row_users[keep], {k: v[keep] for k, v in folded.columns.items()})])
                self._nbytes = folded.events * (8 + self.schema.row_bytes)
            self._sorted, self._tail, self._tail_events = folded, [], 0
            return dropped

    @property
    def events(self) -> int:
        return self._sorted.events + self._tail_events

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return self.events
