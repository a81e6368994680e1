"""The report in a real browser: headless Chromium opens it from disk, charts render, the in-page
capacity planner agrees with reports/planning.py and recomputes when an input changes, and the
console stays clean. Needs Debian's `chromium` (.ci/run installs it) and the `playwright` package.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reports import PlanInputs, PlanningError, RankerCapacity, StoreCosts, plan, write_report

pytestmark = pytest.mark.browser

FIXTURES = Path(__file__).parent / "fixtures" / "results"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does this)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


@pytest.fixture(scope="module")
def report_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    write_report(sorted(p for p in FIXTURES.iterdir() if p.is_dir()), out)
    return out


@pytest.fixture(scope="module")
def page(report_path: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as user_data:
        ctx = pw.chromium.launch_persistent_context(user_data, executable_path=CHROMIUM, headless=True,
                                                    args=LAUNCH_ARGS, viewport={"width": 1366, "height": 768})
        pg = ctx.new_page()
        pg.console_errors = []
        pg.requests = []
        pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: pg.console_errors.append(f"uncaught: {e}"))
        pg.on("request", lambda r: pg.requests.append(r.url))
        pg.goto(report_path.as_uri(), wait_until="load")
        pg.wait_for_function("document.querySelectorAll('#plan-stores-body tr').length > 0")
        yield pg
        ctx.close()


def _plan_data(page: Any) -> tuple[list[StoreCosts], list[RankerCapacity], dict[str, Any]]:
    data = page.evaluate("window.storagebenchPlan.data")
    return ([StoreCosts(**s) for s in data["stores"]], [RankerCapacity(**r) for r in data["rankers"]],
            data["inputs"])


def _table_values(page: Any) -> dict[str, dict[str, str]]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#plan-stores-body tr')].map(
        tr => [tr.dataset.store, Object.fromEntries([...tr.querySelectorAll('td[data-field]')].map(
            td => [td.dataset.field, td.dataset.value]))]))""")


def _assert_same(py: Any, js: Any, where: str) -> None:
    if isinstance(py, dict):
        assert set(py) <= set(js), f"{where}: JS lacks {set(py) - set(js)}"
        for k, v in py.items():
            _assert_same(v, js[k], f"{where}.{k}")
    elif isinstance(py, list):
        assert len(py) == len(js), where
        for i, (a, b) in enumerate(zip(py, js, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(py, int | float) and not isinstance(py, bool):
        assert math.isclose(py, js, rel_tol=1e-12, abs_tol=1e-12), f"{where}: python {py} != js {js}"
    else:
        assert py == js, f"{where}: python {py!r} != js {js!r}"


def test_opens_from_disk_without_network_and_charts_render(page: Any) -> None:
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in page.requests), page.requests
    n_charts = page.locator(".plotly-graph-div").count()
    assert n_charts >= 7
    # every chart div was drawn by plotly (an SVG inside) and the latency chart has one line per log
    assert page.locator(".plotly-graph-div .main-svg").count() >= n_charts
    assert page.locator("#chart-latency .scatterlayer .trace").count() == 6
    assert page.locator("#chart-e2e .barlayer .trace").count() == 5
    # capacity curves: one line per swept store plus a ring on each sustainable step, and the SLO line
    assert page.locator("#chart-capacity .scatterlayer .trace").count() == 4
    assert "SLO 10 ms" in page.inner_text("#chart-capacity")
    assert page.locator("#sustainable-table tr").count() == 3
    costs = page.locator(".compare-table tr")
    assert costs.count() == 1 + 3 + 1  # header, three stores, the floor
    assert all("$" in costs.nth(i).inner_text() for i in range(1, 4))
    assert page.console_errors == []


def test_page_planner_matches_python_at_the_default_inputs(page: Any) -> None:
    stores, rankers, inputs = _plan_data(page)
    expected = plan(PlanInputs(**inputs), stores, rankers)
    shown = _table_values(page)
    assert set(shown) == {s["store"] for s in expected["stores"]}
    for s in expected["stores"]:
        for field, value in shown[s["store"]].items():
            want = s[field]
            if isinstance(want, str):
                assert value == want
            else:
                assert math.isclose(float(value), want, rel_tol=1e-12), (s["store"], field, value, want)
    assert page.locator("#plan-rankers-body tr").count() == len(expected["rankers"])


def test_changing_an_input_recomputes_in_the_page(page: Any, tmp_path: Path) -> None:
    stores, rankers, inputs = _plan_data(page)
    before = _table_values(page)
    page.fill("#plan-peak_qps", "1000000")
    page.wait_for_function("document.querySelector('#plan-stores-body tr td[data-field=cores_zone]')"
                           f".dataset.value !== '{before[stores[0].store]['cores_zone']}'")
    after = _table_values(page)
    expected = plan(PlanInputs(**{**inputs, "peak_qps": 1_000_000.0}), stores, rankers)
    for s in expected["stores"]:
        assert float(after[s["store"]]["cores_zone"]) > float(before[s["store"]]["cores_zone"])
        assert math.isclose(float(after[s["store"]]["cores_zone"]), s["cores_zone"], rel_tol=1e-12)
        assert int(after[s["store"]]["nodes_zone"]) == s["nodes_zone"]
    shot = tmp_path / "planning.png"
    page.locator("#planning").scroll_into_view_if_needed()
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    # an impossible input shows the planner's message instead of numbers, and reset restores the plan
    page.fill("#plan-target_util", "0")
    page.wait_for_selector("#plan-error:not([hidden])")
    assert "target_util must be in (0, 1]" in page.inner_text("#plan-error")
    assert page.locator("#plan-stores-body tr").count() == 0
    page.click("#plan-reset")
    page.wait_for_selector("#plan-error", state="hidden")
    assert _table_values(page) == before
    assert page.console_errors == []


def _grid_cases(stores: list[StoreCosts], rankers: list[RankerCapacity]) -> list[dict[str, Any]]:
    rng = random.Random(20260101)
    cases = [
        # float-noise edge: 6 busy cores / 2-core nodes must stay 3 nodes on both sides
        {"inputs": dict(dau=1_000_000, events_per_user_per_day=86.4, seq_len=1000, peak_qps=30_000, candidates=100,
                        replication=2, zones=3, target_util=0.5, node_cores=2, node_dram_gib=16, node_ssd_tib=1,
                        ssd_headroom=0.25),
         "stores": [StoreCosts("hand", 1e-4, 5e-4, 500, 10, 1.2, 1024, 2**30, 3 * 2**30)], "rankers": []},
    ]
    for _ in range(60):
        inputs = dict(
            dau=float(int(10 ** rng.uniform(5, 9))), events_per_user_per_day=round(rng.uniform(1, 500), 2),
            seq_len=rng.choice([100, 256, 500, 1000, 2000, 4000]), peak_qps=round(10 ** rng.uniform(2, 6), 1),
            candidates=rng.choice([10, 50, 100, 200, 500, 2000]), replication=rng.randint(1, 5),
            zones=rng.randint(1, 5), target_util=round(rng.uniform(0.2, 0.95), 2),
            node_cores=rng.choice([8, 16, 32, 64, 96, 192]), node_dram_gib=rng.choice([64, 128, 256, 512, 2048]),
            node_ssd_tib=rng.choice([1, 3.84, 7.68, 15.36, 60]), ssd_headroom=round(rng.uniform(0, 0.5), 2))
        cases.append({"inputs": inputs, "stores": stores, "rankers": rankers})
    # both sides must refuse the same impossible node
    cases.append({"inputs": {**cases[1]["inputs"], "node_dram_gib": 1.0},
                  "stores": [StoreCosts("big-cache", 1e-4, 1e-5, 1000, 10, 1, 10, 2**30, 2**30)], "rankers": []})
    return cases


def test_page_planner_agrees_with_python_on_a_grid(page: Any) -> None:
    stores, rankers, _ = _plan_data(page)
    cases = _grid_cases(stores, rankers)
    js_results = page.evaluate("""cases => cases.map(c => {
        try { return window.storagebenchPlan.plan(c.inputs, c.stores, c.rankers); }
        catch (e) { return {error: e.message}; } })""",
                               [{"inputs": c["inputs"], "stores": [dataclasses.asdict(s) for s in c["stores"]],
                                 "rankers": [dataclasses.asdict(r) for r in c["rankers"]]} for c in cases])
    errors = 0
    for i, (case, js) in enumerate(zip(cases, js_results, strict=True)):
        try:
            py = plan(PlanInputs(**case["inputs"]), case["stores"], case["rankers"])
        except PlanningError as e:
            errors += 1
            assert js.get("error") == str(e), f"case {i}"
            continue
        assert "error" not in js, f"case {i}: JS refused what Python planned: {js}"
        _assert_same(py["stores"], js["stores"], f"case {i} stores")
        _assert_same(py["rankers"], js["rankers"], f"case {i} rankers")
    assert errors == 1
    assert page.console_errors == []


def test_full_page_screenshot(page: Any, tmp_path: Path) -> None:
    """A laptop-sized full-page screenshot; kept in $REPORT_SCREENSHOT_DIR when set, for a human to look at."""
    target = Path(os.environ.get("REPORT_SCREENSHOT_DIR", tmp_path))
    target.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1366, "height": 768})
    page.screenshot(path=str(target / "report-full.png"), full_page=True)
    assert (target / "report-full.png").stat().st_size > 50_000
