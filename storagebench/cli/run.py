"""``storagebench run``: measure one store on one workload (the general tool behind ``table1``)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from storagebench.cli.replay_options import (
    check_stores,
    cluster_options,
    cluster_spec,
    replay_options,
    setup_replay,
    table_console,
)


@click.command("run")
@click.option("--store", "stores", multiple=True, required=True,
              help="Store to measure: rocksdb_lastn, rocksdb_packed, seqvault, redis_lastn (Debian's "
                   "redis-server, started by the binding, AOF everysec), memory (an in-process dict) or "
                   "null (the harness floor: prebuilt reads, appends dropped). Repeat to measure several in "
                   "turn and cross-check their answers.")
@click.option("--dram-budget-mb", type=click.FloatRange(min=0, min_open=True), default=64.0, show_default=True,
              help="DRAM budget given to every store (RocksDB: block cache size).")
@cluster_options
@replay_options(default_out="results/run")
def run(stores: tuple[str, ...], dram_budget_mb: float, **replay: Any) -> None:
    """Bulk-load, replay open-loop and measure the given store(s); write OUT/run.json and OUT/run.csv.

    Same measurements as `table1`: latency per op type from intended start and as service time
    (HdrHistogram, plus interval logs in OUT/hdr), node CPU over the window, disk sampled every
    second, /proc io, validity per op type. `--store null` measures the harness's own floor.
    """
    from storagebench.correctness import CorrectnessError
    from storagebench.experiments.table1 import measure_stores, render_tables
    from storagebench.results import write_result

    check_stores(stores)
    console = table_console()
    cfg, wl = setup_replay(replay, dram_budget_bytes=int(dram_budget_mb * (1 << 20)))
    out_dir = replay["out_dir"]
    try:
        doc = measure_stores(wl, cfg, stores, out_dir, repeats=replay["repeats"], keep_stores=replay["keep_stores"],
                             console=console, cluster=cluster_spec(replay))
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
