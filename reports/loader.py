"""Find and read result files; never raise on a bad or missing one, record a problem instead.

A result directory holds one JSON file with a ``"kind"`` key (``table1``, ``run``, ``compare``,
``sweep``, ``e2e``, ``flops``, ``paper_tables``, ``serve_bench``) and, for replay runs, HDR interval logs (``*.hlog``) beside it.
A path given on the command line may be such a directory, a parent of several, or a JSON file.

Formats read: ``table1``/``run``/``compare`` as documented in ``storagebench/results.py`` (HDR logs in
``hdr/``; ``compare`` adds ``compare``: rows keyed by store with costs, prices, assumptions); ``sweep``
as written by ``storagebench/experiments/sweep.py`` (``steps``, ``sustainable_ops_per_s[_per_core]``,
``rows``: the full block at the sustainable rate);
``flops``, ``paper_tables`` and ``serve_bench`` as written by those commands; and ``e2e``::

    kind "e2e", budget_ms, machine, workload, and runs: [ {            (or one run at the top level)
        store, model, device, seq_len, candidates, top_k, rate_per_s, batching {max_batch, max_wait_ms},
        stages {queue|fetch|decode|h2d|forward|total: {p50_ms, p99_ms, p999_ms}},  from the intended start
        max_rate_within_budget_per_s,    the highest rate whose total p99 stays inside budget_ms
        wire_bytes {raw, zstd, zstd_dict},  bytes per request from storage node to ranker
        arm, events_per_request (N), cached (the model reads a cached user summary),
        flops {candidates, history_macs, per_candidate_macs, per_request_macs, refresh_macs},
        stored {users, disk_bytes, disk_bytes_per_user, vectors},  what the store holds per user
        wire.vector_bytes_per_request,   the cached vector's entry bytes on the wire
        refresh {initial, live {cpu_us_per_event, refreshes_per_1k_events,   cached arms only
                 staleness_events {mean, p50, p90, p99, max}, policy}, layout},
        budget_ms (optional, overrides the file's) } ]

``flops`` rows: model, seq_len, d, analytic, measured (per pair at C=1) and, per ``candidates``,
history_macs, per_candidate_macs, per_request_macs, refresh_macs (and ``measured_`` of each).

Every key is optional to the report: what is absent is shown as missing, never guessed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# kind -> the command that produces it, quoted in the page when a section has nothing to show
PRODUCED_BY: dict[str, str] = {
    "table1": "storagebench table1 --out results/table1   (or: tox -e bench)",
    "run": "storagebench run ... --out DIR",
    "compare": "storagebench compare --store seqvault --store rocksdb_lastn --store redis_lastn --out DIR",
    "sweep": "storagebench sweep --store STORE --auto --out DIR",
    "e2e": "storagebench e2e ... --out DIR",
    "flops": "storagebench flops --out DIR",
    "paper_tables": "storagebench paper-tables --out DIR",
    "serve_bench": "storagebench serve-bench --out DIR",
}
KNOWN_KINDS = tuple(PRODUCED_BY)


@dataclass
class Result:
    """One result file: its kind, where it came from, its content and the HDR logs beside it."""

    kind: str
    path: Path
    data: dict[str, Any]
    hlogs: list[Path] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def label(self) -> str:
        return self.directory.name or str(self.directory)


@dataclass
class ResultSet:
    results: list[Result] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Result]:
        return [r for r in self.results if r.kind == kind]

    @property
    def kinds(self) -> set[str]:
        return {r.kind for r in self.results}


def pick(data: Mapping[str, Any] | None, *paths: str, default: Any = None) -> Any:
    """The first of several dotted key paths that exists in ``data`` (formats drift; be tolerant)."""
    for path in paths:
        node: Any = data
        for key in path.split("."):
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            else:
                node = None
                break
        if node is not None:
            return node
    return default


def number(value: Any) -> float | None:
    """A finite float, or None for anything else (strings like "3~5ms", None, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def _json_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.json"))
    if files:
        return files
    # a parent such as results/ holding table1/, e2e/, ...: look one level down
    return sorted(path.glob("*/*.json"))


def load_file(path: Path, problems: list[str]) -> Result | None:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        problems.append(f"{path} is not valid JSON ({e}); it was probably cut short by an interrupted run: "
                        f"rerun the command that wrote it")
        return None
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path} could not be read ({e})")
        return None
    if not isinstance(data, dict) or "kind" not in data:
        problems.append(f"{path} has no \"kind\" key, so it is not a storagebench result file; skipped")
        return None
    kind = str(data["kind"])
    if kind not in KNOWN_KINDS:
        problems.append(f"{path} has kind {kind!r}, which this report does not know "
                        f"(known: {', '.join(KNOWN_KINDS)}); skipped")
        return None
    # replay results keep their HDR interval logs in hdr/ (older layouts: beside the JSON)
    hlogs = sorted(path.parent.glob("*.hlog")) + sorted(path.parent.glob("hdr/*.hlog"))
    return Result(kind=kind, path=path, data=data, hlogs=hlogs)


def load_results(paths: Iterable[str | Path]) -> ResultSet:
    """Load every result file under ``paths``; problems (missing, broken, unknown) are collected."""
    out = ResultSet()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            out.problems.append(f"{path} does not exist; pass result directories written by the "
                                f"storagebench commands (e.g. results/table1)")
            continue
        files = _json_files(path)
        if not files:
            out.problems.append(f"{path} holds no result file (*.json); is the run still going, or did it fail?")
            continue
        for f in files:
            result = load_file(f, out.problems)
            if result is not None:
                out.results.append(result)
    return out
