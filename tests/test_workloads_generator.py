"""The synthetic generator: determinism, invariants of both phases, statistical shape, interests."""

from __future__ import annotations

import hashlib
import itertools
import tracemalloc

import numpy as np
import pytest

from seqvault.schema import SchemaError
from workloads import (
    ACTIONS,
    DEFAULT_SCHEMA,
    OP_APPEND,
    OP_READ,
    SCENARIOS,
    GeneratorConfig,
    generate,
)

SMALL = GeneratorConfig(users=600, seed=11, live_seconds=20.0, live_sessions_per_s=60.0)


def digest(wl, chunk_events: int = 1_000_000, chunk_ops: int = 100_000) -> tuple[str, str]:
    """Hash of the backfill bytes and of the live op stream, independent of chunk boundaries
    (one running hash per column, so where the chunks split does not matter)."""
    names = wl.schema.names
    hb = {k: hashlib.sha256() for k in ("user_id", *names)}
    for uids, cols in wl.iter_backfill(chunk_events):
        hb["user_id"].update(uids.tobytes())
        for name in names:
            hb[name].update(cols[name].tobytes())
    ops = ("op_time_ms", "op_kind", "op_user", "n_candidates")
    hl = {k: hashlib.sha256() for k in (*ops, "n_events", "user_id", *names)}
    for ch in wl.iter_live(chunk_ops):
        for k in ops:
            hl[k].update(getattr(ch, k).tobytes())
        hl["n_events"].update((ch.event_end - ch.event_start).tobytes())
        hl["user_id"].update(ch.events[0].tobytes())
        for name in names:
            hl[name].update(ch.events[1][name].tobytes())
    return ("".join(h.hexdigest() for h in hb.values()), "".join(h.hexdigest() for h in hl.values()))


def backfill_all(wl, chunk_events: int = 1_000_000):
    chunks = list(wl.iter_backfill(chunk_events))
    uids = np.concatenate([c[0] for c in chunks])
    cols = {n: np.concatenate([c[1][n] for c in chunks]) for n in wl.schema.names}
    return chunks, uids, cols


def user_runs(uids: np.ndarray) -> np.ndarray:
    starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
    return np.r_[starts, len(uids)]


# -- schema and config --------------------------------------------------------------------------
def test_default_schema_fields_and_codes():
    assert DEFAULT_SCHEMA.name == "default"
    assert DEFAULT_SCHEMA.time_field == "ts"
    assert DEFAULT_SCHEMA.names == ("item_id", "ts", "action", "scenario", "dwell_ms", "category", "author_id")
    assert DEFAULT_SCHEMA.dtype("ts") == np.int64
    assert all(DEFAULT_SCHEMA.dtype(n) != np.int64 for n in DEFAULT_SCHEMA.names if n != "ts")
    assert all(f.doc for f in DEFAULT_SCHEMA.fields)
    assert "click" in ACTIONS and ACTIONS["impression"] == 0
    assert len(set(ACTIONS.values())) == len(ACTIONS)
    assert set(SCENARIOS) == {"feed", "video", "search"}


def test_default_schema_rejects_bad_batches():
    uids = np.arange(3, dtype=np.uint64)
    cols = {n: np.zeros(3, DEFAULT_SCHEMA.dtype(n)) for n in DEFAULT_SCHEMA.names}
    DEFAULT_SCHEMA.validate(uids, cols)
    with pytest.raises(SchemaError, match="category"):
        DEFAULT_SCHEMA.validate(uids, {**cols, "category": np.array([1, 70_000, 2])})
    with pytest.raises(SchemaError, match="missing column 'scenario'"):
        DEFAULT_SCHEMA.validate(uids, {k: v for k, v in cols.items() if k != "scenario"})
    with pytest.raises(SchemaError, match="action"):
        DEFAULT_SCHEMA.validate(uids, {**cols, "action": np.array([0.5, 1.0, 2.0])})


@pytest.mark.parametrize("bad", [
    {"users": 0}, {"history_min": 100, "history_max": 10}, {"n_categories": 70_000},
    {"episode_prob": 1.5}, {"scenario_probs": (0.5, 0.5, 0.5)}, {"candidates_min": 0},
])
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError, match="invalid GeneratorConfig"):
        GeneratorConfig(**bad)


def test_presets_scale_and_round_trip():
    small, medium = GeneratorConfig.preset("small"), GeneratorConfig.preset("medium")
    assert medium.users == 10 * small.users
    assert medium.live_sessions_per_s == 10 * small.live_sessions_per_s
    assert GeneratorConfig.preset("large").users == 100 * small.users
    assert GeneratorConfig.preset("small", seed=5).seed == 5
    with pytest.raises(ValueError, match="unknown preset"):
        GeneratorConfig.preset("huge")
    assert GeneratorConfig.from_dict(medium.to_dict()) == medium


def test_generate_is_lazy():
    wl = generate(GeneratorConfig.preset("large"))
    assert wl._tables is None  # nothing, not even the user table, until iterated
    assert wl.manifest["parameters"]["users"] == 400_000 and wl.manifest["summary"] is None


# -- determinism --------------------------------------------------------------------------------
def test_same_seed_same_bytes_whatever_the_chunking():
    a = digest(generate(SMALL))
    assert digest(generate(SMALL)) == a
    assert digest(generate(SMALL), chunk_events=5_000, chunk_ops=777) == a


def test_other_seed_other_bytes():
    a = digest(generate(SMALL))
    b = digest(generate(SMALL, seed=12))
    assert a[0] != b[0] and a[1] != b[1]


# -- backfill -----------------------------------------------------------------------------------
def test_backfill_chunks_hold_whole_users_sorted_and_valid():
    wl = generate(SMALL)
    chunks, _uids, cols = backfill_all(wl, chunk_events=20_000)
    assert len(chunks) > 5
    seen: set[int] = set()
    for cu, cc in chunks:
        DEFAULT_SCHEMA.validate(cu, cc)
        assert {k: v.dtype for k, v in cc.items()} == {f.name: f.np_dtype for f in DEFAULT_SCHEMA.fields}
        users = set(np.unique(cu).tolist())
        assert not users & seen, "a user spans two chunks"
        seen |= users
        # sorted by (user, ts)
        assert np.all(cu[1:] >= cu[:-1])
        same = cu[1:] == cu[:-1]
        assert np.all(cc["ts"][1:][same] >= cc["ts"][:-1][same])
        lengths = np.diff(user_runs(cu))
        assert len(cu) <= 20_000 or len(lengths) == 1  # only a single oversized user may exceed
    assert len(seen) == SMALL.users
    assert cols["ts"].max() < SMALL.split_time_ms
    assert cols["ts"].min() >= SMALL.split_time_ms - SMALL.history_days_max * 86_400_000
    assert cols["category"].max() < SMALL.n_categories
    assert cols["item_id"].max() < SMALL.n_items
    # an item always has the same category and author
    order = np.argsort(cols["item_id"], kind="stable")
    same_item = cols["item_id"][order][1:] == cols["item_id"][order][:-1]
    for col in ("category", "author_id"):
        v = cols[col][order]
        assert np.array_equal(v[1:][same_item], v[:-1][same_item])


def test_history_lengths_long_tailed_and_capped():
    cfg = GeneratorConfig(users=20_000, seed=3, history_max=12_000)
    wl = generate(cfg)
    lengths = wl.tables.length  # exact per-user backfill lengths, without generating events
    assert lengths.min() >= cfg.history_min and lengths.max() == cfg.history_max
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    assert 100 <= p50 <= 400          # most users have hundreds of events
    assert p90 > 3 * p50 and p99 > 15 * p50
    assert (lengths >= 10_000).sum() > 20   # the tail has 10k+
    # and the generated backfill has exactly these lengths
    small = generate(SMALL)
    _, uids, _ = backfill_all(small)
    np.testing.assert_array_equal(np.diff(user_runs(uids)), small.tables.length)


def test_sessions_are_bursts_with_gaps():
    _, uids, cols = backfill_all(generate(SMALL))
    same = uids[1:] == uids[:-1]
    gaps = np.diff(cols["ts"])[same]
    within = gaps < 10 * 60_000
    # most consecutive events are seconds apart, but there are many long gaps between sessions
    assert np.median(gaps) < 30_000
    assert 0.03 < 1 - within.mean() < 0.3
    assert np.percentile(gaps[~within], 50) > 3_600_000


def test_item_popularity_and_actions_are_skewed():
    _, _, cols = backfill_all(generate(SMALL))
    counts = np.sort(np.bincount(cols["item_id"]))[::-1]
    top = counts[: max(1, int(0.01 * np.count_nonzero(counts)))].sum() / counts.sum()
    assert top > 0.15
    act = cols["action"]
    click_rate = (act != ACTIONS["impression"]).mean()
    assert 0.03 < click_rate < 0.4
    assert (act == ACTIONS["like"]).sum() > 0 and (act == ACTIONS["search"]).sum() > 0
    scen = np.bincount(cols["scenario"], minlength=3) / len(act)
    assert scen[SCENARIOS["feed"]] > scen[SCENARIOS["video"]] > scen[SCENARIOS["search"]] > 0
    dwell = cols["dwell_ms"]
    assert np.median(dwell[act != 0]) > 3 * np.median(dwell[act == 0])


def _click_hit_rates(wl, horizon: int = 200, recent: int = 100, top_k: int = 3) -> tuple[float, float]:
    """How often a user's next clicks fall in the top-k categories of their past clicks, counted
    over the whole history versus the newest ``recent`` events only."""
    whole, newest = [], []
    for uids, cols in wl.iter_backfill(200_000):
        bounds = user_runs(uids)
        for lo, hi in itertools.pairwise(bounds):
            if hi - lo < horizon + 2 * recent:
                continue
            cat, act = cols["category"][lo:hi], cols["action"][lo:hi]
            clicked = (act >= ACTIONS["click"]) & (act <= ACTIONS["follow"])
            target = cat[-horizon:][clicked[-horizon:]]
            if len(target) == 0:
                continue
            past_cat, past_click = cat[:-horizon], clicked[:-horizon]
            for out, (c, k) in ((whole, (past_cat, past_click)),
                                (newest, (past_cat[-recent:], past_click[-recent:]))):
                vals, cnt = np.unique(c[k], return_counts=True)
                top = vals[np.argsort(-cnt, kind="stable")[:top_k]]
                out.append(np.isin(target, top).mean())
    assert len(whole) > 200
    return float(np.mean(whole)), float(np.mean(newest))


def test_long_history_predicts_next_clicks_better_than_newest_100():
    whole, newest = _click_hit_rates(generate(GeneratorConfig(users=1_500, seed=3, live_seconds=0)))
    assert whole > newest + 0.04, (whole, newest)
    print(f"next-click hit rate of the top-3 past categories: whole {whole:.3f}, newest 100 {newest:.3f}")
    # Control: without long-term interests (no episodes, none mixed into other sessions) the old
    # history holds no extra signal.
    flat = generate(GeneratorConfig(users=1_500, seed=3, live_seconds=0, episode_prob=0.0, long_term_mix=0.0))
    whole_flat, newest_flat = _click_hit_rates(flat)
    assert whole_flat < newest_flat + 0.01, (whole_flat, newest_flat)


# -- live -------------------------------------------------------------------------------------
def live_all(wl, chunk_ops: int = 100_000):
    return list(wl.iter_live(chunk_ops))


def test_live_stream_invariants():
    wl = generate(SMALL)
    chunks = live_all(wl, chunk_ops=1_000)
    assert len(chunks) > 3 and all(len(c) == 1_000 for c in chunks[:-1])
    times = np.concatenate([c.op_time_ms for c in chunks])
    assert np.all(np.diff(times) >= 0), "ops are not in time order across chunks"
    t0, t1 = wl.live_window_ms
    assert times.min() >= t0 and times.max() < t1
    uid_set = set(wl.tables.ids.tolist())
    late = 0
    for c in chunks:
        DEFAULT_SCHEMA.validate(*c.events)
        assert c.op_kind.dtype == np.uint8 and c.op_user.dtype == np.uint64 and c.n_candidates.dtype == np.int32
        reads, appends = c.op_kind == OP_READ, c.op_kind == OP_APPEND
        assert np.all(reads | appends)
        assert np.all(c.n_candidates[reads] >= SMALL.candidates_min)
        assert np.all(c.n_candidates[reads] <= SMALL.candidates_max)
        assert np.all(c.n_candidates[appends] == 0)
        assert np.all(c.event_start[reads] == c.event_end[reads])
        assert np.all(c.event_end[appends] > c.event_start[appends])
        assert c.event_start[0] == 0 and c.event_end[-1] == c.n_events
        assert np.all(c.event_start[1:] == c.event_end[:-1])
        ev_u, ev_c = c.events
        for i in np.flatnonzero(appends):
            lo, hi = c.event_start[i], c.event_end[i]
            assert c.op_user[i] == ev_u[lo]
            assert np.all(ev_c["ts"][lo:hi] <= c.op_time_ms[i])  # nothing appended before it happened
            assert np.all(ev_c["ts"][lo:hi] >= t0)
            late += int(np.sum(ev_c["ts"][lo:hi] < c.op_time_ms[i - 1])) if i else 0
        assert set(np.unique(c.op_user[reads]).tolist()) <= uid_set
    assert late > 0, "live events should sometimes arrive out of order"
    n_reads = sum(int((c.op_kind == OP_READ).sum()) for c in chunks)
    expected = SMALL.live_sessions_per_s * SMALL.requests_per_session_mean * SMALL.live_seconds
    assert 0.7 * expected < n_reads < 1.3 * expected  # steady from the first second: warm start


def test_live_reads_follow_activity_and_are_zipf_skewed():
    cfg = GeneratorConfig(users=3_000, seed=5, live_seconds=60.0, live_sessions_per_s=150.0)
    wl = generate(cfg)
    chunks = live_all(wl)
    read_users = np.concatenate([c.op_user[c.op_kind == OP_READ] for c in chunks])
    ids, counts = np.unique(read_users, return_counts=True)
    share = np.sort(counts)[::-1][:30].sum() / counts.sum()
    expected = np.sort(wl.tables.activity)[::-1][:30].sum()
    assert share > 0.15
    assert abs(share - expected) < 0.08, (share, expected)
    # a read's user is active: the events following reads come from users who were just read for
    ev_users = np.unique(np.concatenate([c.events[0] for c in chunks]))
    assert np.isin(ev_users, ids).mean() > 0.95
    # heavier histories read more: top readers have longer backfills than the median user
    pos = np.searchsorted(wl.tables.ids, ids[np.argsort(-counts)[:30]])
    assert np.median(wl.tables.length[pos]) > 2 * np.median(wl.tables.length)


def test_live_events_keep_users_interests():
    cfg = GeneratorConfig(users=800, seed=9, live_seconds=60.0, live_sessions_per_s=80.0)
    wl = generate(cfg)
    ev = [c.events for c in live_all(wl)]
    uids = np.concatenate([e[0] for e in ev])
    cat = np.concatenate([e[1]["category"] for e in ev]).astype(np.int64)
    pos = np.searchsorted(wl.tables.ids, uids)
    in_long_term = (cat[:, None] == wl.tables.long_term[pos]).any(axis=1)
    assert 0.1 < in_long_term.mean() < 0.5  # episodes show up live too, far above chance


# -- bounded memory -----------------------------------------------------------------------------
def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_memory_is_set_by_chunk_not_total():
    def drain_backfill(users):
        def run():
            n = 0
            for u, _ in generate(GeneratorConfig(users=users, seed=1, live_seconds=0)).iter_backfill(20_000):
                n += len(u)
            assert n > 0
        return run

    def drain_live(seconds):
        def run():
            wl = generate(GeneratorConfig(users=500, seed=1, live_seconds=seconds, live_sessions_per_s=100))
            for _ in wl.iter_backfill(1):
                break
            n = sum(c.n_events for c in wl.iter_live(2_000))
            assert n > 0
        return run

    small_bf, big_bf = _peak_bytes(drain_backfill(1_000)), _peak_bytes(drain_backfill(4_000))
    total_big = 4_000 * 513 * (DEFAULT_SCHEMA.row_bytes + 8)  # ~2M events of the big run
    assert big_bf < 1.6 * small_bf, (small_bf, big_bf)
    assert big_bf < total_big / 3, (big_bf, total_big)
    small_live, big_live = _peak_bytes(drain_live(20)), _peak_bytes(drain_live(160))
    assert big_live < 1.6 * small_live, (small_live, big_live)
