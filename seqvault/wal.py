"""Write-ahead log: numbered append-only segments of checksummed records, with group commit.

A record is ``header (magic, kind, payload length) + payload + crc32(header + payload)``. On
recovery a record is applied only if it is complete and its crc matches; the first record that is
not cuts the log there, so a write torn by a crash is never applied half.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqvault.errors import SeqVaultError
from seqvault.schema import Schema

WAL_MAGIC = 0x4C415753  # "SWAL" little-endian
KIND_APPEND = 1
KIND_DELETE = 2
_HEADER = struct.Struct("<IBxxxQ")  # magic, kind, payload length
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size
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


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    @property
    def torn(self) -> bool:
        return self.valid_end < self.size


def scan_segment(path: Path) -> SegmentScan:
    data = memoryview(path.read_bytes())
    return scan_bytes(data)


def scan_bytes(data: memoryview) -> SegmentScan:
    records: list[tuple[int, memoryview, int]] = []
    pos, size = 0, len(data)
    problem = None
    while pos < size:
        if size - pos < RECORD_OVERHEAD:
            problem = f"incomplete record header at byte {pos}"
            break
        magic, kind, length = _HEADER.unpack_from(data, pos)
        if magic != WAL_MAGIC or kind not in (KIND_APPEND, KIND_DELETE):
            problem = f"bad record magic or kind at byte {pos}"
            break
        end = pos + HEADER_SIZE + length + _CRC.size
        if end > size:
            problem = f"record at byte {pos} runs past the end of the file (torn write)"
            break
        (crc,) = _CRC.unpack_from(data, end - _CRC.size)
        if zlib.crc32(data[pos:end - _CRC.size]) != crc:
            problem = f"checksum mismatch in record at byte {pos}"
            break
        records.append((kind, data[pos + HEADER_SIZE:end - _CRC.size], end))
        pos = end
    return SegmentScan(records, pos, size, problem)


# -- writing -----------------------------------------------------------------------------------
class WriteAheadLog:
    """The writer side: appends records to the current segment; ``sync`` shares fsyncs (group commit)."""

    def __init__(self, directory: Path, segment_id: int) -> None:
        self.directory = directory
        self.segment_id = segment_id
        self._fd = os.open(directory / segment_name(segment_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._offset = os.fstat(self._fd).st_size
        self._cond = threading.Condition()
        self._written = 0  # log sequence numbers count bytes written by this process, across segments
        self._synced = 0
        self._syncing = False
        self._closed = False

    @property
    def offset(self) -> int:
        """Bytes in the current segment (where the next record starts)."""
        return self._offset

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
            self._check_open()
            try:
                written = _writev_all(self._fd, parts, total)
            except OSError:
                # Never leave half a record in front of later ones: recovery would cut them all.
                os.ftruncate(self._fd, self._offset)
                raise
            assert written == total
            self._offset += total
            self._written += total
            return self._written

    def sync(self, lsn: int | None = None) -> None:
        """Return once every record up to ``lsn`` (default: all written) is on stable storage.

        Callers arriving while an fsync runs wait for it and, if it did not cover them, one of
        them leads the next, so N concurrent syncing appenders cost about two fsyncs, not N.
        """
        with self._cond:
            target = self._written if lsn is None else lsn
            while self._synced < target:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._check_open()
                self._syncing = True
                upto, fd = self._written, self._fd
                self._cond.release()
                try:
                    os.fsync(fd)
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                self._synced = max(self._synced, upto)

    def rotate(self) -> int:
        """fsync and close the current segment, start the next; returns the new segment id."""
        with self._cond:
            self._check_open()
            while self._syncing:
                self._cond.wait()
            os.fsync(self._fd)
            os.close(self._fd)
            self._synced = self._written
            self.segment_id += 1
            self._fd = os.open(self.directory / segment_name(self.segment_id),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._offset = 0
            self._cond.notify_all()
        fsync_dir(self.directory)
        return self.segment_id

    def close(self, sync: bool = True) -> None:
        with self._cond:
            if self._closed:
                return
            while self._syncing:
                self._cond.wait()
            if sync:
                os.fsync(self._fd)
                self._synced = self._written
            os.close(self._fd)
            self._closed = True
            self._cond.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise SeqVaultError("the write-ahead log is closed; reopen the store with SeqVault.open")


def _writev_all(fd: int, parts: list, total: int) -> int:
    done = os.writev(fd, parts)
    if done == total:
        return done
    # A short write (rare: signals, quotas) — finish the rest from a flat copy.
    flat = b"".join(bytes(p) for p in parts)
    while done < total:
        n = os.write(fd, flat[done:])
        if n <= 0:
            raise OSError(f"write to the WAL made no progress at byte {done} of {total}")
        done += n
    return done


def iter_records(scans: Sequence[SegmentScan]) -> Iterator[tuple[int, memoryview]]:
    for scan in scans:
        for kind, payload, _ in scan.records:
            yield kind, payload
