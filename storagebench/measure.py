"""What the harness measures, read from the OS and from HdrHistograms.

- CPU: user + system seconds of the storage-node process, all threads (RocksDB's compaction threads
  and SeqVault's merge included), plus the helper processes its store runs (a Redis server the
  binding started, with the AOF-rewrite children it reaped), from ``psutil``. The helpers are named
  by the store (``Store.helper_pids``), so sampling never scans every process on the machine.
- I/O: ``/proc/<pid>/io`` (``read_bytes``/``write_bytes`` are what reached the block device;
  ``rchar``/``wchar`` include page-cache hits).
- Latency: HdrHistograms in microseconds, 1 µs to 1 h at 3 significant digits.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

import numpy as np
import psutil
from hdrh.histogram import HdrHistogram

HIST_MIN_US, HIST_MAX_US, HIST_DIGITS = 1, 3_600_000_000, 3
PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_MIN_US, HIST_MAX_US, HIST_DIGITS)


def histogram_of(values_us: np.ndarray) -> HdrHistogram:
    """A histogram holding ``values_us`` (microseconds, each >= 1)."""
    hist = new_histogram()
    for v in values_us:
        hist.record_value(int(v))
    return hist


def encode_histogram(hist: HdrHistogram) -> str:
    """A histogram as text (HdrHistogram's compressed, base64 encoding) for a result file."""
    return hist.encode().decode("ascii")


def merge_histograms(encoded: Sequence[str]) -> HdrHistogram:
    """The sum of encoded histograms: every recorded value of each (percentiles of a cluster come
    from this, never from averaging the shards' percentiles)."""
    total = new_histogram()
    for text in encoded:
        total.add(HdrHistogram.decode(text.encode("ascii")))
    return total


def latency_summary(hist: HdrHistogram) -> dict[str, float]:
    """Percentiles, max and mean in milliseconds, plus the count."""
    n = hist.get_total_count()
    out: dict[str, float] = {k: (hist.get_value_at_percentile(p) / 1e3 if n else 0.0) for k, p in PERCENTILES.items()}
    out["max_ms"] = hist.get_max_value() / 1e3 if n else 0.0
    out["mean_ms"] = hist.get_mean_value() / 1e3 if n else 0.0
    out["count"] = int(n)
    return out


def read_proc_io(pid: int) -> dict[str, int]:
    """The counters of ``/proc/<pid>/io`` (zeros where the kernel does not expose them)."""
    keys = ("rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes")
    try:
        with open(f"/proc/{pid}/io") as f:
            raw = dict(line.split(":", 1) for line in f if ":" in line)
        return {k: int(raw.get(k, "0").strip()) for k in keys}
    except OSError:
        return dict.fromkeys(keys, 0)


@dataclass
class ProcessSnapshot:
    """CPU seconds and I/O counters of one process at one instant."""

    wall_s: float
    cpu_user_s: float
    cpu_system_s: float
    io: dict[str, int]

    @classmethod
    def take(cls, pids: int | Sequence[int]) -> ProcessSnapshot:
        """One process, or several together (a node and the server its store runs), each with the
        children it has reaped."""
        user = system = 0.0
        io: dict[str, int] = {}
        pids = [pids] if isinstance(pids, int) else list(pids)
        for pid in pids:
            try:
                cpu = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:  # a helper that already exited: nothing more to count
                if pid == pids[0]:
                    raise  # but a dead node is an error, never a zero
                continue
            user += cpu.user + cpu.children_user
            system += cpu.system + cpu.children_system
            for k, v in read_proc_io(pid).items():
                io[k] = io.get(k, 0) + v
        return cls(time.monotonic(), user, system, io)

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_system_s

    def delta(self, later: ProcessSnapshot) -> dict[str, Any]:
        return {
            "wall_s": later.wall_s - self.wall_s,
            "cpu_user_s": later.cpu_user_s - self.cpu_user_s,
            "cpu_system_s": later.cpu_system_s - self.cpu_system_s,
            "cpu_s": later.cpu_s - self.cpu_s,
            "io": {k: later.io[k] - self.io.get(k, 0) for k in later.io},
        }


@dataclass
class CpuSampler:
    """Samples CPU usage of the node (and of the load generator) once per ``interval_s`` in a thread,
    and the bytes under ``disk_dir`` if given.

    ``series`` rows are ``[t_s, node_cpu_pct, generator_cpu_pct]`` (+ ``disk_bytes``) where 100 % is
    one core; the node's figure includes its store's helper processes (``node_pids``).
    """

    node_pids: int | Sequence[int]
    interval_s: float = 1.0
    disk_dir: str | None = None
    series: list[list[float]] = field(default_factory=list)
    generator_pid: int | None = field(default_factory=os.getpid)  # None: the generator runs elsewhere

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-sampler")

    def start(self) -> CpuSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        pids = [self.node_pids] if isinstance(self.node_pids, int) else list(self.node_pids)
        node = [psutil.Process(p) for p in pids]
        gen = psutil.Process(self.generator_pid) if self.generator_pid is not None else None

        def gen_cpu() -> float:
            return _cpu(gen, reaped=False) if gen is not None else 0.0

        last_t, last_node, last_gen = time.monotonic(), _cpu(*node), gen_cpu()
        while not self._stop.wait(self.interval_s):
            try:
                t, n, g = time.monotonic(), _cpu(*node), gen_cpu()
            except psutil.Error:
                return
            dt = max(t - last_t, 1e-9)
            gen_pct = round(100 * (g - last_gen) / dt, 2) if gen is not None else None
            row: list[Any] = [round(t - self._t0, 3), round(100 * (n - last_node) / dt, 2), gen_pct]
            if self.disk_dir is not None:
                row.append(dir_bytes(self.disk_dir))
            self.series.append(row)
            last_t, last_node, last_gen = t, n, g

    def stop(self) -> list[list[float]]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.series


class NodeMeter(Protocol):
    """Measures the node over the replay's window: opened when the window opens (inside the dispatch
    loop, so it must not block), closed after the last reply."""

    def open_window(self) -> None: ...

    def close_window(self) -> tuple[dict[str, Any], list[list[Any]]]:
        """(the window's :meth:`ProcessSnapshot.delta`, the sampler's series)."""
        ...


class LocalMeter:
    """A node on this machine: its processes' CPU and /proc I/O, and the bytes of its directory.
    ``generator_here``: the load generator is this process (its CPU goes into the series too);
    False for a meter run beside a node whose generator is elsewhere (the column is None)."""

    def __init__(self, pids: Sequence[int], disk_dir: str | None = None, *, generator_here: bool = True) -> None:
        self.pids, self.disk_dir, self.generator_here = list(pids), disk_dir, generator_here
        self._snap: ProcessSnapshot | None = None
        self._sampler: CpuSampler | None = None

    def open_window(self) -> None:
        self._snap = ProcessSnapshot.take(self.pids)
        self._sampler = CpuSampler(self.pids, disk_dir=self.disk_dir,
                                   generator_pid=os.getpid() if self.generator_here else None).start()

    def close_window(self) -> tuple[dict[str, Any], list[list[Any]]]:
        if self._snap is None or self._sampler is None:
            raise RuntimeError("close_window() before open_window()")
        end = ProcessSnapshot.take(self.pids)
        return self._snap.delta(end), self._sampler.stop()


def dir_bytes(path: str) -> int:
    """Bytes of every file under ``path`` (files deleted while walking are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def time_weighted_mean(series: list[list[float]]) -> float | None:
    """Mean of ``[[t, value], ...]`` weighted by time (trapezoids); None for no samples."""
    if not series:
        return None
    if len(series) == 1:
        return float(series[0][1])
    t = np.array([r[0] for r in series], dtype=np.float64)
    v = np.array([r[1] for r in series], dtype=np.float64)
    span = t[-1] - t[0]
    return float(np.trapezoid(v, t) / span) if span > 0 else float(v.mean())


def _cpu(*procs: psutil.Process, reaped: bool = True) -> float:
    """CPU seconds of ``procs`` together, with ``reaped`` also of the children they have reaped."""
    total = 0.0
    for p in procs:
        try:
            c = p.cpu_times()
        except psutil.NoSuchProcess:
            if p is procs[0]:
                raise
            continue
        total += c.user + c.system + ((c.children_user + c.children_system) if reaped else 0.0)
    return total


def cores_for_target(cpu_s_per_op: float, target_qps: float, target_utilisation: float) -> float:
    """Cores a fleet needs to serve ``target_qps`` at ``target_utilisation`` given CPU cost per op."""
    if not 0 < target_utilisation <= 1:
        raise ValueError(f"target utilisation must be in (0, 1], got {target_utilisation}")
    return cpu_s_per_op * target_qps / target_utilisation


def filesystem_of(path: str) -> dict[str, str]:
    """The mount point, device and type of the filesystem holding ``path``."""
    path = os.path.realpath(path)
    best = {"mount": "/", "device": "?", "type": "?"}
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best["mount"]):
            best = {"mount": mp, "device": part.device, "type": part.fstype}
    return best


def o_direct_supported(directory: str) -> bool:
    """Whether files in ``directory`` can be opened with O_DIRECT (tmpfs and some overlays refuse)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, ".o_direct_probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        import mmap

        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT requires
        os.write(fd, buf)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(probe)


def machine_info(store_dir: str) -> dict[str, Any]:
    """CPU, memory, kernel, Python, package versions and the filesystem of the store directory."""
    cpu_model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for pkg in ("numpy", "numba", "rocksdict", "hdrhistogram", "psutil", "storagebench"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "cpu_model": cpu_model,
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "store_filesystem": filesystem_of(store_dir),
        "load_average": list(os.getloadavg()),
    }
