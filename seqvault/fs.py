"""The engine's I/O seam, and the fail-stop latch every durable write goes through.

Every file operation SeqVault makes goes through a :class:`FileSystem` (the way SQLite's VFS
works): :class:`FileSystem` itself is the real one, and :class:`seqvault.simdisk.SimulatedDisk`
wraps it to simulate power loss, inject faults and count fsyncs in tests and ``seqvault crashtest``.

The engine wraps its file system in an :class:`IoGuard`. An fsync that fails leaves the kernel's
page cache and the disk disagreeing (Linux marks the failed pages clean, so the *next* fsync can
succeed without writing them): after one, nothing the store acknowledges can be trusted, so the
guard latches and every later write raises :class:`StoreFailedError` until the store is reopened
and recovers from what really reached the disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from seqvault.errors import SeqVaultError


class StoreFailedError(SeqVaultError):
    """The store stopped accepting writes after an I/O failure it cannot undo; reopen it."""


class FileSystem:
    """Plain POSIX calls. Subclasses override them to observe or break I/O (tests only)."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def writev(self, fd: int, parts: Sequence[bytes | memoryview]) -> int:
        return os.writev(fd, parts)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def preadv(self, fd: int, buffers: list, offset: int) -> int:
        return os.preadv(fd, buffers, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def read_file(self, path: Path) -> bytes:
        return path.read_bytes()


OS = FileSystem()


class IoGuard:
    """A store's file system plus its fail-stop latch (one per open store)."""

    def __init__(self, fs: FileSystem, directory: Path) -> None:
        self.fs = fs
        self.directory = directory
        self.failure: str | None = None

    def fail(self, reason: str) -> StoreFailedError:
        """Latch the store into fail-stop (first reason wins); returns the error to raise."""
        if self.failure is None:
            self.failure = reason
        return self.error()

    def error(self) -> StoreFailedError:
        return StoreFailedError(
            f"the store at {self.directory} stopped accepting writes after an I/O failure ({self.failure}); "
            "data acknowledged before it is safe, but what the process holds may be ahead of the disk: "
            "close the store and reopen it with SeqVault.open to recover from the write-ahead log")

    def check_writable(self) -> None:
        if self.failure is not None:
            raise self.error()

    def fsync(self, fd: int, what: str) -> None:
        try:
            self.fs.fsync(fd)
        except OSError as e:
            raise self.fail(f"fsync of {what} failed: {e}") from e

    def fsync_dir(self, directory: Path | None = None) -> None:
        try:
            self.fs.fsync_dir(directory or self.directory)
        except OSError as e:
            raise self.fail(f"fsync of directory {directory or self.directory} failed: {e}") from e

    def write_all(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = self.fs.write(fd, view[done:])
            if n <= 0:
                raise OSError(f"write made no progress at byte {done} of {len(view)}")
            done += n

    def pwrite_all(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = self.fs.pwrite(fd, view[done:], offset + done)
            if n <= 0:
                raise OSError(f"write made no progress at byte {done} of {len(view)}")
            done += n

    def truncate_back(self, fd: int, size: int, what: str) -> None:
        """Undo a failed append by cutting the file back; if even that fails, fail-stop."""
        try:
            self.fs.ftruncate(fd, size)
        except OSError as e:
            raise self.fail(f"could not cut {what} back to {size} bytes after a failed write: {e}") from e


__all__ = ["OS", "FileSystem", "IoGuard", "StoreFailedError"]
