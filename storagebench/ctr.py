"""Build a CTR prediction task from a user-event workload.

Each ranking request sits at the time of one of a user's clicks: the candidates are that click (and,
with ``positives > 1``, the user's following clicks) as positives plus ``negatives`` items, each with
its category: by default the user's own next impressions (exposures shown and not clicked, as a real
CTR log has them), or items sampled by click popularity (``negatives_from="popularity"``). The
request's history is the user's events *strictly before* the request time, newest ``max_len`` of them,
so nothing from the moment of the click or later leaks in. Requests are split by time like the paper
(section 4.1.1): train on the earliest, validate on the next, test on the latest.

Two bounds keep the candidates honest (a real request's candidates are shown together, on one page):
every candidate was shown within ``negative_window_ms`` (default 30 min) of the request, and inside the
request's own split period, so no training request carries an item shown in the validation or test
period. Requests that cannot fill their candidates within both bounds are dropped.
Everything is vectorised NumPy and deterministic in the seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from rankers.training import CTRArrays

NEGATIVE_SOURCES = ("exposures", "popularity")


@dataclass(frozen=True)
class CTRTaskConfig:
    max_len: int = 256                 # L: newest events kept per history
    requests_per_user: int = 16        # at most this many click-anchored requests per user
    min_history: int = 1               # requests need this many earlier events
    positives: int = 1                 # the click at the request time and the next ones
    negatives: int = 4                 # negatives per request
    # Where negatives come from. "exposures": the user's own next impressions from the request time on
    # (shown, not clicked), as in a real CTR log where a request's unclicked items are its negatives;
    # telling them from the click needs the user's long-term interests, which only a long history shows.
    # "popularity": clicks of anyone before the request, by click popularity (an easier task, where the
    # current session's category alone separates most clicks).
    negatives_from: str = "exposures"
    # Every candidate (the later positives and every negative) lies within this distance of the request
    # time: exposures in [t, t + window], popularity draws from clicks in [t - window, t). None: no window
    # (the split-period bound always holds).
    negative_window_ms: int | None = 30 * 60 * 1000
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    # Action codes that count as a click. None: every action but an impression (the workloads
    # schema's convention: likes, shares, ... are clicks that went further).
    click_actions: tuple[int, ...] | None = None
    action_field: str = "action"
    item_field: str = "item_id"
    time_field: str = "ts"
    side_fields: tuple[str, ...] = ("action", "scenario", "category")
    candidate_side_fields: tuple[str, ...] = ("category",)

    def __post_init__(self) -> None:
        if self.max_len < 1 or self.requests_per_user < 1 or self.positives < 1 or self.negatives < 0:
            raise ValueError("CTRTaskConfig: max_len, requests_per_user and positives must be >= 1, "
                             "negatives >= 0")
        if self.negative_window_ms is not None and self.negative_window_ms < 0:
            raise ValueError(f"CTRTaskConfig: negative_window_ms={self.negative_window_ms} must be >= 0 or None")
        if self.negatives_from not in NEGATIVE_SOURCES:
            raise ValueError(f"CTRTaskConfig: negatives_from={self.negatives_from!r}; choose one of "
                             f"{NEGATIVE_SOURCES}")
        if not (0 <= self.valid_fraction < 1 and 0 < self.test_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("CTRTaskConfig: valid_fraction and test_fraction must be in [0, 1) and leave "
                             "a training share (their sum < 1)")
        missing = [f for f in self.candidate_side_fields if f not in self.side_fields]
        if missing:
            raise ValueError(f"CTRTaskConfig: candidate side fields {missing} must also be history side "
                             f"fields {self.side_fields}")


@dataclass
class CTRSplits:
    """Train / valid / test requests over one shared event log, split by request time."""

    train: CTRArrays
    valid: CTRArrays
    test: CTRArrays
    # Split periods: train [.., valid_start), valid [valid_start, test_start), test [test_start, ..).
    # A split's requests and all their candidates lie in its period.
    valid_start_ms: int
    test_start_ms: int
    item_buckets: int                  # raw item ids fit in [0, item_buckets - 1) after the +1 shift
    side_buckets: dict[str, int]       # side field -> bucket count that holds every value (+1 shift)
    config: CTRTaskConfig

    def describe(self) -> dict:
        return {
            "requests": {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)},
            "candidates_per_request": self.train.num_candidates,
            "events": len(self.train.events[self.config.time_field]),
            "valid_start_ms": self.valid_start_ms, "test_start_ms": self.test_start_ms,
            "item_buckets": self.item_buckets, "side_buckets": self.side_buckets,
            "positive_rate": float(np.mean(self.train.labels)) if len(self.train) else float("nan"),
            "candidates": candidate_bounds(self),
            "config": asdict(self.config),
        }


def candidate_bounds(splits: CTRSplits) -> dict:
    """How far each negative lies from its request, and how many cross into another split's period."""
    gaps, crossing = [], 0
    periods = split_periods(splits.valid_start_ms, splits.test_start_ms)
    for name, (lo, hi) in zip(("train", "valid", "test"), periods, strict=True):
        data: CTRArrays = getattr(splits, name)
        if data.cand_time_ms is None or not len(data):
            continue
        neg_t = data.cand_time_ms[data.labels == 0]
        req_t = np.broadcast_to(data.request_time_ms[:, None], data.labels.shape)[data.labels == 0]
        gaps.append(neg_t - req_t)
        crossing += int(np.sum((data.cand_time_ms < lo) | (data.cand_time_ms >= hi)))
    gap = np.abs(np.concatenate(gaps)) if gaps else np.zeros(0)
    quantiles = np.percentile(gap, [50, 90, 100]) / 1000 if len(gap) else [float("nan")] * 3
    return {"window_ms": splits.config.negative_window_ms, "negative_gap_s_p50": float(quantiles[0]),
            "negative_gap_s_p90": float(quantiles[1]), "negative_gap_s_max": float(quantiles[2]),
            "candidates_outside_their_split": crossing}


def build_ctr_task(user_ids: np.ndarray, columns: Mapping[str, np.ndarray],
                   config: CTRTaskConfig = CTRTaskConfig()) -> CTRSplits:
    """The CTR task over events ``(user_ids, columns)`` (any order; sorted by (user, time) here)."""
    cfg = config
    click_codes = _click_actions(cfg)
    fields = (cfg.item_field, cfg.time_field, *cfg.side_fields)
    missing = [f for f in (*fields, cfg.action_field) if f not in columns]
    if missing:
        raise ValueError(f"build_ctr_task: events lack columns {missing}; have {sorted(columns)}")
    users = np.asarray(user_ids)
    ts = np.asarray(columns[cfg.time_field]).astype(np.int64, copy=False)
    if len(users) != len(ts):
        raise ValueError(f"build_ctr_task: {len(users)} user ids but {len(ts)} events")
    if not _grouped_and_sorted(users, ts):
        order = np.lexsort((ts, users))
        users, ts = users[order], ts[order]
        columns = {k: np.asarray(v)[order] for k, v in columns.items()}
    events = {f: np.asarray(columns[f]).astype(np.int64, copy=False) for f in fields}
    events[cfg.time_field] = ts
    action = np.asarray(columns[cfg.action_field])
    n = len(ts)
    idx = np.arange(n, dtype=np.int64)

    new_user = np.ones(n, dtype=bool)
    new_user[1:] = users[1:] != users[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, idx, 0))
    # History ends at the first event of the run of equal (user, time): strictly before the request.
    new_run = new_user.copy()
    new_run[1:] |= ts[1:] != ts[:-1]
    run_start = np.maximum.accumulate(np.where(new_run, idx, 0))

    clicks = np.flatnonzero(np.isin(action, click_codes))
    rng = np.random.default_rng(cfg.seed)
    anchors = _pick_anchors(clicks, users, user_start, run_start, cfg, rng)  # positions in `clicks`
    pos_events = clicks[anchors[:, None] + np.arange(cfg.positives)]         # [R, P]
    # Split periods come from the request times before any request is dropped, so a request's split
    # (and with it the bound on its candidates) never depends on the candidates.
    t_req = ts[pos_events[:, 0]] if len(pos_events) else np.zeros(0, dtype=np.int64)
    valid_start, test_start = _split_starts(t_req, cfg)
    split_of = np.searchsorted(np.array([valid_start, test_start]), t_req, side="right")  # 0 / 1 / 2
    period_lo, period_hi = (np.array(bound)[split_of] for bound in zip(*split_periods(valid_start, test_start),
                                                                         strict=True))   # [lo, hi)
    window = cfg.negative_window_ms
    hi = period_hi if window is None else np.minimum(period_hi, t_req + window + 1)          # exclusive
    lo = period_lo if window is None else np.maximum(period_lo, t_req - window)
    if cfg.negatives_from == "exposures":
        impressions = np.flatnonzero(~np.isin(action, click_codes))
        neg_events, kept = _exposure_negatives(impressions, users, ts, events[cfg.item_field], pos_events,
                                               hi, cfg.negatives)
    else:
        neg_events, kept = _sample_negatives(clicks, ts, events[cfg.item_field], pos_events, t_req, lo,
                                             cfg.negatives, rng)
    in_bounds = ts[pos_events[kept, -1]] < hi[kept]       # later positives obey the same bounds
    neg_events, kept = neg_events[in_bounds], kept[in_bounds]
    pos_events, split_of = pos_events[kept], split_of[kept]
    anchor_ev = pos_events[:, 0]
    cand_events = np.concatenate([pos_events, neg_events], axis=1)           # [R, C]
    labels = np.zeros(cand_events.shape, dtype=np.float32)
    labels[:, :cfg.positives] = 1.0
    # Shuffle candidate order so no model can learn "the first column is the click".
    perm = np.argsort(rng.random(cand_events.shape), axis=1)
    cand_events = np.take_along_axis(cand_events, perm, axis=1)
    labels = np.take_along_axis(labels, perm, axis=1)

    all_req = CTRArrays(
        events=events, hist_start=user_start[anchor_ev], hist_end=run_start[anchor_ev],
        request_time_ms=ts[anchor_ev], cand_item_ids=events[cfg.item_field][cand_events],
        cand_side={f: events[f][cand_events] for f in cfg.candidate_side_fields}, labels=labels,
        max_len=cfg.max_len, item_field=cfg.item_field, time_field=cfg.time_field,
        side_fields=tuple(cfg.side_fields), user_ids=users[anchor_ev], cand_time_ms=ts[cand_events])

    # Each split's requests in time order; ties at a boundary went to the later split (_split_starts),
    # so every train request is strictly earlier than every valid/test request.
    order = np.argsort(all_req.request_time_ms, kind="stable")
    splits = [all_req.subset(order[split_of[order] == k]) for k in range(3)]
    side_buckets = {f: int(events[f].max(initial=0)) + 2 for f in cfg.side_fields}
    return CTRSplits(
        train=splits[0], valid=splits[1], test=splits[2], valid_start_ms=valid_start, test_start_ms=test_start,
        item_buckets=int(events[cfg.item_field].max(initial=0)) + 2, side_buckets=side_buckets, config=cfg)


def ctr_task_from_workload(workload: object, config: CTRTaskConfig = CTRTaskConfig(), *,
                           max_users: int | None = None, chunk_events: int = 1_000_000) -> CTRSplits:
    """The CTR task over a workload's backfill events (its users' histories), first ``max_users`` users."""
    chunks: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    n_users = 0
    for user_ids, cols in workload.iter_backfill(chunk_events=chunk_events):  # type: ignore[attr-defined]
        user_ids = np.asarray(user_ids)
        if max_users is not None:
            distinct = np.unique(user_ids)
            room = max_users - n_users
            if room <= 0:
                break
            if len(distinct) > room:
                keep = np.isin(user_ids, distinct[:room])
                user_ids, cols = user_ids[keep], {k: np.asarray(v)[keep] for k, v in cols.items()}
                distinct = distinct[:room]
            n_users += len(distinct)
        chunks.append((user_ids, dict(cols)))
    if not chunks:
        raise ValueError("the workload has no backfill events to build a CTR task from")
    return build_ctr_task(*_concat(chunks), config=config)


# -- helpers -----------------------------------------------------------------------------------

def _click_actions(cfg: CTRTaskConfig) -> np.ndarray:
    if cfg.click_actions is not None:
        return np.asarray(cfg.click_actions, dtype=np.int64)
    from workloads import ACTIONS
    return np.asarray([code for name, code in ACTIONS.items() if name != "impression"], dtype=np.int64)


def _grouped_and_sorted(users: np.ndarray, ts: np.ndarray) -> bool:
    """True when each user's events are contiguous and in time order (users in any order)."""
    if len(users) < 2:
        return True
    change = users[1:] != users[:-1]
    if np.any((ts[1:] < ts[:-1]) & ~change):
        return False
    return len(np.unique(users[np.concatenate(([True], change))])) == int(change.sum()) + 1


def _pick_anchors(clicks: np.ndarray, users: np.ndarray, user_start: np.ndarray,
                  run_start: np.ndarray, cfg: CTRTaskConfig, rng: np.random.Generator) -> np.ndarray:
    """Up to ``requests_per_user`` random eligible click positions per user, in event order."""
    p = cfg.positives
    if len(clicks) < p:
        return np.empty(0, dtype=np.int64)
    cand = np.arange(len(clicks) - p + 1, dtype=np.int64)
    click_user = users[clicks]
    ok = click_user[cand + p - 1] == click_user[cand]          # all P positives belong to the user
    ok &= (run_start[clicks[cand]] - user_start[clicks[cand]]) >= cfg.min_history
    cand = cand[ok]
    if len(cand) == 0:
        return cand
    # Rank the eligible clicks of each user in a random order; keep the first k of each user.
    cand_user = click_user[cand]
    order = np.lexsort((rng.random(len(cand)), cand_user))
    grp_first = np.ones(len(order), dtype=bool)
    grp_first[1:] = cand_user[order][1:] != cand_user[order][:-1]
    pos = np.arange(len(order))
    rank = pos - np.maximum.accumulate(np.where(grp_first, pos, 0))
    return np.sort(cand[order[rank < cfg.requests_per_user]])


def _sample_negatives(clicks: np.ndarray, ts: np.ndarray, item_ids: np.ndarray, pos_events: np.ndarray,
                      request_time_ms: np.ndarray, earliest_ms: np.ndarray, k: int, rng: np.random.Generator,
                      max_redraws: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``k`` negatives per request drawn uniformly from the clicks (of anyone) in ``[earliest_ms, request
    time)`` -- items by their recent click popularity -- re-drawing any whose item is one of the request's
    positives. Drawing only from the past keeps later clicks (the test period's positives) out of the
    training negatives. Returns (negatives [R', k], kept request rows): requests with no click in their
    range are dropped."""
    by_time = clicks[np.argsort(ts[clicks], kind="stable")]
    first = np.searchsorted(ts[by_time], earliest_ms, side="left")
    n_before = np.searchsorted(ts[by_time], request_time_ms, side="left")
    keep = np.flatnonzero(n_before > first)
    r = len(keep)
    if k == 0 or r == 0:
        return np.empty((r, k), dtype=np.int64), keep
    lo, span = first[keep][:, None], (n_before - first)[keep][:, None]
    neg = by_time[lo + (rng.random((r, k)) * span).astype(np.int64)]
    pos_items = item_ids[pos_events[keep]]
    for _ in range(max_redraws):
        clash = (item_ids[neg][:, :, None] == pos_items[:, None, :]).any(axis=2)
        if not clash.any():
            break
        rows = np.nonzero(clash)[0]
        neg[clash] = by_time[lo[rows, 0] + (rng.random(len(rows)) * span[rows, 0]).astype(np.int64)]
    clash = (item_ids[neg][:, :, None] == pos_items[:, None, :]).any(axis=(1, 2))
    return neg[~clash], keep[~clash]


def _exposure_negatives(impressions: np.ndarray, users: np.ndarray, ts: np.ndarray, item_ids: np.ndarray,
                        pos_events: np.ndarray, before_ms: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` impressions of the same user that follow each request's first positive (events sorted
    by user, time): what the feed showed around the click and was not clicked. They come after the
    history's end, so none is in the request's history. Returns (negatives [R', k], kept request rows):
    requests whose user has fewer than ``k`` later impressions shown before ``before_ms`` (the window
    and split bound), or whose negatives repeat a positive's item, are dropped."""
    r = len(pos_events)
    if k == 0 or r == 0:
        return np.empty((r, k), dtype=np.int64), np.arange(r, dtype=np.int64)
    first = np.searchsorted(impressions, pos_events[:, 0], side="right")
    ok = first + k <= len(impressions)
    slots = np.minimum(first[:, None] + np.arange(k), max(len(impressions) - 1, 0))
    neg = impressions[slots] if len(impressions) else np.zeros((r, k), dtype=np.int64)
    ok &= (users[neg] == users[pos_events[:, :1]]).all(axis=1)
    ok &= ts[neg[:, -1]] < before_ms                   # the newest negative is the latest one
    ok &= ~(item_ids[neg][:, :, None] == item_ids[pos_events][:, None, :]).any(axis=(1, 2))
    keep = np.flatnonzero(ok)
    return neg[keep], keep


def split_periods(valid_start_ms: int, test_start_ms: int) -> list[tuple[int, int]]:
    """[start, end) of the train, valid and test periods (int64 extremes where unbounded)."""
    lowest, highest = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
    return [(lowest, valid_start_ms), (valid_start_ms, test_start_ms), (test_start_ms, highest)]


def _split_starts(request_time_ms: np.ndarray, cfg: CTRTaskConfig) -> tuple[int, int]:
    """(valid_start, test_start): the period boundaries at the configured shares of request times, ties
    at a boundary moved to the later split. A split with no requests starts after the last one."""
    t_sorted = np.sort(request_time_ms)
    n = len(t_sorted)
    if n == 0:
        return 0, 0
    cut_valid = _cut(t_sorted, 1.0 - cfg.valid_fraction - cfg.test_fraction)
    cut_test = max(cut_valid, _cut(t_sorted, 1.0 - cfg.test_fraction))
    after_all = int(t_sorted[-1]) + 1
    return (int(t_sorted[cut_valid]) if cut_valid < n else after_all,
            int(t_sorted[cut_test]) if cut_test < n else after_all)


def _cut(sorted_times: np.ndarray, share: float) -> int:
    """Index of the first request at or after the ``share`` quantile, moved past ties at the boundary."""
    i = round(share * len(sorted_times))
    if i <= 0 or i >= len(sorted_times):
        return max(0, min(i, len(sorted_times)))
    return int(np.searchsorted(sorted_times, sorted_times[i - 1], side="right"))


def _concat(chunks: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    chunks = list(chunks)
    users = np.concatenate([u for u, _ in chunks])
    names = list(chunks[0][1])
    return users, {k: np.concatenate([np.asarray(c[k]) for _, c in chunks]) for k in names}


def load_workload(workload_dir: str | None, scale: str = "small", seed: int = 0) -> object:
    """A stored workload (``workload_dir``) or a freshly generated preset (``scale``)."""
    import workloads
    if workload_dir is not None:
        return workloads.open_workload(workload_dir)
    config = workloads.GeneratorConfig.preset(scale)
    if hasattr(config, "seed"):
        from dataclasses import replace
        config = replace(config, seed=seed)
    return workloads.generate(config)


def model_shape(splits: CTRSplits, *, max_item_buckets: int = 200_000,
                max_side_buckets: int = 4096) -> dict:
    """Model config fields that fit the task: L, hashed vocabulary sizes and the candidate fields.

    Vocabularies are capped: larger id spaces are hashed (id % buckets), as the models do anyway.
    """
    cfg = splits.config
    return {
        "max_len": cfg.max_len,
        "item_buckets": min(splits.item_buckets, max_item_buckets),
        "side_fields": {f: min(b, max_side_buckets) for f, b in splits.side_buckets.items()},
        "candidate_side_fields": tuple(cfg.candidate_side_fields),
    }
