"""``storagebench serve-bench``: requests/s and latency p50/p99 of a ranking model over (L, C)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import click

from rankers.registry import MODEL_NAMES


@click.command("serve-bench")
@click.option("--model", default="laser", show_default=True, type=click.Choice(MODEL_NAMES))
@click.option("--seq-len", "seq_lens", multiple=True, type=click.IntRange(min=1),
              help="History length(s) L; repeat. Default: 500 1000 2000 4000.")
@click.option("--candidates", "cand_counts", multiple=True, type=click.IntRange(min=1),
              help="Candidates per request C; repeat. Default: 1 100 500.")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:N or auto (CUDA when present). Without CUDA it runs on CPU and says so.")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["fp32", "bf16"]),
              help="Precision(s); repeat. Default: fp32 on CPU, fp32 and bf16 on CUDA.")
@click.option("--compile", "compiled", is_flag=True, help="Also run each cell under torch.compile.")
@click.option("--threads", type=click.IntRange(min=1), help="torch.set_num_threads for the CPU (default: torch's).")
@click.option("--budget-s", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Timed seconds per cell (at least 3 requests each, after one warm-up).")
@click.option("--max-samples", default=50, show_default=True, type=click.IntRange(min=3),
              help="At most this many timed requests per cell.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Model config override, e.g. --set gsta_absorbed=true --set window=20.")
@click.option("--small", is_flag=True, help="The model's small default config instead of the paper's d=128 setting.")
@click.option("--no-compare", is_flag=True, help="Skip the shared-vs-unshared history projection comparison.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Writes DIR/serve_bench.json.")
def serve_bench(model: str, seq_lens: tuple[int, ...], cand_counts: tuple[int, ...], device: str,
                dtypes: tuple[str, ...], compiled: bool, threads: int | None, budget_s: float, max_samples: int,
                sets: tuple[str, ...], small: bool, no_compare: bool, out_dir: Path) -> None:
    """Serve ranking requests (one user's history against C candidates) with random weights and inputs
    and report requests/s, candidates/s and latency p50/p99 for every history length L and C.

    The history side (embeddings, keys and values) is computed once per request and shared by all
    candidates. Unless --no-compare, it also times C=500, L=1000 served three ways: shared, each
    (user, candidate) pair as its own batch row, and one forward per candidate.
    """
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rankers.registry import build_model, make_config
    from rankers.serving import format_results, resolve_device, serving_grid, shared_vs_unshared
    from storagebench.cli.flops import parse_sets

    overrides = parse_sets(sets)
    try:
        make_config(model, **overrides)
    except (TypeError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="--set") from e

    if threads:
        torch.set_num_threads(threads)
    dev, note = resolve_device(device)
    notes = [note] if note else []
    dtypes = dtypes or (("fp32", "bf16") if dev.type == "cuda" else ("fp32",))
    seq_lens = seq_lens or (500, 1000, 2000, 4000)
    cand_counts = cand_counts or (1, 100, 500)
    variants = [(dt, c) for dt in dtypes for c in ([False, True] if compiled else [False])]
    cells = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task(f"serving {model} on {dev}", total=len(variants) * len(seq_lens) * len(cand_counts))
        for dtype, comp in variants:
            results, more = serving_grid(model, seq_lens, cand_counts, device=str(dev), dtype=dtype, compiled=comp,
                                         paper_setting=not small, budget_s=budget_s, max_samples=max_samples,
                                         config_overrides=overrides,
                                         on_cell=lambda r: bar.advance(task))
            notes += more
            cells += results
    for line in format_results(cells):
        click.echo(line)
    comparison = None
    if not no_compare:
        click.echo("comparing shared vs unshared history projections (L=1000, C=500) ...", err=True)
        config = make_config(model, paper=not small, **{**overrides, "max_len": 1000})
        comparison = {"seq_len": 1000, "candidates": 500,
                      **shared_vs_unshared(build_model(model, config), 1000, 500, device=str(dev), budget_s=budget_s)}
        click.echo(json.dumps(comparison))
    for n in notes:
        click.echo(f"note: {n}", err=True)
    doc = {"kind": "serve_bench", "model": model, "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "paper_setting": not small,
           "overrides": overrides,
           "cells": [c.as_dict() for c in cells], "shared_vs_unshared": comparison, "notes": notes}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve_bench.json").write_text(json.dumps(doc, indent=2))
    click.echo(f"wrote {out_dir / 'serve_bench.json'}")
