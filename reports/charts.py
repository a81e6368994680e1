"""Plotly figures for the report, returned as HTML fragments (plotly.js itself is inlined once by the page)."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from reports.costs import StoreRun
from reports.hlog import PercentileCurve
from reports.loader import number, pick

HEIGHT = 380
# the tick marks of an HDR percentile plot, placed at 1 / (1 - p)
_TAIL_TICKS = ((0, "0%"), (50, "50%"), (90, "90%"), (99, "99%"), (99.9, "99.9%"), (99.99, "99.99%"),
               (99.999, "99.999%"))


def to_div(fig: go.Figure, div_id: str, legend_below: bool = False) -> str:
    fig.update_layout(height=HEIGHT, margin={"l": 60, "r": 20, "t": 50, "b": 50}, template="plotly_white",
                      legend={"font": {"size": 11}})
    if legend_below:  # half-width charts: a side legend would squeeze the plot
        fig.update_layout(height=HEIGHT + 80, legend={"orientation": "h", "yanchor": "top", "y": -0.25, "x": 0})
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _tail_x(p: float) -> float:
    return 1.0 / max(1e-6, 1.0 - p / 100.0)


def latency_curves(curves: list[PercentileCurve], div_id: str, title: str) -> str:
    """HDR-style percentile plot: x = 1/(1-p) on a log axis so the tail gets the room."""
    fig = go.Figure()
    for c in curves:
        fig.add_trace(go.Scatter(x=[_tail_x(p) for p in c.percentiles], y=c.values_ms, mode="lines",
                                 name=f"{c.label} (n={c.count:,})",
                                 customdata=c.percentiles,
                                 hovertemplate="p%{customdata}: %{y:.3f} ms<extra>" + c.label + "</extra>"))
    fig.update_xaxes(type="log", title="percentile", tickvals=[_tail_x(p) for p, _ in _TAIL_TICKS],
                     ticktext=[t for _, t in _TAIL_TICKS])
    fig.update_yaxes(type="log", title="latency (ms)")
    fig.update_layout(title=title)
    return to_div(fig, div_id)


def curves_from_percentiles(runs: list[StoreRun]) -> list[PercentileCurve]:
    """Fallback when no HDR log exists: the recorded percentiles of each store and operation."""
    keys = (("p50_ms", 50.0), ("p90_ms", 90.0), ("p99_ms", 99.0), ("p999_ms", 99.9), ("max_ms", 99.999))
    out = []
    for run in runs:
        ops = run.get("latency")
        if not isinstance(ops, dict):
            continue
        for op, stats in ops.items():
            summary = pick(stats, "latency") if isinstance(stats, dict) else None
            pts = [(p, number(pick(summary, k))) for k, p in keys] if isinstance(summary, dict) else []
            pts = [(p, v) for p, v in pts if v is not None and v > 0]
            if len(pts) >= 2:
                count = int(number(pick(stats, "count")) or 0)
                out.append(PercentileCurve(f"{run.store}.{op}", [p for p, _ in pts], [v for _, v in pts], count))
    return out


def cpu_usage(runs: list[StoreRun], div_id: str) -> str | None:
    """Storage-node CPU per second of the replay; 100% is one core (the load generator's is left out)."""
    fig = go.Figure()
    for run in runs:
        series = run.get("cpu.series")
        if isinstance(series, list) and series:
            pts = [(number(p[0]), number(p[1])) for p in series if isinstance(p, list | tuple) and len(p) >= 2]
            pts = [(t, v) for t, v in pts if t is not None and v is not None]
            fig.add_trace(go.Scatter(x=[t for t, _ in pts], y=[v for _, v in pts], mode="lines", name=run.label))
    if not fig.data:
        return None
    fig.update_layout(title="Storage-node CPU over the replay (100% = one core)", xaxis_title="time (s)",
                      yaxis_title="CPU (% of one core)")
    return to_div(fig, div_id)


def grouped_bars(title: str, categories: list[str], series: dict[str, list[float | None]], div_id: str,
                 y_title: str, log_y: bool = False) -> str | None:
    fig = go.Figure()
    for name, values in series.items():
        if any(v is not None for v in values):
            fig.add_trace(go.Bar(x=categories, y=values, name=name,
                                 text=[_short(v) for v in values], textposition="outside"))
    if not fig.data:
        return None
    fig.update_layout(title=title, barmode="group", yaxis_title=y_title)
    if log_y:
        fig.update_yaxes(type="log")
    return to_div(fig, div_id, legend_below=True)


def _short(v: float | None) -> str:
    if v is None:
        return ""
    if abs(v) >= 1e5 or (0 < abs(v) < 1e-2):
        return f"{v:.3g}"
    return f"{v:,.2f}"


def e2e_breakdown(rows: list[dict[str, Any]], budget_ms: float | None, div_id: str) -> str | None:
    """Stacked p99 per stage for each e2e run, with the budget as a line.

    Stage p99s do not add up to the total p99 (tails rarely coincide); the stack shows where the
    time goes, the marker the measured total p99.
    """
    stages = ("queue", "fetch", "decode", "h2d", "forward")
    fig = go.Figure()
    labels = [r["label"] for r in rows]
    for stage in stages:
        fig.add_trace(go.Bar(y=labels, x=[r["stages"].get(stage, {}).get("p99_ms") for r in rows],
                             name=stage, orientation="h"))
    totals = [r["stages"].get("total", {}).get("p99_ms") for r in rows]
    fig.add_trace(go.Scatter(y=labels, x=totals, mode="markers", name="total p99",
                             marker={"symbol": "diamond", "size": 12, "color": "black"}))
    if budget_ms:
        fig.add_vline(x=budget_ms, line_dash="dash", line_color="red",
                      annotation_text=f"budget {budget_ms:g} ms")
    fig.update_layout(title="End-to-end p99 by stage against the latency budget", barmode="stack",
                      xaxis_title="p99 latency (ms)")
    return to_div(fig, div_id)


def flops_vs_auc(points: list[tuple[str, str, float, float]], div_id: str) -> str | None:
    """points: (series, method, flops, AUC gain over the series' Base in percentage points)."""
    if not points:
        return None
    fig = go.Figure()
    for series in dict.fromkeys(p[0] for p in points):
        pts = [p for p in points if p[0] == series]
        fig.add_trace(go.Scatter(x=[p[2] for p in pts], y=[p[3] for p in pts], mode="markers+text",
                                 text=[p[1] for p in pts], textposition="top center", name=series,
                                 marker={"size": 10}))
    fig.update_xaxes(type="log", title="FLOPs per sample (log)")
    fig.update_yaxes(title="AUC gain over Base (pp)")
    fig.update_layout(title="FLOPs vs AUC gain")
    return to_div(fig, div_id, legend_below=True)


def flops_by_length(rows: list[dict[str, Any]], div_id: str) -> str | None:
    fig = go.Figure()
    for model in dict.fromkeys(str(r.get("model")) for r in rows):
        # One point per L: rows at several candidate counts share the per-pair figures.
        by_len = {number(r.get("seq_len")): r for r in reversed(rows) if str(r.get("model")) == model}
        mrows = [by_len[k] for k in sorted(by_len, key=lambda k: k or 0)]
        for key, dash in (("analytic", "solid"), ("measured", "dot")):
            pts = [(number(r.get("seq_len")), number(r.get(key))) for r in mrows]
            pts = [(x, y) for x, y in pts if x and y and y > 0 and not math.isnan(y)]
            if pts:
                fig.add_trace(go.Scatter(x=[x for x, _ in pts], y=[y for _, y in pts], mode="lines+markers",
                                         name=f"{model} {key}", line={"dash": dash}))
    if not fig.data:
        return None
    fig.update_xaxes(type="log", title="sequence length L")
    fig.update_yaxes(type="log", title="FLOPs per sample")
    fig.update_layout(title="FLOPs by sequence length (analytic solid, measured dotted)")
    return to_div(fig, div_id, legend_below=True)


def flops_per_request(rows: list[dict[str, Any]], div_id: str) -> str | None:
    """Per-request MACs against candidates C (history side once + C x per candidate), one line per
    (model, L); the rows of ``storagebench flops --candidates``."""
    fig = go.Figure()
    keyed = [r for r in rows if number(r.get("candidates")) and number(r.get("per_request_macs"))]
    for model, seq_len in dict.fromkeys((str(r.get("model")), number(r.get("seq_len"))) for r in keyed):
        pts = sorted((number(r["candidates"]), number(r["per_request_macs"])) for r in keyed
                     if str(r.get("model")) == model and number(r.get("seq_len")) == seq_len)
        if len(pts) > 1:
            fig.add_trace(go.Scatter(x=[x for x, _ in pts], y=[y for _, y in pts], mode="lines+markers",
                                     name=f"{model} L={seq_len:g}"))
    if not fig.data:
        return None
    fig.update_xaxes(type="log", title="candidates per request C")
    fig.update_yaxes(type="log", title="MACs per request")
    fig.update_layout(title="Per-request cost against C (history side once, per-candidate part C times)")
    return to_div(fig, div_id, legend_below=True)


def capacity_curves(sweeps: list[dict[str, Any]], div_id: str) -> str | None:
    """Read P99 against achieved throughput, one line per store's sweep; each SLO as a dashed line,
    each store's sustainable step circled, steps that were not valid drawn hollow."""
    fig = go.Figure()
    slos: set[float] = set()
    for sw in sweeps:
        steps = [s for s in sw["steps"] if number(s.get("achieved_ops_per_s")) and number(s.get("p99_ms"))]
        if not steps:
            continue
        fig.add_trace(go.Scatter(
            x=[number(s["achieved_ops_per_s"]) for s in steps], y=[number(s["p99_ms"]) for s in steps],
            mode="lines+markers", name=sw["label"],
            marker={"size": 9, "symbol": ["circle" if s.get("valid") else "circle-open" for s in steps]},
            customdata=[[number(s.get("target_ops_per_s")), number(s.get("cpu_usage_pct")),
                         "within SLO" if s.get("within_slo") else ("over SLO" if s.get("valid") else "not valid")]
                        for s in steps],
            hovertemplate=("offered %{customdata[0]:,.0f} ops/s, achieved %{x:,.0f}: P99 %{y:.2f} ms, "
                           "CPU %{customdata[1]:.0f}% (%{customdata[2]})<extra>" + sw["label"] + "</extra>")))
        best = number(sw.get("sustainable"))
        if best:
            at = [s for s in steps if number(s["achieved_ops_per_s"]) == best]
            if at:
                fig.add_trace(go.Scatter(x=[best], y=[number(at[0]["p99_ms"])], mode="markers", showlegend=False,
                                         marker={"size": 18, "symbol": "circle-open", "line": {"width": 2}},
                                         hoverinfo="skip"))
        if number(sw.get("slo_ms")):
            slos.add(float(sw["slo_ms"]))
    if not fig.data:
        return None
    for slo in sorted(slos):
        fig.add_hline(y=slo, line_dash="dash", line_color="red", annotation_text=f"SLO {slo:g} ms")
    fig.update_xaxes(title="achieved throughput (ops/s)")
    fig.update_yaxes(type="log", title="read P99 from intended start (ms)")
    fig.update_layout(title="Capacity curves: read P99 against throughput (hollow: step not valid)")
    return to_div(fig, div_id)
