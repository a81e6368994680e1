"""The state of an open store, with its one committer.

:class:`StoreState` owns everything a store holds in memory: the published index and data files,
the update buffers, the WAL and the last committed MANIFEST. Jobs (merge, reclamation, bulk load:
:mod:`seqvault.jobs`) change it only through a narrow interface: :meth:`freeze` the buffer,
:meth:`lookup` and :meth:`read_stored` what is stored, write new records through a
:class:`JobOutput`, and hand a :class:`Change` to :meth:`commit`.

A commit is *prepare, commit, publish*: the new index is built on a copy, written as a snapshot,
the MANIFEST is renamed over the old one, and only then are the new index, files and buffers
published to readers. A commit that fails before its MANIFEST rename therefore changes nothing
(the job's bytes are cut off again and a retry starts from the same state), so what the index
holds and which WAL segment the committed state covers up to can never disagree.

Locks, outermost first: ``job_lock`` (jobs and deletes: anything that changes the index),
``append_lock`` (a WAL write and its buffer insert happen together, so a buffer swap and WAL
rotation can never split them), ``state_lock`` (held briefly: readers snapshot index entries and
buffer views under it, commits publish under it).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqvault import records
from seqvault.buffer import BufferView, UpdateBuffer, _Sorted
from seqvault.datafile import DataFile
from seqvault.errors import SeqVaultError
from seqvault.fs import IoGuard
from seqvault.index import MAX_FILE_ID, HashIndex, IndexEntries
from seqvault.killpoints import kill_point
from seqvault.manifest import FileState, Manifest, snapshot_name, write_snapshot
from seqvault.policy import MergePolicy
from seqvault.schema import Schema
from seqvault.wal import WriteAheadLog


class BackpressureError(SeqVaultError):
    """The update buffer is full and merges are not draining it; the append was not stored."""


@dataclass
class Change:
    """What one job commits. ``upserts`` are index columns (users, file ids, offsets, lengths,
    counts, checksums); ``replaced`` are the entries they supersede (their bytes become dead)."""

    upserts: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    replaced: list[IndexEntries] = field(default_factory=list)
    wal_start: int | None = None  # the first WAL segment the new state does not cover (None: unchanged)
    drop_frozen: bool = False
    retire: tuple[int, ...] = ()  # data files the new state no longer refers to
    merges: int = 0
    merged_users: int = 0
    reclaimed_files: int = 0


class StoreState:
    def __init__(self, directory: Path, schema: Schema, policy: MergePolicy, io: IoGuard, manifest: Manifest,
                 index: HashIndex, files: dict[int, DataFile], direct_io: bool) -> None:
        self.directory = directory
        self.schema = schema
        self.max_len = manifest.max_len
        self.policy = policy
        self.io = io
        self.direct_io = direct_io
        self.job_lock = threading.RLock()
        self.append_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self._drained = threading.Condition()
        self.manifest = manifest  # the last commit
        self.index = index        # published: the committed index, plus deletes logged since
        self.files = files        # published data files
        self.active = UpdateBuffer(schema)
        self.frozen: UpdateBuffer | None = None  # what a running (or failed) merge consumes
        self.frozen_until = manifest.wal_start    # first WAL segment ``frozen`` does not cover
        self.wal: WriteAheadLog | None = None
        self.snapshot_bytes = 0
        self._next_generation = manifest.generation + 1
        self._current_file = manifest.current_file

    # -- reading --------------------------------------------------------------------------------
    def views(self) -> list[BufferView]:
        return [b.view() for b in (self.frozen, self.active) if b is not None and b.events]

    def lookup(self, users: np.ndarray) -> IndexEntries:
        with self.state_lock:
            return self.index.lookup(users)

    def entries(self) -> IndexEntries:
        with self.state_lock:
            return self.index.entries()

    def read_stored(self, entries: IndexEntries, idx: np.ndarray | None, fields: list[str]
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Records of ``entries`` (rows ``idx``), decoded; for jobs, which hold ``job_lock``."""
        return records.read_records(self.files, entries, idx, self.schema, fields, self.max_len)

    def read_raw(self, file_ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        return records.read_raw(self.files, file_ids, offsets, lengths)

    def buffered_events(self) -> int:
        return self.active.events + (self.frozen.events if self.frozen is not None else 0)

    # -- buffers and the WAL ----------------------------------------------------------------------
    def freeze(self, force: bool = False) -> _Sorted | None:
        """The frozen buffer's rows (freezing the active one first if none is frozen); None if idle
        (nothing buffered and nothing logged), unless ``force``.

        Rotating the WAL and swapping the buffers happen together, so the frozen buffer is exactly
        what the closed segments hold.
        """
        if self.frozen is None:
            with self.append_lock:
                logged = self.wal.offset > 0 or self.wal.segment_id > self.manifest.wal_start
                if self.active.events == 0 and not logged and not force:
                    return None  # nothing buffered and no WAL segment (deletes) the commit does not cover
                new_segment = self.wal.rotate()
                with self.state_lock:
                    self.frozen, self.active = self.active, UpdateBuffer(self.schema)
                    self.frozen_until = new_segment
            kill_point("merge.after_swap")
        return self.frozen.view().all_rows()

    def wait_for_room(self, limit: int, timeout_s: float, last_error: Callable[[], BaseException | None]) -> None:
        """Block until fewer than ``limit`` events are buffered, or raise after ``timeout_s``."""
        with self._drained:
            if self._drained.wait_for(lambda: self.buffered_events() < limit, timeout_s):
                return
        error = last_error()
        why = f"; the last merge failed: {error}" if error is not None else ""
        raise BackpressureError(
            f"the update buffer holds {self.buffered_events()} events (limit {limit}) and merges have not "
            f"drained it within {timeout_s:g} s{why}. Run merges (maintain(), or MergePolicy(background=True)), "
            "fix what makes them fail, or raise MergePolicy.stall_buffer_events")

    # -- writing ----------------------------------------------------------------------------------
    @contextmanager
    def output(self) -> Iterator[JobOutput]:
        """Where a job writes records; if the job fails before its commit, its bytes are cut off."""
        out = JobOutput(self)
        try:
            yield out
        except BaseException:
            out.rollback()
            raise

    def commit(self, change: Change, out: JobOutput | None = None) -> None:
        """Make ``change`` durable, then visible. Callers hold ``job_lock``."""
        self.io.check_writable()
        # The snapshot is taken from the live index, which already holds every logged delete: each
        # must be durable in the WAL first, or a power cut could keep the snapshot's delete while
        # losing the record, and replay the user's earlier buffered events over it.
        self.wal.sync()
        new_files = dict(out.new_files) if out is not None else {}
        index = self.index
        if change.upserts:
            index = index.copy()
            index.upsert(*[np.concatenate(c) for c in zip(*change.upserts, strict=True)])
        dead = _dead_bytes(change.replaced)
        files = {fid: f for fid, f in {**self.files, **new_files}.items() if fid not in change.retire}
        states = {fid: FileState(f.size, f.dead_bytes + dead.get(fid, 0)) for fid, f in sorted(files.items())}
        current = out.current if out is not None else self._current_file
        current = current if current in files else None
        gen = self._next_generation
        self._next_generation += 1  # never reused, even by a failed attempt: a snapshot name means one state
        snap = snapshot_name(gen)
        e = index.entries()
        try:
            snap_bytes = write_snapshot(self.directory / snap, {
                "user_id": e.user_id, "file_id": e.file_id, "offset": e.offset, "length": e.length,
                "count": e.count, "checksum": e.checksum,
            }, self.io)
        except BaseException:
            if self.io.failure is None:
                self._remove(self.directory / snap)
            raise
        kill_point("commit.after_snapshot")
        m = self.manifest
        new = dataclasses.replace(
            m, generation=gen, index_file=snap, wal_start=change.wal_start or m.wal_start, files=states,
            current_file=current, next_file_id=max(files, default=0) + 1, merges=m.merges + change.merges,
            merged_users=m.merged_users + change.merged_users,
            reclaimed_files=m.reclaimed_files + change.reclaimed_files)
        try:
            new.write(self.directory, self.io)
        except BaseException:
            if self.io.failure is None:  # failed before the rename: the old commit stands
                self._remove(self.directory / snap)
            raise
        if out is not None:
            out.committed = True  # from here on the job's bytes are the store's: never roll them back
        kill_point("commit.after_manifest")
        retired = [self.files[fid] for fid in change.retire if fid in self.files]
        with self.state_lock:
            for fid, extra in dead.items():
                if fid in files:
                    files[fid].dead_bytes += extra
            self.index = index
            self.files = files
            self.manifest = new
            self.snapshot_bytes = snap_bytes
            self._current_file = current
            if change.drop_frozen:
                self.frozen = None
        with self._drained:
            self._drained.notify_all()
        # What the new commit supersedes; anything left behind here the next open removes.
        if m.index_file and m.index_file != snap:
            self._remove(self.directory / m.index_file)
        self.wal.drop_segments(new.wal_start)
        for f in retired:
            f.retire(unlink=True)  # readers still holding it keep their descriptors
        kill_point("commit.after_cleanup")

    def _remove(self, path: Path) -> None:
        try:
            self.io.fs.unlink(path)
        except OSError:
            pass

    def current_file(self) -> int | None:
        return self._current_file

    def disk_parts(self) -> dict[str, int]:
        with self.state_lock:
            data = sum(f.size for f in self.files.values())
            snap = self.snapshot_bytes
        return {"data_bytes": data, "wal_bytes": self.wal.segment_bytes(), "index_snapshot_bytes": snap}


class JobOutput:
    """New records of one job: appended to the current data file or to new ones (ids reused)."""

    def __init__(self, state: StoreState) -> None:
        self._state = state
        self.new_files: dict[int, DataFile] = {}
        self.current = state.current_file()
        self.committed = False
        self._sizes_before: dict[int, int] = {}

    def append(self, buf: np.ndarray) -> tuple[int, int]:
        """Write ``buf``; returns (file id, offset). Durable only after :meth:`sync`."""
        target = self._writable()
        self._sizes_before.setdefault(target.file_id, target.size)
        return target.file_id, target.append(buf)

    def avoid_current(self) -> None:
        """Write to a fresh file (reclamation must not copy into a file it is emptying)."""
        self.current = None

    def sync(self) -> None:
        for fid in self._sizes_before:
            self._file(fid).sync()
        kill_point("job.after_data_sync")

    def _file(self, fid: int) -> DataFile:
        return self.new_files.get(fid) or self._state.files[fid]

    def _writable(self) -> DataFile:
        s = self._state
        if self.current is not None:
            f = self._file(self.current)
            if f.size < s.policy.data_file_bytes:
                return f
        fid = _lowest_free_id({*s.files, *self.new_files})
        f = DataFile(s.directory, fid, 0, s.io, direct_io=s.direct_io, create=True)
        self.new_files[fid] = f
        self.current = fid
        return f

    def rollback(self) -> None:
        if self.committed:
            return
        if self._state.io.failure is not None:
            # Fail-stop: what is on disk may already be committed; the next open sorts it out.
            for f in self.new_files.values():
                f.retire(unlink=False)
            return
        for fid, size in self._sizes_before.items():
            if fid not in self.new_files:
                self._state.files[fid].truncate_to(size)
        for f in self.new_files.values():
            f.retire(unlink=True)


def _lowest_free_id(used: set[int]) -> int:
    # Ids are reused (the index stores them in 16 bits): the lowest one no live file holds.
    fid = next(i for i in range(1, len(used) + 2) if i not in used)
    if fid > MAX_FILE_ID:
        raise SeqVaultError(f"the store holds {len(used)} data files, the most the index can address; "
                            "reclaim space (reclaim()) or raise MergePolicy.data_file_bytes")
    return fid


def _dead_bytes(replaced: list[IndexEntries]) -> dict[int, int]:
    dead: dict[int, int] = {}
    for entries in replaced:
        found = np.asarray(entries.found, bool)
        fids = np.asarray(entries.file_id)[found]
        lens = np.asarray(entries.length, np.int64)[found]
        for fid in np.unique(fids):
            dead[int(fid)] = dead.get(int(fid), 0) + int(lens[fids == fid].sum())
    return dead


__all__ = ["BackpressureError", "Change", "JobOutput", "StoreState"]
