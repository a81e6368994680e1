"""``storagebench table1``: the paper's Table 1, measured on this machine."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console

from storagebench.cli.replay_options import build_config, load_workload, parse_cpus, replay_options


@click.command("table1")
@replay_options(default_out="results/table1")
@click.option("--floor/--no-floor", default=True, show_default=True,
              help="Also measure the harness floor: the null store through the same node and replay path.")
def table1(workload_dir: str | None, scale: str, users: int | None, seed: int, io: str, speed: float | None,
           rate: float | None, warmup_s: float | None, window_s: float | None, max_len: int,
           compression: str | None, rocksdb_profile: str, target_qps: float, target_utilisation: float,
           node_cpus: str, repeats: int, check_share: float, keep_awake: bool, backlog_threshold_ms: float,
           keep_stores: bool, out_dir: str, floor: bool) -> None:
    """Replay one workload against RocksDB LastN, RocksDB packed and SeqVault; print Table 1.

    Each store runs in its own storage-node process; the backfill is bulk-loaded, then the live
    stream is replayed open-loop (latency from each op's intended start) through a warm-up and a
    measured window. SeqVault runs first and its DRAM use sets both RocksDB block caches. With
    --repeats N the stores run N rounds, interleaved and rotated, and every figure is a median
    with its min-max. The harness floor row is the null store on the same path. The reduction row
    is printed only when every row is valid (no backlog, every op answered, offered rate achieved,
    for reads and appends separately). Writes OUT/table1.json, OUT/table1.csv and OUT/hdr/*.hlog.
    Exits non-zero if the stores disagree on any sequence.
    """
    from storagebench.correctness import CorrectnessError
    from storagebench.crosscheck import CrossCheckError
    from storagebench.experiments.table1 import SCALES, render_tables, run_table1

    console = Console()
    if not console.is_terminal:  # tox, CI logs, pipes: do not squeeze the tables to 80 columns
        console = Console(width=160)
    node, generator = parse_cpus(node_cpus)
    cfg = build_config(SCALES[scale], io=io, speed=speed, rate=rate, warmup_s=warmup_s, window_s=window_s,
                       max_len=max_len, compression=compression, rocksdb_profile=rocksdb_profile,
                       target_qps=target_qps, target_utilisation=target_utilisation, node_cpus=node,
                       backlog_threshold_ms=backlog_threshold_ms, seed=seed, check_share=check_share,
                       keep_awake=keep_awake)
    wl = load_workload(workload_dir, scale, users, seed)
    if generator:
        os.sched_setaffinity(0, generator)
    try:
        doc = run_table1(wl, cfg, out_dir, repeats=repeats, floor=floor, keep_stores=keep_stores, console=console)
    except CrossCheckError as e:
        console.print(f"[red bold]{e}[/red bold]\n(results written to {out_dir} with the mismatch recorded)")
        sys.exit(1)
    except CorrectnessError as e:
        console.print(f"[red bold]{e}[/red bold]\n(no result file written: the run's figures describe a store "
                      f"that returned wrong data)")
        sys.exit(1)
    render_tables(doc, console)
    console.print(f"results: {os.path.join(out_dir, 'table1.json')}, table1.csv, hdr/")
