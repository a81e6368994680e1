"""Open-loop driver of end-to-end ranking requests: fetch from a storage node, then rank, per stage.

The calling thread dispatches each request at its intended time by sending a ``fetch`` to the node
(it never waits for replies, so a slow pipeline queues instead of slowing the offered load: no
coordinated omission). Replies go onto a ready queue; one ranker thread (the model server) takes
the first ready request, gathers up to ``max_batch - 1`` more that are ready within ``max_wait_ms``,
and runs decode, host-to-device copy and forward + top k for the batch.

Stages per request, in nanoseconds, which add up exactly to ``total`` (intended start -> top k):
``queue`` (dispatch lag + waiting for the ranker, batching window included), ``fetch`` (sent ->
reply received: node queue, store read, wire encode + compression, transfer), ``decode``
(decompression, parsing, feature building), ``h2d``, ``forward`` (scores, top k, copy back).
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storagebench.measure import histogram_of, latency_summary
from storagebench.node import FETCH, FETCH_CACHED, NodeClient
from storagebench.ranker_stage import RankerStage

STAGES = ("queue", "fetch", "decode", "h2d", "forward", "total")


@dataclass
class Requests:
    """The ranking requests of one run, in dispatch order."""

    users: np.ndarray            # uint64
    request_time_ms: np.ndarray  # int64: the trace time of the request (recency features use it)
    offsets_ns: np.ndarray       # int64: intended start relative to the run's start
    cand_items: np.ndarray       # [S, C] a bank of candidate sets; request i uses set i % S
    cand_side: dict[str, np.ndarray]
    measured_from: int = 0       # earlier requests warm up and are not measured

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class DriveResult:
    stages_ns: dict[str, np.ndarray]  # per measured request
    done_ns: np.ndarray               # completion time of each measured request
    start_ns: int                     # intended start of the first measured request
    topk: np.ndarray                  # [n, k] candidate indices (into the request's set), -1 if not ranked
    wire_bytes: np.ndarray            # payload bytes received per measured request (events)
    wire_encode_ns: np.ndarray        # node time spent encoding + compressing per measured request
    events: np.ndarray                # events fetched per measured request
    dispatch_lag_ns: np.ndarray       # sent - intended: the part of ``queue`` spent before the fetch was sent
    completed: bool                   # every request answered (not aborted, none lost)
    grew: bool                        # latency grew over the run: offered rate above capacity
    vector_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # cached-vector entry bytes

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {p50_ms, p90_ms, p99_ms, p999_ms, max_ms, mean_ms, count}} from HdrHistograms."""
        return {stage: latency_summary(histogram_of(np.maximum(values // 1000, 1)))
                for stage, values in self.stages_ns.items()}


def drive(client: NodeClient, ranker: RankerStage, reqs: Requests, *, top_k: int, max_batch: int = 1,
          max_wait_ms: float = 0.0, abort_after_s: float | None = None, drain_timeout_s: float = 60.0,
          progress: Callable[[int], None] | None = None, lead_ms: float = 20.0) -> DriveResult:
    """Run ``reqs`` open loop through node and ranker; stop dispatching if a request waits longer than
    ``abort_after_s`` (the run is then overloaded; its result says ``completed=False``)."""
    n, sets = len(reqs), len(reqs.cand_items)
    ts = {k: np.zeros(n, dtype=np.int64) for k in ("sent", "received", "started", "decoded", "copied", "done")}
    payloads: list[Any] = [None] * n
    topk = np.full((n, top_k), -1, dtype=np.int64)
    ready: queue.Queue = queue.Queue()
    failures: list[str] = []
    finished = np.zeros(n, dtype=bool)
    fmt, codec, last_n = ranker.wire_format, ranker.codec, ranker.seq_len

    def on_reply(i: int, status: str, t0: int, t1: int, payload: Any, received: int) -> None:
        ts["received"][i] = received
        if status != "ok":
            failures.append(str(payload))
            finished[i] = True
            return
        payloads[i] = payload
        ready.put(i)

    def ranker_loop() -> None:
        wait_ns = int(max_wait_ms * 1e6)
        while True:
            i = ready.get()
            if i is None:
                return
            batch = [i]
            deadline = time.monotonic_ns() + wait_ns
            while len(batch) < max_batch:
                try:
                    j = ready.get(timeout=max(deadline - time.monotonic_ns(), 0) / 1e9) if wait_ns else ready.get_nowait()
                except queue.Empty:
                    break
                if j is None:
                    ready.put(None)  # keep the stop signal for the outer loop
                    break
                batch.append(j)
            try:
                _rank(batch)
            except Exception as e:
                failures.append(f"{type(e).__name__}: {e}")
                finished[batch] = True

    def _rank(batch: list[int]) -> None:
        rows = np.asarray(batch)
        ts["started"][rows] = time.monotonic_ns()
        feats = ranker.decode([payloads[j][0] for j in batch], reqs.request_time_ms[rows],
                              reqs.cand_items[rows % sets], {k: v[rows % sets] for k, v in reqs.cand_side.items()},
                              [payloads[j][3] for j in batch] if ranker.cached else None)
        ts["decoded"][rows] = time.monotonic_ns()
        feats = ranker.to_device(feats)
        ts["copied"][rows] = time.monotonic_ns()
        idx, _ = ranker.forward_topk(feats, top_k)
        ts["done"][rows] = time.monotonic_ns()
        topk[rows, : idx.shape[1]] = idx
        finished[rows] = True

    worker = threading.Thread(target=ranker_loop, daemon=True, name="e2e-ranker")
    worker.start()
    with client.background_receiver():  # the ranker thread needs the GIL: no busy-polling here
        dispatched, aborted, intended, start_ns = _dispatch(client, reqs, finished, ts, on_reply, last_n, fmt,
                                                            codec, abort_after_s, progress, lead_ms,
                                                            FETCH_CACHED if ranker.cached else FETCH)
        deadline = time.monotonic() + drain_timeout_s
        while not finished[:dispatched].all() and time.monotonic() < deadline and not failures:
            time.sleep(0.002)
    ready.put(None)
    worker.join(timeout=drain_timeout_s)
    if failures:
        raise RuntimeError(f"{len(failures)} e2e requests failed; the first:\n{failures[0]}")
    return _result(reqs, ts, intended, start_ns, dispatched, aborted, topk, payloads)


def _dispatch(client: NodeClient, reqs: Requests, finished: np.ndarray, ts: dict[str, np.ndarray],
              on_reply: Callable, last_n: int, fmt: str, codec: str, abort_after_s: float | None,
              progress: Callable[[int], None] | None, lead_ms: float, op: str = FETCH
              ) -> tuple[int, bool, np.ndarray, int]:
    """Send each request at its intended time; returns (dispatched, aborted, intended, start_ns)."""
    n = len(reqs)
    start_ns = time.monotonic_ns() + int(lead_ms * 1e6)
    intended = reqs.offsets_ns + start_ns
    oldest, aborted, dispatched = 0, False, 0
    for i in range(n):
        delay = intended[i] - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        while oldest < i and finished[oldest]:
            oldest += 1
        if abort_after_s is not None and oldest < i and time.monotonic_ns() - intended[oldest] > abort_after_s * 1e9:
            aborted = True
            break
        ts["sent"][i] = time.monotonic_ns()
        client.submit(op, (reqs.users[i : i + 1], last_n, fmt, codec), functools.partial(on_reply, i))
        dispatched = i + 1
        if progress is not None:
            progress(i + 1)
    return dispatched, aborted, intended, start_ns


def _result(reqs: Requests, ts: dict[str, np.ndarray], intended: np.ndarray, start_ns: int, dispatched: int,
            aborted: bool, topk: np.ndarray, payloads: list[Any]) -> DriveResult:
    n = len(reqs)
    m0 = reqs.measured_from
    ok = np.flatnonzero(ts["done"][m0:dispatched] > 0) + m0
    stages = {
        "queue": (ts["sent"][ok] - intended[ok]) + (ts["started"][ok] - ts["received"][ok]),
        "fetch": ts["received"][ok] - ts["sent"][ok],
        "decode": ts["decoded"][ok] - ts["started"][ok],
        "h2d": ts["copied"][ok] - ts["decoded"][ok],
        "forward": ts["done"][ok] - ts["copied"][ok],
        "total": ts["done"][ok] - intended[ok],
    }
    total = stages["total"]
    tenth = max(len(total) // 10, 1)
    grew = bool(len(total) and np.median(total[-tenth:]) - np.median(total[:tenth]) > 100e6)
    return DriveResult(
        stages_ns=stages, done_ns=ts["done"][ok], start_ns=int(intended[m0]) if m0 < n else start_ns,
        topk=topk[ok], wire_bytes=np.array([len(payloads[j][0]) for j in ok], dtype=np.int64),
        vector_bytes=np.array([len(payloads[j][3] or b"") if len(payloads[j]) > 3 else 0 for j in ok], dtype=np.int64),
        wire_encode_ns=np.array([payloads[j][2] for j in ok], dtype=np.int64),
        events=np.array([payloads[j][1] for j in ok], dtype=np.int64),
        dispatch_lag_ns=ts["sent"][ok] - intended[ok], completed=not aborted and len(ok) == n - m0, grew=grew)


def within_budget(result: DriveResult, budget_ms: float) -> bool:
    """The run sustained its rate inside the budget: all answered, no growing backlog, total p99 <= budget."""
    if not result.completed or result.grew or len(result.stages_ns["total"]) == 0:
        return False
    return result.summary()["total"]["p99_ms"] <= budget_ms


def search_max_rate(run_at: Callable[[float], DriveResult], budget_ms: float, *, start_rate: float,
                    time_budget_s: float, bisect_steps: int = 4,
                    step_s: Callable[[float], float] = lambda rate: 0.0) -> tuple[float | None, list[dict[str, Any]]]:
    """The highest rate whose short open-loop run keeps total p99 inside the budget: double from
    ``start_rate`` until a run fails, then bisect; stop before a step (``step_s(rate)`` long) would end
    after ``time_budget_s``.
    Returns (best passing rate or None, the steps tried)."""
    t_end = time.monotonic() + time_budget_s
    steps: list[dict[str, Any]] = []
    good, bad = None, None
    rate, bisected = start_rate, 0
    while not steps or time.monotonic() + step_s(rate) < t_end:  # at least one step, whatever the bound
        result = run_at(rate)
        ok = within_budget(result, budget_ms)
        p99 = result.summary()["total"]["p99_ms"] if len(result.stages_ns["total"]) else None
        steps.append({"rate_per_s": rate, "total_p99_ms": p99, "within_budget": ok, "completed": result.completed})
        if ok:
            good = rate
        else:
            bad = rate
        if bad is None:
            rate *= 2
        elif good is None:
            rate /= 2  # even the start rate failed: look lower
            if rate < 0.1:
                break
        else:
            if bisected >= bisect_steps or bad / good < 1.1:
                break
            rate, bisected = (good + bad) / 2, bisected + 1
    return good, steps
