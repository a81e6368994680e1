"""Capacity curves: one store replayed at rising offered rates, and the highest rate it sustains
inside a latency SLO.

Every step is a full, fresh :func:`storagebench.experiments.run.run_store` (new store directory,
bulk load, warm-up, measured window) at one offered rate, open loop, with the trace's burstiness
kept. A step *passes* when it is valid by Table 1's rules (no backlog growth, no window opening on
a backlog, every op answered, >= 90 % of the offered rate achieved, for reads and appends apart)
and its read P99 from intended start is within the SLO. ``--auto`` doubles the rate from a start
until a step fails, then bisects between the highest pass and the lowest fail until they are
within ``tolerance`` of each other.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

from rich.console import Console
from rich.table import Table

from storagebench.experiments.run import RunConfig, WorkloadLike, prepare, run_store
from storagebench.experiments.table1 import aggregate
from storagebench.measure import machine_info
from storagebench.results import write_json

DEFAULT_SLO_MS = 10.0


def step_summary(block: dict[str, Any], target_rate: float, slo_ms: float, short_by: str | None) -> dict[str, Any]:
    """The fields of one step that the curve and the search need."""
    reasons = list(block["invalid_reasons"]) + ([short_by] if short_by else [])
    valid = block["valid"] and not short_by
    return {
        "target_ops_per_s": target_rate, "offered_ops_per_s": block["offered_ops_per_s"],
        "achieved_ops_per_s": block["achieved_ops_per_s"], "p50_ms": block["p50_ms"], "p99_ms": block["p99_ms"],
        "p999_ms": block["p999_ms"], "append_p99_ms": block["latency"]["append"]["latency"]["p99_ms"],
        "read_service_p99_ms": block["latency"]["read"]["service"]["p99_ms"],
        "cpu_usage_pct": block["cpu_usage_pct"], "cpu_s_per_op": block["cpu_s_per_op"],
        "cpu_us_per_op": 1e6 * block["cpu_s_per_op"], "node_cores": block["cpu"]["node_cores"],
        "dispatch_lag_p99_ms": block["generator"]["dispatch_lag_p99_ms"],
        "disk_bytes": block["disk_bytes"], "dram_bytes": block["dram_bytes"],
        "valid": valid, "invalid_reasons": reasons, "within_slo": valid and block["p99_ms"] <= slo_ms,
    }


class Sweep:
    """Measures one store at given rates; keeps every step and the full block of each passing one."""

    def __init__(self, wl: WorkloadLike, cfg: RunConfig, store: str, out_dir: str, *, slo_ms: float,
                 repeats: int = 1, console: Console | None = None,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.wl, self.cfg, self.store, self.out_dir = wl, cfg, store, out_dir
        self.slo_ms, self.repeats = slo_ms, repeats
        self.console = console or Console(stderr=True)
        self.on_step = on_step
        self.steps: list[dict[str, Any]] = []
        self.blocks: dict[float, dict[str, Any]] = {}

    def measure(self, rate: float) -> dict[str, Any]:
        cfg = replace(self.cfg, rate=float(rate), speed=None)
        prepared = prepare(self.wl, cfg)
        window = prepared.schedule_info["window_s"]
        short_by = None
        if window < 0.9 * cfg.window_s:
            short_by = (f"the workload's live stream ends {window:.1f} s into the {cfg.window_s:.0f} s window at "
                        f"{rate:,.0f} ops/s: use a workload with more live operations (a longer trace or more "
                        f"users) or a shorter --window-s")
        blocks = []
        for r in range(self.repeats):
            label = f"{self.store} @ {rate:,.0f} ops/s" + (f" (repeat {r + 1}/{self.repeats})" if self.repeats > 1 else "")
            self.console.log(f"{label}: bulk load, {cfg.warmup_s:.0f} s warm-up, {window:.0f} s measured")
            block, _ = run_store(self.wl, prepared, self.store, os.path.join(self.out_dir, "stores", self.store), cfg,
                                 hist_log_dir=os.path.join(self.out_dir, "hdr"),
                                 log_prefix=f"{self.store}.{rate:g}." + (f"r{r + 1}." if self.repeats > 1 else ""))
            blocks.append(block)
        block = aggregate(blocks) if len(blocks) > 1 else blocks[0]
        step = step_summary(block, rate, self.slo_ms, short_by)
        step["repeats"] = len(blocks)
        self.steps.append(step)
        self.blocks[float(rate)] = block
        verdict = "within SLO" if step["within_slo"] else (
            "over the SLO" if step["valid"] else "not valid: " + "; ".join(step["invalid_reasons"]))
        self.console.log(f"{self.store} @ {rate:,.0f} ops/s: read p99 {step['p99_ms']:.2f} ms, "
                         f"CPU {step['cpu_usage_pct']:.0f}%, {step['achieved_ops_per_s']:,.0f} ops/s achieved: {verdict}")
        if self.on_step is not None:
            self.on_step(step)
        return step

    def run_rates(self, rates: Sequence[float]) -> None:
        """Each rate in rising order, stopping after the first step whose backlog grew."""
        for rate in sorted(rates):
            step = self.measure(rate)
            if not step["valid"]:
                break

    def run_auto(self, start: float, *, tolerance: float = 0.15, max_steps: int = 12, min_rate: float = 1.0) -> None:
        """Double from ``start`` until a step fails, then bisect to within ``tolerance``."""
        passed: float | None = None
        failed: float | None = None
        rate = start
        for _ in range(max_steps):
            step = self.measure(rate)
            if step["within_slo"]:
                passed = rate
            else:
                failed = rate  # too slow, or a rate this workload cannot fill: either way, search below
            if passed is not None and failed is not None:
                if failed / passed <= 1 + tolerance:
                    break
                rate = (passed + failed) / 2
            elif passed is not None:
                rate = passed * 2
            else:
                rate = failed / 2
                if rate < min_rate:
                    break

    def document(self, mode: str, complete: bool = True) -> dict[str, Any]:
        ok = [s for s in self.steps if s["within_slo"]]
        best = max(ok, key=lambda s: s["target_ops_per_s"]) if ok else None
        above = [s for s in self.steps if not s["within_slo"]
                 and (best is None or s["target_ops_per_s"] > best["target_ops_per_s"])]
        first_fail = min(above, key=lambda s: s["target_ops_per_s"]) if above else None
        lowest_fail = first_fail["target_ops_per_s"] if first_fail else None
        cores = self.steps[0]["node_cores"] if self.steps else None
        detail = self.blocks[float(best["target_ops_per_s"])] if best else None
        return {
            "machine": machine_info(self.out_dir), "workload": self.wl.manifest, "run_config": asdict(self.cfg),
            "store": self.store, "mode": mode, "slo_ms": self.slo_ms, "repeats": self.repeats,
            "steps": sorted(self.steps, key=lambda s: s["target_ops_per_s"]),
            "sustainable_ops_per_s": best["achieved_ops_per_s"] if best else None,
            "sustainable_target_ops_per_s": best["target_ops_per_s"] if best else None,
            "lowest_failing_ops_per_s": lowest_fail,
            "sustainable_ops_per_s_per_core": best["achieved_ops_per_s"] / cores if best and cores else None,
            "node_cores": cores,
            "cpu_usage_pct_at_sustainable": best["cpu_usage_pct"] if best else None,
            "bound_by": bound_by(first_fail),
            "complete": complete,
            # the full measured block at the sustainable rate: what the capacity planner reads
            "rows": {self.store: detail} if detail else {},
            "how": ("each step: a fresh store, bulk load, warm-up and measured window at one offered rate, open "
                    "loop; passes when valid (Table 1's rules) and read P99 from intended start <= slo_ms; "
                    "sustainable_ops_per_s is the achieved rate of the highest passing step, per core of the "
                    "node's pinned CPUs"),
        }


def bound_by(first_fail: dict[str, Any] | None) -> str:
    """What stopped the curve above the sustainable rate: the store (``slo``: P99 over the SLO;
    ``backlog``: not valid), the workload (``workload``: it cannot fill the next rate, so the
    sustainable rate is only a lower bound) or the search (``max_steps``: nothing failed)."""
    if first_fail is None:
        return "max_steps"
    reasons = first_fail["invalid_reasons"]
    if any("live stream ends" in why for why in reasons):
        return "workload"
    return "backlog" if reasons else "slo"


def run_sweep(wl: WorkloadLike, cfg: RunConfig, store: str, out_dir: str, *, rates: Sequence[float] | None = None,
              auto: bool = False, start_rate: float = 100.0, slo_ms: float = DEFAULT_SLO_MS,
              tolerance: float = 0.15, max_steps: int = 12, repeats: int = 1, keep_stores: bool = False,
              console: Console | None = None) -> dict[str, Any]:
    """Sweep one store and write ``OUT/sweep.json``; returns the document."""
    if (rates is None) == (not auto):
        raise ValueError("give rates or auto=True, not both and not neither")
    os.makedirs(os.path.join(out_dir, "hdr"), exist_ok=True)
    mode = "auto" if auto else "rates"
    # Written after every step (complete: false until the end): an interrupted sweep keeps its steps.
    sweep = Sweep(wl, cfg, store, out_dir, slo_ms=slo_ms, repeats=repeats, console=console,
                  on_step=lambda _: write_json(out_dir, "sweep", sweep.document(mode, complete=False)))
    try:
        if auto:
            sweep.run_auto(start_rate, tolerance=tolerance, max_steps=max_steps)
        else:
            sweep.run_rates(list(rates or []))
    finally:
        if not keep_stores:
            shutil.rmtree(os.path.join(out_dir, "stores"), ignore_errors=True)
    doc = sweep.document(mode)
    write_json(out_dir, "sweep", doc)
    return doc


def render_sweep(doc: dict[str, Any], console: Console) -> None:
    t = Table(title=f"{doc['store']}: latency vs offered rate (SLO: read P99 <= {doc['slo_ms']:g} ms)")
    for col in ("target ops/s", "achieved", "p50 ms", "P99 ms", "p99.9 ms", "append p99", "CPU", "CPU µs/op",
                "gen lag p99", "verdict"):
        t.add_column(col, justify="right")
    for s in doc["steps"]:
        verdict = ("within SLO" if s["within_slo"] else "over SLO" if s["valid"]
                   else "not valid: " + "; ".join(s["invalid_reasons"]))
        t.add_row(f"{s['target_ops_per_s']:,.0f}", f"{s['achieved_ops_per_s']:,.0f}", f"{s['p50_ms']:.2f}",
                  f"{s['p99_ms']:.2f}", f"{s['p999_ms']:.2f}", f"{s['append_p99_ms']:.2f}", f"{s['cpu_usage_pct']:.0f}%",
                  f"{s['cpu_us_per_op']:.0f}", f"{s['dispatch_lag_p99_ms']:.2f}", verdict,
                  style=None if s["within_slo"] else "red")
    console.print(t)
    if doc["sustainable_ops_per_s"] is None:
        console.print(f"[red]{doc['store']}: no step kept read P99 within {doc['slo_ms']:g} ms and was valid[/red]")
    else:
        console.print(f"{doc['store']}: sustainable {doc['sustainable_ops_per_s']:,.0f} ops/s within "
                      f"{doc['slo_ms']:g} ms = {doc['sustainable_ops_per_s_per_core']:,.0f} ops/s per core "
                      f"({doc['node_cores']} node core(s), {doc['cpu_usage_pct_at_sustainable']:.0f}% busy there)"
                      + (f"; the next step up ({doc['lowest_failing_ops_per_s']:,.0f} ops/s) failed"
                         if doc["lowest_failing_ops_per_s"] else "") + f" (bound by: {doc['bound_by']})")
        if doc["bound_by"] in ("workload", "max_steps"):
            console.print(f"[yellow]{doc['store']}: the sustainable rate is only a lower bound: "
                          + ("the workload cannot offer the next rate" if doc["bound_by"] == "workload"
                             else "no step failed within --max-steps") + "[/yellow]")
