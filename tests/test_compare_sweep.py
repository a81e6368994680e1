"""The store shoot-out and the capacity sweep on a tiny workload, and the arithmetic behind them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from needs_redis import require_redis_server

from storagebench.cli import main
from storagebench.experiments.compare import HOURS_PER_MONTH, Demand, Prices, monthly_cost, run_compare
from storagebench.experiments.run import RunConfig
from storagebench.experiments.sweep import Sweep, run_sweep
from workloads import GeneratorConfig, generate


def tiny_workload():
    return generate(GeneratorConfig(users=120, history_median=60, history_max=3000, live_seconds=30.0,
                                    live_sessions_per_s=10.0, seed=3))


def tiny_config(**kw) -> RunConfig:
    base = {"io": "direct", "max_len": 200, "rate": 120.0, "speed": None, "warmup_s": 1.0, "window_s": 2.0,
            "crosscheck_users": 60}
    return RunConfig(**{**base, **kw})


def test_monthly_cost_is_cores_dram_and_ssd_at_the_given_prices():
    prices = Prices(core_hour_usd=0.05, dram_gib_month_usd=4.0, ssd_tib_month_usd=100.0)
    demand = Demand(target_qps=1e6, fleet_users=1e8, target_utilisation=0.5)  # 10,000 ops/s per million users
    row = {"cpu_s_per_op": 100e-6, "dram_bytes": 2**31, "user_dram_bytes": 2**30, "disk_bytes": 2**40}
    cost = monthly_cost(row, users=1_000_000, prices=prices, demand=demand)
    assert cost["cores_per_million_users"] == pytest.approx(100e-6 * 10_000 / 0.5)  # 2 cores
    assert cost["cpu_usd"] == pytest.approx(2 * 0.05 * HOURS_PER_MONTH)
    assert cost["dram_bytes_per_user"] == pytest.approx(2**30 / 1e6)
    assert cost["dram_usd"] == pytest.approx(4.0)    # 1 GiB for a million users
    assert cost["ssd_usd"] == pytest.approx(100.0)   # 1 TiB for a million users
    assert cost["total_usd"] == pytest.approx(cost["cpu_usd"] + 4.0 + 100.0)
    # DRAM a store does not say grows with users is not guessed: no DRAM cost, and flagged
    unknown = monthly_cost({**row, "user_dram_bytes": None}, users=1_000_000, prices=prices, demand=demand)
    assert unknown["dram_bytes_per_user"] is None and unknown["dram_usd"] == 0 and not unknown["dram_known"]


def test_only_dram_that_grows_with_users_is_charged_per_user():
    from storagebench.experiments.compare import user_dram_bytes

    assert user_dram_bytes({"stats": {"index_bytes": 10, "dram_bytes": 99}}) == 10             # SeqVault
    assert user_dram_bytes({"stats": {"estimate-table-readers-mem": 7, "dram_bytes": 99}}) == 7  # RocksDB
    assert user_dram_bytes({"stats": {"resident_data_bytes": 50, "dram_bytes": 50}}) == 50      # Redis
    assert user_dram_bytes({"stats": {}}) is None


def test_compare_writes_one_row_per_store_with_costs_and_the_floor(tmp_path):
    require_redis_server()
    stores = ["rocksdb_lastn", "seqvault", "redis_lastn"]
    doc = run_compare(tiny_workload(), tiny_config(), stores, str(tmp_path))
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["kind"] == "compare" and list(saved["compare"]["rows"]) == stores
    assert list(saved["rows"]) == stores  # seqvault ran first (DRAM match) but the table keeps the asked order
    users = saved["compare"]["users"]
    assert users == doc["schedule"]["users"] > 0
    for name, row in saved["compare"]["rows"].items():
        for key in ("valid", "p99_ms", "cpu_usage_pct", "disk_bytes", "dram_bytes_per_user",
                    "cost_per_million_users_month"):
            assert key in row, (name, key)
        stats = saved["rows"][name]["stats"]
        user_dram = next(stats[k] for k in ("index_bytes", "estimate-table-readers-mem", "resident_data_bytes")
                         if k in stats)
        assert row["dram_bytes_per_user"] == pytest.approx(user_dram / users)
        assert row["dram_bytes_per_node"] == saved["rows"][name]["dram_bytes"] - user_dram
        # the layout: the same figures on the top-level row
        assert saved["rows"][name]["cost_per_million_users_month"] == row["cost_per_million_users_month"]
        assert row["cost_per_million_users_month"] > 0
        assert row["cost_per_million_users_month"] == pytest.approx(
            row["cost"]["cpu_usd"] + row["cost"]["dram_usd"] + row["cost"]["ssd_usd"])
        assert row["cpu_us_per_op"] == pytest.approx(1e6 * saved["rows"][name]["cpu_s_per_op"])
    assert saved["floor"]["store"] == "null" and "null" not in saved["compare"]["rows"]
    assert saved["crosscheck"]["identical"] and set(saved["crosscheck"]["stores"]) == set(stores)
    redis_row = saved["rows"]["redis_lastn"]
    assert redis_row["config"]["redis_conf"]["appendfsync"] == "everysec"
    assert redis_row["stats"]["used_memory"] > 0 and redis_row["cpu"]["cpu_s"] > 0
    # Redis holds every event in DRAM; SeqVault only its index and update buffer
    assert saved["compare"]["rows"]["redis_lastn"]["dram_bytes_per_user"] > \
        saved["compare"]["rows"]["seqvault"]["dram_bytes_per_user"]


class ScriptedSweep(Sweep):
    """The search logic alone: a store whose read P99 crosses the SLO at a known rate."""

    def __init__(self, capacity: float) -> None:
        self.capacity, self.steps, self.blocks = capacity, [], {}
        self.tried: list[float] = []

    def measure(self, rate: float) -> dict:
        self.tried.append(rate)
        step = {"target_ops_per_s": rate, "achieved_ops_per_s": rate, "within_slo": rate <= self.capacity,
                "valid": True, "invalid_reasons": [], "node_cores": 1, "cpu_usage_pct": 50.0}
        self.steps.append(step)
        return step


def test_auto_doubles_then_bisects_to_the_tolerance():
    s = ScriptedSweep(capacity=700.0)
    s.run_auto(100.0, tolerance=0.1)
    assert s.tried[:4] == [100, 200, 400, 800]  # doubling until the first failure
    passed = max(r for r in s.tried if r <= 700)
    failed = min(r for r in s.tried if r > 700)
    assert failed / passed <= 1.1 and passed <= 700 < failed


def test_auto_halves_when_the_start_is_already_too_fast():
    s = ScriptedSweep(capacity=30.0)
    s.run_auto(100.0, tolerance=0.2)
    assert s.tried[:3] == [100, 50, 25]
    assert max(r for r in s.tried if r <= 30) > 25  # and bisected back up


def test_auto_stops_within_max_steps_when_nothing_passes():
    s = ScriptedSweep(capacity=0.0)
    s.run_auto(100.0, max_steps=5)
    assert len(s.tried) <= 5


def test_sweep_measures_each_rate_and_reports_the_sustainable_one(tmp_path):
    doc = run_sweep(tiny_workload(), tiny_config(), "seqvault", str(tmp_path), rates=[40.0, 80.0], slo_ms=1000.0)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["kind"] == "sweep" and saved["store"] == "seqvault"
    assert saved["sustainable_ops_per_s"] == doc["sustainable_ops_per_s"]
    steps = saved["steps"]
    assert [s["target_ops_per_s"] for s in steps] == [40.0, 80.0]
    for s in steps:
        assert s["offered_ops_per_s"] == pytest.approx(s["target_ops_per_s"], rel=0.35)
        assert s["valid"] and s["within_slo"] and s["p99_ms"] > 0
    best = steps[-1]
    assert saved["sustainable_ops_per_s"] == best["achieved_ops_per_s"]
    assert saved["sustainable_ops_per_s_per_core"] == pytest.approx(best["achieved_ops_per_s"] / best["node_cores"])
    assert saved["rows"]["seqvault"]["disk"]["bytes_per_event"] > 0  # the planner's inputs at that rate
    assert sorted(p.name for p in (tmp_path / "hdr").iterdir())  # interval logs per step


def test_a_rate_the_workload_cannot_fill_is_not_valid_and_says_why(tmp_path):
    sweep = Sweep(tiny_workload(), tiny_config(window_s=60.0), "memory", str(tmp_path), slo_ms=1000.0)
    step = sweep.measure(2000.0)  # 30 s of trace at 10 sessions/s cannot fill 61 s at 2,000 ops/s
    assert not step["valid"] and not step["within_slo"]
    assert any("live stream ends" in why for why in step["invalid_reasons"])


def test_sweep_cli_refuses_a_fixed_rate_and_asks_for_rates_or_auto(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["sweep", "--store", "memory", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--rates" in r.output and "--auto" in r.output
    r = runner.invoke(main, ["sweep", "--store", "memory", "--auto", "--rate", "10", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--rate" in r.output
    r = runner.invoke(main, ["sweep", "--store", "memory", "--rates", "10,x", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--rates" in r.output


@pytest.mark.parametrize("command", ["compare", "sweep", "run"])
def test_a_store_that_cannot_run_here_fails_before_anything_is_measured(tmp_path, monkeypatch, command):
    from storagebench.stores import StoreError
    from storagebench.stores.redis_lastn import RedisLastNStore

    def missing() -> None:
        raise StoreError("redis-server is not installed: apt-get install -y redis-server")

    monkeypatch.setattr(RedisLastNStore, "preflight", classmethod(lambda cls: missing()))
    args = [command, "--store", "memory", "--store", "redis_lastn", "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args + (["--auto"] if command == "sweep" else []))
    assert r.exit_code == 2 and "--store redis_lastn" in r.output and "apt-get install" in r.output
    assert not any(tmp_path.iterdir())  # nothing was measured or written
