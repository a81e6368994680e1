"""Speed targets that hold on any machine: each is checked on a ratio to a reference measured in
the same run, and a shortfall is reported in the session summary instead of failing the run.

A kernel's absolute speed moves with the hardware and with whatever else the machine is doing; its
speed relative to NumPy doing the simplest comparable work (a ``memcpy`` of the decoded bytes, or
``np.frombuffer`` + ``np.cumsum`` over the same number of values), measured a moment earlier in the
same process, moves far less. ``perf.check`` records the absolute figure, the reference and the
ratio in the benchmark's ``extra_info`` and the summary prints every target met or missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest


def best_seconds(fn: Callable[[], object], rounds: int = 7, min_time_s: float = 0.02) -> float:
    """Fastest time of one call, over ``rounds`` timed loops of at least ``min_time_s`` each."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 >= min_time_s:
            break
        n *= 2
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def memcpy_bytes_per_s(nbytes: int) -> float:
    src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    return nbytes / best_seconds(lambda: np.copyto(dst, src))


def cumsum_values_per_s(count: int) -> float:
    """int64 values per second through ``np.frombuffer`` + ``np.cumsum`` (a prefix-sum decode's floor)."""
    raw = np.random.default_rng(0).integers(0, 1000, count, dtype=np.int64).tobytes()
    return count / best_seconds(lambda: np.cumsum(np.frombuffer(raw, np.int64, count)))


@dataclass
class Outcome:
    test: str
    what: str
    value: float
    unit: str
    reference: str
    ratio: float
    target_ratio: float

    @property
    def met(self) -> bool:
        return self.ratio >= self.target_ratio

    def line(self) -> str:
        mark = "met  " if self.met else "SHORT"
        return (f"{mark} {self.what}: {self.value:,.3g} {self.unit} = {self.ratio:.3f} x {self.reference} "
                f"(target {self.target_ratio:.3f} x)  [{self.test}]")


_OUTCOMES: list[Outcome] = []


class Perf:
    def __init__(self, benchmark: object, test: str) -> None:
        self._benchmark = benchmark
        self._test = test

    def check(self, what: str, value: float, unit: str, reference_value: float, reference: str,
              target_ratio: float) -> None:
        ratio = value / reference_value
        info = self._benchmark.extra_info
        info[f"{what}_{unit}"] = value
        info[f"reference_{reference}"] = reference_value
        info[f"{what}_ratio"] = ratio
        info[f"{what}_target_ratio"] = target_ratio
        _OUTCOMES.append(Outcome(self._test, what, value, unit, reference, ratio, target_ratio))


@pytest.fixture
def perf(benchmark: object, request: pytest.FixtureRequest) -> Perf:
    return Perf(benchmark, request.node.name)


def pytest_terminal_summary(terminalreporter: object) -> None:
    if not _OUTCOMES:
        return
    short = [o for o in _OUTCOMES if not o.met]
    terminalreporter.section(f"speed targets: {len(_OUTCOMES) - len(short)} met, {len(short)} short")
    for o in _OUTCOMES:
        terminalreporter.write_line(o.line())
