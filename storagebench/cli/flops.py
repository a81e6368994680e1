"""``storagebench flops``: FLOPs per (user, candidate) of every ranking model, analytic and measured."""

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


def flop_rows(models: tuple[str, ...], seq_lens: tuple[int, ...], d: int, sets: dict[str, Any],
              measure: bool = True) -> list[dict[str, Any]]:
    """One row per (model, L): analytic and measured MACs per (user, candidate)."""
    from dataclasses import asdict, fields

    import torch

    from rankers.flops import analytic_flops, measured_flops
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
            row: dict[str, Any] = {"model": name, "seq_len": seq_len, "d": d,
                                   "analytic": analytic_flops(name, config)}
            if measure:
                torch.manual_seed(0)
                measured = measured_flops(build_model(name, config).eval())
                row.update(measured=measured["sequence"], head=measured["head"],
                           ratio=measured["sequence"] / row["analytic"])
            if seq_len == 1000 and d == 128 and not own and name in PAPER_TABLE2:
                row["paper_table2"] = PAPER_TABLE2[name]
            row["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
            rows.append(row)
    return rows


@click.command("flops")
@click.option("--model", "models", multiple=True, type=click.Choice(MODEL_NAMES),
              help="Model(s) to count; repeat the option. Default: all.")
@click.option("--seq-len", "seq_lens", multiple=True, type=click.IntRange(min=1),
              help="History length(s) L; repeat the option. Default: 1000 (the paper's).")
@click.option("--d", type=click.IntRange(min=2), default=128, show_default=True, help="Embedding dimension.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Config override for the models that have the field, e.g. --set window=20 --set gsta_layers=3.")
@click.option("--no-measure", is_flag=True, help="Analytic figures only (skip FlopCounterMode).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout instead of a table.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write DIR/flops.json.")
def flops(models: tuple[str, ...], seq_lens: tuple[int, ...], d: int, sets: tuple[str, ...], no_measure: bool,
          as_json: bool, out_dir: Path | None) -> None:
    """FLOPs per (user, candidate) for each ranking model: the paper's formulas (eqs. 13-20) next to a
    count measured by torch's FlopCounterMode on one user and one candidate.

    Defaults are the paper's setting (L=1000, d=128, d_q=2x16, w=10, FFN ratio 4, r=4, M=2).
    FLOPs are multiply-accumulates, the paper's convention (FlopCounterMode's count / 2). Both sides
    cover the sequence modules (projections, attention, FFN, layers); embedding lookups and
    elementwise ops are 0 and the final scoring MLP is excluded (shown as "head").
    """
    from rankers.flops import FLOP_CONVENTION

    rows = flop_rows(models or MODEL_NAMES, seq_lens or (1000,), d, parse_sets(sets), measure=not no_measure)
    doc = {"kind": "flops", "convention": FLOP_CONVENTION,
           "scope": "sequence modules; embeddings/elementwise = 0; scoring MLP ('head') excluded",
           "rows": rows}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "flops.json").write_text(json.dumps(doc, indent=2))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="FLOPs per (user, candidate), multiply-accumulates", caption=FLOP_CONVENTION)
    for col in ("model", "L", "analytic", "measured", "meas/anal", "head (excl.)", "paper T2"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], str(r["seq_len"]), f"{r['analytic']:.3g}",
                      f"{r['measured']:.3g}" if "measured" in r else "-",
                      f"{r['ratio']:.3f}" if "ratio" in r else "-",
                      f"{r['head']:.3g}" if "head" in r else "-",
                      f"{r['paper_table2']:.2g}" if "paper_table2" in r else "-")
    Console().print(table)
    if out_dir is not None:
        click.echo(f"wrote {out_dir / 'flops.json'}")
