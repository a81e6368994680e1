"""Training-free scorers on a CTR task: the floors a trained ranker has to beat.

Each scores every (request, candidate) pair of a :class:`~rankers.training.CTRArrays` from the same
inputs a model gets (the newest ``max_len`` history events and the candidate's side fields), and
``category_ctr`` also from the training split's labels, never from the scored split's. A trained
model that does not beat the best of them has learned nothing a counter could not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rankers.training import CTRArrays, log_loss, roc_auc

RECENT_EVENTS = 20        # "recent" = the newest 20 history events
CTR_PRIOR_WEIGHT = 20.0   # pseudo-impressions at the global CTR that smooth a rare category's CTR


def _history_counts(data: CTRArrays, field: str, newest: int | None) -> np.ndarray:
    """[R, C]: how many of each request's newest ``newest`` (all, if None) history events share the
    candidate's ``field`` value."""
    rows = np.arange(len(data))
    offsets, cols = data.history_csr(rows)
    lens = np.diff(offsets)
    request = np.repeat(rows, lens)
    if newest is not None:   # position from the end of each window: keep the last `newest`
        from_end = offsets[1:][request] - np.arange(offsets[-1]) - 1
        keep = from_end < newest
        request, values = request[keep], cols[field][keep]
    else:
        values = cols[field]
    cand = data.cand_side[field]
    span = int(max(values.max(initial=0), cand.max(initial=0))) + 1
    keys, counts = np.unique(request.astype(np.int64) * span + values, return_counts=True)
    probe = rows[:, None].astype(np.int64) * span + cand
    at = np.minimum(np.searchsorted(keys, probe), max(len(keys) - 1, 0))
    hit = (keys[at] == probe) if len(keys) else np.zeros(probe.shape, dtype=bool)
    return np.where(hit, counts[at] if len(keys) else 0, 0).astype(np.float64)


def category_share(train: CTRArrays, data: CTRArrays, field: str = "category") -> np.ndarray:
    """The share of the history (newest ``max_len`` events) in the candidate's category."""
    lens = np.minimum(data.hist_end - data.hist_start, data.max_len).astype(np.float64)
    return _history_counts(data, field, None) / np.maximum(lens, 1.0)[:, None]


def recent_category_count(train: CTRArrays, data: CTRArrays, field: str = "category") -> np.ndarray:
    """How many of the newest ``RECENT_EVENTS`` history events are in the candidate's category."""
    return _history_counts(data, field, RECENT_EVENTS)


def category_ctr(train: CTRArrays, data: CTRArrays, field: str = "category") -> np.ndarray:
    """The candidate category's click-through rate among the *training* split's candidates (its
    popularity), smoothed towards the global rate; unseen categories get the global rate."""
    values, labels = train.cand_side[field].ravel(), train.labels.ravel()
    overall = float(labels.mean()) if len(labels) else 0.0
    span = int(max(values.max(initial=0), data.cand_side[field].max(initial=0))) + 1
    shown = np.bincount(values, minlength=span).astype(np.float64)
    clicked = np.bincount(values, weights=labels, minlength=span)
    rate = (clicked + CTR_PRIOR_WEIGHT * overall) / (shown + CTR_PRIOR_WEIGHT)
    return rate[data.cand_side[field]]


HEURISTICS: dict[str, Callable[[CTRArrays, CTRArrays, str], np.ndarray]] = {
    "category_share": category_share,
    "recent_category_count": recent_category_count,
    "category_ctr": category_ctr,
}


def evaluate_heuristics(train: CTRArrays, data: CTRArrays, field: str = "category") -> dict[str, dict[str, float]]:
    """Each heuristic's AUC on ``data`` (log loss too for ``category_ctr``, the one that is a probability)."""
    if field not in data.cand_side:
        raise ValueError(f"the heuristics score the candidates' {field!r}, which the task does not carry "
                         f"(candidate side fields: {sorted(data.cand_side)})")
    out: dict[str, dict[str, float]] = {}
    for name, scorer in HEURISTICS.items():
        scores = scorer(train, data, field)
        row = {"auc": roc_auc(data.labels, scores)}
        if name == "category_ctr":
            p = np.clip(scores, 1e-6, 1 - 1e-6)
            row["logloss"] = log_loss(data.labels, np.log(p / (1 - p)))
        out[name] = row
    return out
