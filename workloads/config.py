"""Parameters of the synthetic generator, with documented defaults and named scales.

Defaults describe the ``small`` scale: ~4,000 users, ~2M backfill events, and a two-minute live
window with ~1,200 ranking reads/s and ~5,000 appended events/s. ``medium`` is 10x the users and
the traffic, ``large`` 100x (for big machines).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DAY_MS = 86_400_000


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that shapes a synthetic workload. Same config, same bytes."""

    users: int = 4_000
    seed: int = 0

    # -- lifelong history lengths: log-normal, clipped ----------------------------------------
    history_median: int = 200          # most users have hundreds of events ...
    history_sigma: float = 1.4         # ... and the tail has 10k+ (p99.9 ~ 15k at these values)
    history_min: int = 10
    history_max: int = 50_000          # hard cap on one user's backfill
    history_days_min: float = 30.0     # each user's history starts between these many days
    history_days_max: float = 730.0    # before the split time
    split_time_ms: int = 1_748_736_000_000  # 2025-06-01T00:00Z: backfill ends, live begins

    # -- sessions: bursts of events with long gaps between them --------------------------------
    session_events_mean: float = 10.0  # geometric number of events per backfill session
    event_gap_ms_mean: float = 8_000.0 # exponential gap between events inside a session

    # -- items, categories, authors -------------------------------------------------------------
    n_items: int = 500_000
    n_categories: int = 1_000
    category_zipf: float = 1.0         # popularity of categories (Zipf exponent over their rank)
    item_zipf: float = 0.9             # popularity of items inside their category
    items_per_author: int = 8

    # -- interests: where the signal for a ranking model lies -----------------------------------
    long_term_interests: int = 3       # lifelong categories per user, seen in sparse episodes
    episode_prob: float = 0.2          # share of sessions that are an episode of a long-term interest
    episode_focus: float = 0.8         # share of an episode's events in that interest
    short_term_focus: float = 0.5      # share of other sessions' events in the current short-term interest
    long_term_mix: float = 0.15        # ... in one of the long-term interests (the feed mixes them in)
    drift_days: float = 10.0           # median time a short-term interest lasts before it drifts
    click_prob_long: float = 0.35      # click probability on an item of a long-term interest
    click_prob_short: float = 0.12     # ... of the current short-term interest
    click_prob_other: float = 0.03     # ... of anything else
    scenario_probs: tuple[float, float, float] = (0.6, 0.3, 0.1)  # feed, video, search sessions

    # -- live traffic ---------------------------------------------------------------------------
    activity_zipf: float = 0.8         # live activity ~ rank^-s, ranks ordered by history length
    live_seconds: float = 120.0        # length of the live window (trace time)
    live_sessions_per_s: float = 200.0 # session starts per second over all users
    requests_per_session_mean: float = 6.0   # ranking reads per live session (geometric, <= 30)
    request_gap_ms_mean: float = 12_000.0    # between one read and the next in a session
    events_per_request_mean: float = 4.0     # events that follow one read (1 + Poisson)
    candidates_min: int = 100          # candidates scored per read, uniform in [min, max]
    candidates_max: int = 500
    ingest_delay_ms_mean: float = 300.0  # event time -> arrival at the store (exponential)
    append_interval_ms: int = 100      # ingestion flushes one append batch this often

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the manifest

    def __post_init__(self) -> None:
        problems = []
        if self.users < 1:
            problems.append(f"users must be >= 1, got {self.users}")
        if not 1 <= self.history_min <= self.history_max:
            problems.append(f"need 1 <= history_min <= history_max, got {self.history_min}, {self.history_max}")
        if not 0 < self.history_days_min <= self.history_days_max:
            problems.append("need 0 < history_days_min <= history_days_max")
        if not 1 <= self.n_categories <= 65_536:
            problems.append(f"n_categories must be in [1, 65536] (uint16 column), got {self.n_categories}")
        if not self.n_categories <= self.n_items < 2**32:
            problems.append(f"n_items must be in [n_categories, 2^32), got {self.n_items}")
        if self.long_term_interests < 1:
            problems.append("long_term_interests must be >= 1")
        if self.short_term_focus + self.long_term_mix > 1.0:
            problems.append("short_term_focus + long_term_mix must be <= 1 (shares of one session's events)")
        for name in ("episode_prob", "episode_focus", "short_term_focus", "long_term_mix", "click_prob_long",
                     "click_prob_short", "click_prob_other"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be a probability, got {getattr(self, name)}")
        if len(self.scenario_probs) != 3 or abs(sum(self.scenario_probs) - 1.0) > 1e-9:
            problems.append(f"scenario_probs must be 3 probabilities summing to 1, got {self.scenario_probs}")
        if self.live_seconds < 0 or self.live_sessions_per_s < 0:
            problems.append("live_seconds and live_sessions_per_s must be >= 0")
        if not 1 <= self.candidates_min <= self.candidates_max:
            problems.append("need 1 <= candidates_min <= candidates_max")
        if self.append_interval_ms < 1:
            problems.append("append_interval_ms must be >= 1")
        if self.session_events_mean < 1 or self.requests_per_session_mean < 1 or self.events_per_request_mean < 1:
            problems.append("session_events_mean, requests_per_session_mean, events_per_request_mean must be >= 1")
        if problems:
            raise ValueError("invalid GeneratorConfig: " + "; ".join(problems))

    # -- named scales ---------------------------------------------------------------------------
    PRESETS = ("small", "medium", "large")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GeneratorConfig:
        """A named scale: ``small`` (~2M backfill events, seconds to generate), ``medium`` (10x),
        ``large`` (100x; for big machines). Keyword overrides replace single parameters."""
        base = cls()
        scales = {"small": 1, "medium": 10, "large": 100}
        if name not in scales:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(scales)}")
        k = scales[name]
        cfg = dataclasses.replace(
            base, users=base.users * k, live_sessions_per_s=base.live_sessions_per_s * k,
            n_items=min(base.n_items * k, 2**32 - 1),
        )
        return dataclasses.replace(cfg, **overrides) if overrides else cfg

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scenario_probs"] = list(self.scenario_probs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GeneratorConfig parameters: {', '.join(unknown)}")
        d = dict(d)
        if "scenario_probs" in d:
            d["scenario_probs"] = tuple(d["scenario_probs"])
        return cls(**d)
