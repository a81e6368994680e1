"""Table 1 end to end on a tiny workload: result files, their fields, and the cross-check."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from storagebench.crosscheck import CrossCheckError, compare_samples
from storagebench.experiments.run import RunConfig
from storagebench.experiments.table1 import TABLE1_ROWS, run_table1, seqvault_dram_budget
from workloads import GeneratorConfig, generate

HEADLINE = ("cpu_cores", "cpu_usage_pct", "p50_ms", "p99_ms", "p999_ms", "disk_bytes", "ops_per_s")


def tiny_workload():
    return generate(GeneratorConfig(users=120, history_median=60, history_max=3000, live_seconds=30.0,
                                    live_sessions_per_s=10.0, seed=3))


@pytest.fixture(scope="module")
def table1_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("table1")
    cfg = RunConfig(io="direct", max_len=200, rate=120.0, speed=None, warmup_s=1.0, window_s=3.0,
                    crosscheck_users=60)
    doc = run_table1(tiny_workload(), cfg, str(out))
    return out, doc


def test_table1_json_has_the_promised_fields(table1_doc):
    out, _ = table1_doc
    saved = json.loads((out / "table1.json").read_text())
    assert saved["kind"] == "table1" and saved["created"].startswith("20")
    assert list(saved["rows"]) == list(TABLE1_ROWS)
    for name, row in saved["rows"].items():
        for key in HEADLINE:
            assert isinstance(row[key], (int, float)) and row[key] >= 0, (name, key)
        assert row["disk_bytes"] > 0 and row["ops_per_s"] > 0
        assert row["latency"]["read"]["latency"]["count"] > 0
        # intended-start latency can only be >= the store call itself
        assert row["latency"]["read"]["latency"]["p50_ms"] >= row["latency"]["read"]["service"]["p50_ms"]
        assert row["cpu"]["cpu_s"] > 0 and row["cpu"]["series"]
        assert row["io"]["appended_events"] > 0 and row["disk"]["stored_events"] > 0
    for key in ("cpu_model", "logical_cores", "ram_bytes", "kernel", "python", "packages", "store_filesystem"):
        assert key in saved["machine"]
    assert saved["workload"]["kind"] == "synthetic"
    assert set(saved["stores"]) == set(TABLE1_ROWS)
    assert saved["paper"]["reduction_pct"]["cpu_usage_pct"] == 75
    assert saved["crosscheck"]["identical"] and saved["crosscheck"]["users"] == 60
    # the harness floor rides along, latency only, through the same node and replay path
    floor = saved["floor"]
    assert floor["store"] == "null" and 0 < floor["p50_ms"] <= floor["p99_ms"] <= floor["p999_ms"]
    assert "null" not in saved["rows"] and "null" not in saved["stores"]
    for name, row in saved["rows"].items():
        assert set(row["backlog"]["by_op"]) == {"read", "append"}, name
        assert row["valid"] == (not row["invalid_reasons"])
        disk = row["disk"]
        assert disk["series"] and min(v for _, v in disk["series"]) <= row["disk_bytes"] <= row["disk_bytes_max"]
        assert row["disk_bytes_compacted"] > 0 and row["correctness"]["ok"]
        assert row["config"]["store"] == name
    for name in ("rocksdb_lastn", "rocksdb_packed"):
        tuning = saved["stores"][name]["tuning"]
        assert tuning["bottommost_compression"] == "zstd" and tuning["compression"] == "lz4"


def test_reduction_is_seqvault_against_rocksdb_lastn(table1_doc):
    _, doc = table1_doc
    base, sv = doc["rows"]["rocksdb_lastn"], doc["rows"]["seqvault"]
    assert all(r["valid"] for r in doc["rows"].values()), doc.get("reduction_invalid_reason")
    for key in ("cpu_cores", "cpu_usage_pct", "p99_ms", "disk_bytes"):
        assert doc["reduction_pct"][key] == pytest.approx(100 * (1 - sv[key] / base[key]))


def test_rocksdb_block_cache_equals_seqvault_dram_budget(table1_doc):
    _, doc = table1_doc
    budget = seqvault_dram_budget(doc["rows"]["seqvault"], 24)  # the default schema's 24-byte events
    for name in ("rocksdb_lastn", "rocksdb_packed"):
        assert doc["stores"][name]["block_cache_bytes"] == budget


def test_text_values_take_more_disk_than_packed_ones(table1_doc):
    _, doc = table1_doc
    rows = doc["rows"]
    assert rows["rocksdb_lastn"]["disk"]["bytes"]["sst"] > rows["rocksdb_packed"]["disk"]["bytes"]["sst"]


def test_csv_and_hdr_logs_match_the_json(table1_doc):
    out, doc = table1_doc
    with open(out / "table1.csv") as f:
        lines = list(csv.DictReader(f))
    assert [r["store"] for r in lines] == list(TABLE1_ROWS)
    for r in lines:
        assert float(r["p99_ms"]) == pytest.approx(doc["rows"][r["store"]]["p99_ms"])
    for rel in doc["hdr_logs"]:
        text = (out / rel).read_text()
        assert "HISTFAA" in text, rel
    assert {f"hdr/{s}.read.latency.hlog" for s in TABLE1_ROWS} <= set(doc["hdr_logs"])


def test_cross_check_names_the_first_difference():
    users = np.array([10, 20], dtype=np.uint64)
    a = (np.array([0, 2, 3]), {"ts": np.array([1, 2, 3]), "item": np.array([7, 8, 9])})
    assert compare_samples(users, {"a": a, "b": a})["identical"]
    b = (a[0], {"ts": a[1]["ts"], "item": np.array([7, 8, 5])})
    with pytest.raises(CrossCheckError, match=r"user 20, event 0 .*'item': b has 5, a has 9"):
        compare_samples(users, {"a": a, "b": b})
    c = (np.array([0, 1, 3]), a[1])
    with pytest.raises(CrossCheckError, match="c returned 1 events for user 10 but a returned 2"):
        compare_samples(users, {"a": a, "c": c})


def test_run_command_measures_one_store_from_a_saved_workload(tmp_path):
    from storagebench.cli import main

    wl_dir = tmp_path / "wl"
    tiny_workload().save(str(wl_dir))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--store", "rocksdb_packed", "--workload", str(wl_dir),
                                    "--rate", "100", "--warmup-s", "0.5", "--window-s", "2", "--max-len", "100",
                                    "--io", "buffered", "--node-cpus", "all", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "run.json").read_text())
    assert doc["kind"] == "run" and list(doc["rows"]) == ["rocksdb_packed"]
    assert doc["rows"]["rocksdb_packed"]["io_mode"] == "buffered"
    assert "RocksDB packed" in res.output
