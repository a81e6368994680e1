"""SeqVault's DRAM hash index: user id -> where that user's record lives on disk.

An open-addressing table with linear probing, 26 bytes per slot: one (capacity, 3) uint64
array whose columns are ``keys``, ``loc`` and ``meta`` (so a slot's key and payload are
adjacent in memory) plus a uint16 array ``fid``::

    keys    uint64   the user id (any value, 0 and 2**64-1 included)
    loc     uint64   offset in the data file (bits 0-39) | event count (bits 40-63)
    meta    uint64   record length in bytes (bits 0-31) | record checksum (bits 32-63)
    fid     uint16   data file id; 0xFFFF marks an empty slot, 0xFFFE a deleted one (tombstone)

So slot state lives in ``fid`` and no key value is reserved. Limits (checked on upsert):
file id < 65534, offset < 2**40 (1 TiB per data file), count < 2**24 events, length < 2**32.

The home slot of a key is ``((fmix64(key) >> 32) * capacity) >> 32``, which allows any
capacity, so the table grows by 1.5x (not 2x) to keep memory per user low. Deletes leave
tombstones; when live + tombstone slots would pass ``max_load`` the table is rebuilt: at the
same size when dropping the tombstones leaves ample room, else 1.5x bigger (or, when one upsert
brings more new keys than that holds, straight to the ``for_users`` size of the result, so a
bulk load of n users costs one rebuild and ends under 32 bytes per user). At the default
max_load of 0.85 that is 26 / 0.85 = 30.6 bytes per user just before a grow and
26 / 0.567 = 45.9 right after a 1.5x one. ``capacity`` counts slots: size a table for n users
with ``for_users`` / ``from_entries`` (or ``HashIndex(int(n / 0.82))``) to stay under 32 bytes
per user.

Concurrency (the engine serialises writers; readers may run alongside, also in other threads
since the kernels release the GIL):

* A rebuild fills new arrays and then swaps one tuple reference; a reader holds the tuple it
  started with, so it sees either the old or the new table, never a mix.
* Inserting a new key writes key, loc and meta first and the slot's ``fid`` last, so a reader
  never sees a half-written new entry; a delete changes ``fid`` only.
* Updating an existing key rewrites loc, meta and fid in place, so a racing reader may see a
  mix of the old and new location. Readers must therefore check what they read (the record
  header's user id and the checksum from the entry), or the engine publishes with copy() + swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

U64 = np.uint64
EMPTY = np.uint16(0xFFFF)
TOMBSTONE = np.uint16(0xFFFE)
MAX_FILE_ID = 0xFFFD
MAX_OFFSET = (1 << 40) - 1
MAX_COUNT = (1 << 24) - 1
MAX_LENGTH = (1 << 32) - 1
SLOT_BYTES = 26
_MIN_CAPACITY = 8
_MAX_CAPACITY = (1 << 32) - 1


class IndexEntry(NamedTuple):
    """Where one user's record is: data file, byte offset and length, events in it, its checksum."""

    user_id: int
    file_id: int
    offset: int
    length: int
    count: int
    checksum: int


@dataclass
class IndexEntries:
    """Parallel arrays of index entries; ``found`` says which queried ids exist (lookup only)."""

    user_id: np.ndarray   # uint64
    found: np.ndarray     # bool
    file_id: np.ndarray   # int64
    offset: np.ndarray    # int64
    length: np.ndarray    # int64
    count: np.ndarray     # int64
    checksum: np.ndarray  # uint32

    def __len__(self) -> int:
        return len(self.user_id)

    def entry(self, i: int) -> IndexEntry | None:
        if not self.found[i]:
            return None
        return IndexEntry(int(self.user_id[i]), int(self.file_id[i]), int(self.offset[i]),
                          int(self.length[i]), int(self.count[i]), int(self.checksum[i]))


# -- kernels ---------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _home(key: np.uint64, cap: int) -> int:
    # murmur3's fmix64 spreads sequential ids; the top 32 bits then scale to [0, cap).
    h = key
    h ^= h >> U64(33)
    h *= U64(0xFF51AFD7ED558CCD)
    h ^= h >> U64(33)
    h *= U64(0xC4CEB9FE1A85EC53)
    h ^= h >> U64(33)
    return np.int64(((h >> U64(32)) * U64(cap)) >> U64(32))


@njit(cache=True, nogil=True, inline="always")
def _find(keys: np.ndarray, fid: np.ndarray, key: np.uint64) -> int:
    cap = len(keys)
    i = _home(key, cap)
    while True:
        s = fid[i]
        if s == EMPTY:
            return -1
        if s != TOMBSTONE and keys[i] == key:
            return i
        i += 1
        if i == cap:
            i = 0


@njit(cache=True, nogil=True)
def _lookup(keys: np.ndarray, loc: np.ndarray, meta: np.ndarray, fid: np.ndarray, queries: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(found, fid, loc, meta) per query, zeros where absent; gathered while the slot is cached."""
    n = len(queries)
    found = np.zeros(n, np.bool_)
    out_fid = np.zeros(n, np.uint16)
    out_loc = np.zeros(n, np.uint64)
    out_meta = np.zeros(n, np.uint64)
    for j in range(n):
        i = _find(keys, fid, queries[j])
        if i >= 0:
            found[j] = True
            out_loc[j] = loc[i]
            out_meta[j] = meta[i]
            out_fid[j] = fid[i]
    return found, out_fid, out_loc, out_meta


@njit(cache=True, nogil=True)
def _get(keys: np.ndarray, loc: np.ndarray, meta: np.ndarray, fid: np.ndarray, key: np.uint64
         ) -> tuple[int, int, int, int, int, int]:
    i = _find(keys, fid, key)
    if i < 0:
        return -1, 0, 0, 0, 0, 0
    lo = loc[i]
    me = meta[i]
    # All int64 so the returned tuple is homogeneous (mixing uint64 in would make it float64).
    return (i, np.int64(fid[i]), np.int64(lo & U64(MAX_OFFSET)), np.int64(me & U64(MAX_LENGTH)),
            np.int64(lo >> U64(40)), np.int64(me >> U64(32)))


@njit(cache=True, nogil=True)
def _upsert(keys: np.ndarray, loc: np.ndarray, meta: np.ndarray, fid: np.ndarray, used: int, limit: int,
            uids: np.ndarray, new_loc: np.ndarray, new_meta: np.ndarray, new_fid: np.ndarray, start: int
            ) -> tuple[int, int, int]:
    """Insert/update rows from ``start`` until done or a new key would push used slots past
    ``limit``. Returns (next row, live entries added, tombstones reused)."""
    cap = len(keys)
    added = 0
    reused = 0
    for j in range(start, len(uids)):
        key = uids[j]
        i = _home(key, cap)
        free = -1
        while True:
            s = fid[i]
            if s == EMPTY:
                break
            if s == TOMBSTONE:
                if free < 0:
                    free = i
            elif keys[i] == key:
                break
            i += 1
            if i == cap:
                i = 0
        if fid[i] != EMPTY:  # existing key: update in place
            loc[i] = new_loc[j]
            meta[i] = new_meta[j]
            fid[i] = new_fid[j]
            continue
        if free >= 0:
            i = free
            reused += 1
        else:
            if used + 1 > limit:
                return j, added, reused
            used += 1
        keys[i] = key
        loc[i] = new_loc[j]
        meta[i] = new_meta[j]
        fid[i] = new_fid[j]  # written last: publishes the entry to concurrent readers
        added += 1
    return len(uids), added, reused


@njit(cache=True, nogil=True)
def _delete(keys: np.ndarray, fid: np.ndarray, uids: np.ndarray) -> int:
    removed = 0
    for j in range(len(uids)):
        i = _find(keys, fid, uids[j])
        if i >= 0:
            fid[i] = TOMBSTONE
            removed += 1
    return removed


@njit(cache=True, nogil=True)
def _fill(keys: np.ndarray, loc: np.ndarray, meta: np.ndarray, fid: np.ndarray,
          src_keys: np.ndarray, src_loc: np.ndarray, src_meta: np.ndarray, src_fid: np.ndarray) -> None:
    """Insert distinct keys into a table known not to hold them (rebuilds): no search, no checks."""
    cap = len(keys)
    for j in range(len(src_keys)):
        i = _home(src_keys[j], cap)
        while fid[i] != EMPTY:
            i += 1
            if i == cap:
                i = 0
        keys[i] = src_keys[j]
        loc[i] = src_loc[j]
        meta[i] = src_meta[j]
        fid[i] = src_fid[j]


# -- the table -------------------------------------------------------------------------------------
def _as_column(values: object, n: int, name: str, hi: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape} but there are {n} user ids")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    if n:
        bad = (arr < 0) | (arr > hi) if arr.dtype.kind == "i" else arr > np.uint64(hi)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{name} {arr[row]} (row {row}) is outside the index's range 0..{hi}")
    return arr.astype(np.uint64)


class HashIndex:
    """user id (uint64) -> (file_id, offset, length, count, checksum); open addressing, Numba kernels."""

    def __init__(self, capacity: int = 1024, *, max_load: float = 0.85, growth: float = 1.5) -> None:
        if not 0.1 <= max_load <= 0.95:
            raise ValueError(f"max_load must be in [0.1, 0.95], got {max_load}")
        if growth <= 1.05:
            raise ValueError(f"growth must be > 1.05, got {growth}")
        self.max_load = max_load
        self.growth = growth
        self._live = 0
        self._tombstones = 0
        self._t = self._empty_tables(capacity)

    @staticmethod
    def _empty_tables(capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cap = int(min(max(capacity, _MIN_CAPACITY), _MAX_CAPACITY))
        return _tables(np.zeros((cap, 3), np.uint64), np.full(cap, EMPTY, np.uint16))

    # -- size --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live

    @property
    def capacity(self) -> int:
        return len(self._t[0])

    @property
    def nbytes(self) -> int:
        """DRAM bytes of the table arrays (26 per slot)."""
        return sum(a.nbytes for a in self._t)

    def _limit(self, cap: int) -> int:
        return min(int(cap * self.max_load), cap - 1)

    def _rebuild(self, capacity: int) -> None:
        keys, loc, meta, fid = self._t
        live = fid < TOMBSTONE
        new = self._empty_tables(capacity)
        _fill(*new, keys[live], loc[live], meta[live], fid[live])
        self._t = new  # one reference swap: readers see the old or the new table
        self._tombstones = 0

    # -- reads -------------------------------------------------------------------------------------
    def get(self, user_id: int) -> IndexEntry | None:
        keys, loc, meta, fid = self._t
        slot, f, off, length, count, crc = _get(keys, loc, meta, fid, np.uint64(user_id))
        if slot < 0:
            return None
        return IndexEntry(int(user_id), f, off, length, count, crc)

    def __contains__(self, user_id: int) -> bool:
        return self.get(user_id) is not None

    def lookup(self, user_ids: np.ndarray) -> IndexEntries:
        """Vectorised lookup: one entry per query, ``found`` False (and zeros) where absent."""
        q = np.ascontiguousarray(user_ids, dtype=np.uint64).reshape(-1)
        found, f, lo, me = _lookup(*self._t, q)
        return _unpack(q, found, f, lo, me)

    def entries(self) -> IndexEntries:
        """All live entries, in slot order."""
        keys, loc, meta, fid = self._t
        live = fid < TOMBSTONE
        return _unpack(keys[live], np.ones(int(live.sum()), np.bool_), fid[live], loc[live], meta[live])

    # -- writes (callers serialise them) -----------------------------------------------------------
    def upsert(self, user_ids: np.ndarray, file_ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
               counts: np.ndarray, checksums: np.ndarray) -> None:
        """Insert or replace entries (a later duplicate in the batch wins); grows as needed."""
        uids = np.ascontiguousarray(user_ids, dtype=np.uint64).reshape(-1)
        n = len(uids)
        f = _as_column(file_ids, n, "file_id", MAX_FILE_ID).astype(np.uint16)
        off = _as_column(offsets, n, "offset", MAX_OFFSET)
        ln = _as_column(lengths, n, "length", MAX_LENGTH)
        cnt = _as_column(counts, n, "count", MAX_COUNT)
        crc = _as_column(checksums, n, "checksum", MAX_LENGTH)
        new_loc = off | (cnt << U64(40))
        new_meta = ln | (crc << U64(32))
        start = 0
        while start < n:
            keys, loc, meta, fid = self._t
            cap = len(keys)
            start, added, reused = _upsert(keys, loc, meta, fid, self._live + self._tombstones,
                                           self._limit(cap), uids, new_loc, new_meta, f, start)
            self._live += added
            self._tombstones -= reused
            if start < n:
                # Full. Count the keys still to come that are really new (a merge's batch is
                # mostly updates of present users), then rebuild: at the same size (dropping
                # tombstones) when they leave a quarter of the headroom, else 1.5x bigger, or
                # straight to the packed size of the result if that is bigger still (one rebuild,
                # not one per 1.5x step, and <= 32 bytes per user after a big bulk load).
                need = self._live + _count_new(self._t, uids[start:])
                if need <= 0.75 * self._limit(cap):
                    self._rebuild(cap)
                else:
                    self._rebuild(max(int(cap * self.growth) + 1, _packed_capacity(need, self.max_load)))

    def delete(self, user_ids: np.ndarray) -> int:
        """Remove the given ids (absent ones are ignored); returns how many were removed."""
        keys, _, _, fid = self._t
        removed = int(_delete(keys, fid, np.ascontiguousarray(user_ids, dtype=np.uint64).reshape(-1)))
        self._live -= removed
        self._tombstones += removed
        return removed

    # -- whole-table operations --------------------------------------------------------------------
    @classmethod
    def for_users(cls, n: int, *, max_load: float = 0.85, growth: float = 1.5) -> HashIndex:
        """An empty index sized for ``n`` users as :meth:`from_entries` sizes it (<= 32 bytes per
        user at the default max_load once they are in, ~4% room before the first grow)."""
        return cls(_packed_capacity(n, max_load), max_load=max_load, growth=growth)

    @classmethod
    def from_entries(cls, e: IndexEntries, *, max_load: float = 0.85, growth: float = 1.5) -> HashIndex:
        """Build an index holding ``e``'s entries (rows with found False are skipped) at 96% of
        ``max_load``: <= 32 bytes per user at the default max_load, with ~4% room before a grow."""
        mask = np.asarray(e.found, dtype=bool)
        n = int(mask.sum())
        idx = cls.for_users(n, max_load=max_load, growth=growth)
        idx.upsert(e.user_id[mask], e.file_id[mask], e.offset[mask], e.length[mask], e.count[mask],
                   e.checksum[mask])
        return idx

    def copy(self) -> HashIndex:
        other = HashIndex.__new__(HashIndex)
        other.max_load = self.max_load
        other.growth = self.growth
        other._live = self._live
        other._tombstones = self._tombstones
        other._t = _tables(self._t[0].base.copy(), self._t[3].copy())
        return other

    def __repr__(self) -> str:
        per_user = self.nbytes / self._live if self._live else float("nan")
        return (f"HashIndex({self._live} users, {self.capacity} slots, {self.nbytes} bytes, "
                f"{per_user:.1f} B/user)")


def _packed_capacity(n: int, max_load: float) -> int:
    # 96% of max_load: <= 32 bytes per user at the default 0.85, with ~4% room before a grow.
    return int(n / (max_load * 0.96)) + 1


def _count_new(tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], uids: np.ndarray) -> int:
    """How many distinct keys of ``uids`` the table does not hold."""
    found, _, _, _ = _lookup(*tables, uids)
    absent = uids[~found]
    return len(np.unique(absent)) if len(absent) > 1 else len(absent)


def _tables(rows: np.ndarray, fid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # keys, loc and meta are strided columns of one (capacity, 3) array, so a slot's key and
    # payload share a cache line or two: a hit costs ~2 cache misses (fid, row), not 4.
    return rows[:, 0], rows[:, 1], rows[:, 2], fid


def _unpack(user_id: np.ndarray, found: np.ndarray, fid: np.ndarray, loc: np.ndarray, meta: np.ndarray
            ) -> IndexEntries:
    return IndexEntries(
        user_id=np.asarray(user_id, dtype=np.uint64),
        found=found,
        file_id=fid.astype(np.int64),
        offset=(loc & U64(MAX_OFFSET)).astype(np.int64),
        length=(meta & U64(MAX_LENGTH)).astype(np.int64),
        count=(loc >> U64(40)).astype(np.int64),
        checksum=(meta >> U64(32)).astype(np.uint32),
    )
