"""Damaged bytes: a flipped byte in a data file gives CorruptionError naming file, offset and user;
a flipped byte at the WAL's end is a torn tail (cut), one in its middle refuses to open unless
salvaged; never wrong data. Plus the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from seqvault import CorruptionError, Field, Schema, SeqVault
from seqvault.cli import main as cli
from seqvault.datafile import data_file_name
from seqvault.manifest import MANIFEST_NAME
from seqvault.recovery import WalCorruptionError
from seqvault.verify import verify_store
from seqvault.wal import segment_name

SCHEMA = Schema([Field("ts", "int64"), Field("item", "uint32")], time_field="ts")


def build(path: Path) -> None:
    with SeqVault.open(path, schema=SCHEMA, max_len=100) as sv:
        sv.bulk_load([1, 1, 2, 3, 3, 3], {"ts": [1, 2, 3, 4, 5, 6], "item": [10, 11, 20, 30, 31, 32]})


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x5A
    path.write_bytes(bytes(data))


def test_every_flipped_byte_of_a_record_is_caught(tmp_path: Path) -> None:
    store = tmp_path / "s"
    build(store)
    with SeqVault.open(store) as sv:
        entry = sv.index.get(3)
        want = {k: v.copy() for k, v in sv.get(1).items()}
    data_path = store / data_file_name(entry.file_id)
    pristine = data_path.read_bytes()
    for pos in range(entry.offset, entry.offset + entry.length):
        flip(data_path, pos)
        with SeqVault.open(store) as sv:
            with pytest.raises(CorruptionError) as err:
                sv.get(3)
            assert str(data_path) in str(err.value) and f"offset {entry.offset}" in str(err.value)
            assert err.value.user_id in (3, None) and err.value.offset == entry.offset
            with pytest.raises(CorruptionError, match=str(data_path)):
                sv.get_many([1, 3])
            got = sv.get(1)  # other users are untouched
            assert all(np.array_equal(got[k], want[k]) for k in want)
        report = verify_store(store)
        assert not report.ok and any(p.offset == entry.offset for p in report.problems)
        data_path.write_bytes(pristine)
    assert verify_store(store).ok


WAL_OPS: list = [([1, 2], [5, 6]), ([1], [7]), "delete-2", ([2, 3], [8, 9]), ([1], [10])]


def state_of(ops: list) -> dict[int, list[int]]:
    model: dict[int, list[int]] = {}
    for op in ops:
        if op == "delete-2":
            model.pop(2, None)
        else:
            for u, x in zip(*op, strict=True):
                model.setdefault(u, []).append(x)
    return model


def wal_store(path: Path) -> list[int]:
    """Five operations (one a delete) left in the WAL; returns where each record ends."""
    ends = []
    with SeqVault.open(path, schema=SCHEMA) as sv:
        for op in WAL_OPS:
            if op == "delete-2":
                sv.delete([2])
            else:
                sv.append(op[0], {"ts": op[1], "item": op[1]})
            ends.append(sv.wal.offset)
    return ends


def test_flipped_wal_byte_torn_tail_is_cut_mid_log_damage_refuses_or_salvages(tmp_path: Path) -> None:
    """Damage in the last record is a torn tail: cut, the rest kept. Damage with intact records
    after it refuses to open, naming segment and offset; salvage keeps every intact record."""
    base = tmp_path / "base"
    ends = wal_store(base)
    seg = segment_name(1)
    starts = [0, *ends[:-1]]
    for pos in range(0, ends[-1], 3):
        store = tmp_path / f"c{pos}"
        shutil.copytree(base, store)
        flip(store / seg, pos)
        damaged = next(i for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if s <= pos < e)
        assert not verify_store(store).ok
        if damaged == len(WAL_OPS) - 1:
            with SeqVault.open(store) as sv:
                got = {u: sv.get(u)["item"].tolist() for u in (1, 2, 3)}
                assert sv.recovery_note and "torn tail" in sv.recovery_note
            want = state_of(WAL_OPS[:damaged])
            assert (store / seg).stat().st_size == starts[damaged]
        else:
            with pytest.raises(WalCorruptionError) as err:
                SeqVault.open(store)
            assert err.value.path == str(store / seg) and err.value.offset == starts[damaged], f"flip at {pos}"
            assert "salvage" in str(err.value)
            with SeqVault.open(store, salvage=True) as sv:
                got = {u: sv.get(u)["item"].tolist() for u in (1, 2, 3)}
                assert sv.recovery_report["dropped"] == [
                    {"segment": seg, "offset": starts[damaged], "bytes": ends[damaged] - starts[damaged]}]
            want = state_of(WAL_OPS[:damaged] + WAL_OPS[damaged + 1:])
            with SeqVault.open(store) as sv:  # salvaged for good: a plain open works and agrees
                assert {u: sv.get(u)["item"].tolist() for u in (1, 2, 3)} == got
        assert got == {u: want.get(u, []) for u in (1, 2, 3)}, f"flip at byte {pos} (record {damaged})"
        shutil.rmtree(store)


def test_damage_in_a_closed_segment_is_never_a_torn_tail(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with SeqVault.open(store, schema=SCHEMA) as sv:
        sv.append([1], {"ts": [1], "item": [1]})
        sv.wal.rotate()  # segment 1 is closed (fsynced whole); segment 2 is the newest
        sv.append([1], {"ts": [2], "item": [2]})
    path = store / segment_name(1)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(WalCorruptionError, match=segment_name(1)):
        SeqVault.open(store)


def test_damaged_manifest_or_snapshot_refuses_to_open(tmp_path: Path) -> None:
    build(tmp_path / "a")
    flip(tmp_path / "a" / MANIFEST_NAME, 30)
    with pytest.raises(CorruptionError, match="manifest"):
        SeqVault.open(tmp_path / "a")
    build(tmp_path / "b")
    snap = next((tmp_path / "b").glob("index-*.snap"))
    flip(snap, snap.stat().st_size - 6)
    with pytest.raises(CorruptionError, match="snapshot"):
        SeqVault.open(tmp_path / "b")
    build(tmp_path / "c")
    data = next((tmp_path / "c").glob("data-*.svd"))
    data.write_bytes(data.read_bytes()[:-3])
    with pytest.raises(CorruptionError, match="shorter"):
        SeqVault.open(tmp_path / "c")


def test_cli_verify_stats_dump(tmp_path: Path) -> None:
    store = tmp_path / "s"
    build(store)
    runner = CliRunner()
    r = runner.invoke(cli, ["verify", str(store)])
    assert r.exit_code == 0 and "OK" in r.output and "3 records checked" in r.output
    r = runner.invoke(cli, ["stats", str(store)])
    assert r.exit_code == 0 and json.loads(r.output)["events"] == 6
    r = runner.invoke(cli, ["dump", str(store), "3", "--format", "json", "--last-n", "2"])
    assert r.exit_code == 0 and [e["item"] for e in json.loads(r.output)["events"]] == [31, 32]
    r = runner.invoke(cli, ["dump", str(store), "1"])
    assert r.exit_code == 0 and "(2 events for user 1)" in r.output
    r = runner.invoke(cli, ["stats", str(tmp_path)])
    assert r.exit_code == 2 and "not a SeqVault store" in r.output
    data = next(store.glob("data-*.svd"))
    flip(data, 30)
    r = runner.invoke(cli, ["verify", str(store), "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["problems"][0]["user_id"] == 1
    r = runner.invoke(cli, ["dump", str(store), "1"])
    assert r.exit_code == 2 and "offset 0" in r.output


def test_cli_recover_refuses_mid_log_damage_and_salvages_with_the_flag(tmp_path: Path) -> None:
    store = tmp_path / "s"
    ends = wal_store(store)
    flip(store / segment_name(1), ends[0] + 2)  # the second of five records
    runner = CliRunner()
    r = runner.invoke(cli, ["recover", str(store)])
    assert r.exit_code == 2 and "damaged in the middle" in r.output and "--salvage" in r.output
    r = runner.invoke(cli, ["verify", str(store)])
    assert r.exit_code == 1 and "mid-log damage" in r.output
    r = runner.invoke(cli, ["recover", str(store), "--salvage"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["dropped"] == [{"segment": segment_name(1), "offset": ends[0], "bytes": ends[1] - ends[0]}]
    assert report["records_kept"] == 4
    assert runner.invoke(cli, ["verify", str(store)]).exit_code == 0
    with SeqVault.open(store) as sv:
        assert sv.get(1)["item"].tolist() == [5, 10]
