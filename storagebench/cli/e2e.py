"""``storagebench e2e``: a ranking request end to end (fetch, decode, copy, forward) against a latency budget."""

from __future__ import annotations

import os
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from storagebench.cli.replay_options import load_workload, parse_cpus
from storagebench.e2e_driver import STAGES

DEFAULT_USERS = 1000  # ~0.5M backfill events: loads in seconds, yet many users reach L=1000 events


def _arm(value: str) -> Any:
    from storagebench.experiments.e2e import Arm

    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise click.BadParameter(f"{value!r}: write an arm as STORE:MODEL or STORE:MODEL:N, e.g. seqvault:laser "
                                 "or rocksdb_lastn:transformer:100", param_hint="--arm")
    events = None
    if len(parts) == 3:
        if not parts[2].isdigit():
            raise click.BadParameter(f"{value!r}: N (events read per request) must be a whole number >= 0",
                                     param_hint="--arm")
        events = int(parts[2])
    try:
        return Arm(parts[0], parts[1], events)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--arm") from e


@click.command("e2e")
@click.option("--arm", "arms", multiple=True, metavar="STORE:MODEL[:N]",
              help="A (store, model) pair to measure, reading N newest events per request; repeat. Default: "
                   "rocksdb_lastn:transformer:100 (the paper's production baseline), seqvault:laser:1000, "
                   "seqvault:vista (cached summary only, N=0) and seqvault:llatte:400 (cached user vector + "
                   "the newest 400), on the same workload, requests and candidates. N defaults to --seq-len "
                   "(vista 0, llatte 400).")
@click.option("--workload", "workload_dir", type=click.Path(exists=True, file_okay=False),
              help="A saved workload directory. Default: generate the small preset with --users users.")
@click.option("--users", type=click.IntRange(min=1), default=DEFAULT_USERS, show_default=True,
              help="Users of the generated workload (small preset otherwise).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Workload, candidates and weights seed.")
@click.option("--seq-len", type=click.IntRange(min=1), default=1000, show_default=True,
              help="L: the history length: events an arm reads when it names no N, and what the cached "
                   "models' summaries cover (their stores keep L events).")
@click.option("--candidates", type=click.IntRange(min=1), default=100, show_default=True,
              help="C: candidates scored per request (the workload's range is 100-500). LASER's cost grows "
                   "with C (its attention is target-aware); at 100 its CPU forward is ~60 ms p50 on one core.")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Requests/s of the measured open-loop run (Poisson arrivals, the trace's users). 2: LASER's "
                   "forward (~55 ms on one core here) keeps its core ~10-20% busy, so queueing stays small.")
@click.option("--warmup-s", type=click.FloatRange(min=0), default=5.0, show_default=True)
@click.option("--window-s", type=click.FloatRange(min=0, min_open=True), default=40.0, show_default=True,
              help="Measured seconds of the run at --rate (after --warmup-s).")
@click.option("--budget-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="End-to-end latency budget for total p99 (default 100 ms: a typical online ranking "
                   "stage; the paper frames SeqVault's lower fetch latency as budget freed for the model).")
@click.option("--max-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Dynamic batching: up to this many ready requests per forward (1: no batching).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Dynamic batching: wait at most this long for a batch to fill.")
@click.option("--wire", "wire_codec", type=click.Choice(["raw", "zstd", "zstd_dict"]), default="zstd_dict",
              show_default=True, help="Codec on the node -> ranker data path (all three are measured for "
                                      "bytes either way; compression is timed in fetch, decompression in decode).")
@click.option("--dict-kib", type=click.IntRange(min=1), default=32, show_default=True,
              help="Size of the trained zstd dictionary.")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when torch.cuda.is_available(), else CPU), cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="The model's weights and activations (bf16 pays off on a GPU; on this CPU it is slower).")
@click.option("--compile", "compiled", is_flag=True,
              help="torch.compile the scoring path (first requests compile; falls back to eager with a note).")
@click.option("--threads", type=click.IntRange(min=1),
              help="torch threads (default: the CPUs the ranker is pinned to).")
@click.option("--search-s", type=click.FloatRange(min=0), default=45.0, show_default=True,
              help="Time bound per arm of the search for the highest rate within budget (0: skip).")
@click.option("--search-step-s", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Length of each open-loop run of the search (doubling from 2/s, then bisection; at "
                   "least 15 requests per run).")
@click.option("--io", type=click.Choice(["direct", "buffered"]), default="direct", show_default=True,
              help="Store I/O (direct bypasses the page cache; falls back to buffered with a warning).")
@click.option("--node-cpus", default="auto", show_default=True,
              help="CPUs of the storage node: 'auto' (all but CPU 0, which the ranker gets), 'all' or '1'.")
@click.option("--vector-dtype", type=click.Choice(["fp16", "bf16", "int8"]), default="fp16", show_default=True,
              help="How the cached summaries (vista, llatte) are stored: int8 keeps one scale per vector.")
@click.option("--refresh-every", type=click.IntRange(min=0), default=64, show_default=True,
              help="Refresh policy: recompute a user's summary once it is K events behind (0: never by count).")
@click.option("--refresh-on-conversion/--no-refresh-on-conversion", default=True, show_default=True,
              help="Refresh policy: also recompute after a conversion (collect, share, comment, follow, cart, "
                   "purchase).")
@click.option("--refresh-ops", type=click.IntRange(min=0), default=20_000, show_default=True,
              help="Live operations replayed before the measured run (appends into every arm's store; the "
                   "cached arms' refresh job measures its CPU per event and the staleness reads see).")
@click.option("--keep-stores", is_flag=True, help="Keep the store directories under OUT/stores.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="results/e2e", show_default=True,
              help="Writes OUT/e2e.json and OUT/hdr/<store>+<model>.<stage>.hlog.")
def e2e(arms: tuple[str, ...], workload_dir: str | None, users: int, seed: int, seq_len: int, candidates: int,
        top_k: int, rate: float, warmup_s: float, window_s: float, budget_ms: float, max_batch: int,
        max_wait_ms: float, wire_codec: str, dict_kib: int, device: str, dtype: str, compiled: bool,
        threads: int | None, search_s: float,
        search_step_s: float, io: str, node_cpus: str, vector_dtype: str, refresh_every: int,
        refresh_on_conversion: bool, refresh_ops: int, keep_stores: bool, out_dir: str) -> None:
    """Replay a workload's ranking reads open loop: fetch each user's newest L events from a storage
    node, decode and build features, copy to the device, score C candidates, keep the top k.

    Reports p50/p99/p99.9 per stage (queue, fetch, decode, h2d, forward, total; all from each
    request's intended start), each stage's share of the budget, the highest rate whose total p99
    fits the budget, the bytes per request on the wire raw, with zstd and with a trained zstd
    dictionary, the bytes stored per user, the per-request FLOPs at C, and for the models that cache
    a user summary in the store (vista, llatte) what the refresh job costs per event and how many
    events behind the summary a read sees. Models are untrained (random weights): latency does not
    depend on their values.

    \b
    Example (the four default arms, ~10 minutes on 2 cores):
      storagebench e2e --out results/e2e
      storagebench e2e --arm rocksdb_lastn:transformer:100 --arm seqvault:llatte:400 --vector-dtype int8
    """
    from storagebench.ranker_stage import ONLINE_LENGTH_FIELD, TORCH_MISSING
    from storagebench.stores import store_names
    from storagebench.stores.base import store_class

    try:
        import torch
    except ImportError:
        raise click.ClickException(TORCH_MISSING) from None
    from rankers.registry import MODEL_NAMES
    from storagebench.experiments.e2e import DEFAULT_ARMS, E2EConfig, arm_labels, run_e2e

    pairs = [_arm(a) for a in arms] or list(DEFAULT_ARMS)
    known = store_names()
    for store, model in ((a.store, a.model) for a in pairs):
        if store not in known:
            raise click.BadParameter(f"unknown store {store!r}; available: {', '.join(known)}", param_hint="--arm")
        if model not in MODEL_NAMES:
            raise click.BadParameter(f"unknown model {model!r}; available: {', '.join(MODEL_NAMES)}",
                                     param_hint="--arm")
        if model in ONLINE_LENGTH_FIELD and not store_class(store).keeps_vectors:
            raise click.BadParameter(f"{model} caches a user summary in the store, and {store} keeps no cached "
                                     f"vectors; use seqvault, rocksdb_lastn or rocksdb_packed", param_hint="--arm")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise click.BadParameter(f"{device!r}: use auto, cpu, cuda or cuda:N", param_hint="--device")
    node, ranker_cpus = parse_cpus(node_cpus)
    try:
        cfg = E2EConfig(seq_len=seq_len, candidates=candidates, top_k=top_k, rate=rate, warmup_s=warmup_s,
                        window_s=window_s, budget_ms=budget_ms, max_batch=max_batch, max_wait_ms=max_wait_ms,
                        wire_codec=wire_codec, dict_bytes=dict_kib << 10, device=device, search_s=search_s,
                        search_step_s=search_step_s, io=io, node_cpus=node, seed=seed, vector_dtype=vector_dtype,
                        refresh_every=refresh_every, refresh_on_conversion=refresh_on_conversion,
                        refresh_ops=refresh_ops, dtype=dtype, compiled=compiled)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    labels = arm_labels(pairs, cfg)
    if len(set(labels)) < len(labels):
        raise click.BadParameter(f"the same arm is given twice: {', '.join(labels)}", param_hint="--arm")
    console = Console() if Console().is_terminal else Console(width=160)
    if ranker_cpus:
        os.sched_setaffinity(0, ranker_cpus)
    torch.set_num_threads(threads or len(ranker_cpus or os.sched_getaffinity(0)))
    wl = load_workload(workload_dir, "small", None if workload_dir else users, seed)
    columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        doc = run_e2e(wl, cfg, out_dir, pairs, progress=progress, keep_stores=keep_stores)
    render(doc, console)
    console.print(f"results: {os.path.join(out_dir, 'e2e.json')}, hdr/   "
                  f"(report: storagebench report {out_dir} -o e2e.html)")


def render(doc: dict[str, Any], console: Console) -> None:
    """Per arm: the stage table against the budget, the wire table and the max rate."""
    budget = doc["budget_ms"]
    for run in doc["runs"]:
        r = run["ranker"]
        t = Table(title=f"{run['store']} + {run['model']} on {r['device_name']} ({r['threads']} threads): "
                        f"L={run['seq_len']}, C={run['candidates']}, top {run['top_k']}, "
                        f"{run['rate_per_s']:g} req/s, batch <= {run['batching']['max_batch']}",
                  caption=f"from each request's intended start; {run['measured_requests']} requests; "
                          f"{run['mean_events_per_request']:.0f} events fetched per request on average; "
                          f"{run['note']}")
        for col in ("stage", "p50 ms", "p99 ms", "p99.9 ms", f"p99 share of {budget:g} ms"):
            t.add_column(col, justify="left" if col == "stage" else "right")
        for s in STAGES:
            st = run["stages"][s]
            t.add_row(s, f"{st['p50_ms']:.2f}", f"{st['p99_ms']:.2f}", f"{st['p999_ms']:.2f}",
                      f"{run['share_of_budget_pct'][s]:.1f}%", style="bold" if s == "total" else None)
        console.print(t)
        w = run["wire"]
        wt = Table(title=f"wire, {w['format']} payload (codec on the data path: {w['codec_on_data_path']}; "
                         f"{w['counted_in']})")
        for col in ("format", "raw B/req", "zstd B/req", "zstd_dict B/req", "dict saving vs raw",
                    "dict saving vs zstd"):
            wt.add_column(col, justify="left" if col == "format" else "right")
        for fmt, m in w["by_format"].items():
            saving = m["saving_pct"]["zstd_dict"]
            wt.add_row(fmt + (" (this store)" if fmt == w["format"] else ""), f"{m['raw']:,.0f}",
                       f"{m['zstd']:,.0f}", f"{m['zstd_dict']:,.0f}", "-" if saving is None else f"{saving:.1f}%",
                       f"{100 * (1 - m['zstd_dict'] / m['zstd']):.1f}%" if m["zstd"] else "-")
        console.print(wt)
        mr = run["max_rate_within_budget_per_s"]
        console.print(f"max rate with total p99 <= {budget:g} ms: "
                      + (f"[bold]{mr:.1f} req/s[/bold]" if mr else "none found")
                      + f"  (search: {len(run['rate_search']['steps'])} runs of {run['rate_search']['step_s']:g} s)")
    render_arms(doc, console)
    for w in doc.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")


def render_arms(doc: dict[str, Any], console: Console) -> None:
    """One row per arm, side by side: latency, bytes, refresh cost, capacity and FLOPs."""
    t = Table(title=f"arms side by side (budget {doc['budget_ms']:g} ms; C={doc['config']['candidates']})",
              caption="wire: events payload per request (zstd_dict where the arm uses it) + cached vector entry; "
                      "stored: disk bytes per user, events and vectors; refresh: the job's CPU per live event "
                      "and the staleness (events not covered) reads saw")
    for col in ("arm", "N", "fetch p99", "forward p50", "forward p99", "total p99", "wire raw B", "wire zstd B",
                "vector B", "stored B/user", "refresh µs/event", "stale p50/p99", "max rate/s", "MACs/request"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for run in doc["runs"]:
        st, wb = run["stages"], run["wire_bytes"]
        refresh = (run.get("refresh") or {}).get("live") or {}
        stale = refresh.get("staleness_events")
        flops = run.get("flops") or {}
        mr = run["max_rate_within_budget_per_s"]
        t.add_row(run.get("arm", f"{run['store']}+{run['model']}"), str(run.get("events_per_request", run["seq_len"])),
                  f"{st['fetch']['p99_ms']:.2f}", f"{st['forward']['p50_ms']:.2f}", f"{st['forward']['p99_ms']:.2f}",
                  f"{st['total']['p99_ms']:.2f}", f"{wb['raw']:,.0f}", f"{wb['zstd_dict']:,.0f}",
                  f"{run['wire'].get('vector_bytes_per_request', 0):,.0f}",
                  f"{(run.get('stored') or {}).get('disk_bytes_per_user', 0):,.0f}",
                  f"{refresh['cpu_us_per_event']:.0f}" if "cpu_us_per_event" in refresh else "-",
                  f"{stale['p50']:.0f}/{stale['p99']:.0f}" if stale else "-",
                  f"{mr:.1f}" if mr else "-",
                  f"{flops['per_request_macs']:.3g}" if flops.get("per_request_macs") else "-")
    console.print(t)
