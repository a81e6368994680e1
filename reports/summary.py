"""The capacity plan straight from result directories (what ``storagebench plan`` prints)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from reports.costs import all_store_costs, ranker_capacities, store_runs, sweep_runs
from reports.loader import load_results
from reports.planning import PlanInputs, plan


def plan_from_results(paths: Iterable[str | Path], inputs: PlanInputs) -> dict[str, object]:
    """Plan every store and ranker measured under ``paths``.

    The returned dict is :func:`reports.planning.plan`'s plus ``costs`` (the measured inputs used),
    ``not_planned`` (stores whose results lack a cost, with what is missing) and ``problems``
    (unreadable or unknown result files).
    """
    results = load_results(paths)
    costs, incomplete = all_store_costs(store_runs(results), sweep_runs(results))
    out = plan(inputs, costs, ranker_capacities(results))
    out["costs"] = [c.__dict__ for c in costs]
    out["not_planned"] = incomplete
    out["problems"] = results.problems
    return out
