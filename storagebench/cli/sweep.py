"""``storagebench sweep``: latency vs offered rate per store, and the highest rate inside an SLO."""

from __future__ import annotations

import os
from typing import Any

import click

from storagebench.cli.replay_options import check_stores, replay_options, setup_replay, table_console


def parse_rates(spec: str | None) -> list[float] | None:
    if spec is None:
        return None
    try:
        rates = [float(r) for r in spec.split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter(f"{spec!r}: give rates in ops/s separated by commas, like 100,200,400",
                                 param_hint="--rates") from None
    if not rates or any(r <= 0 for r in rates):
        raise click.BadParameter(f"{spec!r}: every rate must be > 0 ops/s", param_hint="--rates")
    return rates


@click.command("sweep")
@click.option("--store", "stores", multiple=True, required=True,
              help="Store to sweep (repeat to sweep several in turn; each writes OUT/<store>/sweep.json).")
@click.option("--rates", "rates_spec", help="Offered rates to measure, ops/s, comma-separated (e.g. 100,200,400). "
                                            "Stops after the first step that is not valid (its backlog grew).")
@click.option("--auto", is_flag=True, help="Search for the highest rate whose read P99 stays within --slo-ms: "
                                           "double from --start-rate until a step fails, then bisect.")
@click.option("--slo-ms", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Latency SLO on the reads' P99 from intended start.")
@click.option("--start-rate", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="--auto: the first rate tried, ops/s.")
@click.option("--tolerance", type=click.FloatRange(min=0.01), default=0.15, show_default=True,
              help="--auto: stop when the lowest failing rate is within this fraction above the highest passing one.")
@click.option("--max-steps", type=click.IntRange(min=1), default=12, show_default=True,
              help="--auto: at most this many steps per store.")
@replay_options(default_out="results/sweep")
def sweep(stores: tuple[str, ...], rates_spec: str | None, auto: bool, slo_ms: float, start_rate: float,
          tolerance: float, max_steps: int, **replay: Any) -> None:
    """Replay one workload at rising offered rates against each store; draw its capacity curve.

    Each step is a fresh store, bulk-loaded, then the live stream replayed open-loop at one offered
    rate (the trace's burstiness kept) through the scale's warm-up and window, measured exactly as
    in `run`. A step passes when it is valid (Table 1's rules, for reads and appends apart) and its
    read P99 from intended start is within --slo-ms. Writes OUT/<store>/sweep.json: `steps` (one
    block per rate), `sustainable_ops_per_s` (the highest passing step's achieved rate) and
    `sustainable_ops_per_s_per_core` (per pinned node core). On 2 cores a step takes about a
    minute at the small scale; --auto takes 6-10 steps per store.

    Example: storagebench sweep --store seqvault --store rocksdb_lastn --auto --slo-ms 10
    """
    from storagebench.experiments.sweep import render_sweep, run_sweep

    rates = parse_rates(rates_spec)
    if (rates is None) == (not auto):
        raise click.UsageError("give --rates R1,R2,... or --auto (one of them)")
    if replay["rate"] is not None or replay["speed"] is not None:
        raise click.UsageError("sweep sets the offered rate of every step itself: drop --rate/--speed and use "
                               "--rates or --auto")
    check_stores(stores)
    console = table_console()
    cfg, wl = setup_replay(replay, rate=start_rate, speed=None)
    out_dir, repeats, keep_stores = replay["out_dir"], replay["repeats"], replay["keep_stores"]
    for store in dict.fromkeys(stores):
        store_out = os.path.join(out_dir, store)
        doc = run_sweep(wl, cfg, store, store_out, rates=rates, auto=auto, start_rate=start_rate, slo_ms=slo_ms,
                        tolerance=tolerance, max_steps=max_steps, repeats=repeats, keep_stores=keep_stores,
                        console=console)
        render_sweep(doc, console)
        console.print(f"results: {os.path.join(store_out, 'sweep.json')}, hdr/")
