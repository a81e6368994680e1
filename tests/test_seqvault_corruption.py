"""Damaged bytes: a flipped byte in a data file gives CorruptionError naming file, offset and user;
a flipped byte in the WAL cuts the log at the damaged record; never wrong data. Plus the CLI."""

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


def wal_store(path: Path) -> tuple[list[int], list[dict[int, list[int]]]]:
    """Five appends (one a delete) left in the WAL; returns record ends and the state after each."""
    states: list[dict[int, list[int]]] = [{}]
    ends = []
    with SeqVault.open(path, schema=SCHEMA) as sv:
        ops = [([1, 2], [5, 6]), ([1], [7]), "delete-2", ([2, 3], [8, 9]), ([1], [10])]
        model: dict[int, list[int]] = {}
        for op in ops:
            if op == "delete-2":
                sv.delete([2])
                model.pop(2, None)
            else:
                uids, items = op
                sv.append(uids, {"ts": items, "item": items})
                for u, x in zip(uids, items, strict=True):
                    model.setdefault(u, []).append(x)
            ends.append(sv.wal.offset)
            states.append({u: list(v) for u, v in model.items()})
    return ends, states


def test_flipped_wal_byte_cuts_the_log_at_that_record(tmp_path: Path) -> None:
    base = tmp_path / "base"
    ends, states = wal_store(base)
    seg = segment_name(1)
    starts = [0, *ends[:-1]]
    for pos in range(0, ends[-1], 3):
        store = tmp_path / f"c{pos}"
        shutil.copytree(base, store)
        flip(store / seg, pos)
        damaged = next(i for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if s <= pos < e)
        assert not verify_store(store).ok
        with SeqVault.open(store) as sv:
            got = {u: sv.get(u)["item"].tolist() for u in (1, 2, 3)}
            assert sv.recovery_note and "cut" in sv.recovery_note
        want = states[damaged]  # everything before the damaged record, nothing from it or after
        assert got == {u: want.get(u, []) for u in (1, 2, 3)}, f"flip at byte {pos} (record {damaged})"
        assert (store / seg).stat().st_size == starts[damaged]
        shutil.rmtree(store)


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
