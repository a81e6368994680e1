"""Turn result files into per-store measurements and the planner's cost inputs.

The key names are read tolerantly (``pick`` tries several spellings) because the result formats are
young; whatever cannot be found is reported by name rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reports.loader import ResultSet, number, pick
from reports.planning import RankerCapacity, StoreCosts


@dataclass
class StoreRun:
    """One store's measurements from a table1 or run result."""

    store: str
    source: str  # the result directory it came from
    summary: dict[str, Any]  # the Table 1 row (may be empty for a run.json)
    detail: dict[str, Any]  # per-op latency, CPU, disk, amplification, DRAM ...
    workload: dict[str, Any]
    machine: dict[str, Any]
    options: dict[str, Any]

    def get(self, *paths: str) -> Any:
        return pick(self.detail, *paths, default=pick(self.summary, *paths))


def store_runs(results: ResultSet) -> list[StoreRun]:
    runs: list[StoreRun] = []
    for res in results.of_kind("table1"):
        d = res.data
        rows = d.get("rows") if isinstance(d.get("rows"), dict) else {}
        details = pick(d, "details", "per_store", "store_details", default={})
        names = list(rows) + [n for n in details if n not in rows]
        for name in names:
            detail = details.get(name) if isinstance(details.get(name), dict) else {}
            runs.append(StoreRun(
                store=name, source=res.label, summary=rows.get(name) or {}, detail=detail,
                workload=pick(detail, "workload", default=pick(d, "workload", default={})),
                machine=pick(detail, "machine", default=pick(d, "machine", default={})),
                options=pick(detail, "options", default=pick(d, f"stores.{name}", default={})),
            ))
    for res in results.of_kind("run"):
        d = res.data
        runs.append(StoreRun(
            store=str(pick(d, "store", "name", default=res.label)), source=res.label, summary={}, detail=d,
            workload=pick(d, "workload", default={}), machine=pick(d, "machine", default={}),
            options=pick(d, "options", "store_options", default={}),
        ))
    return runs


def _measured_seq_len(run: StoreRun) -> float | None:
    return number(pick(run.detail, "seq_len", "read_len", "last_n",
                       default=pick(run.workload, "seq_len", "read_len", "last_n", "read_events")))


def store_costs(run: StoreRun) -> tuple[StoreCosts | None, list[str]]:
    """The planner's inputs for one store, or None and the list of what is missing.

    Optional pieces get a stated default (named in the returned notes): space amplification 1.0 when
    neither it nor disk/live bytes were recorded, and 0 for an unreported buffer or block cache.
    """
    missing: list[str] = []
    notes: list[str] = []
    cpu_read = number(run.get("cpu_s_per_op.read", "cpu_s_per_read", "ops.read.cpu_s_per_op"))
    cpu_append = number(run.get("cpu_s_per_op.append", "cpu_s_per_append", "ops.append.cpu_s_per_op",
                                "cpu_s_per_op.write"))
    seq_len = _measured_seq_len(run)
    bpe = number(run.get("bytes_per_event", "disk.bytes_per_event"))
    users = number(run.get("users", "users_stored")) or number(pick(run.workload, "users"))
    index = number(run.get("dram_bytes.index", "index_bytes", "dram.index_bytes"))
    index_per_user = number(run.get("index_bytes_per_user"))
    if index_per_user is None and index is not None and users:
        index_per_user = index / users
    for name, value in (("cpu_s_per_op.read", cpu_read), ("cpu_s_per_op.append", cpu_append),
                        ("sequence length read (workload.seq_len)", seq_len), ("bytes_per_event", bpe),
                        ("dram_bytes.index and users", index_per_user)):
        if value is None:
            missing.append(name)
    space_amp = number(run.get("space_amplification", "disk.space_amplification"))
    if space_amp is None:
        disk, live = number(run.get("disk_bytes", "disk.total_bytes")), number(run.get("live_bytes"))
        if disk and live:
            space_amp = disk / live
        else:
            space_amp = 1.0
            notes.append("space amplification not recorded: 1.0 assumed")
    buffer = number(run.get("dram_bytes.buffer", "buffer_bytes")) or number(
        pick(run.options, "buffer_bytes", "write_buffer_bytes"))
    cache = number(run.get("dram_bytes.cache", "cache_bytes")) or number(
        pick(run.options, "block_cache_bytes", "cache_bytes"))
    if buffer is None:
        notes.append("update buffer size not recorded: 0 assumed")
    if cache is None:
        notes.append("block cache size not recorded: 0 assumed")
    if missing:
        return None, missing
    return StoreCosts(
        store=run.store, cpu_s_per_read=cpu_read, cpu_s_per_append=cpu_append,
        measured_seq_len=int(seq_len), bytes_per_event=bpe, space_amplification=space_amp,
        index_bytes_per_user=index_per_user, buffer_bytes_per_node=buffer or 0.0,
        cache_bytes_per_node=cache or 0.0, source=run.source + ("; " + "; ".join(notes) if notes else ""),
    ), []


def e2e_runs(results: ResultSet) -> list[tuple[str, dict[str, Any], float | None]]:
    """(source, run, budget_ms) for every e2e measurement; a file may hold one run or a list."""
    out = []
    for res in results.of_kind("e2e"):
        d = res.data
        runs = d.get("runs") if isinstance(d.get("runs"), list) else [d]
        for run in runs:
            if isinstance(run, dict):
                out.append((res.label, run, number(pick(run, "budget_ms", default=d.get("budget_ms")))))
    return out


def ranker_capacities(results: ResultSet) -> list[RankerCapacity]:
    """Measured ranking throughput: serve_bench rows, and each e2e run's max rate within its budget."""
    caps: list[RankerCapacity] = []
    for res in results.of_kind("serve_bench"):
        rows = res.data.get("rows") if isinstance(res.data.get("rows"), list) else []
        for row in rows:
            rps, c, n = (number(pick(row, k)) for k in ("requests_per_s", "candidates", "seq_len"))
            if rps and c and n:
                label = f"{row.get('model', '?')} on {row.get('device', '?')} ({row.get('dtype', '')}, serve-bench)"
                caps.append(RankerCapacity(label, rps, int(c), int(n), res.label))
    for source, run, budget in e2e_runs(results):
        rps = number(pick(run, "max_rate_within_budget_per_s", "max_rate_within_budget", "max_rate_per_s"))
        c, n = number(pick(run, "candidates")), number(pick(run, "seq_len"))
        if rps and c and n:
            label = (f"{run.get('store', '?')} + {run.get('model', '?')} on {run.get('device', '?')} "
                     f"(e2e, p99 within {budget:g} ms)" if budget else
                     f"{run.get('store', '?')} + {run.get('model', '?')} on {run.get('device', '?')} (e2e)")
            caps.append(RankerCapacity(label, rps, int(c), int(n), source))
    return caps
