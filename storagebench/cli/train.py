"""``storagebench train``: train one ranking model on the CTR task of a workload."""

from __future__ import annotations

import ast
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from rankers.registry import MODEL_NAMES
from storagebench.ctr import NEGATIVE_SOURCES, CTRSplits, CTRTaskConfig


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("window=20", "sta_activation=softmax")`` -> ``{"window": 20, "sta_activation": "softmax"}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. window=20)", param_hint="--set")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw  # a bare word such as softmax
    return out


def check_device(device: str) -> None:
    """Fail before any work when the device cannot be used."""
    from rankers.training import resolve_device

    try:
        resolve_device(device)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise click.BadParameter(f"{threads}: need at least 1 thread", param_hint="--threads")
        import torch
        torch.set_num_threads(threads)


def window_ms(minutes: float) -> int | None:
    """``--negative-window-min`` as the task's window in ms (0: no window)."""
    return None if minutes <= 0 else int(minutes * 60_000)


def build_task(workload: str | None, scale: str, *, seq_len: int, max_users: int | None,
               requests_per_user: int, negatives: int, seed: int,
               negatives_from: str = "exposures", negative_window_min: float = 30.0) -> CTRSplits:
    """Load or generate the workload and build its CTR task (announced on the terminal)."""
    from storagebench.ctr import ctr_task_from_workload, load_workload

    source = workload or f"generated '{scale}' preset (seed {seed})"
    click.echo(f"building the CTR task from {source} ...", err=True)
    wl = load_workload(workload, scale, seed)
    cfg = CTRTaskConfig(max_len=seq_len, requests_per_user=requests_per_user, negatives=negatives, seed=seed,
                        negatives_from=negatives_from, negative_window_ms=window_ms(negative_window_min))
    splits = ctr_task_from_workload(wl, cfg, max_users=max_users)
    d = splits.describe()
    click.echo(f"requests train/valid/test = {d['requests']['train']}/{d['requests']['valid']}/"
               f"{d['requests']['test']}, {d['candidates_per_request']} candidates each, "
               f"{d['events']} events; negatives {d['candidates']['negative_gap_s_p50']:.0f} s from the click "
               f"at the median (max {d['candidates']['negative_gap_s_max']:.0f} s), "
               f"{d['candidates']['candidates_outside_their_split']} outside their split", err=True)
    if min(len(splits.train), len(splits.test)) == 0:
        raise click.ClickException("the CTR task has no training or no test requests: use a larger workload "
                                   "or more --max-users / --requests-per-user")
    return splits


def item_bucket_overrides(item_buckets: int | None, workload: str | None) -> dict[str, int]:
    """The model-config override that ``--item-buckets`` asks for (see its help)."""
    if item_buckets is None:
        return {} if workload else {"item_buckets": 1}
    if item_buckets < 1:
        raise click.BadParameter(f"{item_buckets}: need at least 1 (1 turns item ids off)",
                                 param_hint="--item-buckets")
    return {"item_buckets": item_buckets}


def train_one(name: str, splits: CTRSplits, overrides: dict[str, Any], *, epochs: int, batch_size: int,
              lr: float, device: str, seed: int, progress: bool = True) -> dict[str, Any]:
    """Build model ``name`` for the task, train it, and return its figures (valid and test)."""
    import torch

    from rankers.registry import build_model
    from rankers.training import evaluate, fit
    from storagebench.ctr import model_shape

    torch.manual_seed(seed)
    try:
        model = build_model(name, **{**model_shape(splits), **overrides})
    except (TypeError, ValueError) as e:
        raise click.ClickException(f"cannot build model {name!r} with {overrides}: {e}") from e
    # A model that reads more than the task's L (TWIN's lifelong search) gets windows that long.
    train, valid, test_split = (replace(x, max_len=model.config.max_len) for x in (splits.train, splits.valid,
                                                                                    splits.test))
    result = fit(model, train, valid, epochs=epochs, batch_size=batch_size, lr=lr,
                 device=device, progress=progress, seed=seed)
    test = evaluate(model, test_split, result.device)
    return {"model": name, "overrides": overrides, "config": jsonable(vars(model.config)), "lr": lr,
            "test": test, **result.to_dict()}


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return str(obj)


def task_options(max_users: int | None = None, learning_rate: bool = True) -> Any:
    """Options shared by ``train`` and ``paper-tables``: where the data comes from and how it is cut
    (``learning_rate=False`` leaves out --lr, for a command that searches rates itself)."""
    opts = [
        click.option("--workload", "workload", type=click.Path(exists=True, file_okay=False),
                     help="A stored workload directory (from `storagebench workload generate`)."),
        click.option("--scale", default="small", show_default=True,
                     help="Without --workload: generate this preset of the synthetic generator."),
        click.option("--max-users", type=click.IntRange(min=1), default=max_users, show_default=max_users is not None,
                     help="Use only the first N users of the workload (smaller, faster task)."),
        click.option("--requests-per-user", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Ranking requests sampled per user, each at one of the user's clicks."),
        click.option("--negatives", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Negative candidates per request (plus 1 positive)."),
        click.option("--negatives-from", type=click.Choice(NEGATIVE_SOURCES), default="exposures",
                     show_default=True,
                     help="exposures: the user's own next impressions after the click (shown, not clicked, "
                          "as in a real CTR log); popularity: anyone's earlier clicks, by popularity (an "
                          "easier task that the current session's category mostly decides)."),
        click.option("--negative-window-min", type=click.FloatRange(min=0), default=30.0, show_default=True,
                     help="Every candidate was shown within this many minutes of the click (0: no window). "
                          "Candidates never come from another split's period either way."),
        click.option("--item-buckets", type=click.IntRange(min=1), default=None,
                     help="Item-id embedding rows (ids are hashed into them); 1 turns item ids off. Default: "
                          "1 for a generated preset, whose clicks depend on an item's category and never on "
                          "the item itself, so an id embedding can only memorise noise (compare with "
                          "--item-buckets 100000); with --workload, the id range up to 200,000."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed for the workload, the sampling and the model initialisation."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="auto uses the GPU when there is one and falls back to the CPU."),
        click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Requests per step."),
        *([click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-2, show_default=True,
                        help="Adam learning rate.")] if learning_rate else []),
        click.option("--d", "d", type=click.IntRange(min=2), default=32, show_default=True, help="Embedding width."),
        click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Torch CPU threads. 1 suits the small default models and a busy shared machine "
                          "(more threads spin waiting for each other there); raise it on a dedicated one."),
    ]

    def decorate(f: Any) -> Any:
        for opt in reversed(opts):
            f = opt(f)
        return f
    return decorate


@click.command("train")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), required=True, help="Which model.")
@task_options()
@click.option("--seq-len", type=click.IntRange(min=1), default=256, show_default=True, help="L: newest history events read.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a model config field, e.g. --set window=20 --set sta_activation=softmax.")
@click.option("--out", type=click.Path(file_okay=False), default="results/train", show_default=True,
              help="Directory for train.json.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(model_name: str, workload: str | None, scale: str, max_users: int | None, requests_per_user: int,
          negatives: int, negatives_from: str, negative_window_min: float, item_buckets: int | None, seed: int,
          device: str, batch_size: int, lr: float, d: int, threads: int | None, seq_len: int, epochs: int,
          sets: tuple[str, ...], out: str, no_progress: bool) -> None:
    """Train a ranking model on a CTR task built from a workload and report AUC and log loss.

    Requests sit at users' clicks: the click is the positive, NEGATIVES items the negatives (see
    --negatives-from), and the history is the user's events strictly before the click (newest SEQ_LEN).
    Requests are split by time (70% train, 10% valid, 20% test); the weights of the epoch with the
    best validation AUC are kept and scored on the test split, beside training-free floors (category
    share, recent category count, category CTR); a model that does not beat the best is flagged.
    Writes OUT/train.json.
    """
    check_device(device)
    set_threads(threads)
    overrides = {"d": d, **item_bucket_overrides(item_buckets, workload), **parse_overrides(sets)}
    splits = build_task(workload, scale, seq_len=seq_len, max_users=max_users,
                        requests_per_user=requests_per_user, negatives=negatives, seed=seed,
                        negatives_from=negatives_from, negative_window_min=negative_window_min)
    from storagebench.cli.paper_tables import score_heuristics

    heuristics = score_heuristics(splits)
    t0 = time.perf_counter()
    run = train_one(model_name, splits, overrides, epochs=epochs, batch_size=batch_size, lr=lr,
                    device=device, seed=seed, progress=not no_progress)
    best = max(heuristics, key=lambda h: heuristics[h]["auc"])
    beats = run["test"]["auc"] > heuristics[best]["auc"]
    report = {"kind": "train", "created_unix": time.time(), "machine": platform.node(),
              "source": workload or f"preset:{scale}", "task": jsonable(splits.describe()),
              "heuristics": heuristics, "best_heuristic": best, "beats_best_heuristic": beats,
              "seconds_total": time.perf_counter() - t0, **run}
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.json").write_text(json.dumps(report, indent=2))
    click.echo(f"{model_name}: test AUC {run['test']['auc']:.4f}, log loss {run['test']['logloss']:.4f} "
               f"(valid AUC {run['valid']['auc']:.4f}, best epoch {run['best_epoch']}/{epochs}, "
               f"{run['seconds']:.0f}s on {run['device']}) -> {path / 'train.json'}")
    floors = ", ".join(f"{name} {h['auc']:.4f}" for name, h in heuristics.items())
    click.echo(f"training-free floors (test AUC): {floors}"
               + ("" if beats else f"\nflag: {model_name} does not beat the best floor ({best})"))
