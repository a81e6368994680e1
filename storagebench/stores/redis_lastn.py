"""Redis LastN: the store most LastN services run on, one Redis list per user.

Each user is a list with one entry per event, as schema-unaware decimal text (``"17,3,1700000000"``,
the RocksDB LastN format of one event; see :mod:`storagebench.stores.text_codec`). An append is one
server-side script per batch that, for each user, ``RPUSH``-es the new entries and ``LTRIM``-s the
list to the newest N; a read is one pipeline of ``LRANGE key -n -1``. The client is ``redis`` with the
``hiredis`` parser.

Why a script and not a bare ``RPUSH`` pipeline: a list keeps the newest entries *by arrival*, and the
contract every store keeps (newest by time, ties in arrival order) differs when a user's events
arrive late (a quarter of the user batches of the generated live stream carry an event older than
the user's newest). The script checks each list's tail timestamp first: when the new events are not
older it is exactly ``RPUSH`` + ``LTRIM``; otherwise it takes the tail entries newer than the oldest
new event off the list, merges them with the new events by time and pushes the merge back, all in
the server and atomically (``stats()['late_users']``, ``['entries_moved']``).

The server is Debian's ``redis-server``, started by the binding in the store directory on a Unix
socket (and no TCP port), with the AOF on and ``appendfsync everysec``: an acknowledged write is on
disk within about two seconds. That is a little *more* durable than the RocksDB stores' unsynced WAL
and SeqVault's ``sync=False``, which leave unsynced writes to the kernel's writeback; the extra
fsync work is Redis's and is charged to it. Its whole configuration (``CONFIG GET *``) goes into the
result file. It runs as a child of the process that opens the store (the storage node), inherits
its CPU pinning, and dies with it (``PR_SET_PDEATHSIG``, which fires when the *thread* that opened
the store exits: open it from a thread that lives as long as the store, as the node's main thread does).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import redis

from seqvault.schema import Schema
from storagebench.stores.base import Store, StoreError, empty_result, register_store
from storagebench.stores.sequences import split_values
from storagebench.stores.text_codec import decode_text_many, encode_text_many

_LUA_UNPACK = 4000    # values per RPUSH inside the script (Lua 5.1's C stack holds 8000)
_SCRIPT_ARGS = 50_000  # script arguments per call, so one call does not block the server for long

# KEYS: one per user. ARGV: N, the time field's position in an entry, then per user: c, its c new
# entries oldest first, their c timestamps. Returns {users with late events, entries moved}.
# In order (the new events are not older than the list's tail): RPUSH + LTRIM. Late: take the tail
# entries newer than the oldest new event off the list, merge them with the new ones by time (ties:
# the stored entry first, as it arrived first), push the merge back, LTRIM.
_APPEND_SCRIPT = """
local function cmp(a, b)  -- decimal integers as written by the text codec (no leading zeros)
  local na, nb = a:byte(1) == 45, b:byte(1) == 45
  if na ~= nb then return na and -1 or 1 end
  local r
  if #a ~= #b then r = (#a < #b) and -1 or 1
  elseif a == b then return 0
  else r = (a < b) and -1 or 1 end
  if na then r = -r end
  return r
end
local n, tf, p = tonumber(ARGV[1]), tonumber(ARGV[2]), 3
local function ts_of(entry)
  local f = 0
  for v in string.gmatch(entry, '[^,]+') do
    f = f + 1
    if f == tf then return v end
  end
end
local function push(key, t, first, last)  -- returns the list's new length
  local s, len = first, 0
  while s <= last do
    local e = math.min(s + UNPACK - 1, last)
    len = redis.call('RPUSH', key, unpack(t, s, e))
    s = e + 1
  end
  return len
end
local late, moved = 0, 0
for _, key in ipairs(KEYS) do
  local c = tonumber(ARGV[p])
  local e0, t0 = p + 1, p + 1 + c
  p = p + 1 + 2 * c
  local oldest = ARGV[t0]
  local tail, len = redis.call('LINDEX', key, -1), 0
  if tail and cmp(ts_of(tail), oldest) > 0 then
    late = late + 1
    len = redis.call('LLEN', key)
    local k, chunk, times, m = 32, nil, {}, 0
    while true do
      if k > len then k = len end
      chunk, times, m = redis.call('LRANGE', key, -k, -1), {}, 0
      for i = #chunk, 1, -1 do
        local t = ts_of(chunk[i])
        if cmp(t, oldest) > 0 then times[i] = t; m = m + 1 else break end
      end
      if m < #chunk or k == len then break end
      k = k * 4
    end
    if m == len then redis.call('DEL', key) else redis.call('LTRIM', key, 0, -(m + 1)) end
    moved = moved + m
    local out, i, j = {}, #chunk - m + 1, 0
    while i <= #chunk or j < c do
      if j >= c or (i <= #chunk and cmp(times[i], ARGV[t0 + j]) <= 0) then
        out[#out + 1] = chunk[i]; i = i + 1
      else
        out[#out + 1] = ARGV[e0 + j]; j = j + 1
      end
    end
    len = push(key, out, 1, #out)
  else
    len = push(key, ARGV, e0, e0 + c - 1)
  end
  if len > n then redis.call('LTRIM', key, -n, -1) end
end
return {late, moved}
""".replace("UNPACK", str(_LUA_UNPACK))


def redis_server_binary(explicit: str | None = None) -> str:
    """The ``redis-server`` to run: ``explicit``, ``$STORAGEBENCH_REDIS_SERVER``, or the one on PATH."""
    candidates = [explicit, os.environ.get("STORAGEBENCH_REDIS_SERVER"), shutil.which("redis-server"),
                  "/usr/bin/redis-server"]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise StoreError("redis-server is not installed: install Debian's package (apt-get install -y redis-server) "
                     "or set STORAGEBENCH_REDIS_SERVER to its path")


try:  # looked up before any fork: a dlopen between fork and exec can deadlock
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        # A SIGKILLed storage node must not leave its Redis running (PR_SET_PDEATHSIG = 1).
        if _PRCTL is not None:
            _PRCTL(1, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
    return preexec


class RedisServer:
    """One ``redis-server`` process serving one store directory over a Unix socket."""

    def __init__(self, directory: str, *, binary: str | None = None, appendfsync: str = "everysec",
                 start_timeout_s: float = 30.0) -> None:
        self.binary = redis_server_binary(binary)
        self.directory = os.path.abspath(directory)
        # A socket path must fit in 108 bytes: in the store directory when it does, else in /tmp.
        in_dir = os.path.join(self.directory, "redis.sock")
        self._sock_dir = None if len(in_dir) < 100 else tempfile.mkdtemp(prefix="sbredis-")
        self.socket_path = in_dir if self._sock_dir is None else os.path.join(self._sock_dir, "redis.sock")
        self.log_path = os.path.join(self.directory, "redis.log")
        self.settings: dict[str, str] = {
            "port": "0", "bind": "127.0.0.1", "unixsocket": self.socket_path, "unixsocketperm": "700",
            "dir": self.directory, "appendonly": "yes", "appendfsync": appendfsync,
            "appenddirname": "appendonlydir", "aof-use-rdb-preamble": "yes", "save": '""',
            "dbfilename": "dump.rdb", "logfile": self.log_path, "daemonize": "no", "databases": "1",
            "protected-mode": "yes", "io-threads": "1", "maxmemory": "0",
        }
        self.conf_path = os.path.join(self.directory, "redis.conf")
        with open(self.conf_path, "w") as f:
            f.write("".join(f"{k} {v}\n" for k, v in self.settings.items()))
        self.version = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                      check=False).stdout.strip()
        self.process = subprocess.Popen([self.binary, self.conf_path], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        preexec_fn=_die_with(os.getpid()))
        self.pid = self.process.pid
        try:
            self._wait_ready(start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        probe = redis.Redis(unix_socket_path=self.socket_path, socket_connect_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    raise StoreError(f"redis-server exited with status {self.process.returncode} while starting "
                                     f"in {self.directory}: {self.log_tail()}")
                try:
                    # Ready means the data set (the AOF, on a reopen) is loaded: PING answers LOADING until then.
                    if probe.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    raise StoreError(f"redis-server did not answer within {timeout_s:.0f} s in {self.directory}: "
                                     f"{self.log_tail()}")
                time.sleep(0.02)
        finally:
            probe.close()

    def log_tail(self) -> str:
        """The last lines of the server's log (and of its stderr once it exited), for error messages."""
        lines: list[str] = []
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().splitlines()[-5:]
        except OSError:
            pass
        if self.process.poll() is not None and self.process.stderr is not None:
            lines += self.process.stderr.read().decode(errors="replace").splitlines()[-5:]
        return " | ".join(lines) or f"no log at {self.log_path}"

    def stop(self, client: redis.Redis | None = None, timeout_s: float = 60.0) -> None:
        """Shut down cleanly (the AOF is fsynced on SHUTDOWN), else SIGTERM, else SIGKILL."""
        if self.process.poll() is None and client is not None:
            try:
                client.shutdown()
            except redis.RedisError:
                pass
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.process.poll() is None:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s if sig is None and client is not None else 10.0)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.process.stderr is not None:
            self.process.stderr.close()
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
        elif os.path.exists(self.socket_path):
            os.unlink(self.socket_path)


@register_store
class RedisLastNStore(Store):
    """Per user, one Redis list of the newest N events as text entries."""

    name = "redis_lastn"
    thread_safe = True
    supports_direct_io = False  # the data set lives in DRAM; the AOF goes through the page cache

    def __init__(self, path: str, schema: Schema, *, appendfsync: str = "everysec",
                 redis_server: str | None = None, **kw: Any) -> None:
        if appendfsync not in ("everysec", "always", "no"):
            raise StoreError(f"appendfsync {appendfsync!r} is not one of everysec, always, no")
        super().__init__(path, schema, appendfsync=appendfsync, **kw)
        self.direct_io = False
        os.makedirs(self.path, exist_ok=True)
        self._time_pos = schema.names.index(schema.time_field) + 1  # 1-based, as the script counts
        self.server = RedisServer(self.path, binary=redis_server, appendfsync=appendfsync)
        self._pool = redis.ConnectionPool(connection_class=redis.UnixDomainSocketConnection,
                                          path=self.server.socket_path)
        self._r = redis.Redis(connection_pool=self._pool)
        self._append = self._r.register_script(_APPEND_SCRIPT)
        self._closed = False
        self.events_appended = 0
        self.late_users = 0      # user batches with an event older than the list's tail
        self.entries_moved = 0   # stored entries taken off and pushed back to put late events in place

    @staticmethod
    def key(uid: int) -> bytes:
        return int(uid).to_bytes(8, "big")

    # -- the contract ---------------------------------------------------------------------------
    def append(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        user_ids, columns = self.schema.validate(user_ids, columns)
        if len(user_ids) == 0:
            return
        # By user, then time; stable, so equal timestamps keep their batch order.
        order = np.lexsort((columns[self.schema.time_field], user_ids))
        uids = user_ids[order]
        cols = {k: columns[k][order] for k in self.schema.names}
        starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
        ends = np.r_[starts[1:], len(uids)]
        starts = np.maximum(starts, ends - self.max_len)  # more than N new events: only the newest N matter
        entries = self._entries(cols)
        times = [str(t) for t in cols[self.schema.time_field].tolist()]
        keys: list[bytes] = []
        args: list[Any] = []
        bounds = list(zip(uids[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))
        for j, (uid, s, e) in enumerate(bounds):
            keys.append(self.key(uid))
            args += [e - s, *entries[s:e], *times[s:e]]
            if len(args) >= _SCRIPT_ARGS or j == len(bounds) - 1:
                late, moved = self._append(keys=keys, args=[self.max_len, self._time_pos, *args])
                self.late_users += int(late)
                self.entries_moved += int(moved)
                keys, args = [], []
        self.events_appended += len(user_ids)

    def _entries(self, cols: Mapping[str, np.ndarray]) -> list[bytes]:
        """One text entry per event (each event its own value)."""
        n = len(cols[self.schema.time_field])
        return split_values(*encode_text_many(np.arange(n + 1, dtype=np.int64), cols, self.schema))

    def get_many(self, user_ids: np.ndarray, last_n: int | None = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        keep = self.keep(last_n)
        uids = np.asarray(user_ids, dtype=np.uint64).tolist()
        if keep == 0 or not uids:
            return empty_result(self.schema, len(uids))
        with self._r.pipeline(transaction=False) as pipe:
            for u in uids:
                pipe.lrange(self.key(u), -keep, -1)
            lists = pipe.execute()
        return decode_text_many([b";".join(v) if v else None for v in lists], self.schema)

    def finish_load(self) -> None:
        # An operator rewrites the AOF once after a bulk load (as RocksDB compacts), so the
        # window starts from a compact AOF rather than millions of RPUSH records.
        self.compact()

    def flush(self) -> None:
        # Redis 7.0 has no command that fsyncs the AOF (WAITAOF came in 7.2): switch to
        # appendfsync always, make one write (its reply comes after the fsync, which covers every
        # earlier write too), and switch back.
        mode = self.server.settings["appendfsync"]
        if mode == "always":
            return
        self._r.config_set("appendfsync", "always")
        try:
            with self._r.pipeline(transaction=False) as pipe:
                pipe.set(b"storagebench:flush", b"1")
                pipe.delete(b"storagebench:flush")
                pipe.execute()
        finally:
            self._r.config_set("appendfsync", mode)

    def compact(self) -> dict[str, int]:
        """Rewrite the AOF (Redis's compaction: a fork writes the data set as an RDB base file)."""
        try:
            self._r.bgrewriteaof()
        except redis.ResponseError as e:  # one already running or scheduled: wait for it instead
            if "already" not in str(e):
                raise
        deadline = time.monotonic() + 600.0
        while time.monotonic() < deadline:
            info = self._r.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                if info.get("aof_last_bgrewrite_status", "ok") != "ok":
                    raise StoreError(f"redis BGREWRITEAOF failed: {self.server.log_tail()}")
                break
            time.sleep(0.05)
        else:
            raise StoreError("redis BGREWRITEAOF did not finish within 600 s")
        self.flush()
        return self.disk_bytes()

    def disk_files(self) -> dict[str, str]:
        out = {}
        for root, _, files in os.walk(self.path):
            for n in files:
                if n == "redis.sock":  # the server's socket, not data
                    continue
                category = ("aof_base_rdb" if n.endswith(".base.rdb") else "aof_base" if n.endswith(".base.aof")
                            else "aof_incr" if n.endswith(".incr.aof") else "aof_manifest" if n.endswith(".manifest")
                            else "rdb" if n.endswith(".rdb") else "log" if n.endswith(".log")
                            else "config" if n.endswith(".conf") else "other")
                out[os.path.join(root, n)] = category
        return out

    def stats(self) -> dict[str, Any]:
        mem = self._r.info("memory")
        persistence = self._r.info("persistence")
        users = int(self._r.dbsize())
        return {
            "users": users,
            "used_memory": int(mem["used_memory"]),
            "used_memory_rss": int(mem["used_memory_rss"]),
            "used_memory_dataset": int(mem.get("used_memory_dataset", 0)),
            # Every byte Redis holds is DRAM: the data set is the DRAM cost per user.
            "dram_bytes": int(mem["used_memory"]),
            "resident_data_bytes": int(mem["used_memory"]),
            "aof_rewrites": int(persistence.get("aof_rewrites", 0)),
            "aof_current_size": int(persistence.get("aof_current_size", 0)),
            "events_appended": self.events_appended,
            "late_users": self.late_users,
            "entries_moved": self.entries_moved,
            "server_pid": self.server.pid,
        }

    @classmethod
    def preflight(cls) -> None:
        redis_server_binary()  # before a long run, not after the other stores were measured

    def helper_pids(self) -> list[int]:
        return [self.server.pid]

    def config(self) -> dict[str, Any]:
        from redis.utils import HIREDIS_AVAILABLE

        return {**super().config(), "server": self.server.version, "server_binary": self.server.binary,
                "redis_conf": dict(self.server.settings), "client": f"redis-py {redis.__version__}",
                "server_config": {str(k): str(v) for k, v in sorted(self._r.config_get("*").items())},
                "hiredis": bool(HIREDIS_AVAILABLE), "key": "user id, 8 bytes big-endian",
                "value_format": "one list entry per event, decimal text with ',' between fields",
                "append": "one EVALSHA per batch: per user RPUSH + LTRIM; late events (older than the list's "
                          "tail) merged in place by taking the newer tail entries off and pushing the merge back",
                "read": "one pipeline of LRANGE key -n -1", "transport": "unix socket",
                "durability": f"AOF, appendfsync {self.server.settings['appendfsync']} (fsynced by Redis every "
                              f"second; the RocksDB and SeqVault stores leave unsynced writes to the kernel)"}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.server.stop(self._r)
            finally:
                self._pool.disconnect()
