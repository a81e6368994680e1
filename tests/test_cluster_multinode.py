"""A multi-node Ray cluster on one machine (ray.cluster_utils.Cluster, every node on 127.0.0.1):
shards are placed on distinct Ray nodes and the run joins the cluster by its address."""

from __future__ import annotations

import importlib.util
import os

import pytest

from storagebench.cluster import ClusterSpec, run_store_sharded
from storagebench.cluster.runtime import import_ray
from storagebench.experiments.run import RunConfig, prepare
from workloads import GeneratorConfig, generate

if not os.environ.get("CI") and importlib.util.find_spec("ray") is None:  # CI installs it: fail there
    pytest.skip("sharded runs need Ray: pip install 'storagebench[cluster]'", allow_module_level=True)


@pytest.fixture(scope="module")
def two_node_cluster():
    ray = import_ray(loopback=True)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_shards_are_placed_on_distinct_ray_nodes(two_node_cluster, tmp_path) -> None:
    wl = generate(GeneratorConfig.preset("small", users=200, seed=5))
    cfg = RunConfig(rate=60, speed=None, warmup_s=1.0, window_s=2.0, io="buffered", crosscheck_users=50,
                    keep_awake=False)
    spec = ClusterSpec(shards=2, address=two_node_cluster.address)
    row, sample = run_store_sharded(wl, prepare(wl, cfg), "rocksdb_packed", str(tmp_path / "stores"), cfg, spec,
                                    hist_log_dir=str(tmp_path / "hdr"))
    nodes = [b["placement"]["ray_node_id"] for b in row["shards"]]
    assert row["cluster"]["nodes"] == 2 and row["cluster"]["placement"]["strategy"] == "STRICT_SPREAD"
    assert len(set(nodes)) == 2 and row["cluster"]["ray_nodes_used"] == 2
    alive = {n["NodeID"] for n in import_ray().nodes() if n["Alive"]}
    assert set(nodes) == alive
    assert {b["placement"]["ip"] for b in row["shards"]} == {"127.0.0.1"}
    assert row["valid"], row["invalid_reasons"]
    assert sample is not None and len(sample[0]) == 51
