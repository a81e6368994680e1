"""A store shoot-out: any registered stores on one workload, with Table 1's repeats and validity
rules, and what each costs per million users per month at editable prices.

The measurements are :func:`storagebench.experiments.table1.measure_stores`'s, unchanged; this
module adds DRAM and disk per user and the cost model below, and writes ``compare.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from storagebench.cluster import ClusterSpec
from storagebench.experiments.run import RunConfig, WorkloadLike
from storagebench.experiments.table1 import FLOOR_STORE, _fmt_bytes, _spread, measure_stores, render_shards
from storagebench.results import write_result

HOURS_PER_MONTH = 730.0  # 8,760 h / 12, the convention of the cloud price lists below
GIB, TIB = 2**30, 2**40
DEFAULT_STORES = ("seqvault", "rocksdb_lastn", "redis_lastn")
DEFAULT_FLEET_USERS = 100_000_000  # the paper's scale: 100 M daily active users


@dataclass(frozen=True)
class Prices:
    """What a core, a GiB of DRAM and a TiB of SSD cost. Defaults: Google Compute Engine on-demand
    list prices, us-central1 (cloud.google.com/compute/vm-instance-pricing and
    /compute/disks-image-pricing): an N2 vCPU at $0.031611 per hour, N2 memory at $0.004237 per
    GiB-hour (x 730 h = $3.093 per GiB-month), Local SSD at $0.080 per GiB-month ($81.92 per
    TiB-month). Edit them (``storagebench compare --price-*``) for your own contract."""

    core_hour_usd: float = 0.031611
    dram_gib_month_usd: float = 0.004237 * HOURS_PER_MONTH
    ssd_tib_month_usd: float = 0.080 * 1024
    source: str = ("Google Compute Engine on-demand list prices, us-central1: N2 vCPU $0.031611/h, N2 memory "
                   "$0.004237/GiB-h, Local SSD $0.080/GiB-month (cloud.google.com/compute/vm-instance-pricing, "
                   "/compute/disks-image-pricing); 730 h per month")


@dataclass(frozen=True)
class Demand:
    """The traffic a million users bring: the production load the CPU-cores column is sized for
    (``target_qps`` over ``fleet_users``), at the utilisation the fleet runs at."""

    target_qps: float
    fleet_users: float
    target_utilisation: float

    @property
    def ops_per_s_per_million_users(self) -> float:
        return self.target_qps * 1e6 / self.fleet_users


# DRAM that grows with the users a node holds, by the stat each binding reports it under:
# SeqVault's hash index, RocksDB's table readers outside the block cache, Redis's whole data set.
# The rest of a store's DRAM (update buffer, memtables, block cache) is per node, not per user.
USER_DRAM_STATS = ("index_bytes", "estimate-table-readers-mem", "resident_data_bytes")


def user_dram_bytes(block: dict[str, Any]) -> int | None:
    """The part of a store's DRAM that grows with users (None when the store does not report it)."""
    stats = block.get("stats") or {}
    for key in USER_DRAM_STATS:
        if isinstance(stats.get(key), int | float):
            return int(stats[key])
    return None


def monthly_cost(row: dict[str, Any], users: int, prices: Prices, demand: Demand) -> dict[str, Any]:
    """Cost per million users per month of one measured row: CPU for their traffic at the measured
    CPU per op (cores = CPU s/op x ops/s / utilisation), plus the DRAM that grows with users
    (``user_dram_bytes``; None: not reported, counted as 0 and flagged) and the disk per user."""
    cores = row["cpu_s_per_op"] * demand.ops_per_s_per_million_users / demand.target_utilisation
    user_dram = row.get("user_dram_bytes")
    dram_per_user = user_dram / users if users and user_dram is not None else None
    disk_per_user = row["disk_bytes"] / users if users else None
    cpu_usd = cores * prices.core_hour_usd * HOURS_PER_MONTH
    dram_usd = (dram_per_user or 0.0) * 1e6 / GIB * prices.dram_gib_month_usd
    ssd_usd = (disk_per_user or 0.0) * 1e6 / TIB * prices.ssd_tib_month_usd
    return {"cores_per_million_users": cores, "dram_bytes_per_user": dram_per_user,
            "disk_bytes_per_user": disk_per_user, "cpu_usd": cpu_usd, "dram_usd": dram_usd, "ssd_usd": ssd_usd,
            "total_usd": cpu_usd + dram_usd + ssd_usd, "dram_known": dram_per_user is not None}


def compare_row(block: dict[str, Any], users: int, prices: Prices, demand: Demand) -> dict[str, Any]:
    """The shoot-out's row of one store (medians over repeats) with its cost."""
    user_dram = user_dram_bytes(block)
    cost = monthly_cost({**block, "user_dram_bytes": user_dram}, users, prices, demand)
    return {
        "valid": block["valid"], "invalid_reasons": block["invalid_reasons"],
        "p50_ms": block["p50_ms"], "p99_ms": block["p99_ms"], "p999_ms": block["p999_ms"],
        "append_p99_ms": block["latency"]["append"]["latency"]["p99_ms"],
        "read_service_p99_ms": block["latency"]["read"]["service"]["p99_ms"],
        "cpu_usage_pct": block["cpu_usage_pct"], "cpu_us_per_op": 1e6 * block["cpu_s_per_op"],
        "disk_bytes": block["disk_bytes"], "disk_bytes_per_user": cost["disk_bytes_per_user"],
        "dram_bytes": block["dram_bytes"], "dram_bytes_per_user": cost["dram_bytes_per_user"],
        "dram_bytes_per_node": (block["dram_bytes"] - user_dram) if user_dram is not None else None,
        "ops_per_s": block["ops_per_s"], "offered_ops_per_s": block["offered_ops_per_s"],
        "spread": block.get("spread", {}), "repeat_count": len(block.get("repeats", [])) or 1,
        "cost": cost, "cost_per_million_users_month": cost["total_usd"],
    }


def run_compare(wl: WorkloadLike, cfg: RunConfig, stores: Sequence[str], out_dir: str, *, repeats: int = 1,
                floor: bool = True, prices: Prices | None = None, fleet_users: float = DEFAULT_FLEET_USERS,
                keep_stores: bool = False, console: Console | None = None,
                cluster: ClusterSpec | None = None) -> dict[str, Any]:
    """Measure ``stores`` (SeqVault first when listed: its DRAM sets the RocksDB block caches, as in
    Table 1), write ``compare.json``/``.csv`` beside the HDR logs, and return the document."""
    prices = prices or Prices()
    demand = Demand(cfg.target_qps, fleet_users, cfg.target_utilisation)
    order = sorted(dict.fromkeys(stores), key=lambda s: s != "seqvault")
    order += [FLOOR_STORE] if floor and FLOOR_STORE not in order else []
    doc = measure_stores(wl, cfg, order, out_dir, repeats=repeats, match_dram="seqvault" in order,
                         keep_stores=keep_stores, console=console, cluster=cluster)
    doc["rows"] = {k: doc["rows"][k] for k in dict.fromkeys(stores)}
    doc["stores"] = {k: doc["stores"][k] for k in doc["rows"]}
    add_costs(doc, prices, demand)
    write_result(out_dir, "compare", doc)
    return doc


def add_costs(doc: dict[str, Any], prices: Prices, demand: Demand) -> None:
    """Put the shoot-out's rows, costs and assumptions into a measured document: ``compare`` and,
    per store, the same figures merged into ``rows[store]`` (a pure function of the measured blocks,
    so a result can be re-costed at other prices)."""
    users = int(doc["schedule"]["users"])
    rows = {name: compare_row(block, users, prices, demand) for name, block in doc["rows"].items()}
    for name, row in rows.items():
        doc["rows"][name].update({k: row[k] for k in ("dram_bytes_per_user", "dram_bytes_per_node",
                                                      "disk_bytes_per_user", "cpu_us_per_op", "cost",
                                                      "cost_per_million_users_month")})
    doc["compare"] = {
        "rows": rows,
        "users": users, "prices": asdict(prices), "demand": {**asdict(demand),
                                                             "ops_per_s_per_million_users":
                                                                 demand.ops_per_s_per_million_users},
        "hours_per_month": HOURS_PER_MONTH,
        "assumptions": [
            f"A million users bring {demand.ops_per_s_per_million_users:,.0f} ops/s of the workload's read/append "
            f"mix ({demand.target_qps:,.0f} ops/s over {demand.fleet_users:,.0f} users: --target-qps, --fleet-users).",
            f"Cores = measured CPU seconds per op (the node and the processes its store runs) x those ops/s / "
            f"{demand.target_utilisation:.0%} utilisation (--target-utilisation).",
            "DRAM per user = the store's DRAM that grows with users, after the window, / users stored: SeqVault's "
            "hash index, RocksDB's table readers outside the block cache, Redis's used_memory (the whole data "
            "set). Per-node DRAM (update buffer, memtables, block cache: dram_bytes_per_node) does not grow with "
            "users and is left to the capacity planner, which sizes nodes.",
            "Disk per user = the time-weighted mean of the store directory over the window / users stored.",
            "One copy: multiply by your replication factor.",
        ],
    }


def render_compare(doc: dict[str, Any], console: Console) -> None:
    cmp = doc["compare"]
    prices = cmp["prices"]
    repeats = doc.get("repeats", 1)
    t = Table(title=f"Store shoot-out, measured here ({doc['machine']['cpu_model']}, io={doc['run_config']['io']}, "
                    f"{'median of ' + str(repeats) + ' repeats (min-max)' if repeats > 1 else 'one run'}, "
                    f"{cmp['users']:,} users)",
              caption=(f"P99/p99.9: reads from intended start. Cost: per million users per month at "
                       f"${prices['core_hour_usd']:.4f}/core-h, ${prices['dram_gib_month_usd']:.2f}/GiB-month DRAM, "
                       f"${prices['ssd_tib_month_usd']:.2f}/TiB-month SSD, "
                       f"{cmp['demand']['ops_per_s_per_million_users']:,.0f} ops/s per million users."))
    for col in ("store", "CPU usage", "P99 ms", "p99.9 ms", "Disk", "DRAM B/user", "CPU µs/op",
                "$/M users/month (CPU+DRAM+SSD)"):
        t.add_column(col, justify="left" if col == "store" else "right")
    for name, row in cmp["rows"].items():
        block = doc["rows"][name]
        c = row["cost"]
        t.add_row(name + ("" if row["valid"] else " (not valid)"),
                  f"{row['cpu_usage_pct']:.1f}%" + _spread(block, "cpu_usage_pct", ".1f"),
                  f"{row['p99_ms']:.2f}" + _spread(block, "p99_ms", ".2f"), f"{row['p999_ms']:.2f}",
                  _fmt_bytes(row["disk_bytes"]), _fmt_num(row["dram_bytes_per_user"]),
                  f"{row['cpu_us_per_op']:.0f}" + _spread(block, "cpu_s_per_op", ".0f", 1e6),
                  f"{c['total_usd']:,.0f} ({c['cpu_usd']:,.0f}+{c['dram_usd']:,.0f}+{c['ssd_usd']:,.0f})")
    floor = doc.get("floor")
    if floor:
        t.add_row("harness floor (null)", "", f"{floor['p99_ms']:.2f}" + _spread(floor, "p99_ms", ".2f"),
                  f"{floor['p999_ms']:.2f}", "", "", "", "", style="dim")
    console.print(t)
    for name, row in cmp["rows"].items():
        if not row["valid"]:
            console.print(f"[red]{name} not valid: {'; '.join(row['invalid_reasons'])}[/red]")
    for a in cmp["assumptions"]:
        console.print(f"[dim]- {a}[/dim]")
    console.print(f"[dim]- Prices: {prices['source']}[/dim]")
    if doc.get("cluster"):
        render_shards(doc, console)
    for w in doc.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")


def _fmt_num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"
