"""``storagebench run``: measure one store on one workload (the general tool behind ``table1``)."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console

from storagebench.cli.replay_options import build_config, load_workload, parse_cpus, replay_options


@click.command("run")
@click.option("--store", "stores", multiple=True, required=True,
              help="Store to measure: rocksdb_lastn, rocksdb_packed, seqvault, redis_lastn (Debian's "
                   "redis-server, started by the binding, AOF everysec), memory (an in-process dict) or "
                   "null (the harness floor: prebuilt reads, appends dropped). Repeat to measure several in "
                   "turn and cross-check their answers.")
@click.option("--dram-budget-mb", type=click.FloatRange(min=0, min_open=True), default=64.0, show_default=True,
              help="DRAM budget given to every store (RocksDB: block cache size).")
@replay_options(default_out="results/run")
def run(stores: tuple[str, ...], dram_budget_mb: float, workload_dir: str | None, scale: str, users: int | None,
        seed: int, io: str, speed: float | None, rate: float | None, warmup_s: float | None,
        window_s: float | None, max_len: int, compression: str | None, rocksdb_profile: str, target_qps: float,
        target_utilisation: float, node_cpus: str, repeats: int, check_share: float, keep_awake: bool,
        backlog_threshold_ms: float, keep_stores: bool, out_dir: str) -> None:
    """Bulk-load, replay open-loop and measure the given store(s); write OUT/run.json and OUT/run.csv.

    Same measurements as `table1`: latency per op type from intended start and as service time
    (HdrHistogram, plus interval logs in OUT/hdr), node CPU over the window, disk sampled every
    second, /proc io, validity per op type. `--store null` measures the harness's own floor.
    """
    from storagebench.correctness import CorrectnessError
    from storagebench.experiments.table1 import SCALES, measure_stores, render_tables
    from storagebench.results import write_result
    from storagebench.stores import StoreError, store_class, store_names

    known = store_names()
    for s in stores:
        if s not in known:
            raise click.BadParameter(f"unknown store {s!r}; available: {', '.join(known)}", param_hint="--store")
    for s in dict.fromkeys(stores):
        try:
            store_class(s).preflight()  # a missing server fails now, not after the other stores ran
        except StoreError as e:
            raise click.UsageError(f"--store {s}: {e}") from None
    console = Console()
    if not console.is_terminal:  # tox, CI logs, pipes: do not squeeze the tables to 80 columns
        console = Console(width=160)
    node, generator = parse_cpus(node_cpus)
    cfg = build_config(SCALES[scale], io=io, speed=speed, rate=rate, warmup_s=warmup_s, window_s=window_s,
                       max_len=max_len, compression=compression, rocksdb_profile=rocksdb_profile,
                       target_qps=target_qps, target_utilisation=target_utilisation, node_cpus=node,
                       backlog_threshold_ms=backlog_threshold_ms, seed=seed, check_share=check_share,
                       keep_awake=keep_awake, dram_budget_bytes=int(dram_budget_mb * (1 << 20)))
    wl = load_workload(workload_dir, scale, users, seed)
    if generator:
        os.sched_setaffinity(0, generator)
    try:
        doc = measure_stores(wl, cfg, stores, out_dir, repeats=repeats, keep_stores=keep_stores, console=console)
    except CorrectnessError as e:
        console.print(f"[red bold]{e}[/red bold]\n(no result file written: the run's figures describe a store "
                      f"that returned wrong data)")
        sys.exit(1)
    write_result(out_dir, "run", doc)
    render_tables(doc, console)
    if doc.get("crosscheck_failed"):
        console.print(f"[red bold]{doc['crosscheck']['error']}[/red bold]")
        sys.exit(1)
    console.print(f"results: {os.path.join(out_dir, 'run.json')}, run.csv, hdr/")
