"""SeqVault's failure paths: each defect and durability gap the hardening issue named, and the
simulated disk (power loss, injected faults, fsync counts) that makes them testable."""

from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from seqvault import CorruptionError, Field, MergePolicy, Schema, SeqVault, SeqVaultError
from seqvault.fs import FileSystem, StoreFailedError
from seqvault.simdisk import SimulatedDisk
from seqvault.state import BackpressureError

SCHEMA = Schema([Field("ts", "int64"), Field("item", "uint32")], time_field="ts")
TINY = MergePolicy(data_file_bytes=4096, reclaim_live_fraction=1.0)


def items(sv: SeqVault, user: int) -> list[int]:
    return sv.get(user)["item"].tolist()


def ev(*xs: int) -> dict[str, list[int]]:
    return {"ts": list(xs), "item": list(xs)}


# -- defect 1: append and bulk_load keep the caller's arrays -----------------------------------
@pytest.mark.parametrize("how", ["append", "bulk_load"])
def test_changing_the_callers_arrays_afterwards_changes_nothing(tmp_path: Path, how: str) -> None:
    uids = np.array([7, 7, 9], np.uint64)
    cols = {"ts": np.array([1, 2, 3], np.int64), "item": np.array([10, 11, 12], np.uint32)}
    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        getattr(sv, how)(uids, cols)
        uids[:] = 8
        cols["item"][:] = 99
        cols["ts"][:] = 0
        assert items(sv, 7) == [10, 11] and items(sv, 8) == []
        sv.merge()
        assert items(sv, 7) == [10, 11] and items(sv, 9) == [12] and items(sv, 8) == []
    with SeqVault.open(tmp_path / "s") as sv:
        assert items(sv, 7) == [10, 11] and items(sv, 8) == []


# -- defect 2: a failed merge commit, then reclaim, must not duplicate events --------------------
def test_failed_merge_commit_then_reclaim_does_not_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    with SeqVault.open(path, schema=SCHEMA, merge_policy=TINY, fs=disk) as sv:
        sv.append([1, 1], ev(1, 2))
        sv.merge()
        sv.append([1], ev(3))
        sv.merge()  # user 1's first record is now dead bytes: a file to reclaim
        sv.append([1], ev(4))
        disk.inject("write", path_contains="index-", errno=errno.ENOSPC)  # the commit's snapshot
        with pytest.raises(OSError, match="No space"):
            sv.merge()
        assert items(sv, 1) == [1, 2, 3, 4]  # still served, from the frozen buffer
        assert sv.reclaim() > 0
        assert items(sv, 1) == [1, 2, 3, 4]
    with SeqVault.open(path) as sv:
        assert items(sv, 1) == [1, 2, 3, 4]
        sv.merge()
        assert items(sv, 1) == [1, 2, 3, 4]


def test_a_merge_that_fails_before_its_commit_leaves_no_trace_and_retries(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    with SeqVault.open(path, schema=SCHEMA, merge_policy=TINY, fs=disk) as sv:
        sv.append([1, 2], ev(1, 2))
        disk.inject("write", path_contains="MANIFEST", errno=errno.ENOSPC)
        with pytest.raises(OSError):
            sv.merge()
        assert sv.stats()["data_bytes"] == 0 and sv.manifest.generation == 0  # the records were cut off
        assert sv.merge() == 2
        assert items(sv, 1) == [1] and items(sv, 2) == [2]
    with SeqVault.open(path) as sv:
        assert items(sv, 1) == [1] and items(sv, 2) == [2] and sv.stats()["buffered_events"] == 0


# -- defect 3: a failed bulk load is not half-applied -------------------------------------------
@pytest.mark.parametrize("where", [("write", "MANIFEST"), ("write", "index-"), ("pwrite", "data-"),
                                   ("replace", "MANIFEST")])
def test_failed_bulk_load_stores_nothing_and_a_retry_stores_it_once(tmp_path: Path, where: tuple[str, str]) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    sv = SeqVault.open(path, schema=SCHEMA, fs=disk)
    sv.bulk_load([5], ev(0))
    disk.inject(where[0], path_contains=where[1], errno=errno.ENOSPC)
    with pytest.raises((OSError, SeqVaultError)):
        sv.bulk_load([1, 1], ev(1, 2))
    if sv.failure is None:  # failed before the commit point: nothing visible, retry stores it once
        assert items(sv, 1) == []
        sv.bulk_load([1, 1], ev(1, 2))
        assert items(sv, 1) == [1, 2]
        sv.close()
        expect = [[1, 2]]
    else:  # a failed rename: the commit point's outcome is unknown, so the store fail-stopped
        assert where[0] == "replace"
        with pytest.raises(StoreFailedError):
            sv.bulk_load([1, 1], ev(1, 2))
        sv.close()
        expect = [[], [1, 2]]
    with SeqVault.open(path) as sv:
        assert items(sv, 1) in expect and items(sv, 5) == [0]


# -- defect 4: data file ids are reused -------------------------------------------------------
def test_file_ids_are_reused_so_a_long_lived_store_never_runs_out(tmp_path: Path) -> None:
    with SeqVault.open(tmp_path / "s", schema=SCHEMA, merge_policy=TINY) as sv:
        seen = set()
        for i in range(300):
            sv.append(np.arange(40, dtype=np.uint64), {"ts": np.full(40, i), "item": np.full(40, i)})
            sv.merge()
            sv.reclaim()
            seen |= set(sv.manifest.files)
        assert sv.manifest.merges == 300 and sv.manifest.reclaimed_files >= 100
        assert max(seen) <= 8, f"file ids grow with the store's age: {sorted(seen)[-5:]}"
        assert items(sv, 3) == list(range(300))
    with SeqVault.open(tmp_path / "s") as sv:
        assert items(sv, 39) == list(range(300))


# -- defect 5: stats() while merges delete files ----------------------------------------------
def test_stats_never_races_with_merges(tmp_path: Path) -> None:
    policy = MergePolicy(data_file_bytes=4096, reclaim_live_fraction=1.0, max_wal_bytes=4096)
    with SeqVault.open(tmp_path / "s", schema=SCHEMA, merge_policy=policy) as sv:
        stop = threading.Event()
        errors: list[BaseException] = []

        def churn() -> None:
            i = 0
            while not stop.is_set():
                sv.append(np.arange(20, dtype=np.uint64), {"ts": np.full(20, i), "item": np.full(20, i)})
                sv.merge()
                if i % 3 == 0:
                    sv.reclaim()
                i += 1

        t = threading.Thread(target=churn)
        t.start()
        try:
            deadline = time.monotonic() + 4.0
            calls = 0
            while time.monotonic() < deadline:
                try:
                    sv.stats()
                except BaseException as e:  # any error here is the defect
                    errors.append(e)
                calls += 1
        finally:
            stop.set()
            t.join()
        assert not errors, f"{len(errors)} of {calls} stats() calls raised, first: {errors[0]!r}"
        assert sv.manifest.merges > 20
        on_disk = sum(p.stat().st_size for p in (tmp_path / "s").glob("wal-*.log"))
        assert sv.stats()["wal_bytes"] == on_disk


# -- durability: the first WAL segment's directory entry -----------------------------------------
def test_a_synced_append_to_a_new_store_survives_power_loss(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    sv = SeqVault.open(path, schema=SCHEMA, fs=disk)
    sv.append([1], ev(1), sync=True)
    disk.power_loss()
    with SeqVault.open(path) as sv:
        assert items(sv, 1) == [1]


def test_power_loss_keeps_exactly_the_synced_appends(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    sv = SeqVault.open(path, schema=SCHEMA, merge_policy=TINY, fs=disk)
    sv.append([1], ev(1), sync=True)
    sv.merge()
    sv.append([1], ev(2), sync=True)
    sv.append([1], ev(3))  # not synced: may be lost, never half there
    disk.power_loss()
    with SeqVault.open(path) as sv:
        assert items(sv, 1) == [1, 2]


# -- durability: fsync counts per acknowledged batch ---------------------------------------------
def test_fsyncs_per_acknowledged_batch(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    with SeqVault.open(path, schema=SCHEMA, fs=disk) as sv:
        before = disk.wal_fsyncs()
        for i in range(10):
            sv.append([i], ev(i), sync=True)
        assert disk.wal_fsyncs() - before == 10  # one fsync per synced batch, no more
        before = disk.wal_fsyncs()
        for i in range(10):
            sv.append([i], ev(i))
        assert disk.wal_fsyncs() == before  # unsynced appends cost none
        sv.flush()
        assert disk.wal_fsyncs() == before + 1
        dirs = disk.fsyncs["<dir>"]
        sv.merge()  # rotation (segment fsync + directory), data fsync, snapshot and MANIFEST commits
        assert disk.fsyncs["<dir>"] - dirs >= 3 and any(k.startswith("data-") for k in disk.fsyncs)


# -- durability: fail-stop after a failed fsync ------------------------------------------------
def test_a_failed_wal_fsync_fail_stops_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    sv = SeqVault.open(path, schema=SCHEMA, fs=disk)
    sv.append([1], ev(1), sync=True)
    disk.inject("fsync", path_contains="wal-")
    with pytest.raises(StoreFailedError, match=r"fsync of wal-00000001\.log failed"):
        sv.append([1], ev(2), sync=True)
    for write in (lambda: sv.append([1], ev(3), sync=True), lambda: sv.append([1], ev(3)), sv.merge,
                  sv.flush, lambda: sv.delete([1]), lambda: sv.bulk_load([2], ev(5)), sv.maintain):
        with pytest.raises(StoreFailedError, match="reopen"):
            write()
    assert items(sv, 1) == [1, 2]  # reads still served
    assert sv.stats()["failure"].startswith("fsync of wal-")
    sv.close()
    disk.power_loss()  # the failed fsync's pages never reached the disk
    with SeqVault.open(path) as sv:
        assert items(sv, 1) == [1]
        sv.append([1], ev(4), sync=True)
        assert items(sv, 1) == [1, 4]


def test_a_failed_data_fsync_fail_stops_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    sv = SeqVault.open(path, schema=SCHEMA, merge_policy=TINY, fs=disk)
    sv.append([1, 2], ev(1, 2), sync=True)
    disk.inject("fsync", path_contains="data-")
    with pytest.raises(StoreFailedError):
        sv.merge()
    with pytest.raises(StoreFailedError):
        sv.append([1], ev(3), sync=True)
    sv.close()
    disk.power_loss()
    with SeqVault.open(path) as sv:
        assert items(sv, 1) == [1] and items(sv, 2) == [2]


def test_a_failed_wal_write_is_not_stored_and_the_store_carries_on(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    with SeqVault.open(path, schema=SCHEMA, fs=disk) as sv:
        sv.append([1], ev(1), sync=True)
        disk.inject("writev", path_contains="wal-", errno=errno.ENOSPC)
        with pytest.raises(SeqVaultError, match="not stored"):
            sv.append([1], ev(2), sync=True)
        assert items(sv, 1) == [1] and sv.failure is None
        disk.inject("writev", nth=2, path_contains="wal-", short=True)  # a short write is finished
        sv.append([1], ev(3), sync=True)
        assert items(sv, 1) == [1, 3]
    with SeqVault.open(path) as sv:
        assert items(sv, 1) == [1, 3]


# -- reads check what the index says ----------------------------------------------------------
def test_reads_check_the_user_id_and_checksum_the_index_keeps(tmp_path: Path) -> None:
    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        sv.bulk_load([1, 2, 3], ev(1, 2, 3))
        e1, e2 = sv.index.get(1), sv.index.get(2)
        # A misdirected entry: user 1 pointing at user 2's (intact) record.
        sv.index.upsert(np.array([1], np.uint64), [e2.file_id], [e2.offset], [e2.length], [e2.count], [e2.checksum])
        with pytest.raises(CorruptionError, match="user 2"):
            sv.get_many([1, 3])
        with pytest.raises(CorruptionError, match="user 2"):
            sv.get(1)
        # A stale checksum: the right record, but not the one the index recorded.
        sv.index.upsert(np.array([1], np.uint64), [e1.file_id], [e1.offset], [e1.length], [e1.count],
                        [e1.checksum ^ 1])
        with pytest.raises(CorruptionError, match="checksum differs"):
            sv.get_many([1, 3])
        with pytest.raises(CorruptionError, match="checksum differs"):
            sv.get(1)
        assert sv.get_many([2, 3])[1]["item"].tolist() == [2, 3]


# -- close() waits for reads in flight -----------------------------------------------------------
class _GatedReads(FileSystem):
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.gate = False

    def preadv(self, fd: int, buffers: list, offset: int) -> int:
        if self.gate:
            self.entered.set()
            self.release.wait(10)
        return super().preadv(fd, buffers, offset)


def test_close_waits_for_reads_in_flight(tmp_path: Path) -> None:
    fs = _GatedReads()
    sv = SeqVault.open(tmp_path / "s", schema=SCHEMA, fs=fs)
    sv.bulk_load([1, 1], ev(1, 2))
    fs.gate = True
    got: list = []
    reader = threading.Thread(target=lambda: got.append(sv.get_many([1, 5])[1]["item"].tolist()))
    reader.start()
    assert fs.entered.wait(5)
    closer = threading.Thread(target=sv.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close() returned while a read was still using the store's files"
    fs.release.set()
    reader.join(5)
    closer.join(5)
    assert got == [[1, 2]] and not closer.is_alive()
    with pytest.raises(SeqVaultError, match="closed"):
        sv.get(1)


# -- backpressure ------------------------------------------------------------------------------
def test_a_full_buffer_merges_inline_without_a_background_thread(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    policy = MergePolicy(max_buffer_events=10, stall_buffer_events=50)
    with SeqVault.open(path, schema=SCHEMA, merge_policy=policy, fs=disk) as sv:
        for i in range(30):  # nobody calls merge(): the buffer must still stay bounded
            sv.append(np.arange(10, dtype=np.uint64), {"ts": np.full(10, i), "item": np.full(10, i)})
            assert sv.stats()["buffered_events"] <= 50
        assert sv.manifest.merges >= 4 and items(sv, 3) == list(range(30))
        disk.inject("pwrite", path_contains="data-", errno=errno.ENOSPC, repeat=True)
        with pytest.raises(BackpressureError, match="No space"):
            for i in range(30, 60):
                sv.append(np.arange(10, dtype=np.uint64), {"ts": np.full(10, i), "item": np.full(10, i)})
        assert sv.stats()["buffered_events"] <= 60
        disk.clear_faults()
        sv.append([3], ev(99))
        assert items(sv, 3)[-1] == 99


def test_failing_background_merges_bound_the_buffer_and_say_why(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    policy = MergePolicy(background=True, interval_s=0.01, max_buffer_events=20, stall_buffer_events=100,
                         stall_timeout_s=0.5)
    caplog.set_level(logging.CRITICAL, logger="seqvault")  # each failed merge is logged: expected here
    with SeqVault.open(path, schema=SCHEMA, merge_policy=policy, fs=disk) as sv:
        disk.inject("pwrite", path_contains="data-", errno=errno.ENOSPC, repeat=True)
        with pytest.raises(BackpressureError, match="No space"):
            for i in range(1000):
                sv.append(np.arange(10, dtype=np.uint64), {"ts": np.full(10, i), "item": np.full(10, i)})
        assert sv.stats()["buffered_events"] <= 110
        disk.clear_faults()  # space freed: the background merge drains the buffer again
        deadline = time.monotonic() + 5
        while sv.stats()["buffered_events"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sv.stats()["buffered_events"] == 0


# -- found in review: each reproduced against the first version of this hardening ---------------
def test_bulk_load_is_not_undone_by_an_older_delete_when_an_append_races_it(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from seqvault.state import StoreState
    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        sv.bulk_load([1], ev(1))
        sv.delete([1])  # logged in the WAL, not yet covered by a commit
        real_commit = StoreState.commit
        raced = []

        def commit_after_an_append(self: StoreState, change: object, out: object = None) -> None:
            if not raced:  # another thread's append lands while the load runs
                raced.append(True)
                sv.append([2], ev(7))
            real_commit(self, change, out)

        monkeypatch.setattr(StoreState, "commit", commit_after_an_append)
        sv.bulk_load([1, 1], ev(10, 11))
        assert raced and items(sv, 1) == [10, 11]
    with SeqVault.open(tmp_path / "s") as sv:
        assert items(sv, 1) == [10, 11] and items(sv, 2) == [7]


def test_a_snapshot_never_holds_a_delete_the_wal_may_lose(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    sv = SeqVault.open(path, schema=SCHEMA, merge_policy=TINY, fs=disk)
    sv.append([1, 1, 2], ev(1, 2, 3), sync=True)
    sv.merge()
    sv.append([1], ev(5), sync=True)
    sv.delete([1], sync=False)
    assert sv.reclaim() > 0  # a commit that keeps wal_start snapshots the live index
    disk.power_loss()
    with SeqVault.open(path) as sv:
        assert items(sv, 1) in ([1, 2, 5], [])  # before the delete or after it, never a mix


class _InterruptAfterManifestRename(FileSystem):
    armed = False
    last: str | None = None

    def replace(self, src: Path, dst: Path) -> None:
        super().replace(src, dst)
        self.last = Path(dst).name

    def fsync_dir(self, directory: Path) -> None:
        if self.armed and self.last == "MANIFEST":
            self.armed = False
            raise KeyboardInterrupt
        super().fsync_dir(directory)


def test_an_interrupt_after_the_manifest_rename_fail_stops_and_keeps_the_commit(tmp_path: Path) -> None:
    fs = _InterruptAfterManifestRename()
    sv = SeqVault.open(tmp_path / "s", schema=SCHEMA, fs=fs)
    sv.append([1], ev(1), sync=True)
    fs.armed, fs.last = True, None  # the next MANIFEST rename is the merge's commit
    with pytest.raises(KeyboardInterrupt):
        sv.merge()
    assert sv.failure and "interrupted" in sv.failure
    with pytest.raises(StoreFailedError):
        sv.append([1], ev(2))
    sv.close()
    with SeqVault.open(tmp_path / "s") as sv:
        assert items(sv, 1) == [1]


def test_salvage_with_nothing_to_keep_still_drops_the_damaged_segment(tmp_path: Path) -> None:
    path = tmp_path / "s"
    disk = SimulatedDisk(path)
    sv = SeqVault.open(path, schema=SCHEMA, fs=disk)
    sv.append([1], ev(1), sync=True)
    disk.inject("write", path_contains="index-", errno=errno.ENOSPC)  # the merge fails after rotating
    with pytest.raises(OSError):
        sv.merge()
    sv.close()
    seg = path / "wal-00000001.log"
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # bit rot in a closed segment: its only record is lost
    seg.write_bytes(bytes(data))
    from seqvault.recovery import WalCorruptionError
    with pytest.raises(WalCorruptionError):
        SeqVault.open(path)
    with SeqVault.open(path, salvage=True) as sv:
        assert sv.recovery_report["dropped"] and items(sv, 1) == []
    assert not seg.exists()
    with SeqVault.open(path) as sv:  # salvaged for good
        assert items(sv, 1) == []


def test_jobs_refuse_once_close_has_begun(tmp_path: Path) -> None:
    sv = SeqVault.open(tmp_path / "s", schema=SCHEMA)
    sv.append([1], ev(1))
    sv.close()
    for job in (sv.merge, sv.reclaim, sv.maintain, lambda: sv.bulk_load([1], ev(2))):
        with pytest.raises(SeqVaultError, match="closed"):
            job()


def test_a_delete_in_an_older_segment_is_covered_before_a_bulk_load(tmp_path: Path) -> None:
    """Found by the crash campaign: a reopen left the delete in a closed segment and an empty newest
    one, the load's merge saw "nothing logged", and the delete replayed over the loaded user."""
    with SeqVault.open(tmp_path / "s", schema=SCHEMA) as sv:
        sv.bulk_load([7], ev(1))
        sv.delete([7])
        sv.wal.rotate()  # the delete now sits in a closed segment; the newest is empty
    with SeqVault.open(tmp_path / "s") as sv:
        assert sv.wal.offset == 0 and sv.wal.segment_id > sv.manifest.wal_start
        sv.bulk_load([7, 7], ev(10, 11))
        assert items(sv, 7) == [10, 11]
    with SeqVault.open(tmp_path / "s") as sv:
        assert items(sv, 7) == [10, 11]
