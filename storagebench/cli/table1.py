"""``storagebench table1``: the paper's Table 1, measured on this machine."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from storagebench.cli.replay_options import (
    cluster_options,
    cluster_spec,
    replay_options,
    setup_replay,
    table_console,
)


@click.command("table1")
@cluster_options
@replay_options(default_out="results/table1")
@click.option("--floor/--no-floor", default=True, show_default=True,
              help="Also measure the harness floor: the null store through the same node and replay path.")
def table1(floor: bool, **replay: Any) -> None:
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
    from storagebench.experiments.table1 import render_tables, run_table1

    console = table_console()
    cfg, wl = setup_replay(replay)
    out_dir = replay["out_dir"]
    try:
        doc = run_table1(wl, cfg, out_dir, repeats=replay["repeats"], floor=floor,
                         keep_stores=replay["keep_stores"], console=console, cluster=cluster_spec(replay))
    except CrossCheckError as e:
        console.print(f"[red bold]{e}[/red bold]\n(results written to {out_dir} with the mismatch recorded)")
        sys.exit(1)
    except CorrectnessError as e:
        console.print(f"[red bold]{e}[/red bold]\n(no result file written: the run's figures describe a store "
                      f"that returned wrong data)")
        sys.exit(1)
    render_tables(doc, console)
    console.print(f"results: {os.path.join(out_dir, 'table1.json')}, table1.csv, hdr/")
