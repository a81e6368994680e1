"""Loaders of real event logs: the Taobao sample, MovieLens layouts, generic CSV/Parquet, bad rows."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workloads import ACTIONS, OP_APPEND, OP_READ, LogFormatError, import_log, open_workload
from workloads.loaders import _DoubleColonReader, detect_movielens_layout

TAOBAO = Path(__file__).parents[1].parent / "shared/data/taobao-userbehavior-sample.csv"
needs_taobao = pytest.mark.skipif(not TAOBAO.exists(), reason=f"Taobao sample not found at {TAOBAO}")


def all_events(wl):
    """Every event of both phases as a DataFrame (user_id + schema fields)."""
    frames = []
    for uids, cols in wl.iter_backfill(1_000):
        frames.append(pd.DataFrame({"user_id": uids, **cols}).assign(phase="backfill"))
    for ch in wl.iter_live(500):
        frames.append(pd.DataFrame({"user_id": ch.events[0], **ch.events[1]}).assign(phase="live"))
    return pd.concat(frames, ignore_index=True)


def sort_frame(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return df[cols].sort_values(cols, kind="stable").reset_index(drop=True)


# -- Taobao ---------------------------------------------------------------------------------------
@needs_taobao
def test_taobao_sample_round_trip(tmp_path):
    wl = import_log(TAOBAO, format="taobao")
    raw = pd.read_csv(TAOBAO, header=None, names=["user_id", "item_id", "category", "behavior", "ts"])
    assert wl.manifest["source"]["rows_read"] == len(raw) and wl.rows_skipped == 0
    assert wl.schema.names == ("item_id", "ts", "action", "category")
    assert wl.schema.dtype("category") == np.uint32

    got = all_events(wl)
    expect = raw.assign(
        ts=raw.ts * 1000,
        action=raw.behavior.map({"pv": ACTIONS["click"], "cart": ACTIONS["cart"], "fav": ACTIONS["collect"],
                                 "buy": ACTIONS["purchase"]}),
    )
    cols = ["user_id", "item_id", "ts", "action", "category"]
    pd.testing.assert_frame_equal(sort_frame(got.astype({c: "int64" for c in cols}), cols),
                                  sort_frame(expect.astype({c: "int64" for c in cols}), cols))

    # split: the last 10% of the time span is live
    t_min, t_max = expect.ts.min(), expect.ts.max()
    split = wl.split_time_ms
    assert split == t_min + int((t_max - t_min) * 0.9)
    assert (got.ts[got.phase == "backfill"] < split).all() and (got.ts[got.phase == "live"] >= split).all()
    assert (got.phase == "live").sum() == (expect.ts >= split).sum()

    # saved and reopened: the same events, the same summary
    back = open_workload(wl.save(tmp_path / "tb"))
    assert back.schema == wl.schema
    pd.testing.assert_frame_equal(all_events(back), got)
    assert back.summary() == wl.summary()
    assert back.manifest["source"]["layout"] == "taobao"


@needs_taobao
def test_taobao_live_ops_derive_reads_from_event_times():
    wl = import_log(TAOBAO, format="taobao", live_fraction=0.5)
    chunks = list(wl.iter_live(100))
    times = np.concatenate([c.op_time_ms for c in chunks])
    assert np.all(np.diff(times) >= 0)
    live = all_events(wl).query("phase == 'live'")
    reads = [(int(u), int(t)) for c in chunks for u, t, k in zip(c.op_user, c.op_time_ms, c.op_kind, strict=True)
             if k == OP_READ]
    assert sorted(reads) == sorted(set(zip(live.user_id.astype(int), live.ts.astype(int), strict=True)))
    for c in chunks:
        for i in np.flatnonzero(c.op_kind == OP_APPEND):
            ts = c.events[1]["ts"][c.event_start[i]:c.event_end[i]]
            assert np.all(ts < c.op_time_ms[i]) and np.all(ts >= c.op_time_ms[i] - 1_000)


# -- MovieLens ------------------------------------------------------------------------------------
ML_ROWS = [(1, 1193, 5.0, 978300760), (1, 661, 3.0, 978302109), (2, 1357, 4.0, 978298709),
           (2, 3068, 1.0, 978299000), (3, 1, 2.0, 978310000), (1, 914, 4.0, 978301968)]


def write_movielens(tmp_path: Path, layout: str) -> Path:
    path = tmp_path / f"ml-{layout.replace('.', '-')}.txt"  # detection must not rely on the name
    if layout == "ratings.dat":
        path.write_text("".join(f"{u}::{m}::{int(r)}::{t}\n" for u, m, r, t in ML_ROWS))
    elif layout == "u.data":
        path.write_text("".join(f"{u}\t{m}\t{int(r)}\t{t}\n" for u, m, r, t in ML_ROWS))
    else:
        rows = [(u, m, r - 0.5 if m == 661 else r, t) for u, m, r, t in ML_ROWS]  # a half star
        path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in rows))
    return path


@pytest.mark.parametrize("layout", ["ratings.dat", "u.data", "ratings.csv"])
def test_movielens_layouts_detected_and_loaded(tmp_path, layout):
    path = write_movielens(tmp_path, layout)
    assert detect_movielens_layout(path) == layout
    wl = import_log(path, format="movielens", live_fraction=0.2)
    assert wl.manifest["source"]["layout"] == f"movielens/{layout}"
    assert wl.schema.names == ("item_id", "ts", "action", "rating_x2")
    got = sort_frame(all_events(wl).astype("int64", errors="ignore"), ["user_id", "item_id", "ts", "rating_x2"])
    half = layout == "ratings.csv"
    expect = pd.DataFrame(
        [(u, m, t * 1000, int(2 * (r - 0.5 if half and m == 661 else r))) for u, m, r, t in ML_ROWS],
        columns=["user_id", "item_id", "ts", "rating_x2"]).astype("int64")
    pd.testing.assert_frame_equal(got, sort_frame(expect, list(expect.columns)))
    assert (all_events(wl).action == ACTIONS["rate"]).all()
    # backfill users are grouped and time-sorted
    for uids, cols in wl.iter_backfill():
        assert np.all(np.diff(uids.astype(np.int64)) >= 0)
        same = uids[1:] == uids[:-1]
        assert np.all(np.diff(cols["ts"])[same] >= 0)


def test_movielens_rejects_other_files(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(LogFormatError, match=r"x\.csv:1: not a MovieLens"):
        import_log(path, format="movielens")


def test_double_colon_split_across_reads():
    data = b"".join(f"{i}::{i * 7}::{i % 5 + 1}::{1000 + i}\n".encode() for i in range(500))
    for read_size in (1, 2, 3, 7, 64):
        out = io.BufferedReader(_DoubleColonReader(io.BytesIO(data), read_size=read_size)).read()
        assert out == data.replace(b"::", b"\t")


# -- bad rows -------------------------------------------------------------------------------------
GOOD = ["1,10,100,pv,1511544070", "1,11,100,buy,1511544080", "2,12,101,fav,1511544090", "2,13,101,cart,1511544100"]


def write_lines(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "log.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("bad", "column", "needle"), [
    ("3,14,102,pv,yesterday", "timestamp", "'yesterday'"),
    ("3,14,102,browse,1511544100", "behavior_type", "'browse'"),
    ("-3,14,102,pv,1511544100", "user_id", "'-3'"),
    ("3,14,102,pv,1511544100,extra", None, "expected 5 columns, found 6"),
    ("3,,102,pv,1511544100", "item_id", "''"),
    ("3,99999999999,102,pv,1511544100", "item_id", "[0, 4294967295]"),
    ("", None, None),
])
def test_bad_row_names_file_line_and_column(tmp_path, bad, column, needle):
    path = write_lines(tmp_path, [*GOOD[:2], bad, *GOOD[2:]])
    with pytest.raises(LogFormatError) as info:
        import_log(path, format="taobao")
    err = info.value
    assert err.path == str(path) and err.line == 3
    assert f"{path}:3" in str(err) and "skip_bad_rows" in str(err)
    if column:
        assert err.column == column and repr(column) in str(err)
    if needle:
        assert needle in str(err)


def test_skip_bad_rows_counts_and_reports(tmp_path):
    lines = [GOOD[0], "x,1,2,pv,3,4", GOOD[1], "3,14,102,pv,soon", GOOD[2], "4,1,1,zap,1511544100", GOOD[3]]
    path = write_lines(tmp_path, lines)
    with pytest.warns(UserWarning, match="skipped 3 bad rows of 7"):
        wl = import_log(path, format="taobao", skip_bad_rows=True)
    assert wl.rows_skipped == 3 and wl.manifest["source"]["rows_skipped"] == 3
    examples = wl.manifest["source"]["bad_row_examples"]
    assert any(f"{path}:2:" in e for e in examples)
    assert any(f"{path}:4:" in e and "soon" in e for e in examples)  # exact line after a skipped row
    assert any(f"{path}:6:" in e and "zap" in e for e in examples)
    assert sorted(all_events(wl).item_id.tolist()) == [10, 11, 12, 13]


def test_clean_log_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wl = import_log(write_lines(tmp_path, GOOD), format="taobao", skip_bad_rows=True)
    assert wl.rows_skipped == 0


# -- generic CSV and Parquet ----------------------------------------------------------------------
MAPPING = {"user": "uid", "time": "when_ms", "time_unit": "ms",
           "fields": {"item_id": "item", "action": "what", "dwell_ms": "dwell"},
           "actions": {"view": "impression", "tap": "click", "heart": "like"}}


def test_generic_csv_with_mapping(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("when_ms,uid,what,item,dwell,ignored\n"
                    "1000,7,view,5,120,a\n1500,7,tap,5,9000,b\n1200,8,heart,6,300,c\n9000,7,view,9,50,d\n")
    wl = import_log(path, format="csv", mapping=MAPPING, live_fraction=0.0)
    assert wl.schema.names == ("item_id", "ts", "action", "dwell_ms")
    df = all_events(wl)
    assert (df.phase == "backfill").all()
    assert df.user_id.tolist() == [7, 7, 7, 8] and df.ts.tolist() == [1000, 1500, 9000, 1200]
    assert df.action.tolist() == [ACTIONS["impression"], ACTIONS["click"], ACTIONS["impression"], ACTIONS["like"]]
    with pytest.raises(ValueError, match="needs a column mapping"):
        import_log(path, format="csv")
    with pytest.raises(LogFormatError, match="'nope'"):
        import_log(path, format="csv", mapping={**MAPPING, "user": "nope"})


def test_parquet_with_mapping_and_bad_rows(tmp_path):
    table = pa.table({"uid": pa.array([1, 1, 2, None, 2], pa.int64()),
                      "when_ms": pa.array([10, 20, 30, 40, 50], pa.int64()),
                      "item": pa.array([3, 4, 5, 6, 7], pa.int64()),
                      "what": ["view", "tap", "tap", "view", "view"],
                      "dwell": pa.array([1.0, 2.0, 3.0, 4.0, 5.0])})
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    with pytest.raises(LogFormatError, match=r"events\.parquet:4: column 'uid'") as info:
        import_log(path, format="parquet", mapping=MAPPING)
    assert info.value.line == 4
    with pytest.warns(UserWarning, match="skipped 1 bad rows"):
        wl = import_log(path, format="parquet", mapping=MAPPING, skip_bad_rows=True, split_time_ms=30)
    df = all_events(wl)
    assert sorted(df.item_id.tolist()) == [3, 4, 5, 7]
    assert df.loc[df.phase == "live", "ts"].min() == 30 and df.loc[df.phase == "backfill", "ts"].max() == 20
    assert sorted(df.dwell_ms.tolist()) == [1, 2, 3, 5]


def test_bad_arguments(tmp_path):
    path = write_lines(tmp_path, GOOD)
    with pytest.raises(ValueError, match="unknown format"):
        import_log(path, format="xml")
    with pytest.raises(ValueError, match="live_fraction"):
        import_log(path, format="taobao", live_fraction=1.5)
    with pytest.raises(FileNotFoundError):
        import_log(tmp_path / "missing.csv", format="taobao")
