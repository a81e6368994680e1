"""One store measured as K shards on Ray: a storage node and a load generator per shard, one merged row.

Each shard is the same storage-node program as a single-node run, listening on TCP, started by a
``ShardNode`` actor that reserves its CPUs and measures it (CPU, /proc I/O and disk of the node's
processes over the window, on the node's own machine). A ``ShardGenerator`` actor replays the
shard's part of the schedule against it over the binary protocol, latency from intended start,
exactly as on one machine. The generators start their schedules at one wall-clock instant. Ray
moves only the workload parts, the control calls and the results.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

import numpy as np

from seqvault.schema import Schema
from storagebench.cluster.merge import merge_shard_blocks
from storagebench.cluster.partition import merge_samples, split_chunks, split_prepared
from storagebench.cluster.runtime import ClusterSpec, connect, import_ray, place, wait_all
from storagebench.experiments.run import (
    LoadMeter,
    PreparedWorkload,
    RunConfig,
    WorkloadLike,
    build_block,
    check_correctness,
    finish_phase,
    fresh_dir,
    raise_background_error,
    store_options,
)
from storagebench.keepawake import KeepAwake
from storagebench.measure import LocalMeter
from storagebench.node import GET, NodeClient
from storagebench.replay import replay
from storagebench.stores import store_class

LOAD_WINDOW = 4       # backfill chunks in flight per shard (bounds the object store's share)
START_MARGIN_S = 2.0   # generators build their frames first; the shared start leaves them this long
DRAIN_MARGIN_S = 180.0


class ShardNode:
    """A Ray actor: one shard's storage node, its bulk load, its measurements and its teardown."""

    def __init__(self, shard: int, store: str, store_dir: str, schema_json: str, options: dict[str, Any],
                 log_path: str, host: str) -> None:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)   # the node process inherits these: its errors land in the shard's log
        os.dup2(log, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        self.shard, self.store_dir, self.log_path = shard, store_dir, log_path
        self.schema = Schema.from_json(schema_json)
        fresh_dir(store_dir)
        print(f"shard {shard}: starting {store} in {store_dir}, listening on {host}", flush=True)
        self.client = NodeClient(store, store_dir, self.schema, options, transport="tcp", host=host)
        print(f"shard {shard}: storage node pid {self.client.pid} serving {self.client.address}", flush=True)
        self.meter: LocalMeter | None = None
        self.loader: LoadMeter | None = None

    def info(self) -> dict[str, Any]:
        ray = import_ray()
        ctx = ray.get_runtime_context()
        address = self.client.address
        kind, _, where = address.partition(":")
        host, _, port = where.rpartition(":")
        if host in ("0.0.0.0", "::"):  # listening everywhere: advertise the address Ray knows this node by
            address = f"{kind}:{ray.util.get_node_ip_address()}:{port}"
        return {"shard": self.shard, "address": address, "pids": self.client.pids,
                "ray_node_id": ctx.get_node_id(), "host": socket.gethostname(),
                "ip": ray.util.get_node_ip_address(), "log": self.log_path, "store_dir": self.store_dir}

    def begin_load(self) -> None:
        self.loader = LoadMeter(self.client, self.schema.row_bytes)

    def load_chunk(self, part: tuple[np.ndarray, dict[str, np.ndarray]]) -> int:
        assert self.loader is not None, "load_chunk() before begin_load()"
        return self.loader.chunk(*part) if len(part[0]) else self.loader.loaded

    def end_load(self, prime_users: np.ndarray) -> dict[str, Any]:
        assert self.loader is not None, "end_load() before begin_load()"
        load = self.loader.finish()
        # Prime the read path (JIT compilation, file handles) so warm-up is spent warming, not compiling.
        self.client.call(GET, prime_users, None)
        return load

    def open_window(self) -> None:
        self.meter = LocalMeter(self.client.pids, self.store_dir, generator_here=False)
        self.meter.open_window()

    def close_window(self) -> tuple[dict[str, Any], list[list[Any]]]:
        if self.meter is None:
            raise RuntimeError("close_window() before open_window()")
        return self.meter.close_window()

    def finish(self, crosscheck_users: np.ndarray, checks_data: bool) -> dict[str, Any]:
        return finish_phase(self.client, crosscheck_users, checks_data)

    def node_state(self) -> str:
        proc = self.client.process
        if proc is None or proc.is_alive():
            return "its storage node process is running"
        return f"its storage node process exited with code {proc.exitcode}"

    def close(self) -> None:
        self.client.close()


class _RemoteMeter:
    """The generator's view of its node's meter: opening does not wait (it runs inside dispatch)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._opened: Any = None

    def open_window(self) -> None:
        self._opened = self.node.open_window.remote()

    def close_window(self) -> tuple[dict[str, Any], list[list[Any]]]:
        ray = import_ray()
        ray.get(self._opened)
        return ray.get(self.node.close_window.remote())


class ShardGenerator:
    """A Ray actor: one shard's open-loop load generator, connected to its node over TCP."""

    def __init__(self, shard: int, address: str, schema_json: str, node: Any) -> None:
        self.shard, self.node = shard, node
        self.client = NodeClient.attach(address, Schema.from_json(schema_json))
        # A first call through the node's handle outside the clock: the one inside the dispatch
        # loop (opening the window) then costs a submission only.
        import_ray().get(node.node_state.remote())

    def ready(self) -> bool:
        return True

    def replay(self, schedule: Any, start_at_wall_ns: int, options: dict[str, Any]) -> dict[str, Any]:
        out = replay(self.client, schedule, meter=_RemoteMeter(self.node), start_at_wall_ns=start_at_wall_ns,
                     **options)
        raise_background_error(self.client)
        return out

    def close(self) -> None:
        self.client.close()


def run_store_sharded(wl: WorkloadLike, prepared: PreparedWorkload, store: str, store_dir: str, cfg: RunConfig,
                      spec: ClusterSpec, *, hist_log_dir: str | None = None, log_prefix: str | None = None,
                      progress: Any = None, status: Any = None) -> tuple[dict[str, Any], Any]:
    """Measure one store as ``spec.shards`` shards; returns (the merged cluster row with the shard
    blocks in ``shards``, the cross-check sample of ``prepared.crosscheck_users``), like
    :func:`storagebench.experiments.run.run_store`. ``status`` is not called: the generators send
    nothing while they dispatch, so the progress bar follows the clock instead."""
    cluster = connect(spec)  # first: it decides how Ray is imported (loopback)
    ray = import_ray()
    # Actors run in the Ray worker's directory, not ours: every path they get is absolute.
    store_dir = os.path.abspath(store_dir)
    hist_log_dir = os.path.abspath(hist_log_dir) if hist_log_dir else None
    k = spec.shards
    parts = split_prepared(prepared, k, cfg.warmup_s)
    opts, warnings = store_options(store, cfg, store_dir)
    checks_data = store_class(store).returns_stored_data
    report = progress or (lambda phase, done, total: None)
    log_dir = os.path.join(os.path.dirname(hist_log_dir or store_dir), "logs")
    logs = [os.path.join(log_dir, f"{store}.shard-{i}.log") for i in range(k)]
    labels = [f"{store} shard {i}/{k}" for i in range(k)]
    placement = place(spec)
    node_cls = ray.remote(ShardNode)
    gen_cls = ray.remote(ShardGenerator)
    nodes: list[Any] = []
    gens: list[Any] = []

    def why(i: int) -> str:
        state = ""
        try:
            state = ray.get(nodes[i].node_state.remote(), timeout=5) + "; "
        except Exception:
            state = "its node actor is gone; "
        return f" ({state}shard log: {logs[i]})"

    try:
        nodes = [node_cls.options(num_cpus=spec.node_cpus, max_concurrency=2,
                                  scheduling_strategy=placement.scheduling(placement.node_bundle[i])).remote(
            i, store, os.path.join(store_dir, f"shard-{i}"), wl.schema.to_json(), opts, logs[i], spec.node_host)
            for i in range(k)]
        infos = wait_all([n.info.remote() for n in nodes], labels, "start", 300, why)
        # The backfill goes to the object store part by part, as the driver reads it.
        wait_all([n.begin_load.remote() for n in nodes], labels, "the bulk load", 300, why)
        # The backfill goes to the shards chunk by chunk as the driver reads it (an actor runs one
        # caller's calls in order), at most LOAD_WINDOW chunks in flight per shard.
        in_flight: list[list[Any]] = [[] for _ in range(k)]
        sent = 0
        for chunk_parts in split_chunks(wl.iter_backfill(chunk_events=250_000), k):
            for i, part in enumerate(chunk_parts):
                in_flight[i].append(nodes[i].load_chunk.remote(part))
                if len(in_flight[i]) > LOAD_WINDOW:
                    wait_all(in_flight[i][:1], labels[i:i + 1], "the bulk load", 3600, lambda _j, i=i: why(i))
                    in_flight[i] = in_flight[i][1:]
            sent += sum(len(p[0]) for p in chunk_parts)
            report("load", sent, prepared.backfill_events)
        for i in range(k):
            wait_all(in_flight[i], [labels[i]] * len(in_flight[i]), "the bulk load", 3600, lambda _j, i=i: why(i))
        loads = wait_all([n.end_load.remote(parts[i].crosscheck_users[:16]) for i, n in enumerate(nodes)],
                         labels, "the bulk load", 3600, why)
        gens = [gen_cls.options(num_cpus=spec.generator_cpus,
                                scheduling_strategy=placement.scheduling(placement.generator_bundle[i])).remote(
            i, infos[i]["address"], wl.schema.to_json(), nodes[i]) for i in range(k)]
        prefix = f"{store}." if log_prefix is None else log_prefix
        options = [{"hist_log_dir": hist_log_dir, "log_prefix": f"{prefix}shard-{i}.",
                    "backlog_threshold_ms": cfg.backlog_threshold_ms, "min_achieved_ratio": cfg.min_achieved_ratio,
                    "check_share": cfg.check_share if checks_data else 0.0, "check_seed": cfg.seed + i}
                   for i in range(k)]
        schedules = [ray.put(p.schedule) for p in parts]
        wait_all([g.ready.remote() for g in gens], labels, "connecting its generator", 300, why)
        start_at = time.time_ns() + int((START_MARGIN_S + 20e-6 * max(len(p.schedule) for p in parts)) * 1e9)
        runs = [g.replay.remote(schedules[i], start_at, options[i]) for i, g in enumerate(gens)]
        span = float(prepared.schedule.offsets_ns[-1]) / 1e9 if len(prepared.schedule) else 0.0
        n_ops = len(prepared.schedule)

        def clock_progress() -> None:
            # The generators report nothing while they dispatch (a Ray call there would sit inside
            # measured latencies): the bar follows the clock.
            elapsed = max(0.0, time.time() - start_at / 1e9)
            report("replay", min(n_ops, int(n_ops * elapsed / span)) if span else n_ops, n_ops)

        replayed = wait_all(runs, labels, "the replay", start_at / 1e9 - time.time() + span + DRAIN_MARGIN_S, why,
                            tick=clock_progress)
        afters = wait_all([n.finish.remote(parts[i].crosscheck_users, checks_data) for i, n in enumerate(nodes)],
                          labels, "the final flush and cross-check read", 1800, why)
        # Done: close cleanly (each node closes its store) before the actors go.
        for actor in gens + nodes:
            ray.get(actor.close.remote(), timeout=300)
    finally:
        # On a failure the other shards may still be replaying: end them now, not when they finish.
        for actor in gens + nodes:
            ray.kill(actor)
        placement.remove()

    blocks = []
    for i in range(k):
        correctness = (check_correctness(wl, parts[i].schedule, replayed[i]["checked_reads"], cfg)
                       if checks_data else None)
        block = build_block(store, cfg, parts[i], wl.schema.row_bytes, opts, warnings, loads[i], replayed[i],
                            afters[i], correctness, int(spec.node_cpus + 0.999), KeepAwake(None).describe())
        block.update({"shard": i, "placement": {k_: infos[i][k_] for k_ in ("ray_node_id", "host", "ip", "address",
                                                                           "log")},
                      "schedule": parts[i].schedule_info, "histograms": replayed[i]["histograms"],
                      "measured_ops": replayed[i]["measured_ops"]})
        blocks.append(block)
    # An append of several users' events became one append per shard: cost per op and rates
    # count the workload's own operations, as a single node's run does.
    origins = np.unique(np.concatenate([p.schedule.origin[p.schedule.measured_from:] for p in parts]))
    row = merge_shard_blocks(blocks, measured_ops=len(origins), row_bytes=wl.schema.row_bytes)
    row["cluster"] = {**cluster, "spec": spec.describe(), "placement": placement.describe(),
                      "ray_nodes_used": len({b["placement"]["ray_node_id"] for b in blocks})}
    row["warnings"] = list(dict.fromkeys(row["warnings"] + cluster["warnings"]))
    sample = None
    if checks_data:
        sample = merge_samples(prepared.crosscheck_users,
                               [(parts[i].crosscheck_users, afters[i]["sample"]) for i in range(k)])
    return row, sample

