"""Helpers every binding shares: grouping a batch by user and keeping each user's newest events."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from seqvault.schema import Schema


def split_by_user(user_ids: np.ndarray, columns: Mapping[str, np.ndarray]
                  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield (user, that user's events in batch order) for each distinct user of a batch."""
    uids = np.asarray(user_ids, dtype=np.uint64)
    if len(uids) == 0:
        return
    order = np.argsort(uids, kind="stable")  # stable: a user's events keep their batch order
    sorted_uids = uids[order]
    starts = np.flatnonzero(np.r_[True, sorted_uids[1:] != sorted_uids[:-1]])
    ends = np.r_[starts[1:], len(uids)]
    sorted_cols = {k: np.asarray(v)[order] for k, v in columns.items()}
    for s, e in zip(starts, ends, strict=True):
        yield int(sorted_uids[s]), {k: v[s:e] for k, v in sorted_cols.items()}


def merge_newest(old: Mapping[str, np.ndarray] | None, new: Mapping[str, np.ndarray],
                 schema: Schema, max_len: int) -> dict[str, np.ndarray]:
    """Old events then new, ordered by time (ties keep that order), truncated to the newest max_len."""
    if old is None or len(old[schema.time_field]) == 0:
        cols = {k: np.asarray(new[k]) for k in schema.names}
    else:
        cols = {k: np.concatenate([old[k], np.asarray(new[k], dtype=old[k].dtype)]) for k in schema.names}
    t = cols[schema.time_field]
    if len(t) > 1 and np.any(t[1:] < t[:-1]):
        order = np.argsort(t, kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
    if len(t) > max_len:
        cols = {k: v[-max_len:] for k, v in cols.items()}
    return cols


def pack_csr(per_user: list[Mapping[str, np.ndarray] | None], schema: Schema, last_n: int
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-user columns (None for an unknown user) -> (offsets, packed columns) of the newest last_n."""
    offsets = np.zeros(len(per_user) + 1, dtype=np.int64)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in schema.names}
    for i, cols in enumerate(per_user):
        n = 0
        if cols is not None:
            n = min(len(cols[schema.time_field]), last_n)
            if n:
                for k in schema.names:
                    parts[k].append(cols[k][-n:])
        offsets[i + 1] = offsets[i] + n
    packed = {
        k: np.concatenate(v).astype(schema.dtype(k), copy=False) if v else np.empty(0, schema.dtype(k))
        for k, v in parts.items()
    }
    return offsets, packed


def split_values(buf: np.ndarray, starts: np.ndarray) -> list[bytes]:
    """One buffer of values back to back (value i at starts[i]:starts[i+1]) -> one bytes per value."""
    data = buf.tobytes()
    return [data[starts[i]:starts[i + 1]] for i in range(len(starts) - 1)]
