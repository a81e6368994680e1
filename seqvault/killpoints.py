"""Named kill points (white-box crash testing, as RocksDB's ``TEST_KILL_RANDOM``).

The engine calls :func:`kill_point` at the moments a crash is most interesting: between a write
and its fsync, between a commit's snapshot and its MANIFEST, between a commit and the deletion
of what it supersedes. Unarmed (always, outside ``seqvault crashtest``) a kill point is one dict
lookup. Armed with :func:`arm`, the ``nth`` time the named point is passed the process SIGKILLs
itself: no ``finally`` blocks, no buffered writes flushed, exactly as a crash.
"""

from __future__ import annotations

import os
import signal

KILL_POINTS: tuple[str, ...] = (
    "wal.append.before_write", "wal.append.after_write", "wal.sync.after_fsync",
    "wal.rotate.after_fsync", "wal.rotate.after_create",
    "merge.after_swap", "job.after_write", "job.after_data_sync",
    "commit.after_snapshot", "commit.after_manifest", "commit.after_cleanup",
    "reclaim.after_copy", "reclaim.after_commit", "bulk_load.after_merge", "bulk_load.after_commit",
    "delete.after_log",
)

_armed: dict[str, int] = {}


def arm(name: str, nth: int) -> None:
    """Kill this process the ``nth`` time (1-based) ``name`` is reached."""
    if name not in KILL_POINTS:
        raise ValueError(f"unknown kill point {name!r}; known: {', '.join(KILL_POINTS)}")
    if nth < 1:
        raise ValueError(f"nth must be >= 1, got {nth}")
    _armed.clear()
    _armed[name] = nth


def disarm() -> None:
    _armed.clear()


def kill_point(name: str) -> None:
    if not _armed:
        return
    left = _armed.get(name)
    if left is None:
        return
    if left > 1:
        _armed[name] = left - 1
        return
    os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["KILL_POINTS", "arm", "disarm", "kill_point"]
