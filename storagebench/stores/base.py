"""The one interface every store under test implements, and the registry that finds them.

A store keeps, per user, the newest ``max_len`` events ordered by the schema's time field (ties
keep arrival order) and answers ``get_many`` in the common CSR form: ``offsets`` (int64, one more
than the number of users) and one packed column per field, each user's events oldest first.

Adding a store means adding one module under ``storagebench/stores/`` that defines a subclass
decorated with :func:`register_store`; :func:`open_store` imports the package's modules on demand.
"""

from __future__ import annotations

import importlib
import numbers
import os
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from seqvault.schema import Schema, SchemaError

_REGISTRY: dict[str, type[Store]] = {}
_UNAVAILABLE: dict[str, str] = {}  # module -> why it could not be imported


class StoreError(RuntimeError):
    """A store could not be opened or configured as asked."""


class Store(ABC):
    """A per-user store of the newest events. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str] = ""
    # Thread-safe stores are called from several node worker threads at once; others are serialised.
    thread_safe: ClassVar[bool] = False
    # False for the harness-floor store, whose reads are not what was appended (no correctness checks).
    returns_stored_data: ClassVar[bool] = True
    # False for a store that cannot bypass the page cache (Redis: the data set lives in DRAM).
    supports_direct_io: ClassVar[bool] = True
    # True for a store that keeps cached per-user vectors (open_vectors / put_vectors / get_vector_entries).
    keeps_vectors: ClassVar[bool] = False

    def __init__(self, path: str, schema: Schema, *, max_len: int = 1000, direct_io: bool = False,
                 dram_budget_bytes: int = 64 << 20, **options: Any) -> None:
        if max_len < 1:
            raise StoreError(f"max_len must be >= 1, got {max_len}")
        self.path = os.fspath(path)
        self.schema = schema
        self.max_len = int(max_len)
        self.direct_io = bool(direct_io)
        self.dram_budget_bytes = int(dram_budget_bytes)
        self.options = dict(options)

    # -- the contract ---------------------------------------------------------------------------
    @abstractmethod
    def append(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Add events (any order, any users); each user keeps only its newest ``max_len``."""

    @abstractmethod
    def get_many(self, user_ids: np.ndarray, last_n: int | None = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Each user's newest ``last_n`` (default ``max_len``) events, oldest first, in CSR form."""

    def keep(self, last_n: int | None) -> int:
        """Events to return per user for ``last_n`` (None: ``max_len``); refuses a bad value naming it."""
        if last_n is None:
            return self.max_len
        if isinstance(last_n, bool) or not isinstance(last_n, numbers.Integral) or last_n < 0:
            raise SchemaError(f"last_n must be a whole number >= 0 (or None for max_len), got {last_n!r}",
                              field="last_n")
        return min(int(last_n), self.max_len)

    def bulk_load(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Load the backfill before the measured window; stores with a faster path override this."""
        self.append(user_ids, columns)

    def finish_load(self) -> None:
        """Settle after the bulk load the way an operator would before taking traffic."""
        self.flush()

    def maintain(self) -> bool:
        """Give background work (merge, compaction) a chance to run; True if it did something."""
        return False

    def flush(self) -> None:
        """Make everything appended so far durable on disk."""
        return None

    def compact(self) -> dict[str, int]:
        """Compact fully (RocksDB: a full-range compaction; SeqVault: merge and reclaim) and return
        :meth:`disk_bytes` after it: the disk a store needs once background work has caught up."""
        self.flush()
        return self.disk_bytes()

    # -- cached user representations (optional) ------------------------------------------------
    # One fixed-size vector per user (a model's cached summary of the history), versioned by the
    # event position it covers; entries use seqvault.vectors' format in every store that keeps them,
    # so the bytes stored and sent are the same and only the engine differs.
    def open_vectors(self, dim: int, dtype: str) -> dict[str, Any]:
        """Keep one ``dim``-value vector per user at ``dtype`` (fp16, bf16 or int8); returns the layout."""
        raise StoreError(f"store {self.name!r} does not keep cached vectors; the stores that do: "
                         "seqvault, rocksdb_lastn, rocksdb_packed")

    def put_vectors(self, user_ids: np.ndarray, versions: np.ndarray, vectors: np.ndarray) -> int:
        """Store each user's vector unless a newer version (more events covered) is there; returns how
        many were applied."""
        raise StoreError(self._no_vectors())

    def get_vector_entries(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found bool[n], encoded entries uint8[n, entry_bytes]) of each user's cached vector."""
        raise StoreError(self._no_vectors())

    def _no_vectors(self) -> str:
        if not self.keeps_vectors:
            return (f"store {self.name!r} does not keep cached vectors; the stores that do: seqvault, "
                    "rocksdb_lastn, rocksdb_packed")
        return f"store {self.name!r} has no cached vectors open: call open_vectors first"

    def vector_stats(self) -> dict[str, Any]:
        """Users with a vector, entry bytes, bytes stored per user; empty when vectors are not open."""
        return {}

    @abstractmethod
    def disk_files(self) -> dict[str, str]:
        """Map each file under the store directory to a category (e.g. ``sst``, ``wal``, ``data``)."""

    def disk_bytes(self) -> dict[str, int]:
        """Bytes on disk per category plus ``total``."""
        out: dict[str, int] = {}
        for path, category in self.disk_files().items():
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:  # deleted by a concurrent compaction between listing and stat
                continue
            out[category] = out.get(category, 0) + size
        out["total"] = sum(out.values())
        return out

    def stats(self) -> dict[str, Any]:
        """Store-specific counters for the result file (JSON-able)."""
        return {}

    @classmethod
    def preflight(cls) -> None:
        """Raise :class:`StoreError` now if the store cannot run on this machine (a server binary
        missing), so a long run fails before it starts rather than after other stores ran."""
        return None

    def helper_pids(self) -> list[int]:
        """Processes the store runs besides the one that opened it (a server); the harness charges
        their CPU and I/O to the store."""
        return []

    def config(self) -> dict[str, Any]:
        """The store's full configuration for the result file (JSON-able)."""
        return {
            "store": self.name,
            "helper_pids": self.helper_pids(),
            "max_len": self.max_len,
            "direct_io": self.direct_io,
            "dram_budget_bytes": self.dram_budget_bytes,
            "schema": self.schema.to_dict(),
            **{k: _jsonable(v) for k, v in self.options.items()},
        }

    @abstractmethod
    def close(self) -> None:
        """Flush and release the store; safe to call twice."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register_store(cls: type[Store]) -> type[Store]:
    """Class decorator: make ``cls`` available to :func:`open_store` under ``cls.name``."""
    if not cls.name:
        raise StoreError(f"{cls.__qualname__} must set a non-empty class attribute 'name'")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    import storagebench.stores as package

    for mod in pkgutil.iter_modules(package.__path__):
        if mod.name != "base":
            try:
                importlib.import_module(f"{package.__name__}.{mod.name}")
            except ImportError as e:  # one broken binding must not hide the others
                _UNAVAILABLE[mod.name] = f"{type(e).__name__}: {e}"


def store_names() -> list[str]:
    """Names of every store module in the package."""
    _discover()
    return sorted(_REGISTRY)


def store_class(name: str) -> type[Store]:
    if name not in _REGISTRY:
        _discover()
    if name not in _REGISTRY:
        broken = "".join(f"; module {m} failed to import ({why})" for m, why in sorted(_UNAVAILABLE.items()))
        raise StoreError(f"unknown store {name!r}; available: {', '.join(sorted(_REGISTRY))}{broken}")
    return _REGISTRY[name]


def open_store(name: str, path: str, schema: Schema, **options: Any) -> Store:
    """Open (creating if needed) the store called ``name`` at ``path``."""
    return store_class(name)(path, schema, **options)


def empty_result(schema: Schema, n_users: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return np.zeros(n_users + 1, dtype=np.int64), schema.empty_columns()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return repr(v)
