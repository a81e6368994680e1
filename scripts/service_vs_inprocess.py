"""A store's read service time inside the storage node against the same call in-process.

Both sides read the same users of the same bulk-loaded store (direct I/O) at the same Poisson
pace, the caller spinning between calls as the load generator does. In-process there is nothing
else in the process; the node also has its writer and maintenance threads and the protocol.
``--with-appends`` adds the workload's live appends to the node run (the in-process side stays
read-only), which shows what the write path costs the reads. Run:
``python scripts/service_vs_inprocess.py --store seqvault``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from storagebench.experiments.run import RunConfig, load_backfill, prepare
from storagebench.keepawake import KeepAwake
from storagebench.node import NodeClient
from storagebench.replay import OP_NAMES, Schedule, replay
from storagebench.stores import open_store
from workloads import GeneratorConfig, generate


def pct(values_us: np.ndarray) -> dict[str, float]:
    return {f"p{p:g}_ms": float(np.percentile(values_us, p)) / 1e3 for p in (50, 99, 99.9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="seqvault")
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--with-appends", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="results/service_vs_inprocess.json")
    args = ap.parse_args()
    os.sched_setaffinity(0, [0])
    wl = generate(GeneratorConfig.preset("small"))
    cfg = RunConfig(speed=None, rate=args.rate, warmup_s=2.0, window_s=args.seconds, crosscheck_users=None)
    prepared = prepare(wl, cfg)
    sched = prepared.schedule
    if not args.with_appends:
        idx = np.flatnonzero(sched.kinds == OP_NAMES.index("read"))
        sched = Schedule(sched.kinds[idx], sched.offsets_ns[idx], [sched.args[i] for i in idx],
                         int(np.searchsorted(idx, sched.measured_from)), sched.appended_events[idx])
    reads = [sched.args[i] for i in range(sched.measured_from, len(sched)) if sched.kinds[i] == OP_NAMES.index("read")]
    gaps = np.diff(sched.offsets_ns[sched.measured_from:][sched.kinds[sched.measured_from:] == OP_NAMES.index("read")])
    root = tempfile.mkdtemp(prefix="svc-", dir=os.path.abspath("."))
    path = os.path.join(root, "store")
    options = {"max_len": 1000, "direct_io": True}
    out = {"store": args.store, "rate": args.rate, "with_appends": args.with_appends, "runs": []}
    try:
        with KeepAwake([1]), NodeClient(args.store, path, wl.schema, options, cpus=[1]) as client:
            load_backfill(client, wl.iter_backfill(chunk_events=250_000))
        for r in range(args.repeats):
            # in-process, pinned to the node's CPU, nothing else in the process
            os.sched_setaffinity(0, [1])
            store = open_store(args.store, path, wl.schema, **options)
            store.get_many(reads[0][0], reads[0][1])
            t = []
            nxt = time.monotonic_ns()
            for (uids, last_n), gap in zip(reads[1:], gaps, strict=False):
                nxt += int(gap)
                while time.monotonic_ns() < nxt:
                    pass
                t0 = time.perf_counter_ns()
                store.get_many(uids, last_n)
                t.append(time.perf_counter_ns() - t0)
            store.close()
            os.sched_setaffinity(0, [0])
            inproc = pct(np.array(t) / 1e3)
            with KeepAwake([1]), NodeClient(args.store, path, wl.schema, options, cpus=[1]) as client:
                client.call("get", reads[0][0], reads[0][1])
                res = replay(client, sched)
            node = {k: res["ops"]["read"]["service"][k] for k in ("p50_ms", "p99_ms", "p999_ms")}
            run = {"repeat": r + 1, "in_process": inproc, "node_service": node,
                   "ratio_p50": node["p50_ms"] / inproc["p50_ms"], "ratio_p99": node["p99_ms"] / inproc["p99_ms"]}
            out["runs"].append(run)
            print(json.dumps(run), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
