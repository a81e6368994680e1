"""What every workload is: a backfill of lifelong histories and a live stream of operations.

The **backfill** is the history that exists before the measured window, to be bulk-loaded into a
store. It comes in chunks; each chunk holds *all* backfill events of a set of users (a user never
spans two chunks), sorted by (user, time), so a loader can build each user's sequence at once.

The **live** stream starts at the split time. It is a time-ordered list of operations: an append
(one ingestion batch: events of one or more users arriving together) or a read (a ranking request
for one user, who is active at that moment, scoring ``n_candidates`` items). Event times inside
appends may be slightly out of order, as real ingestion is: a store must cope.

Both phases are produced lazily in bounded chunks, so memory is set by the chunk size rather than
by the size of the workload. Chunking never changes content: concatenating the chunks gives the
same bytes whatever the chunk size.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqvault.schema import Schema

OP_APPEND: int = 0
OP_READ: int = 1

BackfillChunk = tuple[np.ndarray, dict[str, np.ndarray]]


@dataclass
class LiveChunk:
    """A run of consecutive live operations and the events they append.

    ``event_start``/``event_end`` index into ``events`` (chunk-relative); a read has an empty
    slice positioned where it falls, so any run of ops maps to one contiguous run of events.
    """

    op_time_ms: np.ndarray    # int64, non-decreasing
    op_kind: np.ndarray       # uint8, OP_APPEND or OP_READ
    op_user: np.ndarray       # uint64, the reading user; for appends the first event's user
    n_candidates: np.ndarray  # int32, 0 for appends
    event_start: np.ndarray   # int64
    event_end: np.ndarray     # int64
    events: BackfillChunk     # (user ids uint64, columns), in op order

    def __len__(self) -> int:
        return len(self.op_time_ms)

    @property
    def n_events(self) -> int:
        return len(self.events[0])

    def slice_ops(self, start: int, stop: int) -> LiveChunk:
        """Ops [start, stop) with just their events, offsets rebased to the new chunk."""
        stop = min(stop, len(self))
        if start >= stop:
            return empty_live_chunk_like(self)
        ev_lo = int(self.event_start[start])
        ev_hi = int(self.event_end[stop - 1])
        uids, cols = self.events
        return LiveChunk(
            self.op_time_ms[start:stop], self.op_kind[start:stop], self.op_user[start:stop],
            self.n_candidates[start:stop],
            self.event_start[start:stop] - ev_lo, self.event_end[start:stop] - ev_lo,
            (uids[ev_lo:ev_hi], {k: v[ev_lo:ev_hi] for k, v in cols.items()}),
        )


def empty_live_chunk_like(chunk: LiveChunk) -> LiveChunk:
    uids, cols = chunk.events
    return LiveChunk(
        np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.uint64), np.empty(0, np.int32),
        np.empty(0, np.int64), np.empty(0, np.int64),
        (uids[:0], {k: v[:0] for k, v in cols.items()}),
    )


def concat_live_chunks(chunks: list[LiveChunk]) -> LiveChunk:
    if len(chunks) == 1:
        return chunks[0]
    offsets = np.cumsum([0] + [c.n_events for c in chunks[:-1]])
    names = list(chunks[0].events[1])
    return LiveChunk(
        np.concatenate([c.op_time_ms for c in chunks]),
        np.concatenate([c.op_kind for c in chunks]),
        np.concatenate([c.op_user for c in chunks]),
        np.concatenate([c.n_candidates for c in chunks]),
        np.concatenate([c.event_start + o for c, o in zip(chunks, offsets, strict=True)]),
        np.concatenate([c.event_end + o for c, o in zip(chunks, offsets, strict=True)]),
        (np.concatenate([c.events[0] for c in chunks]),
         {n: np.concatenate([c.events[1][n] for c in chunks]) for n in names}),
    )


def rechunk_live(pieces: Iterator[LiveChunk], chunk_ops: int) -> Iterator[LiveChunk]:
    """Regroup a stream of live pieces into chunks of exactly ``chunk_ops`` ops (the last may be short)."""
    if chunk_ops < 1:
        raise ValueError(f"chunk_ops must be at least 1, got {chunk_ops}")
    buffer: list[LiveChunk] = []
    buffered = 0
    for piece in pieces:
        if len(piece) == 0:
            continue
        buffer.append(piece)
        buffered += len(piece)
        if buffered < chunk_ops:
            continue
        merged = concat_live_chunks(buffer)
        start = 0
        while len(merged) - start >= chunk_ops:
            yield merged.slice_ops(start, start + chunk_ops)
            start += chunk_ops
        rest = merged.slice_ops(start, len(merged))
        buffer = [rest] if len(rest) else []
        buffered = len(rest)
    if buffered:
        yield concat_live_chunks(buffer)


def rechunk_backfill(pieces: Iterator[BackfillChunk], chunk_events: int) -> Iterator[BackfillChunk]:
    """Regroup (user, ts)-sorted pieces, whose users never span pieces, into chunks of at most
    ``chunk_events`` events made of whole users. A single user longer than ``chunk_events`` gets
    a chunk of its own: splitting a user would break the one-user-one-chunk promise.
    """
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be at least 1, got {chunk_events}")
    buf_u: list[np.ndarray] = []
    buf_c: list[dict[str, np.ndarray]] = []
    buffered = 0

    def flush() -> BackfillChunk:
        uids = np.concatenate(buf_u) if len(buf_u) > 1 else buf_u[0]
        cols = {k: (np.concatenate([c[k] for c in buf_c]) if len(buf_c) > 1 else buf_c[0][k])
                for k in buf_c[0]}
        return uids, cols

    for uids, cols in pieces:
        n = len(uids)
        if n == 0:
            continue
        # Start offset of each user's run inside the piece (piece is sorted by user).
        starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
        bounds = np.r_[starts, n]
        pos = 0
        while pos < n:
            room = chunk_events - buffered
            # Last user boundary b with b - pos <= room.
            k = np.searchsorted(bounds, pos + room, side="right") - 1
            cut = int(bounds[k])
            if cut <= pos:
                if buffered:
                    yield flush()
                    buf_u, buf_c, buffered = [], [], 0
                    continue
                cut = int(bounds[np.searchsorted(bounds, pos, side="right")])  # one oversized user
            buf_u.append(uids[pos:cut])
            buf_c.append({k2: v[pos:cut] for k2, v in cols.items()})
            buffered += cut - pos
            pos = cut
            if buffered >= chunk_events or (pos < n and buffered):
                yield flush()
                buf_u, buf_c, buffered = [], [], 0
    if buffered:
        yield flush()


def assemble_ops(parts: list[dict[str, np.ndarray]], names: Sequence[str]) -> LiveChunk:
    """Merge reads and events of several pieces into time-ordered ops.

    Each part holds reads (``read_t``, ``read_user``, ``read_cand``) and events (``flush``: the
    time of the append that carries the event, ``arrival``, ``ev_user``, ``ts``, ``c_<field>``).
    Events sharing a flush time form one append; at equal times appends go before reads, so a read
    sees everything that arrived by then.
    """
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    e_order = np.lexsort((cat["arrival"], cat["flush"]))
    flush = cat["flush"][e_order]
    ev_user = cat["ev_user"][e_order]
    app_first = np.flatnonzero(np.r_[True, flush[1:] != flush[:-1]]) if len(flush) else np.empty(0, np.int64)
    app_count = np.diff(np.r_[app_first, len(flush)])
    n_reads, n_apps = len(cat["read_t"]), len(app_first)
    times = np.r_[flush[app_first], cat["read_t"]].astype(np.int64)
    kind = np.r_[np.zeros(n_apps, np.uint8), np.ones(n_reads, np.uint8)]
    order = np.lexsort((kind, times))
    counts = np.r_[app_count, np.zeros(n_reads, np.int64)][order]
    end = np.cumsum(counts).astype(np.int64)
    cols = {name: (cat[f"c_{name}"][e_order] if name != "ts" else cat["ts"][e_order]) for name in names}
    return LiveChunk(
        op_time_ms=times[order],
        op_kind=kind[order],
        op_user=np.r_[ev_user[app_first], cat["read_user"]].astype(np.uint64)[order],
        n_candidates=np.r_[np.zeros(n_apps, np.int32), cat["read_cand"]].astype(np.int32)[order],
        event_start=end - counts,
        event_end=end,
        events=(ev_user, cols),
    )


class Workload(abc.ABC):
    """A backfill plus a live stream over one schema; see the module docstring."""

    schema: Schema

    @property
    @abc.abstractmethod
    def manifest(self) -> dict[str, Any]:
        """JSON-serialisable description: schema, parameters, seed, source, summary statistics."""

    @abc.abstractmethod
    def iter_backfill(self, chunk_events: int = 1_000_000) -> Iterator[BackfillChunk]:
        """Chunks of whole users' backfill events, each sorted by (user, ts)."""

    @abc.abstractmethod
    def iter_live(self, chunk_ops: int = 100_000) -> Iterator[LiveChunk]:
        """Live operations in time order, ``chunk_ops`` per chunk."""

    _summary: dict[str, Any] | None = None

    def summary(self, progress: bool = False) -> dict[str, Any]:
        """The ``describe`` statistics; streams the whole workload once, then caches them."""
        if self._summary is None:
            from workloads.stats import compute_summary

            self._summary = compute_summary(self, progress=progress)
        return self._summary

    def save(self, directory: str | Path, chunk_events: int = 1_000_000, chunk_ops: int = 100_000,
             progress: bool = False, overwrite: bool = False) -> Path:
        """Write Parquet chunks plus ``manifest.json`` to ``directory``; returns its path."""
        from workloads.store import save_workload

        return save_workload(self, directory, chunk_events=chunk_events, chunk_ops=chunk_ops,
                             progress=progress, overwrite=overwrite)
