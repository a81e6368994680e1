"""A synthetic, seed-deterministic generator of multi-scenario user histories and live traffic.

Model (all parameters in :class:`~workloads.config.GeneratorConfig`):

* **Users.** A user table (O(users) memory) holds, per user: a 64-bit id (a bijective scramble of
  its index, so ids look like production ids), a lifelong history length (log-normal, clipped to
  ``[history_min, history_max]``), when the history starts, a few *long-term interest* categories,
  a drift period, and a live activity weight ``rank^-activity_zipf`` (heavier histories, higher
  rank), so live traffic is Zipf-skewed over users.
* **Sessions.** A backfill history is a sequence of sessions (bursts of ~``session_events_mean``
  events seconds apart) spread over the user's lifetime, so there are long gaps between bursts.
* **Interests.** A session is, with ``episode_prob``, an *episode* of one long-term interest
  (most of its events in that category); otherwise its events follow the user's *short-term*
  interest, which drifts: it is a hash of (seed, user, epoch) where the epoch advances every
  ~``drift_days``. Long-term interests therefore recur sparsely across the whole lifetime and are
  often absent from the newest ~100 events, which is what makes long histories worth storing.
  Outside episodes a share ``long_term_mix`` of events is also drawn from a long-term interest (a
  feed mixes them in); everything else comes from the global (Zipf) category popularity.
* **Items.** Categories own contiguous item ranges sized by their popularity; items inside a
  category are Zipf-popular; an item's author is ``item_id // items_per_author``.
* **Actions.** Every event is an impression unless clicked; clicks are far likelier on items of a
  long-term interest than of the short-term one, and rare elsewhere. A click becomes a like,
  collect, share, comment or follow with small probabilities. The first event of a search session
  is a ``search``. Dwell time is log-normal, longer for engagements and in the video scenario.
* **Live.** Sessions start as a Poisson process (``live_sessions_per_s``) with users drawn by
  activity weight; sessions already running at the split time are started in their steady state
  (geometric request counts and exponential gaps are memoryless). Each request is a ranking read
  followed by a few events; an event reaches the store after an exponential ingestion delay and
  is appended in the next ingestion flush (every ``append_interval_ms``), so appends mix users and
  carry slightly out-of-order event times.

Determinism: randomness is drawn per fixed block of users (backfill) and per fixed time slice
(live), each from ``numpy.random.default_rng([seed, stream, index])``, so the bytes do not depend
on the chunk sizes asked for. Everything is vectorised; there is no per-event Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from workloads.base import BackfillChunk, LiveChunk, Workload, assemble_ops, rechunk_backfill, rechunk_live
from workloads.config import DAY_MS, GeneratorConfig
from workloads.schema import ACTIONS, DEFAULT_SCHEMA, SCENARIOS

_BLOCK_EVENTS = 1 << 16         # backfill generated in blocks of about this many events
_LIVE_SLICE_MS = 5_000          # live generated in slices of this much trace time
_MAX_REQUESTS_PER_SESSION = 30
_EVENT_GAP_IN_REQUEST_MS = 2_000.0
_TS_BITS = 44                   # sort key: local user index above 44 bits of time offset

_ENGAGEMENTS = np.array([ACTIONS[a] for a in ("click", "like", "collect", "share", "comment", "follow")],
                        dtype=np.uint8)
_ENGAGEMENT_CDF = np.cumsum([0.70, 0.12, 0.08, 0.04, 0.04, 0.02])


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a stateless hash, so a user's short-term interest at any time can be
    computed in the backfill and in the live stream alike without carrying state between them."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _zipf_cdf(n: int, s: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


class _Tables:
    """Per-user and per-category tables: O(users + categories) memory, drawn once per seed."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        rng = np.random.default_rng([cfg.seed, 0])
        n = cfg.users
        scrambled = (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        self.ids = np.sort(scrambled)
        lengths = np.exp(math.log(cfg.history_median) + cfg.history_sigma * rng.standard_normal(n))
        self.length = np.clip(np.rint(lengths), cfg.history_min, cfg.history_max).astype(np.int64)
        days = rng.uniform(cfg.history_days_min, cfg.history_days_max, n)
        self.hist_start = cfg.split_time_ms - (days * DAY_MS).astype(np.int64)

        self.cat_cdf = _zipf_cdf(cfg.n_categories, cfg.category_zipf)
        # Long-term interests come from a flatter distribution than everyday popularity, so they
        # are personal rather than simply the globally popular categories.
        lt_cdf = _zipf_cdf(cfg.n_categories, cfg.category_zipf / 2)
        self.long_term = _draw(lt_cdf, rng.random((n, cfg.long_term_interests))).astype(np.int32)
        self.drift_period = (cfg.drift_days * DAY_MS * rng.lognormal(0.0, 0.5, n)).astype(np.int64) + 1
        self.drift_phase = (rng.random(n) * self.drift_period).astype(np.int64)

        order = np.argsort(-(self.length * rng.lognormal(0.0, 0.5, n)), kind="stable")
        rank = np.empty(n, dtype=np.float64)
        rank[order] = np.arange(1, n + 1)
        weight = rank ** -cfg.activity_zipf
        self.activity = weight / weight.sum()
        self.activity_cdf = np.cumsum(self.activity)
        self.activity_cdf /= self.activity_cdf[-1]

        pop = np.diff(np.r_[0.0, self.cat_cdf])
        self.cat_size = 1 + np.floor((cfg.n_items - cfg.n_categories) * pop).astype(np.int64)
        self.cat_offset = np.r_[0, np.cumsum(self.cat_size)[:-1]].astype(np.int64)

    def short_term(self, seed: int, upos: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        epoch = (t_ms - self.drift_phase[upos]) // self.drift_period[upos]
        h = _mix64(_mix64(self.ids[upos] ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) + epoch.astype(np.uint64))
        u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return _draw(self.cat_cdf, u).astype(np.int32)


def _segment_offsets(gaps: np.ndarray, first: np.ndarray, seg_of: np.ndarray) -> np.ndarray:
    """Running sum of ``gaps`` restarted at each segment's first element (whose gap is ignored)."""
    gaps = gaps.copy()
    gaps[first] = 0.0
    cs = np.cumsum(gaps)
    return cs - cs[first][seg_of]


def _fill_events(cfg: GeneratorConfig, tab: _Tables, rng: np.random.Generator, upos: np.ndarray,
                 episode_cat: np.ndarray, st_cat: np.ndarray, scenario: np.ndarray,
                 search_first: np.ndarray) -> dict[str, np.ndarray]:
    """Item, category, author, action and dwell of events whose context is given per event."""
    n = len(upos)
    u = rng.random((4, n))
    in_ep = episode_cat >= 0
    cat = _draw(tab.cat_cdf, u[0]).astype(np.int32)
    take_ep = in_ep & (u[1] < cfg.episode_focus)
    cat[take_ep] = episode_cat[take_ep]
    take_st = ~in_ep & (u[1] < cfg.short_term_focus)
    cat[take_st] = st_cat[take_st]
    # Outside episodes the feed still mixes in the user's long-term interests now and then: such an
    # item is clicked far more often than its neighbours, and only a long history says why.
    take_lt = ~in_ep & ~take_st & (u[1] < cfg.short_term_focus + cfg.long_term_mix)
    which = rng.integers(0, cfg.long_term_interests, n)
    cat[take_lt] = tab.long_term[upos[take_lt], which[take_lt]]

    size = tab.cat_size[cat].astype(np.float64)
    a = cfg.item_zipf
    if abs(a - 1.0) < 1e-9:
        x = size ** u[2]
    else:  # inverse CDF of a continuous power law on [1, size]
        x = ((size ** (1.0 - a) - 1.0) * u[2] + 1.0) ** (1.0 / (1.0 - a))
    rank = np.minimum(x.astype(np.int64), tab.cat_size[cat]) - 1
    item = tab.cat_offset[cat] + np.maximum(rank, 0)

    is_long = (cat[:, None] == tab.long_term[upos]).any(axis=1)
    p_click = np.where(is_long, cfg.click_prob_long,
                       np.where(cat == st_cat, cfg.click_prob_short, cfg.click_prob_other))
    clicked = u[3] < p_click
    action = np.zeros(n, dtype=np.uint8)
    action[clicked] = _ENGAGEMENTS[_draw(_ENGAGEMENT_CDF, rng.random(int(clicked.sum())))]
    action[search_first] = ACTIONS["search"]

    median = np.where(clicked, 15_000.0, 1_500.0) * np.where(scenario == SCENARIOS["video"], 2.0, 1.0)
    dwell = median * np.exp(0.9 * rng.standard_normal(n))
    return {
        "item_id": item.astype(np.uint32),
        "action": action,
        "scenario": scenario.astype(np.uint8),
        "dwell_ms": np.minimum(dwell, 2**32 - 1).astype(np.uint32),
        "category": cat.astype(np.uint16),
        "author_id": (item // cfg.items_per_author).astype(np.uint32),
    }


def _ordered(cols: dict[str, np.ndarray], ts: np.ndarray) -> dict[str, np.ndarray]:
    return {name: cols[name] if name != "ts" else ts for name in DEFAULT_SCHEMA.names}


class SyntheticWorkload(Workload):
    """A lazily generated workload; see the module docstring for the model."""

    schema = DEFAULT_SCHEMA

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self._tables: _Tables | None = None
        self._summary = None

    @property
    def tables(self) -> _Tables:
        if self._tables is None:
            self._tables = _Tables(self.config)
        return self._tables

    @property
    def live_window_ms(self) -> tuple[int, int]:
        t0 = self.config.split_time_ms
        return t0, t0 + int(self.config.live_seconds * 1000)

    @property
    def manifest(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "schema": self.schema.to_dict(),
            "parameters": self.config.to_dict(),
            "seed": self.config.seed,
            "split_time_ms": self.config.split_time_ms,
            "live_window_ms": list(self.live_window_ms),
            "summary": self._summary,
        }

    # -- backfill -------------------------------------------------------------------------------
    def _blocks(self) -> Iterator[tuple[int, int]]:
        cs = np.cumsum(self.tables.length)
        lo, block = 0, 0
        n = self.config.users
        while lo < n:
            # Users up to about _BLOCK_EVENTS events, at least one user per block.
            base = cs[lo - 1] if lo else 0
            hi = max(lo + 1, int(np.searchsorted(cs, base + _BLOCK_EVENTS, side="right")))
            yield lo, min(hi, n)
            lo = min(hi, n)
            block += 1

    def _backfill_block(self, index: int, lo: int, hi: int) -> BackfillChunk:
        cfg, tab = self.config, self.tables
        rng = np.random.default_rng([cfg.seed, 1, index])
        lengths = tab.length[lo:hi]
        nb = hi - lo
        n = int(lengths.sum())
        ev_local = np.repeat(np.arange(nb, dtype=np.int64), lengths)
        user_first = np.r_[0, np.cumsum(lengths)[:-1]]

        new_session = rng.random(n) < 1.0 / cfg.session_events_mean
        new_session[user_first] = True
        sess_first = np.flatnonzero(new_session)
        sess_of_event = np.cumsum(new_session) - 1
        sess_local = ev_local[sess_first]
        sess_upos = lo + sess_local
        # Sessions fall uniformly over the user's lifetime; sorting local-index + U[0,1) keys puts
        # each user's sessions in time order without a per-user loop.
        frac = np.sort(sess_local + rng.random(len(sess_first))) - sess_local
        span = np.maximum(cfg.split_time_ms - 3_600_000 - tab.hist_start[sess_upos], 1)
        sess_start = tab.hist_start[sess_upos] + (frac * span).astype(np.int64)

        offsets = _segment_offsets(rng.exponential(cfg.event_gap_ms_mean, n), sess_first, sess_of_event)
        ts = np.minimum(sess_start[sess_of_event] + offsets.astype(np.int64), cfg.split_time_ms - 1)

        n_sess = len(sess_first)
        scen_cdf = np.cumsum(cfg.scenario_probs)
        scenario = _draw(scen_cdf, rng.random(n_sess)).astype(np.uint8)
        episode = rng.random(n_sess) < cfg.episode_prob
        which = rng.integers(0, cfg.long_term_interests, n_sess)
        ep_cat = np.where(episode, tab.long_term[sess_upos, which], -1).astype(np.int32)
        st_cat = tab.short_term(cfg.seed, sess_upos, sess_start)

        ev_scen = scenario[sess_of_event]
        cols = _fill_events(cfg, tab, rng, lo + ev_local, ep_cat[sess_of_event], st_cat[sess_of_event],
                            ev_scen, new_session & (ev_scen == SCENARIOS["search"]))

        # Sessions may overlap in time; order by (user, ts) with one integer sort key.
        t_base = int(tab.hist_start[lo:hi].min())
        key = (ev_local << _TS_BITS) | (ts - t_base)
        uids = tab.ids[lo + ev_local]
        if np.any(key[1:] < key[:-1]):
            order = np.argsort(key, kind="stable")
            ts, uids = ts[order], uids[order]
            cols = {k: v[order] for k, v in cols.items()}
        return uids, _ordered(cols, ts)

    def _iter_blocks(self) -> Iterator[BackfillChunk]:
        for index, (lo, hi) in enumerate(self._blocks()):
            yield self._backfill_block(index, lo, hi)

    def iter_backfill(self, chunk_events: int = 1_000_000) -> Iterator[BackfillChunk]:
        return rechunk_backfill(self._iter_blocks(), chunk_events)

    @property
    def backfill_events(self) -> int:
        return int(self.tables.length.sum())

    # -- live -----------------------------------------------------------------------------------
    def _live_sessions(self, rng: np.random.Generator, t_lo: int, warm: bool) -> dict[str, np.ndarray]:
        """Reads and events of the sessions starting in one slice (or, ``warm``, already running at
        the split time), each part sorted by op time."""
        cfg, tab = self.config, self.tables
        p_end = 1.0 / cfg.requests_per_session_mean
        if warm:
            mean_running = cfg.live_sessions_per_s * (cfg.requests_per_session_mean - 1) * \
                cfg.request_gap_ms_mean / 1000.0
            n_sess = int(rng.poisson(mean_running))
            start = t_lo + rng.exponential(cfg.request_gap_ms_mean, n_sess).astype(np.int64)
        else:
            n_sess = int(rng.poisson(cfg.live_sessions_per_s * _LIVE_SLICE_MS / 1000.0))
            start = t_lo + rng.integers(0, _LIVE_SLICE_MS, n_sess)
        upos = _draw(tab.activity_cdf, rng.random(n_sess))
        n_req = np.minimum(rng.geometric(p_end, n_sess), _MAX_REQUESTS_PER_SESSION)
        scenario = _draw(np.cumsum(cfg.scenario_probs), rng.random(n_sess)).astype(np.uint8)
        episode = rng.random(n_sess) < cfg.episode_prob
        which = rng.integers(0, cfg.long_term_interests, n_sess)
        ep_cat = np.where(episode, tab.long_term[upos, which], -1).astype(np.int32)

        req_sess = np.repeat(np.arange(n_sess), n_req)
        req_first = np.r_[0, np.cumsum(n_req)[:-1]].astype(np.int64)
        req_t = start[req_sess] + _segment_offsets(
            rng.exponential(cfg.request_gap_ms_mean, len(req_sess)), req_first, req_sess).astype(np.int64)
        req_upos = upos[req_sess]
        n_cand = rng.integers(cfg.candidates_min, cfg.candidates_max + 1, len(req_sess)).astype(np.int32)
        st_cat = tab.short_term(cfg.seed, req_upos, req_t)

        n_ev = 1 + rng.poisson(cfg.events_per_request_mean - 1.0, len(req_sess))
        ev_req = np.repeat(np.arange(len(req_sess)), n_ev)
        ev_first = np.r_[0, np.cumsum(n_ev)[:-1]].astype(np.int64)
        gaps = rng.exponential(_EVENT_GAP_IN_REQUEST_MS, len(ev_req))
        lead = gaps[ev_first].copy()  # the first event follows its read by one gap too
        ev_t = req_t[ev_req] + (_segment_offsets(gaps, ev_first, ev_req) + lead[ev_req]).astype(np.int64)
        ev_sess = req_sess[ev_req]
        ev_scen = scenario[ev_sess]
        search_first = np.zeros(len(ev_req), dtype=bool)
        search_first[ev_first[req_first]] = True
        search_first &= ev_scen == SCENARIOS["search"]
        cols = _fill_events(cfg, tab, rng, req_upos[ev_req], ep_cat[ev_sess], st_cat[ev_req],
                            ev_scen, search_first)
        arrival = ev_t + rng.exponential(cfg.ingest_delay_ms_mean, len(ev_req)).astype(np.int64)
        flush = (arrival // cfg.append_interval_ms + 1) * cfg.append_interval_ms

        t0, t_end = self.live_window_ms
        keep_r = (req_t >= t0) & (req_t < t_end)
        keep_e = (ev_t >= t0) & (flush < t_end)
        r_order = np.argsort(req_t[keep_r], kind="stable")
        e_idx = np.flatnonzero(keep_e)
        e_order = e_idx[np.lexsort((arrival[e_idx], flush[e_idx]))]
        out = {
            "read_t": req_t[keep_r][r_order],
            "read_user": tab.ids[req_upos[keep_r]][r_order],
            "read_cand": n_cand[keep_r][r_order],
            "flush": flush[e_order],
            "ev_user": tab.ids[req_upos[ev_req[e_order]]],
            "ts": ev_t[e_order],
            "arrival": arrival[e_order],
        }
        out.update({f"c_{k}": v[e_order] for k, v in cols.items()})
        return out

    def _iter_live_pieces(self) -> Iterator[LiveChunk]:
        cfg = self.config
        t0, t_end = self.live_window_ms
        if t_end <= t0:
            return
        pending: list[dict[str, np.ndarray]] = [
            self._live_sessions(np.random.default_rng([cfg.seed, 2, 0]), t0, warm=True)]
        n_slices = -(-(t_end - t0) // _LIVE_SLICE_MS)
        for s in range(n_slices):
            slice_lo = t0 + s * _LIVE_SLICE_MS
            pending.append(self._live_sessions(np.random.default_rng([cfg.seed, 2, s + 1]), slice_lo, warm=False))
            # Nothing generated later can fall before the next slice's start: those ops are final.
            boundary = slice_lo + _LIVE_SLICE_MS if s + 1 < n_slices else t_end + 1
            final, keep = [], []
            for piece in pending:
                nr = int(np.searchsorted(piece["read_t"], boundary, side="left"))
                ne = int(np.searchsorted(piece["flush"], boundary, side="left"))
                final.append(_take(piece, nr, ne, head=True))
                rest = _take(piece, nr, ne, head=False)
                if len(rest["read_t"]) or len(rest["flush"]):
                    keep.append(rest)
            pending = keep
            yield assemble_ops(final, DEFAULT_SCHEMA.names)

    def iter_live(self, chunk_ops: int = 100_000) -> Iterator[LiveChunk]:
        return rechunk_live(self._iter_live_pieces(), chunk_ops)


def _take(piece: dict[str, np.ndarray], nr: int, ne: int, head: bool) -> dict[str, np.ndarray]:
    out = {}
    for k, v in piece.items():
        n = nr if k.startswith("read_") else ne
        out[k] = v[:n] if head else v[n:]
    return out


def generate(config: GeneratorConfig | None = None, **overrides: Any) -> SyntheticWorkload:
    """A synthetic workload for ``config`` (default: the ``small`` scale). Lazy: nothing is
    generated until it is iterated. Keyword overrides replace single config parameters."""
    import dataclasses

    cfg = config or GeneratorConfig()
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return SyntheticWorkload(cfg)
