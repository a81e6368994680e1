"""Options shared by ``storagebench run`` and ``storagebench table1``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from storagebench.experiments.run import DEFAULT_TARGET_QPS, DEFAULT_TARGET_UTILISATION, RunConfig


def replay_options(default_out: str) -> Callable:
    """Decorate a click command with the workload, I/O, replay and sizing options."""
    opts = [
        click.option("--workload", "workload_dir", type=click.Path(exists=True, file_okay=False),
                     help="A saved workload directory (`storagebench workload generate`). Default: generate one "
                          "at --scale."),
        click.option("--scale", type=click.Choice(["small", "medium", "large"]), default="small", show_default=True,
                     help="Workload preset, replay speed and window. small: 4,000 users, 0.2x the trace "
                          "(~240 ops/s), 25 s warm-up + 25 s window per store (Table 1 with --repeats 3: "
                          "~13 min on 2 cores / 24 GiB); medium and large are for bigger machines."),
        click.option("--users", type=click.IntRange(min=1), help="Override the preset's number of users."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Workload and sampling seed."),
        click.option("--io", type=click.Choice(["direct", "buffered"]), default="direct", show_default=True,
                     help="direct: both stores bypass the page cache (SeqVault O_DIRECT, RocksDB direct reads "
                          "with an equal block cache), so the SSD path is measured rather than a DRAM copy of "
                          "the whole data set; falls back to buffered with a warning where O_DIRECT is refused."),
        click.option("--speed", type=click.FloatRange(min=0, min_open=True),
                     help="Replay at the trace's own pace times this (default: per scale, 0.2 for small)."),
        click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Replay at this mean rate in ops/s instead (burstiness kept)."),
        click.option("--warmup-s", type=click.FloatRange(min=0), help="Warm-up seconds, not measured (default: per scale)."),
        click.option("--window-s", type=click.FloatRange(min=0, min_open=True), help="Measured window in seconds (default: per scale)."),
        click.option("--max-len", type=click.IntRange(min=1), default=1000, show_default=True,
                     help="N: events each store keeps and each read returns per user."),
        click.option("--rocksdb-profile", type=click.Choice(["tuned", "default"]), default="tuned", show_default=True,
                     help="RocksDB options. tuned: LZ4 above, ZSTD at the bottommost level, filters only where "
                          "a lookup can miss (chosen by a compression x blob x block-size sweep; see README). "
                          "default: LZ4 on every level, as the first wave ran. Every option goes into the "
                          "result file."),
        click.option("--compression", type=click.Choice(["lz4", "zstd", "none"]), default=None,
                     help="Override the profile: this RocksDB block compression on every level."),
        click.option("--target-qps", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TARGET_QPS, show_default=True,
                     help="Production load (ops/s, the workload's read/append mix) the CPU-cores column is "
                          "sized for."),
        click.option("--target-utilisation", type=click.FloatRange(min=0, max=1, min_open=True), default=DEFAULT_TARGET_UTILISATION, show_default=True,
                     help="CPU utilisation the fleet is sized to run at."),
        click.option("--node-cpus", default="auto", show_default=True,
                     help="CPUs the storage node is pinned to: 'auto' (all but CPU 0, which the load generator "
                          "gets), 'all' (no pinning) or a list like '1' or '2-3'."),
        click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Measure every store N times, interleaved, rotating the order each round (A B C, "
                          "B C A, C A B); figures are medians with [min, max]."),
        click.option("--check-share", type=click.FloatRange(0, 1), default=0.01, show_default=True,
                     help="Share of in-window reads that return their data and are checked against the "
                          "appends acknowledged before they were sent (read-your-writes)."),
        click.option("--keep-awake/--no-keep-awake", default=True, show_default=True,
                     help="Run a SCHED_IDLE busy loop on each node CPU (its own process, not counted in the "
                          "store's CPU) so an idle vCPU does not halt between requests and add its wake-up "
                          "to every latency. Only when the node is pinned (--node-cpus)."),
        click.option("--backlog-threshold-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
                     help="Flag the run if read latency grows by more than this over the window."),
        click.option("--keep-stores", is_flag=True, help="Keep the store directories under OUT/stores."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default=default_out, show_default=True,
                     help="Result directory."),
    ]

    def decorate(f: Callable) -> Callable:
        for o in reversed(opts):
            f = o(f)
        return f

    return decorate


def cluster_options(f: Callable) -> Callable:
    """--shards, --cluster, --generators-on and --node-host (run, table1, compare)."""
    opts = [
        click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Partition users by a stable hash over K storage nodes, each with its own load "
                          "generator, as Ray actors; the row printed is the merged cluster row (HDR "
                          "histograms added, CPU and disk summed) with the shards beside it. K > 1 without "
                          "--cluster starts an embedded Ray runtime (--cluster local)."),
        click.option("--cluster", "cluster_address", default=None, metavar="local|auto|ray://HOST:PORT|HOST:PORT",
                     help="The Ray runtime the shards run on: local (embedded, started and stopped here, "
                          "loopback only), auto (the cluster this machine joined with `ray start`), "
                          "ray://HOST:PORT (Ray Client) or HOST:PORT (a cluster's GCS address). Needs "
                          "pip install 'storagebench[cluster]'."),
        click.option("--generators-on", type=click.Choice(["same", "other"]), default="same", show_default=True,
                     help="same: each shard's load generator on its node's Ray node (one placement bundle); "
                          "other: every node and generator on a Ray node of its own (needs 2K nodes)."),
        click.option("--node-host", default="127.0.0.1", show_default=True,
                     help="Address the shards' storage nodes listen on. Loopback keeps the whole run (Ray "
                          "included) on 127.0.0.1; name an interface (or 0.0.0.0) for a multi-host cluster."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def cluster_spec(replay: dict[str, Any]) -> Any:
    """The ClusterSpec the options ask for, or None for a single-node run (no Ray)."""
    shards, address = replay.get("shards", 1), replay.get("cluster_address")
    if shards == 1 and address is None:
        return None
    from storagebench.cluster import ClusterSpec

    try:
        return ClusterSpec(shards=shards, address=address or "local", generators_on=replay["generators_on"],
                           node_host=replay["node_host"])
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def parse_cpus(spec: str) -> tuple[list[int] | None, list[int] | None]:
    """(node CPUs, generator CPUs) from --node-cpus."""
    available = sorted(os.sched_getaffinity(0))
    if spec == "all":
        return None, None
    if spec == "auto":
        if len(available) < 2:
            return None, None
        return available[1:], available[:1]
    cpus: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            cpus += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise click.BadParameter(f"{spec!r}: use 'auto', 'all' or CPU numbers like '1' or '2-3'") from None
    if not set(cpus) <= set(available):
        raise click.BadParameter(f"CPUs {sorted(set(cpus) - set(available))} are not available "
                                 f"(this process may use {available})")
    rest = [c for c in available if c not in cpus]
    return cpus, (rest or None)


def load_workload(workload_dir: str | None, scale: str, users: int | None, seed: int) -> Any:
    from workloads import GeneratorConfig, generate, open_workload

    if workload_dir:
        return open_workload(workload_dir)
    overrides: dict[str, Any] = {"seed": seed}
    if users is not None:
        overrides["users"] = users
    return generate(GeneratorConfig.preset(scale, **overrides))


def build_config(scale_defaults: dict[str, Any], *, io: str, speed: float | None, rate: float | None,
                 warmup_s: float | None, window_s: float | None, max_len: int, compression: str | None,
                 rocksdb_profile: str, target_qps: float, target_utilisation: float, node_cpus: list[int] | None,
                 backlog_threshold_ms: float, seed: int, check_share: float, keep_awake: bool,
                 dram_budget_bytes: int = 64 << 20) -> RunConfig:
    if speed is not None and rate is not None:
        raise click.UsageError("give --speed or --rate, not both")
    rocks: dict[str, Any] = {"profile": rocksdb_profile}
    if compression is not None:
        rocks["compression_all_levels"] = compression
    try:
        return RunConfig(
            io=io, max_len=max_len, rate=rate,
            speed=None if rate is not None else (speed or scale_defaults.get("speed", 1.0)),
            warmup_s=scale_defaults["warmup_s"] if warmup_s is None else warmup_s,
            window_s=scale_defaults["window_s"] if window_s is None else window_s,
            node_cpus=node_cpus, keep_awake=keep_awake, check_share=check_share,
            crosscheck_users=scale_defaults.get("crosscheck_users", 200), dram_budget_bytes=dram_budget_bytes,
            store_options={"rocksdb_lastn": rocks, "rocksdb_packed": rocks},
            backlog_threshold_ms=backlog_threshold_ms, target_qps=target_qps,
            target_utilisation=target_utilisation, seed=seed)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def table_console() -> Any:
    """A console for result tables: full width in tox, CI logs and pipes (not squeezed to 80 columns)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def check_stores(stores: tuple[str, ...] | list[str]) -> None:
    """Every name is a registered store that can run here (a missing server fails now, not after
    the other stores were measured)."""
    from storagebench.stores import StoreError, store_class, store_names

    known = store_names()
    for s in stores:
        if s not in known:
            raise click.BadParameter(f"unknown store {s!r}; available: {', '.join(known)}", param_hint="--store")
    for s in dict.fromkeys(stores):
        try:
            store_class(s).preflight()
        except StoreError as e:
            raise click.UsageError(f"--store {s}: {e}") from None


def setup_replay(replay: dict[str, Any], **overrides: Any) -> tuple[RunConfig, Any]:
    """The run configuration and workload from the options of :func:`replay_options` (``overrides``
    replace some, e.g. the rate), with the load generator pinned to its CPUs."""
    from storagebench.experiments.table1 import SCALES

    r = {**replay, **overrides}
    node, generator = parse_cpus(r["node_cpus"])
    if cluster_spec(r) is not None:
        # Ray places the shards; pinning this process would pin the runtime it starts (and every
        # worker) to the generator's CPU.
        if r["node_cpus"] not in ("auto", "all"):
            raise click.UsageError("--node-cpus does not apply to a sharded run: Ray places the shards "
                                   "(each reserves its CPUs); leave it at auto")
        node, generator = None, None
    cfg = build_config(SCALES[r["scale"]], io=r["io"], speed=r["speed"], rate=r["rate"], warmup_s=r["warmup_s"],
                       window_s=r["window_s"], max_len=r["max_len"], compression=r["compression"],
                       rocksdb_profile=r["rocksdb_profile"], target_qps=r["target_qps"],
                       target_utilisation=r["target_utilisation"], node_cpus=node,
                       backlog_threshold_ms=r["backlog_threshold_ms"], seed=r["seed"], check_share=r["check_share"],
                       keep_awake=r["keep_awake"], dram_budget_bytes=r.get("dram_budget_bytes", 64 << 20))
    wl = load_workload(r["workload_dir"], r["scale"], r["users"], r["seed"])
    if generator:
        os.sched_setaffinity(0, generator)
    return cfg, wl
