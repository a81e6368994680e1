"""TWIN-style two-stage model: a general search unit (GSU) retrieves the top-k history events by
dot-product similarity to the candidate, an exact search unit (ESU) runs target attention on them.

Cost per (user, candidate): L d (retrieval) + 2 k d^2 + 2 k d (target attention on k). The top-k set
depends on the candidate, so only the embeddings are shared across candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import FeatureEmbedding, MLPHead, RankingModel, TargetAttention, target_features


@dataclass
class TwinConfig(ModelConfig):
    top_k: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")


@dataclass
class TwinEncoded:
    tokens: torch.Tensor   # [B, L, d]
    mask: torch.Tensor     # [B, L]


class Twin(RankingModel):
    def __init__(self, config: TwinConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = FeatureEmbedding(config)
        self.attention = TargetAttention(config.d, config.heads)
        self.head = MLPHead(3 * config.d, config.mlp_hidden)

    def encode_history(self, history: HistoryBatch) -> TwinEncoded:
        tokens, mask = self.embed.history(history)
        return TwinEncoded(tokens, mask)

    def score(self, encoded: TwinEncoded, candidates: Candidates) -> torch.Tensor:
        target = self.embed.candidates(candidates)
        b, c, d = target.shape
        k = min(self.config.top_k, encoded.tokens.shape[1])
        similarity = torch.einsum("bcd,bld->bcl", target, encoded.tokens)
        similarity = similarity.masked_fill(~encoded.mask[:, None, :], torch.finfo(similarity.dtype).min)
        top = similarity.topk(k, dim=-1).indices                                   # [B, C, k]
        rows = torch.arange(b, device=top.device)[:, None, None]
        picked = encoded.tokens[rows, top].reshape(b * c, k, d)
        picked_mask = encoded.mask[rows, top].reshape(b * c, k)   # short histories pick padding: masked
        user = self.attention(target.reshape(b * c, 1, d), picked, picked_mask).view(b, c, d)
        return self.head(torch.cat(target_features(user, target), dim=-1))
