"""Turn result files into per-store measurements and the planner's cost inputs.

The key names are read tolerantly (``pick`` tries several spellings) because the result formats are
young; whatever cannot be found is reported by name rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from reports.loader import ResultSet, number, pick
from reports.planning import RankerCapacity, StoreCosts


@dataclass
class StoreRun:
    """One store's block from a table1 or run result (format: storagebench/results.py)."""

    store: str
    source: str  # the result directory it came from
    detail: dict[str, Any]  # rows[store]: headline values, latency, cpu, disk, io, stats, config
    doc: dict[str, Any]  # the whole result document: machine, workload, run_config, schedule

    def get(self, *paths: str) -> Any:
        return pick(self.detail, *paths)

    @property
    def label(self) -> str:
        return f"{self.store} ({self.source})"


REPLAY_KINDS = ("table1", "run", "compare")  # result kinds whose ``rows`` are per-store replay blocks


def store_runs(results: ResultSet) -> list[StoreRun]:
    runs: list[StoreRun] = []
    for res in [r for kind in REPLAY_KINDS for r in results.of_kind(kind)]:
        rows = res.data.get("rows")
        if not isinstance(rows, dict):
            results.problems.append(f"{res.path} has no \"rows\" object of per-store results; skipped")
            continue
        for name, block in rows.items():
            if isinstance(block, dict):
                runs.append(StoreRun(store=str(name), source=res.label, detail=block, doc=res.data))
    return runs


@dataclass
class SweepRun:
    """A store's capacity sweep: its steps and the full block at the sustainable rate."""

    store: str
    source: str
    doc: dict[str, Any]

    @property
    def per_core(self) -> float | None:
        return number(self.doc.get("sustainable_ops_per_s_per_core"))

    @property
    def label(self) -> str:
        return f"{self.store} (sweep, P99 <= {number(self.doc.get('slo_ms')) or 0:g} ms, {self.source})"


def sweep_runs(results: ResultSet) -> list[SweepRun]:
    out = []
    for res in results.of_kind("sweep"):
        if not isinstance(res.data.get("steps"), list):
            results.problems.append(f"{res.path} has no \"steps\" list of sweep steps; skipped")
            continue
        out.append(SweepRun(str(res.data.get("store", "?")), res.label, res.data))
    return out


def sweep_store_costs(sweep: SweepRun) -> tuple[StoreCosts | None, list[str]]:
    """The planner's inputs from a sweep: bytes and DRAM from the block at the sustainable rate, and
    CPU per op = 1 / the sustainable ops/s per core (so cores follow the SLO, not a utilisation target)."""
    rows = sweep.doc.get("rows") if isinstance(sweep.doc.get("rows"), dict) else {}
    block = rows.get(sweep.store)
    per_core = sweep.per_core
    if not isinstance(block, dict) or not per_core:
        return None, ["a step within the SLO (sustainable_ops_per_s_per_core and its block in rows)"]
    run = StoreRun(store=sweep.store, source=sweep.source, detail=block, doc=sweep.doc)
    base, missing = store_costs(run)
    if base is None:
        return None, missing
    per_op = 1.0 / per_core
    appends = number(run.get("latency.append.count"))
    appended = number(run.get("io.appended_events"))
    per_append_event = per_op / (appended / appends) if appends and appended else per_op
    lower_bound = sweep.doc.get("bound_by") in ("workload", "max_steps")
    return replace(base, store=sweep.label, cpu_s_per_read=per_op, cpu_s_per_append=per_append_event,
                   slo_bound=True, source=f"{sweep.source}; CPU: 1 / {per_core:,.0f} ops/s per core within "
                                          f"{number(sweep.doc.get('slo_ms')) or 0:g} ms P99"
                                          + ("; a LOWER BOUND on capacity (the sweep never reached the store's "
                                             "limit), so these cores are an upper bound" if lower_bound else "")), []


def _users(run: StoreRun) -> float | None:
    # the stores share one workload per result file, so another store's user count serves too
    rows = run.doc.get("rows") if isinstance(run.doc.get("rows"), dict) else {}
    candidates = [run.get("stats.users")] + [pick(b, "stats.users") for b in rows.values() if isinstance(b, dict)]
    candidates += [pick(run.doc, "workload.parameters.users", "workload.summary.users", "workload.users")]
    return _first_number(*candidates)


def store_costs(run: StoreRun) -> tuple[StoreCosts | None, list[str]]:
    """The planner's inputs for one store, or None and the list of what is missing.

    The run measures CPU over a mix of reads and appends (``cpu.cpu_s_per_op``); unless separate
    per-type costs are recorded, that blended cost is charged per read and per append operation.
    ``disk.bytes_per_event`` is on-disk bytes (amplification included), so space amplification is 1.
    """
    missing: list[str] = []
    notes: list[str] = []
    blended = number(run.get("cpu.cpu_s_per_op"))
    cpu_read = _first_number(run.get("cpu.cpu_s_per_read"), blended)
    per_append_op = _first_number(run.get("cpu.cpu_s_per_append"), blended)
    if run.get("cpu.cpu_s_per_read") is None and blended is not None:
        notes.append("CPU per read and per append = the run's blended CPU per operation")
    appends = _first_number(pick(run.doc, "schedule.measured_appends"), run.get("latency.append.count"))
    appended_events = _first_number(pick(run.doc, "schedule.measured_appended_events"),
                                    run.get("io.appended_events"))
    events_per_append = appended_events / appends if appended_events and appends else None
    cpu_append = per_append_op / events_per_append if per_append_op is not None and events_per_append else None
    seq_len = _first_number(pick(run.doc, "run_config.max_len"), run.get("config.max_len", "run_config.max_len"))
    bpe = number(run.get("disk.bytes_per_event"))
    users = _users(run)
    # DRAM that grows with users: SeqVault's hash index, RocksDB's table readers outside the block
    # cache, or (Redis) the whole resident data set
    index = _first_number(run.get("stats.index_bytes"), run.get("stats.estimate-table-readers-mem"),
                          run.get("stats.resident_data_bytes"))
    index_per_user = index / users if index is not None and users else None
    for name, value in (("cpu.cpu_s_per_op", cpu_read),
                        ("appended events per append (schedule.measured_appended_events / measured_appends)",
                         cpu_append),
                        ("run_config.max_len (sequence length read)", seq_len),
                        ("disk.bytes_per_event", bpe),
                        ("index bytes (stats.index_bytes, estimate-table-readers-mem or resident_data_bytes) "
                         "and user count",
                         index_per_user)):
        if value is None:
            missing.append(name)
    wbs = number(run.get("config.write_buffer_bytes", "config.write_buffer_size"))
    nwb = number(run.get("config.max_write_buffer_number"))
    shards = [b for b in run.get("shards") or [] if isinstance(b, dict)]
    # A sharded row's stats are the shards' sums; what one node holds comes from its largest shard.
    per_node_stats = [pick(b, "stats.buffer_bytes", "stats.cur-size-all-mem-tables") for b in shards]
    node_buffer = max((number(v) for v in per_node_stats if number(v) is not None), default=None)
    buffer = _first_number(wbs * nwb if wbs is not None and nwb is not None else None, node_buffer,
                           run.get("stats.buffer_bytes"), run.get("stats.cur-size-all-mem-tables"))
    if shards:
        notes.append(_shard_note(run, shards))
    cache = number(run.get("config.block_cache_bytes"))
    if buffer is None:
        notes.append("update buffer / memtable size not recorded: 0 assumed")
    if cache is None:
        notes.append("no block cache configured: 0")
    if missing:
        return None, missing
    return StoreCosts(
        store=run.store, cpu_s_per_read=cpu_read, cpu_s_per_append=cpu_append,
        measured_seq_len=int(seq_len), bytes_per_event=bpe, space_amplification=1.0,
        index_bytes_per_user=index_per_user, buffer_bytes_per_node=buffer or 0.0,
        cache_bytes_per_node=cache or 0.0, source="; ".join([run.source, *notes]),
    ), []


def _shard_note(run: StoreRun, shards: list[dict[str, Any]]) -> str:
    per_op = [number(b.get("cpu_s_per_op")) for b in shards]
    skew = number(run.get("skew.measured_ops.max_over_mean"))
    nodes = run.get("cluster.ray_nodes_used")
    return (f"measured as {len(shards)} hash-partitioned shards" + (f" on {nodes} Ray node(s)" if nodes else "")
            + ": CPU per op and bytes per event are the cluster's (every shard's CPU over every shard's ops); "
            + "per shard " + ", ".join("n/a" if v is None else f"{1e6 * v:.0f}" for v in per_op) + " µs/op"
            + (f", load skew (max/mean ops) {skew:.2f}, not applied to the fleet" if skew is not None else "")
            + "; per-node buffers from the largest shard")


def _first_number(*values: Any) -> float | None:
    for v in values:
        if number(v) is not None:
            return number(v)
    return None


def all_store_costs(runs: list[StoreRun], sweeps: list[SweepRun] | None = None
                    ) -> tuple[list[StoreCosts], list[str]]:
    """Costs of every run that has them (names made unique by source), then of every sweep, and why
    the others have none."""
    costs: list[StoreCosts] = []
    incomplete: list[str] = []
    swept = {s.store for s in sweeps or [] if sweep_store_costs(s)[0] is not None}
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.store] = counts.get(run.store, 0) + 1
    for run in runs:
        if run.store in swept:  # a capacity curve beats one rate: plan from the sweep
            incomplete.append(f"{run.store} ({run.source}): planned from its capacity sweep instead of this "
                              f"single-rate run")
            continue
        c, missing = store_costs(run)
        if c is None:
            incomplete.append(f"{run.store} ({run.source}): missing {', '.join(missing)}")
        else:
            costs.append(replace(c, store=f"{run.store} ({run.source})") if counts[run.store] > 1 else c)
    for sweep in sweeps or []:
        c, missing = sweep_store_costs(sweep)
        if c is None:
            incomplete.append(f"{sweep.label}: missing {', '.join(missing)}")
        else:
            costs.append(c)
    return costs, incomplete


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
        cells = res.data.get("cells") if isinstance(res.data.get("cells"), list) else []
        for cell in cells:
            if not isinstance(cell, dict):
                continue
            rps, c, n = (number(pick(cell, k)) for k in ("requests_per_s", "candidates", "seq_len"))
            if rps and c and n:
                compiled = ", compiled" if cell.get("compiled") else ""
                label = (f"{cell.get('model', '?')} on {cell.get('device', '?')} "
                         f"({cell.get('dtype', '?')}{compiled}, C={int(c)}, serve-bench)")
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
