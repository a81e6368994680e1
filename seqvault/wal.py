"""Write-ahead log: numbered append-only segments of checksummed records, with group commit.

A record is ``header (magic, kind, payload length) + payload + crc32(header + payload)``. On
recovery a record is applied only if it is complete and its crc matches. Damage at the end of the
newest segment is a torn tail (a crash mid-write) and is cut; damage with intact records after it
is mid-log corruption, which refuses to open unless the caller asks to salvage.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqvault.errors import SeqVaultError
from seqvault.fs import IoGuard
from seqvault.killpoints import kill_point
from seqvault.schema import Schema

log = logging.getLogger("seqvault")

WAL_MAGIC = 0x4C415753  # "SWAL" little-endian
KIND_APPEND = 1
KIND_DELETE = 2
KIND_VECTORS = 3  # a batch of vector-table entries (seqvault.vectors; its own log, never the engine's)
RECORD_KINDS = (KIND_APPEND, KIND_DELETE, KIND_VECTORS)
_HEADER = struct.Struct("<IBxxxQ")  # magic, kind, payload length
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size
_MAGIC_BYTES = struct.pack("<I", WAL_MAGIC)
RECORD_OVERHEAD = HEADER_SIZE + _CRC.size


def segment_name(segment_id: int) -> str:
    return f"wal-{segment_id:08d}.log"


def list_segments(directory: Path) -> list[int]:
    ids = []
    for p in directory.glob("wal-*.log"):
        try:
            ids.append(int(p.name[4:-4]))
        except ValueError:
            continue
    return sorted(ids)


# -- payloads ----------------------------------------------------------------------------------
def encode_append(uids: np.ndarray, columns: dict[str, np.ndarray], schema: Schema) -> list[bytes | memoryview]:
    parts: list[bytes | memoryview] = [struct.pack("<Q", len(uids)), memoryview(np.ascontiguousarray(uids))]
    parts += [memoryview(np.ascontiguousarray(columns[name])).cast("B") for name in schema.names]
    return parts


def decode_append(payload: memoryview, schema: Schema) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    (n,) = struct.unpack_from("<Q", payload, 0)
    pos = 8
    expected = 8 + n * (8 + schema.row_bytes)
    if len(payload) != expected:
        raise SeqVaultError(f"WAL append record holds {len(payload)} bytes, expected {expected} for {n} events; "
                            "the store's schema does not match the log")
    uids = np.frombuffer(payload, dtype=np.uint64, count=n, offset=pos).copy()
    pos += 8 * n
    cols = {}
    for f in schema.fields:
        cols[f.name] = np.frombuffer(payload, dtype=f.np_dtype, count=n, offset=pos).copy()
        pos += n * f.np_dtype.itemsize
    return uids, cols


def encode_delete(uids: np.ndarray) -> list[bytes | memoryview]:
    return [struct.pack("<Q", len(uids)), memoryview(np.ascontiguousarray(uids, dtype=np.uint64))]


def decode_delete(payload: memoryview) -> np.ndarray:
    (n,) = struct.unpack_from("<Q", payload, 0)
    if len(payload) != 8 + 8 * n:
        raise SeqVaultError(f"WAL delete record holds {len(payload)} bytes, expected {8 + 8 * n}")
    return np.frombuffer(payload, dtype=np.uint64, count=n, offset=8).copy()


# -- reading -----------------------------------------------------------------------------------
@dataclass
class SegmentScan:
    """The valid records of one segment and where the valid prefix ends."""

    records: list[tuple[int, memoryview, int]]  # (kind, payload, end offset)
    valid_end: int
    size: int
    problem: str | None  # why the scan stopped before the end of the file, if it did
    intact_after: int = 0  # intact records found past the damage (0: a torn tail, not mid-log damage)
    dropped: list[tuple[int, int]] = field(default_factory=list)  # salvage: (offset, bytes) skipped

    @property
    def torn(self) -> bool:
        return self.valid_end < self.size


def scan_segment(path: Path, *, salvage: bool = False, data: bytes | None = None) -> SegmentScan:
    return scan_bytes(memoryview(path.read_bytes() if data is None else data), salvage=salvage)


def _record_at(data: memoryview, pos: int) -> tuple[int, int, str | None]:
    """(kind, end, problem) of the record starting at ``pos``; problem is None when it is intact."""
    size = len(data)
    if size - pos < RECORD_OVERHEAD:
        return 0, size, f"incomplete record header at byte {pos}"
    magic, kind, length = _HEADER.unpack_from(data, pos)
    if magic != WAL_MAGIC or kind not in RECORD_KINDS:
        return 0, size, f"bad record magic or kind at byte {pos}"
    end = pos + HEADER_SIZE + length + _CRC.size
    if end > size:
        return 0, size, f"record at byte {pos} runs past the end of the file (torn write)"
    (crc,) = _CRC.unpack_from(data, end - _CRC.size)
    if zlib.crc32(data[pos:end - _CRC.size]) != crc:
        return 0, size, f"checksum mismatch in record at byte {pos}"
    return kind, end, None


def _next_intact(data: memoryview, start: int) -> int:
    """Offset of the first intact record after ``start`` (found by its magic), or -1."""
    raw = data.obj if isinstance(data.obj, bytes) else bytes(data)
    pos = start
    while True:
        pos = raw.find(_MAGIC_BYTES, pos + 1)
        if pos < 0 or _record_at(data, pos)[2] is None:
            return pos


def scan_bytes(data: memoryview, *, salvage: bool = False) -> SegmentScan:
    """Read records up to the first damaged one; then look for intact records past it.

    Damage with nothing intact after it is a torn tail (what a crash leaves). Intact records after
    damage mean the middle of the log is bad: ``intact_after`` counts them, and with ``salvage``
    they are kept (each damaged stretch skipped and listed in ``dropped``).
    """
    records: list[tuple[int, memoryview, int]] = []
    pos, size = 0, len(data)
    problem, valid_end, intact_after = None, None, 0
    dropped: list[tuple[int, int]] = []
    while pos < size:
        kind, end, why = _record_at(data, pos)
        if why is not None:
            nxt = _next_intact(data, pos)
            if valid_end is None:
                problem, valid_end = why, pos
            if nxt < 0:
                if intact_after:
                    dropped.append((pos, size - pos))
                break
            dropped.append((pos, nxt - pos))
            if not salvage:
                intact_after = _count_intact(data, nxt)
                break
            pos = nxt
            continue
        if valid_end is not None:
            intact_after += 1
        records.append((kind, data[pos + HEADER_SIZE:end - _CRC.size], end))
        pos = end
    if valid_end is None:
        valid_end = pos
    if not intact_after:
        dropped = []
    return SegmentScan(records, valid_end, size, problem, intact_after, dropped)


def _count_intact(data: memoryview, pos: int) -> int:
    """Intact records from ``pos`` (an intact one) to the end, skipping any further damage."""
    count = 0
    while 0 <= pos < len(data):
        _, end, why = _record_at(data, pos)
        if why is None:
            count += 1
            pos = end
        else:
            pos = _next_intact(data, pos)
    return count


# -- writing -----------------------------------------------------------------------------------
class WriteAheadLog:
    """The writer side: appends records to the current segment; ``sync`` shares fsyncs (group commit).

    Segment sizes are kept here (the log is their only writer), so accounting never lists the
    directory while a commit deletes segments.
    """

    def __init__(self, directory: Path, segment_id: int, io: IoGuard, first_segment: int | None = None) -> None:
        self.directory = directory
        self.segment_id = segment_id
        self._io = io
        self._fd, self._offset = self._open_segment(segment_id)
        first = segment_id if first_segment is None else first_segment
        sizes = {s: _size(directory / segment_name(s)) for s in range(first, segment_id)}
        self._sizes = {s: n for s, n in sizes.items() if n is not None}
        self._sizes[segment_id] = self._offset
        self._cond = threading.Condition()
        self._written = 0  # log sequence numbers count bytes written by this process, across segments
        self._synced = 0
        self._syncing = False
        self._closed = False

    def _open_segment(self, segment_id: int) -> tuple[int, int]:
        path = self.directory / segment_name(segment_id)
        existed = path.exists()
        fd = self._io.fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if not existed:
            # A synced append is acknowledged only once its segment's directory entry is durable too.
            self._io.fsync_dir()
            kill_point("wal.rotate.after_create")
        return fd, os.fstat(fd).st_size

    @property
    def offset(self) -> int:
        """Bytes in the current segment (where the next record starts)."""
        return self._offset

    def segment_bytes(self) -> int:
        """Bytes in every segment not yet dropped by a commit."""
        with self._cond:
            return sum(self._sizes.values())

    def drop_segments(self, below: int) -> None:
        """Delete the segments a commit covers (ids < ``below``); a failed unlink is left for the next open."""
        with self._cond:
            doomed = sorted(s for s in self._sizes if s < below and s != self.segment_id)
            for s in doomed:
                del self._sizes[s]
        for s in doomed:
            try:
                self._io.fs.unlink(self.directory / segment_name(s))
            except FileNotFoundError:
                pass
            except OSError:
                log.warning("seqvault: could not delete covered WAL segment %s; the next open does", s)

    def append(self, kind: int, payload: Sequence[bytes | memoryview]) -> int:
        """Write one record (not yet fsynced); returns its log sequence number for :meth:`sync`."""
        length = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in payload)
        header = _HEADER.pack(WAL_MAGIC, kind, length)
        crc = zlib.crc32(header)
        for p in payload:
            crc = zlib.crc32(p, crc)
        parts = [header, *payload, _CRC.pack(crc)]
        total = HEADER_SIZE + length + _CRC.size
        with self._cond:
            self._check_writable()
            kill_point("wal.append.before_write")
            try:
                _writev_all(self._io, self._fd, parts, total)
            except OSError as e:
                # Never leave half a record in front of later ones: recovery would refuse the log.
                self._io.truncate_back(self._fd, self._offset, segment_name(self.segment_id))
                raise SeqVaultError(f"writing to {segment_name(self.segment_id)} failed ({e}); "
                                    "the batch was not stored") from e
            kill_point("wal.append.after_write")
            self._offset += total
            self._sizes[self.segment_id] = self._offset
            self._written += total
            return self._written

    def sync(self, lsn: int | None = None) -> None:
        """Return once every record up to ``lsn`` (default: all written) is on stable storage.

        Callers arriving while an fsync runs wait for it and, if it did not cover them, one of
        them leads the next, so N concurrent syncing appenders cost about two fsyncs, not N.
        A failed fsync latches the store (fail-stop) and fails every caller still waiting.
        """
        with self._cond:
            target = self._written if lsn is None else lsn
            while self._synced < target:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._check_writable()
                self._syncing = True
                upto, fd = self._written, self._fd
                self._cond.release()
                try:
                    self._io.fsync(fd, segment_name(self.segment_id))
                    kill_point("wal.sync.after_fsync")
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                self._synced = max(self._synced, upto)

    def rotate(self) -> int:
        """fsync and close the current segment, start the next; returns the new segment id."""
        with self._cond:
            self._check_writable()
            while self._syncing:
                self._cond.wait()
            self._io.fsync(self._fd, segment_name(self.segment_id))
            kill_point("wal.rotate.after_fsync")
            self._synced = self._written
            self._io.fs.close(self._fd)
            self.segment_id += 1
            try:
                self._fd, self._offset = self._open_segment(self.segment_id)
            except OSError as e:
                raise self._io.fail(f"could not start WAL segment {segment_name(self.segment_id)}: {e}") from e
            self._sizes[self.segment_id] = self._offset
            self._cond.notify_all()
        return self.segment_id

    def close(self, sync: bool = True) -> None:
        with self._cond:
            if self._closed:
                return
            while self._syncing:
                self._cond.wait()
            try:
                if sync and self._io.failure is None:
                    self._io.fsync(self._fd, segment_name(self.segment_id))
                    self._synced = self._written
            finally:
                self._io.fs.close(self._fd)
                self._closed = True
                self._cond.notify_all()

    def _check_writable(self) -> None:
        if self._closed:
            raise SeqVaultError("the write-ahead log is closed; reopen the store with SeqVault.open")
        self._io.check_writable()


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _writev_all(io: IoGuard, fd: int, parts: list, total: int) -> None:
    done = io.fs.writev(fd, parts)
    if done == total:
        return
    # A short write (signals, quotas, a nearly full disk): finish the rest from a flat copy.
    flat = b"".join(bytes(p) for p in parts)
    io.write_all(fd, memoryview(flat)[done:])


def iter_records(scans: Sequence[SegmentScan]) -> Iterator[tuple[int, memoryview]]:
    for scan in scans:
        for kind, payload, _ in scan.records:
            yield kind, payload
