"""The storage node: one process per store under test, serving requests sent over a pipe.

The same transport serves every store (a ``multiprocessing`` connection carrying pickled
requests), so its cost is equal for all of them. Inside the node a receiver thread queues requests
for a small pool of worker threads (the engines release the GIL in their kernels and I/O), and a
maintenance thread calls ``store.maintain()`` so SeqVault's merge runs in the background the way
RocksDB's compaction threads do. Appends are applied in arrival order by one writer thread, as
an ingestion consumer of a user-partitioned log would (and so equal-time events keep one order in
every store); reads go to the worker pool. Each reply carries the node's own start/end timestamps of the
store call (``time.monotonic_ns``, a clock shared by all processes on Linux), which gives service
time separately from queueing and transport.

Reads in the measured stream reply with a count and byte size instead of the sequences: the store
does all of its work (lookup, I/O, decode into columns) but the harness does not pay to ship
megabytes back; the cross-check uses ``get`` which returns the data, and the e2e ranker ``fetch``,
which returns one user's events as a wire payload (:mod:`storagebench.wire`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from seqvault.schema import Schema

# op codes of the request tuples (req_id, op, args)
APPEND, READ, GET = "append", "read", "get"
FETCH = "fetch"  # one user's events encoded for the wire (storagebench.wire), for the e2e ranker
_STOP = object()
GIL_SWITCH_INTERVAL_S = 0.0005


class NodeError(RuntimeError):
    """The storage node failed a request or died; the message carries its traceback."""


def _serve(conn: Any, store_name: str, path: str, schema_json: str, options: dict[str, Any],
           workers: int, cpus: list[int] | None, maintain_interval_s: float) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    # A short GIL switch interval keeps a long CPU-bound write (a RocksDB read-modify-write batch)
    # from convoying reads behind it for 5 ms per switch; it applies to every store alike.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    from storagebench.stores import open_store  # imported in the child: spawn starts clean

    try:
        store = open_store(store_name, path, Schema.from_json(schema_json), **options)
    except Exception:
        conn.send((-1, "error", 0, 0, traceback.format_exc()))
        return
    conn.send((-1, "ok", 0, 0, store.config()))
    send_lock = threading.Lock()
    store_lock = threading.Lock() if not store.thread_safe else None
    work: queue.Queue = queue.Queue()
    appends: queue.Queue = queue.Queue()
    stopping = threading.Event()

    def reply(msg: tuple) -> None:
        with send_lock:
            conn.send(msg)

    def run_store_op(req_id: int, op: str, args: tuple) -> None:
        t0 = time.monotonic_ns()
        try:
            if store_lock is not None:
                with store_lock:
                    payload = _call(store, op, args)
            else:
                payload = _call(store, op, args)
            status = "ok"
        except Exception:
            payload, status = traceback.format_exc(), "error"
        reply((req_id, status, t0, time.monotonic_ns(), payload))

    def worker(source: queue.Queue) -> None:
        while True:
            item = source.get()
            if item is _STOP:
                return
            run_store_op(*item)

    def maintainer() -> None:
        while not stopping.wait(maintain_interval_s):
            try:
                if store_lock is not None:
                    with store_lock:
                        store.maintain()
                else:
                    store.maintain()
            except Exception:
                reply((-2, "error", 0, 0, traceback.format_exc()))
                return

    threads = [threading.Thread(target=worker, args=(work,), daemon=True, name=f"node-reader-{i}")
               for i in range(workers)]
    threads.append(threading.Thread(target=worker, args=(appends,), daemon=True, name="node-writer"))
    threads.append(threading.Thread(target=maintainer, daemon=True, name="node-maintain"))
    for t in threads:
        t.start()
    try:
        while True:
            req_id, op, args = conn.recv()
            if op == APPEND:
                appends.put((req_id, op, args))
            elif op in (READ, GET, FETCH):
                work.put((req_id, op, args))
            elif op == "close":
                break
            else:  # control ops run inline; the client issues them only when nothing is in flight
                run_store_op(req_id, op, args)
    except EOFError:
        pass
    finally:
        stopping.set()
        for _ in range(workers):
            work.put(_STOP)
        appends.put(_STOP)
        for t in threads:
            t.join(timeout=60)
        store.close()


def _call(store: Any, op: str, args: tuple) -> Any:
    if op == APPEND:
        store.append(*args)
        return None
    if op == READ:
        offsets, cols = store.get_many(*args)
        return int(offsets[-1]), int(sum(c.nbytes for c in cols.values()))
    if op == GET:
        return store.get_many(*args)
    if op in (FETCH, "wire_dict"):
        from storagebench import wire  # only the e2e ranker uses it

        return wire.node_fetch(store, *args) if op == FETCH else wire.set_node_dictionary(*args)
    if op == "bulk_load":
        store.bulk_load(*args)
        return None
    if op in ("finish_load", "flush", "maintain", "disk_bytes", "stats", "config"):
        return getattr(store, op)()
    raise NodeError(f"unknown request {op!r}")


class NodeClient:
    """Starts a storage node and talks to it; replies are handled by a receiver thread."""

    def __init__(self, store_name: str, path: str, schema: Schema, options: dict[str, Any] | None = None,
                 *, workers: int = 2, cpus: list[int] | None = None, maintain_interval_s: float = 0.05,
                 start_timeout_s: float = 120.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_serve, name=f"storage-node-{store_name}", daemon=True,
            args=(child, store_name, path, schema.to_json(), dict(options or {}), workers, cpus,
                  maintain_interval_s))
        self.process.start()
        child.close()
        if not self._conn.poll(start_timeout_s):
            self.process.kill()
            raise NodeError(f"storage node for {store_name!r} did not start within {start_timeout_s} s")
        try:
            _, status, _, _, payload = self._conn.recv()
        except EOFError:
            self.process.join(timeout=10)
            raise NodeError(f"storage node for {store_name!r} exited while starting "
                            f"(exit code {self.process.exitcode}); see its stderr above") from None
        if status != "ok":
            self.process.join(timeout=10)
            raise NodeError(f"storage node could not open store {store_name!r} at {path}:\n{payload}")
        self.store_config: dict[str, Any] = payload
        self.pid: int = self.process.pid
        self._next_id = 0
        self._pending: dict[int, Callable[[str, int, int, Any, int], None]] = {}
        self._lock = threading.Lock()
        self.background_error: str | None = None
        self._closed = False
        self._receiver = threading.Thread(target=self._receive, daemon=True, name="node-client-recv")
        self._receiver.start()

    def _receive(self) -> None:
        while True:
            try:
                req_id, status, t0, t1, payload = self._conn.recv()
            except (EOFError, OSError):
                break
            done = time.monotonic_ns()
            if req_id == -2:
                self.background_error = payload
                continue
            with self._lock:
                callback = self._pending.pop(req_id, None)
            if callback is not None:
                callback(status, t0, t1, payload, done)
        with self._lock:
            pending, self._pending = self._pending, {}
        for callback in pending.values():
            callback("error", 0, 0, "storage node connection closed", time.monotonic_ns())

    def submit(self, op: str, args: tuple, callback: Callable[[str, int, int, Any, int], None]) -> None:
        """Send a request; ``callback(status, t_start, t_end, payload, t_received)`` runs on reply."""
        with self._lock:
            req_id = self._next_id
            self._next_id += 1
            self._pending[req_id] = callback
        self._conn.send((req_id, op, args))

    def call(self, op: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Send a request and wait for its result, raising :class:`NodeError` on failure."""
        fut: Future = Future()

        def done(status: str, t0: int, t1: int, payload: Any, received: int) -> None:
            if status == "ok":
                fut.set_result(payload)
            else:
                fut.set_exception(NodeError(f"storage node failed {op!r}:\n{payload}"))

        self.submit(op, args, done)
        return fut.result(timeout=timeout_s)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self, timeout_s: float = 120.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.send((-1, "close", ()))
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)
        self._conn.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
