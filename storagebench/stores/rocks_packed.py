"""The ablation row: the same tuned RocksDB as LastN, but values in SeqVault's packed column record.

Comparing it with ``rocksdb_lastn`` isolates what the schema-aware layout is worth; comparing it with
SeqVault isolates the DRAM index and merge design.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from seqvault.codec import decode_record, decode_records, encode_record, encode_records
from storagebench.stores.base import register_store
from storagebench.stores.rocks_lastn import RocksStoreBase, user_key
from storagebench.stores.sequences import pack_csr, split_values


@register_store
class RocksPackedStore(RocksStoreBase):
    name = "rocksdb_packed"

    def encode_value(self, uid: int, cols: Mapping[str, np.ndarray]) -> bytes:
        return encode_record(uid, dict(cols), self.schema).tobytes()

    def decode_value(self, uid: int, value: bytes) -> dict[str, np.ndarray]:
        return decode_record(value, self.schema, expect_user=uid)

    def encode_values(self, users: np.ndarray, offsets: np.ndarray, cols: Mapping[str, np.ndarray]) -> list[bytes]:
        return split_values(*encode_records(users, offsets, dict(cols), self.schema))

    def decode_values(self, users: np.ndarray, values: list[bytes | None]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        found = [i for i, v in enumerate(values) if v is not None]
        if not found:
            return np.zeros(len(values) + 1, np.int64), self.schema.empty_columns()
        sizes = np.array([len(values[i]) for i in found], dtype=np.int64)
        rec_offsets = np.zeros(len(found) + 1, dtype=np.int64)
        np.cumsum(sizes, out=rec_offsets[1:])
        buf = np.frombuffer(b"".join(values[i] for i in found), dtype=np.uint8)
        ev_offsets, cols = decode_records(buf, rec_offsets[:-1], self.schema)
        counts = np.zeros(len(values), dtype=np.int64)
        counts[found] = np.diff(ev_offsets)
        offsets = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return offsets, cols

    def get_many(self, user_ids: np.ndarray, last_n: int | None = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # The packed record can decode only the newest last_n events; text cannot.
        n = self.keep(last_n)
        uids = [int(u) for u in np.asarray(user_ids, dtype=np.uint64)]
        values = self._db.get([user_key(u) for u in uids])
        per_user = [None if v is None else decode_record(v, self.schema, last_n=n, expect_user=u)
                    for u, v in zip(uids, values, strict=True)]
        return pack_csr(per_user, self.schema, n)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "value_format": "seqvault.codec packed column record (FOR/DELTA bit-packing)"}
