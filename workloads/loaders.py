"""Loaders for real event logs (CSV, Parquet; Taobao UserBehavior and MovieLens presets).

A :class:`ColumnMapping` says which column is the user, which the time, and which column feeds
each schema field, how string actions (``pv``, ``buy``) map to codes in :data:`ACTIONS`, and any
scale (MovieLens half stars: ``rating * 2``). Every value is checked: a malformed row raises
:class:`LogFormatError` naming the file, line (CSV; row for Parquet) and column, unless
``skip_bad_rows=True``, in which case bad rows are dropped, counted in the manifest
(``source.rows_skipped``) and announced with a warning, never silently.

The log is held in memory at the schema's compact dtypes (~20-30 bytes an event); save it
(``Workload.save``) to get a directory that streams in bounded memory.

The log splits at a time: events before it are the backfill, the rest (by default the last 10% of
the time span) the live stream. Live appends are the events of each ``append_interval_ms``
ingestion window; before each distinct (user, event time) there is one ranking read of
``candidates`` items, since a user who acts at that moment was just served a ranking.
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from seqvault.schema import Field, Schema
from workloads.base import BackfillChunk, LiveChunk, Workload, assemble_ops, rechunk_backfill, rechunk_live
from workloads.schema import ACTIONS, DEFAULT_SCHEMA

FORMATS = ("csv", "parquet", "taobao", "movielens")
_INT_RE = r"^[-+]?[0-9]{1,18}$"
_UINT_RE = r"^\+?[0-9]{1,20}$"
_NUM_RE = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


class LogFormatError(ValueError):
    """A row of an event log cannot be read. ``path``, ``line`` and ``column`` say where."""

    def __init__(self, message: str, path: str, line: int | None, column: str | None) -> None:
        super().__init__(message)
        self.path, self.line, self.column = path, line, column


@dataclass
class ColumnMapping:
    """How the columns of a log become the user id, the time field ``ts`` and schema fields."""

    user: str                                   # column with the user id
    time: str                                   # column with the event time
    fields: dict[str, str] = field(default_factory=dict)   # schema field -> column
    time_unit: str = "s"                        # "s" or "ms"
    actions: dict[str, int | str] | None = None  # action column text -> code (or ACTIONS name)
    constants: dict[str, int] = field(default_factory=dict)  # schema field -> same value for every event
    dtypes: dict[str, str] = field(default_factory=dict)     # field -> dtype (default: DEFAULT_SCHEMA's)
    scales: dict[str, float] = field(default_factory=dict)   # field -> multiply by (must give an integer)
    columns: list[str] | None = None            # names of a headerless CSV's columns
    header: bool = True                         # CSV has a header line
    delimiter: str = ","                        # CSV delimiter; "::" is accepted (MovieLens 1M)

    def __post_init__(self) -> None:
        if self.time_unit not in ("s", "ms"):
            raise ValueError(f"time_unit must be 's' or 'ms', got {self.time_unit!r}")
        if "ts" in self.fields or "ts" in self.constants:
            raise ValueError("'ts' comes from the mapping's `time` column; do not list it in fields")
        if self.actions is not None:
            self.actions = {str(k): _action_code(v) for k, v in self.actions.items()}
        if not self.header and not self.columns:
            raise ValueError("a headerless CSV needs `columns` (the name of each column in order)")

    def schema(self, name: str) -> Schema:
        wanted = {"ts", *self.fields, *self.constants}
        out = []
        for f in DEFAULT_SCHEMA.fields:
            if f.name in wanted:
                out.append(Field(f.name, self.dtypes.get(f.name, f.dtype), f.doc))
        for extra in sorted(wanted - set(DEFAULT_SCHEMA.names)):
            if extra not in self.dtypes:
                raise ValueError(f"field {extra!r} is not in the default schema; give its dtype in `dtypes`")
            out.append(Field(extra, self.dtypes[extra]))
        return Schema(out, time_field="ts", name=name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnMapping:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown mapping keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def _action_code(v: int | str) -> int:
    if isinstance(v, str) and not v.isdigit():
        if v not in ACTIONS:
            raise ValueError(f"unknown action {v!r}; known: {', '.join(ACTIONS)}")
        return ACTIONS[v]
    return int(v)


TAOBAO = ColumnMapping(
    user="user_id", time="timestamp", header=False,
    columns=["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
    fields={"item_id": "item_id", "category": "category_id", "action": "behavior_type"},
    actions={"pv": "click", "cart": "cart", "fav": "collect", "buy": "purchase"},
    dtypes={"category": "uint32"},  # Taobao category ids exceed 65,535
)

_ML_COLUMNS = ["user_id", "movie_id", "rating", "timestamp"]
_ML_FIELDS = {"item_id": "movie_id", "rating_x2": "rating"}
_ML_COMMON = dict(user="user_id", time="timestamp", fields=_ML_FIELDS, constants={"action": ACTIONS["rate"]},
                  dtypes={"rating_x2": "uint8"}, scales={"rating_x2": 2.0})
MOVIELENS = {
    "ratings.dat": ColumnMapping(**_ML_COMMON, header=False, columns=_ML_COLUMNS, delimiter="::"),
    "u.data": ColumnMapping(**_ML_COMMON, header=False, columns=_ML_COLUMNS, delimiter="\t"),
    "ratings.csv": ColumnMapping(**{**_ML_COMMON, "user": "userId", "fields": {"item_id": "movieId",
                                                                                 "rating_x2": "rating"}},
                                 header=True, delimiter=","),
}


def detect_movielens_layout(path: Path) -> str:
    """Which MovieLens layout a file has, from its first line (not its name)."""
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", errors="replace").strip()
    if "::" in first:
        return "ratings.dat"
    if "\t" in first:
        return "u.data"
    if first.replace(" ", "").lower().startswith("userid,movieid,rating,timestamp"):
        return "ratings.csv"
    raise LogFormatError(
        f"{path}:1: not a MovieLens ratings file: expected 'user::movie::rating::time' (ratings.dat), "
        f"tab-separated 'user movie rating time' (u.data) or a 'userId,movieId,rating,timestamp' header "
        f"(ratings.csv); got {first[:80]!r}", str(path), 1, None)


class _DoubleColonReader(io.RawIOBase):
    """Byte stream that turns the ``::`` delimiter into a tab, since Arrow's CSV reader takes a
    single-character delimiter."""

    def __init__(self, raw: Any, read_size: int = 1 << 20) -> None:
        self.raw, self.read_size, self.carry, self.out = raw, read_size, b"", b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self.out:
            data = self.raw.read(self.read_size)
            if not data:
                self.out, self.carry = self.carry, b""
                break
            data = self.carry + data
            # An odd run of trailing ':' ends in half of a '::' split across reads: keep that half.
            run = len(data) - len(data.rstrip(b":"))
            self.carry = b":" if run % 2 else b""
            self.out = (data[:-1] if self.carry else data).replace(b"::", b"\t")
        n = min(len(buf), len(self.out))
        buf[:n] = self.out[:n]
        self.out = self.out[n:]
        return n


class _Collector:
    """Turns string/number columns of a batch into schema columns, finding every bad row."""

    def __init__(self, mapping: ColumnMapping, schema: Schema, path: Path, skip: bool) -> None:
        self.mapping, self.schema, self.path, self.skip = mapping, schema, path, skip
        self.uids: list[np.ndarray] = []
        self.cols: dict[str, list[np.ndarray]] = {n: [] for n in schema.names}
        self.skipped = 0
        self.examples: list[str] = []

    def _bad(self, message: str, line: int | None, column: str | None) -> None:
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        text = f"{where}: column {column!r}: {message}" if column else f"{where}: {message}"
        if not self.skip:
            raise LogFormatError(text + "; fix the row or pass skip_bad_rows=True (--skip-bad-rows) to "
                                 "skip bad rows", str(self.path), line, column)
        if len(self.examples) < 5:
            self.examples.append(text)

    def _parse(self, arr: pa.ChunkedArray | pa.Array, column: str, dtype: np.dtype, scale: float | None,
               actions: dict[str, int] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Values as ``dtype`` plus a bad-row mask and the reason for each bad row kind."""
        n = len(arr)
        bad = np.zeros(n, dtype=bool)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            text = pc.utf8_trim_whitespace(arr)
            if actions is not None:
                idx = pc.index_in(text, value_set=pa.array(list(actions)))
                bad |= np.asarray(idx.is_null().to_numpy(zero_copy_only=False))
                codes = np.array(list(actions.values()), dtype=np.int64)
                values = codes[np.asarray(idx.fill_null(0).to_numpy(zero_copy_only=False))]
                return values, bad, [f"an action the mapping knows ({', '.join(actions)})"]
            if scale is not None:
                ok = pc.match_substring_regex(text, _NUM_RE)
                bad |= ~np.asarray(ok.to_numpy(zero_copy_only=False))
                num = pc.cast(pc.if_else(ok, text, "0"), pa.float64()).to_numpy(zero_copy_only=False)
            else:
                pattern = _UINT_RE if dtype == np.uint64 else _INT_RE
                ok = pc.match_substring_regex(text, pattern)
                bad |= ~np.asarray(ok.to_numpy(zero_copy_only=False))
                target = pa.uint64() if dtype == np.uint64 else pa.int64()
                try:
                    num = pc.cast(pc.if_else(ok, text, "0"), target).to_numpy(zero_copy_only=False)
                except pa.ArrowInvalid:  # 20-digit values beyond uint64: rare, check one by one
                    vals = text.to_pylist()
                    num = np.zeros(n, dtype=np.uint64)
                    for i, v in enumerate(vals):
                        if not bad[i]:
                            if int(v) < 2**64:
                                num[i] = int(v)
                            else:
                                bad[i] = True
        elif actions is not None:
            raise LogFormatError(f"{self.path}: column {column!r} holds numbers, but the mapping maps action "
                                 f"strings; drop `actions` from the mapping", str(self.path), None, column)
        else:
            if arr.null_count:
                bad |= np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
            num = np.asarray(arr.fill_null(0).to_numpy(zero_copy_only=False))
            if num.dtype.kind not in "iuf":
                raise LogFormatError(f"{self.path}: column {column!r} has type {arr.type}, not a number",
                                     str(self.path), None, column)
        reasons = ["a number" if scale is not None else "an integer"]
        if scale is not None or num.dtype.kind == "f":
            num = num.astype(np.float64) * (scale or 1.0)
            frac = np.abs(num - np.rint(num)) > 1e-6
            bad |= frac & ~bad
            num = np.where(bad, 0, np.rint(num))
            reasons.append(f"an integer after scaling by {scale or 1}")
        info = np.iinfo(dtype)
        if num.dtype.kind == "f":
            out_of_range = (num < info.min) | (num > info.max)
        elif num.dtype == np.uint64:
            out_of_range = num > np.uint64(info.max)
        else:
            num = num.astype(np.int64)
            out_of_range = (num < max(info.min, np.iinfo(np.int64).min)) | (num > min(info.max, np.iinfo(np.int64).max))
        bad |= out_of_range
        values = np.where(bad, 0, num).astype(dtype)
        reasons.append(f"a value in [{info.min}, {info.max}] ({dtype})")
        return values, bad, reasons

    def add(self, batch: pa.RecordBatch, line_of: Any) -> None:
        m = self.mapping
        n = batch.num_rows
        parsed: dict[str, np.ndarray] = {}
        bad_any = np.zeros(n, dtype=bool)
        problems: list[tuple[str, np.ndarray, str]] = []  # column, bad mask, what is wrong
        targets = [("user_id", m.user, np.dtype(np.uint64), None, None),
                   ("ts", m.time, np.dtype(np.int64), None, None)]
        targets += [(f, c, self.schema.dtype(f), m.scales.get(f), m.actions if f == "action" else None)
                    for f, c in m.fields.items()]
        for fname, column, dtype, scale, actions in targets:
            values, bad, reasons = self._parse(batch.column(column), column, dtype, scale, actions)
            if fname == "ts":
                factor = 1000 if m.time_unit == "s" else 1
                limit = np.iinfo(np.int64).max // factor
                over = np.abs(values) > limit
                bad |= over
                values = np.where(bad, 0, values) * factor
            parsed[fname] = values
            if bad.any():
                what = "expected " + " and ".join(reasons)
                problems.append((column, bad, what))
                bad_any |= bad
        if problems:
            # In error mode the first bad row raises; otherwise the first few become examples.
            for i in np.flatnonzero(bad_any)[: 1 if not self.skip else max(0, 5 - len(self.examples))]:
                column, _, what = next(p for p in problems if p[1][i])
                text = batch.column(column)[int(i)].as_py()
                self._bad(f"value {text!r}: {what}", line_of(int(i)), column)
            self.skipped += int(bad_any.sum())
        keep = ~bad_any
        self.uids.append(parsed.pop("user_id")[keep])
        for f in self.schema.names:
            if f in parsed:
                self.cols[f].append(parsed[f][keep])
            else:
                self.cols[f].append(np.full(int(keep.sum()), m.constants[f], dtype=self.schema.dtype(f)))

    def result(self) -> BackfillChunk:
        uids = np.concatenate(self.uids) if self.uids else np.empty(0, np.uint64)
        cols = {f: (np.concatenate(v) if v else np.empty(0, self.schema.dtype(f))) for f, v in self.cols.items()}
        return self.schema.validate(uids, cols)


def _read_csv(path: Path, mapping: ColumnMapping, collector: _Collector) -> int:
    """Stream the CSV into the collector; returns rows read (good and bad)."""
    raw = open(path, "rb")
    try:
        if mapping.header:
            first = raw.readline().decode("utf-8", errors="replace").rstrip("\r\n")
            names = [c.strip() for c in first.split(mapping.delimiter)]
            skip_rows = 1
            raw.seek(0)
        else:
            names, skip_rows = list(mapping.columns or []), 0
        needed = [mapping.user, mapping.time, *mapping.fields.values()]
        missing = [c for c in needed if c not in names]
        if missing:
            raise LogFormatError(f"{path}: column {missing[0]!r} named in the mapping is not in the file's "
                                 f"columns {names}", str(path), 1 if mapping.header else None, missing[0])
        stream: Any = raw
        delimiter = mapping.delimiter
        if delimiter == "::":
            stream, delimiter = io.BufferedReader(_DoubleColonReader(raw)), "\t"
        elif len(delimiter) != 1:
            raise ValueError(f"delimiter must be one character or '::', got {delimiter!r}")
        needed_names = names
        invalid: list[int] = []
        first_invalid: list[tuple[int | None, str]] = []

        def on_invalid(row: Any) -> str:
            # Arrow swallows exceptions raised here, so a failure is raised from the loop below,
            # after any earlier bad value in the same batch.
            line = row.number if row.number is not None else -1
            invalid.append(line)
            msg = f"expected {len(needed_names)} columns, found {row.actual_columns}: {row.text[:80]!r}"
            if collector.skip:
                collector._bad(msg, line if line >= 0 else None, None)
                collector.skipped += 1
            elif not first_invalid:
                first_invalid.append((line if line >= 0 else None, msg))
            return "skip"

        def raise_invalid() -> None:
            line, msg = first_invalid[0]
            collector._bad(msg, line, None)

        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip_rows, use_threads=False,
                                           block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid,
                                             ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                                 include_columns=list(dict.fromkeys(needed)),
                                                 strings_can_be_null=False),
        )
        rows = 0
        for batch in reader:
            base = rows

            def line_of(i: int, base: int = base) -> int:
                # Physical line: header + rows before, plus the invalid rows skipped before it.
                line = skip_rows + base + i + 1
                k = 0
                while True:
                    k2 = bisect.bisect_right(invalid, line)
                    if k2 == k:
                        return line
                    line += k2 - k
                    k = k2

            try:
                collector.add(batch, line_of)
            except LogFormatError as e:
                if first_invalid and (e.line is None or (first_invalid[0][0] or 0) < e.line):
                    raise_invalid()
                raise
            if first_invalid and batch.num_rows and (first_invalid[0][0] or 0) <= line_of(batch.num_rows - 1):
                raise_invalid()
            rows += batch.num_rows
        if first_invalid:
            raise_invalid()
        return rows + len(invalid)
    except pa.ArrowInvalid as e:
        raise LogFormatError(f"{path}: cannot parse as CSV: {e}", str(path), None, None) from e
    finally:
        raw.close()


def _read_parquet(path: Path, mapping: ColumnMapping, collector: _Collector) -> int:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise LogFormatError(f"{path}: not a readable Parquet file: {e}", str(path), None, None) from e
    names = pf.schema_arrow.names
    needed = list(dict.fromkeys([mapping.user, mapping.time, *mapping.fields.values()]))
    missing = [c for c in needed if c not in names]
    if missing:
        raise LogFormatError(f"{path}: column {missing[0]!r} named in the mapping is not in the file's "
                             f"columns {names}", str(path), None, missing[0])
    rows = 0
    for batch in pf.iter_batches(columns=needed, batch_size=1 << 20):
        collector.add(batch, lambda i, base=rows: base + i + 1)  # "line" = 1-based row number
        rows += batch.num_rows
    return rows


def resolve_mapping(path: Path, format: str, mapping: ColumnMapping | dict | str | Path | None
                    ) -> tuple[ColumnMapping, str]:
    """The mapping to use and a name for the layout (``taobao``, ``movielens/u.data``, ``csv``...)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(mapping, (str, Path)):
        text = str(mapping)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--mapping is neither a JSON object nor a file holding one: {e}") from e
    if isinstance(mapping, dict):
        mapping = ColumnMapping.from_dict(mapping)
    if format == "taobao":
        return mapping or TAOBAO, "taobao"
    if format == "movielens":
        layout = detect_movielens_layout(path)
        return mapping or MOVIELENS[layout], f"movielens/{layout}"
    if mapping is None:
        raise ValueError(f"format {format!r} needs a column mapping (user, time, fields ...); "
                         f"see workloads.ColumnMapping")
    return mapping, format


def import_log(path: str | Path, format: str = "csv", mapping: ColumnMapping | dict | str | Path | None = None,
               live_fraction: float = 0.1, skip_bad_rows: bool = False, append_interval_ms: int = 1_000,
               candidates: int = 300, split_time_ms: int | None = None) -> ImportedWorkload:
    """Read an event log into a workload whose last ``live_fraction`` of the time span is live
    (or whose live part starts at ``split_time_ms``). See the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"event log {path} does not exist")
    if not 0.0 <= live_fraction <= 1.0:
        raise ValueError(f"live_fraction must be in [0, 1], got {live_fraction}")
    m, layout = resolve_mapping(path, format, mapping)
    schema = m.schema(f"import-{layout.replace('/', '-')}")
    collector = _Collector(m, schema, path, skip_bad_rows)
    reader = _read_parquet if format == "parquet" else _read_csv
    rows = reader(path, m, collector)
    uids, cols = collector.result()
    if collector.skipped:
        warnings.warn(f"{path}: skipped {collector.skipped} bad rows of {rows}; first: {collector.examples[0]}",
                      stacklevel=2)
    source = {"path": str(path), "format": format, "layout": layout, "mapping": m.to_dict(),
              "rows_read": rows, "rows_skipped": collector.skipped, "bad_row_examples": collector.examples}
    return ImportedWorkload(schema, uids, cols, source, live_fraction, append_interval_ms, candidates,
                            split_time_ms)


class ImportedWorkload(Workload):
    """An event log held in memory, split into backfill and live at a time."""

    def __init__(self, schema: Schema, uids: np.ndarray, cols: dict[str, np.ndarray], source: dict[str, Any],
                 live_fraction: float, append_interval_ms: int, candidates: int,
                 split_time_ms: int | None) -> None:
        if len(uids) == 0:
            raise ValueError(f"{source['path']}: no events left to import")
        if append_interval_ms < 1 or candidates < 1:
            raise ValueError("append_interval_ms and candidates must be >= 1")
        self.schema = schema
        ts = cols["ts"]
        t_min, t_max = int(ts.min()), int(ts.max())
        if split_time_ms is None:
            split_time_ms = t_max + 1 if live_fraction == 0 else t_min + int((t_max - t_min) * (1 - live_fraction))
        self.split_time_ms = split_time_ms
        self.rows_skipped = source["rows_skipped"]
        self._source = source
        self._params = {"live_fraction": live_fraction, "append_interval_ms": append_interval_ms,
                        "candidates": candidates}
        self._window = (split_time_ms, max(t_max + 1, split_time_ms))
        live = ts >= split_time_ms
        bf = np.flatnonzero(~live)
        bf = bf[np.lexsort((ts[bf], uids[bf]))]
        self._backfill = (uids[bf], {k: v[bf] for k, v in cols.items()})
        lv = np.flatnonzero(live)
        lv = lv[np.argsort(ts[lv], kind="stable")]
        self._live = (uids[lv], {k: v[lv] for k, v in cols.items()})
        self._summary = None

    @property
    def manifest(self) -> dict[str, Any]:
        return {"kind": "import", "schema": self.schema.to_dict(), "parameters": self._params, "seed": None,
                "source": self._source, "split_time_ms": self.split_time_ms,
                "live_window_ms": list(self._window), "summary": self._summary}

    def iter_backfill(self, chunk_events: int = 1_000_000) -> Iterator[BackfillChunk]:
        return rechunk_backfill(iter([self._backfill]), chunk_events)

    def _live_piece(self) -> LiveChunk:
        uids, cols = self._live
        ts = cols["ts"]
        interval = self._params["append_interval_ms"]
        # Reads: one per distinct (user, time), served at that time.
        key = np.lexsort((uids, ts))
        first = np.r_[True, (ts[key][1:] != ts[key][:-1]) | (uids[key][1:] != uids[key][:-1])] if len(ts) else \
            np.zeros(0, bool)
        reads = key[first]
        reads = reads[np.argsort(ts[reads], kind="stable")]
        part = {
            "read_t": ts[reads], "read_user": uids[reads],
            "read_cand": np.full(len(reads), self._params["candidates"], np.int32),
            "flush": (ts // interval + 1) * interval, "ev_user": uids, "ts": ts, "arrival": ts,
        }
        part.update({f"c_{k}": v for k, v in cols.items() if k != "ts"})
        return assemble_ops([part], self.schema.names)

    def iter_live(self, chunk_ops: int = 100_000) -> Iterator[LiveChunk]:
        return rechunk_live(iter([self._live_piece()]), chunk_ops)
