"""Capacity planning: from measured per-operation costs to nodes, cores, DRAM, SSD and GPUs.

The same arithmetic runs in the report page (``templates/planning.js``) so a reader can change the
inputs and see the fleet recomputed; ``tests/test_report_browser.py`` checks that both agree. Keep
the two in step: same formulas, same order of operations (so the floating-point results match).

Every assumption the model makes is listed in :data:`ASSUMPTIONS`, which the page prints verbatim.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

GIB = 2**30
TIB = 2**40
SECONDS_PER_DAY = 86_400

ASSUMPTIONS: tuple[str, ...] = (
    "Every daily active user has a stored sequence; each holds the newest N events (older ones are trimmed).",
    "Each ranking request reads exactly one sequence of N events from the store.",
    "Ranking requests are spread evenly over zones, and within a zone over the replicas.",
    "Every appended event is applied on every replica in every zone; appends are spread evenly over the day "
    "(events per user per day × users ÷ 86,400 s).",
    "CPU per read = measured CPU seconds per read × N ÷ the sequence length read in the measured run "
    "(read cost grows linearly with events returned). CPU per appended event = measured CPU seconds per append "
    "operation ÷ events per append operation. Where a run records only its CPU per operation over its mix of "
    "reads and appends, that blended figure is used for both (the costs table says so).",
    "Cores per zone = busy cores ÷ target CPU utilisation; nodes for CPU = cores ÷ node cores. Where a capacity "
    "sweep measured the store (storagebench sweep), its CPU per operation is 1 ÷ the highest rate per core that "
    "kept read P99 within the sweep's SLO, and cores per zone = busy cores: the SLO, not the utilisation target, "
    "sets the headroom.",
    "DRAM per zone = index bytes per user × users × replication + (update buffer + block cache) on every node. "
    "Index bytes per user: SeqVault's DRAM hash index; RocksDB's table-reader memory outside the block cache "
    "(its index and filter blocks live in the cache). Buffer = configured memtables or the measured update "
    "buffer; cache = the configured block cache, both per node as in the measured run.",
    "SSD per zone = bytes per event × N × users × space amplification × (1 + SSD headroom) × replication. "
    "Bytes per event are measured on disk (files, WAL and dead space included), so space amplification is "
    "already in them and its factor is 1.",
    "Nodes per zone = the largest of the CPU, DRAM and SSD needs, and at least the replication factor "
    "(each replica on its own node). Totals = per zone × zones.",
    "Ranking devices per zone = peak QPS ÷ zones ÷ (measured requests/s per device × measured candidates ÷ "
    "planned candidates × target utilisation): scoring cost grows linearly with candidates. "
    "The measurement with the sequence length closest to N is used; no scaling in sequence length.",
    "Counts are rounded up to whole nodes or devices (after removing a 1e-9 floating-point slack).",
)


class PlanningError(ValueError):
    """The inputs or the measured costs cannot produce a plan; the message says what to change."""


@dataclass(frozen=True)
class PlanInputs:
    """What the capacity planner chooses; defaults are an illustrative large ads deployment."""

    dau: float = 100_000_000
    events_per_user_per_day: float = 60.0
    seq_len: int = 1000
    peak_qps: float = 100_000.0
    candidates: int = 200
    replication: int = 2
    zones: int = 3
    target_util: float = 0.5
    node_cores: int = 64
    node_dram_gib: float = 256.0
    node_ssd_tib: float = 7.0
    ssd_headroom: float = 0.3

    def validate(self) -> None:
        positive = ("dau", "events_per_user_per_day", "seq_len", "peak_qps", "candidates", "replication",
                    "zones", "node_cores", "node_dram_gib", "node_ssd_tib")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise PlanningError(f"{name} must be a positive number, got {value!r}")
        if not 0 < self.target_util <= 1:
            raise PlanningError(f"target_util must be in (0, 1], got {self.target_util!r} (0.5 means 50%)")
        if not (math.isfinite(self.ssd_headroom) and self.ssd_headroom >= 0):
            raise PlanningError(f"ssd_headroom must be >= 0, got {self.ssd_headroom!r} (0.3 means 30%)")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class StoreCosts:
    """Per-operation costs of one store, taken from a measured run."""

    store: str
    cpu_s_per_read: float
    cpu_s_per_append: float
    measured_seq_len: int
    bytes_per_event: float
    space_amplification: float
    index_bytes_per_user: float
    buffer_bytes_per_node: float
    cache_bytes_per_node: float
    source: str = ""
    slo_bound: bool = False  # CPU per op from a sweep's sustainable rate: no utilisation divisor


@dataclass(frozen=True)
class RankerCapacity:
    """Measured ranking throughput of one model on one device."""

    label: str
    requests_per_s: float
    measured_candidates: int
    seq_len: int
    source: str = ""


def ceil_count(x: float) -> int:
    # 1e-9 slack so that e.g. 3.0000000000000004 nodes (float noise) stays 3, identically in JS
    return max(0, math.ceil(x - 1e-9))


def plan_store(inputs: PlanInputs, costs: StoreCosts) -> dict[str, float | int | str]:
    """Size one store's fleet; returns per-zone figures, totals (× zones) and the binding constraint."""
    inputs.validate()
    if costs.measured_seq_len <= 0:
        raise PlanningError(f"{costs.store}: measured sequence length must be positive")
    users = inputs.dau
    reads_per_s_zone = inputs.peak_qps / inputs.zones
    appends_per_s = users * inputs.events_per_user_per_day / SECONDS_PER_DAY
    appends_per_s_zone = appends_per_s * inputs.replication
    cpu_s_per_read = costs.cpu_s_per_read * inputs.seq_len / costs.measured_seq_len
    busy_cores_zone = reads_per_s_zone * cpu_s_per_read + appends_per_s_zone * costs.cpu_s_per_append
    cores_zone = busy_cores_zone if costs.slo_bound else busy_cores_zone / inputs.target_util
    nodes_cpu = ceil_count(cores_zone / inputs.node_cores)

    index_bytes_zone = costs.index_bytes_per_user * users * inputs.replication
    per_node_fixed = costs.buffer_bytes_per_node + costs.cache_bytes_per_node
    usable_dram = inputs.node_dram_gib * GIB - per_node_fixed
    if usable_dram <= 0:
        raise PlanningError(
            f"{costs.store}: a node's DRAM ({inputs.node_dram_gib:g} GiB) does not even hold the update buffer "
            f"and block cache ({per_node_fixed / GIB:.2f} GiB); choose nodes with more DRAM")
    nodes_dram = ceil_count(index_bytes_zone / usable_dram)

    ssd_bytes_zone = (costs.bytes_per_event * inputs.seq_len * users * costs.space_amplification
                      * (1 + inputs.ssd_headroom) * inputs.replication)
    nodes_ssd = ceil_count(ssd_bytes_zone / (inputs.node_ssd_tib * TIB))

    nodes_zone = max(nodes_cpu, nodes_dram, nodes_ssd, int(inputs.replication))
    if nodes_zone == nodes_cpu and nodes_cpu > 0:
        binding = "cpu"
    elif nodes_zone == nodes_dram and nodes_dram > 0:
        binding = "dram"
    elif nodes_zone == nodes_ssd and nodes_ssd > 0:
        binding = "ssd"
    else:
        binding = "replication"
    dram_bytes_zone = index_bytes_zone + nodes_zone * per_node_fixed
    return {
        "store": costs.store,
        "reads_per_s_zone": reads_per_s_zone,
        "appends_per_s_zone": appends_per_s_zone,
        "busy_cores_zone": busy_cores_zone,
        "cores_zone": cores_zone,
        "nodes_cpu": nodes_cpu,
        "nodes_dram": nodes_dram,
        "nodes_ssd": nodes_ssd,
        "nodes_zone": nodes_zone,
        "binding": binding,
        "dram_bytes_zone": dram_bytes_zone,
        "ssd_bytes_zone": ssd_bytes_zone,
        "nodes_total": nodes_zone * inputs.zones,
        "cores_total": cores_zone * inputs.zones,
        "dram_bytes_total": dram_bytes_zone * inputs.zones,
        "ssd_bytes_total": ssd_bytes_zone * inputs.zones,
    }


def plan_ranking(inputs: PlanInputs, capacity: RankerCapacity) -> dict[str, float | int | str]:
    """Ranking devices (GPUs, or CPU ranker nodes) needed for the peak QPS, per zone and in total."""
    inputs.validate()
    if capacity.requests_per_s <= 0 or capacity.measured_candidates <= 0:
        raise PlanningError(f"{capacity.label}: measured throughput and candidates must be positive")
    per_device = capacity.requests_per_s * capacity.measured_candidates / inputs.candidates
    devices_zone = ceil_count(inputs.peak_qps / inputs.zones / (per_device * inputs.target_util))
    return {
        "label": capacity.label,
        "requests_per_s_per_device": per_device,
        "devices_zone": devices_zone,
        "devices_total": devices_zone * inputs.zones,
    }


def pick_ranker_capacities(capacities: list[RankerCapacity], seq_len: int) -> list[RankerCapacity]:
    """Per label, the measurement whose sequence length is closest to the planned N (ties: longer)."""
    best: dict[str, RankerCapacity] = {}
    for cap in capacities:
        cur = best.get(cap.label)
        key = (abs(cap.seq_len - seq_len), -cap.seq_len)
        if cur is None or key < (abs(cur.seq_len - seq_len), -cur.seq_len):
            best[cap.label] = cap
    return list(best.values())


def plan(inputs: PlanInputs, stores: list[StoreCosts],
         rankers: list[RankerCapacity] | None = None) -> dict[str, object]:
    """The whole plan: inputs echoed, one entry per store and one per ranker (model on device)."""
    inputs.validate()
    chosen = pick_ranker_capacities(rankers or [], inputs.seq_len)
    return {
        "inputs": asdict(inputs),
        "stores": [plan_store(inputs, c) for c in stores],
        "rankers": [plan_ranking(inputs, r) | {"seq_len": r.seq_len, "source": r.source} for r in chosen],
        "assumptions": list(ASSUMPTIONS),
    }
