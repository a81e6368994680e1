"""SeqVault against a plain Python model of its contract, driven by hypothesis state machines.

The contract: per user, the newest ``max_len`` events ordered by time, ties in arrival order; a
deleted or unknown user reads as empty. The machines interleave appends (out-of-order times, many
ties), reads, deletes, merges, reclamation, bulk loads, reopen and simulated crashes (the instance
dropped without closing, the WAL cut at a random byte), and check every user after every step.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from seqvault import Field, MergePolicy, Schema, SchemaError, SeqVault
from seqvault.wal import segment_name

SCHEMA = Schema([Field("ts", "int64"), Field("item", "uint32"), Field("flag", "int8")], time_field="ts")
USERS = [0, 1, 2, 3, 2**64 - 1]
NAMES = ("ts", "item", "flag")
POLICY = MergePolicy(max_buffer_events=8, max_age_s=3600, reclaim_live_fraction=0.6, data_file_bytes=4096)

event = st.tuples(
    st.sampled_from(USERS),
    st.one_of(st.integers(0, 4), st.integers(-(2**63), 2**63 - 1)),  # mostly ties, sometimes extremes
    st.integers(0, 2**32 - 1),
    st.integers(-128, 127),
)
batch = st.lists(event, min_size=1, max_size=12)


class Model:
    """Every event ever appended per user, with a global arrival number; reads sort and truncate."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.events: dict[int, list[tuple[int, int, int, int]]] = {}
        self.seq = 0

    def append(self, rows: list[tuple[int, int, int, int]]) -> None:
        for uid, ts, item, flag in rows:
            self.events.setdefault(uid, []).append((ts, self.seq, item, flag))
            self.seq += 1

    def delete(self, uids: list[int]) -> None:
        for u in uids:
            self.events.pop(u, None)

    def get(self, uid: int, last_n: int | None = None) -> dict[str, np.ndarray]:
        keep = self.max_len if last_n is None else min(last_n, self.max_len)
        rows = sorted(self.events.get(uid, []))[-keep:] if keep else []
        return {"ts": np.array([r[0] for r in rows], np.int64),
                "item": np.array([r[2] for r in rows], np.uint32),
                "flag": np.array([r[3] for r in rows], np.int8)}

    def copy(self) -> Model:
        m = Model(self.max_len)
        m.events = {k: list(v) for k, v in self.events.items()}
        m.seq = self.seq
        return m


def columns_of(rows: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    uids = np.array([r[0] for r in rows], np.uint64)
    return uids, {"ts": np.array([r[1] for r in rows], np.int64),
                  "item": np.array([r[2] for r in rows], np.uint32),
                  "flag": np.array([r[3] for r in rows], np.int8)}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], fields: tuple[str, ...], ctx: str) -> None:
    assert list(got) == list(fields), ctx
    for f in fields:
        assert got[f].dtype == SCHEMA.dtype(f), (ctx, f)
        np.testing.assert_array_equal(got[f], want[f], err_msg=f"{ctx}: field {f}")


class SeqVaultMachine(RuleBasedStateMachine):
    max_len_strategy = st.sampled_from([3, 1000])

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="svstate-")
        self.path = os.path.join(self.tmp, "store")
        self.sv: SeqVault | None = None

    @initialize(data=st.data())
    def open_store(self, data: st.DataObject) -> None:
        max_len = data.draw(self.max_len_strategy, label="max_len")
        self.model = Model(max_len)
        self.durable = self.model.copy()   # state as of the last commit (merge / bulk load)
        self.wal_ops: list[tuple[int, str, object]] = []  # (record end in the WAL segment, op, arg)
        self.sv = SeqVault.open(self.path, schema=SCHEMA, max_len=max_len, merge_policy=POLICY)

    def teardown(self) -> None:
        if self.sv is not None:
            self.sv.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _committed(self) -> None:
        self.durable = self.model.copy()
        self.wal_ops = []

    def _index_committed(self) -> None:
        """A commit that keeps the WAL (reclamation) still snapshots the index, deletes included."""
        for _, kind, arg in self.wal_ops:
            if kind == "delete":
                self.durable.delete(arg)

    # -- writes ---------------------------------------------------------------------------
    @rule(rows=batch, sync=st.booleans())
    def append(self, rows: list, sync: bool) -> None:
        uids, cols = columns_of(rows)
        generation = self.sv.manifest.generation
        self.sv.append(uids, cols, sync=sync)
        if self.sv.manifest.generation != generation:  # a full buffer merged before this batch went in
            self._committed()
        self.model.append(rows)
        self.wal_ops.append((self.sv.wal.offset, "append", rows))

    @rule(uids=st.lists(st.sampled_from(USERS), min_size=1, max_size=3))
    def delete(self, uids: list[int]) -> None:
        self.sv.delete(uids)
        self.model.delete(uids)
        self.wal_ops.append((self.sv.wal.offset, "delete", uids))

    @rule(rows=batch)
    def bulk_load(self, rows: list) -> None:
        uids, cols = columns_of(rows)
        self.sv.bulk_load(uids, cols)
        self.model.append(rows)
        self._committed()

    @rule(bad=st.sampled_from(["float", "range", "missing", "extra", "length"]))
    def rejected_append(self, bad: str) -> None:
        uids, cols = columns_of([(1, 1, 1, 1), (2, 2, 2, 2)])
        if bad == "float":
            cols["item"] = cols["item"].astype(np.float64)
        elif bad == "range":
            cols["flag"] = np.array([1, 300])
        elif bad == "missing":
            del cols["flag"]
        elif bad == "extra":
            cols["other"] = cols["flag"]
        else:
            cols["ts"] = cols["ts"][:1]
        before = self.sv.wal.offset
        with pytest.raises(SchemaError):
            self.sv.append(uids, cols)
        assert self.sv.wal.offset == before

    # -- jobs -----------------------------------------------------------------------------
    @rule()
    def merge(self) -> None:
        self.sv.merge()
        self._committed()

    @rule(fraction=st.sampled_from([0.3, 0.9, 1.0]))
    def reclaim(self, fraction: float) -> None:
        if self.sv.reclaim(fraction):
            self._index_committed()

    @rule()
    def maintain(self) -> None:
        merged = self.sv.active.events >= POLICY.max_buffer_events
        generation = self.sv.manifest.generation
        self.sv.maintain()
        if merged:
            self._committed()
        elif self.sv.manifest.generation != generation:
            self._index_committed()

    # -- restarts -------------------------------------------------------------------------
    @rule()
    def reopen(self) -> None:
        self.sv.close()
        self.sv = SeqVault.open(self.path, merge_policy=POLICY)

    @rule(cut=st.floats(0.0, 1.0))
    def crash(self, cut: float) -> None:
        """Drop the instance without closing, cut the WAL tail at a random byte, recover."""
        segment = self.sv.directory / segment_name(self.sv.wal.segment_id)
        self.sv._abandon()
        self.sv = None
        size = segment.stat().st_size
        keep_bytes = round(cut * size)
        with open(segment, "r+b") as fh:
            fh.truncate(keep_bytes)
        survived = [op for op in self.wal_ops if op[0] <= keep_bytes]
        self.model = self.durable.copy()
        for _, kind, arg in survived:
            if kind == "append":
                self.model.append(arg)
            else:
                self.model.delete(arg)
        self.wal_ops = survived
        self.sv = SeqVault.open(self.path, merge_policy=POLICY)

    # -- reads ----------------------------------------------------------------------------
    @rule(uid=st.sampled_from([*USERS, 99]), last_n=st.one_of(st.none(), st.integers(0, 6)),
          fields=st.sampled_from([None, ("item",), ("flag", "ts")]))
    def get(self, uid: int, last_n: int | None, fields: tuple[str, ...] | None) -> None:
        got = self.sv.get(uid, last_n=last_n, fields=fields)
        assert_same(got, self.model.get(uid, last_n), fields or NAMES, f"get({uid}, {last_n})")

    @rule(uids=st.lists(st.sampled_from([*USERS, 99]), max_size=8), last_n=st.one_of(st.none(), st.integers(0, 6)))
    def get_many(self, uids: list[int], last_n: int | None) -> None:
        offsets, cols = self.sv.get_many(np.array(uids, np.uint64), last_n=last_n)
        assert offsets.dtype == np.int64 and len(offsets) == len(uids) + 1
        for i, u in enumerate(uids):
            got = {f: cols[f][offsets[i]:offsets[i + 1]] for f in NAMES}
            assert_same(got, self.model.get(u, last_n), NAMES, f"get_many[{i}]={u}")

    @invariant()
    def every_user_matches(self) -> None:
        if self.sv is None:
            return
        for u in [*USERS, 99]:
            assert_same(self.sv.get(u), self.model.get(u), NAMES, f"user {u}")

    @precondition(lambda self: self.sv is not None)
    @invariant()
    def stats_add_up(self) -> None:
        s = self.sv.stats()
        assert s["users"] == sum(1 for v in self.model.events.values() if v)
        assert s["disk_bytes"] == s["data_bytes"] + s["wal_bytes"] + s["index_snapshot_bytes"]


class SmallMaxLenMachine(SeqVaultMachine):
    """The same contract with max_len 1-5, so nearly every merge truncates."""

    max_len_strategy = st.integers(1, 5)


_THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
STATEFUL = settings(max_examples=500 if _THOROUGH else 50, stateful_step_count=60 if _THOROUGH else 30)
TestSeqVaultStateful = SeqVaultMachine.TestCase
TestSeqVaultStateful.settings = STATEFUL
TestSmallMaxLen = SmallMaxLenMachine.TestCase
TestSmallMaxLen.settings = STATEFUL
