"""End to end: a workload's ranking reads fetched from a storage node and ranked by a model, per stage.

For each (store, model) arm: bulk-load the workload's backfill into a storage node, train the wire's
zstd dictionary on some users' payloads and measure bytes per request on other users', then replay
the reads open loop at ``rate`` (:mod:`storagebench.e2e_driver`), and search the highest rate whose
total p99 stays inside the budget. Each arm reads its own N newest events per request; a store
keeps N events for the models that read all they need from the events, and ``seq_len`` (the
history a summary covers) for the models that cache a user summary (VISTA, LLaTTE), whose arm
also runs the refresh job (:mod:`storagebench.refresh`): every loaded user summarised once, then
the first ``refresh_ops`` live operations replayed with the refresh policy (every arm replays their
appends, so the stores end holding the same events). The default arms are the paper's baseline
(RocksDB LastN N=100 + Transformer), its answer (SeqVault N=1000 + LASER) and the two cached
designs, on the same workload, requests and candidates. The result file format is documented in
:mod:`reports.loader` (kind ``e2e``).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from storagebench import wire
from storagebench.e2e_driver import STAGES, DriveResult, Requests, drive, search_max_rate
from storagebench.experiments.run import RunConfig, WorkloadLike, load_backfill, store_options
from storagebench.measure import machine_info
from storagebench.node import FETCH, NodeClient
from storagebench.ranker_stage import ONLINE_LENGTH_FIELD, RankerStage
from storagebench.refresh import RefreshPolicy, initial_refresh, live_refresh
from storagebench.replay import write_interval_log
from storagebench.results import write_json
from workloads import OP_READ

ZERO_EVENT_MODELS: tuple[str, ...] = ("vista",)


@dataclass(frozen=True)
class Arm:
    """One (store, model) pair and the events it reads per request (None: the model's default)."""

    store: str
    model: str
    events: int | None = None

    def __post_init__(self) -> None:
        # Only a model that can score from its cached summary alone reads no events; refuse N=0 for the
        # others here, before a backfill is loaded for an arm that cannot run.
        if self.events is not None and (self.events < 0 or (self.events == 0 and self.model not in ZERO_EVENT_MODELS)):
            raise ValueError(f"arm {self.store}:{self.model}:{self.events}: N must be >= 1 for {self.model} "
                             f"(only {', '.join(ZERO_EVENT_MODELS)} can score from the cached summary alone, N=0)")

    @property
    def label(self) -> str:
        return f"{self.store}+{self.model}"


DEFAULT_ARMS: tuple[Arm, ...] = (Arm("rocksdb_lastn", "transformer", 100), Arm("seqvault", "laser", 1000),
                                 Arm("seqvault", "vista"), Arm("seqvault", "llatte", 400))
# The cached models' events read online when the arm does not say: their configs' defaults.
DEFAULT_ONLINE_EVENTS: dict[str, int] = {"vista": 0, "llatte": 400}
SEARCH_MIN_REQUESTS = 15
Progress = Callable[[str, int, int | None], None]


@dataclass
class E2EConfig:
    """Everything that shapes an e2e run; all of it goes into the result file."""

    seq_len: int = 1000          # L: newest events fetched and read by the model (paper: 1000)
    candidates: int = 100        # C per request (the workload's own range is 100-500)
    top_k: int = 10
    rate: float = 2.0            # requests/s of the measured run
    warmup_s: float = 5.0
    window_s: float = 40.0
    budget_ms: float = 100.0
    max_batch: int = 1           # dynamic batching: up to this many requests per forward ...
    max_wait_ms: float = 0.0     # ... waiting at most this long for the batch to fill
    wire_codec: str = "zstd_dict"  # codec on the data path: raw, zstd or zstd_dict
    zstd_level: int = wire.DEFAULT_LEVEL
    dict_bytes: int = wire.DEFAULT_DICT_BYTES
    device: str = "auto"
    search_s: float = 45.0       # time bound of the max-rate search per arm (0: skip it)
    search_step_s: float = 3.0   # each search step: a short open-loop run this long (>= 15 requests)
    search_start_rate: float = 2.0
    io: str = "direct"
    dram_budget_bytes: int = 64 << 20
    node_cpus: list[int] | None = None
    wire_sample_users: int = 200  # users whose payloads measure wire bytes ...
    dict_train_users: int = 300   # ... and other users whose payloads train the dictionary
    seed: int = 0
    vector_dtype: str = "fp16"   # cached summaries: fp16, bf16 or int8 (+ a scale per vector)
    refresh_every: int = 64      # refresh a summary K events behind ...
    refresh_on_conversion: bool = True  # ... or after a conversion
    refresh_ops: int = 20_000    # live operations replayed through the refresh job before the run (0: none)
    dtype: str = "fp32"          # the model's weights and activations: fp32 or bf16
    compiled: bool = False       # torch.compile the scoring path (falls back to eager if it cannot)

    def __post_init__(self) -> None:
        problems = [f"{k} must be >= 1" for k in ("seq_len", "candidates", "top_k", "max_batch")
                    if getattr(self, k) < 1]
        problems += [f"{k} must be > 0" for k in ("rate", "window_s", "budget_ms", "search_step_s",
                                                   "search_start_rate") if getattr(self, k) <= 0]
        if self.top_k > self.candidates:
            problems.append(f"top_k ({self.top_k}) cannot exceed candidates ({self.candidates})")
        if self.wire_codec not in wire.CODECS:
            problems.append(f"wire_codec must be one of {', '.join(wire.CODECS)}, got {self.wire_codec!r}")
        if self.warmup_s < 0 or self.max_wait_ms < 0 or self.search_s < 0:
            problems.append("warmup_s, max_wait_ms and search_s must be >= 0")
        if self.vector_dtype not in ("fp16", "bf16", "int8"):
            problems.append(f"vector_dtype must be fp16, bf16 or int8, got {self.vector_dtype!r}")
        if self.dtype not in ("fp32", "bf16"):
            problems.append(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.refresh_every < 0 or self.refresh_ops < 0:
            problems.append("refresh_every and refresh_ops must be >= 0")
        if not self.refresh_every and not self.refresh_on_conversion:
            problems.append("the refresh policy never refreshes: set refresh_every > 0 or refresh_on_conversion")
        if problems:
            raise ValueError("invalid e2e configuration: " + "; ".join(problems))


def collect_reads(wl: WorkloadLike, max_reads: int = 30_000) -> tuple[np.ndarray, np.ndarray]:
    """The workload's live ranking reads, in trace order: (users, request time ms)."""
    users, times = [], []
    got = 0
    for chunk in wl.iter_live(chunk_ops=50_000):
        sel = chunk.op_kind == OP_READ
        users.append(chunk.op_user[sel])
        times.append(chunk.op_time_ms[sel].astype(np.int64))
        got += int(sel.sum())
        if got >= max_reads:
            break
    if not got:
        raise ValueError("the workload has no live ranking reads to replay")
    return np.concatenate(users)[:max_reads].astype(np.uint64), np.concatenate(times)[:max_reads]


def candidate_bank(wl: WorkloadLike, count: int, sets: int = 64, seed: int = 0
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``sets`` candidate sets of ``count`` items drawn from backfill events (so popular items come up
    more often, each with the category it was seen under); request i uses set i % sets."""
    _, cols = next(iter(wl.iter_backfill(chunk_events=200_000)))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(cols["item_id"]), size=(sets, count))
    return cols["item_id"][pick].astype(np.int64), {"category": cols["category"][pick].astype(np.int64)}


def make_requests(reads: tuple[np.ndarray, np.ndarray], bank: tuple[np.ndarray, dict[str, np.ndarray]],
                  rate: float, window_s: float, warmup_s: float = 0.0, seed: int = 0) -> Requests:
    """Requests for ``warmup_s + window_s`` at ``rate``/s: the trace's reads in order (cycled if too few)
    arriving as a Poisson process. Not the trace's own pacing rescaled: its timestamps are whole
    milliseconds at ~1,000 reads/s, so slowed to a few requests/s, equal timestamps would turn into
    bursts of simultaneous requests that no real ranking tier sees."""
    users, times = reads
    n = max(math.ceil(rate * (warmup_s + window_s)), 2)
    idx = np.arange(n) % len(users)
    laps = np.arange(n) // len(users)
    t = times[idx] + laps * (int(times[-1] - times[0]) + 1)
    gaps = np.random.default_rng(seed).exponential(1e9 / rate, n)
    offsets = (np.cumsum(gaps) - gaps[0]).astype(np.int64)
    measured_from = min(int(np.searchsorted(offsets, int(warmup_s * 1e9))), n - 1)
    return Requests(users[idx], t, offsets, bank[0], bank[1], measured_from)


def _sample_users(users: np.ndarray, first: int, count: int) -> np.ndarray:
    distinct = users[np.sort(np.unique(users, return_index=True)[1])]
    return distinct[first : first + count]


def measure_wire(client: NodeClient, wl: WorkloadLike, fmt: str, reads: tuple[np.ndarray, np.ndarray],
                 cfg: E2EConfig, last_n: int | None = None) -> tuple[dict[str, Any], Any]:
    """Bytes per request of ``last_n`` (default ``seq_len``) events for both formats and all codecs;
    returns (measurements, the arm format's dictionary). Dictionaries are trained on
    ``dict_train_users`` users, sizes measured on ``wire_sample_users`` others. An arm that reads no
    events (a summary-only model) has nothing to compress: zero bytes and no dictionary."""
    last_n = cfg.seq_len if last_n is None else last_n
    sample = _sample_users(reads[0], 0, cfg.wire_sample_users)
    train = _sample_users(reads[0], cfg.wire_sample_users, cfg.dict_train_users)
    if last_n == 0:
        nothing = {"requests": 0, "raw": 0.0, "zstd": 0.0, "zstd_dict": 0.0,
                   "saving_pct": {"zstd": None, "zstd_dict": None}}
        return {"format": fmt, "by_format": {f: dict(nothing) for f in wire.FORMATS}, "sample_users": 0,
                "train_users": 0, "mean_events_per_request": 0.0, "dictionary_bytes": 0,
                "zstd_level": cfg.zstd_level, "note": "the arm reads no events: only its cached vector travels"}, None

    def columns(users: np.ndarray) -> list[dict[str, np.ndarray]]:
        return [wire.decode(client.call(FETCH, users[i : i + 1], last_n, fmt, "raw")[0], wl.schema, fmt)
                for i in range(len(users))]

    train_cols, sample_cols = columns(train), columns(sample)
    by_format, dicts = {}, {}
    for f in wire.FORMATS:
        dicts[f] = wire.train_dictionary([wire.encode(c, wl.schema, f) for c in train_cols], cfg.dict_bytes,
                                         cfg.zstd_level)
        by_format[f] = wire.measure_sizes([wire.encode(c, wl.schema, f) for c in sample_cols], dicts[f],
                                          cfg.zstd_level)
    events = [len(c[wl.schema.time_field]) for c in sample_cols]
    info = {"format": fmt, "by_format": by_format, "sample_users": len(sample), "train_users": len(train),
            "mean_events_per_request": float(np.mean(events)) if events else 0.0,
            "dictionary_bytes": len(dicts[fmt].as_bytes()), "zstd_level": cfg.zstd_level}
    return info, dicts[fmt]


def arm_events(arm: Arm, cfg: E2EConfig) -> int:
    """Events arm ``arm`` reads per request: its own N, else the cached model's default, else ``seq_len``."""
    if arm.events is not None:
        return arm.events
    return DEFAULT_ONLINE_EVENTS.get(arm.model, cfg.seq_len)


def backfill_counts(wl: WorkloadLike) -> dict[int, int]:
    """Events per user in the backfill (what a summary made right after the load covers)."""
    counts: dict[int, int] = {}
    for uids, _ in wl.iter_backfill(chunk_events=250_000):
        users, n = np.unique(uids, return_counts=True)
        for u, c in zip(users.tolist(), n.tolist(), strict=True):
            counts[u] = counts.get(u, 0) + c
    return counts


def run_arm(wl: WorkloadLike, store: str, model: str, cfg: E2EConfig, reads: tuple[np.ndarray, np.ndarray],
            bank: tuple[np.ndarray, dict[str, np.ndarray]], store_dir: str, hdr_dir: str | None = None,
            progress: Progress | None = None, events: int | None = None,
            label: str | None = None) -> tuple[dict[str, Any], DriveResult, Requests]:
    """Measure one (store, model) arm reading ``events`` newest events per request (default: see
    :func:`arm_events`); returns (its run block, the measured run, its requests)."""
    report = progress or (lambda phase, done, total: None)
    arm = Arm(store, model, events)
    n_events = arm_events(arm, cfg)
    cached = model in ONLINE_LENGTH_FIELD
    shutil.rmtree(store_dir, ignore_errors=True)
    os.makedirs(store_dir)
    keep = cfg.seq_len if cached else max(n_events, 1)
    opts, warnings = store_options(store, RunConfig(io=cfg.io, max_len=keep, dram_budget_bytes=cfg.dram_budget_bytes),
                                   store_dir)
    fmt = wire.wire_format(store)
    policy = RefreshPolicy(every_events=cfg.refresh_every, on_conversion=cfg.refresh_on_conversion)
    refresh: dict[str, Any] | None = None
    with NodeClient(store, store_dir, wl.schema, opts, cpus=cfg.node_cpus) as client:
        load_backfill(client, wl.iter_backfill(chunk_events=250_000), lambda done: report("load", done, None))
        codec = cfg.wire_codec if n_events else "raw"   # no events, nothing to compress
        ranker = RankerStage(model, n_events, wl.schema, fmt, codec, None, device=cfg.device,
                             seed=cfg.seed, history_len=cfg.seq_len, vector_dtype=cfg.vector_dtype,
                             dtype=cfg.dtype, compiled=cfg.compiled)
        counts = backfill_counts(wl)
        covered: dict[int, int] = {}
        if cached:
            layout = client.call("open_vectors", ranker.vector_dim, cfg.vector_dtype)
            first_live = int(reads[1][0]) if len(reads[1]) else 0
            initial = initial_refresh(client, ranker, counts, first_live, policy,
                                      lambda done: report("summarise", done, len(counts)))
            covered.update(counts)
            refresh = {"initial": initial, "layout": layout}
        if cfg.refresh_ops:
            live = live_refresh(client, ranker if cached else None, wl.iter_live(chunk_ops=policy.batch_ops),
                                counts, covered, policy, cfg.refresh_ops,
                                lambda done: report("live ops", done, cfg.refresh_ops))
            if refresh is not None:
                refresh["live"] = live
        client.call("flush")
        stored = _stored_bytes(client, counts)
        report("wire", 0, None)
        wire_info, dictionary = measure_wire(client, wl, fmt, reads, cfg, n_events)
        if dictionary is not None:
            client.call("wire_dict", dictionary.as_bytes(), cfg.zstd_level)
            ranker.set_dictionary(dictionary)
        # Prime the path (JIT, allocator, file handles) so the warm-up is spent warming, not compiling.
        drive(client, ranker, make_requests(reads, bank, cfg.rate, 0.0, 1.0), top_k=cfg.top_k)
        reqs = make_requests(reads, bank, cfg.rate, cfg.window_s, cfg.warmup_s, seed=cfg.seed)
        result = drive(client, ranker, reqs, top_k=cfg.top_k, max_batch=cfg.max_batch,
                       max_wait_ms=cfg.max_wait_ms, progress=lambda done: report("run", done, len(reqs)))

        def step_s(rate: float) -> float:  # at least 15 requests, so a step's p99 is not one unlucky request
            return max(cfg.search_step_s, SEARCH_MIN_REQUESTS / rate)

        def run_at(rate: float) -> DriveResult:
            report("search", 0, None)
            return drive(client, ranker, make_requests(reads, bank, rate, step_s(rate), 0.5, seed=cfg.seed),
                         top_k=cfg.top_k, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                         abort_after_s=max(1.0, 10 * cfg.budget_ms / 1e3))

        max_rate, steps = (search_max_rate(run_at, cfg.budget_ms, start_rate=cfg.search_start_rate,
                                           time_budget_s=cfg.search_s, step_s=step_s)
                           if cfg.search_s > 0 else (None, []))
        store_config = client.store_config
    label = label or arm.label
    if hdr_dir:
        for stage, values in result.stages_ns.items():
            write_interval_log(os.path.join(hdr_dir, f"{label}.{stage}.hlog"), np.maximum(values // 1000, 1),
                               result.done_ns, result.start_ns, tag=f"{label}.{stage}")
    summary = result.summary()
    valid = result.completed and not result.grew
    if not valid:
        warnings.append(f"{label}: the pipeline fell behind at {cfg.rate:g} requests/s (latency grew or "
                        f"requests went unanswered): percentiles describe an overload; lower --rate")
    if cfg.search_s > 0 and max_rate is None:
        fwd = summary["forward"]["p99_ms"]
        warnings.append(f"{label}: no searched rate kept total p99 within {cfg.budget_ms:g} ms"
                        + (f"; the forward alone takes {fwd:.0f} ms at p99 on {ranker.device}, so no rate can: "
                           f"fewer candidates, a faster device or a larger budget would" if fwd > cfg.budget_ms
                           else f" (lowest tried: {min(s['rate_per_s'] for s in steps):g}/s)" if steps else ""))
    ranker_info = ranker.describe()
    run = {
        "store": store, "model": model, "arm": label, "events_per_request": n_events, "cached": cached,
        # Measured requests of users with no cached summary yet: scored against zeros (a cold start).
        "requests_without_cached_vector": int((result.vector_bytes == 0).sum()) if cached else None,
        "device": ranker_info["device"], "seq_len": n_events, "history_len": cfg.seq_len if cached else n_events,
        "store_max_len": keep,
        "candidates": cfg.candidates, "top_k": cfg.top_k, "rate_per_s": cfg.rate,
        "batching": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms},
        "stages": {s: {k: summary[s][k] for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")}
                   for s in STAGES},
        "share_of_budget_pct": {s: 100.0 * summary[s]["p99_ms"] / cfg.budget_ms for s in STAGES},
        "max_rate_within_budget_per_s": max_rate,
        "flops": _request_flops(model, ranker.config, cfg.candidates),
        "stored": stored,
        "refresh": refresh,
        "wire_bytes": {k: wire_info["by_format"][fmt].get(k) for k in wire.CODECS},
        "wire": {**wire_info, "codec_on_data_path": codec,
                 "live_mean_bytes": float(result.wire_bytes.mean()) if len(result.wire_bytes) else None,
                 "vector_bytes_per_request": float(result.vector_bytes.mean()) if len(result.vector_bytes) else 0.0,
                 "node_encode_compress_ms": {"p50": float(np.percentile(result.wire_encode_ns, 50)) / 1e6,
                                             "p99": float(np.percentile(result.wire_encode_ns, 99)) / 1e6}
                 if len(result.wire_encode_ns) else None,
                 "counted_in": "encode + compression: fetch stage (in the node); decompression + parsing: "
                               "decode stage (in the ranker)"},
        "diagnostics": {"dispatch_lag_ms": _ms(result.dispatch_lag_ns),
                        "ranker_wait_ms": _ms(result.stages_ns["queue"] - result.dispatch_lag_ns),
                        "why": "queue = dispatch lag (load generator late) + waiting for the ranker"},
        "budget_ms": cfg.budget_ms, "valid": valid, "measured_requests": len(result.stages_ns["total"]),
        "mean_events_per_request": float(result.events.mean()) if len(result.events) else 0.0,
        "rate_search": {"time_budget_s": cfg.search_s, "step_s": cfg.search_step_s, "steps": steps},
        "ranker": ranker_info, "store_config": store_config, "warnings": warnings,
        "note": "untrained model (random weights): latency only, scores carry no meaning",
    }
    return run, result, reqs


def _stored_bytes(client: NodeClient, counts: dict[int, int]) -> dict[str, Any]:
    """Bytes the store holds per user: on disk (all files, events and cached vectors) and the vectors'."""
    disk = client.call("disk_bytes")
    users = max(len(counts), 1)
    vectors = client.call("vector_stats") or {}
    return {"users": len(counts), "disk_bytes": disk, "disk_bytes_per_user": disk.get("total", 0) / users,
            "vectors": vectors}


def _request_flops(model: str, config: Any, candidates: int) -> dict[str, Any] | None:
    try:
        from rankers.flops import request_flops
    except ImportError:
        return None
    return request_flops(model, config, candidates)


def _ms(values_ns: np.ndarray) -> dict[str, float] | None:
    if not len(values_ns):
        return None
    return {f"p{p:g}": float(np.percentile(values_ns, p)) / 1e6 for p in (50, 99)} | {"max": float(values_ns.max()) / 1e6}


def arm_labels(arms: Sequence[Arm], cfg: E2EConfig) -> list[str]:
    """``store+model`` per arm, with ``@N`` where two arms share a store and model."""
    plain = [a.label for a in arms]
    return [f"{a.label}@{arm_events(a, cfg)}" if plain.count(a.label) > 1 else a.label for a in arms]


def run_e2e(wl: WorkloadLike, cfg: E2EConfig, out_dir: str, arms: Sequence[Arm | tuple[str, str]] = DEFAULT_ARMS, *,
            progress: Progress | None = None, keep_stores: bool = False) -> dict[str, Any]:
    """Measure every arm on the same requests and candidates; write ``out_dir/e2e.json`` and ``hdr/``."""
    arms = [a if isinstance(a, Arm) else Arm(*a) for a in arms]
    labels = arm_labels(arms, cfg)
    if len(set(labels)) < len(labels):
        raise ValueError(f"two arms are the same (store, model, N): {labels}")
    hdr_dir = os.path.join(out_dir, "hdr")
    os.makedirs(hdr_dir, exist_ok=True)
    reads = collect_reads(wl)
    bank = candidate_bank(wl, cfg.candidates, seed=cfg.seed)
    runs = []
    for arm, label in zip(arms, labels, strict=True):
        run, _, _ = run_arm(wl, arm.store, arm.model, cfg, reads, bank, os.path.join(out_dir, "stores", label),
                            hdr_dir, progress=(lambda p, d, t, a=label: progress(f"{a}: {p}", d, t))
                            if progress else None, events=arm.events, label=label)
        runs.append(run)
    if not keep_stores:
        shutil.rmtree(os.path.join(out_dir, "stores"), ignore_errors=True)
    doc = {"budget_ms": cfg.budget_ms, "machine": machine_info(out_dir), "workload": wl.manifest,
           "config": asdict(cfg), "runs": runs,
           "hdr_logs": sorted(os.path.join("hdr", f) for f in os.listdir(hdr_dir)),
           "warnings": [w for r in runs for w in r["warnings"]],
           "paper": "LASER section 3.5.2: ~40% less bandwidth with dictionary zstd (on embeddings between "
                    "CPU and GPU workers; here: the id sequences from storage node to ranker)"}
    write_json(out_dir, "e2e", doc)
    return doc
