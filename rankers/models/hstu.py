"""HSTU-style baseline: pointwise SiLU attention layers over the whole history, then target attention."""

from __future__ import annotations

from dataclasses import dataclass

from rankers.config import ModelConfig
from rankers.layers import HstuLayer
from rankers.models.common import EncoderTargetAttention


@dataclass
class HstuConfig(ModelConfig):
    layers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 0:
            raise ValueError("layers must be >= 0")


class Hstu(EncoderTargetAttention):
    def __init__(self, config: HstuConfig) -> None:
        super().__init__(config, encoder=[HstuLayer(config.d, config.heads) for _ in range(config.layers)])
