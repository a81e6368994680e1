"""The cross-check: every store must return exactly the same sequences for the same users."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Sample = tuple[np.ndarray, dict[str, np.ndarray]]


class CrossCheckError(AssertionError):
    """Two stores returned different sequences; the message names the first difference."""


def compare_samples(user_ids: np.ndarray, samples: Mapping[str, Sample]) -> dict[str, object]:
    """Compare every store's answer for ``user_ids`` with the first store's; raise on any difference."""
    names = list(samples)
    if len(names) < 2:
        return {"users": len(user_ids), "stores": names, "events": 0, "identical": True}
    ref_name = names[0]
    ref_off, ref_cols = samples[ref_name]
    for name in names[1:]:
        off, cols = samples[name]
        if len(off) != len(ref_off) or not np.array_equal(off, ref_off):
            counts_ref, counts = np.diff(ref_off), np.diff(off)
            i = int(np.argmax(counts_ref != counts)) if len(off) == len(ref_off) else 0
            raise CrossCheckError(
                f"cross-check failed: {name} returned {counts[i] if i < len(counts) else '?'} events for user "
                f"{int(user_ids[i])} but {ref_name} returned {counts_ref[i]}. The stores disagree on what was "
                f"stored; the run's figures are not comparable. Re-run with the same workload to reproduce.")
        for field, ref_col in ref_cols.items():
            col = cols.get(field)
            if col is None or col.dtype != ref_col.dtype or not np.array_equal(col, ref_col):
                if col is None or col.dtype != ref_col.dtype:
                    raise CrossCheckError(f"cross-check failed: {name} returned field {field!r} as "
                                          f"{None if col is None else col.dtype}, {ref_name} as {ref_col.dtype}")
                pos = int(np.argmax(col != ref_col))
                user_index = int(np.searchsorted(ref_off, pos, side="right") - 1)
                raise CrossCheckError(
                    f"cross-check failed: user {int(user_ids[user_index])}, event {pos - int(ref_off[user_index])} "
                    f"(oldest = 0), field {field!r}: {name} has {col[pos]}, {ref_name} has {ref_col[pos]}")
    return {"users": len(user_ids), "stores": names, "events": int(ref_off[-1]), "identical": True}
