"""The CTR task built from event arrays: no leakage, time split, sampling, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from rankers.training import make_batch
from storagebench.ctr import CTRSplits, CTRTaskConfig, build_ctr_task

CLICK, VIEW = 2, 1


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


CFG = CTRTaskConfig(max_len=32, requests_per_user=5, negatives=3, click_action=CLICK, seed=1)


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
    assert splits.valid_start_ms == va.min() and splits.test_start_ms == te.min()
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
                        click_action=CLICK)
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
