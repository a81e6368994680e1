"""``storagebench flops``: FLOPs of every ranking model per (user, candidate) and per request at C
candidates, analytic and measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rankers.registry import MODEL_NAMES

# Table 2 of the paper (L=1000, d=128); TWIN has no figure there.
PAPER_TABLE2 = {"base": 1.3e7, "din": 3.3e7, "hstu": 3.7e8, "transformer": 3.6e8, "laser": 4.0e7}


def parse_sets(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. window=20)", param_hint="--set")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def parse_candidates(values: tuple[str, ...]) -> tuple[int, ...]:
    """``--candidates 1,100,500`` (or the option repeated) -> (1, 100, 500)."""
    out: list[int] = []
    for value in values:
        for part in value.split(","):
            try:
                count = int(part)
            except ValueError:
                raise click.BadParameter(f"{part!r} is not a whole number (write e.g. 1,100,500)",
                                         param_hint="--candidates") from None
            if count < 1:
                raise click.BadParameter(f"{count}: a request scores at least 1 candidate", param_hint="--candidates")
            out.append(count)
    return tuple(dict.fromkeys(out))


def flop_rows(models: tuple[str, ...], seq_lens: tuple[int, ...], d: int, sets: dict[str, Any],
              measure: bool = True, candidates: tuple[int, ...] = (1,)) -> list[dict[str, Any]]:
    """One row per (model, L, C): analytic and measured MACs per (user, candidate), and per request
    with the history side counted once (history_macs + C * per_candidate_macs)."""
    from dataclasses import asdict, fields

    import torch

    from rankers.flops import analytic_flops, measured_flops, measured_request_flops, request_flops
    from rankers.registry import build_model, config_class, make_config

    unused = set(sets) - {f.name for m in models for f in fields(config_class(m))}
    if unused:
        raise click.BadParameter(f"no selected model has field(s) {sorted(unused)}", param_hint="--set")
    rows = []
    for name in models:
        own = {k: v for k, v in sets.items() if k in {f.name for f in fields(config_class(name))}}
        for seq_len in seq_lens:
            # Embedding tables do not change FLOPs; a small item table keeps the command fast.
            config = make_config(name, paper=True, **{"item_buckets": 1000, **own, "d": d, "max_len": seq_len})
            pair: dict[str, Any] = {"analytic": analytic_flops(name, config)}
            model = None
            if measure:
                torch.manual_seed(0)
                model = build_model(name, config).eval()
                measured = measured_flops(model)
                pair.update(measured=measured["sequence"], head=measured["head"],
                            ratio=measured["sequence"] / pair["analytic"])
            if seq_len == 1000 and d == 128 and not own and name in PAPER_TABLE2:
                pair["paper_table2"] = PAPER_TABLE2[name]
            for count in candidates:
                row: dict[str, Any] = {"model": name, "seq_len": seq_len, "d": d, **pair,
                                       **request_flops(name, config, count)}
                if model is not None:
                    counted = measured_request_flops(model, count)
                    row.update({f"measured_{k}": v for k, v in counted.items() if k != "candidates"})
                row["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
                rows.append(row)
    return rows


def _relative_to(rows: list[dict[str, Any]], reference: str) -> None:
    """Each row's per-request MACs over the reference model's at the same L and C (``vs_<reference>``)."""
    ref = {(r["seq_len"], r["candidates"]): r["per_request_macs"] for r in rows if r["model"] == reference}
    for r in rows:
        base = ref.get((r["seq_len"], r["candidates"]))
        if base:
            r[f"per_request_vs_{reference}"] = r["per_request_macs"] / base


@click.command("flops")
@click.option("--model", "models", multiple=True, type=click.Choice(MODEL_NAMES),
              help="Model(s) to count; repeat the option. Default: all.")
@click.option("--seq-len", "seq_lens", multiple=True, type=click.IntRange(min=1),
              help="History length(s) L; repeat the option. Default: 1000 (the paper's).")
@click.option("--candidates", "candidates", multiple=True, metavar="C[,C...]",
              help="Candidates per request, e.g. 1,100,500 (default 1). Per-request cost = history side "
                   "once + C x per-candidate cost; LASER's grows fastest with C (its segment FFN and GSTA "
                   "run on candidate-dependent segments; --set gsta_absorbed=true is its serving form).")
@click.option("--d", type=click.IntRange(min=2), default=128, show_default=True, help="Embedding dimension.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Config override for the models that have the field, e.g. --set window=20 --set gsta_layers=3.")
@click.option("--no-measure", is_flag=True, help="Analytic figures only (skip FlopCounterMode).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout instead of a table.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write DIR/flops.json.")
def flops(models: tuple[str, ...], seq_lens: tuple[int, ...], candidates: tuple[str, ...], d: int,
          sets: tuple[str, ...], no_measure: bool, as_json: bool, out_dir: Path | None) -> None:
    """FLOPs of each ranking model: per (user, candidate) by the paper's formulas (eqs. 13-20) next to
    a count measured by torch's FlopCounterMode, and per request at each --candidates C, split into
    the history side (once per request), the per-candidate part, and for models that cache a user
    summary in storage (vista, llatte) the refresh cost (paid by the refresh job, not the request).

    Defaults are the paper's setting (L=1000, d=128, d_q=2x16, w=10, FFN ratio 4, r=4, M=2).
    FLOPs are multiply-accumulates, the paper's convention (FlopCounterMode's count / 2). Both sides
    cover the sequence modules (projections, attention, FFN, layers); embedding lookups and
    elementwise ops are 0 and the final scoring MLP is excluded (shown as "head", per candidate).

    \b
    Example: storagebench flops --candidates 1,100,500 --out results/flops
    """
    from rankers.flops import FLOP_CONVENTION

    counts = parse_candidates(candidates) or (1,)
    chosen = models or MODEL_NAMES
    rows = flop_rows(chosen, seq_lens or (1000,), d, parse_sets(sets), measure=not no_measure, candidates=counts)
    if "transformer" in chosen:
        _relative_to(rows, "transformer")
    doc = {"kind": "flops", "convention": FLOP_CONVENTION,
           "scope": "sequence modules; embeddings/elementwise = 0; scoring MLP ('head') excluded",
           "per_request": "history_macs once per request + candidates x per_candidate_macs; refresh_macs "
                          "is the cached models' summary, paid per refresh by the refresh job",
           "candidates": list(counts), "rows": rows}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "flops.json").write_text(json.dumps(doc, indent=2))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    _render(rows)
    if out_dir is not None:
        click.echo(f"wrote {out_dir / 'flops.json'}")


def _render(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from rankers.flops import FLOP_CONVENTION

    def g(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, int | float) else "-"

    console = Console()
    pairs = {(r["model"], r["seq_len"]): r for r in rows}.values()
    table = Table(title="FLOPs per (user, candidate), multiply-accumulates", caption=FLOP_CONVENTION)
    for col in ("model", "L", "analytic", "measured", "meas/anal", "head (excl.)", "paper T2"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in pairs:
        table.add_row(r["model"], str(r["seq_len"]), g(r["analytic"]), g(r.get("measured")),
                      f"{r['ratio']:.3f}" if "ratio" in r else "-", g(r.get("head")), g(r.get("paper_table2")))
    console.print(table)
    table = Table(title="FLOPs per request: history side once + C x per candidate (MACs)",
                  caption="refresh: a cached model's user summary, paid per refresh by the refresh job")
    for col in ("model", "L", "C", "history", "per cand.", "per req.", "measured", "x TF", "refresh"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        vs = r.get("per_request_vs_transformer")
        table.add_row(r["model"], str(r["seq_len"]), str(r["candidates"]), g(r["history_macs"]),
                      g(r["per_candidate_macs"]), g(r["per_request_macs"]), g(r.get("measured_per_request_macs")),
                      f"{vs:.2f}" if vs else "-", g(r["refresh_macs"]) if r["refresh_macs"] else "-")
    console.print(table)
