"""The refresh job of cached user representations (VISTA, LLaTTE): when to recompute a user's summary,
what it costs, and how stale the summary a request reads is.

A cached model's summary of a user's history is computed off the request path and kept in the
store beside the events (:meth:`storagebench.stores.base.Store.put_vectors`), versioned by the
event position it covers: the number of events the user had when it was computed. The job:

* :func:`initial_refresh` summarises every loaded user once after the bulk load (version = the
  user's backfill events);
* :func:`live_refresh` replays the workload's live operations: appends go to the store, and once per
  ``batch_ops`` operations (the job is asynchronous: a read between two passes sees the older
  summary) it refreshes each user whose summary is ``every_events`` events behind, or who converted
  since the last pass (``on_conversion``). At every read it records the staleness: events the user
  has that the summary does not cover.

CPU is the job's own process CPU (fetching the histories, summarising, sending the vectors); the
node's CPU for the puts is not in it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from storagebench.node import GET, VECTOR_PUT, NodeClient
from storagebench.ranker_stage import RankerStage
from workloads import ACTIONS, OP_READ, LiveChunk

# A content platform's conversions: the deep engagements (the synthetic workload has no purchases).
CONVERSIONS: tuple[str, ...] = ("collect", "share", "comment", "follow", "cart", "purchase")


@dataclass
class RefreshPolicy:
    """When the refresh job recomputes a user's summary."""

    every_events: int = 64          # K: refresh once the summary is K events behind (0: never by count)
    on_conversion: bool = True      # also refresh after a conversion event
    conversion_actions: tuple[str, ...] = CONVERSIONS
    batch_ops: int = 2000           # the job makes one pass per this many live operations
    batch_users: int = 64           # users summarised per forward

    def __post_init__(self) -> None:
        unknown = [a for a in self.conversion_actions if a not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown conversion action(s) {unknown}; known: {', '.join(ACTIONS)}")
        if self.every_events < 0 or self.batch_ops < 1 or self.batch_users < 1:
            raise ValueError("every_events must be >= 0, batch_ops and batch_users >= 1")
        if not self.every_events and not self.on_conversion:
            raise ValueError("a policy that never refreshes: set every_events > 0 or on_conversion")

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _refresh(client: NodeClient, ranker: RankerStage, users: np.ndarray, versions: np.ndarray,
             request_time_ms: int, batch_users: int) -> float:
    """Summarise ``users`` from their stored histories and store the vectors; returns the summarise CPU s."""
    summarize_cpu = 0.0
    for i in range(0, len(users), batch_users):
        chunk = users[i : i + batch_users]
        offsets, columns = client.call(GET, chunk, ranker.history_len)
        t0 = time.process_time()
        vectors = ranker.summarize_csr(offsets, columns, np.full(len(chunk), request_time_ms, dtype=np.int64))
        summarize_cpu += time.process_time() - t0
        client.call(VECTOR_PUT, chunk, versions[i : i + batch_users], vectors)
    return summarize_cpu


def initial_refresh(client: NodeClient, ranker: RankerStage, counts: dict[int, int], request_time_ms: int,
                    policy: RefreshPolicy, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Summarise every user in ``counts`` (user -> events stored so far) once; returns what it cost."""
    users = np.fromiter(counts, dtype=np.uint64, count=len(counts))
    versions = np.array([counts[int(u)] for u in users], dtype=np.uint64)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summarize_cpu = 0.0
    step = policy.batch_users * 8
    for i in range(0, len(users), step):
        summarize_cpu += _refresh(client, ranker, users[i : i + step], versions[i : i + step], request_time_ms,
                                  policy.batch_users)
        if progress is not None:
            progress(min(i + step, len(users)))
    cpu = time.process_time() - cpu0
    return {"users": len(users), "wall_s": time.perf_counter() - wall0, "cpu_s": cpu,
            "summarize_cpu_s": summarize_cpu, "cpu_ms_per_user": 1e3 * cpu / max(len(users), 1)}


def live_refresh(client: NodeClient, ranker: RankerStage | None, chunks: Iterable[LiveChunk],
                 counts: dict[int, int], covered: dict[int, int], policy: RefreshPolicy, max_ops: int,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Replay live operations (appends into the store; reads record staleness) with the refresh policy.

    ``counts`` (events per user) and ``covered`` (the version of each user's stored summary) are
    updated in place. With ``ranker=None`` only the appends are applied (an uncached arm's store then
    holds the same events as a cached one's)."""
    conversions = np.array([ACTIONS[a] for a in policy.conversion_actions], dtype=np.int64)
    staleness: list[int] = []
    uncovered_reads = ops = events = refreshes = 0
    cpu = summarize_cpu = 0.0
    for chunk in chunks:
        take = min(len(chunk), max_ops - ops)
        if take <= 0:
            break
        chunk = chunk.slice_ops(0, take)
        uids, cols = chunk.events
        if len(uids):
            client.call("append", uids, cols)
        converted: set[int] = set()
        actions = cols.get("action")
        for i in range(take):   # per op, in trace order: a read sees the events appended before it
            lo, hi = int(chunk.event_start[i]), int(chunk.event_end[i])
            if chunk.op_kind[i] == OP_READ:
                user = int(chunk.op_user[i])
                if ranker is not None:
                    if user in covered:
                        staleness.append(counts.get(user, 0) - covered[user])
                    else:
                        uncovered_reads += 1
                continue
            for u in uids[lo:hi].tolist():
                counts[u] = counts.get(u, 0) + 1
            if policy.on_conversion and actions is not None and hi > lo:
                hit = np.isin(actions[lo:hi], conversions)
                converted.update(uids[lo:hi][hit].tolist())
        ops += take
        events += len(uids)
        if ranker is not None:
            due = sorted(u for u in set(uids.tolist())
                         if (policy.every_events and counts[u] - covered.get(u, 0) >= policy.every_events)
                         or u in converted)
            if due:
                users = np.array(due, dtype=np.uint64)
                versions = np.array([counts[u] for u in due], dtype=np.uint64)
                t0 = time.process_time()
                summarize_cpu += _refresh(client, ranker, users, versions, int(chunk.op_time_ms[take - 1]),
                                          policy.batch_users)
                cpu += time.process_time() - t0
                covered.update(zip(due, versions.tolist(), strict=True))
                refreshes += len(due)
        if progress is not None:
            progress(ops)
        if ops >= max_ops:
            break
    out: dict[str, Any] = {"ops": ops, "events": events}
    if ranker is None:
        return out
    stale = np.asarray(staleness, dtype=np.int64)
    out.update({
        "policy": policy.describe(), "refreshes": refreshes, "cpu_s": cpu, "summarize_cpu_s": summarize_cpu,
        "cpu_us_per_event": 1e6 * cpu / max(events, 1),
        "refreshes_per_1k_events": 1e3 * refreshes / max(events, 1),
        "reads": len(stale) + uncovered_reads, "reads_without_summary": uncovered_reads,
        "staleness_events": _distribution(stale),
        "stale_read_fraction": float((stale > 0).mean()) if len(stale) else None,
    })
    return out


def _distribution(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
            "p90": float(np.percentile(values, 90)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max())}
