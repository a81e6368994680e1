"""Users partitioned over K shards by a stable hash, and a prepared workload split the same way.

The hash is SplitMix64's finaliser of the user id, modulo K: the same user lands on the same shard
on every machine, in every run and in every process (Python's ``hash`` is salted per process). A
live append that carries events of several users is split into one append per shard, all at the
op's intended start.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np

from storagebench.experiments.run import PreparedWorkload
from storagebench.replay import OP_NAMES, Schedule

_APPEND = OP_NAMES.index("append")


def stable_hash(user_ids: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser of each id (uint64): well mixed, the same everywhere."""
    z = np.asarray(user_ids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shard_of(user_ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard (0..shards-1) of each user id."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return (stable_hash(user_ids) % np.uint64(shards)).astype(np.int64)


def split_schedule(schedule: Schedule, shards: int, warmup_ns: int) -> list[Schedule]:
    """Each shard's ops, in the original order and at their original intended starts."""
    kinds: list[list[int]] = [[] for _ in range(shards)]
    offsets: list[list[int]] = [[] for _ in range(shards)]
    args: list[list[tuple]] = [[] for _ in range(shards)]
    appended: list[list[int]] = [[] for _ in range(shards)]
    origin: list[list[int]] = [[] for _ in range(shards)]
    for op, (kind, off, a) in enumerate(zip(schedule.kinds.tolist(), schedule.offsets_ns.tolist(), schedule.args,
                                            strict=True)):
        uids = a[0]
        owner = shard_of(uids, shards)
        if kind != _APPEND or len(uids) == 0 or (owner == owner[0]).all():
            targets = [(int(owner[0]) if len(owner) else 0, a)]
        else:
            targets = []
            for s in np.unique(owner).tolist():
                sel = owner == s
                targets.append((s, (uids[sel], {k: v[sel] for k, v in a[1].items()})))
        for s, sub in targets:
            kinds[s].append(kind)
            offsets[s].append(off)
            args[s].append(sub)
            appended[s].append(len(sub[0]) if kind == _APPEND else 0)
            origin[s].append(op)
    out = []
    for s in range(shards):
        offs = np.array(offsets[s], dtype=np.int64)
        out.append(Schedule(np.array(kinds[s], dtype=np.uint8), offs, args[s],
                            int(np.searchsorted(offs, warmup_ns, side="left")),
                            np.array(appended[s], dtype=np.int64), np.array(origin[s], dtype=np.int64)))
    return out


def split_prepared(prepared: PreparedWorkload, shards: int, warmup_s: float) -> list[PreparedWorkload]:
    """The prepared workload of each shard: its ops, its cross-check users and its stored events."""
    schedules = split_schedule(prepared.schedule, shards, int(warmup_s * 1e9))
    user_shard = shard_of(prepared.user_ids, shards)
    check_shard = shard_of(prepared.crosscheck_users, shards)
    read_k = OP_NAMES.index("read")
    out = []
    for s, sched in enumerate(schedules):
        mine = user_shard == s
        m0 = sched.measured_from
        if m0 >= len(sched):
            raise ValueError(f"shard {s} of {shards} gets no operation inside the measured window (its users are "
                             f"{int(mine.sum())} of {len(prepared.user_ids)}): use fewer shards, more users or a "
                             f"longer window")
        info = {**prepared.schedule_info, "ops": len(sched), "warmup_ops": m0, "measured_ops": len(sched) - m0,
                "measured_reads": int((sched.kinds[m0:] == read_k).sum()),
                "measured_appends": int((sched.kinds[m0:] == _APPEND).sum()),
                "measured_appended_events": int(sched.appended_events[m0:].sum()),
                "window_s": sched.window_s, "users": int(mine.sum()), "shard": s, "shards": shards}
        out.append(replace(prepared, schedule=sched, crosscheck_users=prepared.crosscheck_users[check_shard == s],
                           stored_events=int(prepared.user_stored[mine].sum()),
                           backfill_events=int(prepared.user_backfill[mine].sum()), schedule_info=info,
                           user_ids=prepared.user_ids[mine], user_backfill=prepared.user_backfill[mine],
                           user_stored=prepared.user_stored[mine]))
    return out


def split_chunks(chunks: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]], shards: int
                 ) -> Iterator[list[tuple[np.ndarray, dict[str, np.ndarray]]]]:
    """Each backfill chunk as one part per shard (a part may be empty), order within a user kept."""
    for uids, cols in chunks:
        owner = shard_of(uids, shards)
        yield [(uids[owner == s], {k: v[owner == s] for k, v in cols.items()}) for s in range(shards)]


def merge_samples(users: np.ndarray, parts: list[tuple[np.ndarray, tuple[np.ndarray, dict[str, np.ndarray]]]]
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The cross-check sample of ``users`` (sorted) from each shard's (its users, its sample): the same
    CSR layout a single node returns for the same users."""
    got_users = np.concatenate([u for u, _ in parts]) if parts else np.zeros(0, np.uint64)
    if not np.array_equal(np.sort(got_users), np.asarray(users, dtype=got_users.dtype)):
        raise ValueError("the shards' cross-check users are not the users asked for")
    starts, lens, col_parts, base = [], [], [], 0
    for _, (offsets, cols) in parts:
        starts.append(offsets[:-1] + base)
        lens.append(np.diff(offsets))
        col_parts.append(cols)
        base += int(offsets[-1])
    start, length = np.concatenate(starts), np.concatenate(lens)
    order = np.argsort(got_users, kind="stable")
    idx = np.concatenate([np.arange(start[j], start[j] + length[j]) for j in order] or [np.zeros(0, np.int64)])
    offsets = np.concatenate([[0], np.cumsum(length[order])]).astype(np.int64)
    cols = {k: np.concatenate([c[k] for c in col_parts])[idx] for k in col_parts[0]}
    return offsets, cols
