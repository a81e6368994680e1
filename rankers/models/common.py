"""The shape shared by Base, DIN, HSTU and Transformer: an optional encoder over the history, then
softmax target attention with the candidate as the query, then the scoring MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import (
    FeatureEmbedding,
    HstuLayer,
    MLPHead,
    RankingModel,
    TargetAttention,
    target_features,
)


@dataclass
class TargetAttentionEncoded:
    keys: torch.Tensor     # [B, L, h, d/h]
    values: torch.Tensor   # [B, L, h, d/h]
    mask: torch.Tensor     # [B, L]


class EncoderTargetAttention(RankingModel):
    """History tokens (newest ``keep_last`` only, if given; plus learned position embeddings counted from
    the newest event, if ``positions``) -> ``encoder`` layers -> target attention. Layers that take event
    times (HSTU's relative time bias) get them."""

    def __init__(self, config: ModelConfig, encoder: list[nn.Module], keep_last: int | None = None,
                 positions: bool = False) -> None:
        super().__init__()
        self.config = config
        self.keep_last = keep_last
        self.embed = FeatureEmbedding(config)
        self.position = nn.Embedding(config.max_len, config.d) if positions else None
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=config.d ** -0.5)
        self.encoder = nn.ModuleList(encoder)
        self.attention = TargetAttention(config.d, config.heads)
        self.head = MLPHead(3 * config.d, config.mlp_hidden)

    def encode_history(self, history: HistoryBatch) -> TargetAttentionEncoded:
        tokens, mask = self.embed.history(history)
        times = history.event_time_ms[:, -self.config.max_len:]
        if self.keep_last is not None:   # left-padded, so the newest events are at the end
            tokens, mask, times = tokens[:, -self.keep_last:], mask[:, -self.keep_last:], times[:, -self.keep_last:]
        if self.position is not None:    # position 0 = the newest event, whatever the padding
            n = tokens.shape[1]
            from_newest = torch.arange(n - 1, -1, -1, device=tokens.device).clamp(max=self.config.max_len - 1)
            tokens = tokens + self.position(from_newest)[None] * mask[..., None].to(tokens.dtype)
        for layer in self.encoder:
            tokens = layer(tokens, mask, times) if isinstance(layer, HstuLayer) else layer(tokens, mask)
        keys, values = self.attention.project(tokens)
        return TargetAttentionEncoded(keys, values, mask)

    def score(self, encoded: TargetAttentionEncoded, candidates: Candidates) -> torch.Tensor:
        target = self.embed.candidates(candidates)
        user = self.attention.attend(target, encoded.keys, encoded.values, encoded.mask)
        return self.head(torch.cat(target_features(user, target), dim=-1))
