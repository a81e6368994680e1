"""``storagebench compare``: a store shoot-out on one workload, with costs."""

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


@click.command("compare")
@click.option("--store", "stores", multiple=True,
              help="A store to compare (repeat; any registered store: seqvault, rocksdb_lastn, rocksdb_packed, "
                   "redis_lastn, memory). Default: seqvault, rocksdb_lastn and redis_lastn.")
@cluster_options
@replay_options(default_out="results/compare")
@click.option("--floor/--no-floor", default=True, show_default=True,
              help="Also measure the harness floor: the null store through the same node and replay path.")
@click.option("--price-core-hour", type=click.FloatRange(min=0), default=None,
              help="USD per core-hour (default $0.031611: GCE N2 vCPU, us-central1, on-demand).")
@click.option("--price-dram-gib-month", type=click.FloatRange(min=0), default=None,
              help="USD per GiB-month of DRAM (default $3.09: GCE N2 memory $0.004237/GiB-h x 730 h).")
@click.option("--price-ssd-tib-month", type=click.FloatRange(min=0), default=None,
              help="USD per TiB-month of SSD (default $81.92: GCE Local SSD $0.080/GiB-month).")
@click.option("--fleet-users", type=click.FloatRange(min=1), default=100e6, show_default=True,
              help="Users the --target-qps load comes from: a million users bring target-qps / fleet-users "
                   "x 1e6 ops/s.")
def compare(stores: tuple[str, ...], floor: bool, price_core_hour: float | None, price_dram_gib_month: float | None,
            price_ssd_tib_month: float | None, fleet_users: float, **replay: Any) -> None:
    """Measure several stores on one workload and print one table with what each costs.

    Every store runs in its own storage-node process, exactly as in `table1`: bulk load, open-loop
    replay, latency from intended start, validity per op type, N interleaved repeats with medians
    and [min-max], cross-check of every user's sequence between the stores. SeqVault (when listed)
    runs first and its DRAM sets the RocksDB block caches. The table adds DRAM bytes per user, CPU
    µs per op and the cost per million users per month (CPU + DRAM + SSD) at the given prices.
    Writes OUT/compare.json (`compare.rows` keyed by store) and OUT/compare.csv; a store that
    returned a different sequence than the others makes the run exit 1.

    Example: storagebench compare --store seqvault --store rocksdb_lastn --store redis_lastn --repeats 3
    """
    from dataclasses import replace

    from storagebench.correctness import CorrectnessError
    from storagebench.experiments.compare import DEFAULT_STORES, Prices, render_compare, run_compare

    stores = stores or DEFAULT_STORES
    check_stores(stores)
    prices = Prices()
    for field, value in (("core_hour_usd", price_core_hour), ("dram_gib_month_usd", price_dram_gib_month),
                         ("ssd_tib_month_usd", price_ssd_tib_month)):
        if value is not None:
            prices = replace(prices, **{field: value}, source="given on the command line (others: " + prices.source + ")")
    console = table_console()
    cfg, wl = setup_replay(replay)
    out_dir = replay["out_dir"]
    try:
        doc = run_compare(wl, cfg, stores, out_dir, repeats=replay["repeats"], floor=floor, prices=prices,
                          fleet_users=fleet_users, keep_stores=replay["keep_stores"], console=console,
                          cluster=cluster_spec(replay))
    except CorrectnessError as e:
        console.print(f"[red bold]{e}[/red bold]\n(no result file written: the run's figures describe a store "
                      f"that returned wrong data)")
        sys.exit(1)
    render_compare(doc, console)
    if doc.get("crosscheck_failed"):
        console.print(f"[red bold]{doc['crosscheck']['error']}[/red bold]")
        sys.exit(1)
    console.print(f"results: {os.path.join(out_dir, 'compare.json')}, compare.csv, hdr/")
