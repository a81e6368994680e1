"""Training loop, metrics, batching and device fallback of rankers.training (model-agnostic)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankers.training import (
    CTRArrays,
    TrainingDiverged,
    evaluate,
    fit,
    log_loss,
    make_batch,
    resolve_device,
    roc_auc,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-3, 3)), min_size=2, max_size=40))
def test_auc_matches_pairwise_reference_with_ties(pairs: list[tuple[bool, int]]) -> None:
    labels = np.array([y for y, _ in pairs])
    scores = np.array([s for _, s in pairs], dtype=np.float64) / 2.0  # few values: many ties
    if labels.all() or not labels.any():
        assert math.isnan(roc_auc(labels, scores))
    else:
        assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_extremes_and_shape_check() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.zeros(4)) == 0.5
    with pytest.raises(ValueError, match="labels"):
        roc_auc(y, np.zeros(3))


def test_log_loss_matches_naive_formula_and_is_stable() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=50) * 3
    y = rng.integers(0, 2, size=50)
    p = 1 / (1 + np.exp(-z))
    naive = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert log_loss(y, z) == pytest.approx(naive, rel=1e-9)
    assert math.isfinite(log_loss(np.array([1, 0]), np.array([-1000.0, 1000.0])))


def test_device_auto_falls_back_to_cpu_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        resolve_device("cuda")


# -- a planted-signal task built directly as arrays ----------------------------------------------

N_CATEGORIES = 12


def planted_task(n_requests: int, seed: int, hist_len: int = 60, max_len: int = 64) -> CTRArrays:
    """Each request's history: an old block of its interest category, then recent noise. The label
    says whether the candidate's category is the user's interest (visible only far back)."""
    rng = np.random.default_rng(seed)
    interest = rng.integers(1, N_CATEGORIES, size=n_requests)
    cats = rng.integers(1, N_CATEGORIES, size=(n_requests, hist_len))
    cats[:, :10] = interest[:, None]                       # the oldest 10 events carry the signal
    items = cats * 1000 + rng.integers(0, 50, size=cats.shape)
    ts = np.tile(np.arange(hist_len, dtype=np.int64) * 1000, (n_requests, 1)) + 10**9
    events = {"item_id": items.ravel(), "ts": ts.ravel(), "category": cats.ravel(),
              "action": np.ones(cats.size, dtype=np.int64)}
    starts = np.arange(n_requests, dtype=np.int64) * hist_len
    labels = rng.integers(0, 2, size=(n_requests, 2)).astype(np.float32)
    other = (interest[:, None] + rng.integers(1, N_CATEGORIES - 1, size=(n_requests, 2))) % N_CATEGORIES
    cand_cat = np.where(labels > 0, interest[:, None], other)
    return CTRArrays(events=events, hist_start=starts, hist_end=starts + hist_len,
                     request_time_ms=ts[:, -1] + 1, cand_item_ids=cand_cat * 1000 + 7,
                     cand_side={"category": cand_cat}, labels=labels, max_len=max_len,
                     side_fields=("action", "category"))


class CategoryMatchModel(nn.Module):
    """A tiny stand-in ranker: dot product of the candidate's category embedding with the
    mean embedding of the history categories. Separate tables, so it starts with no signal."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(N_CATEGORIES + 2, d)
        self.cand_emb = nn.Embedding(N_CATEGORIES + 2, d)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, history, candidates):  # type: ignore[no-untyped-def]
        mask = history.valid_mask().float()
        h = (self.emb(history.side["category"]) * mask[..., None]).sum(1)
        h = h / mask.sum(1, keepdim=True).clamp(min=1)
        return torch.einsum("bd,bcd->bc", h, self.cand_emb(candidates.side["category"])) * 4 + self.bias


def test_make_batch_keeps_newest_max_len_left_padded_and_shifted() -> None:
    data = planted_task(3, seed=1, hist_len=60, max_len=64)
    data.hist_start[1] = data.hist_end[1] - 5              # a short history
    data.hist_start[2] = data.hist_end[2]                  # an empty one
    small = CTRArrays(**{**data.__dict__, "max_len": 40})
    history, cands, labels = make_batch(small, np.array([0, 1, 2]))
    assert history.item_ids.shape == (3, 40)
    assert history.lengths.tolist() == [40, 5, 0]
    want = data.events["item_id"][data.hist_end[0] - 40:data.hist_end[0]] + 1
    assert history.item_ids[0].tolist() == want.tolist()
    assert history.item_ids[1, :35].eq(0).all() and history.item_ids[2].eq(0).all()
    assert cands.item_ids.tolist() == (data.cand_item_ids + 1).tolist()
    assert labels.dtype == torch.float32 and labels.shape == (3, 2)


def test_fit_learns_planted_long_range_signal_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train, valid = planted_task(600, seed=2), planted_task(200, seed=3)
    torch.manual_seed(0)
    model = CategoryMatchModel()
    before = evaluate(model, valid)
    result = fit(model, train, valid, epochs=3, batch_size=64, lr=0.05, device="auto", progress=False)
    after = evaluate(model, valid)
    assert result.device == "cpu" and len(result.epochs) == 3
    assert after["auc"] > 0.9 and after["auc"] > before["auc"] + 0.2
    # The kept weights are those of the best validation epoch.
    assert after["auc"] == pytest.approx(max(e["valid_auc"] for e in result.epochs))
    assert result.valid["auc"] == pytest.approx(after["auc"])


def test_fit_is_deterministic_in_seed() -> None:
    train, valid = planted_task(128, seed=4), planted_task(64, seed=5)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = CategoryMatchModel()
        runs.append(fit(model, train, valid, epochs=1, batch_size=32, lr=0.05, device="cpu",
                        progress=False, seed=7).epochs[0]["train_loss"])
    assert runs[0] == runs[1]


class NaNModel(CategoryMatchModel):
    def forward(self, history, candidates):  # type: ignore[no-untyped-def]
        return super().forward(history, candidates) * float("nan")


def test_fit_reports_divergence_and_rejects_empty_training_set() -> None:
    data = planted_task(16, seed=6)
    with pytest.raises(TrainingDiverged, match="learning rate"):
        fit(NaNModel(), data, data, epochs=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="empty"):
        fit(CategoryMatchModel(), data.subset(np.array([], dtype=np.int64)), data, device="cpu",
            progress=False)
