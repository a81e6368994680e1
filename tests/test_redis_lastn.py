"""The Redis LastN binding beyond the shared contract: late events, the server it runs, its costs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest
from needs_redis import require_redis_server

from seqvault.schema import Field, Schema
from storagebench.stores import StoreError, open_store

SCHEMA = Schema([Field("item", "uint64"), Field("ts", "int64"), Field("action", "int8")], time_field="ts",
                name="redis-test")


@pytest.fixture(autouse=True)
def _redis() -> None:
    require_redis_server()


def events(ts: list[int], item0: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    n = len(ts)
    return np.full(n, 42, dtype=np.uint64), {"item": np.arange(item0, item0 + n, dtype=np.uint64),
                                             "ts": np.array(ts, dtype=np.int64),
                                             "action": np.zeros(n, dtype=np.int8)}


def rows(store) -> list[tuple[int, int]]:
    _, cols = store.get_many(np.array([42], dtype=np.uint64))
    return list(zip(cols["ts"].tolist(), cols["item"].tolist(), strict=True))


def test_late_events_are_merged_by_time_deep_in_the_list(tmp_path):
    """A late event older than the 32 newest entries makes the script fetch deeper; one older than
    the whole full list is dropped; equal timestamps keep arrival order; negative times compare right."""
    expect: list[tuple[int, int]] = []

    def add(store, ts: list[int], item0: int) -> None:
        store.append(*events(ts, item0))
        expect.extend(zip(ts, range(item0, item0 + len(ts)), strict=True))
        expect.sort(key=lambda r: r[0])  # stable: ties keep arrival order
        del expect[:-300]

    with open_store("redis_lastn", str(tmp_path / "s"), SCHEMA, max_len=300) as store:
        add(store, list(range(0, 2500, 10)), 0)          # 250 in order
        add(store, [55, 2490, 2490], 1000)                # late by 244 entries; ties with the tail
        add(store, [-7, -100, 3000], 2000)                # older than everything, negative times
        add(store, list(range(3001, 3100)), 3000)         # fills past N: the oldest are trimmed
        add(store, [-5], 4000)                            # older than every kept event: dropped
        assert rows(store) == expect
        assert len(expect) == 300 and expect[0][0] > -5
        stats = store.stats()
        assert stats["late_users"] == 3 and stats["entries_moved"] > 32


def test_the_server_is_configured_as_recorded_and_dies_with_its_parent(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from seqvault.schema import Schema
        from storagebench.stores import open_store
        schema = Schema.from_json({SCHEMA.to_json()!r})
        store = open_store("redis_lastn", {str(tmp_path / "s")!r}, schema)
        print(store.server.pid, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server = psutil.Process(int(child.stdout.readline()))
        assert "redis-server" in server.name()
        conf = (tmp_path / "s" / "redis.conf").read_text()
        assert "appendonly yes" in conf and "appendfsync everysec" in conf and "port 0" in conf
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    server.wait(timeout=10)  # PR_SET_PDEATHSIG: a killed storage node takes its Redis with it


def test_config_names_the_server_and_its_durability(tmp_path):
    with open_store("redis_lastn", str(tmp_path / "s"), SCHEMA, direct_io=True) as store:
        cfg = store.config()
        assert cfg["redis_conf"]["appendfsync"] == "everysec" and cfg["redis_conf"]["appendonly"] == "yes"
        assert cfg["server"].startswith("Redis server v=") and cfg["hiredis"] is True
        assert cfg["direct_io"] is False  # it cannot bypass the page cache and says so


def test_the_aof_brings_acknowledged_appends_back_after_a_killed_server(tmp_path):
    path = str(tmp_path / "s")
    with open_store("redis_lastn", path, SCHEMA) as store:
        store.append(*events([1, 2, 3]))
        store.flush()
        before = rows(store)
        os.kill(store.server.pid, signal.SIGKILL)
        store.server.process.wait()
    with open_store("redis_lastn", path, SCHEMA) as store:
        assert rows(store) == before == [(1, 0), (2, 1), (3, 2)]


def test_flush_fsyncs_through_appendfsync_always_and_restores_everysec(tmp_path):
    """Redis 7.0 has no fsync command: flush() switches to appendfsync always for one write (whose
    reply follows the fsync) and back. Without it a flush would leave the AOF to the once-a-second
    background fsync."""
    with open_store("redis_lastn", str(tmp_path / "s"), SCHEMA) as store:
        store.append(*events([1, 2, 3]))
        r = store._r
        r.config_resetstat()
        store.flush()
        stats = r.info("commandstats")
        assert stats["cmdstat_config|set"]["calls"] == 2
        assert stats["cmdstat_set"]["calls"] == 1 and stats["cmdstat_del"]["calls"] == 1
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert r.info("persistence")["aof_last_write_status"] == "ok"
        assert rows(store) == [(1, 0), (2, 1), (3, 2)] and r.dbsize() == 1  # the marker key is gone


def test_compaction_rewrites_the_aof_and_disk_is_counted_by_kind(tmp_path):
    with open_store("redis_lastn", str(tmp_path / "s"), SCHEMA, max_len=50) as store:
        for i in range(40):
            store.append(*events(list(range(i * 100, i * 100 + 100)), i * 100))
        before = store.disk_bytes()
        after = store.compact()
        assert before["aof_incr"] > after.get("aof_incr", 0)
        assert after["aof_base_rdb"] > 0 and after["total"] < before["total"]
        assert store.stats()["aof_rewrites"] >= 1
        assert len(rows(store)) == 50


def test_a_missing_server_binary_is_one_clear_error(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("STORAGEBENCH_REDIS_SERVER", raising=False)
    monkeypatch.setattr("storagebench.stores.redis_lastn.os.access",
                        lambda p, mode: False if "redis-server" in str(p) else real_access(p, mode))
    with pytest.raises(StoreError, match="apt-get install -y redis-server"):
        open_store("redis_lastn", str(tmp_path / "s"), SCHEMA)


def test_the_node_charges_the_server_process_to_the_store(tmp_path):
    """The harness measures the node and the helper processes its store names (the Redis server)."""
    from storagebench.measure import ProcessSnapshot
    from storagebench.node import NodeClient

    with NodeClient("redis_lastn", str(tmp_path / "s"), SCHEMA, {}) as client:
        (server,) = client.store_config["helper_pids"]
        assert client.pids == [client.pid, server] and "redis-server" in psutil.Process(server).name()
        before = ProcessSnapshot.take(client.pids)
        t_end = time.monotonic() + 0.5
        while time.monotonic() < t_end:  # make the server work
            client.call("append", *events([int(time.monotonic_ns())] * 50))
        after = ProcessSnapshot.take(client.pids)
        node_only = ProcessSnapshot.take(client.pid)
        server_cpu = psutil.Process(server).cpu_times()
        assert after.cpu_s - before.cpu_s > 0
        assert after.cpu_s == pytest.approx(node_only.cpu_s + server_cpu.user + server_cpu.system, abs=0.05)
