"""Background jobs: the sequence-level merge, bulk loads and space reclamation.

Each job runs under the store's job lock and works through :class:`seqvault.state.StoreState`'s
narrow interface: it writes new records through a :class:`~seqvault.state.JobOutput`, fsyncs
them, and hands one :class:`~seqvault.state.Change` to the committer, which makes it durable
before readers see it. A job that fails anywhere before its commit leaves no trace; a crash at
any point leaves the last commit.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from seqvault.buffer import _Batch, _fold, _Sorted
from seqvault.codec import encode_records
from seqvault.datafile import DataFile
from seqvault.errors import CorruptionError
from seqvault.killpoints import kill_point
from seqvault.records import entry_problem, trailing_checksums
from seqvault.seqmerge import csr_concat_groups, csr_groups, newest_per_group
from seqvault.state import Change, JobOutput, StoreState

_CHUNK_EVENTS = 1 << 21  # bounds a job's working memory: events merged per encode call


def merge(state: StoreState, checkpoint: bool = False) -> int:
    """Fold the buffered events into new records; returns users merged.

    ``checkpoint`` commits past every WAL segment even when nothing is buffered (salvage needs
    the damaged segments covered and gone).
    """
    with state.job_lock:
        merged = 0
        if state.frozen is not None:  # an earlier merge failed after the swap: finish that one first
            merged += _merge_frozen(state)
        return merged + _merge_frozen(state, checkpoint)


def _merge_frozen(state: StoreState, checkpoint: bool = False) -> int:
    rows = state.freeze(force=checkpoint)
    if rows is None:
        return 0
    change = Change(wal_start=state.frozen_until, drop_frozen=True)
    with state.output() as out:
        if len(rows.users):
            _write_sequences(state, rows, out, change)
            change.merges, change.merged_users = 1, len(rows.users)
        # Only deletes logged: committing the index still lets their WAL segments go.
        state.commit(change, out)
    return len(rows.users)


def bulk_load(state: StoreState, uids: np.ndarray, columns: dict[str, np.ndarray]) -> int:
    if len(uids) == 0:
        return 0
    with state.job_lock:
        # Merge everything logged so far first, committing past its WAL segments: pending appends
        # arrived before this load (ties must rank them older), and a logged delete replayed after
        # the load would remove what it wrote. Deletes wait for job_lock, so none can be logged
        # until the load has committed; appends that arrive meanwhile replay on top, as they should.
        merge(state)
        kill_point("bulk_load.after_merge")
        empty = _Sorted(np.empty(0, np.uint64), np.zeros(1, np.int64), state.schema.empty_columns())
        rows = _fold(empty, [_Batch(np.ascontiguousarray(uids), columns)])
        change = Change()
        with state.output() as out:
            _write_sequences(state, rows, out, change)
            state.commit(change, out)
        kill_point("bulk_load.after_commit")
        return len(rows.users)


def _write_sequences(state: StoreState, rows: _Sorted, out: JobOutput, change: Change) -> None:
    """Merge ``rows`` (grouped by user, arrival order) with the stored records and write them."""
    schema, time_field = state.schema, state.schema.time_field
    names = list(schema.names)
    entries = state.lookup(rows.users)
    found = np.asarray(entries.found, bool)
    old_counts = np.where(found, np.asarray(entries.count, np.int64), 0)
    for lo, hi in _chunks(np.diff(rows.offsets) + old_counts):
        users = rows.users[lo:hi]
        sel = np.flatnonzero(found[lo:hi])
        disk_off, disk_cols = state.read_stored(entries, lo + sel, names)
        r0, r1 = int(rows.offsets[lo]), int(rows.offsets[hi])
        buf_groups = csr_groups(rows.offsets[lo:hi + 1] - r0)
        groups, cols = csr_concat_groups(
            [(sel[csr_groups(disk_off)], disk_cols),
             (buf_groups, {k: v[r0:r1] for k, v in rows.columns.items()})], names)
        offsets, merged = newest_per_group(len(users), groups, cols, time_field, state.max_len)
        buf, rec_offsets = encode_records(users, offsets, merged, schema)
        fid, base = out.append(buf)
        change.upserts.append((users, np.full(len(users), fid, np.int64), base + rec_offsets[:-1],
                               np.diff(rec_offsets), np.diff(offsets), trailing_checksums(buf, rec_offsets)))
    kill_point("job.after_write")
    out.sync()
    change.replaced.append(entries)


def _chunks(counts: np.ndarray) -> list[tuple[int, int]]:
    if len(counts) == 0:
        return []
    cum = np.cumsum(counts)
    bounds = np.searchsorted(cum, np.arange(_CHUNK_EVENTS, int(cum[-1]), _CHUNK_EVENTS), side="right")
    edges = sorted({0, *(int(b) for b in bounds if 0 < b < len(counts)), len(counts)})
    return list(itertools.pairwise(edges))


def reclaim(state: StoreState, live_fraction: float) -> int:
    """Copy the live records of mostly-dead files forward, commit, then delete those files."""
    with state.job_lock:
        victims = reclaimable(state, live_fraction)
        if not victims:
            return 0
        victim_ids = {v.file_id for v in victims}
        e = state.entries()
        file_ids = np.asarray(e.file_id)
        change = Change(retire=tuple(sorted(victim_ids)), reclaimed_files=len(victims))
        with state.output() as out:
            if state.current_file() in victim_ids:
                out.avoid_current()
            for victim in victims:
                sel = np.flatnonzero(file_ids == victim.file_id)
                lengths = np.asarray(e.length, np.int64)[sel]
                buf, rec_offsets = state.read_raw(file_ids[sel], np.asarray(e.offset)[sel], lengths)
                for i, j in enumerate(sel):  # a bad record must not be copied into a file that looks sound
                    why = entry_problem(buf[rec_offsets[i]:rec_offsets[i + 1]], int(e.user_id[j]),
                                        int(e.length[j]), int(e.count[j]), int(e.checksum[j]))
                    if why is not None:
                        raise CorruptionError(f"{why}, found while copying it forward; run `seqvault verify` "
                                              "and delete or restore the user", path=str(victim.path),
                                              offset=int(e.offset[j]), user_id=int(e.user_id[j]))
                fid, base = out.append(buf)
                change.upserts.append((np.asarray(e.user_id)[sel], np.full(len(sel), fid, np.int64),
                                       base + rec_offsets[:-1], lengths, np.asarray(e.count)[sel],
                                       np.asarray(e.checksum)[sel]))
            kill_point("reclaim.after_copy")
            out.sync()
            state.commit(change, out)
        kill_point("reclaim.after_commit")
        return len(victims)


def reclaimable(state: StoreState, live_fraction: float) -> list[DataFile]:
    # The file being written counts too (merges leave their dead bytes there); an empty one does not.
    current = state.current_file()
    return [f for fid, f in state.files.items()
            if f.live_bytes < live_fraction * f.size or (fid != current and f.size == 0)]


def maintain(state: StoreState) -> bool:
    policy = state.policy
    # Sort the newest appends into a run here, in the background, so reads find few unsorted
    # batches to scan and appends stay a list push.
    did = state.active.fold_pending()
    events = state.active.events
    since = state.active.first_append_time
    age = time.monotonic() - since if since is not None else 0.0
    if (state.frozen is not None or events >= policy.max_buffer_events or (events and age >= policy.max_age_s)
            or state.wal.offset >= policy.max_wal_bytes):
        merge(state)
        did = True
    if reclaimable(state, policy.reclaim_live_fraction):
        did = reclaim(state, policy.reclaim_live_fraction) > 0 or did
    return did


__all__ = ["bulk_load", "maintain", "merge", "reclaim", "reclaimable"]
