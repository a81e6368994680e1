"""Ray as the cluster runtime: connecting (or starting one embedded), placing shards, and waiting on
shard work so that one failure ends the run at once, naming the shard.

Ray carries only control, the workload shards (its object store) and the results. The measured
path (generator -> storage node) is the project's own binary protocol on TCP.

Loopback by default: an embedded runtime binds to 127.0.0.1 (``_node_ip_address``), with the
dashboard and usage reporting off, so nothing of a run leaves the machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

GENERATORS_ON = ("same", "other")
PLACEMENT_TIMEOUT_S = 60.0


class ClusterError(RuntimeError):
    """The cluster could not run the shards (placement, a shard that died, a timeout)."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how a sharded run goes. ``address``: ``local`` (start an embedded Ray runtime),
    ``auto`` (the cluster this machine's ``ray start`` joined), ``ray://HOST:PORT`` (Ray Client) or
    ``HOST:PORT`` (a cluster's GCS address)."""

    shards: int = 2
    address: str = "local"
    generators_on: str = "same"     # each shard's generator beside its node, or on a Ray node of its own
    node_cpus: float = 1.0          # CPUs a shard's storage node reserves
    generator_cpus: float = 1.0     # CPUs a shard's load generator reserves
    node_host: str = "127.0.0.1"    # address the storage nodes listen on

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if self.generators_on not in GENERATORS_ON:
            raise ValueError(f"generators_on must be one of {GENERATORS_ON}, got {self.generators_on!r}")
        if self.node_cpus <= 0 or self.generator_cpus <= 0:
            raise ValueError("node_cpus and generator_cpus must be > 0")

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.")


def import_ray(loopback: bool = False) -> Any:
    """Ray, imported. With ``loopback``, set up so that every node, agent and worker address it
    picks here is 127.0.0.1: Ray otherwise replaces 127.0.0.1 (even one passed as
    ``_node_ip_address``) by the machine's interface address. The switch that stops it is named for
    macOS; it is read from the environment by each process Ray starts, and from its constants
    module in this one (patched too, in case Ray was imported before)."""
    if loopback:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # No usage statistics sent anywhere.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ClusterError("sharded runs need Ray: pip install 'storagebench[cluster]' (or pip install ray)") from None
    if loopback:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


def connect(spec: ClusterSpec) -> dict[str, Any]:
    """Join (or start) the Ray runtime ``spec.address`` names; returns what the run was given.
    An already initialised runtime (a test's cluster) is used as it is."""
    ray = import_ray(loopback=is_loopback(spec.node_host))
    warnings: list[str] = []
    if not ray.is_initialized():
        if spec.address == "local":
            need = spec.shards * (spec.node_cpus + spec.generator_cpus)
            have = os.cpu_count() or 1
            if need > have:
                warnings.append(f"{spec.shards} shards reserve {need:g} CPUs (node + generator each) on a machine with "
                                f"{have}: the embedded runtime offers {need:g} logical CPUs, so shards share cores "
                                f"and a sharded run cannot be faster here than one node")
            ray.init(num_cpus=int(max(need, have) + 0.999), include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
        elif spec.address.startswith("ray://"):
            ray.init(spec.address, log_to_driver=False)
        else:
            # A cluster on loopback (``ray start --node-ip-address=127.0.0.1``): the driver joins it there.
            host = spec.address.rpartition(":")[0]
            loopback = is_loopback(host) or (spec.address == "auto" and is_loopback(spec.node_host))
            kwargs = {"_node_ip_address": "127.0.0.1"} if loopback else {}
            ray.init(address=spec.address, log_to_driver=False, configure_logging=False, **kwargs)
    nodes = alive_nodes()
    if is_loopback(spec.node_host):
        outside = sorted({n["NodeManagerAddress"] for n in nodes if not is_loopback(n["NodeManagerAddress"])})
        if outside:
            raise ClusterError(f"the Ray cluster has nodes at {', '.join(outside)}, not on loopback, while the storage "
                               f"nodes are to listen on {spec.node_host}: start the cluster with "
                               f"--node-ip-address=127.0.0.1, or name the address nodes listen on (--node-host)")
    return {"address": spec.address, "ray_version": ray.__version__, "nodes": len(nodes),
            "node_ips": sorted({n["NodeManagerAddress"] for n in nodes}),
            "cluster_cpus": ray.cluster_resources().get("CPU", 0.0), "warnings": warnings}


def alive_nodes() -> list[dict[str, Any]]:
    ray = import_ray()
    return [n for n in ray.nodes() if n.get("Alive")]


@dataclass
class Placement:
    """A placement group and which bundle each shard's node and generator go in."""

    group: Any
    strategy: str
    node_bundle: list[int]
    generator_bundle: list[int]
    bundles: list[dict[str, float]]

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "bundles": self.bundles, "node_bundle": self.node_bundle,
                "generator_bundle": self.generator_bundle}

    def scheduling(self, bundle: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=self.group, placement_group_bundle_index=bundle)

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)


def place(spec: ClusterSpec) -> Placement:
    """Reserve the shards' CPUs: one bundle per shard (node and generator together), or with
    ``generators_on="other"`` one per node and one per generator, each on a Ray node of its own.
    STRICT_SPREAD when the cluster has a node per bundle, PACK otherwise."""
    ray = import_ray()
    from ray.util.placement_group import placement_group

    k, nodes = spec.shards, len(alive_nodes())
    if spec.generators_on == "same":
        bundles = [{"CPU": spec.node_cpus + spec.generator_cpus} for _ in range(k)]
        node_b, gen_b = list(range(k)), list(range(k))
        strategy = "STRICT_SPREAD" if nodes >= k else "PACK"
    else:
        if nodes < 2 * k:
            raise ClusterError(f"--generators-on other puts every storage node and every generator on a Ray node of "
                               f"its own: {k} shards need {2 * k} nodes, the cluster has {nodes}. Use "
                               f"--generators-on same, fewer shards, or add nodes")
        bundles = [{"CPU": spec.node_cpus} for _ in range(k)] + [{"CPU": spec.generator_cpus} for _ in range(k)]
        node_b, gen_b = list(range(k)), list(range(k, 2 * k))
        strategy = "STRICT_SPREAD"
    group = placement_group(bundles, strategy=strategy)
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except Exception:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(group)
        raise ClusterError(f"Ray could not place {len(bundles)} bundles {bundles} ({strategy}) within "
                           f"{PLACEMENT_TIMEOUT_S:.0f} s: the cluster has {nodes} nodes and "
                           f"{ray.available_resources().get('CPU', 0):g} free CPUs "
                           f"({ray.cluster_resources().get('CPU', 0):g} in all)") from None
    return Placement(group, strategy, node_b, gen_b, bundles)


def wait_all(refs: Sequence[Any], labels: Sequence[str], what: str, timeout_s: float,
             on_failure: Any = None, tick: Any = None) -> list[Any]:
    """The results of ``refs`` (one per shard, ``labels`` naming them), in order. The first failure
    raises :class:`ClusterError` at once, naming its shard and what ``on_failure(i)`` adds (its
    log); so does a shard still running after ``timeout_s``. ``tick()`` runs about once a second
    while it waits (a progress bar)."""
    ray = import_ray()
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        if tick is not None:
            tick()
        for ref in ready:
            i = index[ref]
            try:
                results[i] = ray.get(ref)
            except Exception as e:  # a RayTaskError (the shard raised) or RayActorError (it died)
                extra = on_failure(i) if on_failure else ""
                raise ClusterError(f"{labels[i]} failed during {what}: {_short(e)}{extra}") from None
        if pending and time.monotonic() > deadline:
            late = ", ".join(labels[index[r]] for r in pending)
            extra = "".join(on_failure(index[r]) for r in pending) if on_failure else ""
            raise ClusterError(f"{late} did not finish {what} within {timeout_s:.0f} s{extra}")
    return results


def _short(e: BaseException) -> str:
    """The shard's own error, without Ray's wrapping of it."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
