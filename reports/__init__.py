"""Self-contained HTML reports and capacity plans built from result files only.

Public API:

- :func:`write_report` / :func:`render_html`: result directories -> one HTML file (``storagebench report``)
- :func:`load_results`: read result directories into a :class:`ResultSet` (problems collected, never raised)
- :func:`plan_from_results`, :func:`plan`, :class:`PlanInputs`: the capacity-planning model (``storagebench plan``)
"""

from reports.loader import Result, ResultSet, load_results
from reports.planning import ASSUMPTIONS, PlanInputs, PlanningError, RankerCapacity, StoreCosts, plan
from reports.render import render_html, write_report
from reports.summary import plan_from_results

__all__ = [
    "ASSUMPTIONS", "PlanInputs", "PlanningError", "RankerCapacity", "Result", "ResultSet", "StoreCosts",
    "load_results", "plan", "plan_from_results", "render_html", "write_report",
]
