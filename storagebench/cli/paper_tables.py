"""``storagebench paper-tables``: the shape of the LASER paper's Tables 2-4, measured on a workload.

Every model and variant gets the same task, seed, optimiser, epochs, batch size and learning rate;
nothing is tuned per model. AUC differences the size of the paper's (0.03-0.24 points) are far below
the noise of a task this small, so each AUC comes with an approximate standard error and, with
``--repeats``, its spread over model seeds (which, on the default task, is the larger of the two).
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from storagebench.cli.train import (
    build_task,
    check_device,
    item_bucket_overrides,
    jsonable,
    set_threads,
    task_options,
    train_one,
)

# The paper's figures (Xiaohongshu Ads, L=1000, d=128): AUC, AUC gain in points, FLOPs.
PAPER_TABLE2: dict[str, tuple[float, float | None, float | None]] = {
    "base": (0.7802, None, 1.3e7), "din": (0.7814, 0.12, 3.3e7), "twin": (0.7810, 0.08, None),
    "hstu": (0.7822, 0.20, 3.7e8), "transformer": (0.7824, 0.22, 3.6e8), "laser": (0.7826, 0.24, 4.0e7),
}
# run key, component removed (paper's row label), LASER config overrides, paper's delta AUC (points)
ABLATIONS: list[tuple[str, str, dict[str, Any], float]] = [
    ("laser:softmax", "Sigmoid Aggregation (softmax instead)", {"sta_activation": "softmax"}, -0.03),
    ("laser:no_ffn_ln", "FFN+LayerNorm", {"sta_ffn": False, "sta_layernorm": False}, -0.08),
    ("laser:no_ln", "LayerNorm", {"sta_layernorm": False}, -0.04),
    ("laser:no_fusion", "Multi-resolution Fusion", {"fusion": False}, -0.08),
    ("laser:no_recency", "Recency embedding", {"use_recency": False}, -0.09),
]
# window w, paper's AUC, paper's relative FLOPs
WINDOWS: list[tuple[int, float, float]] = [(5, 0.7823, 1.5), (10, 0.7826, 1.0), (20, 0.7821, 0.75)]


def planned_runs(tables: set[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(run key, model name, config overrides) for every training run the tables need."""
    runs: list[tuple[str, str, dict[str, Any]]] = []
    if "2" in tables:
        runs += [(name, name, {}) for name in PAPER_TABLE2]
    if {"3", "4"} & tables and "2" not in tables:
        runs.append(("laser", "laser", {}))
    if "3" in tables:
        runs += [(key, "laser", over) for key, _, over, _ in ABLATIONS]
    if "4" in tables:
        runs += [(f"laser:w{w}", "laser", {"window": w}) for w, _, _ in WINDOWS if w != 10]
    return runs


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC estimate. It treats pairs as independent, which
    candidates of one request are not, so read it as a lower bound on the noise."""
    if not (n_pos and n_neg) or math.isnan(auc):
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def combine_repeats(reps: list[dict[str, Any]], n_pos: int, n_neg: int) -> dict[str, Any]:
    """One run record from repeated trainings: mean test metrics, their spread, and each repeat."""
    aucs = [r["test"]["auc"] for r in reps]
    run = dict(reps[0])
    run["test"] = {
        "auc": float(np.mean(aucs)), "logloss": float(np.mean([r["test"]["logloss"] for r in reps])),
        "auc_se": auc_standard_error(float(np.mean(aucs)), n_pos, n_neg),
        "auc_seed_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None, "auc_by_seed": aucs,
    }
    run["seconds"] = float(sum(r["seconds"] for r in reps))
    if len(reps) > 1:
        run["repeats"] = [{k: r[k] for k in ("test", "valid", "best_epoch", "epochs", "seconds")} for r in reps]
    return run


def flops_for(model: str, overrides: dict[str, Any], *, d: int, seq_len: int, paper: bool) -> float:
    """Analytic FLOPs (multiply-accumulates) per (user, candidate) at the run's or the paper's setting."""
    from rankers.flops import analytic_flops
    from rankers.registry import make_config

    if paper:
        config = make_config(model, paper=True, **overrides)
    else:
        config = make_config(model, d=d, max_len=seq_len, **overrides)
    return analytic_flops(model, config)


def build_tables(runs: dict[str, dict[str, Any]], *, d: int, seq_len: int) -> dict[str, list[dict[str, Any]]]:
    """Tables 2-4 from finished runs (only the rows whose runs exist)."""
    def auc(key: str) -> float:
        return runs[key]["test"]["auc"]

    tables: dict[str, list[dict[str, Any]]] = {"table2": [], "table3": [], "table4": []}
    base = auc("base") if "base" in runs else float("nan")
    for name, (p_auc, p_gain, p_flops) in PAPER_TABLE2.items():
        if name not in runs:
            continue
        tables["table2"].append({
            "model": name, "auc": auc(name), "auc_se": runs[name]["test"]["auc_se"],
            "auc_seed_std": runs[name]["test"].get("auc_seed_std"),
            "auc_gain_pts": None if name == "base" else (auc(name) - base) * 100,
            "flops": flops_for(name, {}, d=d, seq_len=seq_len, paper=False),
            "flops_paper_setting": flops_for(name, {}, d=d, seq_len=seq_len, paper=True),
            "paper_auc": p_auc, "paper_auc_gain_pts": p_gain, "paper_flops": p_flops,
        })
    if "laser" in runs:
        for key, label, over, p_delta in ABLATIONS:
            if key in runs:
                tables["table3"].append({"component": label, "run": key, "overrides": over, "auc": auc(key),
                                         "auc_seed_std": runs[key]["test"].get("auc_seed_std"),
                                         "delta_auc_pts": (auc(key) - auc("laser")) * 100,
                                         "paper_delta_auc_pts": p_delta})
        ref = flops_for("laser", {}, d=d, seq_len=seq_len, paper=False)
        ref_paper = flops_for("laser", {}, d=d, seq_len=seq_len, paper=True)
        for w, p_auc, p_rel in WINDOWS:
            key = "laser" if w == 10 else f"laser:w{w}"
            if key in runs:
                over = {"window": w}
                tables["table4"].append({
                    "window": w, "run": key, "auc": auc(key), "auc_se": runs[key]["test"]["auc_se"],
                    "auc_seed_std": runs[key]["test"].get("auc_seed_std"),
                    "relative_flops": flops_for("laser", over, d=d, seq_len=seq_len, paper=False) / ref,
                    "relative_flops_paper_setting":
                        flops_for("laser", over, d=d, seq_len=seq_len, paper=True) / ref_paper,
                    "paper_auc": p_auc, "paper_relative_flops": p_rel})
    return tables


def print_tables(tables: dict[str, list[dict[str, Any]]], header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(x: float | None, spec: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    # Piped output (a log file) gets full-width tables rather than 80 truncated columns.
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(header)
    t2 = Table(title="Table 2: AUC, gain over Base (points), FLOPs per (user, candidate), MACs")
    for col in ("model", "AUC", "±SE", "seed std", "gain", "FLOPs (run)", "FLOPs (paper setting)",
                "paper AUC", "paper gain", "paper FLOPs"):
        t2.add_column(col, justify="left" if col == "model" else "right")
    for r in tables["table2"]:
        t2.add_row(r["model"], f(r["auc"], ".4f"), f(r["auc_se"], ".4f"), f(r["auc_seed_std"], ".4f"),
                   f(r["auc_gain_pts"], "+.2f"),
                   f(r["flops"], ".2e"), f(r["flops_paper_setting"], ".2e"), f(r["paper_auc"], ".4f"),
                   f(r["paper_auc_gain_pts"], "+.2f"), f(r["paper_flops"], ".1e"))
    t3 = Table(title="Table 3: ablations of LASER, delta AUC (points) vs full LASER")
    for col in ("component removed", "AUC", "seed std", "delta", "paper delta"):
        t3.add_column(col, justify="left" if col.startswith("component") else "right")
    for r in tables["table3"]:
        t3.add_row(r["component"], f(r["auc"], ".4f"), f(r["auc_seed_std"], ".4f"), f(r["delta_auc_pts"], "+.2f"),
                   f(r["paper_delta_auc_pts"], "+.2f"))
    t4 = Table(title="Table 4: segment size w")
    for col in ("w", "AUC", "±SE", "seed std", "rel. FLOPs (run)", "rel. FLOPs (paper setting)", "paper AUC",
                "paper rel. FLOPs"):
        t4.add_column(col, justify="right")
    for r in tables["table4"]:
        t4.add_row(str(r["window"]), f(r["auc"], ".4f"), f(r["auc_se"], ".4f"), f(r["auc_seed_std"], ".4f"),
                   f(r["relative_flops"], ".2f"),
                   f(r["relative_flops_paper_setting"], ".2f"), f(r["paper_auc"], ".4f"),
                   f(r["paper_relative_flops"], ".2f"))
    for t in (t2, t3, t4):
        if t.row_count:
            console.print(t)


@click.command("paper-tables")
@task_options(max_users=2000)
@click.option("--seq-len", type=click.IntRange(min=1), default=256, show_default=True, help="L: newest history events read.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="Epochs for every run (same for all).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train every run this many times (model seeds SEED, SEED+1, ...) and report the mean AUC "
                   "and its spread across seeds.")
@click.option("--tables", default="2,3,4", show_default=True, help="Which tables to produce, e.g. 2 or 3,4.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Directory for paper_tables.json.")
@click.option("--resume", is_flag=True,
              help="Reuse finished runs from OUT/paper_tables.json made with the same settings.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def paper_tables(workload: str | None, scale: str, max_users: int | None, requests_per_user: int,
                 negatives: int, negatives_from: str, item_buckets: int | None, seed: int, device: str,
                 batch_size: int, lr: float, d: int, threads: int | None, seq_len: int, epochs: int, repeats: int,
                 tables: str, out: str, resume: bool, no_progress: bool) -> None:
    """Reproduce the shape of the paper's Table 2 (Base, DIN, TWIN, HSTU, Transformer, LASER: AUC, gain
    over Base, FLOPs), Table 3 (LASER ablations) and Table 4 (segment size w = 5, 10, 20) on a workload.

    Every run trains with the same budget and is scored on the time-split test requests; the paper's
    figures are printed alongside. FLOPs are analytic multiply-accumulates per (user, candidate), at this
    run's (d, L) and at the paper's setting (d=128, L=1000). The default (2,000 users of the small preset,
    L=256, d=32, 3 epochs, 13 runs) takes about 10-20 minutes on a 2-core CPU. Results are saved after
    every run, so an interrupted run continues with --resume. Writes OUT/paper_tables.json.
    """
    if repeats < 1:
        raise click.BadParameter(f"{repeats}: need at least 1", param_hint="--repeats")
    wanted = {t.strip() for t in tables.split(",") if t.strip()}
    if not wanted or wanted - {"2", "3", "4"}:
        raise click.BadParameter(f"{tables!r}: choose among 2, 3, 4 (comma-separated)", param_hint="--tables")
    users = max_users
    check_device(device)
    set_threads(threads)
    items = item_bucket_overrides(item_buckets, workload)
    setting = {"source": workload or f"preset:{scale}", "max_users": users, "requests_per_user": requests_per_user,
               "negatives": negatives, "negatives_from": negatives_from, "item_buckets": items.get("item_buckets"),
               "seed": seed, "batch_size": batch_size, "lr": lr, "d": d, "seq_len": seq_len, "epochs": epochs,
               "repeats": repeats}
    path = Path(out) / "paper_tables.json"
    runs: dict[str, dict[str, Any]] = {}
    if resume and path.exists():
        previous = json.loads(path.read_text())
        if previous.get("setting") == setting:
            runs = previous.get("runs", {})
            click.echo(f"resuming: {len(runs)} finished runs reused from {path}", err=True)
        else:
            click.echo(f"not resuming: {path} was made with other settings", err=True)
    splits = build_task(workload, scale, seq_len=seq_len, max_users=users,
                        requests_per_user=requests_per_user, negatives=negatives, seed=seed,
                        negatives_from=negatives_from)
    n_pos = int(splits.test.labels.sum())
    n_neg = int(splits.test.labels.size) - n_pos
    t0 = time.perf_counter()
    plan = planned_runs(wanted)

    def save(complete: bool) -> dict[str, Any]:
        report = {"kind": "paper_tables", "complete": complete, "created_unix": time.time(),
                  "machine": platform.node(), "setting": setting, "task": jsonable(splits.describe()),
                  "flop_convention": "multiply-accumulates per (user, candidate)",
                  "tables": build_tables(runs, d=d, seq_len=seq_len), "runs": runs,
                  "seconds_total": time.perf_counter() - t0}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(path)  # atomic: an interrupted write never leaves a truncated file
        return report

    for i, (key, model, overrides) in enumerate(plan, 1):
        if key in runs:
            continue
        click.echo(f"[{i}/{len(plan)}] {key} {overrides or ''}", err=True)
        # Repeats vary only the model's initialisation and batch order (seed + k); the task is fixed.
        reps = [train_one(model, splits, {"d": d, **items, **overrides}, epochs=epochs, batch_size=batch_size,
                          lr=lr, device=device, seed=seed + k, progress=not no_progress) for k in range(repeats)]
        runs[key] = run = combine_repeats(reps, n_pos, n_neg)
        click.echo(f"    test AUC {run['test']['auc']:.4f} ± {run['test']['auc_se']:.4f} (SE)"
                   + (f", seed std {run['test']['auc_seed_std']:.4f}" if repeats > 1 else "")
                   + f", {run['seconds']:.0f}s", err=True)
        save(complete=False)
    report = save(complete=True)
    print_tables(report["tables"], f"{len(splits.test)} test requests x {splits.test.num_candidates} candidates "
                                   f"(positive rate {np.mean(splits.test.labels):.2f}); L={seq_len}, d={d}, "
                                   f"{epochs} epochs each; {report['seconds_total']:.0f}s")
    click.echo(f"-> {path}")

