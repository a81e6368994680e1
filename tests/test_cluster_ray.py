"""Sharded runs on an embedded (local) Ray runtime: same answers as one node, merged counts, failures."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from storagebench.cluster import ClusterError, ClusterSpec, run_store_sharded
from storagebench.cluster.runtime import connect, import_ray
from storagebench.crosscheck import compare_samples
from storagebench.experiments.run import RunConfig, prepare, run_store
from workloads import GeneratorConfig, generate

if not os.environ.get("CI") and importlib.util.find_spec("ray") is None:  # CI installs it: fail there
    pytest.skip("sharded runs need Ray: pip install 'storagebench[cluster]'", allow_module_level=True)


@pytest.fixture(scope="module")
def local_ray():
    info = connect(ClusterSpec(shards=2))
    yield info
    import_ray().shutdown()


@pytest.fixture(scope="module")
def workload():
    wl = generate(GeneratorConfig.preset("small", users=300, seed=3))
    cfg = RunConfig(rate=120, speed=None, warmup_s=1.0, window_s=4.0, io="buffered", crosscheck_users=None,
                    keep_awake=False, check_share=0.05)
    return wl, cfg, prepare(wl, cfg)


def test_the_embedded_runtime_is_on_loopback_only(local_ray) -> None:
    assert local_ray["node_ips"] == ["127.0.0.1"]
    ray = import_ray()
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())


def test_two_shards_return_what_one_node_returns_and_counts_add_up(local_ray, workload, tmp_path) -> None:
    wl, cfg, prepared = workload
    row, sample = run_store_sharded(wl, prepared, "seqvault", str(tmp_path / "stores" / "seqvault"), cfg,
                                    ClusterSpec(shards=2), hist_log_dir=str(tmp_path / "hdr"))
    single, single_sample = run_store(wl, prepared, "seqvault", str(tmp_path / "stores" / "one"), cfg)
    # Every sampled user (here: every user) holds the same sequence, event by event.
    check = compare_samples(prepared.crosscheck_users, {"one node": single_sample, "two shards": sample})
    assert check["identical"] and check["users"] == len(prepared.crosscheck_users) == prepared.schedule_info["users"]
    assert row["shard_count"] == 2 and len(row["shards"]) == 2
    shards = row["shards"]
    for op in ("read", "append"):
        merged = row["latency"][op]["latency"]["count"]
        assert merged == sum(b["latency"][op]["latency"]["count"] for b in shards) > 0
        assert row["latency"][op]["service"]["count"] == merged
    # Every op of the single-node schedule was measured once, on one shard (appends of several users
    # are split, so appends may count more).
    reads = prepared.schedule_info["measured_reads"]
    assert row["latency"]["read"]["count"] == reads == single["latency"]["read"]["count"]
    assert row["cpu"]["cpu_s"] == pytest.approx(sum(b["cpu"]["cpu_s"] for b in shards))
    assert row["cpu"]["cpu_s"] > 0 and all(b["cpu"]["cpu_s"] > 0 for b in shards)
    assert row["disk"]["stored_events"] == single["disk"]["stored_events"]
    assert row["correctness"]["checked_reads"] > 0 and row["correctness"]["ok"]
    assert row["cluster"]["spec"]["shards"] == 2 and row["cluster"]["ray_version"]
    assert {b["placement"]["address"].split(":")[1] for b in shards} == {"127.0.0.1"}
    assert sorted(p.name for p in (tmp_path / "hdr").iterdir()) == sorted(
        f"seqvault.shard-{i}.{op}.{m}.hlog" for i in range(2) for op in ("append", "read")
        for m in ("latency", "service"))
    json.dumps(row)  # the row goes into a result file as it is


def test_a_killed_shard_node_fails_the_run_promptly_naming_the_shard_and_its_log(local_ray, workload,
                                                                                  tmp_path) -> None:
    wl, cfg, prepared = workload
    cfg = RunConfig(**{**cfg.__dict__, "warmup_s": 1.0, "window_s": 30.0})
    prepared = prepare(wl, cfg)
    log = tmp_path / "logs" / "seqvault.shard-1.log"
    killed: dict[str, float] = {}

    def kill_when_replaying(phase: str, done: int, total: int) -> None:
        if phase == "replay" and "at" not in killed:
            killed["at"] = 0.0

            def kill() -> None:
                time.sleep(4.0)  # past the shared start: inside the replay
                pid = int(re.search(r"storage node pid (\d+)", log.read_text()).group(1))
                os.kill(pid, signal.SIGKILL)
                killed["at"] = time.monotonic()

            threading.Thread(target=kill, daemon=True).start()

    with pytest.raises(ClusterError) as err:
        run_store_sharded(wl, prepared, "seqvault", str(tmp_path / "stores" / "seqvault"), cfg,
                          ClusterSpec(shards=2), hist_log_dir=str(tmp_path / "hdr"), progress=kill_when_replaying)
    failed_after = time.monotonic() - killed["at"]
    message = str(err.value)
    assert "seqvault shard 1/2 failed during the replay" in message
    assert "exited with code -9" in message and str(log) in message
    assert failed_after < 15, f"the run took {failed_after:.1f} s to fail after the node was killed (window: 30 s)"


def test_a_shards_background_failure_fails_the_run(local_ray, workload, tmp_path) -> None:
    """The shard's node reports a failed maintenance while its own client is idle: the run must
    fail (a single-node run does), not return a row with merges silently stopped."""
    wl, cfg, prepared = workload
    cfg = RunConfig(**{**cfg.__dict__, "store_options": {"memory": {"fail_maintenance_after_s": 3.0}}})
    with pytest.raises(ClusterError, match="background maintenance failed"):
        run_store_sharded(wl, prepared, "memory", str(tmp_path / "stores" / "memory"), cfg, ClusterSpec(shards=2),
                          hist_log_dir=str(tmp_path / "hdr"))


def test_run_command_with_shards_writes_the_cluster_row_and_the_shards(tmp_path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "storagebench.cli", "run", "--store", "null", "--shards", "2", "--users", "200",
           "--rate", "80", "--warmup-s", "1", "--window-s", "2", "--io", "buffered", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "run.json").read_text())
    row = doc["rows"]["null"]
    assert row["shard_count"] == 2 and [b["shard"] for b in row["shards"]] == [0, 1]
    assert doc["cluster"]["spec"]["shards"] == 2 and doc["cluster"]["node_ips"] == ["127.0.0.1"]
    assert "Shards" in proc.stdout and "merged cluster rows" in proc.stdout
    assert np.isclose(row["cpu_s_per_op"], row["cpu"]["cpu_s"] / row["measured_ops"])


def test_node_cpus_cannot_be_pinned_for_a_sharded_run(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "storagebench.cli", "run", "--store", "null", "--shards", "2",
                           "--node-cpus", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--node-cpus does not apply to a sharded run" in proc.stderr


def test_generators_on_other_nodes_needs_enough_ray_nodes(local_ray) -> None:
    from storagebench.cluster.runtime import place

    with pytest.raises(ClusterError, match="2 shards need 4 nodes, the cluster has 1"):
        place(ClusterSpec(shards=2, generators_on="other"))

