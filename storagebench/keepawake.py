"""Keep a CPU's vCPU awake between requests without taking time from real work.

On a VM an idle vCPU halts, and waking it for the next request adds about 2 ms at p99: more than
the stores' whole difference. A ``SCHED_IDLE`` busy loop pinned to the node's CPU keeps it running
and yields at once to any normal task (the node), so it only fills time the CPU would have spent
halted. It is its own process: never counted in a store's CPU, and the result file says it ran.
It dies with its parent (``PR_SET_PDEATHSIG``), so it cannot outlive the harness.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

_SPIN = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the harness
if os.getppid() != int(sys.argv[2]):
    sys.exit(0)
os.sched_setaffinity(0, [int(sys.argv[1])])
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while True:
    pass
"""


class KeepAwake:
    """``with KeepAwake([1]):`` runs one SCHED_IDLE spinner per listed CPU for the block's duration."""

    def __init__(self, cpus: list[int] | None) -> None:
        self.cpus = list(cpus or [])
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> KeepAwake:
        import os

        for cpu in self.cpus:
            self._procs.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(cpu), str(os.getpid())],
                                                stdin=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait(timeout=10)
        self._procs = []

    def describe(self) -> dict[str, Any]:
        """What goes into the result file."""
        return {"enabled": bool(self.cpus), "cpus": self.cpus, "policy": "SCHED_IDLE busy loop, own process",
                "counted_in_store_cpu": False}
