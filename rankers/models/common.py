"""The shape shared by Base, DIN, HSTU and Transformer: an optional encoder over the history, then
softmax target attention with the candidate as the query, then the scoring MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import FeatureEmbedding, MLPHead, RankingModel, TargetAttention, target_features


@dataclass
class TargetAttentionEncoded:
    keys: torch.Tensor     # [B, L, h, d/h]
    values: torch.Tensor   # [B, L, h, d/h]
    mask: torch.Tensor     # [B, L]


class EncoderTargetAttention(RankingModel):
    """History tokens (newest ``keep_last`` only, if given) -> ``encoder`` layers -> target attention."""

    def __init__(self, config: ModelConfig, encoder: list[nn.Module], keep_last: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.keep_last = keep_last
        self.embed = FeatureEmbedding(config)
        self.encoder = nn.ModuleList(encoder)
        self.attention = TargetAttention(config.d, config.heads)
        self.head = MLPHead(3 * config.d, config.mlp_hidden)

    def encode_history(self, history: HistoryBatch) -> TargetAttentionEncoded:
        tokens, mask = self.embed.history(history)
        if self.keep_last is not None:   # left-padded, so the newest events are at the end
            tokens, mask = tokens[:, -self.keep_last:], mask[:, -self.keep_last:]
        for layer in self.encoder:
            tokens = layer(tokens, mask)
        keys, values = self.attention.project(tokens)
        return TargetAttentionEncoded(keys, values, mask)

    def score(self, encoded: TargetAttentionEncoded, candidates: Candidates) -> torch.Tensor:
        target = self.embed.candidates(candidates)
        user = self.attention.attend(target, encoded.keys, encoded.values, encoded.mask)
        return self.head(torch.cat(target_features(user, target), dim=-1))
