"""The open-loop load generator: dispatch each operation at its intended time, however the node is doing.

Every operation has an intended start (the trace's own timestamps scaled to a target rate or by a
speed factor). The dispatcher never waits for replies, so a slow store builds a queue instead of
slowing the generator down (no coordinated omission). Two latencies are kept per operation type:

- ``latency``: reply received minus *intended* start (what a caller would see, like wrk2 and YCSB's
  intended latency), and
- ``service``: the store call alone, timed inside the node, and
- ``from_send``: reply minus the moment the request was actually sent. Not a valid latency on its
  own (it hides queueing the generator itself caused); it is there to tell generator stalls (a
  loaded machine) apart from store stalls: latency - from_send = dispatch lag.

A run whose backlog grew (intended-start latency at the end of the window well above that at the
start, or operations still unanswered) is flagged ``backlog.grew``: its percentiles describe an
overloaded store and are not valid at the offered rate. The mirror case, a window that opened on
a queue left over from warm-up, is flagged ``backlog.started_backlogged``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hdrh.log import HistogramLogWriter

from storagebench.measure import CpuSampler, ProcessSnapshot, histogram_of, latency_summary
from storagebench.node import APPEND, READ, NodeClient

OP_NAMES = (APPEND, READ)


class ReplayError(RuntimeError):
    """Operations failed in the store during replay; the message carries the first failure."""


@dataclass
class Schedule:
    """Operations in dispatch order with their intended offsets from the start of the replay."""

    kinds: np.ndarray           # uint8 index into OP_NAMES
    offsets_ns: np.ndarray      # int64, non-decreasing
    args: list[tuple]           # the request arguments of each op
    measured_from: int          # index of the first op in the measured window (earlier ones warm up)
    appended_events: np.ndarray  # int64 events carried by each op (0 for reads)

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def window_s(self) -> float:
        if len(self) == 0 or self.measured_from >= len(self):
            return 0.0
        return float(self.offsets_ns[-1] - self.offsets_ns[self.measured_from]) / 1e9


def intended_offsets_ns(op_time_ms: np.ndarray, *, rate: float | None = None,
                        speed: float | None = None) -> np.ndarray:
    """Intended start of each op, relative to the first: the trace's pace times ``speed``, or rescaled
    so the mean rate is ``rate`` ops/s (burstiness kept). Exactly one of the two must be given."""
    if (rate is None) == (speed is None):
        raise ValueError("give exactly one of rate (ops/s) or speed (x the trace's own pace)")
    t = np.asarray(op_time_ms, dtype=np.int64)
    if len(t) == 0:
        return np.zeros(0, dtype=np.int64)
    rel_ns = (t - t[0]).astype(np.float64) * 1e6
    if speed is not None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        return (rel_ns / speed).astype(np.int64)
    if rate is None or rate <= 0:
        raise ValueError(f"rate must be > 0 ops/s, got {rate}")
    span = rel_ns[-1]
    if span <= 0:  # all ops share one timestamp: spread them evenly
        return (np.arange(len(t)) * (1e9 / rate)).astype(np.int64)
    # Scale so len(t) ops span len(t)/rate seconds.
    return (rel_ns * ((len(t) - 1) / rate * 1e9 / span)).astype(np.int64)


def replay(client: NodeClient, schedule: Schedule, *, hist_log_dir: str | None = None, log_prefix: str = "",
           backlog_threshold_ms: float = 100.0, drain_timeout_s: float = 120.0,
           progress: Callable[[int], None] | None = None, lead_ms: float = 20.0) -> dict[str, Any]:
    """Dispatch ``schedule`` against the node in open loop and return the measured block."""
    n = len(schedule)
    m0 = schedule.measured_from
    sent = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=np.int64)
    svc_start = np.zeros(n, dtype=np.int64)
    svc_end = np.zeros(n, dtype=np.int64)
    returned = np.zeros(n, dtype=np.int64)
    failed: list[str] = []

    def on_reply(i: int, status: str, t0: int, t1: int, payload: Any, received: int) -> None:
        if status != "ok":
            failed.append(str(payload))
        elif isinstance(payload, tuple):
            returned[i] = payload[1]
        svc_start[i], svc_end[i], done[i] = t0, t1, received

    kinds, offsets, args = schedule.kinds, schedule.offsets_ns, schedule.args
    start_ns = time.monotonic_ns() + int(lead_ms * 1e6)
    intended = offsets + start_ns
    snap_start: ProcessSnapshot | None = None
    sampler: CpuSampler | None = None
    gen_cpu0 = time.process_time()
    next_progress = 0
    if m0 >= n:
        raise ValueError("the schedule has no measured operations; lengthen the window or lower warm-up")
    for i in range(n):
        if i == m0:
            # Window opens: snapshot at the intended start of its first op, not after a backlog drains.
            while time.monotonic_ns() < intended[i]:
                time.sleep(max(0.0, (intended[i] - time.monotonic_ns()) / 1e9))
            snap_start = ProcessSnapshot.take(client.pid)
            sampler = CpuSampler(client.pid).start()
        delay = intended[i] - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        sent[i] = time.monotonic_ns()
        client.submit(OP_NAMES[kinds[i]], args[i], functools.partial(on_reply, i))
        if progress is not None and i >= next_progress:
            progress(i + 1)
            next_progress = i + 1000
    dispatched_ns = time.monotonic_ns()
    deadline = time.monotonic() + drain_timeout_s
    while client.in_flight() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert snap_start is not None and sampler is not None
    snap_end = ProcessSnapshot.take(client.pid)
    cpu_series = sampler.stop()
    gen_cpu_s = time.process_time() - gen_cpu0
    if progress is not None:
        progress(n)
    unanswered = int(np.count_nonzero(done[m0:] == 0))
    if failed:
        raise ReplayError(f"{len(failed)} operations failed in the store; the first:\n{failed[0]}")

    window = snap_start.delta(snap_end)
    ok = done[m0:] > 0
    lat_us = np.maximum((done[m0:] - intended[m0:]) // 1000, 1)
    svc_us = np.maximum((svc_end[m0:] - svc_start[m0:]) // 1000, 1)
    lag_us = (sent[m0:] - intended[m0:]) // 1000
    # From the actual send: not coordinated-omission safe, kept only to separate generator stalls.
    from_send_us = np.maximum((done[m0:] - sent[m0:]) // 1000, 1)
    per_op: dict[str, Any] = {}
    for k, name in enumerate(OP_NAMES):
        sel = ok & (kinds[m0:] == k)
        per_op[name] = {"latency": latency_summary(histogram_of(lat_us[sel])),
                        "service": latency_summary(histogram_of(svc_us[sel])),
                        "from_send": latency_summary(histogram_of(from_send_us[sel])),
                        "count": int(np.count_nonzero(kinds[m0:] == k))}
        if hist_log_dir:
            for metric, values in (("latency", lat_us), ("service", svc_us)):
                write_interval_log(os.path.join(hist_log_dir, f"{log_prefix}{name}.{metric}.hlog"),
                                    values[sel], done[m0:][sel], intended[m0], tag=f"{log_prefix}{name}.{metric}")

    measured = n - m0
    window_s = schedule.window_s or 1e-9
    order = np.argsort(intended[m0:], kind="stable")
    ordered = lat_us[order][ok[order]]
    tenth = max(len(ordered) // 10, 1)
    start_lat = float(np.median(ordered[:tenth])) / 1e3 if len(ordered) else 0.0
    end_lat = float(np.median(ordered[-tenth:])) / 1e3 if len(ordered) else 0.0
    grew = (end_lat - start_lat) > backlog_threshold_ms or unanswered > 0
    # The mirror case: the window opened on a queue left by warm-up (JIT, a first merge or
    # compaction) that drained inside it; the percentiles then mix a transient into steady state.
    started_backlogged = (start_lat - end_lat) > backlog_threshold_ms
    last_done = int(done[m0:][ok].max()) if ok.any() else dispatched_ns
    elapsed_s = max((last_done - intended[m0]) / 1e9, 1e-9)
    appended = int(schedule.appended_events[m0:].sum())
    read_sel = kinds[m0:] == OP_NAMES.index(READ)
    return {
        "ops": per_op,
        "all_ops_latency": latency_summary(histogram_of(lat_us[ok])),
        "measured_ops": measured,
        "warmup_ops": m0,
        "window_s": window_s,
        "offered_ops_per_s": measured / window_s,
        "achieved_ops_per_s": int(ok.sum()) / elapsed_s,
        "backlog": {
            "grew": bool(grew), "started_backlogged": bool(started_backlogged),
            "threshold_ms": backlog_threshold_ms,
            "latency_first_tenth_p50_ms": start_lat, "latency_last_tenth_p50_ms": end_lat,
            "unanswered_ops": unanswered, "drain_s": max(0.0, (last_done - dispatched_ns) / 1e9),
        },
        "generator": {
            "dispatch_lag_p50_ms": float(np.percentile(lag_us, 50)) / 1e3,
            "dispatch_lag_p99_ms": float(np.percentile(lag_us, 99)) / 1e3,
            "dispatch_lag_max_ms": float(lag_us.max()) / 1e3,
            "cpu_s": gen_cpu_s,
        },
        "node_window": window,
        "cpu_series": cpu_series,
        "appended_events": appended,
        "read_ops": int(read_sel.sum()),
        "returned_bytes": int(returned[m0:][read_sel].sum()),
    }


def write_interval_log(path: str, values_us: np.ndarray, done_ns: np.ndarray, base_ns: int, tag: str) -> None:
    """One interval histogram per second of completion time, in the HdrHistogram log format."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sec = (done_ns - base_ns) // 1_000_000_000
    with open(path, "w") as f:
        writer = HistogramLogWriter(f)
        writer.output_comment(f"storagebench {tag}: microseconds, one interval per second of completion time")
        writer.output_log_format_version()
        # hdrh's output_start_time is broken (treats ms as s); write the same line by hand.
        start = time.time()
        f.write(f"#[StartTime: {start:.3f} (seconds since epoch), "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(start))} UTC]\n")
        writer.output_legend()
        for s in np.unique(sec):
            h = histogram_of(values_us[sec == s])
            h.set_tag(tag.replace(" ", "_"))
            writer.output_interval_histogram(h, float(s), float(s + 1), max_value_unit_ratio=1000.0)
