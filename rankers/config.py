"""The configuration fields every ranking model shares; each model's dataclass extends :class:`ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Self

DEFAULT_SIDE_BUCKETS: dict[str, int] = {"action": 16, "scenario": 16, "category": 1024}


@dataclass
class ModelConfig:
    """Shared fields. Defaults are small enough to train on a laptop CPU in minutes;
    each subclass has ``paper_setting()`` for the paper's scale (d=128, L=1000)."""

    d: int = 32                                    # embedding / model width
    max_len: int = 1000                            # L: history events the model reads (newest kept)
    item_buckets: int = 100_000                    # item ids are hashed as id % item_buckets
    side_fields: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SIDE_BUCKETS))
    candidate_side_fields: tuple[str, ...] = ("category",)
    heads: int = 2
    use_recency: bool = True                       # log-bucketed (request time - event time) embedding
    recency_buckets: int = 64
    mlp_hidden: tuple[int, ...] = (128, 64)        # the scoring MLP on the fused features

    def __post_init__(self) -> None:
        if self.d < 1 or self.max_len < 1 or self.item_buckets < 1 or self.heads < 1:
            raise ValueError(f"d, max_len, item_buckets and heads must be >= 1; got {self}")
        if self.d % self.heads:
            raise ValueError(f"d={self.d} must be divisible by heads={self.heads}")
        unknown = [f for f in self.candidate_side_fields if f not in self.side_fields]
        if unknown:
            raise ValueError(f"candidate_side_fields {unknown} are not in side_fields {sorted(self.side_fields)}; "
                             "candidates share the history's embedding tables, so add them there")
        if self.recency_buckets < 2:
            raise ValueError("recency_buckets must be >= 2 (bucket 0 is padding)")

    @classmethod
    def paper_setting(cls, **overrides: Any) -> Self:
        """The paper's setting (section 3.6 / 4.1.2): d=128, L=1000."""
        return cls(**{"d": 128, "max_len": 1000, "mlp_hidden": (256, 128), **overrides})

    @classmethod
    def from_shared(cls, other: ModelConfig, **overrides: Any) -> Self:
        """This config class with the shared fields copied from ``other`` (any model's config)."""
        shared = {f.name: getattr(other, f.name) for f in fields(ModelConfig)}
        return cls.with_overrides(cls(**shared), **overrides)

    @classmethod
    def with_overrides(cls, config: Self, **overrides: Any) -> Self:
        known = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise TypeError(f"{cls.__name__} has no field(s) {bad}; valid fields: {sorted(known)}")
        return replace(config, **overrides)
