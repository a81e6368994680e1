"""The CTR task built from event arrays: no leakage, time split, sampling, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rankers.training import make_batch
from storagebench.ctr import NEGATIVE_SOURCES, CTRSplits, CTRTaskConfig, build_ctr_task

CLICK, VIEW = 2, 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_events(n_users: int = 40, per_user: int = 80, seed: int = 0
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Events with duplicate timestamps inside a user, in shuffled order."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(100, 100 + n_users, dtype=np.uint64), per_user)
    ts = (rng.integers(0, 200, size=users.size) * 1000 + 10**12).astype(np.int64)
    cols = {
        "item_id": rng.zipf(1.5, size=users.size) % 500,
        "ts": ts,
        "action": np.where(rng.random(users.size) < 0.3, CLICK, VIEW),
        "scenario": rng.integers(0, 3, size=users.size),
        "category": rng.integers(0, 20, size=users.size),
        "dwell_ms": rng.integers(0, 10_000, size=users.size),
    }
    order = rng.permutation(users.size)
    return users[order], {k: v[order] for k, v in cols.items()}


CFG = CTRTaskConfig(max_len=32, requests_per_user=5, negatives=3, click_actions=(CLICK,), seed=1)


@pytest.fixture(scope="module")
def task() -> tuple[CTRSplits, np.ndarray, dict[str, np.ndarray]]:
    users, cols = random_events()
    return build_ctr_task(users, cols, CFG), users, cols


def test_histories_are_exactly_the_events_strictly_before_the_request(task) -> None:  # type: ignore[no-untyped-def]
    splits, users, cols = task
    for data in (splits.train, splits.valid, splits.test):
        ev = data.events
        for i in range(len(data)):
            u = data.user_ids[i]
            mine = users == u
            before = np.sort(cols["ts"][mine][cols["ts"][mine] < data.request_time_ms[i]])
            window = ev["ts"][data.hist_start[i]:data.hist_end[i]]
            assert window.tolist() == before.tolist()               # all of them, none later
        history, _, _ = make_batch(data, np.arange(len(data)))
        mask = history.valid_mask()
        assert (history.event_time_ms[mask].reshape(-1) < history.request_time_ms.repeat_interleave(
            history.lengths)).all()
        assert history.lengths.max() <= CFG.max_len


def test_positives_are_the_users_click_at_request_time_and_negatives_differ(task) -> None:  # type: ignore[no-untyped-def]
    splits, users, cols = task
    data = splits.train
    assert data.labels.shape[1] == 1 + CFG.negatives
    assert (data.labels.sum(axis=1) == 1).all()
    for i in range(len(data)):
        pos = data.labels[i] == 1
        item = data.cand_item_ids[i][pos][0]
        cat = data.cand_side["category"][i][pos][0]
        at = (users == data.user_ids[i]) & (cols["ts"] == data.request_time_ms[i]) & (cols["action"] == CLICK)
        assert ((cols["item_id"][at] == item) & (cols["category"][at] == cat)).any()
        assert not np.isin(data.cand_item_ids[i][~pos], [item]).any()
    # Candidate order is shuffled: the positive is not always in one column.
    assert len(set(np.argmax(splits.train.labels, axis=1).tolist())) > 1


def test_time_split_puts_every_train_request_before_valid_before_test(task) -> None:  # type: ignore[no-untyped-def]
    splits, _, _ = task
    tr, va, te = splits.train.request_time_ms, splits.valid.request_time_ms, splits.test.request_time_ms
    assert tr.max() < va.min() and va.max() < te.min()
    # Each split's requests lie in its period [start, next start).
    assert tr.max() < splits.valid_start_ms <= va.min() and va.max() < splits.test_start_ms <= te.min()
    total = len(tr) + len(va) + len(te)
    assert abs(len(te) / total - CFG.test_fraction) < 0.08
    assert abs(len(va) / total - CFG.valid_fraction) < 0.08
    counts = np.unique(np.concatenate([splits.train.user_ids, splits.valid.user_ids,
                                       splits.test.user_ids]), return_counts=True)[1]
    assert counts.max() <= CFG.requests_per_user


def test_deterministic_in_seed_and_independent_of_input_order() -> None:
    users, cols = random_events(seed=3)
    a = build_ctr_task(users, cols, CFG)
    order = np.lexsort((cols["ts"], users))
    b = build_ctr_task(users[order], {k: v[order] for k, v in cols.items()}, CFG)
    c = build_ctr_task(users, cols, CTRTaskConfig(**{**CFG.__dict__, "seed": 2}))
    for x, y in ((a.train, b.train), (a.test, b.test)):
        assert np.array_equal(x.request_time_ms, y.request_time_ms)
        assert np.array_equal(x.cand_item_ids, y.cand_item_ids)
        assert np.array_equal(x.labels, y.labels)
    assert not np.array_equal(a.train.cand_item_ids, c.train.cand_item_ids)


def test_min_history_and_several_positives() -> None:
    users, cols = random_events(seed=4)
    cfg = CTRTaskConfig(max_len=16, requests_per_user=50, positives=2, negatives=2, min_history=20,
                        click_actions=(CLICK,))
    s = build_ctr_task(users, cols, cfg)
    for data in (s.train, s.valid, s.test):
        assert (data.hist_end - data.hist_start >= 20).all()
        assert (data.labels.sum(axis=1) == 2).all()


def test_bad_input_is_refused_with_a_clear_message() -> None:
    users, cols = random_events(n_users=2, per_user=10)
    with pytest.raises(ValueError, match="category"):
        build_ctr_task(users, {k: v for k, v in cols.items() if k != "category"}, CFG)
    with pytest.raises(ValueError, match="test_fraction"):
        CTRTaskConfig(valid_fraction=0.5, test_fraction=0.5)


def test_exposure_negatives_are_the_users_own_next_impressions(task) -> None:  # type: ignore[no-untyped-def]
    splits, users, cols = task
    assert CFG.negatives_from == "exposures"
    order = np.lexsort((cols["ts"], users))
    u, t, item, act = users[order], cols["ts"][order], cols["item_id"][order], cols["action"][order]
    checked = 0
    for data in (splits.train, splits.test):
        for i in range(len(data)):
            neg = data.labels[i] == 0
            pos_item = data.cand_item_ids[i][~neg][0]
            # The positive: this user's click at the request time; the negatives: the CFG.negatives
            # impressions that follow it in the user's (time, arrival) order.
            mine = np.flatnonzero((u == data.user_ids[i]) & (t == data.request_time_ms[i]) & (act == CLICK)
                                  & (item == pos_item))
            after = [j for j in range(mine[0] + 1, len(u)) if u[j] == data.user_ids[i] and act[j] == VIEW]
            expected = item[after[:CFG.negatives]]
            assert sorted(data.cand_item_ids[i][neg].tolist()) == sorted(expected.tolist())
            assert (t[after[:CFG.negatives]] >= data.request_time_ms[i]).all()   # never in the history
            checked += 1
    assert checked > 50


def test_unknown_negative_source_is_refused() -> None:
    with pytest.raises(ValueError, match="negatives_from"):
        CTRTaskConfig(negatives_from="random")


def test_popularity_negatives_are_clicks_from_before_the_request() -> None:
    users, cols = random_events()
    splits = build_ctr_task(users, cols, replace(CFG, negatives_from="popularity"))
    click_ts = cols["ts"][cols["action"] == CLICK]
    click_pairs = set(zip(cols["item_id"][cols["action"] == CLICK].tolist(),
                          cols["category"][cols["action"] == CLICK].tolist(), strict=True))
    for data in (splits.train, splits.test):
        for i in range(len(data)):
            neg = data.labels[i] == 0
            for item, cat in zip(data.cand_item_ids[i][neg], data.cand_side["category"][i][neg], strict=True):
                assert (int(item), int(cat)) in click_pairs
            # Every negative's item was clicked by someone before this request.
            earliest = {}
            for item in data.cand_item_ids[i][neg]:
                m = (cols["item_id"] == item) & (cols["action"] == CLICK)
                earliest[int(item)] = cols["ts"][m].min()
            assert all(t < data.request_time_ms[i] for t in earliest.values())
    assert click_ts.min() < splits.train.request_time_ms.min()


def session_events(n_users: int = 60, sessions: int = 12, per_session: int = 8, seed: int = 0
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Bursts of events 5-60 s apart, sessions hours apart, users interleaved over two weeks: the next
    impression after a session's last click is often hours away, in a later session."""
    rng = np.random.default_rng(seed)
    n = sessions * per_session
    users = np.repeat(np.arange(n_users, dtype=np.uint64), n)
    session_start = np.cumsum(rng.integers(1, 48, size=(n_users, sessions)) * 3_600_000, axis=1)
    within = np.cumsum(rng.integers(5_000, 60_000, size=(n_users, sessions, per_session)), axis=2)
    ts = (10**12 + session_start[:, :, None] + within).reshape(-1)
    cols = {"item_id": rng.integers(0, 10_000, size=users.size), "ts": ts,
            "action": np.where(rng.random(users.size) < 0.25, CLICK, VIEW),
            "scenario": rng.integers(0, 3, size=users.size), "category": rng.integers(0, 20, size=users.size)}
    return users, cols


def check_candidate_bounds(splits: CTRSplits, window_ms: int | None, source: str) -> int:
    """Assert every candidate lies in its request's split period (and window); return the count checked."""
    periods = {"train": (None, splits.valid_start_ms), "valid": (splits.valid_start_ms, splits.test_start_ms),
               "test": (splits.test_start_ms, None)}
    checked = 0
    for name, (lo, hi) in periods.items():
        data = getattr(splits, name)
        t, req = data.cand_time_ms, data.request_time_ms[:, None]
        if lo is not None:
            assert (t >= lo).all(), f"{name}: a candidate shown before its split began"
        if hi is not None:
            assert (t < hi).all(), f"{name}: a candidate shown in a later split's period"
        neg = data.labels == 0
        if window_ms is not None:
            assert (np.abs(t - req) <= window_ms).all(), f"{name}: a candidate outside the window"
        if source == "exposures":
            assert (t[neg] >= np.broadcast_to(req, t.shape)[neg]).all()      # shown at or after the click
        else:
            assert (t[neg] < np.broadcast_to(req, t.shape)[neg]).all()       # clicked before the request
        checked += int(neg.sum())
    assert splits.describe()["candidates"]["candidates_outside_their_split"] == 0
    return checked


@pytest.mark.parametrize("source", NEGATIVE_SOURCES)
def test_candidates_stay_within_the_window_and_their_split_period(source: str) -> None:
    users, cols = session_events()
    cfg = CTRTaskConfig(max_len=32, requests_per_user=12, negatives=3, click_actions=(CLICK,),
                        negatives_from=source, negative_window_ms=30 * 60_000, positives=1)
    assert check_candidate_bounds(build_ctr_task(users, cols, cfg), cfg.negative_window_ms, source) > 300
    # The bounds bind on this data: without the window, negatives hours away come in, yet the split
    # bound still holds.
    loose = build_ctr_task(users, cols, replace(cfg, negative_window_ms=None))
    check_candidate_bounds(loose, None, source)
    assert loose.describe()["candidates"]["negative_gap_s_max"] > 3600


def test_later_positives_obey_the_bounds_too() -> None:
    users, cols = session_events(seed=2)
    cfg = CTRTaskConfig(max_len=32, requests_per_user=12, positives=2, negatives=2, click_actions=(CLICK,))
    splits = build_ctr_task(users, cols, cfg)
    check_candidate_bounds(splits, cfg.negative_window_ms, "exposures")
    assert len(splits.train) > 20


def test_a_request_whose_impressions_lie_beyond_the_window_or_split_is_dropped() -> None:
    minute = 60_000
    t0 = 10**12
    # User 1: a click at t0 + 60 min, impressions 10 min and 2 h later. User 2's click at +100 h starts
    # the test period; user 3's click at +50 h is a training one whose only impression (+100 h 2 min)
    # lies in the test period.
    users = np.array([1, 1, 1, 1, 2, 2, 3, 3], dtype=np.uint64)
    ts = np.array([t0, t0 + 60 * minute, t0 + 70 * minute, t0 + 180 * minute,
                   t0 + 6000 * minute, t0 + 6001 * minute, t0 + 3000 * minute, t0 + 6002 * minute])
    action = np.array([VIEW, CLICK, VIEW, VIEW, CLICK, VIEW, CLICK, VIEW])
    cols = {"item_id": np.arange(8) + 100, "ts": ts, "action": action, "scenario": np.zeros(8, np.int64),
            "category": np.arange(8)}
    base = CTRTaskConfig(max_len=8, requests_per_user=4, negatives=1, click_actions=(CLICK,), min_history=0,
                         valid_fraction=0.0, test_fraction=0.34)
    one = build_ctr_task(users, cols, base)
    assert one.test_start_ms == t0 + 6000 * minute
    train_items = sorted(one.train.cand_item_ids.ravel().tolist())
    assert train_items == [101, 102]                 # user 1's click and the impression 10 min later
    assert one.test.cand_item_ids.ravel().tolist() in ([104, 105], [105, 104])
    # User 1 needs a second negative with k=2, but the next impression is 2 h away: dropped.
    assert build_ctr_task(users, cols, replace(base, negatives=2)).train.cand_item_ids.size == 0
    loose = build_ctr_task(users, cols, replace(base, negative_window_ms=None))
    # Without the window user 1 keeps its request; user 3's still crosses into the test period.
    assert sorted(loose.train.cand_item_ids.ravel().tolist()) == [101, 102]
    assert sorted(build_ctr_task(users, cols, replace(base, negative_window_ms=None, negatives=2)
                                 ).train.cand_item_ids.ravel().tolist()) == [101, 102, 103]


# -- planted long-range signal, end to end with the real models ----------------------------------

def planted_events(n_users: int, old: int = 20, recent: int = 100, seed: int = 0
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each user: ``old`` views of their interest category (categories 1-30), then ``recent`` views of
    noise categories (31-60), then one click on an item of the interest. Whether a candidate's category
    is the user's interest is visible only more than ``recent`` events back."""
    rng = np.random.default_rng(seed)
    n = old + recent + 1
    interest = rng.integers(1, 31, size=n_users)
    cat = rng.integers(31, 61, size=(n_users, n))
    cat[:, :old] = interest[:, None]
    cat[:, -1] = interest
    action = np.full((n_users, n), VIEW)
    action[:, -1] = CLICK
    ts = (10**12 + rng.integers(0, 10**9, size=n_users))[:, None] + np.arange(n) * 60_000
    users = np.repeat(np.arange(n_users, dtype=np.uint64), n)
    cols = {"item_id": (cat * 1000 + rng.integers(0, 200, size=cat.shape)).ravel(), "ts": ts.ravel(),
            "action": action.ravel(), "scenario": rng.integers(0, 3, size=users.size), "category": cat.ravel()}
    return users, cols


def test_tiny_training_run_beats_chance_only_with_the_long_history() -> None:
    import torch

    from rankers.registry import build_model
    from rankers.training import evaluate, fit
    from storagebench.ctr import model_shape

    users, cols = planted_events(2000)
    # One click per user (the last event): no later impressions, so negatives come by popularity.
    splits = build_ctr_task(users, cols, CTRTaskConfig(max_len=128, requests_per_user=1, negatives=4,
                                                       click_actions=(CLICK,), negatives_from="popularity"))
    aucs = {}
    for name in ("laser", "base"):                   # base reads only the newest 100 events
        torch.manual_seed(0)
        model = build_model(name, d=16, **model_shape(splits))
        fit(model, splits.train, splits.valid, epochs=4, batch_size=32, lr=3e-3, device="cpu", progress=False)
        aucs[name] = evaluate(model, splits.test)["auc"]
    assert aucs["laser"] > 0.75, aucs
    assert aucs["base"] < 0.62, aucs


# -- the commands, on a small stand-in workload --------------------------------------------------

class StandInWorkload:
    def __init__(self, users: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        order = np.lexsort((cols["ts"], users))
        self.users, self.cols = users[order], {k: v[order] for k, v in cols.items()}

    def iter_backfill(self, chunk_events: int = 1_000_000):  # type: ignore[no-untyped-def]
        half = int(np.searchsorted(self.users, self.users[len(self.users) // 2]))
        for a, b in ((0, half), (half, len(self.users))):
            yield self.users[a:b], {k: v[a:b] for k, v in self.cols.items()}


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    import storagebench.ctr as ctr

    monkeypatch.setattr(ctr, "load_workload", lambda path, scale, seed: StandInWorkload(*random_events(seed=seed)))
    monkeypatch.setattr(ctr, "_click_actions", lambda cfg: np.array([CLICK]))


def test_train_command_writes_train_json(stand_in, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from storagebench.cli import main

    res = CliRunner().invoke(main, ["train", "--model", "din", "--seq-len", "32", "--epochs", "1", "--d", "8",
                                    "--max-users", "30", "--device", "cpu", "--no-progress",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["kind"] == "train" and report["model"] == "din"
    assert 0.0 <= report["test"]["auc"] <= 1.0 and report["test"]["logloss"] > 0
    assert report["task"]["requests"]["train"] > 0 and "test AUC" in res.output
    assert set(report["heuristics"]) == {"category_share", "recent_category_count", "category_ctr"}
    best = max(h["auc"] for h in report["heuristics"].values())
    assert report["beats_best_heuristic"] == (report["test"]["auc"] > best) and "training-free floors" in res.output
    assert report["task"]["candidates"]["candidates_outside_their_split"] == 0


def test_paper_tables_command_writes_tables_and_resumes(stand_in, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from storagebench.cli import main

    args = ["paper-tables", "--tables", "3,4", "--seq-len", "40", "--epochs", "1", "--d", "8", "--seeds", "1",
            "--lr-grid", "1e-2", "--max-users", "20", "--device", "cpu", "--no-progress", "--out", str(tmp_path)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "paper_tables.json").read_text())
    assert report["kind"] == "paper_tables" and report["complete"]
    assert sorted(report["runs"]) == sorted(["laser", "laser:softmax", "laser:no_ffn_ln", "laser:no_ln",
                                             "laser:no_fusion", "laser:no_recency", "laser:w5", "laser:w20"])
    t3, t4 = report["tables"]["table3"], report["tables"]["table4"]
    laser_auc = report["runs"]["laser"]["test"]["auc"]
    assert len(t3) == 5 and all(r["delta_auc_pts"] == pytest.approx((r["auc"] - laser_auc) * 100) for r in t3)
    assert [r["window"] for r in t4] == [5, 10, 20]
    rel = [r["relative_flops_paper_setting"] for r in t4]
    assert rel[1] == pytest.approx(1.0) and rel[0] > 1.0 > rel[2]
    res2 = CliRunner().invoke(main, [*args, "--resume"])
    assert res2.exit_code == 0 and "8 finished trainings reused" in res2.output


def test_paper_tables_picks_each_rate_on_validation_and_reports_seed_mean_and_se(stand_in, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from storagebench.cli import main

    res = CliRunner().invoke(main, ["paper-tables", "--tables", "2", "--seq-len", "16", "--twin-len", "64",
                                    "--epochs", "1", "--d", "8", "--max-users", "12", "--seeds", "2",
                                    "--lr-grid", "1e-3,3e-2", "--jobs", "2", "--device", "cpu", "--no-progress",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "paper_tables.json").read_text())
    assert [r["model"] for r in report["tables"]["table2"]] == ["base", "din", "twin", "hstu", "transformer", "laser"]
    assert len(report["trials"]) == 6 * (2 + 1)
    for key, run in report["runs"].items():
        by_lr = {float(k): v for k, v in run["valid_auc_by_lr"].items()}
        assert run["lr"] == max(sorted(by_lr), key=lambda g: by_lr[g])      # chosen on validation
        aucs = run["test"]["auc_by_seed"]
        assert len(aucs) == 2 and run["trainings"] == 3
        assert [r["seed"] for r in run["repeats"]] == [0, 1]
        assert report["trials"][f"{key}|lr={run['lr']:g}|seed=1"]["test"]["auc"] == aucs[1]
        assert run["test"]["auc"] == pytest.approx(np.mean(aucs))
        assert run["test"]["auc_se"] == pytest.approx(np.std(aucs, ddof=1) / np.sqrt(2))
    assert report["runs"]["twin"]["config"]["max_len"] == 64                 # TWIN reads the lifelong history
    base = report["runs"]["base"]["test"]["auc"]
    floor = max(h["auc"] for h in report["heuristics"].values())
    for row in report["tables"]["table2"][1:]:
        assert row["auc_gain_pts"] == pytest.approx((row["auc"] - base) * 100)
        assert row["flops_paper_setting"] > 0 and row["flops"] > 0
        assert row["beats_best_heuristic"] == (row["auc"] > floor)
    assert {r["heuristic"] for r in report["tables"]["heuristics"]} == set(report["heuristics"])
    goal = report["tables"]["goal"]["laser_vs_transformer"]
    assert goal["auc_diff"] == pytest.approx(report["runs"]["laser"]["test"]["auc"]
                                             - report["runs"]["transformer"]["test"]["auc"])
    assert "floors" in res.output or "floor" in res.output


def test_paper_tables_refuses_a_bad_rate_grid(stand_in, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from storagebench.cli import main

    res = CliRunner().invoke(main, ["paper-tables", "--lr-grid", "fast", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "positive learning rates" in res.output


def test_auc_standard_error_matches_hanley_mcneil() -> None:
    from storagebench.cli.paper_tables import auc_standard_error

    # Worked by hand from Hanley & McNeil (1982), eq. 2: A=0.8, 50 positives, 50 negatives.
    assert auc_standard_error(0.8, 50, 50) == pytest.approx(0.04450, abs=5e-5)
    assert auc_standard_error(0.8, 500, 500) < auc_standard_error(0.8, 50, 50)
    assert np.isnan(auc_standard_error(0.8, 0, 10))


def test_train_command_refuses_cuda_without_a_gpu(stand_in, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from click.testing import CliRunner

    from storagebench.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = CliRunner().invoke(main, ["train", "--model", "din", "--device", "cuda", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "no CUDA GPU" in res.output and "--device auto" in res.output


def test_item_buckets_default_off_for_generated_presets_and_checked() -> None:
    import click

    from storagebench.cli.train import item_bucket_overrides

    assert item_bucket_overrides(None, None) == {"item_buckets": 1}       # generated: ids carry no signal
    assert item_bucket_overrides(None, "some/workload") == {}              # a stored log: its own id range
    assert item_bucket_overrides(5000, None) == {"item_buckets": 5000}
    with pytest.raises(click.BadParameter, match="at least 1"):
        item_bucket_overrides(0, None)
