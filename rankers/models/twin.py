"""TWIN (Chang et al. 2023): a general search unit (GSU) picks the top-k history events for the
candidate, an exact search unit (ESU) runs target attention on them, and the two *share* their
projections (TWIN's consistency-preserving design): the GSU's relevance is the ESU's own multi-head
attention logit (t W_q)(h W_k)^T / sqrt(d_h), summed over heads, over the whole lifelong history
(``max_len``; the paper's setting reads 10,000 events), so the GSU retrieves what the ESU would attend to.

Cost per request: K = H W_k of the whole history once (n d^2; candidate-independent, so a serving
system can precompute it per item, as TWIN does). Per candidate: the query d^2, the GSU logits over
all n events n d, the values of only the k picked events k d^2, and the weighted sum k d; the ESU
reuses the GSU's logits at the picked events, so it computes no scores of its own.

Simplifications: the logits come from the shared event embedding (TWIN splits features into inherent
item features, cached per item, and user-item cross features compressed to a scalar bias); top-k
selection is a hard top-k without a straight-through gradient, so W_q and W_k learn only through the
ESU's attention on the picked events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Self

import torch

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import (
    FeatureEmbedding,
    MLPHead,
    RankingModel,
    TargetAttention,
    masked_softmax,
    target_features,
)

LIFELONG_LEN = 10_000


@dataclass
class TwinConfig(ModelConfig):
    top_k: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")

    @classmethod
    def paper_setting(cls, **overrides: Any) -> Self:
        """d=128, a lifelong history of 10,000 events searched, top 100 attended."""
        return super().paper_setting(**{"max_len": LIFELONG_LEN, **overrides})


@dataclass
class TwinEncoded:
    tokens: torch.Tensor   # [B, L, d]
    keys: torch.Tensor     # [B, L, h, d/h]: shared by the GSU and the ESU
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
        a = self.attention
        return TwinEncoded(tokens, a.key(tokens).view(*tokens.shape[:2], a.heads, a.head_dim), mask)

    def logits(self, encoded: TwinEncoded, target: torch.Tensor) -> torch.Tensor:
        """The shared attention logits [B, C, h, L] of every candidate over every event."""
        a = self.attention
        b, c, _ = target.shape
        q = a.query(target).view(b, c, a.heads, a.head_dim)
        return torch.einsum("bchk,blhk->bchl", q, encoded.keys) / math.sqrt(a.head_dim)

    def retrieve(self, encoded: TwinEncoded, logits: torch.Tensor) -> torch.Tensor:
        """GSU: indices [B, C, k] of the k events with the largest head-summed logits (valid ones first)."""
        k = min(self.config.top_k, encoded.tokens.shape[1])
        relevance = logits.sum(dim=2).masked_fill(~encoded.mask[:, None, :], -math.inf)
        return relevance.topk(k, dim=-1).indices

    def score(self, encoded: TwinEncoded, candidates: Candidates) -> torch.Tensor:
        target = self.embed.candidates(candidates)
        b, c, d = target.shape
        a = self.attention
        logits = self.logits(encoded, target)
        top = self.retrieve(encoded, logits)                                        # [B, C, k]
        k = top.shape[-1]
        rows = torch.arange(b, device=top.device)[:, None, None]
        picked = encoded.tokens[rows, top]                                          # [B, C, k, d]
        picked_mask = encoded.mask[rows, top]                     # short histories pick padding: masked
        picked_logits = logits.gather(3, top[:, :, None, :].expand(b, c, a.heads, k))   # [B, C, h, k]
        weights = masked_softmax(picked_logits, picked_mask[:, :, None, :])
        values = a.value(picked).view(b, c, k, a.heads, a.head_dim)
        user = torch.einsum("bchk,bckhv->bchv", weights, values).reshape(b, c, d)
        return self.head(torch.cat(target_features(user, target), dim=-1))
