"""Saving a workload to a directory and opening it again.

Layout::

    DIR/manifest.json               format, version, schema, parameters, seed, summary, file lists
    DIR/backfill/part-00000.parquet user_id + schema fields; whole users, sorted by (user, ts)
    DIR/live/ops-00000.parquet      op_time_ms, op_kind, op_user, n_candidates, event_start, event_end
    DIR/live/events-00000.parquet   user_id + schema fields of the events those ops append

A save writes into a sibling temporary directory and renames it into place at the end, so a crash
or a bad chunk never leaves a half-written workload behind, and an existing one is replaced only
when asked (``overwrite=True``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqvault.schema import Schema, SchemaError
from workloads.base import BackfillChunk, LiveChunk, Workload, rechunk_backfill, rechunk_live
from workloads.progress import progress_bar
from workloads.stats import SummaryAccumulator

FORMAT = "storagebench-workload"
VERSION = 1
MANIFEST = "manifest.json"
_OP_COLUMNS = {"op_time_ms": np.int64, "op_kind": np.uint8, "op_user": np.uint64,
               "n_candidates": np.int32, "event_start": np.int64, "event_end": np.int64}


class WorkloadDirError(ValueError):
    """A directory is not a (complete, readable) saved workload."""


def _events_table(chunk: BackfillChunk) -> pa.Table:
    uids, cols = chunk
    return pa.table({"user_id": uids, **cols})


def save_workload(workload: Workload, directory: str | Path, chunk_events: int = 1_000_000,
                  chunk_ops: int = 100_000, progress: bool = False, overwrite: bool = False) -> Path:
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{target} already exists and is not empty; choose another directory "
                                  f"or pass overwrite=True (--overwrite)")
        if target.is_dir() and not (target / MANIFEST).exists():
            raise FileExistsError(f"refusing to overwrite {target}: it is not a saved workload "
                                  f"(no {MANIFEST}); remove it yourself if that is really intended")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "backfill").mkdir(parents=True)
    (tmp / "live").mkdir()
    manifest = dict(workload.manifest)
    window = manifest.get("live_window_ms")
    acc = SummaryAccumulator(tuple(window) if window else None)
    schema = workload.schema
    files: dict[str, list[str]] = {"backfill": [], "live_ops": [], "live_events": []}
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("backfill events", total=None)
            for i, chunk in enumerate(workload.iter_backfill(chunk_events)):
                chunk = schema.validate(*chunk)
                name = f"backfill/part-{i:05d}.parquet"
                pq.write_table(_events_table(chunk), tmp / name, compression="zstd")
                files["backfill"].append(name)
                acc.add_backfill(chunk)
                bar.advance(task, len(chunk[0]))
            task = bar.add_task("live ops", total=None)
            for i, live in enumerate(workload.iter_live(chunk_ops)):
                events = schema.validate(*live.events)
                ops = pa.table({k: getattr(live, k) for k in _OP_COLUMNS})
                ops_name, ev_name = f"live/ops-{i:05d}.parquet", f"live/events-{i:05d}.parquet"
                pq.write_table(ops, tmp / ops_name, compression="zstd")
                pq.write_table(_events_table(events), tmp / ev_name, compression="zstd")
                files["live_ops"].append(ops_name)
                files["live_events"].append(ev_name)
                acc.add_live(live)
                bar.advance(task, len(live))
        summary = acc.result()
        manifest.update({"format": FORMAT, "version": VERSION, "summary": summary, "files": files})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    workload._summary = summary
    return target


class StoredWorkload(Workload):
    """A workload read back from a directory written by :meth:`Workload.save`."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self._manifest = manifest
        self.schema = Schema.from_dict(manifest["schema"])
        self._summary = manifest.get("summary")

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def _read(self, name: str) -> pa.Table:
        path = self.directory / name
        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise WorkloadDirError(f"cannot read {path} listed in {self.directory / MANIFEST}: {e}") from e

    def _events(self, table: pa.Table, name: str) -> BackfillChunk:
        try:
            uids = table.column("user_id").to_numpy()
            cols = {f: table.column(f).to_numpy() for f in self.schema.names}
            return self.schema.validate(uids, cols)
        except (KeyError, SchemaError) as e:
            raise WorkloadDirError(f"{self.directory / name} does not match the manifest's schema: {e}") from e

    def _backfill_pieces(self) -> Iterator[BackfillChunk]:
        for name in self._manifest["files"]["backfill"]:
            yield self._events(self._read(name), name)

    def iter_backfill(self, chunk_events: int = 1_000_000) -> Iterator[BackfillChunk]:
        return rechunk_backfill(self._backfill_pieces(), chunk_events)

    def _live_pieces(self) -> Iterator[LiveChunk]:
        files = self._manifest["files"]
        for ops_name, ev_name in zip(files["live_ops"], files["live_events"], strict=True):
            ops = self._read(ops_name)
            try:
                arrays = {k: ops.column(k).to_numpy().astype(dt, copy=False) for k, dt in _OP_COLUMNS.items()}
            except KeyError as e:
                raise WorkloadDirError(f"{self.directory / ops_name} lacks op column {e}") from e
            yield LiveChunk(**arrays, events=self._events(self._read(ev_name), ev_name))

    def iter_live(self, chunk_ops: int = 100_000) -> Iterator[LiveChunk]:
        return rechunk_live(self._live_pieces(), chunk_ops)


def open_workload(directory: str | Path) -> StoredWorkload:
    """Open a saved workload. Raises :class:`WorkloadDirError` saying what is missing or wrong."""
    d = Path(directory)
    if not d.is_dir():
        raise WorkloadDirError(f"{d} is not a directory; pass a directory written by "
                               f"`storagebench workload generate/import` or Workload.save()")
    path = d / MANIFEST
    if not path.exists():
        raise WorkloadDirError(f"{d} is not a workload directory: it has no {MANIFEST}; create one with "
                               f"`storagebench workload generate` or `storagebench workload import`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WorkloadDirError(f"{path} is not valid JSON ({e}); the workload is damaged, regenerate it") from e
    if manifest.get("format") != FORMAT:
        raise WorkloadDirError(f"{path} is not a storagebench workload manifest (format={manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise WorkloadDirError(f"{path} has workload format version {manifest.get('version')}; "
                               f"this storagebench reads version {VERSION}")
    files = manifest.get("files", {})
    for key in ("backfill", "live_ops", "live_events"):
        for name in files.get(key, []) if isinstance(files.get(key), list) else [None]:
            if name is None or not (d / name).is_file():
                raise WorkloadDirError(f"{d} is incomplete: {key} file {name!r} listed in {MANIFEST} is missing")
    try:
        return StoredWorkload(d, manifest)
    except SchemaError as e:
        raise WorkloadDirError(f"{path} has a bad schema: {e}") from e
