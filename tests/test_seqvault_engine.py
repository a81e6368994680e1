"""SeqVault engine: the building blocks against plain references, and the engine's edges
(opening rules, bad input, direct I/O, group commit, background merges, concurrent readers)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from seqvault import CorruptionError, Field, MergePolicy, Schema, SchemaError, SeqVault, SeqVaultError
from seqvault.buffer import UpdateBuffer
from seqvault.fs import OS, IoGuard
from seqvault.seqmerge import _ranges, csr_take, newest_per_group, overlay_buffered
from seqvault.wal import KIND_APPEND, WriteAheadLog, scan_segment, segment_name

SCHEMA = Schema([Field("ts", "int32"), Field("item", "uint64"), Field("w", "int16")], time_field="ts")


def cols(ts: list[int], item: list[int] | None = None, w: list[int] | None = None) -> dict[str, np.ndarray]:
    n = len(ts)
    return {"ts": np.array(ts, np.int32), "item": np.array(item if item is not None else range(n), np.uint64),
            "w": np.array(w if w is not None else [0] * n, np.int16)}


# -- building blocks against references ---------------------------------------------------------
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(-3, 3)), max_size=60), st.integers(0, 7))
def test_newest_per_group_matches_reference(rows: list[tuple[int, int]], keep: int) -> None:
    groups = np.array([g for g, _ in rows], np.int64)
    ts = np.array([t for _, t in rows], np.int64)
    arrival = np.arange(len(rows))
    offsets, out = newest_per_group(5, groups, {"ts": ts, "a": arrival}, "ts", keep)
    for g in range(5):
        mine = [(t, a) for (gg, t), a in zip(rows, arrival.tolist(), strict=True) if gg == g]
        want = sorted(mine)[-keep:] if keep else []
        got = list(zip(out["ts"][offsets[g]:offsets[g + 1]].tolist(), out["a"][offsets[g]:offsets[g + 1]].tolist(),
                       strict=True))
        assert got == want


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(-3, 3)), max_size=40),
       st.lists(st.tuples(st.integers(0, 5), st.integers(-3, 3)), max_size=15), st.integers(1, 6))
def test_overlay_buffered_matches_full_merge(base_rows: list, extra_rows: list, keep: int) -> None:
    base_groups = np.array([g for g, _ in base_rows], np.int64)
    base = {"ts": np.array([t for _, t in base_rows], np.int64), "a": np.arange(len(base_rows))}
    offsets, base = newest_per_group(6, base_groups, base, "ts", keep)  # what decoded records look like
    extra_groups = np.array([g for g, _ in extra_rows], np.int64)
    extra = {"ts": np.array([t for _, t in extra_rows], np.int64), "a": 1000 + np.arange(len(extra_rows))}
    got = overlay_buffered(6, offsets, base, extra_groups, extra, "ts", keep) if len(extra_rows) else (offsets, base)
    groups = np.concatenate([np.repeat(np.arange(6), np.diff(offsets)), extra_groups])
    want = newest_per_group(6, groups, {k: np.concatenate([base[k], extra[k]]) for k in base}, "ts", keep)
    np.testing.assert_array_equal(got[0], want[0])
    for k in ("ts", "a"):
        np.testing.assert_array_equal(got[1][k], want[1][k])


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 6)), max_size=20))
def test_ranges_matches_reference(pairs: list[tuple[int, int]]) -> None:
    starts = np.array([s for s, _ in pairs], np.int64)
    counts = np.array([c for _, c in pairs], np.int64)
    want = [x for s, c in pairs for x in range(s, s + c)]
    assert _ranges(starts, counts).tolist() == want


@given(st.lists(st.integers(0, 5), max_size=12), st.lists(st.integers(0, 3), max_size=6))
def test_csr_take_matches_reference(counts: list[int], idx: list[int]) -> None:
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    values = np.arange(int(offsets[-1]))
    idx = [i for i in idx if i < len(counts)]
    new_offsets, out = csr_take(offsets, {"v": values}, np.array(idx, np.int64))
    for k, i in enumerate(idx):
        assert out["v"][new_offsets[k]:new_offsets[k + 1]].tolist() == values[offsets[i]:offsets[i + 1]].tolist()


@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=8), min_size=1, max_size=8),
       st.lists(st.integers(0, 7), unique=True, max_size=5))
def test_buffer_rows_for_matches_reference(batches: list[list[int]], probe: list[int]) -> None:
    buf = UpdateBuffer(SCHEMA)
    arrival = 0
    everything: list[tuple[int, int]] = []
    for i, users in enumerate(batches):
        buf.add(np.array(users, np.uint64), cols(list(range(arrival, arrival + len(users)))))
        everything += [(u, arrival + j) for j, u in enumerate(users)]
        arrival += len(users)
        if i % 3 == 2:
            buf.remove_users(np.array([99], np.uint64))  # removes nothing but folds every run into one
    users = np.array(sorted(probe), np.uint64)
    idx, got = buf.view().rows_for(users)
    for k, u in enumerate(users.tolist()):
        assert got.get("ts", np.empty(0))[idx == k].tolist() == [a for uu, a in everything if uu == u]


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40)), min_size=1, max_size=60),
       st.lists(st.integers(0, 12), unique=True, max_size=6), st.integers(0, 2**32 - 1))
def test_buffer_runs_match_reference(batches: list[tuple[bool, int]], probe: list[int], seed: int) -> None:
    """Mixed single-user and many-user appends, folded at random small thresholds, build runs of
    many sizes (so merges at several levels) next to unfolded pending batches; every read, the
    merge's view and deletes must equal a plain list of appended rows. A view taken earlier must
    not change when later appends fold and merge runs."""
    rng = np.random.default_rng(seed)
    buf = UpdateBuffer(SCHEMA, fold_events=int(rng.integers(1, 60)), fold_batches=int(rng.integers(1, 8)))
    everything: list[tuple[int, int]] = []  # (user, arrival)
    early = None
    for i, (one_user, n) in enumerate(batches):
        users = np.full(n, rng.integers(0, 12)) if one_user else rng.integers(0, 12, n)
        arrival = list(range(len(everything), len(everything) + n))
        buf.add(users.astype(np.uint64), cols(arrival))
        everything += list(zip(users.tolist(), arrival, strict=True))
        if rng.random() < 0.6:
            buf.view()  # a read in between: must not disturb the buffer
        if i == len(batches) // 2:
            early, early_rows = buf.view(), list(everything)
    view = buf.view()
    assert view.events == buf.events == len(everything) and len(view.runs) <= 8
    assert view.users().tolist() == sorted({u for u, _ in everything})
    for p in [sorted(probe)] + [[u] for u in probe]:
        idx, got = view.rows_for(np.array(p, np.uint64))
        for k, u in enumerate(p):
            assert got.get("ts", np.empty(0))[idx == k].tolist() == [a for uu, a in everything if uu == u]
    if early is not None:
        for u in range(12):
            _, got = early.rows_for(np.array([u], np.uint64))
            assert got.get("ts", np.empty(0)).tolist() == [a for uu, a in early_rows if uu == u]
    rows = view.all_rows()
    assert rows.users.tolist() == sorted({u for u, _ in everything})
    for i, u in enumerate(rows.users.tolist()):
        assert rows.columns["ts"][rows.offsets[i]:rows.offsets[i + 1]].tolist() == \
            [a for uu, a in everything if uu == u]
    gone = np.array(probe, np.uint64)
    assert buf.remove_users(gone) == sum(1 for u, _ in everything if u in probe)
    _, got = buf.view().rows_for(np.arange(12, dtype=np.uint64))
    assert got.get("ts", np.empty(0)).tolist() == [a for _, a in sorted(
        ((u, a) for u, a in everything if u not in probe), key=lambda r: r[0])]


# -- the WAL ------------------------------------------------------------------------------------
def test_wal_scan_stops_at_torn_record(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, 1, IoGuard(OS, tmp_path))
    ends = [wal.append(KIND_APPEND, [bytes([i]) * (10 + i)]) for i in range(5)]
    wal.close()
    path = tmp_path / segment_name(1)
    full = path.read_bytes()
    path.write_bytes(full[:ends[3] - 1])  # the 4th record loses its last byte
    scan = scan_segment(path)
    assert [len(p) for _, p, _ in scan.records] == [10, 11, 12]
    assert scan.valid_end == ends[2] and scan.torn


def test_a_vector_record_in_the_sequence_log_is_refused_on_open(tmp_path: Path) -> None:
    from seqvault.wal import KIND_VECTORS

    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        sv.append([1], cols([1]), sync=True)
    last = max(int(p.stem.split("-")[1]) for p in (tmp_path / "s").glob("wal-*.log"))
    wal = WriteAheadLog(tmp_path / "s", last + 1, IoGuard(OS, tmp_path / "s"))
    wal.append(KIND_VECTORS, [b"\0" * 32])
    wal.close()
    with pytest.raises(CorruptionError, match="kind 3"):
        SeqVault.open(tmp_path / "s", schema=SCHEMA)


def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seqvault.wal as walmod
    calls = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.02)  # a disk that takes a while makes the callers pile up
        real_fsync(fd)

    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        monkeypatch.setattr(walmod.os, "fsync", slow_fsync)
        threads = [threading.Thread(target=lambda i=i: [sv.append([i], cols([j]), sync=True) for j in range(5)])
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        monkeypatch.setattr(walmod.os, "fsync", real_fsync)
        assert len(calls) < 40 / 2, f"{len(calls)} fsyncs for 40 synced appends"
        for i in range(8):
            assert sorted(sv.get(i)["ts"].tolist()) == list(range(5))


# -- opening rules ------------------------------------------------------------------------------
def test_open_rules(tmp_path: Path) -> None:
    with pytest.raises(SeqVaultError, match="needs a schema"):
        SeqVault.open(tmp_path / "a")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(SeqVaultError, match="not a SeqVault store"):
        SeqVault.open(tmp_path / "other", schema=SCHEMA)
    with pytest.raises(SeqVaultError, match="create=False"):
        SeqVault.open(tmp_path / "missing", schema=SCHEMA, create=False)
    with SeqVault.open(tmp_path / "s", schema=SCHEMA, max_len=7) as sv:
        with pytest.raises(SeqVaultError, match="already open"):
            SeqVault.open(tmp_path / "s")
        sv.append([1], cols([1]))
    other = Schema([Field("ts", "int64")], time_field="ts")
    with pytest.raises(SeqVaultError, match="was created with"):
        SeqVault.open(tmp_path / "s", schema=other)
    with pytest.raises(SeqVaultError, match="max_len=7"):
        SeqVault.open(tmp_path / "s", max_len=8)
    with SeqVault.open(tmp_path / "s", schema=SCHEMA, max_len=7) as sv:
        assert sv.max_len == 7 and sv.get(1)["ts"].tolist() == [1]


@pytest.mark.parametrize("bad", ["float", "negative-user", "range", "missing", "length", "2d"])
def test_bad_input_is_rejected_before_anything_is_written(tmp_path: Path, bad: str) -> None:
    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        sv.append([5], cols([1]))
        uids, c = [1, 2], cols([1, 2])
        if bad == "float":
            c["item"] = np.array([1.5, 2.0])
        elif bad == "negative-user":
            uids = [1, -2]
        elif bad == "range":
            c["w"] = np.array([1, 40000])
        elif bad == "missing":
            del c["w"]
        elif bad == "length":
            c["ts"] = c["ts"][:1]
        else:
            c["ts"] = c["ts"].reshape(2, 1)
        wal_before = sv.wal.offset
        with pytest.raises(SchemaError):
            sv.append(uids, c)
        with pytest.raises(SchemaError):
            sv.bulk_load(uids, c)
        assert sv.wal.offset == wal_before and sv.stats()["buffered_events"] == 1
        assert sv.get(1)["ts"].tolist() == [] and sv.get(5)["ts"].tolist() == [1]


# -- reads --------------------------------------------------------------------------------------
def test_reads_merge_disk_and_buffer_with_ties_in_arrival_order(tmp_path: Path) -> None:
    with SeqVault.open(tmp_path / "s", schema=SCHEMA, max_len=4) as sv:
        sv.append([1, 1, 1], cols([5, 3, 5], [10, 11, 12]))
        sv.merge()
        sv.append([1, 1, 2], cols([5, 1, 9], [13, 14, 15]))
        # ts 1 is older than every kept event of a full sequence: dropped.
        assert sv.get(1)["item"].tolist() == [11, 10, 12, 13]
        newest = sv.get(1, last_n=2, fields=["item"])
        assert list(newest) == ["item"] and newest["item"].tolist() == [12, 13]
        offsets, c = sv.get_many([2, 1, 99, 2], last_n=3)
        assert offsets.tolist() == [0, 1, 4, 4, 5]
        assert c["item"].tolist() == [15, 10, 12, 13, 15]
        assert sv.get_many([])[0].tolist() == [0]
        with pytest.raises(SchemaError):
            sv.get(1, fields=["nope"])


def test_direct_io_reads_match_buffered_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 5000
    uids = rng.integers(0, 50, n)
    c = {"ts": rng.integers(0, 10**6, n).astype(np.int32), "item": rng.integers(0, 2**40, n).astype(np.uint64),
         "w": rng.integers(-5, 5, n).astype(np.int16)}
    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        sv.bulk_load(uids, c)
        want = sv.get_many(np.arange(50))
    with SeqVault.open(tmp_path / "s", direct_io=True) as sv:
        got = sv.get_many(np.arange(50))
        assert sv.stats()["direct_io"] is True
        assert sv.get(7)["item"].tolist() == want[1]["item"][want[0][7]:want[0][8]].tolist()
    np.testing.assert_array_equal(got[0], want[0])
    for k in want[1]:
        np.testing.assert_array_equal(got[1][k], want[1][k])


def test_direct_io_reads_from_many_threads(tmp_path: Path) -> None:
    """Direct reads reuse a bounce buffer per thread: concurrent reads of many sizes and offsets
    (one bigger than the buffer kept) must each return their own bytes; a read past the end fails."""
    from seqvault.datafile import _BOUNCE_KEEP_MAX, DataFile

    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 3 * _BOUNCE_KEEP_MAX, dtype=np.uint8)
    writer = DataFile(tmp_path, 1, 0, IoGuard(OS, tmp_path), create=True)
    writer.append(data)
    writer.sync()
    writer.retire(unlink=False)
    f = DataFile(tmp_path, 1, len(data), IoGuard(OS, tmp_path), direct_io=True)
    spans = [(int(o), int(n)) for o, n in zip(rng.integers(0, _BOUNCE_KEEP_MAX, 300),
                                               rng.integers(1, 70_000, 300), strict=True)]
    spans += [(123, _BOUNCE_KEEP_MAX + 5000), (0, 1), (4096, 4096), (len(data) - 7, 7)]
    errors: list[tuple[int, int]] = []

    def reader(seed: int) -> None:
        for i in np.random.default_rng(seed).permutation(len(spans)):
            o, n = spans[i]
            if not np.array_equal(f.read(o, n), data[o:o + n]):
                errors.append((o, n))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    with pytest.raises(SeqVaultError, match="short read"):
        f.read(len(data) - 10, 20)
    f.retire(unlink=False)


def test_direct_io_refused_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filesystems that refuse O_DIRECT answer EINVAL (older tmpfs does); the store says what to do."""
    import errno

    import seqvault.datafile as datafile
    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        sv.bulk_load([1], cols([1]))
    real_open = os.open

    def refusing_open(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(datafile.os, "open", refusing_open)
    with pytest.raises(SeqVaultError, match=r"refuses O_DIRECT.*direct_io=False"):
        SeqVault.open(tmp_path / "s", direct_io=True)
    monkeypatch.setattr(datafile.os, "open", real_open)
    with SeqVault.open(tmp_path / "s") as sv:  # the failed open released the lock and the files
        assert sv.get(1)["ts"].tolist() == [1]


# -- writes, jobs and accounting ----------------------------------------------------------------
def test_delete_is_durable_and_space_is_reclaimed(tmp_path: Path) -> None:
    policy = MergePolicy(data_file_bytes=4096, reclaim_live_fraction=0.5)
    with SeqVault.open(tmp_path / "s", schema=SCHEMA, merge_policy=policy) as sv:
        for k in range(20):
            sv.append(np.arange(40), cols([k] * 40, [k] * 40))
            sv.merge()
        files_before = sv.stats()["data_files"]
        sv.delete(np.arange(0, 40, 2))
    with SeqVault.open(tmp_path / "s", merge_policy=policy) as sv:
        assert sv.get(2)["ts"].tolist() == [] and sv.get(3)["ts"].tolist() == list(range(20))
        assert sv.maintain()
        s = sv.stats()
        assert s["reclaimed_files"] >= files_before - 1 and s["users"] == 20
        assert s["dead_bytes"] < s["data_bytes"] * 0.5
        json.dumps(s)
        for key in ("users", "events", "data_bytes", "wal_bytes", "index_snapshot_bytes", "disk_bytes", "dram_bytes",
                    "index_bytes", "buffer_bytes", "buffered_events", "merges", "merged_users", "reclaimed_files",
                    "dead_bytes", "data_files", "max_len", "direct_io"):
            assert key in s
        assert s["disk_bytes"] == sv.disk_bytes()
        assert sv.get(3)["item"].tolist() == list(range(20))


def test_index_is_packed_after_bulk_load_open_and_recovery(tmp_path: Path) -> None:
    """The DRAM index stays within the documented <= 32 bytes per user (HashIndex.from_entries
    sizing) after a bulk load, after a reopen and after a crash recovery, and growth still works."""
    n = 50_000
    uids = np.arange(n, dtype=np.uint64) * np.uint64(7)
    ts = list(range(n))
    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        sv.bulk_load(uids, cols(ts))
        assert sv.stats()["index_bytes"] / n <= 32
    with SeqVault.open(tmp_path / "s") as sv:
        assert sv.stats()["index_bytes"] / n <= 32
        sv.append(uids[:10] + np.uint64(1), cols([1] * 10))  # ten new users, in the WAL only
        sv.delete(uids[:5])
        sv._abandon()  # a crash: the next open replays the WAL
    with SeqVault.open(tmp_path / "s") as sv:
        assert sv.stats()["index_bytes"] / (n - 5) <= 32
        assert sv.get(int(uids[0]))["ts"].tolist() == [] and sv.get(int(uids[5]))["ts"].tolist() == [5]
        sv.merge()  # the new users grow the packed table
        offsets, c = sv.get_many(np.concatenate([uids, uids[:10] + np.uint64(1)]))
        assert np.diff(offsets).tolist() == [0] * 5 + [1] * (n - 5) + [1] * 10
        assert c["ts"].tolist() == ts[5:] + [1] * 10
    with SeqVault.open(tmp_path / "s") as sv:
        assert sv.stats()["index_bytes"] / (n + 5) <= 32


def test_bulk_load_merges_with_stored_and_buffered_events(tmp_path: Path) -> None:
    with SeqVault.open(tmp_path / "s", schema=SCHEMA, max_len=5) as sv:
        sv.append([1, 1], cols([10, 20], [1, 2]))
        sv.merge()
        sv.append([1], cols([30], [3]))
        assert sv.merge_pending() == 1
        sv.bulk_load([1, 1, 1, 2], cols([5, 30, 40, 1], [4, 5, 6, 7]))
        assert sv.merge_pending() == 0
        # Tie at ts 30: the appended event arrived first.
        assert sv.get(1)["item"].tolist() == [1, 2, 3, 5, 6]
        assert sv.get(2)["item"].tolist() == [7]


def test_background_merges(tmp_path: Path) -> None:
    policy = MergePolicy(background=True, max_buffer_events=50, max_age_s=60, interval_s=0.01)
    with SeqVault.open(tmp_path / "s", schema=SCHEMA, merge_policy=policy) as sv:
        for k in range(10):
            sv.append(np.arange(10), cols([k] * 10))
        deadline = time.monotonic() + 10
        while sv.stats()["merges"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sv.stats()["merges"] > 0 and sv.stats()["background_error"] is None
        assert sv.get(4)["ts"].tolist() == list(range(10))


def test_readers_see_old_or_new_never_a_mix(tmp_path: Path) -> None:
    """Batch k gives every user one event with ts=k; a read must be a contiguous window of batches."""
    policy = MergePolicy(data_file_bytes=8192, reclaim_live_fraction=0.9)
    n_users, max_len = 16, 30
    errors: list[str] = []
    stop = threading.Event()
    with SeqVault.open(tmp_path / "s", schema=SCHEMA, max_len=max_len, merge_policy=policy) as sv:
        sv.append(np.arange(n_users), cols([0] * n_users))

        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                users = rng.choice(n_users, 4, replace=False)
                offsets, c = sv.get_many(users)
                for i in range(4):
                    ts = c["ts"][offsets[i]:offsets[i + 1]].tolist()
                    if not ts or ts != list(range(ts[0], ts[0] + len(ts))) or (len(ts) < max_len and ts[0] != 0):
                        errors.append(f"user {users[i]}: {ts}")

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        try:
            for k in range(1, 80):
                sv.append(np.arange(n_users), cols([k] * n_users))
                if k % 5 == 0:
                    sv.merge()
                if k % 15 == 0:
                    sv.reclaim()
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[:5]
        assert sv.stats()["reclaimed_files"] > 0
        assert sv.get(3)["ts"].tolist() == list(range(50, 80))
