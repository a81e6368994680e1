"""The ``describe`` statistics of a workload, accumulated chunk by chunk in O(users) memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workloads.base import OP_READ, BackfillChunk, LiveChunk

if TYPE_CHECKING:
    from workloads.base import Workload


class _Counter:
    """Per-user counts over a stream, merged now and then so memory stays O(distinct users)."""

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.pending = 0

    def add(self, ids: np.ndarray, counts: np.ndarray | None = None) -> None:
        if counts is None:
            ids, counts = np.unique(ids, return_counts=True)
        self.ids.append(ids)
        self.counts.append(counts.astype(np.int64))
        self.pending += len(ids)
        if self.pending > 4_000_000 and len(self.ids) > 1:
            self._merge()

    def _merge(self) -> None:
        ids = np.concatenate(self.ids)
        uniq, inv = np.unique(ids, return_inverse=True)
        self.ids = [uniq]
        self.counts = [np.bincount(inv, weights=np.concatenate(self.counts), minlength=len(uniq)).astype(np.int64)]
        self.pending = len(uniq)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.ids:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        self._merge()
        return self.ids[0], self.counts[0]


def top_share(counts: np.ndarray, fraction: float = 0.01) -> float:
    """Share of the total held by the top ``fraction`` of users (at least one user)."""
    total = counts.sum()
    if total == 0:
        return 0.0
    k = max(1, round(len(counts) * fraction))
    return float(np.sort(counts)[::-1][:k].sum() / total)


class SummaryAccumulator:
    """Feed it backfill and live chunks in any amount; ``result()`` gives the describe dict."""

    def __init__(self, live_window_ms: tuple[int, int] | None) -> None:
        self.live_window_ms = live_window_ms
        self.lengths: list[np.ndarray] = []
        self.backfill_users: list[np.ndarray] = []
        self.backfill_events = 0
        self.reads = _Counter()
        self.live_events = _Counter()
        self.n_reads = 0
        self.n_appends = 0
        self.n_live_events = 0
        self.first_op: int | None = None
        self.last_op: int | None = None

    def add_backfill(self, chunk: BackfillChunk) -> None:
        uids = chunk[0]
        if len(uids) == 0:
            return
        starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
        self.lengths.append(np.diff(np.r_[starts, len(uids)]))
        self.backfill_users.append(uids[starts])
        self.backfill_events += len(uids)

    def add_live(self, chunk: LiveChunk) -> None:
        if len(chunk) == 0:
            return
        is_read = chunk.op_kind == OP_READ
        self.n_reads += int(is_read.sum())
        self.n_appends += int(len(chunk) - is_read.sum())
        self.n_live_events += chunk.n_events
        self.reads.add(chunk.op_user[is_read])
        self.live_events.add(chunk.events[0])
        if self.first_op is None:
            self.first_op = int(chunk.op_time_ms[0])
        self.last_op = int(chunk.op_time_ms[-1])

    def result(self) -> dict[str, Any]:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        bf_users = np.concatenate(self.backfill_users) if self.backfill_users else np.zeros(0, np.uint64)
        read_users, read_counts = self.reads.result()
        ev_users, ev_counts = self.live_events.result()
        users = np.unique(np.concatenate([bf_users, read_users, ev_users]))
        if self.live_window_ms is not None:
            t0, t1 = self.live_window_ms
        else:
            t0, t1 = (self.first_op or 0), (self.last_op or 0) + 1
        window_s = max(t1 - t0, 1) / 1000.0
        pct = (lambda q: float(np.percentile(lengths, q))) if len(lengths) else (lambda q: 0.0)
        return {
            "users": len(users),
            "events": {"total": self.backfill_events + self.n_live_events,
                       "backfill": self.backfill_events, "live": self.n_live_events},
            "history_length": {"users": len(lengths), "p50": pct(50), "p90": pct(90), "p99": pct(99),
                               "max": int(lengths.max()) if len(lengths) else 0,
                               "mean": float(lengths.mean()) if len(lengths) else 0.0},
            "live": {"window_ms": [int(t0), int(t1)], "window_s": window_s,
                     "reads": self.n_reads, "appends": self.n_appends,
                     "reads_per_s": self.n_reads / window_s, "appends_per_s": self.n_appends / window_s,
                     "appended_events_per_s": self.n_live_events / window_s},
            "skew": {"top1pct_read_share": top_share(read_counts),
                     "top1pct_live_event_share": top_share(ev_counts),
                     "top1pct_backfill_share": top_share(lengths)},
        }


def compute_summary(workload: Workload, progress: bool = False) -> dict[str, Any]:
    from workloads.progress import progress_bar

    window = workload.manifest.get("live_window_ms")
    acc = SummaryAccumulator(tuple(window) if window else None)
    with progress_bar(progress) as bar:
        task = bar.add_task("backfill", total=None)
        for chunk in workload.iter_backfill():
            acc.add_backfill(chunk)
            bar.advance(task, len(chunk[0]))
        task = bar.add_task("live", total=None)
        for live in workload.iter_live():
            acc.add_live(live)
            bar.advance(task, len(live))
    return acc.result()
