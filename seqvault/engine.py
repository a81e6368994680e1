"""SeqVault: each user's newest ``max_len`` events, DRAM hash index + packed records on SSD.

Reads are one hash lookup and one ``pread`` per user, merged with the in-memory update buffer.
Writes go to the WAL and the buffer; :mod:`seqvault.jobs` folds the buffer into new records
(sequence-level merge) and copies live records out of mostly-dead files (reclamation).

Locks, outermost first: ``_job_lock`` (merges, reclamation, bulk loads, deletes: anything that
changes the index), ``_append_lock`` (a WAL write and its buffer insert happen together, so a
buffer swap and WAL rotation can never split them), ``_state_lock`` (held only briefly: readers
snapshot index entries and buffer views under it, jobs publish under it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from seqvault import recovery
from seqvault.buffer import BufferView, UpdateBuffer
from seqvault.codec import decode_record, decode_records
from seqvault.datafile import DataFile
from seqvault.errors import CorruptionError, SeqVaultError
from seqvault.index import HashIndex
from seqvault.manifest import Manifest, read_snapshot
from seqvault.policy import MergePolicy
from seqvault.schema import USER_ID_DTYPE, Schema, SchemaError, _cast_integer
from seqvault.seqmerge import csr_concat_groups, csr_take, newest_per_group, overlay_buffered
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
             direct_io: bool = False, merge_policy: MergePolicy | None = None, create: bool = True) -> SeqVault:
        """Create a store at ``path`` (needs ``schema``) or reopen one (schema read from its manifest).

        ``max_len`` defaults to 1000 on create; on reopen a given value must match the stored one.
        """
        directory = Path(path)
        must_create = recovery.prepare_directory(directory, schema, max_len, create)
        lock_fd = recovery.lock_store(directory)
        try:
            return cls(directory, lock_fd, schema, max_len, must_create, direct_io,
                       merge_policy or MergePolicy())
        except BaseException:
            recovery.unlock_store(lock_fd)
            raise

    def __init__(self, directory: Path, lock_fd: int, schema: Schema | None, max_len: int | None,
                 create: bool, direct_io: bool, policy: MergePolicy) -> None:
        self.directory = directory
        self.direct_io = direct_io
        self.policy = policy
        self._lock_fd = lock_fd
        self._job_lock = threading.RLock()
        self._append_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self.background_error: BaseException | None = None
        if create:
            assert schema is not None
            manifest = recovery.initial_manifest(schema, max_len or DEFAULT_MAX_LEN)
            manifest.write(directory)
        else:
            manifest = Manifest.load(directory)
            schema = recovery.check_reopen(manifest, directory, schema, max_len)
        self.schema: Schema = schema
        self.max_len: int = manifest.max_len
        self.manifest = manifest
        self.index = HashIndex()
        if manifest.index_file:
            snap = read_snapshot(directory / manifest.index_file)
            # Packed as from_entries packs (<= 32 B/user); 2x the users would cost 52 B/user.
            self.index = HashIndex.for_users(len(snap["user_id"]))
            self.index.upsert(snap["user_id"], snap["file_id"], snap["offset"], snap["length"],
                              snap["count"], snap["checksum"])
        self.files: dict[int, DataFile] = recovery.open_data_files(directory, manifest, direct_io)
        self.active = UpdateBuffer(self.schema)
        self.frozen: UpdateBuffer | None = None  # the buffer a running (or failed) merge consumes
        self._frozen_until = manifest.wal_start  # first WAL segment not covered by ``frozen``
        try:
            wal_state = recovery.recover_wal(directory, manifest)
            self.recovery_note = wal_state.cut
            for kind, payload in iter_records(wal_state.scans):
                if kind == KIND_APPEND:
                    self.active.add(*decode_append(payload, self.schema))
                elif kind == KIND_DELETE:
                    self._apply_delete(decode_delete(payload))
            self.wal = WriteAheadLog(directory, wal_state.last_segment)
        except BaseException:
            for f in self.files.values():
                f.retire(unlink=False)
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if policy.background:
            self._thread = threading.Thread(target=self._background_loop, name="seqvault-maintain", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop background work, fsync the WAL, release the store. Buffered events stay in the WAL."""
        if self._closed:
            return
        self._stop_background()
        with self._job_lock:
            self.wal.close(sync=True)
            self._release()

    def _abandon(self) -> None:
        """Drop the instance as a crash would (no fsync, no merge); for tests of recovery."""
        if self._closed:
            return
        self._stop_background()
        self.wal.close(sync=False)
        self._release()

    def _release(self) -> None:
        for f in self.files.values():
            f.retire(unlink=False)
        recovery.unlock_store(self._lock_fd)
        self._closed = True

    def __enter__(self) -> SeqVault:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SeqVaultError(f"the store at {self.directory} is closed; reopen it with SeqVault.open")

    # -- writing ------------------------------------------------------------------------------
    def append(self, user_ids: np.ndarray | Sequence[int], columns: Mapping[str, np.ndarray | Sequence[int]],
               sync: bool = False) -> None:
        """Add a batch of events for any users. Validated first: a bad batch writes nothing.

        With ``sync=True`` this returns only after the WAL record is fsynced (concurrent syncing
        callers share fsyncs); otherwise it is in the OS page cache, safe against a process crash.
        """
        self._check_open()
        uids, cols = self.schema.validate(as_user_ids(user_ids), columns)
        if len(uids) == 0:
            return
        uids = np.ascontiguousarray(uids)
        cols = {k: np.ascontiguousarray(v) for k, v in cols.items()}
        with self._append_lock:
            self._check_open()
            lsn = self.wal.append(KIND_APPEND, encode_append(uids, cols, self.schema))
            self.active.add(uids, cols)
        if sync:
            self.wal.sync(lsn)

    def delete(self, user_ids: np.ndarray | Sequence[int], sync: bool = True) -> None:
        """Remove users entirely (privacy requests). Durable (fsynced) on return unless ``sync=False``."""
        self._check_open()
        uids = np.unique(as_user_ids(user_ids))
        if len(uids) == 0:
            return
        with self._job_lock, self._append_lock:
            self._check_open()
            lsn = self.wal.append(KIND_DELETE, encode_delete(uids))
            with self._state_lock:
                self._apply_delete(uids)
        if sync:
            self.wal.sync(lsn)

    def _apply_delete(self, uids: np.ndarray) -> None:
        entries = self.index.lookup(uids)
        found = np.asarray(entries.found, bool)
        for fid, length in zip(np.asarray(entries.file_id)[found], np.asarray(entries.length)[found],
                               strict=True):
            self.files[int(fid)].dead_bytes += int(length)
        self.index.delete(uids)
        self.active.remove_users(uids)
        if self.frozen is not None:
            self.frozen.remove_users(uids)

    def flush(self) -> None:
        """Make every acknowledged append and delete durable (fsync the WAL)."""
        self._check_open()
        self.wal.sync()

    # -- reading ------------------------------------------------------------------------------
    def _read_fields(self, fields: Sequence[str] | None) -> tuple[list[str], list[str]]:
        want = list(self.schema.names) if fields is None else [self.schema.field(f).name for f in fields]
        need = want if self.schema.time_field in want else [*want, self.schema.time_field]
        return want, need

    def _keep(self, last_n: int | None) -> int:
        if last_n is None:
            return self.max_len
        if last_n < 0:
            raise SeqVaultError(f"last_n must be >= 0, got {last_n}")
        return min(int(last_n), self.max_len)

    def _views(self) -> list[BufferView]:
        return [b.view() for b in (self.frozen, self.active) if b is not None and b.events]

    def get(self, user_id: int, last_n: int | None = None, fields: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
        """One user's newest events (at most ``last_n``), oldest first, as field name -> array."""
        self._check_open()
        want, need = self._read_fields(fields)
        keep = self._keep(last_n)
        uid = int(as_user_ids([user_id])[0])
        with self._state_lock:
            entry = self.index.get(uid)
            dfile = self.files[int(entry.file_id)] if entry is not None else None
            if dfile is not None:
                dfile.acquire()
            views = self._views()
        disk = None
        if dfile is not None and keep > 0:
            try:
                raw = dfile.read(int(entry.offset), int(entry.length))
            finally:
                dfile.release()
            disk = decode_record(raw, self.schema, fields=need, last_n=keep, path=str(dfile.path),
                                 offset=int(entry.offset), expect_user=uid)
        elif dfile is not None:
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
        self._check_open()
        want, need = self._read_fields(fields)
        keep = self._keep(last_n)
        uids = as_user_ids(user_ids)
        # One user (a ranking request): get's scalar path skips the batch machinery (~3x faster).
        if len(uids) == 1 and (fields is None or len(fields)):
            one = self.get(int(uids[0]), last_n, fields)
            return np.array([0, len(next(iter(one.values())))], np.int64), one
        order = np.argsort(uids, kind="stable")
        sorted_uids = uids[order]
        if len(uids) > 1 and (sorted_uids[1:] == sorted_uids[:-1]).any():
            uniq, inverse = np.unique(uids, return_inverse=True)
            offsets, cols = self.get_many(uniq, last_n, fields)
            return csr_take(offsets, cols, inverse.ravel())
        n = len(uids)
        with self._state_lock:
            entries = self.index.lookup(uids)
            found = np.flatnonzero(np.asarray(entries.found, bool))
            file_ids = np.asarray(entries.file_id)[found]
            held = {int(f): self.files[int(f)] for f in np.unique(file_ids)}
            for f in held.values():
                f.acquire()
            views = self._views()
        try:
            disk_offsets, disk_cols = self._read_records(
                held, file_ids, np.asarray(entries.offset)[found], np.asarray(entries.length)[found], need, keep)
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

    def _read_records(self, held: dict[int, DataFile], file_ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                      fields: list[str], keep: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Read records (one pread each) into one buffer and decode them with one batch call."""
        rec_offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=rec_offsets[1:])
        if keep == 0 or len(lengths) == 0:
            return np.zeros(len(lengths) + 1, np.int64), self.schema.empty_columns(fields)
        buf = np.empty(int(rec_offsets[-1]), np.uint8)
        for i in range(len(lengths)):
            held[int(file_ids[i])].read_into(buf[rec_offsets[i]:rec_offsets[i + 1]], int(offsets[i]))
        try:
            # decode_records takes each record's start offset (n entries, not n + 1).
            return decode_records(buf, rec_offsets[:-1], self.schema, fields=fields, last_n=keep)
        except CorruptionError:
            # Name the file and file offset of the first bad record, not a position in our buffer.
            for i in range(len(lengths)):
                f = held[int(file_ids[i])]
                decode_record(buf[rec_offsets[i]:rec_offsets[i + 1]], self.schema, fields=fields,
                              last_n=keep, path=str(f.path), offset=int(offsets[i]))
            raise

    # -- jobs (see seqvault.jobs) -------------------------------------------------------------
    def merge(self) -> int:
        """Fold every buffered event into new on-disk records now; returns how many users were merged."""
        from seqvault import jobs
        self._check_open()
        return jobs.merge(self)

    def reclaim(self, live_fraction: float | None = None) -> int:
        """Copy live records out of files whose live fraction is below the threshold; returns files freed."""
        from seqvault import jobs
        self._check_open()
        return jobs.reclaim(self, self.policy.reclaim_live_fraction if live_fraction is None else live_fraction)

    def bulk_load(self, user_ids: np.ndarray | Sequence[int],
                  columns: Mapping[str, np.ndarray | Sequence[int]]) -> int:
        """Backfill: write records straight to data files (no WAL), keeping each user's newest
        ``max_len`` merged with what is stored; durable on return. Returns users written."""
        from seqvault import jobs
        self._check_open()
        uids, cols = self.schema.validate(as_user_ids(user_ids), columns)
        return jobs.bulk_load(self, uids, cols)

    def merge_pending(self) -> int:
        """Users with buffered (not yet merged) events."""
        views = self._views()
        if not views:
            return 0
        return len(np.unique(np.concatenate([v.users() for v in views])))

    def maintain(self) -> bool:
        """Run the merge / reclamation policy once if due; returns whether it did any work."""
        from seqvault import jobs
        self._check_open()
        return jobs.maintain(self)

    def _background_loop(self) -> None:
        while not self._stop.wait(self.policy.interval_s):
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
        s = self._disk_parts()
        return s["data_bytes"] + s["wal_bytes"] + s["index_snapshot_bytes"]

    def _disk_parts(self) -> dict[str, int]:
        data = sum(f.size for f in self.files.values())
        wal = sum(p.stat().st_size for p in self.directory.glob("wal-*.log"))
        snap = self.manifest.index_file
        snap_bytes = (self.directory / snap).stat().st_size if snap else 0
        return {"data_bytes": data, "wal_bytes": wal, "index_snapshot_bytes": snap_bytes}

    def stats(self) -> dict:
        """Plain-dict (JSON-serialisable) figures about the store."""
        self._check_open()
        with self._state_lock:
            entries = self.index.entries()
            views = self._views()
            index_bytes = int(self.index.nbytes)
            buffer_bytes = self.active.nbytes + (self.frozen.nbytes if self.frozen else 0)
        buffered_users = [v.users() for v in views]
        users = np.union1d(np.asarray(entries.user_id), np.concatenate(buffered_users)) if buffered_users \
            else np.asarray(entries.user_id)
        buffered = sum(v.events for v in views)
        parts = self._disk_parts()
        m = self.manifest
        return {
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
            "dead_bytes": sum(f.dead_bytes for f in self.files.values()),
            "data_files": len(self.files),
            "max_len": self.max_len,
            "direct_io": self.direct_io,
            "background_error": repr(self.background_error) if self.background_error else None,
        }

    def __repr__(self) -> str:
        return f"SeqVault({str(self.directory)!r}, {self.schema!r}, max_len={self.max_len})"


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
