"""DIN-style baseline: one softmax target attention over the whole history of length L (eq. 20)."""

from __future__ import annotations

from dataclasses import dataclass

from rankers.config import ModelConfig
from rankers.models.common import EncoderTargetAttention


@dataclass
class DinConfig(ModelConfig):
    pass


class Din(EncoderTargetAttention):
    def __init__(self, config: DinConfig) -> None:
        super().__init__(config, encoder=[])
