"""One store, one workload: bulk-load the backfill, replay the live stream open-loop, measure.

This is the general tool behind ``storagebench run`` and ``storagebench table1``. The measured block
it returns (see :mod:`storagebench.results` for the field list) is the same for every store.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from seqvault.schema import Schema
from storagebench.correctness import backfill_of, check_reads
from storagebench.keepawake import KeepAwake
from storagebench.measure import ProcessSnapshot, cores_for_target, o_direct_supported, time_weighted_mean
from storagebench.node import GET, NodeClient
from storagebench.replay import OP_NAMES, Schedule, intended_offsets_ns, replay
from storagebench.stores import store_class
from workloads import OP_APPEND, OP_READ

DEFAULT_TARGET_QPS = 1_000_000.0   # production load the CPU-cores column is sized for (workload's mix)
DEFAULT_TARGET_UTILISATION = 0.5  # headroom an operator keeps for failover and peaks


class LiveChunkLike(Protocol):
    op_time_ms: np.ndarray
    op_kind: np.ndarray
    op_user: np.ndarray
    event_start: np.ndarray
    event_end: np.ndarray
    events: tuple[np.ndarray, dict[str, np.ndarray]]


class WorkloadLike(Protocol):
    schema: Schema
    manifest: dict[str, Any]

    def iter_backfill(self, chunk_events: int = ...) -> Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]: ...
    def iter_live(self, chunk_ops: int = ...) -> Iterable[LiveChunkLike]: ...


@dataclass
class RunConfig:
    """How one store is driven and measured. Every field goes into the result file."""

    io: str = "direct"                   # "direct" (bypass the page cache) or "buffered"
    max_len: int = 1000                  # N: events kept and read per user
    rate: float | None = None            # target ops/s (trace burstiness kept); or ...
    speed: float | None = 1.0            # ... the trace's own pace times this
    warmup_s: float = 10.0
    window_s: float = 60.0
    node_cpus: list[int] | None = None   # CPUs the node is pinned to (None: not pinned)
    keep_awake: bool = True              # a SCHED_IDLE spinner on each node CPU (see storagebench.keepawake)
    dram_budget_bytes: int = 64 << 20    # SeqVault DRAM target; RocksDB block cache
    store_options: dict[str, Any] = field(default_factory=dict)
    backlog_threshold_ms: float = 100.0
    min_achieved_ratio: float = 0.9      # an op type achieving less than this share of its offered rate is not valid
    check_share: float = 0.01            # share of in-window reads whose data is checked (read-your-writes)
    target_qps: float = DEFAULT_TARGET_QPS
    target_utilisation: float = DEFAULT_TARGET_UTILISATION
    crosscheck_users: int | None = 200   # users compared across stores after the replay (None: every user)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.io not in ("direct", "buffered"):
            raise ValueError(f"io must be 'direct' or 'buffered', got {self.io!r}")
        if (self.rate is None) == (self.speed is None):
            raise ValueError("give exactly one of rate (ops/s) or speed (x the trace's pace)")
        if self.window_s <= 0 or self.warmup_s < 0:
            raise ValueError("window_s must be > 0 and warmup_s >= 0")
        if not 0 <= self.check_share <= 1:
            raise ValueError(f"check_share must be in [0, 1], got {self.check_share}")


@dataclass
class PreparedWorkload:
    """The live schedule and what the harness needs to know about the data, built once for all stores."""

    schedule: Schedule
    crosscheck_users: np.ndarray
    stored_events: int
    backfill_events: int
    schedule_info: dict[str, Any]
    # Per user (sorted ids): backfill events and events stored after the schedule, min(all, N).
    # Splitting the workload over shards needs them.
    user_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    user_backfill: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    user_stored: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def prepare(wl: WorkloadLike, cfg: RunConfig) -> PreparedWorkload:
    """Turn the workload's live stream into a schedule of warm-up + window ops, and pick cross-check users."""
    horizon_ns = int((cfg.warmup_s + cfg.window_s) * 1e9)
    chunks: list[LiveChunkLike] = []
    times: list[np.ndarray] = []
    t_first = None
    speed = cfg.speed
    for chunk in wl.iter_live(chunk_ops=50_000):
        if len(chunk.op_time_ms) == 0:
            continue
        if t_first is None:
            t_first = int(chunk.op_time_ms[0])
            if cfg.rate is not None:
                # The rate target sets the speed from the first chunk's own pace (trace burstiness kept).
                span_s = max((int(chunk.op_time_ms[-1]) - t_first) / 1e3, 1e-3)
                speed = cfg.rate / (len(chunk.op_time_ms) / span_s)
        chunks.append(chunk)
        times.append(chunk.op_time_ms)
        if (int(chunk.op_time_ms[-1]) - t_first) * 1e6 / speed > horizon_ns:
            break
    if not chunks:
        raise ValueError("the workload has no live operations to replay")
    offsets = intended_offsets_ns(np.concatenate(times), speed=speed)
    kinds_l, args, appended, off_l, users_seen = [], [], [], [], []
    i = 0
    from_kind = {OP_APPEND: OP_NAMES.index("append"), OP_READ: OP_NAMES.index("read")}
    for chunk in chunks:
        uids, cols = chunk.events
        for j in range(len(chunk.op_time_ms)):
            if offsets[i] > horizon_ns:
                break
            kind = int(chunk.op_kind[j])
            if kind == 1:
                u = np.array([chunk.op_user[j]], dtype=np.uint64)
                args.append((u, cfg.max_len))
                appended.append(0)
                users_seen.append(u)
            else:
                s, e = int(chunk.event_start[j]), int(chunk.event_end[j])
                args.append((uids[s:e].copy(), {k: v[s:e].copy() for k, v in cols.items()}))
                appended.append(e - s)
                users_seen.append(uids[s:e])
            kinds_l.append(from_kind[kind])
            off_l.append(offsets[i])
            i += 1
    kinds = np.array(kinds_l, dtype=np.uint8)
    offs = np.array(off_l, dtype=np.int64)
    measured_from = int(np.searchsorted(offs, int(cfg.warmup_s * 1e9), side="left"))
    schedule = Schedule(kinds, offs, args, measured_from, np.array(appended, dtype=np.int64))

    # Stored events per user = min(backfill + live appended, N): needed for bytes per stored event.
    counts: dict[int, int] = {}
    backfill_events = 0
    backfill_users = []
    for uids, _ in wl.iter_backfill(chunk_events=1_000_000):
        u, c = np.unique(uids, return_counts=True)
        backfill_events += len(uids)
        for uu, cc in zip(u.tolist(), c.tolist(), strict=True):
            counts[uu] = counts.get(uu, 0) + cc
        backfill_users.append(u)
    backfill_counts = dict(counts)
    live_u, live_c = np.unique(np.concatenate([a[0] for a, k in zip(args, kinds_l, strict=True)
                                               if k == OP_NAMES.index("append")] or [np.zeros(0, np.uint64)]),
                               return_counts=True)
    for u, c in zip(live_u.tolist(), live_c.tolist(), strict=True):
        counts[u] = counts.get(u, 0) + c
    stored = int(np.minimum(np.fromiter(counts.values(), dtype=np.int64), cfg.max_len).sum()) if counts else 0

    rng = np.random.default_rng(cfg.seed)
    pool = np.unique(np.concatenate(users_seen + backfill_users)) if users_seen or backfill_users else np.zeros(0)
    want = len(pool) if cfg.crosscheck_users is None else min(cfg.crosscheck_users, len(pool))
    pick = rng.choice(pool, size=want, replace=False) if len(pool) else pool
    info = {
        "speed": speed, "ops": len(schedule), "warmup_ops": measured_from,
        "measured_ops": len(schedule) - measured_from,
        "measured_reads": int((kinds[measured_from:] == OP_NAMES.index("read")).sum()),
        "measured_appends": int((kinds[measured_from:] == OP_NAMES.index("append")).sum()),
        "measured_appended_events": int(schedule.appended_events[measured_from:].sum()),
        "window_s": schedule.window_s, "warmup_s": cfg.warmup_s,
        "users": len(counts),  # users with a stored sequence (backfill or live appends)
    }
    user_ids = np.array(sorted(counts), dtype=np.uint64)
    user_backfill = np.array([backfill_counts.get(u, 0) for u in user_ids.tolist()], dtype=np.int64)
    user_stored = np.minimum(np.array([counts[u] for u in user_ids.tolist()], dtype=np.int64), cfg.max_len)
    return PreparedWorkload(schedule, np.sort(pick.astype(np.uint64)), stored, backfill_events, info,
                            user_ids, user_backfill, user_stored)


def store_options(store: str, cfg: RunConfig, store_dir: str) -> tuple[dict[str, Any], list[str]]:
    """The options the binding is opened with, and warnings (e.g. O_DIRECT not supported here)."""
    warnings = []
    direct = cfg.io == "direct"
    if direct and not store_class(store).supports_direct_io:
        warnings.append(f"{store} cannot bypass the page cache (its data set lives in DRAM, its log is "
                        f"written buffered): --io direct does not apply to it")
        direct = False
    elif direct and not o_direct_supported(store_dir):
        warnings.append(f"the filesystem of {store_dir} refuses O_DIRECT: running {store} with buffered I/O")
        direct = False
    opts = {"max_len": cfg.max_len, "direct_io": direct, "dram_budget_bytes": cfg.dram_budget_bytes,
            **cfg.store_options.get(store, {})}
    return opts, warnings


def load_backfill(client: NodeClient, backfill: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]],
                  progress: Callable[[int], None] | None = None) -> int:
    """Bulk-load the backfill chunks into the node and settle it; returns the events loaded."""
    return load_phase(client, backfill, None, progress)["events"]


class LoadMeter:
    """A bulk load, measured: the node's CPU and I/O from construction to :meth:`finish`, the events
    loaded, and the write amplification. Chunks may come one call at a time (a shard's load)."""

    def __init__(self, client: NodeClient, row_bytes: int | None) -> None:
        self.client, self.row_bytes, self.loaded = client, row_bytes, 0
        self._start = ProcessSnapshot.take(client.pids)

    def chunk(self, uids: np.ndarray, cols: dict[str, np.ndarray]) -> int:
        self.client.call("bulk_load", uids, cols)
        self.loaded += len(uids)
        return self.loaded

    def finish(self) -> dict[str, Any]:
        self.client.call("finish_load")
        load = self._start.delta(ProcessSnapshot.take(self.client.pids))
        load["events"] = self.loaded
        load["write_amplification"] = ratio(load["io"]["write_bytes"], self.loaded * (self.row_bytes or 0))
        return load


def load_phase(client: NodeClient, backfill: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]],
               row_bytes: int | None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Bulk-load, measured: the node's CPU and I/O over the load, and its write amplification (None
    without ``row_bytes``)."""
    meter = LoadMeter(client, row_bytes)
    for uids, cols in backfill:
        loaded = meter.chunk(uids, cols)
        if progress is not None:
            progress(loaded)
    return meter.finish()


def finish_phase(client: NodeClient, crosscheck_users: np.ndarray, checks_data: bool, label: str = ""
                 ) -> dict[str, Any]:
    """After the replay: flush, then the node's disk and stats, the cross-check sample, and a compaction
    (for the compacted disk figure). Raises if the node's background maintenance failed, before or
    during these calls (a client that sent nothing for a while has its error frame still unread);
    ``label`` prefixes that error."""
    client.poll(0.0)
    raise_background_error(client, label)
    client.call("flush")
    after = {"disk": client.call("disk_bytes"), "stats": client.call("stats")}
    raise_background_error(client, label)
    after["sample"] = get_all(client, crosscheck_users) if checks_data else None
    after["compacted"] = client.call("compact")
    after["config"] = client.store_config
    return after


def raise_background_error(client: NodeClient, label: str = "") -> None:
    """Raise if the node reported (in a frame this client has read) that its maintenance failed."""
    if client.background_error:
        raise RuntimeError(f"{label}{': ' if label else ''}background maintenance failed:\n{client.background_error}")


def check_correctness(wl: WorkloadLike, schedule: Schedule, checked_reads: list[dict[str, Any]],
                      cfg: RunConfig) -> dict[str, Any]:
    """The in-window read-your-writes check of the sampled reads (raises on a wrong answer)."""
    appends = [a for a, k in zip(schedule.args, schedule.kinds, strict=True) if k == OP_NAMES.index("append")]
    users = {c["user"] for c in checked_reads}
    correctness = check_reads(checked_reads, appends,
                              backfill_of(users, wl.iter_backfill(chunk_events=1_000_000), wl.schema, cfg.max_len),
                              wl.schema, cfg.max_len)
    correctness["share"] = cfg.check_share
    return correctness


def run_store(wl: WorkloadLike, prepared: PreparedWorkload, store: str, store_dir: str, cfg: RunConfig, *,
              hist_log_dir: str | None = None, log_prefix: str | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              status: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], Any]:
    """Measure one store. Returns (the per-store result block, its cross-check sample; None for a
    store whose reads are not what was stored)."""
    fresh_dir(store_dir)
    opts, warnings = store_options(store, cfg, store_dir)
    report = progress or (lambda phase, done, total: None)
    checks_data = store_class(store).returns_stored_data
    keep_awake = KeepAwake(cfg.node_cpus if cfg.keep_awake else None)
    with keep_awake, NodeClient(store, store_dir, wl.schema, opts, cpus=cfg.node_cpus) as client:
        load = load_phase(client, wl.iter_backfill(chunk_events=250_000), wl.schema.row_bytes,
                          lambda done: report("load", done, prepared.backfill_events))
        # Prime the read path (JIT compilation, file handles) so warm-up is spent warming, not compiling.
        client.call(GET, prepared.crosscheck_users[:16], None)
        n_ops = len(prepared.schedule)
        replayed = replay(client, prepared.schedule, hist_log_dir=hist_log_dir,
                          log_prefix=f"{store}." if log_prefix is None else log_prefix,
                          backlog_threshold_ms=cfg.backlog_threshold_ms, min_achieved_ratio=cfg.min_achieved_ratio,
                          check_share=cfg.check_share if checks_data else 0.0, check_seed=cfg.seed,
                          disk_dir=store_dir, status=status, progress=lambda done: report("replay", done, n_ops))
        after = finish_phase(client, prepared.crosscheck_users, checks_data, store)
    correctness = check_correctness(wl, prepared.schedule, replayed["checked_reads"], cfg) if checks_data else None
    # Unpinned, the node may use every CPU this process may (the generator's too): count those.
    node_cores = len(cfg.node_cpus) if cfg.node_cpus else len(os.sched_getaffinity(0)) or 1
    block = build_block(store, cfg, prepared, wl.schema.row_bytes, opts, warnings, load, replayed, after,
                        correctness, node_cores, keep_awake.describe())
    return block, after["sample"]


def fresh_dir(path: str) -> None:
    """An empty directory at ``path``, with what earlier runs left dirty in the page cache written
    back now rather than inside this run's window."""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    os.sync()


def build_block(store: str, cfg: RunConfig, prepared: PreparedWorkload, row_bytes: int, opts: dict[str, Any],
                warnings: list[str], load: dict[str, Any], replayed: dict[str, Any], after: dict[str, Any],
                correctness: dict[str, Any] | None, node_cores: int, keep_awake: dict[str, Any]) -> dict[str, Any]:
    """The per-store result block (see :mod:`storagebench.results`) from what the phases measured."""
    window = replayed["node_window"]
    measured = replayed["measured_ops"]
    cpu_s_per_op = window["cpu_s"] / max(measured, 1)
    logical_appended = replayed["appended_events"] * row_bytes
    disk_series = replayed["disk_series"]
    disk_mean = time_weighted_mean(disk_series)
    disk, stats, compacted = after["disk"], after["stats"], after["compacted"]
    disk_steady = round(disk_mean) if disk_mean is not None else disk["total"]
    reasons = list(replayed["backlog"]["invalid_reasons"])
    block = {
        "store": store,
        "config": after["config"],
        "io_mode": "direct" if opts["direct_io"] else "buffered",
        "warnings": warnings,
        "load": load,
        "cpu": {
            "cpu_s": window["cpu_s"], "cpu_user_s": window["cpu_user_s"], "cpu_system_s": window["cpu_system_s"],
            "wall_s": window["wall_s"], "node_cores": node_cores,
            "cpu_usage_pct": 100.0 * window["cpu_s"] / max(window["wall_s"] * node_cores, 1e-9),
            "cpu_s_per_op": cpu_s_per_op,
            "cpu_cores_for_target": cores_for_target(cpu_s_per_op, cfg.target_qps, cfg.target_utilisation),
            "target_qps": cfg.target_qps, "target_utilisation": cfg.target_utilisation,
            "series": replayed["cpu_series"],
        },
        "latency": replayed["ops"],
        "all_ops_latency": replayed["all_ops_latency"],
        "offered_ops_per_s": replayed["offered_ops_per_s"],
        "achieved_ops_per_s": replayed["achieved_ops_per_s"],
        "backlog": replayed["backlog"],
        "valid": not reasons,
        "invalid_reasons": reasons,
        "generator": replayed["generator"],
        "keep_awake": keep_awake,
        "correctness": correctness,
        "disk": {"bytes": disk, "stored_events": prepared.stored_events,
                 "bytes_per_event": ratio(disk_steady, prepared.stored_events),
                 "series": disk_series, "mean_bytes": disk_steady,
                 "max_bytes": max([r[1] for r in disk_series] or [disk["total"]]),
                 "final_bytes": disk["total"], "compacted_bytes": compacted["total"],
                 "how": "sampled every second through the window; mean weighted by time"},
        "io": {
            "window": window["io"],
            "appended_events": replayed["appended_events"],
            "appended_logical_bytes": logical_appended,
            "returned_bytes": replayed["returned_bytes"],
            "write_amplification": ratio(window["io"]["write_bytes"], logical_appended),
            "read_amplification": ratio(window["io"]["read_bytes"], replayed["returned_bytes"]),
        },
        "stats": stats,
        "run_config": asdict(cfg),
    }
    add_headline(block)
    return block


def add_headline(block: dict[str, Any]) -> None:
    """Flat headline fields (Table 1 columns) from the block's sections; P99 etc. are the reads'
    intended-start latency."""
    read_latency = block["latency"]["read"]["latency"]
    block.update({
        "cpu_cores": block["cpu"]["cpu_cores_for_target"], "cpu_usage_pct": block["cpu"]["cpu_usage_pct"],
        "p50_ms": read_latency["p50_ms"], "p99_ms": read_latency["p99_ms"], "p999_ms": read_latency["p999_ms"],
        "disk_bytes": block["disk"]["mean_bytes"], "disk_bytes_max": block["disk"]["max_bytes"],
        "disk_bytes_compacted": block["disk"]["compacted_bytes"], "ops_per_s": block["achieved_ops_per_s"],
        "cpu_s_per_op": block["cpu"]["cpu_s_per_op"], "dram_bytes": int(block["stats"].get("dram_bytes", 0)),
    })


def get_all(client: NodeClient, users: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every listed user's sequence, fetched in chunks (a reply stays far below the frame limit)."""
    parts = [client.call(GET, users[i:i + chunk], None) for i in range(0, len(users), chunk)]
    if not parts:
        return client.call(GET, users, None)
    offsets = [parts[0][0]]
    for off, _ in parts[1:]:
        offsets.append(off[1:] + offsets[-1][-1])
    cols = {k: np.concatenate([c[k] for _, c in parts]) for k in parts[0][1]}
    return np.concatenate(offsets), cols


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is 0 (no such figure, rather than infinity)."""
    return float(a) / float(b) if b else None
