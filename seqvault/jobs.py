"""Background jobs: the sequence-level merge, bulk loads and space reclamation.

Each job runs under the engine's job lock, writes new records to the end of the current data
file, fsyncs them, publishes the new index entries (and drops what they replace) in one step
under the state lock, and only then commits a new index snapshot + MANIFEST. Readers therefore
see each user's old or new sequence, never a mix, and a crash at any point leaves the last commit.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import TYPE_CHECKING

import numpy as np

from seqvault.buffer import UpdateBuffer, _Batch, _fold, _Sorted
from seqvault.codec import encode_records, parse_header, record_checksum_ok
from seqvault.datafile import DataFile
from seqvault.errors import CorruptionError
from seqvault.manifest import FileState, snapshot_name, write_snapshot
from seqvault.seqmerge import csr_concat_groups, csr_groups, newest_per_group
from seqvault.wal import segment_name

if TYPE_CHECKING:
    from seqvault.engine import SeqVault

_CHUNK_EVENTS = 1 << 21  # bounds a job's working memory: events merged per encode call


def merge(sv: SeqVault) -> int:
    with sv._job_lock:
        merged = 0
        if sv.frozen is not None:  # an earlier merge failed after the swap: finish that one first
            merged += _merge_frozen(sv)
        with sv._append_lock:
            if sv.active.events == 0 and sv.wal.offset == 0:
                return merged  # nothing buffered and no deletes waiting in the log
            # Rotate and swap together: the frozen buffer is exactly the closed segments' contents.
            new_segment = sv.wal.rotate()
            with sv._state_lock:
                sv.frozen, sv.active = sv.active, UpdateBuffer(sv.schema)
                sv._frozen_until = new_segment
        return merged + _merge_frozen(sv)


def _merge_frozen(sv: SeqVault) -> int:
    rows = sv.frozen.view().all_rows()
    if len(rows.users):
        _write_sequences(sv, rows, drop_frozen=True)
        sv.manifest = dataclasses.replace(sv.manifest, merges=sv.manifest.merges + 1,
                                          merged_users=sv.manifest.merged_users + len(rows.users))
    else:  # only deletes were logged: committing the index lets their WAL segments go
        with sv._state_lock:
            sv.frozen = None
    _commit(sv, wal_start=sv._frozen_until)
    return len(rows.users)


def bulk_load(sv: SeqVault, uids: np.ndarray, columns: dict[str, np.ndarray]) -> int:
    if len(uids) == 0:
        return 0
    # Merge pending appends first: they arrived before this load, so ties must rank them older.
    if sv.active.events or sv.frozen is not None:
        merge(sv)
    with sv._job_lock:
        # Start a fresh WAL segment and commit past the old ones: replaying an older delete after
        # this load would otherwise remove what it wrote.
        with sv._append_lock:
            wal_start = sv.wal.rotate() if sv.active.events == 0 else sv.manifest.wal_start
        empty = _Sorted(np.empty(0, np.uint64), np.zeros(1, np.int64), sv.schema.empty_columns())
        rows = _fold(empty, [_Batch(np.ascontiguousarray(uids), columns)])
        _write_sequences(sv, rows, drop_frozen=False)
        _commit(sv, wal_start=wal_start)
        return len(rows.users)


def _write_sequences(sv: SeqVault, rows: _Sorted, drop_frozen: bool) -> None:
    """Merge ``rows`` (grouped by user, arrival order) with the stored records, write, publish."""
    schema, time_field = sv.schema, sv.schema.time_field
    names = list(schema.names)
    with sv._state_lock:
        entries = sv.index.lookup(rows.users)
    found = np.asarray(entries.found, bool)
    old_counts = np.where(found, np.asarray(entries.count, np.int64), 0)
    sizes_before = {fid: f.size for fid, f in sv.files.items()}
    new_parts: list[tuple[np.ndarray, ...]] = []
    touched: dict[int, DataFile] = {}
    try:
        for lo, hi in _chunks(np.diff(rows.offsets) + old_counts):
            users = rows.users[lo:hi]
            sel = np.flatnonzero(found[lo:hi])
            disk_off, disk_cols = _read_stored(sv, entries, lo + sel, names)
            r0, r1 = int(rows.offsets[lo]), int(rows.offsets[hi])
            buf_groups = csr_groups(rows.offsets[lo:hi + 1] - r0)
            groups, cols = csr_concat_groups(
                [(sel[csr_groups(disk_off)], disk_cols),
                 (buf_groups, {k: v[r0:r1] for k, v in rows.columns.items()})], names)
            offsets, merged = newest_per_group(len(users), groups, cols, time_field, sv.max_len)
            buf, rec_offsets = encode_records(users, offsets, merged, schema)
            target = _writable_file(sv)
            base = target.append(buf)
            touched[target.file_id] = target
            new_parts.append((users, np.full(len(users), target.file_id, np.int64),
                              base + rec_offsets[:-1], np.diff(rec_offsets), np.diff(offsets),
                              _trailing_checksums(buf, rec_offsets)))
        for f in touched.values():
            f.sync()
    except BaseException:
        for fid, f in touched.items():  # nothing was published: drop the unreferenced bytes
            f.truncate_to(sizes_before.get(fid, 0))
        raise
    new = [np.concatenate(col) for col in zip(*new_parts, strict=True)]
    with sv._state_lock:
        _count_dead(sv, entries, found)
        sv.index.upsert(*new)
        if drop_frozen:
            sv.frozen = None


def _chunks(counts: np.ndarray) -> list[tuple[int, int]]:
    if len(counts) == 0:
        return []
    cum = np.cumsum(counts)
    bounds = np.searchsorted(cum, np.arange(_CHUNK_EVENTS, int(cum[-1]), _CHUNK_EVENTS), side="right")
    edges = sorted({0, *(int(b) for b in bounds if 0 < b < len(counts)), len(counts)})
    return list(itertools.pairwise(edges))


def _read_stored(sv: SeqVault, entries: object, idx: np.ndarray, names: list[str]
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    file_ids = np.asarray(entries.file_id)[idx]
    held = {int(f): sv.files[int(f)] for f in np.unique(file_ids)}
    return sv._read_records(held, file_ids, np.asarray(entries.offset)[idx],
                            np.asarray(entries.length)[idx], names, sv.max_len)


def _trailing_checksums(buf: np.ndarray, rec_offsets: np.ndarray) -> np.ndarray:
    """The CRC-32 each record ends with (what the index keeps), read without a Python loop."""
    ends = rec_offsets[1:].astype(np.int64)
    b = buf[ends[:, None] - 4 + np.arange(4)].astype(np.uint64)
    return b[:, 0] | (b[:, 1] << np.uint64(8)) | (b[:, 2] << np.uint64(16)) | (b[:, 3] << np.uint64(24))


def _count_dead(sv: SeqVault, entries: object, found: np.ndarray) -> None:
    fids = np.asarray(entries.file_id)[found]
    lens = np.asarray(entries.length, np.int64)[found]
    for fid in np.unique(fids):
        sv.files[int(fid)].dead_bytes += int(lens[fids == fid].sum())


def _writable_file(sv: SeqVault) -> DataFile:
    m = sv.manifest
    current = sv.files.get(m.current_file) if m.current_file is not None else None
    if current is not None and current.size < sv.policy.data_file_bytes:
        return current
    fid = m.next_file_id
    f = DataFile(sv.directory, fid, 0, direct_io=sv.direct_io, create=True)
    with sv._state_lock:
        sv.files[fid] = f
    sv.manifest = dataclasses.replace(m, next_file_id=fid + 1, current_file=fid)
    return f


def _commit(sv: SeqVault, wal_start: int) -> None:
    """Write index snapshot then MANIFEST (each atomically); then drop what they supersede."""
    m = sv.manifest
    gen = m.generation + 1
    e = sv.index.entries()
    write_snapshot(sv.directory / snapshot_name(gen), {
        "user_id": e.user_id, "file_id": e.file_id, "offset": e.offset, "length": e.length,
        "count": e.count, "checksum": e.checksum,
    })
    files = {fid: FileState(f.size, f.dead_bytes) for fid, f in sv.files.items()}
    new = dataclasses.replace(m, generation=gen, index_file=snapshot_name(gen), wal_start=wal_start, files=files)
    new.write(sv.directory)
    sv.manifest = new
    if m.index_file and m.index_file != new.index_file:
        (sv.directory / m.index_file).unlink(missing_ok=True)
    for seg in range(m.wal_start, wal_start):
        (sv.directory / segment_name(seg)).unlink(missing_ok=True)


def reclaim(sv: SeqVault, live_fraction: float) -> int:
    """Copy the live records of mostly-dead files forward, commit, then delete those files."""
    with sv._job_lock:
        victims = _reclaimable(sv, live_fraction)
        if not victims:
            return 0
        if sv.manifest.current_file in {v.file_id for v in victims}:
            sv.manifest = dataclasses.replace(sv.manifest, current_file=None)  # copy into a fresh file
        e = sv.index.entries()
        file_ids = np.asarray(e.file_id)
        touched: dict[int, DataFile] = {}
        sizes_before = {fid: f.size for fid, f in sv.files.items()}
        moved: list[tuple[np.ndarray, ...]] = []
        try:
            for victim in victims:
                sel = np.flatnonzero(file_ids == victim.file_id)
                lengths = np.asarray(e.length, np.int64)[sel]
                rec_offsets = np.zeros(len(sel) + 1, np.int64)
                np.cumsum(lengths, out=rec_offsets[1:])
                buf = np.empty(int(rec_offsets[-1]), np.uint8)
                for i, j in enumerate(sel):
                    off = int(e.offset[j])
                    view = buf[rec_offsets[i]:rec_offsets[i + 1]]
                    victim.read_into(view, off)
                    uid = int(e.user_id[j])
                    if not record_checksum_ok(view) or parse_header(view).user_id != uid:
                        raise CorruptionError("record failed its checksum while being copied forward; "
                                              "run `seqvault verify` and delete or restore the user",
                                              path=str(victim.path), offset=off, user_id=uid)
                target = _writable_file(sv)
                base = target.append(buf)
                touched[target.file_id] = target
                moved.append((np.asarray(e.user_id)[sel], np.full(len(sel), target.file_id, np.int64),
                              base + rec_offsets[:-1], lengths, np.asarray(e.count)[sel],
                              np.asarray(e.checksum)[sel]))
            for f in touched.values():
                f.sync()
        except BaseException:
            for fid, f in touched.items():
                f.truncate_to(sizes_before.get(fid, 0))
            raise
        with sv._state_lock:
            if moved:
                sv.index.upsert(*[np.concatenate(c) for c in zip(*moved, strict=True)])
            for victim in victims:
                del sv.files[victim.file_id]
        sv.manifest = dataclasses.replace(sv.manifest, reclaimed_files=sv.manifest.reclaimed_files + len(victims))
        _commit(sv, wal_start=sv.manifest.wal_start)
        for victim in victims:
            victim.retire(unlink=True)  # readers still holding it keep their descriptors
        return len(victims)


def _reclaimable(sv: SeqVault, live_fraction: float) -> list[DataFile]:
    # The file being written counts too (merges leave their dead bytes there); an empty one does not.
    current = sv.manifest.current_file
    return [f for fid, f in sv.files.items()
            if f.live_bytes < live_fraction * f.size or (fid != current and f.size == 0)]


def maintain(sv: SeqVault) -> bool:
    policy = sv.policy
    # Sort the newest appends into a run here, in the background, so reads find few unsorted
    # batches to scan and appends stay a list push.
    did = sv.active.fold_pending()
    events = sv.active.events
    since = sv.active.first_append_time
    age = time.monotonic() - since if since is not None else 0.0
    if (sv.frozen is not None or events >= policy.max_buffer_events or (events and age >= policy.max_age_s)
            or sv.wal.offset >= policy.max_wal_bytes):
        merge(sv)
        did = True
    if _reclaimable(sv, policy.reclaim_live_fraction):
        did = reclaim(sv, policy.reclaim_live_fraction) > 0 or did
    return did


__all__ = ["bulk_load", "maintain", "merge", "reclaim"]
