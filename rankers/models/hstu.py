"""HSTU-style baseline: pointwise SiLU attention layers with relative position and time bias over the
whole history, then target attention with the candidate as the query.

Simplifications against HSTU (Zhai et al. 2024): the candidate is scored by a target attention over the
encoded history rather than appended to the sequence as HSTU's causal ranking does; the layer is
bidirectional; one layer by default; rab buckets are log-spaced (positions and seconds).
"""

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
