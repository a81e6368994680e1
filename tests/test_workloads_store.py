"""Saving and opening workload directories, summaries, and the `storagebench workload` CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from storagebench.cli import main
from workloads import GeneratorConfig, WorkloadDirError, generate, open_workload
from workloads.base import OP_READ
from workloads.stats import top_share

CFG = GeneratorConfig(users=300, seed=4, live_seconds=10.0, live_sessions_per_s=40.0)
TAOBAO = Path(__file__).parents[1].parent / "shared/data/taobao-userbehavior-sample.csv"


def flat(wl, chunk_events=1_000_000, chunk_ops=100_000):
    """Both phases concatenated, so chunkings can be compared."""
    bf = list(wl.iter_backfill(chunk_events))
    live = list(wl.iter_live(chunk_ops))
    out = {"bf_user": np.concatenate([c[0] for c in bf])}
    for n in wl.schema.names:
        out[f"bf_{n}"] = np.concatenate([c[1][n] for c in bf])
        out[f"ev_{n}"] = np.concatenate([c.events[1][n] for c in live])
    out["ev_user"] = np.concatenate([c.events[0] for c in live])
    for k in ("op_time_ms", "op_kind", "op_user", "n_candidates"):
        out[k] = np.concatenate([getattr(c, k) for c in live])
    out["op_events"] = np.concatenate([c.event_end - c.event_start for c in live])
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_save_open_round_trip_same_bytes(tmp_path):
    wl = generate(CFG)
    path = wl.save(tmp_path / "wl", chunk_events=10_000, chunk_ops=500)
    assert path == tmp_path / "wl"
    back = open_workload(path)
    assert back.schema == wl.schema
    assert_same(flat(back, chunk_events=7_000, chunk_ops=333), flat(wl))
    assert len(list(path.glob("backfill/*.parquet"))) > 3 and len(list(path.glob("live/ops-*.parquet"))) > 3
    m = json.loads((path / "manifest.json").read_text())
    assert m["seed"] == 4 and m["parameters"]["users"] == 300 and m["schema"]["name"] == "default"
    assert GeneratorConfig.from_dict(m["parameters"]) == CFG
    assert m["summary"] == back.summary()


def test_summary_matches_the_data(tmp_path):
    wl = generate(CFG)
    s = wl.summary()
    data = flat(wl)
    lengths = np.unique(data["bf_user"], return_counts=True)[1]
    reads = data["op_kind"] == OP_READ
    assert s["events"] == {"total": len(data["bf_user"]) + len(data["ev_user"]),
                           "backfill": len(data["bf_user"]), "live": len(data["ev_user"])}
    assert s["users"] == len(np.unique(np.r_[data["bf_user"], data["op_user"][reads], data["ev_user"]]))
    assert s["history_length"]["p50"] == pytest.approx(np.percentile(lengths, 50))
    assert s["history_length"]["max"] == lengths.max()
    assert s["live"]["reads"] == reads.sum() and s["live"]["window_s"] == 10.0
    assert s["live"]["reads_per_s"] == pytest.approx(reads.sum() / 10.0)
    read_counts = np.unique(data["op_user"][reads], return_counts=True)[1]
    assert s["skew"]["top1pct_read_share"] == pytest.approx(top_share(read_counts))
    json.dumps(s)  # JSON-serialisable


def test_top_share():
    assert top_share(np.array([1] * 99 + [97])) == pytest.approx(97 / 196)  # top 1 of 100 users
    assert top_share(np.array([5, 5, 5, 5])) == pytest.approx(0.25)  # at least one user
    assert top_share(np.zeros(3, np.int64)) == 0.0


def test_open_rejects_what_is_not_a_workload(tmp_path):
    with pytest.raises(WorkloadDirError, match="not a directory"):
        open_workload(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkloadDirError, match=r"no manifest\.json"):
        open_workload(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(WorkloadDirError, match="not valid JSON"):
        open_workload(bad)
    (bad / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(WorkloadDirError, match="not a storagebench workload"):
        open_workload(bad)
    path = generate(CFG).save(tmp_path / "wl", chunk_events=20_000)
    victim = sorted(path.glob("backfill/*.parquet"))[1]
    victim.unlink()
    with pytest.raises(WorkloadDirError, match=f"incomplete.*{victim.name}"):
        open_workload(path)


def test_save_refuses_to_clobber_and_never_leaves_half_a_workload(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(CFG).save(other)
    with pytest.raises(FileExistsError, match="not a saved workload"):
        generate(CFG).save(other, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"

    path = generate(CFG).save(tmp_path / "wl")
    before = json.loads((path / "manifest.json").read_text())

    class Exploding(type(generate(CFG))):
        def iter_live(self, chunk_ops=100_000):
            yield from super().iter_live(chunk_ops)
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        Exploding(dataclasses.replace(CFG, seed=5)).save(path, overwrite=True)
    assert json.loads((path / "manifest.json").read_text()) == before  # the old one survives intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "wl"]  # no temporary left behind
    generate(CFG, seed=6).save(path, overwrite=True)
    assert open_workload(path).manifest["seed"] == 6


# -- CLI --------------------------------------------------------------------------------------------
def test_cli_generate_and_describe(tmp_path):
    runner = CliRunner()
    out = tmp_path / "g"
    res = runner.invoke(main, ["workload", "generate", "--users", "200", "--seed", "3", "--live-seconds", "5",
                               "--set", "live_sessions_per_s=30", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "history length" in res.output and "reads" in res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["parameters"]["users"] == 200 and m["parameters"]["live_sessions_per_s"] == 30
    res = runner.invoke(main, ["workload", "describe", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == m["summary"]
    res = runner.invoke(main, ["workload", "describe", str(out)])
    assert res.exit_code == 0 and "p99" in res.output and "top 1%" in res.output
    res = runner.invoke(main, ["workload", "generate", "--users", "200", "--out", str(out)])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = runner.invoke(main, ["workload", "generate", "--set", "bogus=1", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "bogus" in res.output


def test_cli_describe_explains_a_wrong_directory(tmp_path):
    res = CliRunner().invoke(main, ["workload", "describe", str(tmp_path)])
    assert res.exit_code != 0 and "manifest.json" in res.output


def test_cli_import_reports_skipped_rows(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("1,10,100,pv,1511544070\n1,11,100,???,1511544080\n2,12,101,fav,1511544090\n")
    runner = CliRunner()
    res = runner.invoke(main, ["workload", "import", str(log), "--format", "taobao", "--out", str(tmp_path / "a")])
    assert res.exit_code != 0 and "log.csv:2" in res.output and "behavior_type" in res.output
    res = runner.invoke(main, ["workload", "import", str(log), "--format", "taobao", "--skip-bad-rows",
                               "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "skipped 1 bad rows" in res.output
    assert open_workload(tmp_path / "b").summary()["events"]["total"] == 2


@pytest.mark.skipif(not TAOBAO.exists(), reason=f"Taobao sample not found at {TAOBAO}")
def test_cli_import_taobao_sample(tmp_path):
    res = CliRunner().invoke(main, ["workload", "import", str(TAOBAO), "--format", "taobao",
                                    "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert open_workload(tmp_path / "t").summary()["events"]["total"] == sum(1 for _ in TAOBAO.open())


def test_cli_import_with_mapping(tmp_path):
    log = tmp_path / "e.csv"
    log.write_text("u;t;i\n5;1000;1\n5;2000;2\n6;3000;3\n")
    mapping = {"user": "u", "time": "t", "time_unit": "ms", "fields": {"item_id": "i"}, "delimiter": ";"}
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    res = CliRunner().invoke(main, ["workload", "import", str(log), "--format", "csv", "--mapping",
                                    str(tmp_path / "m.json"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    wl = open_workload(tmp_path / "o")
    assert wl.schema.names == ("item_id", "ts")
    assert wl.summary()["events"]["total"] == 3
