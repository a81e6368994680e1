"""Read-only integrity check of a store: every indexed record, every data file, every WAL segment.

Nothing is modified (a torn WAL tail is reported, not cut), so this is safe to run on a store that
failed to open. It takes a shared lock and refuses to run while a writer holds the store.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seqvault.codec import HEADER_SIZE, decode_record, parse_header, record_checksum_ok
from seqvault.datafile import data_file_name
from seqvault.errors import CorruptionError, SeqVaultError
from seqvault.manifest import MANIFEST_NAME, Manifest, read_snapshot
from seqvault.records import entry_problem
from seqvault.recovery import LOCK_NAME
from seqvault.schema import Schema
from seqvault.wal import list_segments, scan_segment, segment_name


@dataclass
class Problem:
    kind: str  # "record", "data-file", "wal", "manifest", "index"
    path: str
    message: str
    offset: int | None = None
    user_id: int | None = None


@dataclass
class VerifyReport:
    path: str
    users: int = 0
    records_checked: int = 0
    events: int = 0
    wal_records: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def verify_store(path: str | os.PathLike, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check the store at ``path``; ``progress(done, total)`` is called as data files are scanned."""
    directory = Path(path)
    if not (directory / MANIFEST_NAME).exists():
        raise SeqVaultError(f"{directory} is not a SeqVault store (no {MANIFEST_NAME})")
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SeqVaultError(f"{directory} is open by a writer; stop it (or verify a copy) first") from None
        return _verify(directory, progress or (lambda done, total: None))
    finally:
        os.close(fd)


def _verify(directory: Path, progress: Callable[[int, int], None]) -> VerifyReport:
    report = VerifyReport(str(directory))
    try:
        manifest = Manifest.load(directory)
        schema = Schema.from_dict(manifest.schema)
    except CorruptionError as e:
        report.problems.append(Problem("manifest", str(directory / MANIFEST_NAME), str(e)))
        return report
    _verify_records(directory, manifest, schema, report, progress)
    live = [s for s in list_segments(directory) if s >= manifest.wal_start]
    for i, seg in enumerate(live):
        scan = scan_segment(directory / segment_name(seg))
        report.wal_records += len(scan.records)
        if scan.torn:
            if i == len(live) - 1 and not scan.intact_after:
                what = f"torn tail: {scan.size - scan.valid_end} bytes would be cut on open"
            else:
                what = ("mid-log damage: the store refuses to open; `seqvault recover PATH --salvage` keeps "
                        f"the {scan.intact_after} intact record(s) after it")
            report.problems.append(Problem("wal", str(directory / segment_name(seg)), f"{scan.problem}; {what}",
                                           scan.valid_end))
    return report


def _verify_records(directory: Path, manifest: Manifest, schema: Schema, report: VerifyReport,
                    progress: Callable[[int, int], None]) -> None:
    if manifest.index_file is None:
        return
    snap_path = directory / manifest.index_file
    try:
        snap = read_snapshot(snap_path)
    except (CorruptionError, OSError) as e:
        report.problems.append(Problem("index", str(snap_path), str(e)))
        return
    report.users = len(snap["user_id"])
    for done, (file_id, state) in enumerate(manifest.files.items()):
        progress(done, len(manifest.files))
        path = directory / data_file_name(file_id)
        if not path.exists() or path.stat().st_size < state.size:
            report.problems.append(Problem("data-file", str(path), f"missing or shorter than the committed "
                                                                   f"{state.size} bytes"))
            continue
        sel = np.flatnonzero(snap["file_id"] == file_id)
        with open(path, "rb") as fh:
            data = np.frombuffer(fh.read(state.size), np.uint8)
        for j in sel:
            _check_entry(data, path, schema, snap, int(j), report)
        _scan_file(data, path, report)
    progress(len(manifest.files), len(manifest.files))


def _check_entry(data: np.ndarray, path: Path, schema: Schema, snap: dict, j: int, report: VerifyReport) -> None:
    uid, off, length = int(snap["user_id"][j]), int(snap["offset"][j]), int(snap["length"][j])
    report.records_checked += 1
    if off + length > len(data):
        problem = f"record runs past the committed end of the file ({len(data)} bytes)"
    else:
        rec = data[off:off + length]
        problem = entry_problem(rec, uid, length, int(snap["count"][j]), int(snap["checksum"][j]))
        if problem is None:
            try:
                cols = decode_record(rec, schema, path=str(path), offset=off, expect_user=uid)
                report.events += len(cols[schema.time_field])
            except CorruptionError as e:
                problem = str(e)
    if problem:
        report.problems.append(Problem("record", str(path), problem, off, uid))


def _scan_file(data: np.ndarray, path: Path, report: VerifyReport) -> None:
    """Walk the file record by record (dead ones too); report where the chain breaks."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < HEADER_SIZE:
            report.problems.append(Problem("data-file", str(path), "trailing bytes too short for a record", pos))
            return
        try:
            header = parse_header(data, pos)
        except CorruptionError as e:
            report.problems.append(Problem("data-file", str(path), f"record chain broken: {e}", pos))
            return
        reported = {(p.path, p.offset) for p in report.problems}
        if (pos + header.length > len(data) or not record_checksum_ok(data, pos)) and (str(path), pos) not in reported:
            # Indexed records were reported above; a bad dead record is worth knowing about too.
            report.problems.append(Problem("data-file", str(path), "record fails its checksum", pos, header.user_id))
        pos += header.length
