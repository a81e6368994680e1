"""A simulated disk for testing durability: power loss, injected faults, fsync counts.

:class:`SimulatedDisk` is a :class:`~seqvault.fs.FileSystem` that passes every call to the real
one and keeps, beside it, what a strict POSIX disk would still hold after a power cut: each
file's contents as of its last successful ``fsync``, and each directory's entries as of its last
directory ``fsync`` (a new file, a rename or an unlink is volatile until then). :meth:`power_loss`
rewrites the store directory to exactly that durable image, optionally keeping a random prefix of
each file's unsynced appended bytes (a torn write). Files are tracked by inode, so a rename moves
a file's durable contents with it.

Faults (:meth:`inject`): the ``nth`` call of an operation (optionally only on paths containing a
string) raises an ``OSError`` with the given errno, or writes only part of its bytes (a short
write). A failed fsync behaves as Linux's does: the call fails, the unsynced pages are dropped
from what can ever become durable (a later fsync "succeeds" without them).

:meth:`cut_power_after` makes the ``n``-th mutating call raise :class:`PowerCut` (and every call
after it), freezing the disk at that instant for a power-loss trial.
"""

from __future__ import annotations

import errno as errno_mod
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seqvault.fs import FileSystem

MUTATING = ("open_create", "write", "writev", "pwrite", "fsync", "ftruncate", "fsync_dir", "replace", "unlink")


class PowerCut(BaseException):  # a BaseException: the engine must not catch it and carry on
    """The simulated power went out: nothing more reaches the disk."""


@dataclass
class _Fault:
    op: str
    nth: int
    errno: int
    path_contains: str | None
    short: bool
    repeat: bool
    seen: int = 0


class SimulatedDisk(FileSystem):
    """Wraps the real file system of one store directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike, base: FileSystem | None = None,
                 lying_fsync: Sequence[str] = ()) -> None:
        self.directory = Path(directory)
        # A disk that lies: fsyncs of files whose names start with one of these (or of the
        # directory, for "<dir>") succeed and make nothing durable. The campaign must notice.
        self.lying_fsync = tuple(lying_fsync)
        self.base = base or FileSystem()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsyncs: Counter[str] = Counter()  # successful fsyncs by file name ("<dir>" for directories)
        self.calls: Counter[str] = Counter()
        self._faults: list[_Fault] = []
        self._cut_at: int | None = None
        self._mutations = 0
        self.cut = False
        self._fds: dict[int, tuple[int, Path]] = {}  # fd -> (file identity, path at open)
        self._identity: dict[int, int] = {}  # inode number -> identity of the file living there
        self._next_identity = 0
        self._durable: dict[int, bytes] = {}  # identity -> contents as of its last good fsync
        self._lost: dict[int, list[tuple[int, int]]] = {}  # identity -> ranges a failed fsync dropped
        self._dir: dict[str, int] = {}  # durable directory entries: name -> identity
        for p in self.directory.iterdir():  # what exists at the start counts as durable
            if p.is_file():
                ident = self._identify(p, new=True)
                self._durable[ident] = p.read_bytes()
                self._dir[p.name] = ident

    # -- bookkeeping ------------------------------------------------------------------------------
    def _identify(self, path: Path, new: bool = False) -> int:
        ino = os.stat(path).st_ino
        if new or ino not in self._identity:
            self._identity[ino] = self._next_identity
            self._next_identity += 1
        return self._identity[ino]

    def _step(self, op: str, path: Path | None) -> _Fault | None:
        if self.cut:
            raise PowerCut(f"power is off ({op})")
        self.calls[op] += 1
        if op in MUTATING:
            self._mutations += 1
            if self._cut_at is not None and self._mutations >= self._cut_at:
                self.cut = True
                raise PowerCut(f"power cut at mutating call {self._mutations} ({op} {path})")
        for fault in self._faults:
            if fault.op == op and (fault.path_contains is None or (path is not None and fault.path_contains in
                                                                     path.name)):
                fault.seen += 1
                if fault.seen == fault.nth or (fault.repeat and fault.seen > fault.nth):
                    return fault
        return None

    def _enter(self, op: str, path: Path | None) -> None:
        """Count the call; raise its injected fault, if any (for calls with no short variant)."""
        fault = self._step(op, path)
        if fault is not None:
            self._raise(fault, path)

    def _path(self, fd: int) -> Path | None:
        entry = self._fds.get(fd)
        return entry[1] if entry else None

    @staticmethod
    def _raise(fault: _Fault, path: Path | None) -> None:
        raise OSError(fault.errno, f"{os.strerror(fault.errno)} (injected)", str(path) if path else None)

    # -- controls ---------------------------------------------------------------------------------
    def inject(self, op: str, nth: int = 1, errno: int = errno_mod.EIO, path_contains: str | None = None,
               short: bool = False, repeat: bool = False) -> None:
        """Fail the ``nth`` matching call of ``op`` (e.g. "fsync", "writev", "pwrite", "replace"),
        and with ``repeat`` every matching call after it too; ``short`` writes half instead."""
        self._faults.append(_Fault(op, nth, errno, path_contains, short, repeat))

    def clear_faults(self) -> None:
        self._faults.clear()

    def cut_power_after(self, mutations: int) -> None:
        """The ``mutations``-th mutating call from now raises PowerCut, and so does every call after."""
        self._cut_at = self._mutations + mutations

    @property
    def mutations(self) -> int:
        return self._mutations

    def power_loss(self, rng: random.Random | None = None) -> dict:
        """Rewrite the directory to its durable image; returns what was discarded."""
        self.cut = True
        for fd in list(self._fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        current = {p.name: p for p in self.directory.iterdir() if p.is_file()}
        contents = {}
        for p in current.values():
            contents[self._identify(p)] = p.read_bytes()
        discarded = {"files_removed": 0, "bytes_discarded": 0, "torn_bytes_kept": 0}
        for name, p in current.items():
            if name not in self._dir:
                discarded["files_removed"] += 1
                p.unlink()
        for name, ident in self._dir.items():
            durable = self._durable_bytes(ident)
            now = contents.get(ident, durable)
            keep = durable
            if rng is not None and len(now) > len(durable) and now.startswith(durable) and rng.random() < 0.5:
                extra = rng.randint(0, len(now) - len(durable))  # a torn append: a prefix of the unsynced bytes
                keep = now[:len(durable) + extra]
                discarded["torn_bytes_kept"] += extra
            discarded["bytes_discarded"] += max(len(now) - len(keep), 0)
            (self.directory / name).write_bytes(keep)
        fd = os.open(self.directory, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        return discarded

    def _durable_bytes(self, ident: int) -> bytes:
        data = bytearray(self._durable.get(ident, b""))
        for start, end in self._lost.get(ident, []):
            if start < len(data):
                data[start:min(end, len(data))] = bytes(min(end, len(data)) - start)
        return bytes(data)

    # -- the FileSystem calls ---------------------------------------------------------------------
    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        creating = bool(flags & os.O_CREAT) and not Path(path).exists()
        self._enter("open_create" if creating else "open", Path(path))
        fd = self.base.open(path, flags, mode)
        ident = self._identify(Path(path), new=creating)
        self._fds[fd] = (ident, Path(path))
        return fd

    def close(self, fd: int) -> None:
        if self.cut:
            self._fds.pop(fd, None)
            return  # power_loss closed (or will close) every descriptor
        self._fds.pop(fd, None)
        self.base.close(fd)

    def _write(self, op: str, fd: int, size: int, call: object) -> int:
        fault = self._step(op, self._path(fd))
        if fault is not None:
            if not fault.short or size < 2:
                self._raise(fault, self._path(fd))
            return call(size // 2)
        return call(None)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        return self._write("write", fd, len(view), lambda n: self.base.write(fd, view if n is None else view[:n]))

    def writev(self, fd: int, parts: Sequence[bytes | memoryview]) -> int:
        size = sum(memoryview(p).nbytes for p in parts)

        def call(n: int | None) -> int:
            if n is None:
                return self.base.writev(fd, parts)
            return self.base.write(fd, b"".join(bytes(p) for p in parts)[:n])
        return self._write("writev", fd, size, call)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        view = memoryview(data).cast("B")
        return self._write("pwrite", fd, len(view),
                           lambda n: self.base.pwrite(fd, view if n is None else view[:n], offset))

    def preadv(self, fd: int, buffers: list, offset: int) -> int:
        self._enter("preadv", self._path(fd))
        return self.base.preadv(fd, buffers, offset)

    def fsync(self, fd: int) -> None:
        path = self._path(fd)
        fault = self._step("fsync", path)
        ident = self._fds[fd][0] if fd in self._fds else None
        if fault is not None:
            if ident is not None:  # Linux: the dirty pages are marked clean, never written
                start = len(self._durable.get(ident, b""))
                self._lost.setdefault(ident, []).append((start, os.fstat(fd).st_size))
            self._raise(fault, path)
        self.base.fsync(fd)
        if ident is not None and not (path is not None and path.name.startswith(self.lying_fsync)):
            with open(f"/proc/self/fd/{fd}", "rb") as fh:  # the same inode, even if write-only or renamed
                self._durable[ident] = fh.read()
        self.fsyncs[path.name if path else "?"] += 1

    def ftruncate(self, fd: int, size: int) -> None:
        self._enter("ftruncate", self._path(fd))
        self.base.ftruncate(fd, size)

    def fsync_dir(self, directory: Path) -> None:
        self._enter("fsync_dir", Path(directory))
        self.base.fsync_dir(directory)
        if Path(directory) == self.directory and "<dir>" not in self.lying_fsync:
            self._dir = {p.name: self._identify(p) for p in self.directory.iterdir() if p.is_file()}
        self.fsyncs["<dir>"] += 1

    def replace(self, src: Path, dst: Path) -> None:
        self._enter("replace", Path(dst))
        self.base.replace(src, dst)

    def unlink(self, path: Path) -> None:
        self._enter("unlink", Path(path))
        self.base.unlink(path)

    def read_file(self, path: Path) -> bytes:
        self._enter("read_file", Path(path))
        return self.base.read_file(path)

    def wal_fsyncs(self) -> int:
        return sum(n for name, n in self.fsyncs.items() if name.startswith("wal-"))


__all__ = ["MUTATING", "PowerCut", "SimulatedDisk"]
