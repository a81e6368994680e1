"""Transformer baseline: learned positions, post-LN self-attention encoder layers with a per-token
FFN over the whole history, then target attention with the candidate as the query.

Each layer costs eq. 19 (4 L d^2 + 2 L^2 d) plus its FFN, 2 r L d^2 (default r=4, the usual
Transformer block; ``ffn_ratio=0`` gives the FFN-less layer eq. 19 counts, the paper's 3.6e8 at
L=1000, d=128). Positions are learned embeddings indexed from the newest event, so left padding does
not move them. Simplifications: one layer by default, post-LN, bidirectional (the history is finished
when the request ranks), and the recency embedding every model shares on top of the positions.
"""

from __future__ import annotations

from dataclasses import dataclass

from rankers.config import ModelConfig
from rankers.layers import SelfAttentionLayer
from rankers.models.common import EncoderTargetAttention


@dataclass
class TransformerConfig(ModelConfig):
    layers: int = 1
    ffn_ratio: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 0 or self.ffn_ratio < 0:
            raise ValueError("layers and ffn_ratio must be >= 0")


class Transformer(EncoderTargetAttention):
    def __init__(self, config: TransformerConfig) -> None:
        layers = [SelfAttentionLayer(config.d, config.heads, config.ffn_ratio) for _ in range(config.layers)]
        super().__init__(config, encoder=layers, positions=True)
