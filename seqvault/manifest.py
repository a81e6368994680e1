"""The manifest (what is committed) and the index snapshot it points at.

Each merge, bulk load or reclamation commits by writing a new index snapshot and then a new
MANIFEST, each as temp file + fsync + rename + fsync(directory). A crash before the MANIFEST
rename leaves the previous commit in force; bytes appended to data files after it are cut on open.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seqvault.errors import CorruptionError
from seqvault.fs import IoGuard, StoreFailedError

MANIFEST_NAME = "MANIFEST"
FORMAT_NAME = "seqvault"
FORMAT_VERSION = 1
_SNAP_MAGIC = b"SVIXSNAP"
_SNAP_HEADER = struct.Struct("<8sIQ")  # magic, version, entry count
# Fixed on-disk widths: independent of whatever the in-memory index uses.
SNAPSHOT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("user_id", "<u8"), ("file_id", "<u4"), ("offset", "<u8"),
    ("length", "<u4"), ("count", "<u4"), ("checksum", "<u8"),
)


@dataclass
class FileState:
    size: int  # committed bytes
    dead_bytes: int


@dataclass
class Manifest:
    schema: dict
    max_len: int
    generation: int = 0
    index_file: str | None = None
    wal_start: int = 1  # first WAL segment not covered by this commit
    next_file_id: int = 1
    current_file: int | None = None
    files: dict[int, FileState] = field(default_factory=dict)
    merges: int = 0
    merged_users: int = 0
    reclaimed_files: int = 0

    def to_json(self) -> str:
        body = asdict(self)
        body["files"] = {str(k): asdict(v) for k, v in self.files.items()}
        body = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **body}
        text = json.dumps(body, sort_keys=True)
        return json.dumps({"crc32": zlib.crc32(text.encode()), "body": body}, sort_keys=True, indent=1)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        try:
            outer = json.loads(path.read_text())
            body = outer["body"]
            text = json.dumps(body, sort_keys=True)
            if zlib.crc32(text.encode()) != outer["crc32"]:
                raise CorruptionError("manifest checksum mismatch", path=str(path))
            if body.pop("format") != FORMAT_NAME or body.pop("version") != FORMAT_VERSION:
                raise CorruptionError("not a SeqVault manifest of a version this code reads", path=str(path))
            body["files"] = {int(k): FileState(**v) for k, v in body["files"].items()}
            return cls(**body)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptionError(f"manifest is unreadable ({e}); restore it from a backup", path=str(path)) from e

    def write(self, directory: Path, io: IoGuard, before_rename: Callable[[], None] | None = None) -> None:
        write_atomic(directory / MANIFEST_NAME, self.to_json().encode(), io, before_rename)


def write_atomic(path: Path, data: bytes | list, io: IoGuard, before_rename: Callable[[], None] | None = None
                 ) -> None:
    """temp file, fsync, rename over ``path``, fsync the directory.

    Until the rename nothing changed; from the rename on, a failure leaves it unknown which
    version a crash would keep, so the store fail-stops rather than guess.
    """
    tmp = path.with_name(path.name + ".tmp")
    fs = io.fs
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        parts = data if isinstance(data, list) else [data]
        for part in parts:
            io.write_all(fd, memoryview(part).cast("B"))
        io.fsync(fd, tmp.name)
    finally:
        fs.close(fd)
    if before_rename is not None:
        before_rename()
    try:
        fs.replace(tmp, path)
        io.fsync_dir(path.parent)
    except StoreFailedError:
        raise
    except BaseException as e:  # an interrupt too: whether the rename reached the disk is unknown
        io.fail(f"committing {path.name} was interrupted after its rename began: {e!r}")
        raise


def snapshot_name(generation: int) -> str:
    return f"index-{generation:08d}.snap"


def write_snapshot(path: Path, arrays: dict[str, np.ndarray], io: IoGuard) -> int:
    """Write index entries (dict of equal-length arrays) with a crc; returns the file size."""
    n = len(arrays["user_id"])
    header = _SNAP_HEADER.pack(_SNAP_MAGIC, FORMAT_VERSION, n)
    parts: list = [header]
    crc = zlib.crc32(header)
    for name, dtype in SNAPSHOT_COLUMNS:
        col = np.ascontiguousarray(arrays[name], dtype=dtype)
        parts.append(col)
        crc = zlib.crc32(memoryview(col).cast("B"), crc)
    parts.append(struct.pack("<I", crc))
    write_atomic(path, parts, io)
    return _SNAP_HEADER.size + n * sum(np.dtype(d).itemsize for _, d in SNAPSHOT_COLUMNS) + 4


def read_snapshot(path: Path, io: IoGuard | None = None) -> dict[str, np.ndarray]:
    data = io.fs.read_file(path) if io is not None else path.read_bytes()
    if len(data) < _SNAP_HEADER.size + 4:
        raise CorruptionError("index snapshot is truncated", path=str(path))
    magic, version, n = _SNAP_HEADER.unpack_from(data, 0)
    width = sum(np.dtype(d).itemsize for _, d in SNAPSHOT_COLUMNS)
    if magic != _SNAP_MAGIC or version != FORMAT_VERSION or len(data) != _SNAP_HEADER.size + n * width + 4:
        raise CorruptionError("index snapshot has a bad header or size", path=str(path))
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(memoryview(data)[:-4]) != crc:
        raise CorruptionError("index snapshot checksum mismatch", path=str(path))
    out, pos = {}, _SNAP_HEADER.size
    for name, dtype in SNAPSHOT_COLUMNS:
        out[name] = np.frombuffer(data, dtype, n, pos).copy()
        pos += n * np.dtype(dtype).itemsize
    return out
