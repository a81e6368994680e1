"""The paper's Base: the production model on the newest 100 events (RedLastN), "combining target
attention and self-attention" (section 4.1.3): ``self_attention_layers`` SA layers over the newest
``short_len`` events, then target attention. With one SA layer its cost at d=128 is ~1.2e7, the
1.3e7 of Table 2; set ``self_attention_layers=0`` for pure target attention on the newest 100."""

from __future__ import annotations

from dataclasses import dataclass

from rankers.config import ModelConfig
from rankers.layers import SelfAttentionLayer
from rankers.models.common import EncoderTargetAttention


@dataclass
class BaseConfig(ModelConfig):
    short_len: int = 100
    self_attention_layers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.short_len < 1 or self.self_attention_layers < 0:
            raise ValueError("short_len must be >= 1 and self_attention_layers >= 0")


class Base(EncoderTargetAttention):
    def __init__(self, config: BaseConfig) -> None:
        layers = [SelfAttentionLayer(config.d, config.heads) for _ in range(config.self_attention_layers)]
        super().__init__(config, encoder=layers, keep_last=config.short_len)
