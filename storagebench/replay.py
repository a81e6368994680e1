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
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hdrh.log import HistogramLogWriter

from storagebench.measure import LocalMeter, NodeMeter, encode_histogram, histogram_of, latency_summary
from storagebench.node import APPEND, READ, NodeClient

OP_NAMES = (APPEND, READ)
LATENCY_METRICS = ("latency", "service", "from_send", "to_node", "from_node")  # per op type, in this order
GENERATOR_SWITCH_INTERVAL_S = 0.0002


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
    origin: np.ndarray | None = None  # a shard's part: each op's index in the unsplit schedule

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
    rel_ns = (t - t[0]).astype(np.float64) * 1e6 + _within_millisecond_ns(t)
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


def _within_millisecond_ns(t_ms: np.ndarray) -> np.ndarray:
    """Ops sharing one trace millisecond spread evenly across it (k ties at j/k ms, j = 0..k-1).

    The trace's clock has millisecond resolution; taking ties as simultaneous would turn them into
    bursts that a slowed replay stretches into queues no real caller sends."""
    starts = np.flatnonzero(np.r_[True, t_ms[1:] != t_ms[:-1]])
    sizes = np.diff(np.r_[starts, len(t_ms)])
    rank = np.arange(len(t_ms)) - np.repeat(starts, sizes)
    return rank / np.repeat(sizes, sizes) * 1e6


def replay(client: NodeClient, schedule: Schedule, *, hist_log_dir: str | None = None, log_prefix: str = "",
           backlog_threshold_ms: float = 100.0, drain_timeout_s: float = 120.0,
           progress: Callable[[int], None] | None = None, lead_ms: float = 20.0,
           check_share: float = 0.0, check_seed: int = 0, disk_dir: str | None = None,
           status: Callable[[dict[str, Any]], None] | None = None, status_interval_s: float = 10.0,
           min_achieved_ratio: float = 0.9, meter: NodeMeter | None = None,
           start_at_wall_ns: int | None = None) -> dict[str, Any]:
    """Dispatch ``schedule`` against the node in open loop and return the measured block.

    One thread does everything: it busy-polls the node's socket and the clock until each op's
    intended start (sleeping would lag by the timer's slack, ~0.4-1 ms at p99), sends the op, and
    takes replies off the socket as they come. ``check_share`` of the measured reads ask for their
    data, which is kept (``checked_reads``) with how many appends had been acknowledged and sent
    when the read was sent, for :func:`storagebench.correctness.check_reads`.

    ``meter`` measures the node over the window (default: its processes here, and ``disk_dir``);
    ``start_at_wall_ns`` (``time.time_ns``) starts the clock at that moment rather than at once, so
    the generators of several shards start their schedules together.
    """
    n = len(schedule)
    m0 = schedule.measured_from
    if m0 >= n:
        raise ValueError("the schedule has no measured operations; lengthen the window or lower warm-up")
    sent = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=np.int64)
    svc_start = np.zeros(n, dtype=np.int64)
    svc_end = np.zeros(n, dtype=np.int64)
    returned = np.zeros(n, dtype=np.int64)
    failed: list[str] = []
    acked_appends = [0]
    checked: list[dict[str, Any]] = []
    kinds, offsets, args = schedule.kinds, schedule.offsets_ns, schedule.args
    read_k, append_k = OP_NAMES.index(READ), OP_NAMES.index(APPEND)
    full = np.zeros(n, dtype=bool)
    if check_share > 0:
        rng = np.random.default_rng(check_seed)
        full[m0:] = (kinds[m0:] == read_k) & (rng.random(n - m0) < check_share)

    def on_reply(i: int, status: str, t0: int, t1: int, payload: Any, received: int) -> None:
        if status != "ok":
            failed.append(str(payload))
        elif kinds[i] == append_k:
            acked_appends[0] += 1
        else:
            returned[i] = payload[1]
            if len(payload) > 2:
                check_of[i]["result"] = payload[2]
        svc_start[i], svc_end[i], done[i] = t0, t1, received

    check_of: dict[int, dict[str, Any]] = {}
    callbacks = [functools.partial(on_reply, i) for i in range(n)]
    # Every request frame is built before the clock starts: dispatch is one send.
    base_id = client.reserve_ids(n)
    frames = [client.encode(OP_NAMES[kinds[i]], args[i], base_id + i, full=bool(full[i])) for i in range(n)]
    meter = meter if meter is not None else LocalMeter(client.pids, disk_dir)
    window_open = False
    gen_cpu0 = time.process_time()
    next_progress = 0
    appends_sent = 0
    poll, now, send_frame = client.poll, time.monotonic_ns, client.send_frame
    # The schedule, its frames and callbacks are ~10 objects per op: move them out of the cyclic
    # collector's reach, or a full collection in mid-window stalls dispatch for milliseconds.
    gc.collect()
    gc.freeze()
    # Other threads here (the CPU sampler) take the GIL only briefly; make them hand it back fast.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(GENERATOR_SWITCH_INTERVAL_S)
    # The clock starts only now: everything above is preparation, not dispatch lag.
    lead_ns = int(lead_ms * 1e6)
    late_start_ms = 0.0
    if start_at_wall_ns is not None:
        until = start_at_wall_ns - time.time_ns()
        late_start_ms = max(0.0, -until / 1e6)
        lead_ns = max(until, 0)
    start_ns = time.monotonic_ns() + lead_ns
    intended = offsets + start_ns
    next_status = intended[m0] + int(status_interval_s * 1e9)
    for i in range(n):
        if i == m0:
            # Window opens: snapshot at the intended start of its first op, not after a backlog drains.
            while now() < intended[i]:
                poll(0.0)
            meter.open_window()
            window_open = True
        target = intended[i]
        while now() < target:
            poll(0.0)
        if full[i]:
            check_of[i] = {"op": i, "user": int(args[i][0][0]), "last_n": args[i][1],
                           "appends_acked": acked_appends[0], "appends_sent": appends_sent, "result": None}
            checked.append(check_of[i])
        sent[i] = now()
        code, data = frames[i]
        send_frame(base_id + i, code, data, callbacks[i])
        if kinds[i] == append_k:
            appends_sent += 1
        # Housekeeping (progress bar, status line) only in a gap of > 2 ms before the next op, so
        # it never delays a dispatch.
        if i + 1 < n and intended[i + 1] - now() < 2_000_000:
            continue
        if progress is not None and i >= next_progress:
            progress(i + 1)
            next_progress = i + 1000
        if status is not None and sent[i] >= next_status:
            status(_status_line(sent[i], intended, done, kinds, m0, i + 1, status_interval_s, client.in_flight()))
            next_status += int(status_interval_s * 1e9)
    dispatched_ns = now()
    deadline = time.monotonic() + drain_timeout_s
    while client.in_flight() and time.monotonic() < deadline:
        poll(0.005)
    gc.unfreeze()
    sys.setswitchinterval(switch_interval)
    assert window_open
    window, series = meter.close_window()
    gen_cpu_s = time.process_time() - gen_cpu0
    if progress is not None:
        progress(n)
    if failed:
        raise ReplayError(f"{len(failed)} operations failed in the store; the first:\n{failed[0]}")

    ok = done[m0:] > 0
    lat_us = np.maximum((done[m0:] - intended[m0:]) // 1000, 1)
    svc_us = np.maximum((svc_end[m0:] - svc_start[m0:]) // 1000, 1)
    lag_us = (sent[m0:] - intended[m0:]) // 1000
    # From the actual send: not coordinated-omission safe, kept only to separate generator stalls.
    from_send_us = np.maximum((done[m0:] - sent[m0:]) // 1000, 1)
    # The two transport legs, from the node's own timestamps (one clock per host): send -> store call
    # starts (kernel, node wake-up, frame parsing) and store call ends -> reply processed here.
    to_node_us = np.maximum((svc_start[m0:] - sent[m0:]) // 1000, 1)
    from_node_us = np.maximum((done[m0:] - svc_end[m0:]) // 1000, 1)
    window_s = schedule.window_s or 1e-9
    per_op: dict[str, Any] = {}
    by_op: dict[str, Any] = {}
    hists: dict[str, Any] = {}
    metrics = dict(zip(LATENCY_METRICS, (lat_us, svc_us, from_send_us, to_node_us, from_node_us), strict=True))
    for k, name in enumerate(OP_NAMES):
        of_kind = kinds[m0:] == k
        sel = ok & of_kind
        made = {metric: histogram_of(values[sel]) for metric, values in metrics.items()}
        per_op[name] = {metric: latency_summary(h) for metric, h in made.items()}
        per_op[name]["count"] = int(np.count_nonzero(of_kind))
        hists[name] = {metric: encode_histogram(h) for metric, h in made.items()}
        by_op[name] = _backlog_of(lat_us, done[m0:], intended[m0:], of_kind, ok, window_s, intended[m0],
                                  backlog_threshold_ms, min_achieved_ratio, name)
        if hist_log_dir:
            for metric, values in (("latency", lat_us), ("service", svc_us)):
                write_interval_log(os.path.join(hist_log_dir, f"{log_prefix}{name}.{metric}.hlog"),
                                    values[sel], done[m0:][sel], intended[m0], tag=f"{log_prefix}{name}.{metric}")

    measured = n - m0
    unanswered = int(np.count_nonzero(~ok))
    last_done = int(done[m0:][ok].max()) if ok.any() else dispatched_ns
    elapsed_s = max((last_done - intended[m0]) / 1e9, window_s, 1e-9)
    appended = int(schedule.appended_events[m0:].sum())
    read_sel = kinds[m0:] == read_k
    invalid = [r for b in by_op.values() for r in b["reasons"]]
    all_ops = histogram_of(lat_us[ok])
    hists["all_ops"] = encode_histogram(all_ops)
    return {
        "ops": per_op,
        "all_ops_latency": latency_summary(all_ops),
        "histograms": hists,
        "measured_ops": measured,
        "warmup_ops": m0,
        "window_s": window_s,
        "offered_ops_per_s": measured / window_s,
        "achieved_ops_per_s": int(ok.sum()) / elapsed_s,
        "backlog": {
            "grew": any(b["grew"] or b["unanswered_ops"] for b in by_op.values()),
            "started_backlogged": any(b["started_backlogged"] for b in by_op.values()),
            "below_offered": any(b["below_offered"] for b in by_op.values()),
            "threshold_ms": backlog_threshold_ms, "min_achieved_ratio": min_achieved_ratio,
            "latency_first_tenth_p50_ms": by_op[READ]["latency_first_tenth_p50_ms"],
            "latency_last_tenth_p50_ms": by_op[READ]["latency_last_tenth_p50_ms"],
            "unanswered_ops": unanswered, "drain_s": max(0.0, (last_done - dispatched_ns) / 1e9),
            "by_op": by_op, "invalid_reasons": invalid,
        },
        "generator": {
            "dispatch_lag_p50_ms": float(np.percentile(lag_us, 50)) / 1e3,
            "dispatch_lag_p99_ms": float(np.percentile(lag_us, 99)) / 1e3,
            "dispatch_lag_max_ms": float(lag_us.max()) / 1e3,
            "cpu_s": gen_cpu_s, "mode": "busy-poll, one thread", "late_start_ms": late_start_ms,
        },
        "node_window": window,
        "cpu_series": [row[:3] for row in series],
        "disk_series": [[row[0], row[3]] for row in series if len(row) > 3],
        "appended_events": appended,
        "read_ops": int(read_sel.sum()),
        "returned_bytes": int(returned[m0:][read_sel].sum()),
        "checked_reads": checked,
    }


def _backlog_of(lat_us: np.ndarray, done: np.ndarray, intended: np.ndarray, of_kind: np.ndarray, ok: np.ndarray,
                window_s: float, window_start_ns: int, threshold_ms: float, min_ratio: float,
                name: str) -> dict[str, Any]:
    """Whether one op type kept up: its latency did not grow over the window (nor start on a queue
    left by warm-up), every op was answered, and it achieved the rate it was offered."""
    sel = of_kind & ok
    order = np.argsort(intended[sel], kind="stable")
    ordered = lat_us[sel][order]
    tenth = max(len(ordered) // 10, 1)
    start_lat = float(np.median(ordered[:tenth])) / 1e3 if len(ordered) else 0.0
    end_lat = float(np.median(ordered[-tenth:])) / 1e3 if len(ordered) else 0.0
    offered = int(of_kind.sum()) / window_s
    last = int(done[sel].max()) if sel.any() else window_start_ns
    achieved = int(sel.sum()) / max((last - window_start_ns) / 1e9, window_s)
    unanswered = int(np.count_nonzero(of_kind & ~ok))
    out = {"count": int(of_kind.sum()), "offered_ops_per_s": offered, "achieved_ops_per_s": achieved,
           "latency_first_tenth_p50_ms": start_lat, "latency_last_tenth_p50_ms": end_lat,
           "grew": (end_lat - start_lat) > threshold_ms,
           # The mirror case: the window opened on a queue left by warm-up (JIT, a first merge or
           # compaction) that drained inside it; the percentiles then mix a transient into steady state.
           "started_backlogged": (start_lat - end_lat) > threshold_ms,
           "unanswered_ops": unanswered, "below_offered": bool(offered and achieved < min_ratio * offered)}
    reasons = []
    if out["grew"]:
        reasons.append(f"{name} backlog grew: p50 from intended start went from {start_lat:.1f} ms (first tenth "
                       f"of the window) to {end_lat:.1f} ms (last tenth), more than {threshold_ms:g} ms")
    if out["started_backlogged"]:
        reasons.append(f"{name}s opened the window on a backlog left by warm-up ({start_lat:.1f} ms p50 in the "
                       f"first tenth, {end_lat:.1f} ms in the last); lengthen --warmup-s")
    if unanswered:
        reasons.append(f"{unanswered} {name}s still unanswered after the drain timeout")
    if out["below_offered"]:
        reasons.append(f"{name}s achieved {achieved:.1f} of {offered:.1f} ops/s offered "
                       f"(below {min_ratio:.0%}): the store does not sustain the offered rate")
    out["reasons"] = reasons
    return out


def _status_line(t_ns: int, intended: np.ndarray, done: np.ndarray, kinds: np.ndarray, m0: int, upto: int,
                 interval_s: float, in_flight: int) -> dict[str, Any]:
    """Figures of the last interval for a YCSB-style status line (reads: p99 from intended start)."""
    lo = t_ns - int(interval_s * 1e9)
    recent = (done[:upto] >= lo) & (done[:upto] > 0)
    read = recent & (kinds[:upto] == OP_NAMES.index(READ))
    lat = (done[:upto][read] - intended[:upto][read]) / 1e6
    return {"t_s": (t_ns - intended[m0]) / 1e9, "ops_per_s": int(recent.sum()) / interval_s,
            "read_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None, "in_flight": in_flight,
            "measuring": upto > m0}


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
