"""Opening a store directory: create it, or bring it back to its last commit and replay the WAL.

Anything a crash may have left half-made is undone here: data-file bytes past the committed size,
data files and index snapshots no manifest refers to, temp files, WAL segments the commit covers,
and a torn WAL tail (cut at the first record whose checksum fails, never applied half).

Damage in the WAL with intact records after it is not what a crash leaves (closed segments were
fsynced whole, and a crash tears only the end of the newest one): it refuses to open, naming the
segment and offset, unless the caller passes ``salvage=True``, which keeps every intact record and
reports each stretch it dropped.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from seqvault.datafile import DataFile, data_file_name
from seqvault.errors import CorruptionError, SeqVaultError
from seqvault.fs import FileSystem, IoGuard
from seqvault.manifest import MANIFEST_NAME, Manifest
from seqvault.schema import Schema
from seqvault.wal import SegmentScan, list_segments, scan_segment, segment_name

log = logging.getLogger("seqvault")
LOCK_NAME = "LOCK"
_LEFTOVERS_OK_WITHOUT_MANIFEST = {LOCK_NAME, MANIFEST_NAME + ".tmp"}


def lock_store(directory: Path, fs: FileSystem) -> int:
    """Take the store's exclusive lock (one writer process); returns the lock file descriptor."""
    fd = fs.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        fs.close(fd)
        raise SeqVaultError(
            f"{directory} is already open by another SeqVault (process {holder}); "
            "close it there first — only one writer may open a store"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def unlock_store(fd: int, fs: FileSystem) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        fs.close(fd)


def prepare_directory(directory: Path, schema: Schema | None, max_len: int | None, create: bool) -> bool:
    """Check the directory is (or may become) a store; returns True if it must be created."""
    if (directory / MANIFEST_NAME).exists():
        return False
    if directory.exists():
        if not directory.is_dir():
            raise SeqVaultError(f"{directory} is not a directory")
        others = {p.name for p in directory.iterdir()} - _LEFTOVERS_OK_WITHOUT_MANIFEST
        if others:
            raise SeqVaultError(
                f"{directory} is not a SeqVault store (no {MANIFEST_NAME}, but it holds "
                f"{', '.join(sorted(others)[:5])}); pass an empty or new directory"
            )
    if not create:
        raise SeqVaultError(f"no SeqVault store at {directory} (create=False)")
    if schema is None:
        raise SeqVaultError(f"creating a store at {directory} needs a schema: SeqVault.open(path, schema=...)")
    if max_len is not None and max_len < 1:
        raise SeqVaultError(f"max_len must be at least 1, got {max_len}")
    directory.mkdir(parents=True, exist_ok=True)
    return True


def check_reopen(manifest: Manifest, directory: Path, schema: Schema | None, max_len: int | None) -> Schema:
    stored = Schema.from_dict(manifest.schema)
    if schema is not None and schema != stored:
        raise SeqVaultError(
            f"the store at {directory} was created with {stored!r}, not {schema!r}; "
            "open it with schema=None (or the stored schema), or use a new directory"
        )
    if max_len is not None and max_len != manifest.max_len:
        raise SeqVaultError(
            f"the store at {directory} keeps max_len={manifest.max_len}, not {max_len}; "
            "open it with max_len=None (or the stored value)"
        )
    return stored


def open_data_files(directory: Path, manifest: Manifest, direct_io: bool, io: IoGuard) -> dict[int, DataFile]:
    """Open committed data files, cutting uncommitted tails and removing unreferenced files."""
    files: dict[int, DataFile] = {}
    try:
        for file_id, state in manifest.files.items():
            path = directory / data_file_name(file_id)
            if not path.exists():
                raise CorruptionError(f"committed data file is missing ({state.size} bytes expected)",
                                      path=str(path))
            actual = path.stat().st_size
            if actual < state.size:
                raise CorruptionError(f"data file is shorter ({actual} bytes) than committed ({state.size})",
                                      path=str(path))
            f = DataFile(directory, file_id, state.size, io, state.dead_bytes, direct_io=direct_io)
            files[file_id] = f
            if actual > state.size:
                f.truncate_to(state.size)  # records a crashed merge appended but never published
    except BaseException:
        for f in files.values():
            f.retire(unlink=False)
        raise
    keep = {data_file_name(i) for i in manifest.files}
    if manifest.index_file:
        keep.add(manifest.index_file)
    for p in directory.iterdir():
        stale = (p.name.startswith("data-") and p.name not in keep) or \
                (p.name.startswith("index-") and p.name not in keep) or p.name.endswith(".tmp")
        if stale:
            io.fs.unlink(p)
    return files


class WalCorruptionError(CorruptionError):
    """The write-ahead log is damaged in the middle, not just torn at its end."""


@dataclass
class WalRecovery:
    scans: list[SegmentScan]
    last_segment: int
    cut: str | None  # what was cut or dropped, if anything (one line)
    dropped: list[dict] = field(default_factory=list)  # salvage: each damaged stretch skipped

    def report(self) -> dict:
        return {"cut": self.cut, "dropped": self.dropped,
                "records_kept": sum(len(s.records) for s in self.scans)}


def recover_wal(directory: Path, manifest: Manifest, io: IoGuard, salvage: bool = False) -> WalRecovery:
    """Scan the segments the commit does not cover; cut a torn tail, refuse (or salvage) mid-log damage."""
    fs = io.fs
    segments = list_segments(directory)
    for seg in segments:
        if seg < manifest.wal_start:
            fs.unlink(directory / segment_name(seg))
    live = [s for s in segments if s >= manifest.wal_start]
    last = live[-1] if live else manifest.wal_start
    scans = [scan_segment(directory / segment_name(seg), salvage=salvage) for seg in live]
    notes: list[str] = []
    dropped: list[dict] = []
    for i, (seg, scan) in enumerate(zip(live, scans, strict=True)):
        if not scan.torn:
            continue
        path = directory / segment_name(seg)
        newest = i == len(live) - 1 and not any(s.records for s in scans[i + 1:])
        if newest and not scan.intact_after:
            notes.append(f"{path.name}: {scan.problem}; cut {scan.size - scan.valid_end} bytes (torn tail)")
            _truncate(fs, path, scan.valid_end)
            continue
        if not salvage:
            raise WalCorruptionError(
                f"the write-ahead log is damaged in the middle ({scan.problem}); "
                + (f"{scan.intact_after} intact record(s) follow in this segment" if scan.intact_after else
                   "it is not the newest segment, which was fsynced whole when the log moved on")
                + ", so this is not a torn tail from a crash. Nothing was changed. Open with salvage=True (`seqvault recover PATH "
                "--salvage`) to keep every intact record and drop the damaged bytes, or restore the store",
                path=str(path), offset=scan.valid_end)
        for offset, length in scan.dropped or [(scan.valid_end, scan.size - scan.valid_end)]:
            dropped.append({"segment": path.name, "offset": offset, "bytes": length})
        notes.append(f"{path.name}: salvaged {len(scan.records)} record(s), dropped "
                     f"{sum(d['bytes'] for d in dropped if d['segment'] == path.name)} damaged bytes")
    for note in notes:
        log.warning("seqvault recovery: %s", note)
    io.fsync_dir()
    return WalRecovery(scans, last, "; ".join(notes) or None, dropped)


def _truncate(fs: FileSystem, path: Path, size: int) -> None:
    fd = fs.open(path, os.O_RDWR)
    try:
        fs.ftruncate(fd, size)
        fs.fsync(fd)
    finally:
        fs.close(fd)


def initial_manifest(schema: Schema, max_len: int) -> Manifest:
    return Manifest(schema=schema.to_dict(), max_len=max_len, index_file=None, wal_start=1)


__all__ = [
    "LOCK_NAME", "WalCorruptionError", "WalRecovery", "check_reopen", "initial_manifest", "lock_store", "open_data_files",
    "prepare_directory", "recover_wal", "unlock_store",
]
