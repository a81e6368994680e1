"""The sweep behind the ``tuned`` RocksDB profile: compression x BlobDB x block size.

For each combination, in-process (no node, so the figures are the store's own): bulk-load the
small preset, apply the first ``--live-s`` seconds of its live appends, then measure disk (as
written, and after a full compaction), the CPU per appended event, and the read time of
``--reads`` random users (direct I/O, newest N). Prints one line per combination and writes
``--out`` (JSON). Run: ``python scripts/rocksdb_sweep.py --store rocksdb_lastn``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time

import numpy as np

from storagebench.stores import open_store
from workloads import OP_APPEND, GeneratorConfig, generate

COMPRESSION = {  # name -> (upper levels, bottommost, zstd dictionary bytes)
    "lz4": ("lz4", "lz4", 0),
    "lz4+zstd_bottom": ("lz4", "zstd", 0),
    "zstd": ("zstd", "zstd", 0),
    "lz4+zstd_dict_bottom": ("lz4", "zstd", 16 << 10),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="rocksdb_lastn", choices=["rocksdb_lastn", "rocksdb_packed"])
    ap.add_argument("--live-s", type=float, default=30.0, help="seconds of the live stream to append")
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--block-sizes", default="16,64", help="KiB, comma-separated")
    ap.add_argument("--compressions", default=",".join(COMPRESSION), help="comma-separated, from: " + ", ".join(COMPRESSION))
    ap.add_argument("--blob", default="off,on", help="BlobDB settings to try: off, on or both")
    ap.add_argument("--out", default="results/rocksdb_sweep.json")
    args = ap.parse_args()
    wl = generate(GeneratorConfig.preset("small"))
    appends, t0 = [], None
    for chunk in wl.iter_live(chunk_ops=50_000):
        if not len(chunk.op_time_ms):
            continue
        uids, cols = chunk.events
        t0 = int(chunk.op_time_ms[0]) if t0 is None else t0
        for j in np.flatnonzero(chunk.op_kind == OP_APPEND):
            s, e = int(chunk.event_start[j]), int(chunk.event_end[j])
            appends.append((uids[s:e].copy(), {k: v[s:e].copy() for k, v in cols.items()}))
        if (int(chunk.op_time_ms[-1]) - t0) / 1e3 > args.live_s:
            break
    users = np.unique(np.concatenate([u for u, _ in wl.iter_backfill()]))
    rng = np.random.default_rng(0)
    read_users = rng.choice(users, size=min(args.reads, len(users)), replace=False)
    rows = []
    blocks = [int(b) << 10 for b in args.block_sizes.split(",")]
    chosen = [(c, COMPRESSION[c]) for c in args.compressions.split(",")]
    blobs = [b == "on" for b in args.blob.split(",")]
    for (name, (upper, bottom, dict_bytes)), blob, block in itertools.product(chosen, blobs, blocks):
        path = tempfile.mkdtemp(prefix="sweep-", dir=os.path.dirname(os.path.abspath(args.out)) or ".")
        store = open_store(args.store, path, wl.schema, max_len=1000, direct_io=True, dram_budget_bytes=64 << 20,
                           profile="tuned", compression=upper, bottommost_compression=bottom,
                           zstd_max_dict_bytes=dict_bytes, enable_blob_files=blob, block_size=block)
        for uids, cols in wl.iter_backfill(chunk_events=250_000):
            store.bulk_load(uids, cols)
        store.finish_load()
        cpu0 = time.process_time()
        for uids, cols in appends:
            store.append(uids, cols)
        append_cpu = time.process_time() - cpu0
        store.flush()
        written = store.disk_bytes()["total"]
        t = []
        for u in read_users:
            t0 = time.perf_counter_ns()
            store.get_many(np.array([u], np.uint64))
            t.append(time.perf_counter_ns() - t0)
        compacted = store.compact()["total"]
        store.close()
        shutil.rmtree(path)
        t_us = np.array(t) / 1e3
        row = {"compression": name, "blob": blob, "block_kib": block >> 10, "disk_mib": written / 2**20,
               "compacted_mib": compacted / 2**20, "append_us_per_event": 1e6 * append_cpu / sum(len(u) for u, _ in appends),
               "read_p50_us": float(np.percentile(t_us, 50)), "read_p99_us": float(np.percentile(t_us, 99))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"store": args.store, "live_s": args.live_s, "reads": args.reads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
