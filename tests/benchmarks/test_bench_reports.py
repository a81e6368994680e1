"""Report rendering and capacity-planning speed.

Targets (checked only when benchmarking is enabled, `tox -e perf -- -k reports`): the whole fixture
report (every section, plotly.js inlined, 12 HDR logs) renders in under 5 s, and one store plan costs
under 50 µs, so the page and `storagebench plan` stay instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reports import PlanInputs, load_results, render_html
from reports.costs import all_store_costs, store_runs
from reports.planning import plan_store

FIXTURES = Path(__file__).parent.parent / "fixtures" / "results"
RENDER_TARGET_S = 5.0
PLAN_TARGET_S = 50e-6


def _enabled(benchmark: Any) -> bool:
    return not benchmark.disabled


def test_render_full_report(benchmark: Any) -> None:
    paths = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
    html = benchmark(lambda: render_html(load_results(paths)))
    assert 'id="chart-latency"' in html
    if _enabled(benchmark):
        assert benchmark.stats.stats.median < RENDER_TARGET_S


def test_plan_store(benchmark: Any) -> None:
    costs, _ = all_store_costs(store_runs(load_results([FIXTURES / "table1"])))
    inputs = PlanInputs()
    out = benchmark(lambda: [plan_store(inputs, c) for c in costs])
    assert len(out) == 3
    if _enabled(benchmark):
        assert benchmark.stats.stats.median / len(costs) < PLAN_TARGET_S
