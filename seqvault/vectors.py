"""A crash-safe table of fixed-size per-user vectors: the user representations rankers (VISTA,
LLaTTE) precompute and cache. The engine keeps one in ``<store dir>/vectors/``
(:meth:`seqvault.engine.SeqVault.open_vectors`); it also opens on its own. One directory::

    VECTORS           dim, dtype, entry size, format version (JSON + crc32), written once,
                      atomically (temp file, fsync, rename, fsync of the directory)
    slots.dat         fixed-size entries (seqvault.vectorcodec), slot i at byte i * entry_bytes;
                      a user keeps its slot for life, a refresh rewrites it in place
    wal-NNNNNNNN.log  write-ahead log: seqvault.wal framing, records of kind KIND_VECTORS
    LOCK              one writer process, as the engine's

Per user at dim=512: on disk one entry, 1048 bytes (fp16, bf16) or 536 (int8), plus a logged
copy until the next flush. In DRAM one :class:`~seqvault.index.HashIndex` slot (26 bytes at
0.57-0.85 load: 31-46 bytes per user, <= 32 right after an open), mapping user -> slot number
(``offset``) and the stored version (high half in ``length``, low half in ``checksum``), so a put
knows whether it is newer without reading the disk; plus the update buffer (bounded).

``put`` keeps an entry only if its version is greater than the stored one (a refresh that lost a
race must not regress a user), gives new users the next slots, logs entries and slots, fsyncs the
log (``sync=True``), then updates the index and the buffer. ``flush`` fsyncs the log first, so any
slot it tears is covered by a durable record, writes the buffered entries to their slots, fsyncs
``slots.dat``, and only then starts a new log segment and deletes the old ones. The log reuses
``seqvault.wal`` (its framing, torn-tail handling, group commit, rotation) in its own directory,
which the engine never replays.

Open rebuilds the index by scanning ``slots.dat`` and replays the log (a torn tail is cut; damage
with intact records after it refuses to open). A slot failing its checksum is what a crash mid-
flush leaves (a torn rewrite or a torn extension); the log covers it, so it is accepted where a
replayed record rewrites it and is a CorruptionError anywhere else: it held an entry nothing can
restore. All-zero slots past the last valid one were never written and are cut off.

I/O goes through a :class:`~seqvault.fs.FileSystem` and this table's own
:class:`~seqvault.fs.IoGuard`: after a failed fsync every write raises StoreFailedError until the
table is reopened. One lock orders puts, flushes and reads (no read sees a half-rewritten slot).
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from numba import njit

from seqvault._bitpack import checksum32
from seqvault.errors import CorruptionError, SeqVaultError
from seqvault.fs import OS, FileSystem, IoGuard, StoreFailedError
from seqvault.index import HashIndex
from seqvault.manifest import write_atomic
from seqvault.recovery import LOCK_NAME, WalCorruptionError, lock_store, unlock_store
from seqvault.vectorcodec import (
    VECTOR_DTYPES,
    checksums_ok,
    decode_entries,
    decode_log_record,
    encode_entries,
    encode_log_record,
    entry_bytes,
    entry_headers,
)
from seqvault.wal import KIND_VECTORS, WriteAheadLog, list_segments, scan_segment, segment_name

META_NAME = "VECTORS"
SLOTS_NAME = "slots.dat"
FORMAT_NAME = "seqvault-vectors"
FORMAT_VERSION = 1
DEFAULT_BUFFER_BYTES = 8 << 20
_SCAN_SLOTS = 4096  # slots read and checked per step when an open rebuilds the index
_LO32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _checksum_kernel(entries: np.ndarray, length: int) -> np.ndarray:
    n, width = entries.shape
    flat = entries.reshape(-1)
    out = np.empty(n, np.uint32)
    for i in range(n):
        out[i] = np.uint32(checksum32(flat, i * width, i * width + length))
    return out


def entry_checksums(entries: np.ndarray, length: int) -> np.ndarray:
    """The codec's row_checksums, compiled: ~1 us per entry, where NumPy needs ~250 us for a batch of one."""
    return _checksum_kernel(np.ascontiguousarray(entries, dtype=np.uint8), length)


class _TableGuard(IoGuard):
    def error(self) -> StoreFailedError:
        return StoreFailedError(
            f"the vector table at {self.directory} stopped accepting writes after an I/O failure ({self.failure}); "
            "entries acknowledged before it are safe: close the table and reopen it (VectorTable.open or "
            "SeqVault.open_vectors) to recover from its write-ahead log")


class VectorTable:
    """user id -> (version, vector) of one fixed dim and dtype. Create or reopen with :meth:`open`."""

    @classmethod
    def open(cls, directory: str | os.PathLike, dim: int, dtype: str = "fp16", *, fs: FileSystem | None = None,
             create: bool = True, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> VectorTable:
        """Create the table in ``directory`` or reopen it (``dim`` and ``dtype`` must match what is stored).

        ``buffer_bytes`` bounds the update buffer: a put that fills it flushes. ``fs`` is the I/O
        seam (tests pass a simulated disk).
        """
        directory, fs = Path(directory), fs or OS
        width = entry_bytes(dim, dtype)  # checks dim and dtype
        creating = not (directory / META_NAME).exists()
        if creating:
            if not create:
                raise SeqVaultError(f"no vector table at {directory} (create=False)")
            others = {p.name for p in directory.iterdir()} - {LOCK_NAME, META_NAME + ".tmp"} \
                if directory.is_dir() else set()
            if others:
                raise SeqVaultError(f"{directory} is not a vector table (no {META_NAME}, but it holds "
                                    f"{', '.join(sorted(others)[:5])}); pass an empty or new directory")
            directory.mkdir(parents=True, exist_ok=True)
        lock_fd = lock_store(directory, fs)
        try:
            io = _TableGuard(fs, directory)
            if creating:
                io.fsync_dir(directory.parent)  # the table directory's own entry
                write_atomic(directory / META_NAME, _meta_bytes(dim, dtype), io)
            else:
                _check_meta(directory / META_NAME, io, dim, dtype, width)
            return cls(directory, dim, dtype, io, lock_fd, buffer_bytes)
        except BaseException:
            unlock_store(lock_fd, fs)
            raise

    def __init__(self, directory: Path, dim: int, dtype: str, io: IoGuard, lock_fd: int, buffer_bytes: int) -> None:
        self.directory, self.dim, self.dtype = directory, dim, dtype
        self.entry_bytes = entry_bytes(dim, dtype)
        self.buffer_bytes = buffer_bytes
        self._io, self._lock_fd = io, lock_fd
        self._lock = threading.RLock()
        self._closed = False
        self._puts = self._stale = self._flushes = self._flush_failures = 0
        self._last_flush_error: str | None = None
        self._buffer = _UpdateBuffer(self.entry_bytes)
        self._next_slot = 0
        self._wal: WriteAheadLog | None = None
        path = directory / SLOTS_NAME
        existed = path.exists()
        self._fd = io.fs.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not existed:
                io.fsync_dir()
            self.recovery_note = self._recover()
        except BaseException:
            if self._wal is not None:
                self._wal.close(sync=False)
            io.fs.close(self._fd)
            raise

    # -- recovery -------------------------------------------------------------------------------
    def _recover(self) -> str | None:
        file_slots, file_uids, file_versions, bad = self._scan_slots()
        self.index = HashIndex.for_users(len(file_slots))
        self._apply(file_uids, file_versions, file_slots, None)
        payloads, first, last, note = _recover_log(self.directory, self._io)
        targets = [np.empty(0, np.int64)]
        for payload in payloads:
            slots, entries = decode_log_record(payload, self.entry_bytes)
            uids, versions = entry_headers(entries)
            found, held, current = self._lookup(uids)
            pos = np.searchsorted(file_slots, slots).clip(max=max(len(file_slots) - 1, 0))
            taken = (file_slots[pos] == slots) & (file_uids[pos] != uids) if len(file_slots) else found & False
            if (found & (held != slots)).any() or taken.any():
                raise CorruptionError("the vector write-ahead log and slots.dat disagree on which slot holds a user",
                                      path=str(self.directory / SLOTS_NAME))
            newer = ~found | (versions > current)
            self._apply(uids[newer], versions[newer], slots[newer], entries[newer])
            targets.append(slots)
        covered = np.concatenate(targets)
        lost = bad[~np.isin(bad, covered)]
        if len(lost):
            slot = int(lost[0])
            entry = self._pread(slot, 1)
            raise CorruptionError(f"{len(lost)} slot(s) of the vector table fail their checksum and no log record "
                                  "rewrites them; restore the table or delete it to rebuild the cache",
                                  path=str(self.directory / SLOTS_NAME), offset=slot * self.entry_bytes,
                                  user_id=int(entry_headers(entry)[0][0]))
        size = os.fstat(self._fd).st_size
        if size > self._next_slot * self.entry_bytes:  # never-written zeros, a partial slot
            self._io.fs.ftruncate(self._fd, self._next_slot * self.entry_bytes)
            self._io.fsync(self._fd, SLOTS_NAME)
        self._wal = WriteAheadLog(self.directory, last, self._io, first_segment=first)
        return note

    def _scan_slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(slots, user ids, versions) of valid entries, and the slots that hold something invalid."""
        n = os.fstat(self._fd).st_size // self.entry_bytes
        parts: list[tuple[np.ndarray, ...]] = []
        for start in range(0, n, _SCAN_SLOTS):
            chunk = self._pread(start, min(_SCAN_SLOTS, n - start))
            ok = checksums_ok(chunk, self.dim, self.dtype, checksum=entry_checksums)
            zero = ~chunk.any(axis=1)
            parts.append((np.flatnonzero(ok) + start, *entry_headers(chunk[ok]), np.flatnonzero(~ok) + start,
                          np.flatnonzero(zero) + start))
        if not parts:
            empty = np.empty(0, np.int64)
            return empty, empty.astype(np.uint64), empty.astype(np.uint64), empty
        slots, uids, versions, invalid, zero = (np.concatenate(col) for col in zip(*parts, strict=True))
        last = int(slots[-1]) if len(slots) else -1
        bad = invalid[(invalid < last) | ~np.isin(invalid, zero)]  # zeros past the last entry: never written
        uniq, counts = np.unique(uids, return_counts=True)
        if (counts > 1).any():
            raise CorruptionError("a user holds two slots in the vector table", path=str(self.directory / SLOTS_NAME),
                                  user_id=int(uniq[counts > 1][0]))
        return slots, uids, versions, bad

    # -- writing ----------------------------------------------------------------------------------
    def put(self, user_ids: np.ndarray | Sequence[int], versions: np.ndarray | Sequence[int],
            vectors: np.ndarray, *, sync: bool = True) -> int:
        """Store vectors whose version is greater than the stored one; returns how many were applied.

        Of duplicates of a user within the batch the highest version is kept (the last of equals).
        With ``sync=True`` the batch is fsynced to the log before this returns; without, it is in
        the page cache (safe from a process crash, not from a power cut). A put that fills the
        update buffer flushes it.
        """
        uids, vers = _as_u64(user_ids, "user_ids"), _as_u64(versions, "versions")
        vecs = np.asarray(vectors, dtype=np.float32)
        if len(vers) != len(uids) or vecs.shape != (len(uids), self.dim):
            raise SeqVaultError(f"put needs n user ids, n versions and (n, {self.dim}) vectors; got {len(uids)}, "
                                f"{len(vers)} and {vecs.shape}")
        self._check_open()
        n = len(uids)
        if not n:
            return 0
        keep = _newest_per_user(uids, vers)
        uids, vers = uids[keep], vers[keep]
        entries = encode_entries(uids, vers, vecs[keep], self.dtype, checksum=entry_checksums)
        with self._lock:
            self._check_writable()
            found, slots, current = self._lookup(uids)
            newer = np.flatnonzero(~found | (vers > current))
            self._puts += n
            self._stale += n - len(newer)  # older or equal versions, and duplicates the batch superseded
            if not len(newer):
                return 0
            slots, fresh = slots[newer], ~found[newer]
            slots[fresh] = self._next_slot + np.arange(int(fresh.sum()))
            entries = entries[newer]
            lsn = self._wal.append(KIND_VECTORS, encode_log_record(slots, entries))
            self._apply(uids[newer], vers[newer], slots, entries)
            full = self._buffer.held >= self.buffer_bytes
        if sync:
            self._wal.sync(lsn)
        if full:
            # The batch is logged and applied: it is stored whatever the flush does, so a failed
            # background flush must not make the caller retry (a retry would be ignored as stale).
            # The entries stay buffered; stats() reports the failure and an explicit flush() raises it.
            try:
                self.flush()
            except SeqVaultError as e:
                with self._lock:
                    self._flush_failures += 1
                    self._last_flush_error = str(e)
        return len(newer)

    def _apply(self, uids: np.ndarray, versions: np.ndarray, slots: np.ndarray, entries: np.ndarray | None) -> None:
        self.index.upsert(uids, 0, slots, versions >> np.uint64(32), 0, versions & _LO32)
        if entries is not None:
            self._buffer.add(slots, entries)
        if len(slots):
            self._next_slot = max(self._next_slot, int(slots.max()) + 1)

    def flush(self) -> None:
        """Write buffered entries to their slots, fsync them, then drop the log they came from."""
        with self._lock:
            self._check_writable()
            if not len(self._buffer) and not self._wal.segment_bytes():
                return
            self._wal.sync()  # the log first: a crash tearing a slot below leaves a record that rewrites it
            slots, entries = self._buffer.by_slot()
            try:
                for a, b in _runs(slots):  # one pwrite per run of adjacent slots
                    self._io.pwrite_all(self._fd, entries[a:b], int(slots[a]) * self.entry_bytes)
            except OSError as e:
                raise SeqVaultError(f"writing {SLOTS_NAME} failed ({e}); the entries stay buffered and logged: "
                                    "flush again later") from e
            self._io.fsync(self._fd, SLOTS_NAME)
            self._wal.drop_segments(self._wal.rotate())
            self._buffer.clear()
            self._flushes += 1
            self._last_flush_error = None

    # -- reading ----------------------------------------------------------------------------------
    def get_entries(self, user_ids: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(found bool[n], entries uint8[n, entry_bytes]): the encoded entries a storage node sends
        on the wire (decode with :func:`seqvault.vectorcodec.decode_entries`); zero rows where not found."""
        uids = _as_u64(user_ids, "user_ids")
        with self._lock:
            self._check_open()
            found, slots, _ = self._lookup(uids)
            out = np.zeros((len(uids), self.entry_bytes), np.uint8)
            rows = self._buffer.find(slots)
            buffered = found & (rows >= 0)
            out[buffered] = self._buffer.take(rows[buffered])
            on_disk = found & ~buffered
            if on_disk.any():
                out[on_disk] = self._read_slots(slots[on_disk], uids[on_disk])
        return found, out

    def get(self, user_ids: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found bool[n], versions uint64[n], vectors float32[n, dim]); zeros where not found."""
        found, entries = self.get_entries(user_ids)
        versions = np.zeros(len(found), np.uint64)
        vectors = np.zeros((len(found), self.dim), np.float32)
        if found.any():  # checked by get_entries (disk) or encoded here (buffer)
            _, versions[found], vectors[found] = decode_entries(entries[found], self.dim, self.dtype, verify=False)
        return found, versions, vectors

    def _read_slots(self, slots: np.ndarray, uids: np.ndarray) -> np.ndarray:
        """Entries of the given slots, one preadv per run of adjacent slots, checked against their users."""
        uniq, first, inverse = np.unique(slots, return_index=True, return_inverse=True)
        out = np.empty((len(uniq), self.entry_bytes), np.uint8)
        for a, b in _runs(uniq):
            self._pread(int(uniq[a]), b - a, out[a:b])
        ok = checksums_ok(out, self.dim, self.dtype, checksum=entry_checksums) & (entry_headers(out)[0] == uids[first])
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise CorruptionError("vector entry failed its checksum (or holds another user)",
                                  path=str(self.directory / SLOTS_NAME), offset=int(uniq[bad]) * self.entry_bytes,
                                  user_id=int(uids[first[bad]]))
        return out[inverse.reshape(-1)]

    def _pread(self, slot: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty((count, self.entry_bytes), np.uint8) if out is None else out
        view, offset, done = memoryview(out).cast("B"), slot * self.entry_bytes, 0
        while done < len(view):
            n = self._io.fs.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise CorruptionError("slots.dat is shorter than the index says", path=str(self.directory / SLOTS_NAME),
                                      offset=offset + done)
            done += n
        return out

    def _lookup(self, uids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found, slot, stored version) per user, from the index alone."""
        e = self.index.lookup(uids)
        versions = (e.length.astype(np.uint64) << np.uint64(32)) | e.checksum.astype(np.uint64)
        return np.asarray(e.found, bool), e.offset.astype(np.int64), versions

    # -- accounting, lifecycle ----------------------------------------------------------------------
    def disk_bytes(self) -> int:
        """Bytes on disk: slots.dat, the log, the metadata file."""
        with self._lock:
            self._check_open()
            return os.fstat(self._fd).st_size + self._wal.segment_bytes() + (self.directory / META_NAME).stat().st_size

    def stats(self) -> dict:
        """Plain-dict (JSON-serialisable) figures about the table."""
        with self._lock:
            self._check_open()
            users = len(self.index)
            return {
                "users": users, "dim": self.dim, "dtype": self.dtype, "entry_bytes": self.entry_bytes,
                "bytes_per_user": self.entry_bytes,  # one slot each in slots.dat (the log is transient)
                "disk_bytes": self.disk_bytes(), "index_bytes": int(self.index.nbytes),
                "index_bytes_per_user": self.index.nbytes / users if users else None,
                "buffered_entries": len(self._buffer), "buffer_bytes": self._buffer.nbytes,
                "puts": self._puts, "stale_puts_ignored": self._stale, "flushes": self._flushes,
                "flush_failures": self._flush_failures, "last_flush_error": self._last_flush_error,
                "failure": self._io.failure,
            }

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failure(self) -> str | None:
        """Why the table fail-stopped (None while it accepts writes)."""
        return self._io.failure

    def close(self) -> None:
        """Flush (unless fail-stopped: then nothing more is written), close the log, release the lock."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._io.failure is None:
                    self.flush()
            finally:
                self._release(sync=self._io.failure is None)

    def _abandon(self) -> None:
        """Drop the table as a crash would (no flush, no fsync); for tests of recovery."""
        with self._lock:
            if not self._closed:
                self._release(sync=False)

    def _release(self, sync: bool) -> None:
        self._closed = True
        try:
            self._wal.close(sync=sync)
        finally:
            self._io.fs.close(self._fd)
            unlock_store(self._lock_fd, self._io.fs)

    def _check_open(self) -> None:
        if self._closed:
            raise SeqVaultError(f"the vector table at {self.directory} is closed; reopen it")

    def _check_writable(self) -> None:
        self._check_open()
        self._io.check_writable()

    def __enter__(self) -> VectorTable:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VectorTable({str(self.directory)!r}, dim={self.dim}, dtype={self.dtype!r})"


class _UpdateBuffer:
    """Entries put since the last flush: rows appended to a growing array, and a HashIndex from
    slot to its newest row (a refresh of a buffered slot appends; the row it replaces stays dead
    until the flush). Every operation costs O(batch), never a copy of the buffer."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.clear()

    def clear(self) -> None:
        self._rows = HashIndex(64)
        self._entries = np.empty((64, self.width), np.uint8)
        self._n = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def held(self) -> int:
        """Bytes of entries appended since the last flush (what ``buffer_bytes`` bounds)."""
        return self._n * self.width

    @property
    def nbytes(self) -> int:
        return self._entries.nbytes + self._rows.nbytes

    def add(self, slots: np.ndarray, entries: np.ndarray) -> None:
        """Make ``entries`` the buffered entries of ``slots`` (distinct)."""
        end = self._n + len(slots)
        if end > len(self._entries):
            grown = np.empty((max(end, 2 * len(self._entries)), self.width), np.uint8)
            grown[:self._n] = self._entries[:self._n]
            self._entries = grown
        self._entries[self._n:end] = entries
        self._rows.upsert(slots, 0, np.arange(self._n, end), 0, 0, 0)
        self._n = end

    def find(self, slots: np.ndarray) -> np.ndarray:
        """Buffer row of each slot, -1 where it is not buffered."""
        e = self._rows.lookup(slots)
        return np.where(e.found, e.offset, -1)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self._entries[rows]

    def by_slot(self) -> tuple[np.ndarray, np.ndarray]:
        """(slots ascending, their newest entries): what a flush writes."""
        e = self._rows.entries()
        order = np.argsort(e.user_id)
        return e.user_id[order].astype(np.int64), self._entries[e.offset[order]]


# -- helpers --------------------------------------------------------------------------------------
def _as_u64(values: np.ndarray | Sequence[int], name: str) -> np.ndarray:
    """Whole numbers as uint64, refusing anything that would change a value (negative, float, too big)."""
    if not isinstance(values, np.ndarray):
        items = list(values)
        try:
            values = np.array(items, dtype=np.uint64) if all(
                isinstance(x, int | np.integer) and not isinstance(x, bool) for x in items) else np.asarray(items)
        except OverflowError:
            raise SeqVaultError(f"{name} holds a value outside uint64") from None
    if values.ndim > 1:
        raise SeqVaultError(f"{name} must be one-dimensional, got shape {values.shape}")
    arr = values.reshape(-1)
    if not len(arr):
        return np.empty(0, np.uint64)
    if arr.dtype.kind not in "iu":
        raise SeqVaultError(f"{name} must be whole numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        raise SeqVaultError(f"{name} must be >= 0, got {int(arr.min())}")
    return arr.astype(np.uint64)


def _runs(sorted_slots: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) row ranges of runs of adjacent slots (one I/O call each)."""
    if not len(sorted_slots):
        return []
    breaks = (np.flatnonzero(np.diff(sorted_slots) != 1) + 1).tolist()
    return list(zip([0, *breaks], [*breaks, len(sorted_slots)], strict=True))


def _newest_per_user(uids: np.ndarray, versions: np.ndarray) -> np.ndarray:
    """Row of each distinct user with its highest version (the last of equal ones)."""
    order = np.lexsort((np.arange(len(uids)), versions, uids))
    s = uids[order]
    return order[np.append(s[1:] != s[:-1], True)]


def _recover_log(directory: Path, io: IoGuard) -> tuple[list[memoryview], int, int, str | None]:
    """(record payloads, first segment, last segment, note): cut a torn tail, refuse mid-log damage."""
    segments = list_segments(directory)
    scans = [scan_segment(directory / segment_name(s), data=io.fs.read_file(directory / segment_name(s)))
             for s in segments]
    notes = []
    for i, (seg, scan) in enumerate(zip(segments, scans, strict=True)):
        if not scan.torn:
            continue
        path = directory / segment_name(seg)
        if scan.intact_after or any(s.records for s in scans[i + 1:]):
            raise WalCorruptionError(f"the vector table's write-ahead log is damaged in the middle ({scan.problem}), "
                                     "not torn at its end by a crash; nothing was changed: restore the table or "
                                     "delete it to rebuild the cache", path=str(path), offset=scan.valid_end)
        fd = io.fs.open(path, os.O_RDWR)
        try:
            io.fs.ftruncate(fd, scan.valid_end)
            io.fsync(fd, path.name)
        finally:
            io.fs.close(fd)
        notes.append(f"{path.name}: {scan.problem}; cut {scan.size - scan.valid_end} bytes (torn tail)")
    payloads = []
    for scan in scans:
        for kind, payload, _ in scan.records:
            if kind != KIND_VECTORS:
                raise CorruptionError(f"record of kind {kind} in a vector table's log", path=str(directory))
            payloads.append(payload)
    first, last = (segments[0], segments[-1]) if segments else (1, 1)
    return payloads, first, last, "; ".join(notes) or None


def _meta_bytes(dim: int, dtype: str) -> bytes:
    body = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "dim": dim, "dtype": dtype,
            "entry_bytes": entry_bytes(dim, dtype)}
    text = json.dumps(body, sort_keys=True)
    return json.dumps({"crc32": zlib.crc32(text.encode()), "body": body}, sort_keys=True, indent=1).encode()


def _check_meta(path: Path, io: IoGuard, dim: int, dtype: str, width: int) -> None:
    try:
        outer = json.loads(io.fs.read_file(path))
        body = outer["body"]
        ok = zlib.crc32(json.dumps(body, sort_keys=True).encode()) == outer["crc32"]
        stored = (int(body["dim"]), str(body["dtype"]), int(body["entry_bytes"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptionError(f"vector table metadata is unreadable ({e})", path=str(path)) from e
    if not ok or body.get("format") != FORMAT_NAME or body.get("version") != FORMAT_VERSION:
        raise CorruptionError("not vector table metadata of a version this code reads (or its checksum fails)",
                              path=str(path))
    if stored != (dim, dtype, width):
        raise SeqVaultError(f"the vector table at {path.parent} stores dim={stored[0]} {stored[1]} vectors "
                            f"({stored[2]}-byte entries), but dim={dim} {dtype} was asked for; open it with the "
                            "stored dim and dtype, or use another directory")


__all__ = ["DEFAULT_BUFFER_BYTES", "META_NAME", "SLOTS_NAME", "VECTOR_DTYPES", "VectorTable"]
