"""The training-free floors against a plain loop reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rankers.heuristics import (
    CTR_PRIOR_WEIGHT,
    RECENT_EVENTS,
    category_ctr,
    category_share,
    evaluate_heuristics,
    recent_category_count,
)
from storagebench.ctr import CTRTaskConfig, build_ctr_task

CLICK, VIEW = 2, 1


@pytest.fixture(scope="module")
def splits():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    n_users, per_user = 30, 90
    users = np.repeat(np.arange(n_users, dtype=np.uint64), per_user)
    taste = rng.integers(0, 6, size=n_users)          # each user prefers one of 6 categories
    cat = np.where(rng.random(users.size) < 0.5, taste[users.astype(int)], rng.integers(0, 12, size=users.size))
    action = np.where((cat == taste[users.astype(int)]) & (rng.random(users.size) < 0.5), CLICK, VIEW)
    ts = 10**12 + np.tile(np.arange(per_user) * 20_000, n_users) + users.astype(np.int64) * 7
    cols = {"item_id": rng.integers(0, 999, size=users.size), "ts": ts, "action": action,
            "scenario": np.zeros(users.size, np.int64), "category": cat}
    return build_ctr_task(users, cols, CTRTaskConfig(max_len=40, requests_per_user=6, negatives=3,
                                                     click_actions=(CLICK,)))


def reference(train, data):  # type: ignore[no-untyped-def]
    cats = data.events["category"]
    share = np.zeros(data.labels.shape)
    recent = np.zeros(data.labels.shape)
    for i in range(len(data)):
        window = cats[max(data.hist_start[i], data.hist_end[i] - data.max_len):data.hist_end[i]]
        for j, c in enumerate(data.cand_side["category"][i]):
            share[i, j] = np.mean(window == c) if len(window) else 0.0
            recent[i, j] = np.sum(window[-RECENT_EVENTS:] == c)
    overall = train.labels.mean()
    ctr = np.zeros(data.labels.shape)
    for i in range(len(data)):
        for j, c in enumerate(data.cand_side["category"][i]):
            m = train.cand_side["category"] == c
            ctr[i, j] = (train.labels[m].sum() + CTR_PRIOR_WEIGHT * overall) / (m.sum() + CTR_PRIOR_WEIGHT)
    return share, recent, ctr


def test_heuristics_match_a_loop_reference(splits) -> None:  # type: ignore[no-untyped-def]
    for data in (splits.valid, splits.test):
        share, recent, ctr = reference(splits.train, data)
        assert np.allclose(category_share(splits.train, data), share)
        assert np.array_equal(recent_category_count(splits.train, data), recent)
        assert np.allclose(category_ctr(splits.train, data), ctr)


def test_heuristics_never_read_the_scored_splits_labels(splits) -> None:  # type: ignore[no-untyped-def]
    test = splits.test
    flipped = replace(test, labels=1.0 - test.labels)
    for scorer in (category_share, recent_category_count, category_ctr):
        assert np.array_equal(scorer(splits.train, test), scorer(splits.train, flipped))


def test_the_floors_find_a_planted_preference(splits) -> None:  # type: ignore[no-untyped-def]
    result = evaluate_heuristics(splits.train, splits.test)
    assert set(result) == {"category_share", "recent_category_count", "category_ctr"}
    assert result["category_share"]["auc"] > 0.6, result      # clicks follow the user's favourite category
    assert result["category_ctr"]["logloss"] > 0


def test_a_missing_field_is_named(splits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="'genre'"):
        evaluate_heuristics(splits.train, splits.test, field="genre")
