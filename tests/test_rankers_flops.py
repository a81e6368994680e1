"""FLOP accounting: the paper's figures at its setting, and measured counts within 15% of analytic."""

from __future__ import annotations

import itertools
import json

import pytest
from click.testing import CliRunner

from rankers.flops import (
    analytic_flops,
    laser_flops_closed_form,
    measured_flops,
    self_attention_flops,
    target_attention_flops,
)
from rankers.registry import MODEL_NAMES, build_model, make_config
from storagebench.cli import main


def paper(name: str, **overrides: object):
    return make_config(name, paper=True, item_buckets=1000, **overrides)


def test_paper_setting_figures() -> None:
    """Section 3.6.2: L=1000, d=128, d_q=32, w=10, r=4, M=2."""
    laser = paper("laser")
    assert analytic_flops("laser", laser) == pytest.approx(4.0e7, rel=0.02)
    assert laser_flops_closed_form(laser, 1000) == pytest.approx(4.0e7, rel=0.02)
    assert analytic_flops("laser", laser) == pytest.approx(laser_flops_closed_form(laser, 1000), rel=0.01)
    assert self_attention_flops(1000, 128) == pytest.approx(3.2e8, rel=0.02)
    assert target_attention_flops(1000, 128) == pytest.approx(3.3e7, rel=0.02)


@pytest.mark.parametrize(("name", "table2"), [("base", 1.3e7), ("din", 3.3e7), ("hstu", 3.7e8),
                                              ("transformer", 3.6e8), ("laser", 4.0e7)])
def test_table2_flops(name: str, table2: float) -> None:
    assert analytic_flops(name, paper(name)) == pytest.approx(table2, rel=0.06)


def test_table4_relative_flops_of_window() -> None:
    """Table 4: w=5 costs 1.5x and w=20 0.75x of w=10."""
    base = analytic_flops("laser", paper("laser"))
    assert analytic_flops("laser", paper("laser", window=5)) / base == pytest.approx(1.5, abs=0.02)
    assert analytic_flops("laser", paper("laser", window=20)) / base == pytest.approx(0.75, abs=0.02)


def test_gsta_layers_scale_linearly() -> None:
    costs = [analytic_flops("laser", paper("laser", gsta_layers=m)) for m in (1, 2, 3, 4)]
    steps = {round(b - a) for a, b in itertools.pairwise(costs)}
    assert len(steps) == 1 and steps.pop() > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_measured_matches_analytic_at_paper_setting(name: str) -> None:
    measured = measured_flops(build_model(name, paper(name)).eval())
    assert measured["sequence"] == pytest.approx(analytic_flops(name, paper(name)), rel=0.15)
    assert 0 < measured["head"] < 0.05 * measured["sequence"]


@pytest.mark.parametrize("overrides", [{"window": 5}, {"window": 20}, {"sta_ffn": False, "sta_layernorm": False},
                                       {"gsta_layers": 4}, {"max_len": 437}, {"gsta_absorbed": True}])
def test_measured_matches_analytic_for_laser_variants(overrides: dict[str, object]) -> None:
    config = paper("laser", d=64, **overrides)
    measured = measured_flops(build_model("laser", config).eval())["sequence"]
    assert measured == pytest.approx(analytic_flops("laser", config), rel=0.15)


def test_flops_cli_json_and_out(tmp_path) -> None:
    result = CliRunner().invoke(main, ["flops", "--model", "laser", "--model", "din", "--seq-len", "200",
                                       "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["kind"] == "flops" and "multiply-accumulates" in doc["convention"]
    assert [(r["model"], r["seq_len"]) for r in doc["rows"]] == [("laser", 200), ("din", 200)]
    assert all(abs(r["ratio"] - 1) < 0.15 for r in doc["rows"])
    assert json.loads((tmp_path / "flops.json").read_text()) == doc


def test_flops_cli_table_defaults_to_paper_setting() -> None:
    result = CliRunner().invoke(main, ["flops", "--no-measure"])
    assert result.exit_code == 0, result.output
    for name in MODEL_NAMES:
        assert name in result.output
    assert "4.04e+07" in result.output   # LASER at L=1000, d=128


def test_flops_cli_rejects_unknown_field() -> None:
    result = CliRunner().invoke(main, ["flops", "--model", "din", "--set", "window=5"])
    assert result.exit_code != 0 and "window" in result.output
