"""The in-memory update buffer: appended events waiting for the next sequence-level merge.

Appends add a batch to a short *pending* list. Background maintenance folds the pending batches
into one *run* (rows sorted by user, stably, so each user's rows stay in arrival order), as does
an append that finds ``fold_events`` events or ``fold_batches`` batches pending; then the newest two
runs while the older is at most ``_MERGE_RATIO`` times the newer (a binary counter in base
``_MERGE_RATIO``): run sizes grow geometrically towards the oldest, O(log(events)) runs, each
event re-sorted O(log(events)) times in all. A read binary-searches each run and scans the few
pending batches; it never sorts, so a read's latency does not carry the occasional merge of two
large runs (that cost lands on the folding thread, outside the lock readers take).

Every change builds new arrays instead of mutating old ones, and a view holds tuples of
immutable runs and batches, so a reader holding a view never sees a half-done update.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from seqvault.schema import Schema
from seqvault.seqmerge import _ranges

# Merge the newest two runs while older.events <= _MERGE_RATIO * newer.events. Higher means fewer
# runs to search per read and more re-sorting per event; 4 keeps reads at <= ~8 binary searches.
_MERGE_RATIO = 4
# Background maintenance (``SeqVault.maintain``) folds pending appends into a run every few tens
# of ms. Without it an append folds them itself past these sizes, which bounds what a read scans
# (a few hundred µs) while most appends stay a list push.
FOLD_EVENTS = 1 << 18
FOLD_BATCHES = 64


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
class _Run:
    """Rows of consecutive appends sorted by user (arrival order within a user): ``row_users``
    holds each row's user, ascending, so a user's rows are one ``searchsorted`` range."""

    row_users: np.ndarray
    columns: dict[str, np.ndarray]

    @property
    def events(self) -> int:
        return len(self.row_users)


@dataclass(frozen=True)
class BufferView:
    """A consistent snapshot of one buffer: its runs, oldest first."""

    runs: tuple[_Run, ...]
    empty: dict[str, np.ndarray]  # the schema's columns with no rows (what an empty buffer yields)
    pending: tuple[_Batch, ...] = ()  # appended after the runs, not yet folded, in arrival order

    def rows_for(self, users: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Buffered rows of the given *unique, ascending* users: (index into ``users`` per row, columns).

        Rows are grouped by the request index and, within a user, in arrival order.
        """
        if len(users) == 1:
            return self._rows_for_one(users[0])
        if len(users) == 0:
            return np.empty(0, np.int64), {}
        parts_idx: list[np.ndarray] = []
        parts_rows: list[dict[str, np.ndarray]] = []
        for run in self.runs:
            lo = np.searchsorted(run.row_users, users, "left")
            counts = np.searchsorted(run.row_users, users, "right") - lo
            which = np.flatnonzero(counts)
            if len(which):
                counts = counts[which]
                rows = _ranges(lo[which], counts)
                parts_idx.append(np.repeat(which, counts))
                parts_rows.append({k: v[rows] for k, v in run.columns.items()})
        for batch in self.pending:  # newer than every run: visited last, so arrival order holds
            pos = np.minimum(np.searchsorted(users, batch.uids), len(users) - 1)
            rows = np.flatnonzero(users[pos] == batch.uids)
            if len(rows):
                parts_idx.append(pos[rows])
                parts_rows.append({k: v[rows] for k, v in batch.columns.items()})
        if not parts_idx:
            return np.empty(0, np.int64), {}
        idx = np.concatenate(parts_idx).astype(np.int64, copy=False)
        cols = {k: np.concatenate([p[k] for p in parts_rows]) for k in parts_rows[0]}
        if len(parts_idx) > 1:
            # Runs were visited oldest first, so a stable sort by request keeps arrival order.
            order = np.argsort(idx, kind="stable")
            idx = idx[order]
            cols = {k: v[order] for k, v in cols.items()}
        return idx, cols

    def _rows_for_one(self, user: np.uint64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # The single-user read (``get``): scalar searches and slices (views, no gather) per run.
        hits: list[dict[str, np.ndarray]] = []
        for run in self.runs:
            lo = run.row_users.searchsorted(user, "left")
            hi = run.row_users.searchsorted(user, "right")
            if hi > lo:
                hits.append({k: v[lo:hi] for k, v in run.columns.items()})
        for batch in self.pending:
            rows = np.flatnonzero(batch.uids == user)
            if len(rows):
                hits.append({k: v[rows] for k, v in batch.columns.items()})
        if not hits:
            return np.empty(0, np.int64), {}
        cols = hits[0] if len(hits) == 1 else {k: np.concatenate([h[k] for h in hits]) for k in hits[0]}
        return np.zeros(len(next(iter(cols.values()))), np.int64), cols

    def users(self) -> np.ndarray:
        keys = [r.row_users for r in self.runs] + [b.uids for b in self.pending]
        return np.unique(np.concatenate(keys)) if keys else np.empty(0, np.uint64)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.runs) + sum(len(b.uids) for b in self.pending)

    def all_rows(self) -> _Sorted:
        """Everything, grouped by user in arrival order (what a merge consumes)."""
        return _grouped(_merge_runs(_all_runs(self.runs, self.pending)), self.empty)


def _run_of(uids: np.ndarray, columns: dict[str, np.ndarray]) -> _Run:
    if len(uids) and (uids == uids[0]).all():  # one user's rows (a live append, read soon after): no sort
        return _Run(uids, columns)
    order = np.argsort(uids, kind="stable")  # stable: a user's rows keep their arrival order
    return _Run(uids[order], {k: v[order] for k, v in columns.items()})


def _run_of_batches(batches: list[_Batch]) -> _Run:
    if len(batches) == 1:
        return _run_of(batches[0].uids, batches[0].columns)
    return _run_of(np.concatenate([b.uids for b in batches]),
                   {k: np.concatenate([b.columns[k] for b in batches]) for k in batches[0].columns})


def _all_runs(runs: tuple[_Run, ...], pending: tuple[_Batch, ...] | list[_Batch]) -> list[_Run]:
    return [*runs, _run_of_batches(list(pending))] if pending else list(runs)


def _push_run(runs: tuple[_Run, ...], run: _Run) -> tuple[_Run, ...]:
    """``runs`` with ``run`` added as the newest, merging the newest two while sizes are close."""
    out = [*runs, run]
    while len(out) >= 2 and out[-2].events <= _MERGE_RATIO * out[-1].events:
        newer = out.pop()
        out[-1] = _merge_runs((out[-1], newer))
    return tuple(out)


def _merge_runs(runs: tuple[_Run, ...] | list[_Run]) -> _Run | None:
    """One run holding ``runs`` (consecutive, oldest first); a user's rows stay in arrival order."""
    if not runs:
        return None
    if len(runs) == 1:
        return runs[0]
    keys = np.concatenate([r.row_users for r in runs])
    # Stable: rows of older runs (earlier in ``keys``) stay first. The input is a few sorted
    # stretches, which NumPy's stable sort (timsort for 64-bit keys) merges in about linear time.
    order = np.argsort(keys, kind="stable")
    return _Run(keys[order], {k: np.concatenate([r.columns[k] for r in runs])[order] for k in runs[0].columns})


def _grouped(run: _Run | None, empty: dict[str, np.ndarray]) -> _Sorted:
    if run is None:
        return _Sorted(np.empty(0, np.uint64), np.zeros(1, np.int64), empty)
    su = run.row_users
    starts = np.flatnonzero(np.concatenate(([True], su[1:] != su[:-1])))
    offsets = np.append(starts, len(su)).astype(np.int64)
    return _Sorted(su[starts], offsets, run.columns)


def _fold(base: _Sorted, tail: list[_Batch]) -> _Sorted:
    """``base`` followed by ``tail``'s batches, grouped by user in arrival order (bulk loads)."""
    if not tail:
        return base
    runs = [_Run(np.repeat(base.users, np.diff(base.offsets)), base.columns)] if base.events else []
    runs += [_run_of(b.uids, b.columns) for b in tail if len(b.uids)]
    return _grouped(_merge_runs(runs), base.columns)


class UpdateBuffer:
    """Events appended since the last merge, per user, columnar."""

    def __init__(self, schema: Schema, *, fold_events: int = FOLD_EVENTS, fold_batches: int = FOLD_BATCHES) -> None:
        self.schema = schema
        self.fold_events = fold_events
        self.fold_batches = fold_batches
        self._lock = threading.Lock()       # held only to read or swap the tuples below
        self._fold_lock = threading.Lock()  # one folder at a time (appends are serialised anyway)
        self._runs: tuple[_Run, ...] = ()
        self._pending: tuple[_Batch, ...] = ()  # appended after the runs, in arrival order
        self._empty = schema.empty_columns()
        self._events = 0
        self._nbytes = 0
        self.first_append_time: float | None = None

    def add(self, uids: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        if len(uids) == 0:
            return
        with self._lock:
            self._pending = (*self._pending, _Batch(uids, columns))
            self._events += len(uids)
            self._nbytes += uids.nbytes + sum(c.nbytes for c in columns.values())
            if self.first_append_time is None:
                self.first_append_time = time.monotonic()
            full = (len(self._pending) >= self.fold_batches
                    or sum(len(b.uids) for b in self._pending) >= self.fold_events)  # at most fold_batches to sum
        if full:
            self.fold_pending()

    def fold_pending(self) -> bool:
        """Sort the pending appends into a run (merging runs of close sizes); True if there were any."""
        # Sort and merge outside ``_lock``: readers keep taking views of the old runs meanwhile.
        with self._fold_lock:
            with self._lock:
                runs, pending = self._runs, self._pending
            if not pending:
                return False
            new_runs = _push_run(runs, _run_of_batches(list(pending)))
            with self._lock:
                self._runs = new_runs
                self._pending = self._pending[len(pending):]  # keep batches added meanwhile
            return True

    def view(self) -> BufferView:
        with self._lock:
            return BufferView(self._runs, self._empty, self._pending)

    def remove_users(self, users: np.ndarray) -> int:
        """Drop every buffered event of these users (a delete); returns how many were dropped."""
        with self._fold_lock, self._lock:
            run = _merge_runs(_all_runs(self._runs, self._pending))
            self._pending = ()
            if run is None:
                return 0
            keep = ~np.isin(run.row_users, users)
            dropped = run.events - int(keep.sum())
            if dropped:
                run = _Run(run.row_users[keep], {k: v[keep] for k, v in run.columns.items()})
                self._nbytes = run.events * (8 + self.schema.row_bytes)
            self._runs = (run,) if run.events else ()
            self._events = run.events
            return dropped

    @property
    def events(self) -> int:
        return self._events

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return self.events
