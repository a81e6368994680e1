"""The HTML report and the `report` / `plan` commands, on complete, partial and broken results."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from reports import PlanInputs, load_results, render_html, write_report
from storagebench.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "results"
ALL = sorted(str(p) for p in FIXTURES.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def full_html() -> str:
    return render_html(load_results(ALL), PlanInputs(), ALL)


def test_report_is_self_contained(full_html: str) -> None:
    # nothing fetched from anywhere: no external scripts, styles, images or fonts
    assert not re.search(r"<script[^>]+src=", full_html)
    assert not re.search(r"<link[^>]+href=", full_html)
    assert not re.search(r"<img[^>]+src=\"?https?:", full_html)
    assert "@import" not in full_html
    assert full_html.count("plotly.js v") >= 1 and full_html.count("Plotly.newPlot(") >= 6
    assert full_html.count("<script>") - full_html.count("Plotly.newPlot(") == 2  # plotly.js + the planner


def test_report_has_every_section_and_the_fixture_warning(full_html: str) -> None:
    for anchor in ("table1", "compare", "capacity", "latency", "resources", "e2e", "models", "planning", "config"):
        assert f'<section id="{anchor}">' in full_html
    for chart in ("chart-latency", "chart-cpu", "chart-disk", "chart-amp", "chart-e2e", "chart-auc", "chart-flops",
                  "chart-capacity"):
        assert f'id="{chart}"' in full_html
    assert "FIXTURE for tests" in full_html  # fixture files are never presented as measurements
    assert "4327.13" in full_html  # the paper's Table 1 beside ours
    assert "reduction (SeqVault vs RocksDB LastN)" in full_html
    assert "not valid JSON" in full_html  # the broken fixture is listed, not fatal
    assert "Every daily active user has a stored sequence" in full_html  # assumptions stated
    # the page carries the costs the in-browser planner recomputes from
    data = json.loads(re.search(r'<script type="application/json" id="plan-data">(.*?)</script>', full_html,
                                re.S).group(1))
    # a swept store is planned from its capacity curve, the others from their single-rate runs
    names = {s["store"] for s in data["stores"]}
    assert {"rocksdb_packed", "redis_lastn"} <= names
    assert {"seqvault (sweep, P99 <= 10 ms, sweep_seqvault)", "rocksdb_lastn (sweep, P99 <= 10 ms, sweep_rocksdb_lastn)"} <= names
    assert not any(n.startswith("seqvault (table1") for n in names)
    assert "planned from its capacity sweep instead of this single-rate run" in full_html
    assert data["inputs"]["seq_len"] == 1000


def test_report_shows_the_cost_table_and_the_capacity_curves(full_html: str) -> None:
    section = full_html[full_html.index('<section id="compare">'):full_html.index('<section id="capacity">')]
    for store in ("seqvault", "rocksdb_lastn", "redis_lastn"):
        assert f"<td>{store}" in section
    assert "$ / M users / month" in section and "DRAM B / user" in section
    assert "Google Compute Engine" in section  # the prices' source is stated
    assert "harness floor (null store)" in section
    curves = full_html[full_html.index('<section id="capacity">'):full_html.index('<section id="latency">')]
    assert 'id="chart-capacity"' in curves and "SLO 10 ms" in curves
    table = curves[curves.index('id="sustainable-table"'):]
    assert table.count("<tr>") == 3  # header + two swept stores


def test_missing_sections_say_which_command_produces_them(tmp_path: Path) -> None:
    html = render_html(load_results([FIXTURES / "e2e"]))
    assert "No Table 1 result (table1.json) among the inputs" in html
    assert "storagebench table1" in html
    assert "No FLOPs measurement (flops.json)" in html and "storagebench flops" in html
    assert 'id="chart-e2e"' in html


def test_partial_and_broken_results_render(tmp_path: Path) -> None:
    html = render_html(load_results([FIXTURES / "partial_table1", FIXTURES / "broken", tmp_path / "missing"]))
    assert "has no row for: rocksdb_lastn, rocksdb_packed" in html
    assert "Not planned: seqvault (partial_table1): missing cpu.cpu_s_per_op" in html
    assert "missing does not exist" in html
    assert "No end-to-end result (e2e.json)" in html


def test_nothing_at_all_still_renders() -> None:
    html = render_html(load_results([]))
    assert "No result files were loaded." in html


def test_write_report_is_atomic_and_creates_parents(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "report.html"
    write_report([FIXTURES / "table1"], out)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert not list(out.parent.glob("*.tmp"))


def test_report_command(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    res = CliRunner().invoke(main, ["report", str(FIXTURES / "table1"), str(FIXTURES / "broken"), "-o", str(out),
                                    "--peak-qps", "12345"])
    assert res.exit_code == 0, res.output
    assert str(out.resolve()) in res.stdout
    assert "not valid JSON" in res.stderr
    assert 'value="12345.0"' in out.read_text()  # the planner's starting input


def test_report_command_rejects_bad_planner_input(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["report", str(FIXTURES / "table1"), "-o", str(tmp_path / "r.html"),
                                    "--target-util", "2"])
    assert res.exit_code == 2 and "'--target-util'" in res.output and "0<x<=1" in res.output


def test_plan_command_json() -> None:
    res = CliRunner().invoke(main, ["plan", "--results", str(FIXTURES / "table1"), "--results",
                                    str(FIXTURES / "serve_bench"), "--dau", "1e6", "--zones", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["inputs"]["dau"] == 1e6 and out["inputs"]["zones"] == 2
    assert {s["store"] for s in out["stores"]} == {"rocksdb_lastn", "rocksdb_packed", "seqvault"}
    assert all(s["nodes_total"] == 2 * s["nodes_zone"] for s in out["stores"])
    assert out["rankers"] and out["assumptions"] and out["costs"]


def test_plan_command_table_and_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["plan", "--results", str(FIXTURES / "table1")])
    assert res.exit_code == 0, res.output
    assert "rocksdb_lastn" in res.stdout and "Storage fleet" in res.stdout
    # every assumption the plan uses is printed, and where each store's costs were measured
    assert "Assumptions:" in res.stdout and "Every daily active user has a stored sequence" in res.stdout
    assert "seqvault: measured in" in res.stdout
    res = CliRunner().invoke(main, ["plan", "--results", str(FIXTURES / "table1"), "--node-dram-gib", "0.01"])
    assert res.exit_code != 0 and "more DRAM" in res.output
    res = CliRunner().invoke(main, ["plan", "--results", str(tmp_path)])
    assert res.exit_code != 0 and "no store or ranker with measured costs" in res.output


def test_a_sharded_table1_says_its_rows_are_merged_cluster_rows(tmp_path: Path) -> None:
    doc = json.loads((FIXTURES / "table1" / "table1.json").read_text())
    doc["cluster"] = {"spec": {"shards": 2, "generators_on": "same"}, "nodes": 1, "placement": {"strategy": "PACK"}}
    doc["rows"]["seqvault"]["skew"] = {"measured_ops": {"max_over_mean": 1.07}}
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "table1.json").write_text(json.dumps(doc))
    html = render_html(load_results([tmp_path / "t"]), PlanInputs(), [str(tmp_path / "t")])
    note = re.search(r'<p class="muted cluster-note">(.*?)</p>', html, re.S)
    assert note is not None
    assert "merged cluster row of 2 shards" in note.group(1) and "seqvault 1.07" in note.group(1)
    assert "placement PACK" in note.group(1)
