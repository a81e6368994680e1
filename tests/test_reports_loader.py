"""Loading result directories: every kind found, and bad input turned into a clear problem, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

from reports.costs import e2e_runs, store_runs, sweep_runs
from reports.hlog import curve_from_hlog
from reports.loader import load_results, number, pick

FIXTURES = Path(__file__).parent / "fixtures" / "results"


def test_every_fixture_kind_loads_from_the_parent_directory() -> None:
    rs = load_results([FIXTURES])  # a parent: looks one level down
    assert rs.kinds == {"table1", "run", "compare", "sweep", "e2e", "flops", "paper_tables", "serve_bench"}
    (t1,) = [r for r in rs.of_kind("table1") if r.label == "table1"]
    assert len(t1.hlogs) == 12 and all(h.parent.name == "hdr" for h in t1.hlogs)
    assert len(store_runs(rs)) == 3 + 1 + 1 + 3  # table1, run, partial table1, compare
    assert sorted(s.store for s in sweep_runs(rs)) == ["rocksdb_lastn", "seqvault"]
    assert {run["store"] for _, run, _ in e2e_runs(rs)} == {"rocksdb_lastn", "seqvault"}
    # the truncated file is reported with a hint, the rest still loads
    assert any("broken/table1.json is not valid JSON" in p and "rerun" in p for p in rs.problems)


def test_missing_empty_and_foreign_inputs_are_problems(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.json").write_text(json.dumps({"hello": 1}))
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "u.json").write_text(json.dumps({"kind": "mystery"}))
    rs = load_results([tmp_path / "nope", empty, foreign, unknown])
    assert rs.results == []
    text = "\n".join(rs.problems)
    assert "nope does not exist" in text
    assert "holds no result file" in text
    assert "no \"kind\" key" in text
    assert "kind 'mystery'" in text and "known: table1" in text


def test_pick_and_number_are_tolerant() -> None:
    d = {"a": {"b": 1}, "c": None}
    assert pick(d, "x.y", "a.b") == 1
    assert pick(d, "c", "zz", default=7) == 7
    assert number("3~5ms") is None and number(True) is None and number(float("nan")) is None
    assert number(2) == 2.0


def test_hdr_log_curve_matches_the_recorded_percentiles() -> None:
    # fixture logs are lognormal with p50 = 0.5 ms and p99 = 1.8 ms (SeqVault reads), in microseconds
    c = curve_from_hlog(FIXTURES / "table1" / "hdr" / "seqvault.read.latency.hlog", "x")
    assert c is not None and c.count == 6000
    by_p = dict(zip(c.percentiles, c.values_ms, strict=True))
    assert abs(by_p[50.0] - 0.5) < 0.05
    assert abs(by_p[99.0] - 1.8) < 0.3
    assert c.values_ms == sorted(c.values_ms)


def test_a_corrupt_hdr_log_does_not_sink_the_report(tmp_path: Path) -> None:
    from reports.render import build_context

    d = tmp_path / "t1"
    (d / "hdr").mkdir(parents=True)
    (d / "table1.json").write_text((FIXTURES / "table1" / "table1.json").read_text())
    (d / "hdr" / "seqvault.read.latency.hlog").write_text("0.0,1.0,0.0,HISTFAAAA-not-base64!!\n")
    rs = load_results([d])
    ctx = build_context(rs)
    # the bad log is skipped or reported; the latency section still shows the recorded percentiles
    assert ctx["latency"]["chart"] is not None


def test_reports_reads_result_files_only() -> None:
    """Dependency direction: reports imports none of storagebench, seqvault, workloads, rankers."""
    import ast

    forbidden = {"storagebench", "seqvault", "workloads", "rankers"}
    for path in (Path(__file__).parent.parent / "reports").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_the_commands_quoted_for_missing_results_exist_with_their_options() -> None:
    """The page tells a reader which command produces a missing section: it must be a real one."""
    from click.testing import CliRunner

    from reports.loader import PRODUCED_BY
    from storagebench.cli import main

    runner = CliRunner()
    for kind, hint in PRODUCED_BY.items():
        words = hint.split("(")[0].split()  # "(or: tox -e bench)" is an aside, not an option
        assert words[0] == "storagebench", (kind, hint)
        out = runner.invoke(main, [words[1], "--help"])
        assert out.exit_code == 0, (kind, out.output)
        for option in (w for w in words[2:] if w.startswith("-")):
            assert option in out.output, (kind, option)
