"""SeqVault: each user's newest ``max_len`` events, DRAM hash index + packed records on SSD.

Reads are one hash lookup and one ``pread`` per user, merged with the in-memory update buffer.
Writes go to the WAL and the buffer; :mod:`seqvault.jobs` folds the buffer into new records
(sequence-level merge) and copies live records out of mostly-dead files (reclamation). The
store's state and its committer live in :mod:`seqvault.state`; this class is the public face.

Failure paths: appends are copied on entry (a caller may reuse its arrays at once); a failed
fsync fail-stops the store (:class:`~seqvault.fs.StoreFailedError` on every later write, reopen
to recover); a full buffer that merges do not drain blocks appends for a bounded time, then
raises :class:`~seqvault.state.BackpressureError`; ``close()`` waits for reads in flight.
"""

from __future__ import annotations

import numbers
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType, TracebackType

import numpy as np

from seqvault import jobs, records, recovery
from seqvault.datafile import DataFile
from seqvault.errors import CorruptionError, SeqVaultError
from seqvault.fs import OS, FileSystem, IoGuard
from seqvault.index import HashIndex
from seqvault.killpoints import kill_point
from seqvault.manifest import Manifest, read_snapshot
from seqvault.policy import MergePolicy
from seqvault.schema import USER_ID_DTYPE, Schema, SchemaError, _cast_integer
from seqvault.seqmerge import csr_concat_groups, csr_take, newest_per_group, overlay_buffered
from seqvault.state import BackpressureError, StoreState
from seqvault.vectors import VectorTable
from seqvault.wal import (
    KIND_APPEND,
    KIND_DELETE,
    WriteAheadLog,
    decode_append,
    decode_delete,
    encode_append,
    encode_delete,
    iter_records,
)

DEFAULT_MAX_LEN = 1000


class SeqVault:
    """A durable store of user event sequences. Create or reopen with :meth:`open`."""

    # -- opening and closing ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, schema: Schema | None = None, max_len: int | None = None, *,
             direct_io: bool = False, merge_policy: MergePolicy | None = None, create: bool = True,
             salvage: bool = False, fs: FileSystem | None = None) -> SeqVault:
        """Create a store at ``path`` (needs ``schema``) or reopen one (schema read from its manifest).

        ``max_len`` defaults to 1000 on create; on reopen a given value must match the stored one.
        A WAL damaged in the middle (not just torn at its end by a crash) refuses to open;
        ``salvage=True`` keeps every intact record, merges them at once (so the damaged segments
        go) and reports what was dropped in :attr:`recovery_report`. ``fs`` is the I/O seam
        (tests and ``seqvault crashtest`` pass a simulated disk).
        """
        directory = Path(path)
        fs = fs or OS
        must_create = recovery.prepare_directory(directory, schema, max_len, create)
        lock_fd = recovery.lock_store(directory, fs)
        try:
            return cls(directory, lock_fd, schema, max_len, must_create, direct_io,
                       merge_policy or MergePolicy(), salvage, fs)
        except BaseException:
            recovery.unlock_store(lock_fd, fs)
            raise

    def __init__(self, directory: Path, lock_fd: int, schema: Schema | None, max_len: int | None,
                 create: bool, direct_io: bool, policy: MergePolicy, salvage: bool, fs: FileSystem) -> None:
        self.directory = directory
        self.direct_io = direct_io
        self.policy = policy
        self._fs = fs
        self._io = IoGuard(fs, directory)
        self._lock_fd = lock_fd
        self._closed = False
        self._vectors: VectorTable | None = None  # opened on demand by open_vectors, closed with the store
        self._gate = threading.Condition()  # counts reads in flight, so close() can wait for them
        self._readers = 0
        self.background_error: BaseException | None = None
        if create:
            assert schema is not None
            manifest = recovery.initial_manifest(schema, max_len or DEFAULT_MAX_LEN)
            manifest.write(directory, self._io)
            self._io.fsync_dir(directory.parent)  # the store directory's own entry
        else:
            manifest = Manifest.load(directory)
            schema = recovery.check_reopen(manifest, directory, schema, max_len)
        self.schema: Schema = schema
        self.max_len: int = manifest.max_len
        index = HashIndex()
        snapshot_bytes = 0
        if manifest.index_file:
            snap = read_snapshot(directory / manifest.index_file, self._io)
            snapshot_bytes = (directory / manifest.index_file).stat().st_size
            # Packed as from_entries packs (<= 32 B/user); 2x the users would cost 52 B/user.
            index = HashIndex.for_users(len(snap["user_id"]))
            index.upsert(snap["user_id"], snap["file_id"], snap["offset"], snap["length"],
                         snap["count"], snap["checksum"])
        files = recovery.open_data_files(directory, manifest, direct_io, self._io)
        st = self._state = StoreState(directory, schema, policy, self._io, manifest, index, files, direct_io)
        st.snapshot_bytes = snapshot_bytes
        try:
            wal_state = recovery.recover_wal(directory, manifest, self._io, salvage=salvage)
            self.recovery_note = wal_state.cut
            self.recovery_report = wal_state.report()
            for kind, payload in iter_records(wal_state.scans):
                if kind == KIND_APPEND:
                    st.active.add(*decode_append(payload, self.schema))
                elif kind == KIND_DELETE:
                    self._apply_delete(decode_delete(payload))
                else:   # an intact record of another log's kind (the vector table's): not ours
                    raise CorruptionError(
                        f"{directory}: the sequence log holds a record of kind {kind}, which only the "
                        f"vector table's own log may hold; the directory's logs were mixed up: restore "
                        f"it from a backup")
            st.wal = WriteAheadLog(directory, wal_state.last_segment, self._io, first_segment=manifest.wal_start)
            if salvage and wal_state.dropped:
                jobs.merge(st, checkpoint=True)  # commit what was kept: the damaged segments go
        except BaseException:
            if st.wal is not None:
                st.wal.close(sync=False)
            for f in st.files.values():
                f.retire(unlink=False)
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if policy.background:
            self._thread = threading.Thread(target=self._background_loop, name="seqvault-maintain", daemon=True)
            self._thread.start()

    # Read-only views of the state (tests and tools look at them; nothing outside writes them).
    @property
    def wal(self) -> WriteAheadLog:
        return self._state.wal

    @property
    def manifest(self) -> Manifest:
        return self._state.manifest

    @property
    def index(self) -> HashIndex:
        return self._state.index

    @property
    def files(self) -> Mapping[int, DataFile]:
        return MappingProxyType(self._state.files)

    @property
    def active(self) -> object:
        return self._state.active

    @property
    def failure(self) -> str | None:
        """Why the store fail-stopped (None while it accepts writes)."""
        return self._io.failure

    def close(self) -> None:
        """Stop background work, wait for reads in flight, fsync the WAL, release the store.

        Buffered events stay in the WAL. After a fail-stop the WAL is closed without an fsync
        (nothing would make it trustworthy); reopen to recover.
        """
        if not self._begin_close():
            return
        with self._state.job_lock:
            try:
                if self._vectors is not None:
                    self._vectors.close()
            finally:
                try:
                    self._state.wal.close(sync=True)
                finally:
                    self._release()

    def _abandon(self) -> None:
        """Drop the instance as a crash would (no fsync, no merge); for tests of recovery."""
        if not self._begin_close():
            return
        if self._vectors is not None:
            self._vectors._abandon()
        self._state.wal.close(sync=False)
        self._release()

    def _begin_close(self) -> bool:
        with self._gate:
            if self._closed:
                return False
            self._closed = True
            self._gate.wait_for(lambda: self._readers == 0)
        self._stop_background()
        return True

    def _release(self) -> None:
        for f in self._state.files.values():
            f.retire(unlink=False)
        recovery.unlock_store(self._lock_fd, self._fs)

    def __enter__(self) -> SeqVault:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SeqVaultError(f"the store at {self.directory} is closed; reopen it with SeqVault.open")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._gate:
            self._check_open()
            self._readers += 1
        try:
            yield
        finally:
            with self._gate:
                self._readers -= 1
                if self._readers == 0:
                    self._gate.notify_all()

    def open_vectors(self, dim: int, dtype: str = "fp16") -> VectorTable:
        """The store's table of per-user vectors (cached user representations) under ``vectors/``.

        Opened (created the first time) on the first call and owned by the store, which closes it;
        later calls return the same table (asking for another dim or dtype is refused). After the
        table fail-stopped, close it and call this again to reopen it from what is on disk.
        """
        with self._gate:
            self._check_open()
            table = self._vectors
            if table is not None and not table.closed:
                if (table.dim, table.dtype) != (dim, dtype):
                    raise SeqVaultError(f"the store's vector table is open with dim={table.dim} {table.dtype}, "
                                        f"not dim={dim} {dtype}")
                return table
            self._vectors = VectorTable.open(self.directory / "vectors", dim, dtype, fs=self._fs)
            return self._vectors

    # -- writing ------------------------------------------------------------------------------
    def append(self, user_ids: np.ndarray | Sequence[int], columns: Mapping[str, np.ndarray | Sequence[int]],
               sync: bool = False) -> None:
        """Add a batch of events for any users. Validated first: a bad batch writes nothing.

        The arrays are copied: the caller may reuse them as soon as this returns. With
        ``sync=True`` this returns only after the WAL record is fsynced (concurrent syncing
        callers share fsyncs); otherwise it is in the OS page cache, safe against a process crash.
        Backpressure, once the buffers hold ``policy.stall_buffer_events`` events: without a
        background thread this append first merges inline; with one it waits (at most
        ``policy.stall_timeout_s``) for the background merge. If that cannot make room (merges
        failing), it raises BackpressureError and stores nothing.
        """
        self._check_open()
        uids, cols = _owned(*self.schema.validate(as_user_ids(user_ids), columns))
        if len(uids) == 0:
            return
        st = self._state
        if st.buffered_events() >= self.policy.stall_events:
            self._make_room()
        with st.append_lock:
            self._check_open()
            lsn = st.wal.append(KIND_APPEND, encode_append(uids, cols, self.schema))
            st.active.add(uids, cols)
        if sync:
            st.wal.sync(lsn)

    def _make_room(self) -> None:
        st, limit = self._state, self.policy.stall_events
        if self._thread is not None:
            st.wait_for_room(limit, self.policy.stall_timeout_s, lambda: self.background_error)
            return
        try:
            with self._job():
                jobs.merge(st)
        except Exception as e:
            if self._closed or self._io.failure is not None:
                raise  # closed or fail-stopped: that error says what to do, not backpressure
            raise BackpressureError(
                f"the update buffer holds {st.buffered_events()} events (limit {limit}) and the merge that "
                f"would make room failed: {e}; the append was not stored") from e

    def delete(self, user_ids: np.ndarray | Sequence[int], sync: bool = True) -> None:
        """Remove users entirely (privacy requests). Durable (fsynced) on return unless ``sync=False``."""
        self._check_open()
        uids = np.unique(as_user_ids(user_ids))
        if len(uids) == 0:
            return
        st = self._state
        with st.job_lock, st.append_lock:
            self._check_open()
            lsn = st.wal.append(KIND_DELETE, encode_delete(uids))
            kill_point("delete.after_log")
            self._apply_delete(uids)
        if sync:
            st.wal.sync(lsn)

    def _apply_delete(self, uids: np.ndarray) -> None:
        st = self._state
        with st.state_lock:
            entries = st.index.lookup(uids)
            found = np.asarray(entries.found, bool)
            for fid, length in zip(np.asarray(entries.file_id)[found], np.asarray(entries.length)[found],
                                   strict=True):
                st.files[int(fid)].dead_bytes += int(length)
            st.index.delete(uids)
            st.active.remove_users(uids)
            if st.frozen is not None:
                st.frozen.remove_users(uids)

    def flush(self) -> None:
        """Make every acknowledged append and delete durable (fsync the WAL)."""
        self._check_open()
        self._state.wal.sync()

    # -- reading ------------------------------------------------------------------------------
    def _read_fields(self, fields: Sequence[str] | None) -> tuple[list[str], list[str]]:
        want = list(self.schema.names) if fields is None else [self.schema.field(f).name for f in fields]
        need = want if self.schema.time_field in want else [*want, self.schema.time_field]
        return want, need

    def _keep(self, last_n: int | None) -> int:
        if last_n is None:
            return self.max_len
        if isinstance(last_n, bool) or not isinstance(last_n, numbers.Integral) or last_n < 0:
            raise SeqVaultError(f"last_n must be a whole number >= 0 (or None for max_len), got {last_n!r}")
        return min(int(last_n), self.max_len)

    def get(self, user_id: int, last_n: int | None = None, fields: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
        """One user's newest events (at most ``last_n``), oldest first, as field name -> array."""
        with self._reading():
            return self._get(user_id, last_n, fields)

    def _get(self, user_id: int, last_n: int | None, fields: Sequence[str] | None) -> dict[str, np.ndarray]:
        want, need = self._read_fields(fields)
        keep = self._keep(last_n)
        uid = int(as_user_ids([user_id])[0])
        st = self._state
        with st.state_lock:
            entry = st.index.get(uid)
            dfile = st.files[int(entry.file_id)] if entry is not None else None
            if dfile is not None:
                dfile.acquire()
            views = st.views()
        disk = None
        if dfile is not None:
            try:
                if keep > 0:
                    disk = records.read_one(dfile, entry, self.schema, need, keep)
            finally:
                dfile.release()
        if keep == 0:
            return self.schema.empty_columns(want)
        probe = np.asarray([uid], dtype=np.uint64)
        parts = [v.rows_for(probe) for v in views]
        parts = [p for p in parts if len(p[0])]
        if not parts:
            return {k: disk[k] for k in want} if disk is not None else self.schema.empty_columns(want)
        if disk is not None:
            parts.insert(0, (np.zeros(len(disk[self.schema.time_field]), np.int64), disk))
        groups, cols = csr_concat_groups(parts, need)
        _, merged = newest_per_group(1, groups, cols, self.schema.time_field, keep)
        return {k: merged[k] for k in want}

    def get_many(self, user_ids: np.ndarray | Sequence[int], last_n: int | None = None,
                 fields: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Many users at once, as CSR: user i's events are ``cols[f][offsets[i]:offsets[i + 1]]``."""
        with self._reading():
            return self._get_many(as_user_ids(user_ids), last_n, fields)

    def _get_many(self, uids: np.ndarray, last_n: int | None, fields: Sequence[str] | None
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        want, need = self._read_fields(fields)
        keep = self._keep(last_n)
        # One user (a ranking request): get's scalar path skips the batch machinery (~3x faster).
        if len(uids) == 1 and (fields is None or len(fields)):
            one = self._get(int(uids[0]), last_n, fields)
            return np.array([0, len(next(iter(one.values())))], np.int64), one
        order = np.argsort(uids, kind="stable")
        sorted_uids = uids[order]
        if len(uids) > 1 and (sorted_uids[1:] == sorted_uids[:-1]).any():
            uniq, inverse = np.unique(uids, return_inverse=True)
            offsets, cols = self._get_many(uniq, last_n, fields)
            return csr_take(offsets, cols, inverse.ravel())
        n = len(uids)
        st = self._state
        with st.state_lock:
            entries = st.index.lookup(uids)
            found = np.flatnonzero(np.asarray(entries.found, bool))
            held = {int(f): st.files[int(f)] for f in np.unique(np.asarray(entries.file_id)[found])}
            for f in held.values():
                f.acquire()
            views = st.views()
        try:
            disk_offsets, disk_cols = records.read_records(held, entries, found, self.schema, need, keep)
        finally:
            for f in held.values():
                f.release()
        parts = []
        for v in views:
            idx, cols = v.rows_for(sorted_uids)
            if len(idx):
                parts.append((order[idx], cols))
        counts = np.zeros(n, np.int64)
        counts[found] = np.diff(disk_offsets)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        if keep == 0:
            return offsets, self.schema.empty_columns(want)
        if not parts:
            return offsets, {k: disk_cols[k] for k in want}
        groups, extra = csr_concat_groups(parts, need)
        offsets, merged = overlay_buffered(n, offsets, disk_cols, groups, extra, self.schema.time_field, keep)
        return offsets, {k: merged[k] for k in want}

    # -- jobs (see seqvault.jobs) -------------------------------------------------------------
    def merge(self) -> int:
        """Fold every buffered event into new on-disk records now; returns how many users were merged."""
        with self._job():
            return jobs.merge(self._state)

    def reclaim(self, live_fraction: float | None = None) -> int:
        """Copy live records out of files whose live fraction is below the threshold; returns files freed."""
        with self._job():
            return jobs.reclaim(self._state,
                                self.policy.reclaim_live_fraction if live_fraction is None else live_fraction)

    def bulk_load(self, user_ids: np.ndarray | Sequence[int],
                  columns: Mapping[str, np.ndarray | Sequence[int]]) -> int:
        """Backfill: write records straight to data files (no WAL), keeping each user's newest
        ``max_len`` merged with what is stored; durable on return, all or nothing: a load that
        raises anything but StoreFailedError stored none of it, so a retry stores it once. After
        StoreFailedError the outcome is unknown until the store is reopened (the commit's rename
        may have reached the disk): reopen and look before retrying. Returns users written."""
        uids, cols = _owned(*self.schema.validate(as_user_ids(user_ids), columns))
        with self._job():
            return jobs.bulk_load(self._state, uids, cols)

    def merge_pending(self) -> int:
        """Users with buffered (not yet merged) events."""
        views = self._state.views()
        if not views:
            return 0
        return len(np.unique(np.concatenate([v.users() for v in views])))

    def maintain(self) -> bool:
        """Run the merge / reclamation policy once if due; returns whether it did any work."""
        with self._job():
            return jobs.maintain(self._state)

    def _check_writable(self) -> None:
        self._check_open()
        self._io.check_writable()

    @contextmanager
    def _job(self) -> Iterator[None]:
        """Hold the job lock, checking under it that the store is still open (close takes it too)."""
        with self._state.job_lock:
            self._check_writable()
            yield

    def _background_loop(self) -> None:
        while not self._stop.wait(self.policy.interval_s):
            if self._io.failure is not None:
                return  # fail-stopped: nothing more may be written
            try:
                self.maintain()
            except Exception as e:  # keep serving reads and appends; surface it in stats and the log
                self.background_error = e
                recovery.log.exception("seqvault background maintenance failed")

    def _stop_background(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- accounting ---------------------------------------------------------------------------
    def disk_bytes(self) -> int:
        """Bytes on disk: data files + WAL segments + index snapshot."""
        return sum(self._state.disk_parts().values())

    def stats(self) -> dict:
        """Plain-dict (JSON-serialisable) figures about the store.

        Read from what the store tracks in memory (never by listing the directory), so it is safe
        to call while merges delete files.
        """
        self._check_open()
        st = self._state
        with st.state_lock:
            entries = st.index.entries()
            views = st.views()
            index_bytes = int(st.index.nbytes)
            buffer_bytes = st.active.nbytes + (st.frozen.nbytes if st.frozen else 0)
            files = list(st.files.values())
            m = st.manifest
        buffered_users = [v.users() for v in views]
        users = np.union1d(np.asarray(entries.user_id), np.concatenate(buffered_users)) if buffered_users \
            else np.asarray(entries.user_id)
        buffered = sum(v.events for v in views)
        parts = st.disk_parts()
        out = {
            "users": len(users),
            "events": int(np.asarray(entries.count).sum()) + buffered,  # buffered: before truncation
            "stored_events": int(np.asarray(entries.count).sum()),
            **parts,
            "disk_bytes": sum(parts.values()),
            "dram_bytes": index_bytes + buffer_bytes,
            "index_bytes": index_bytes,
            "buffer_bytes": buffer_bytes,
            "buffered_events": buffered,
            "merge_pending_users": len(np.unique(np.concatenate(buffered_users))) if buffered_users else 0,
            "merges": m.merges,
            "merged_users": m.merged_users,
            "reclaimed_files": m.reclaimed_files,
            "dead_bytes": sum(f.dead_bytes for f in files),
            "data_files": len(files),
            "max_len": self.max_len,
            "direct_io": self.direct_io,
            "background_error": repr(self.background_error) if self.background_error else None,
            "failure": self._io.failure,
        }
        vectors = self._vectors
        if vectors is not None and not vectors.closed:
            out["vectors"] = vectors.stats()
        return out

    def __repr__(self) -> str:
        return f"SeqVault({str(self.directory)!r}, {self.schema!r}, max_len={self.max_len})"


def _owned(uids: np.ndarray, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Private contiguous copies: the store keeps them (buffer, WAL replay), the caller keeps its own."""
    return np.array(uids, copy=True, order="C"), {k: np.array(v, copy=True, order="C") for k, v in columns.items()}


def as_user_ids(user_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """User ids as uint64, refusing anything that would change a value.

    Plain Python lists get special care: ``np.asarray([0, 2**64 - 1])`` would silently make floats.
    """
    if not isinstance(user_ids, np.ndarray):
        items = list(user_ids)
        if items and all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in items):
            try:
                return np.array(items, dtype=np.uint64)
            except OverflowError:
                bad = next(i for i, x in enumerate(items) if not 0 <= int(x) < 2**64)
                raise SchemaError(f"user id {items[bad]} at row {bad} is out of range for uint64",
                                  field="user_id", row=bad) from None
        user_ids = np.asarray(items) if items else np.empty(0, np.uint64)
    return _cast_integer(user_ids, USER_ID_DTYPE, "user_id")
