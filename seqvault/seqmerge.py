"""Merging sequences: order events by time (ties in arrival order) and keep each user's newest N.

One vectorised pass serves a single ``get``, a 256-user ``get_many`` and a whole merge job alike:
rows arrive tagged with a group (user) index in arrival order, a stable lexsort orders them by
(group, time), and a rank-from-the-end mask keeps the newest ``keep`` per group. Because the
order (time, arrival) is total and on-disk events always arrived before buffered ones, keeping the
newest N of (newest N on disk + buffer) equals keeping the newest N of everything ever appended.
"""

from __future__ import annotations

import numpy as np


def newest_per_group(
    n_groups: int, groups: np.ndarray, columns: dict[str, np.ndarray], time_field: str, keep: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Group rows, order each group by time (stable), keep its newest ``keep``.

    ``groups`` holds each row's group index in [0, n_groups); rows of a group must be given in
    arrival order. Returns CSR: ``offsets`` (int64, n_groups + 1) and the selected columns.
    """
    if len(groups) == 0:
        return np.zeros(n_groups + 1, np.int64), {k: v[:0] for k, v in columns.items()}
    order = np.lexsort((columns[time_field], groups))
    sorted_groups = groups[order]
    counts = np.bincount(sorted_groups, minlength=n_groups)
    if counts.max() > keep:
        ends = np.cumsum(counts)
        rank_from_end = ends[sorted_groups] - 1 - np.arange(len(order))
        order = order[rank_from_end < keep]
        counts = np.minimum(counts, keep)
    offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, {k: v[order] for k, v in columns.items()}


def csr_concat_groups(
    parts: list[tuple[np.ndarray, dict[str, np.ndarray]]], names: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Concatenate (groups, columns) parts in the given (arrival) order."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.empty(0, np.int64), {}
    groups = np.concatenate([p[0] for p in parts]).astype(np.int64, copy=False)
    return groups, {k: np.concatenate([p[1][k] for p in parts]) for k in names}


def csr_groups(offsets: np.ndarray) -> np.ndarray:
    """The group index of each row of a CSR layout."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def csr_take(offsets: np.ndarray, columns: dict[str, np.ndarray], idx: np.ndarray
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rows of groups ``idx`` (repeats allowed), as a new CSR layout."""
    counts = np.diff(offsets)[idx]
    new_offsets = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    total = int(new_offsets[-1])
    if total == 0:
        return new_offsets, {k: v[:0] for k, v in columns.items()}
    starts = offsets[idx]
    rows = np.arange(total, dtype=np.int64) - np.repeat(new_offsets[:-1] - starts, counts)
    return new_offsets, {k: v[rows] for k, v in columns.items()}


def overlay_buffered(
    n_groups: int, base_offsets: np.ndarray, base: dict[str, np.ndarray],
    extra_groups: np.ndarray, extra: dict[str, np.ndarray], time_field: str, keep: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``newest_per_group`` of base + extra rows, re-sorting only the groups that have extra rows.

    ``base`` is CSR over all groups, each already time-ordered and at most ``keep`` long (decoded
    records); ``extra`` rows (buffered events, arrival order within a group) arrived after them.
    Untouched groups are copied through, so a read touching a few buffered users costs a gather,
    not a sort of everything.
    """
    touched = np.unique(extra_groups)
    counts = np.diff(base_offsets)
    starts = base_offsets[:-1]
    t_counts = counts[touched]
    sub_rows = _ranges(starts[touched], t_counts)
    sub_base = {k: v[sub_rows] for k, v in base.items()}
    local = np.concatenate([np.repeat(np.arange(len(touched), dtype=np.int64), t_counts),
                            np.searchsorted(touched, extra_groups)])
    merged_offsets, merged = newest_per_group(
        len(touched), local, {k: np.concatenate([sub_base[k], extra[k]]) for k in base}, time_field, keep)
    out_counts = counts.copy()
    out_counts[touched] = np.diff(merged_offsets)
    src_starts = starts.copy()
    src_starts[touched] = int(base_offsets[-1]) + merged_offsets[:-1]
    rows = _ranges(src_starts, out_counts)
    offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(out_counts, out=offsets[1:])
    return offsets, {k: np.concatenate([base[k], merged[k]])[rows] for k in base}


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64)
    nz = counts > 0
    s, c = starts[nz].astype(np.int64), counts[nz].astype(np.int64)
    ends = np.cumsum(c)
    out = np.ones(total, np.int64)
    out[0] = s[0]
    # At each run start, jump from the previous run's last value to this run's start.
    out[(ends - c)[1:]] = s[1:] - (s[:-1] + c[:-1] - 1)
    return np.cumsum(out)
