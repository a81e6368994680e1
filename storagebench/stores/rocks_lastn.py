"""RocksDB LastN: the production baseline SeqVault replaced (the paper's "RedLastN").

Key = the user id (8 bytes, big-endian); value = the user's newest ``max_len`` events as decimal
text (see :mod:`storagebench.stores.text_codec`). An append is a read-modify-write per user: get,
decode, append, sort, truncate, encode, put (rocksdict exposes no merge operator). The options are
those a careful operator would choose for point lookups of large values; all go into the result file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import rocksdict as rd

from seqvault.schema import Schema
from seqvault.seqmerge import csr_concat_groups, csr_groups, newest_per_group
from storagebench.stores.base import Store, StoreError, register_store
from storagebench.stores.sequences import merge_newest, pack_csr, split_by_user, split_values
from storagebench.stores.text_codec import decode_text, decode_text_many, encode_text, encode_text_many

_COMPRESSION = {"lz4": rd.DBCompressionType.lz4, "zstd": rd.DBCompressionType.zstd,
                "none": rd.DBCompressionType.none, "snappy": rd.DBCompressionType.snappy}
_LOCK_STRIPES = 64


def user_key(uid: int) -> bytes:
    return int(uid).to_bytes(8, "big")


def vector_key(uid: int) -> bytes:
    """A cached vector's key: 9 bytes, so it can never equal an 8-byte event key."""
    return b"V" + int(uid).to_bytes(8, "big")


# Option profiles. ``default``: what the first wave ran (LZ4 on every level, 16 KiB blocks).
# ``tuned``: what a careful operator runs for point reads of multi-KiB values, chosen by the sweep
# in ``scripts/rocksdb_sweep.py`` (compression x blob x block size; its figures are in the README):
# LZ4 on the upper levels, ZSTD at the bottommost level where ~90 % of the data lives, filters
# only where a lookup can miss (``optimize_filters_for_hits``: every read here is of a stored
# user, so bottommost filters would only cost DRAM), 16 KiB blocks, no BlobDB (it cost disk and
# read time in the sweep: values are rewritten whole on each append, so blobs turn to garbage fast).
ROCKSDB_PROFILES: dict[str, dict[str, Any]] = {
    "default": {"compression": "lz4", "bottommost_compression": "lz4", "bloom_bits_per_key": 10,
                "optimize_filters_for_hits": False, "block_size": 16 << 10, "enable_blob_files": False,
                "min_blob_size": 4096, "zstd_level": 3, "zstd_max_dict_bytes": 0},
    "tuned": {"compression": "lz4", "bottommost_compression": "zstd", "bloom_bits_per_key": 10,
              "optimize_filters_for_hits": True, "block_size": 16 << 10, "enable_blob_files": False,
              "min_blob_size": 4096, "zstd_level": 3, "zstd_max_dict_bytes": 0},
}


class RocksStoreBase(Store):
    """RocksDB tuned for point lookups; subclasses choose the value encoding."""

    thread_safe = True
    keeps_vectors = True

    def __init__(self, path: str, schema: Schema, *, profile: str = "tuned", write_buffer_bytes: int = 16 << 20,
                 max_background_jobs: int = 2, **kw: Any) -> None:
        if profile not in ROCKSDB_PROFILES:
            raise StoreError(f"RocksDB profile {profile!r} is not one of {', '.join(ROCKSDB_PROFILES)}")
        tuning = dict(ROCKSDB_PROFILES[profile])
        for key in list(kw):
            if key in tuning:
                tuning[key] = kw.pop(key)
        everywhere = kw.pop("compression_all_levels", None)  # --compression: one codec on every level
        if everywhere:
            tuning["compression"] = tuning["bottommost_compression"] = everywhere
        for key in ("compression", "bottommost_compression"):
            if tuning[key] not in _COMPRESSION:
                raise StoreError(f"{key} {tuning[key]!r} is not one of {', '.join(_COMPRESSION)}")
        super().__init__(path, schema, profile=profile, **tuning, write_buffer_bytes=write_buffer_bytes,
                         max_background_jobs=max_background_jobs, **kw)
        self.tuning = tuning
        os.makedirs(self.path, exist_ok=True)
        opts = rd.Options(raw_mode=True)
        opts.create_if_missing(True)
        table = rd.BlockBasedOptions()
        table.set_bloom_filter(tuning["bloom_bits_per_key"], False)  # full (not block-based) filter
        table.set_data_block_index_type(rd.DataBlockIndexType.binary_and_hash())
        table.set_data_block_hash_ratio(0.75)
        table.set_block_size(tuning["block_size"])
        # Index and filter blocks live in the block cache so the whole DRAM budget is one number,
        # like SeqVault's index + buffer.
        table.set_block_cache(rd.Cache(max(self.dram_budget_bytes, 1 << 20)))
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        opts.set_block_based_table_factory(table)
        opts.set_compression_type(_COMPRESSION[tuning["compression"]]())
        opts.set_bottommost_compression_type(_COMPRESSION[tuning["bottommost_compression"]]())
        if tuning["bottommost_compression"] == "zstd":
            # window_bits, level, strategy, max_dict_bytes
            opts.set_bottommost_compression_options(-14, tuning["zstd_level"], 0, tuning["zstd_max_dict_bytes"], True)
            if tuning["zstd_max_dict_bytes"]:
                opts.set_bottommost_zstd_max_train_bytes(100 * tuning["zstd_max_dict_bytes"], True)
        opts.set_optimize_filters_for_hits(tuning["optimize_filters_for_hits"])
        if tuning["enable_blob_files"]:
            opts.set_enable_blob_files(True)
            opts.set_min_blob_size(tuning["min_blob_size"])
            opts.set_blob_compression_type(_COMPRESSION[tuning["bottommost_compression"]]())
            opts.set_enable_blob_gc(True)
        opts.set_write_buffer_size(write_buffer_bytes)
        opts.set_max_write_buffer_number(2)
        opts.set_level_compaction_dynamic_level_bytes(True)
        opts.set_max_background_jobs(max_background_jobs)
        opts.set_use_direct_reads(self.direct_io)
        opts.set_use_direct_io_for_flush_and_compaction(self.direct_io)
        opts.set_keep_log_file_num(2)
        self._db = rd.Rdict(self.path, opts)
        wo = rd.WriteOptions()
        wo.sync = False  # WAL on, not fsynced per write: the same durability SeqVault gets with sync=False
        self._db.set_write_options(wo)
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._closed = False
        self.events_appended = 0

    # -- value encoding, per subclass: one user (reads) and a whole batch (appends) -------------
    def encode_value(self, uid: int, cols: Mapping[str, np.ndarray]) -> bytes:
        raise NotImplementedError

    def decode_value(self, uid: int, value: bytes) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def encode_values(self, users: np.ndarray, offsets: np.ndarray, cols: Mapping[str, np.ndarray]) -> list[bytes]:
        """Every user's value of a CSR batch (user i owns rows offsets[i]:offsets[i+1])."""
        raise NotImplementedError

    def decode_values(self, users: np.ndarray, values: list[bytes | None]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Stored values (None: no value) -> CSR offsets and columns."""
        raise NotImplementedError

    # -- the contract ---------------------------------------------------------------------------
    def append(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Read-modify-write of every user in the batch at once: one multi-get, one decode, one
        merge, one encode and one write batch (per-user calls would spend most of the time in glue)."""
        user_ids, columns = self.schema.validate(user_ids, columns)
        if len(user_ids) == 0:
            return
        order = np.argsort(user_ids, kind="stable")  # stable: a user's events keep their batch order
        sorted_uids = user_ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_uids[1:] != sorted_uids[:-1]])
        users = sorted_uids[starts]
        new_offsets = np.r_[starts, len(sorted_uids)].astype(np.int64)
        new_cols = {k: np.asarray(columns[k])[order] for k in self.schema.names}
        keys = [user_key(u) for u in users.tolist()]
        # Read-modify-write must not interleave with another writer of the same users; stripes
        # are taken in order so two batches cannot deadlock.
        stripes = sorted({u % _LOCK_STRIPES for u in users.tolist()})
        for i in stripes:
            self._locks[i].acquire()
        try:
            old_offsets, old_cols = self.decode_values(users, self._db.get(keys))
            groups, cols = csr_concat_groups([(csr_groups(old_offsets), old_cols), (csr_groups(new_offsets), new_cols)],
                                             list(self.schema.names))
            offsets, merged = newest_per_group(len(users), groups, cols, self.schema.time_field, self.max_len)
            batch = rd.WriteBatch(raw_mode=True)
            for key, value in zip(keys, self.encode_values(users, offsets, merged), strict=True):
                batch.put(key, value)
            self._db.write(batch)
        finally:
            for i in stripes:
                self._locks[i].release()
        self.events_appended += len(user_ids)

    def bulk_load(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        # The backfill arrives sorted by user with no user spanning chunks: one blind put per user.
        user_ids, columns = self.schema.validate(user_ids, columns)
        batch = rd.WriteBatch(raw_mode=True)
        for uid, cols in split_by_user(user_ids, columns):
            batch.put(user_key(uid), self.encode_value(uid, merge_newest(None, cols, self.schema, self.max_len)))
        self._db.write(batch)

    def finish_load(self) -> None:
        # An operator compacts once after a bulk load so lookups start from a tidy LSM tree.
        self._db.flush()
        self._db.compact_range(None, None)

    def get_many(self, user_ids: np.ndarray, last_n: int | None = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        uids = [int(u) for u in np.asarray(user_ids, dtype=np.uint64)]
        values = self._db.get([user_key(u) for u in uids])
        per_user = [None if v is None else self.decode_value(u, v) for u, v in zip(uids, values, strict=True)]
        return pack_csr(per_user, self.schema, self.keep(last_n))

    # -- cached vectors: the same entries as SeqVault's table, one key per user ---------------
    def open_vectors(self, dim: int, dtype: str) -> dict[str, Any]:
        from seqvault.vectorcodec import VECTOR_DTYPES, entry_bytes

        if dtype not in VECTOR_DTYPES or dim < 1:
            raise StoreError(f"cached vectors need dim >= 1 and a dtype in {', '.join(VECTOR_DTYPES)}; "
                             f"got dim={dim}, dtype={dtype!r}")
        current = getattr(self, "_vectors", None)
        if current is not None:   # idempotent for the same layout; one lock for the store's lifetime
            if (current["dim"], current["dtype"]) != (int(dim), dtype):
                raise StoreError(f"store {self.name!r} keeps cached vectors of dim={current['dim']}, "
                                 f"dtype={current['dtype']}; cannot reopen them as dim={dim}, dtype={dtype!r}")
            return {k: current[k] for k in ("dim", "dtype", "entry_bytes")}
        self._vector_lock = threading.Lock()
        self._vectors = {"dim": int(dim), "dtype": dtype, "entry_bytes": entry_bytes(dim, dtype), "puts": 0,
                         "applied": 0, "new_users": 0}
        return {k: self._vectors[k] for k in ("dim", "dtype", "entry_bytes")}

    def _vector_layout(self) -> dict[str, Any]:
        layout = getattr(self, "_vectors", None)
        if layout is None:
            raise StoreError(f"store {self.name!r} has no cached vectors: call open_vectors first")
        return layout

    def put_vectors(self, user_ids: np.ndarray, versions: np.ndarray, vectors: np.ndarray) -> int:
        from seqvault.vectorcodec import encode_entries

        layout = self._vector_layout()
        uids, versions = np.asarray(user_ids, dtype=np.uint64), np.asarray(versions, dtype=np.uint64)
        # Within one call the highest version of a user wins: sort by (user, version), keep the last.
        order = np.lexsort((versions, uids))
        last = np.r_[uids[order][1:] != uids[order][:-1], True]
        keep = order[last]
        entries = encode_entries(uids[keep], versions[keep], np.asarray(vectors, np.float32)[keep], layout["dtype"])
        keys = [vector_key(int(u)) for u in uids[keep]]
        batch, applied, new_users = rd.WriteBatch(raw_mode=True), 0, 0
        with self._vector_lock:   # read-modify-write: a concurrent put of a newer version must not be lost
            for key, old, entry, version in zip(keys, self._db.get(keys), entries, versions[keep], strict=True):
                if old is not None and int.from_bytes(old[8:16], "little") >= int(version):
                    continue
                batch.put(key, entry.tobytes())
                applied += 1
                new_users += old is None
            if applied:
                self._db.write(batch)
            layout["puts"] += len(uids)
            layout["applied"] += applied
            layout["new_users"] += new_users
        return applied

    def get_vector_entries(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        layout = self._vector_layout()
        uids = np.asarray(user_ids, dtype=np.uint64)
        values = self._db.get([vector_key(int(u)) for u in uids])
        found = np.array([v is not None for v in values], dtype=bool)
        entries = np.zeros((len(uids), layout["entry_bytes"]), dtype=np.uint8)
        for i in np.flatnonzero(found):
            entries[i] = np.frombuffer(values[i], dtype=np.uint8)
        return found, entries

    def vector_stats(self) -> dict[str, Any]:
        layout = getattr(self, "_vectors", None)
        if layout is None:
            return {}
        return {**layout, "stored_bytes_per_user": layout["entry_bytes"] + 9,
                "stored_bytes_note": "entry + 9-byte key, before RocksDB's block compression and index"}

    def flush(self) -> None:
        self._db.flush()
        self._db.flush_wal(True)

    def compact(self) -> dict[str, int]:
        self.flush()
        # Rewrite the bottommost level too (RocksDB skips it by default when no compaction filter
        # is set), so every file ends in the bottommost level with its compression.
        full = rd.CompactOptions()
        full.set_bottommost_level_compaction(rd.BottommostLevelCompaction.force())
        self._db.compact_range(None, None, full)
        # RocksDB deletes the compacted-away files in the background: measure once they are gone.
        deadline, last = time.monotonic() + 10.0, self.disk_bytes()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.disk_bytes()
            if now["total"] == last["total"] and self._db.property_int_value("rocksdb.num-running-compactions") == 0:
                return now
            last = now
        return last

    def disk_files(self) -> dict[str, str]:
        out = {}
        for entry in os.scandir(self.path):
            if not entry.is_file():
                continue
            n = entry.name
            category = ("sst" if n.endswith(".sst") else "wal" if n.endswith(".log")
                        else "blob" if n.endswith(".blob") else "manifest" if n.startswith("MANIFEST")
                        else "info_log" if n.startswith("LOG") else "other")
            out[entry.path] = category
        return out

    def stats(self) -> dict[str, Any]:
        props = {}
        for p in ("rocksdb.estimate-num-keys", "rocksdb.block-cache-usage", "rocksdb.cur-size-all-mem-tables",
                  "rocksdb.estimate-table-readers-mem", "rocksdb.total-sst-files-size",
                  "rocksdb.live-sst-files-size", "rocksdb.estimate-live-data-size",
                  "rocksdb.num-running-compactions", "rocksdb.compaction-pending"):
            try:
                props[p.removeprefix("rocksdb.")] = self._db.property_int_value(p)
            except Exception:  # a property this RocksDB build does not know: leave it out
                continue
        props["dram_bytes"] = (props.get("block-cache-usage", 0) + props.get("cur-size-all-mem-tables", 0))
        return props

    def config(self) -> dict[str, Any]:
        return {**super().config(), "rocksdict_version": getattr(rd, "__version__", "unknown"),
                "key": "user id, 8 bytes big-endian", "filter": "full bloom", "tuning": self.tuning,
                "data_block_index": "binary_and_hash (ratio 0.75)",
                "block_cache_bytes": max(self.dram_budget_bytes, 1 << 20),
                "cache_index_and_filter_blocks": True, "max_write_buffer_number": 2,
                "compaction": "leveled, dynamic level bytes",
                "use_direct_reads": self.direct_io, "use_direct_io_for_flush_and_compaction": self.direct_io,
                "wal": "on, not synced per write", "update": "read-modify-write per append batch (multi-get, decode, merge, encode, write batch)"}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.flush()
            self._db.close()


@register_store
class RocksLastNStore(RocksStoreBase):
    """Values as schema-unaware decimal text."""

    name = "rocksdb_lastn"

    def encode_value(self, uid: int, cols: Mapping[str, np.ndarray]) -> bytes:
        return encode_text(cols, self.schema)

    def decode_value(self, uid: int, value: bytes) -> dict[str, np.ndarray]:
        return decode_text(value, self.schema)

    def encode_values(self, users: np.ndarray, offsets: np.ndarray, cols: Mapping[str, np.ndarray]) -> list[bytes]:
        return split_values(*encode_text_many(offsets, cols, self.schema))

    def decode_values(self, users: np.ndarray, values: list[bytes | None]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return decode_text_many(values, self.schema)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "value_format": "decimal text: ',' between fields, ';' between events"}
