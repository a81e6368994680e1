"""The storage node: one process per store under test, serving the binary protocol of
:mod:`storagebench.protocol` on a Unix socket (or TCP on 127.0.0.1).

One event loop per process. Reads (and the e2e ranker's ``fetch``) run inline in the loop thread:
no per-request hand-off to a worker pool, so a read costs one wake-up, one store call and one
send. Appends go, in arrival order, to one writer thread, as an ingestion consumer of a
user-partitioned log would apply them (equal-time events keep one order in every store), so a
long write batch never sits in front of a read. A maintenance thread calls ``store.maintain()``
so SeqVault's merge runs in the background the way RocksDB's compaction threads do. Every reply
carries the node's own start/end timestamps of the store call (``time.monotonic_ns``), which
gives service time separately from queueing and transport.

Measured reads reply with a count and byte size instead of the sequences: the store does all of
its work (lookup, I/O, decode into columns) but the harness does not pay to ship megabytes back;
a read flagged ``full`` (the in-window correctness sample), ``get`` (the cross-check) and ``fetch``
return data.

The node's lifetime is tied to a pipe to its parent: the parent learns the listening address on
it and closes it to stop the node (the store is then closed cleanly). Nothing on the socket can
stop the node, so a hostile peer can at worst lose its own connection.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import queue
import select
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import numpy as np

from seqvault.schema import Schema
from storagebench import protocol as p

# op names of NodeClient.submit / call
APPEND, READ, GET, FETCH = "append", "read", "get", "fetch"
FETCH_CACHED, VECTOR_PUT = "fetch_cached", "vector_put"
GIL_SWITCH_INTERVAL_S = 0.0005
BACKGROUND_REQ_ID = (1 << 64) - 1   # unsolicited error frame: background maintenance failed
SOCKET_BUFFER_BYTES = 4 << 20

Callback = Callable[[str, int, int, Any, int], None]


class NodeError(RuntimeError):
    """The storage node failed a request or died; the message carries its error."""


# -- the node process --------------------------------------------------------------------------

class _Connection:
    """One client connection: its socket, receive buffer and a lock that orders replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.rbuf = bytearray(1 << 20)  # reused receive buffer: no allocation per request
        self.rview = memoryview(self.rbuf)
        self.send_lock = threading.Lock()
        self.open = True
        self.appends_queued = 0                 # appends handed to the writer, not yet answered
        self.appends_done = threading.Condition()

    def send_raw(self, data: bytes) -> None:
        with self.send_lock:
            if not self.open:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.open = False

    def send(self, op: int, req_id: int, status: int, t0: int, t1: int, body: list[bytes] | bytes = b"") -> None:
        parts = body if isinstance(body, list) else [body]
        payload = b"".join([p.TIMES.pack(t0, t1), *parts])
        self.send_raw(p.HEADER.pack(p.PROTOCOL_VERSION, op | p.REPLY, status, req_id, len(payload)) + payload)


class _Node:
    def __init__(self, store: Any, schema: Schema, max_payload: int, maintain_interval_s: float) -> None:
        self.store, self.schema, self.max_payload = store, schema, max_payload
        self.row_bytes = schema.row_bytes
        # A thread-safe store takes no node lock (a reusable no-op context); others are serialised.
        self.lock: Any = contextlib.nullcontext() if store.thread_safe else threading.Lock()
        self.appends: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.connections: list[_Connection] = []
        self.conn_lock = threading.Lock()
        self.maintain_interval_s = maintain_interval_s

    # -- request handling -----------------------------------------------------------------
    def handle(self, conn: _Connection, op: int, flags: int, req_id: int, payload: bytearray) -> None:
        t0 = time.monotonic_ns()
        try:
            if op == p.READ and not flags:  # the measured read: as few calls as possible
                uids, last_n = p.decode_read(payload)
                with self.lock:
                    offsets, _ = self.store.get_many(uids, last_n)
                events = int(offsets[-1])
                # Columns come at the schema's dtypes (the Store contract), so bytes follow from events.
                # Header, times and counts in one pack: this is the path every measured read takes.
                conn.send_raw(p.READ_REPLY.pack(p.PROTOCOL_VERSION, p.READ | p.REPLY, p.STATUS_OK, req_id, 32, t0,
                                                time.monotonic_ns(), events, events * self.row_bytes))
                return
            if op == p.APPEND:
                uids, cols = p.decode_batch(self.schema, payload)
                with conn.appends_done:
                    conn.appends_queued += 1
                self.appends.put((conn, req_id, uids, cols))
                return
            body = self._call(op, flags, payload)
            status = p.STATUS_OK
        except p.ProtocolError as e:
            body, status = f"bad request: {e}".encode(), p.STATUS_ERROR
        except Exception as e:
            body, status = f"{type(e).__name__}: {e}\n{traceback.format_exc()}".encode(), p.STATUS_ERROR
        conn.send(op, req_id, status, t0, time.monotonic_ns(), body)

    def _call(self, op: int, flags: int, payload: bytearray) -> list[bytes] | bytes:
        store = self.store
        if op in (p.READ, p.GET):
            uids, last_n = p.decode_read(payload)
            with self.lock:
                offsets, cols = store.get_many(uids, last_n)
            if op == p.GET:
                return p.encode_csr(self.schema, offsets, cols)
            events = int(offsets[-1])
            return [p.encode_counts(events, events * self.schema.row_bytes), *p.encode_csr(self.schema, offsets, cols)]
        if op in (p.FETCH, p.FETCH_CACHED):
            from storagebench import wire  # only the e2e ranker uses it

            uid, last_n, fmt, codec = p.decode_fetch(payload, cached=op == p.FETCH_CACHED)
            if fmt >= len(wire.FORMATS) or codec >= len(wire.CODECS):
                raise p.ProtocolError(f"fetch format {fmt} / codec {codec} out of range")
            user = np.array([uid], dtype=np.uint64)
            with self.lock:
                if op == p.FETCH_CACHED:
                    found, entries = store.get_vector_entries(user)
                data, events, enc_ns = wire.node_fetch(store, user, last_n, wire.FORMATS[fmt], wire.CODECS[codec])
            if op == p.FETCH:
                return [p.encode_counts(events, enc_ns), data]
            entry = entries[0].tobytes() if found[0] else b""
            return [p.encode_counts(events, enc_ns), p.encode_u32(len(entry)), entry, data]
        if op == p.VECTOR_PUT:
            uids, versions, vectors = p.decode_vector_put(payload)
            with self.lock:
                applied = store.put_vectors(uids, versions, vectors)
            return p.encode_counts(int(applied), 0)
        if op == p.BULK_LOAD:
            uids, cols = p.decode_batch(self.schema, payload)
            with self.lock:
                store.bulk_load(uids, cols)
            return b""
        if op == p.WIRE_DICT:
            from storagebench import wire

            wire.set_node_dictionary(*p.decode_wire_dict(payload))
            return b""
        if op == p.CONTROL:
            request = p.decode_json(payload)
            name = request.get("op") if isinstance(request, dict) else None
            if name not in p.CONTROL_OPS:
                raise p.ProtocolError(f"unknown control op {name!r}; one of {', '.join(p.CONTROL_OPS)}")
            with self.lock:
                if name == "open_vectors":
                    result = store.open_vectors(int(request.get("dim", 0)), str(request.get("dtype", "")))
                else:
                    result = store.compact() if name == "compact" else getattr(store, name)()
            if name == "finish_load":
                # Loaded and about to take traffic: what exists now lives on, so keep it out of the
                # cyclic collector's full passes (a stall of milliseconds on a read otherwise).
                gc.collect()
                gc.freeze()
            return p.encode_json(result)
        raise p.ProtocolError(f"unknown op code {op}")

    def read_loop(self, conn: _Connection) -> None:
        """One connection's loop: a blocking receive, then every whole frame handled in order."""
        while not self.stopping.is_set():
            try:
                got = conn.sock.recv_into(conn.rbuf)
            except OSError:
                got = 0
            if not got:
                break
            conn.buf += conn.rview[:got]
            if not self.on_frames(conn):
                break
        # The peer is done sending (or broke the protocol): answer what it already sent first, so
        # every write the store applied is acknowledged on this connection.
        with conn.appends_done:
            conn.appends_done.wait_for(lambda: conn.appends_queued == 0 or self.stopping.is_set(), timeout=60)
        self.drop(conn)

    def on_frames(self, conn: _Connection) -> bool:
        """Handle the whole frames in ``conn.buf``; False if the connection must close."""
        buf, pos, size, header = conn.buf, 0, len(conn.buf), p.HEADER.size
        while size - pos >= header:
            version, op, flags, req_id, length = p.HEADER.unpack_from(buf, pos)
            if version != p.PROTOCOL_VERSION or length > self.max_payload:
                # The stream cannot be re-synchronised: say why, then close.
                why = (f"protocol version {version} (this node speaks {p.PROTOCOL_VERSION})"
                       if version != p.PROTOCOL_VERSION else
                       f"payload of {length} bytes exceeds the limit of {self.max_payload}")
                conn.send(p.HELLO, 0, p.STATUS_ERROR, 0, 0, f"closing connection: {why}".encode())
                return False
            end = pos + header + length
            if size < end:
                break
            self.handle(conn, op, flags, req_id, buf[pos + header:end])  # a copy: buf shrinks below
            pos = end
        if pos:
            del buf[:pos]
        return True

    def drop(self, conn: _Connection) -> None:
        with conn.send_lock:
            conn.open = False
        with self.conn_lock:
            if conn not in self.connections:
                return
            self.connections.remove(conn)
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)  # wakes its reader if another thread drops it
        except OSError:
            pass
        conn.sock.close()

    # -- threads ------------------------------------------------------------------------------
    def writer(self) -> None:
        while True:
            item = self.appends.get()
            if item is None:
                return
            conn, req_id, uids, cols = item
            t0 = time.monotonic_ns()
            try:
                with self.lock:
                    self.store.append(uids, cols)
                body, status = b"", p.STATUS_OK
            except Exception as e:
                body, status = f"{type(e).__name__}: {e}\n{traceback.format_exc()}".encode(), p.STATUS_ERROR
            conn.send(p.APPEND, req_id, status, t0, time.monotonic_ns(), body)
            with conn.appends_done:
                conn.appends_queued -= 1
                conn.appends_done.notify_all()

    def maintainer(self) -> None:
        while not self.stopping.wait(self.maintain_interval_s):
            try:
                with self.lock:
                    self.store.maintain()
            except Exception:
                msg = f"background maintenance failed:\n{traceback.format_exc()}".encode()
                for conn in list(self.connections):
                    conn.send(p.CONTROL, BACKGROUND_REQ_ID, p.STATUS_ERROR, 0, 0, msg)
                return

    def serve(self, listener: socket.socket, parent: Any) -> None:
        """Accept connections, one reader thread each, until the parent closes its pipe."""
        threads = [threading.Thread(target=self.writer, daemon=True, name="node-writer"),
                   threading.Thread(target=self.maintainer, daemon=True, name="node-maintain")]
        for t in threads:
            t.start()
        hello = p.encode_json(self.store.config())
        readers: list[threading.Thread] = []
        try:
            while True:
                ready, _, _ = select.select([listener, parent], [], [])
                if parent in ready:
                    return  # the parent closed its end (or died): stop
                sock, _ = listener.accept()
                _tune(sock)
                conn = _Connection(sock)
                with self.conn_lock:
                    self.connections.append(conn)
                conn.send(p.HELLO, 0, p.STATUS_OK, 0, 0, hello)
                reader = threading.Thread(target=self.read_loop, args=(conn,), daemon=True, name="node-reader")
                reader.start()
                readers.append(reader)
        finally:
            self.stopping.set()
            for conn in list(self.connections):
                self.drop(conn)
            for t in readers:
                t.join(timeout=120)
            self.appends.put(None)
            for t in threads:
                t.join(timeout=120)
            self.store.close()


def _tune(sock: socket.socket) -> None:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
        except OSError:
            pass
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _serve(parent: Any, address: str, store_name: str, path: str, schema_json: str, options: dict[str, Any],
           cpus: list[int] | None, maintain_interval_s: float, max_payload: int) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    # A short GIL switch interval keeps a long CPU-bound write (a RocksDB read-modify-write batch)
    # from convoying reads behind it for 5 ms per switch; it applies to every store alike.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    from storagebench.stores import open_store  # imported in the child: spawn starts clean

    schema = Schema.from_json(schema_json)
    try:
        store = open_store(store_name, path, schema, **options)
        listener = _listen(address)
    except Exception as e:
        parent.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    parent.send(("ready", _address_of(listener)))
    _Node(store, schema, max_payload, maintain_interval_s).serve(listener, parent)


def _listen(address: str) -> socket.socket:
    kind, _, where = address.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where)
    elif kind == "tcp":
        host, _, port = where.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    else:
        raise ValueError(f"node address {address!r}: use 'unix:PATH' or 'tcp:HOST:PORT'")
    sock.listen(16)
    return sock


def _address_of(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"tcp:{host}:{port}"


def connect(address: str, timeout_s: float = 10.0) -> socket.socket:
    """A connected socket to a node at ``unix:PATH`` or ``tcp:HOST:PORT``."""
    kind, _, where = address.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = where
    else:
        host, _, port = where.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    sock.settimeout(timeout_s)
    sock.connect(target)
    sock.settimeout(None)
    _tune(sock)
    return sock


# -- the client ----------------------------------------------------------------------------------

class NodeClient:
    """Starts a storage node and talks to it over the binary protocol.

    Replies are processed by whoever calls :meth:`poll` (the open-loop generator busy-polls it
    between dispatches, so no thread hand-off sits in a measured latency), or by a receiver thread
    inside :meth:`background_receiver` (the e2e driver, whose ranker thread needs the GIL).
    """

    def __init__(self, store_name: str, path: str, schema: Schema, options: dict[str, Any] | None = None,
                 *, cpus: list[int] | None = None, maintain_interval_s: float = 0.05,
                 start_timeout_s: float = 120.0, transport: str = "unix", host: str = "127.0.0.1",
                 max_payload: int = p.DEFAULT_MAX_PAYLOAD) -> None:
        """``transport``: "unix" (a socket in a private temporary directory) or "tcp" (listening on
        ``host``, an ephemeral port; loopback unless another address is named)."""
        if transport == "unix":
            self._sock_dir = tempfile.mkdtemp(prefix="sbnode-")
            address = f"unix:{os.path.join(self._sock_dir, 'node.sock')}"
        elif transport == "tcp":
            self._sock_dir, address = None, f"tcp:{host}:0"
        else:
            raise ValueError(f"transport must be 'unix' or 'tcp', got {transport!r}")
        self.schema = schema
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_serve, name=f"storage-node-{store_name}", daemon=True,
            args=(child, address, store_name, path, schema.to_json(), dict(options or {}), cpus,
                  maintain_interval_s, max_payload))
        self.process.start()
        child.close()
        if not self._pipe.poll(start_timeout_s):
            self.process.kill()
            raise NodeError(f"storage node for {store_name!r} did not start within {start_timeout_s} s")
        try:
            status, detail = self._pipe.recv()
        except EOFError:
            self.process.join(timeout=10)
            raise NodeError(f"storage node for {store_name!r} exited while starting "
                            f"(exit code {self.process.exitcode}); see its stderr above") from None
        if status != "ready":
            self.process.join(timeout=10)
            raise NodeError(f"storage node could not open store {store_name!r} at {path}:\n{detail}")
        self.pid: int = self.process.pid
        self._connect(detail, start_timeout_s)

    @classmethod
    def attach(cls, address: str, schema: Schema, *, timeout_s: float = 30.0) -> NodeClient:
        """A second client of a node that another process started (a shard's load generator on
        another Ray worker or host): the same protocol, no ownership of the node's lifetime."""
        self = cls.__new__(cls)
        self.schema, self.process, self._pipe, self._sock_dir = schema, None, None, None
        self.pid = 0
        self._connect(address, timeout_s)
        return self

    def _connect(self, address: str, timeout_s: float) -> None:
        self.address: str = address
        self._sock = connect(self.address)
        self._buf = bytearray()
        self._rbuf = bytearray(1 << 20)  # reused receive buffer: a busy-poll must not allocate per try
        self._rview = memoryview(self._rbuf)
        self._next_id = 0
        self._pending: dict[int, tuple[int, Callback]] = {}
        self._lock = threading.Lock()       # pending map and id counter
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()  # one thread parses replies at a time
        self._receiver: threading.Thread | None = None
        self._receiver_stop = threading.Event()
        self.background_error: str | None = None
        self.dead: str | None = None
        self._closed = False
        self.store_config: dict[str, Any] = self._hello(timeout_s)
        # The node and the processes its store runs (a Redis server): all charged to the store.
        # An attached client measures nothing itself (its node's owner does): no pids.
        self.pids: list[int] = [] if self.process is None else [
            self.pid, *(int(x) for x in self.store_config.get("helper_pids", []))]

    def _node_state(self) -> str:
        if self.process is None:
            return "a node started elsewhere"
        return f"process alive: {self.process.is_alive()}, exit code {self.process.exitcode}"

    def _hello(self, timeout_s: float) -> dict[str, Any]:
        fut: Future = Future()
        self._pending[0] = (p.HELLO, lambda status, t0, t1, payload, done: (
            fut.set_result(payload) if status == "ok" else fut.set_exception(NodeError(str(payload)))))
        self._next_id = 1
        deadline = time.monotonic() + timeout_s
        while not fut.done() and time.monotonic() < deadline:
            self.poll(0.1)
        if not fut.done():
            raise NodeError(f"storage node at {self.address} sent no greeting within {timeout_s} s")
        return fut.result()

    # -- sending ----------------------------------------------------------------------------
    def submit(self, op: str, args: tuple, callback: Callback, *, full: bool = False) -> None:
        """Send a request; ``callback(status, t_start, t_end, payload, t_received)`` runs on reply.

        Ops and their arguments: ``append (user_ids, columns)``, ``read (user_ids, last_n)`` (reply
        ``(events, bytes)``, plus ``(offsets, columns)`` if ``full``), ``get (user_ids, last_n)``
        (reply ``(offsets, columns)``), ``fetch (user_ids, last_n, format, codec)`` (reply
        ``(payload, events, encode_ns)``), ``fetch_cached`` (the same arguments, last_n may be 0;
        reply ``(payload, events, encode_ns, vector entry bytes or None)``), ``vector_put (user_ids,
        versions, vectors)`` (reply: entries applied), ``bulk_load (user_ids, columns)``, ``wire_dict
        (bytes, level)``, ``open_vectors (dim, dtype)`` and the other control ops of
        :data:`storagebench.protocol.CONTROL_OPS` (no arguments).
        """
        req_id = self.reserve_ids(1)
        code, data = self.encode(op, args, req_id, full=full)
        self.send_frame(req_id, code, data, callback)

    def reserve_ids(self, count: int) -> int:
        """Reserve ``count`` consecutive request ids; returns the first."""
        with self._lock:
            first = self._next_id
            self._next_id += count
        return first

    def encode(self, op: str, args: tuple, req_id: int, *, full: bool = False) -> tuple[int, bytes]:
        """(op code, the whole frame) of one request: a generator can build its frames ahead of time."""
        code, payload = self._encode(op, args)
        return code, p.frame(code, req_id, payload, p.FLAG_FULL if full else 0)

    def send_frame(self, req_id: int, code: int, data: bytes, callback: Callback) -> None:
        """Send a frame built by :meth:`encode`; ``callback`` runs on its reply."""
        with self._lock:
            self._pending[req_id] = (code, callback)
        self._send(data)

    def _encode(self, op: str, args: tuple) -> tuple[int, bytes]:
        if op == APPEND:
            return p.APPEND, p.encode_batch(self.schema, *args)
        if op == "bulk_load":
            return p.BULK_LOAD, p.encode_batch(self.schema, *args)
        if op in (READ, GET):
            uids, last_n = args
            return (p.READ if op == READ else p.GET), p.encode_read(uids, last_n)
        if op in (FETCH, FETCH_CACHED):
            from storagebench import wire

            uids, last_n, fmt, codec = args
            return (p.FETCH if op == FETCH else p.FETCH_CACHED), p.encode_fetch(
                int(np.asarray(uids).reshape(-1)[0]), last_n, wire.FORMATS.index(fmt), wire.CODECS.index(codec))
        if op == VECTOR_PUT:
            return p.VECTOR_PUT, p.encode_vector_put(*args)
        if op == "open_vectors":
            dim, dtype = args
            return p.CONTROL, p.encode_json({"op": op, "dim": int(dim), "dtype": str(dtype)})
        if op == "wire_dict":
            data, level = args
            return p.WIRE_DICT, p.encode_wire_dict(data, level)
        if op in p.CONTROL_OPS:
            return p.CONTROL, p.encode_json({"op": op})
        raise NodeError(f"unknown request {op!r}")

    def _send(self, data: bytes) -> None:
        if self.dead:
            raise NodeError(self.dead)
        view = memoryview(data)
        with self._send_lock:
            while view:
                try:
                    sent = self._sock.send(view, socket.MSG_DONTWAIT)
                    view = view[sent:]
                except BlockingIOError:
                    # The node is not reading: take its replies off the socket meanwhile (it may be
                    # blocked sending them), then wait until the socket takes more.
                    if self._receiver is None:
                        self.poll(0.0)
                    select.select([], [self._sock], [], 0.01)
                except OSError as e:
                    self._fail_all(f"storage node connection lost while sending: {e}")
                    raise NodeError(self.dead) from None

    # -- receiving ----------------------------------------------------------------------------
    def poll(self, timeout_s: float | None = 0.0) -> int:
        """Process every reply that has arrived, waiting up to ``timeout_s`` for the first; returns
        how many callbacks ran. ``timeout_s=0`` never blocks (the generator's busy-poll)."""
        if not self._recv_lock.acquire(blocking=False):
            return 0
        try:
            if self.dead:
                return 0
            try:
                if timeout_s == 0.0:
                    got = self._sock.recv_into(self._rbuf, 0, socket.MSG_DONTWAIT)
                else:
                    ready, _, _ = select.select([self._sock], [], [], timeout_s)
                    if not ready:
                        return 0
                    got = self._sock.recv_into(self._rbuf)
            except BlockingIOError:
                return 0
            except OSError as e:
                self._fail_all(f"storage node connection lost: {e}")
                return 0
            if not got:
                self._fail_all(f"storage node at {self.address} closed the connection ({self._node_state()})")
                return 0
            received = time.monotonic_ns()
            self._buf += self._rview[:got]
            return self._dispatch(received)
        finally:
            self._recv_lock.release()

    def _dispatch(self, received: int) -> int:
        buf, pos, ran = self._buf, 0, 0
        while len(buf) - pos >= p.HEADER.size:
            _version, op, status, req_id, length = p.HEADER.unpack_from(buf, pos)
            end = pos + p.HEADER.size + length
            if len(buf) < end:
                break
            payload = memoryview(buf[pos + p.HEADER.size:end])  # a copy: buf shrinks below
            t0, t1 = p.TIMES.unpack_from(payload, 0) if length >= p.TIMES.size else (0, 0)
            body = payload[p.TIMES.size:]
            pos = end
            if req_id == BACKGROUND_REQ_ID:
                self.background_error = bytes(body).decode(errors="replace")
                continue
            with self._lock:
                entry = self._pending.pop(req_id, None)
            if entry is None:
                if op == p.HELLO | p.REPLY and status == p.STATUS_ERROR:  # the node closes on a bad frame
                    self.background_error = bytes(body).decode(errors="replace")
                continue
            code, callback = entry
            if status != p.STATUS_OK:
                callback("error", t0, t1, bytes(body).decode(errors="replace"), received)
            else:
                callback("ok", t0, t1, self._decode(code, body), received)
            ran += 1
        del buf[:pos]
        return ran

    def _decode(self, code: int, body: memoryview) -> Any:
        if code == p.READ:
            events, nbytes = p.decode_counts(body)
            if len(body) > 16:
                return events, nbytes, p.decode_csr(self.schema, body, 16)
            return events, nbytes
        if code == p.GET:
            return p.decode_csr(self.schema, body)
        if code == p.FETCH:
            events, enc_ns = p.decode_counts(body)
            return bytes(body[16:]), events, enc_ns
        if code == p.FETCH_CACHED:
            events, enc_ns = p.decode_counts(body)
            k = p.decode_u32(body, 16)
            if len(body) < 20 + k:
                raise p.ProtocolError(f"fetch_cached reply announces a {k}-byte vector entry but carries "
                                      f"{len(body) - 20}; the node and client disagree on the protocol")
            entry = bytes(body[20 : 20 + k]) if k else None
            return bytes(body[20 + k :]), events, enc_ns, entry
        if code == p.VECTOR_PUT:
            return p.decode_counts(body)[0]
        if code in (p.CONTROL, p.HELLO):
            return p.decode_json(body)
        return None

    def _fail_all(self, why: str) -> None:
        self.dead = why
        with self._lock:
            pending, self._pending = self._pending, {}
        for _, callback in pending.values():
            callback("error", 0, 0, why, time.monotonic_ns())

    @contextmanager
    def background_receiver(self) -> Iterator[None]:
        """Process replies in a thread while the block runs (callbacks then run in that thread)."""
        self._receiver_stop.clear()

        def loop() -> None:
            while not self._receiver_stop.is_set() and not self.dead:
                self.poll(0.05)

        self._receiver = threading.Thread(target=loop, daemon=True, name="node-client-recv")
        self._receiver.start()
        try:
            yield
        finally:
            self._receiver_stop.set()
            self._receiver.join(timeout=5)
            self._receiver = None

    def call(self, op: str, *args: Any, timeout_s: float | None = None, full: bool = False) -> Any:
        """Send a request and wait for its result, raising :class:`NodeError` on failure."""
        fut: Future = Future()

        def done(status: str, t0: int, t1: int, payload: Any, received: int) -> None:
            if status == "ok":
                fut.set_result(payload)
            else:
                fut.set_exception(NodeError(f"storage node failed {op!r}:\n{payload}"))

        self.submit(op, args, done, full=full)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not fut.done():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"storage node did not answer {op!r} within {timeout_s} s")
            if self._receiver is None:
                self.poll(0.1)
            else:
                time.sleep(0.001)
            if not fut.done() and self.process is not None and not self.process.is_alive():
                self.poll(0.0)
                if not fut.done():
                    self._fail_all(f"storage node died (exit code {self.process.exitcode}) during {op!r}")
        return fut.result()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self, timeout_s: float = 120.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass
        if self.process is None:  # attached: the node belongs to whoever started it
            return
        self._pipe.close()  # the node's cue to close its store and exit
        self.process.join(timeout=timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)
        if self._sock_dir:
            try:
                os.unlink(os.path.join(self._sock_dir, "node.sock"))
            except FileNotFoundError:
                pass
            os.rmdir(self._sock_dir)

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
