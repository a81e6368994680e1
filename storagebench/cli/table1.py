"""``storagebench table1``: the paper's Table 1, measured on this machine."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console

from storagebench.cli.replay_options import build_config, load_workload, parse_cpus, replay_options


@click.command("table1")
@replay_options(default_out="results/table1")
def table1(workload_dir: str | None, scale: str, users: int | None, seed: int, io: str, speed: float | None,
           rate: float | None, warmup_s: float | None, window_s: float | None, max_len: int, compression: str,
           target_qps: float, target_utilisation: float, node_cpus: str, workers: int,
           backlog_threshold_ms: float, keep_stores: bool, out_dir: str) -> None:
    """Replay one workload against RocksDB LastN, RocksDB packed and SeqVault; print Table 1.

    Each store runs in its own storage-node process; the backfill is bulk-loaded, then the live
    stream is replayed open-loop (latency from each op's intended start) through a warm-up and a
    measured window. SeqVault runs first and its DRAM use sets both RocksDB block caches. Writes
    OUT/table1.json, OUT/table1.csv and OUT/hdr/*.hlog. Exits non-zero if the stores disagree on
    any sampled sequence.
    """
    from storagebench.crosscheck import CrossCheckError
    from storagebench.experiments.table1 import SCALES, render_tables, run_table1

    console = Console()
    if not console.is_terminal:  # tox, CI logs, pipes: do not squeeze the tables to 80 columns
        console = Console(width=160)
    node, generator = parse_cpus(node_cpus)
    cfg = build_config(SCALES[scale], io=io, speed=speed, rate=rate, warmup_s=warmup_s, window_s=window_s,
                       max_len=max_len, compression=compression, target_qps=target_qps,
                       target_utilisation=target_utilisation, node_cpus=node, workers=workers,
                       backlog_threshold_ms=backlog_threshold_ms, seed=seed)
    wl = load_workload(workload_dir, scale, users, seed)
    if generator:
        os.sched_setaffinity(0, generator)
    try:
        doc = run_table1(wl, cfg, out_dir, keep_stores=keep_stores, console=console)
    except CrossCheckError as e:
        console.print(f"[red bold]{e}[/red bold]\n(results written to {out_dir} with the mismatch recorded)")
        sys.exit(2)
    render_tables(doc, console)
    console.print(f"results: {os.path.join(out_dir, 'table1.json')}, table1.csv, hdr/")
