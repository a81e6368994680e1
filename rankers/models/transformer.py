"""Transformer baseline: self-attention encoder layers over the whole history, then target attention.

``ffn_ratio=0`` (default) leaves out the per-token FFN, as the paper's eq. 19 does (4Ld^2 + 2L^2d);
with it, each layer adds 2 r L d^2.
"""

from __future__ import annotations

from dataclasses import dataclass

from rankers.config import ModelConfig
from rankers.layers import SelfAttentionLayer
from rankers.models.common import EncoderTargetAttention


@dataclass
class TransformerConfig(ModelConfig):
    layers: int = 1
    ffn_ratio: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 0 or self.ffn_ratio < 0:
            raise ValueError("layers and ffn_ratio must be >= 0")


class Transformer(EncoderTargetAttention):
    def __init__(self, config: TransformerConfig) -> None:
        layers = [SelfAttentionLayer(config.d, config.heads, config.ffn_ratio) for _ in range(config.layers)]
        super().__init__(config, encoder=layers)
