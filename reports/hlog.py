"""Read HdrHistogram interval logs (``*.hlog``) into percentile curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

# tail points that make an HDR-style plot: 0%, 50%, 90%, 99%, ... spaced evenly in log(1 / (1 - p))
# (plus the usual named percentiles, so hovering shows exact p50/p99/p99.9 values)
CURVE_PERCENTILES: tuple[float, ...] = tuple(sorted(
    {round(100 * (1 - 10 ** (-k / 10)), 6) for k in range(0, 51)} | {50.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0}
))


@dataclass
class PercentileCurve:
    label: str
    percentiles: list[float]
    values_ms: list[float]
    count: int


def read_hlog(path: Path) -> HdrHistogram | None:
    """All intervals of one log added together; None if it holds no interval."""
    reference = HdrHistogram(1, 3_600_000_000_000, 3)
    total = HdrHistogram(1, 3_600_000_000_000, 3)
    reader = HistogramLogReader(str(path), reference)
    try:
        while True:
            h = reader.get_next_interval_histogram()
            if h is None:
                break
            total.add(h)
    finally:
        reader.close()
    return total if total.get_total_count() else None


def curve_from_hlog(path: Path, label: str, unit_ms: float = 1e-3) -> PercentileCurve | None:
    """``unit_ms`` converts recorded values to milliseconds (default: values are microseconds)."""
    h = read_hlog(path)
    if h is None:
        return None
    pcts = list(CURVE_PERCENTILES)
    values = [h.get_value_at_percentile(p) * unit_ms for p in pcts]
    return PercentileCurve(label, pcts, values, h.get_total_count())
