"""Layers shared by the ranking models.

Attention is written with explicit matmuls/einsums (never ``scaled_dot_product_attention``) because
``FlopCounterMode`` counts CPU SDPA as zero FLOPs and the FLOP accounting must see every product.
All masks are derived from ``HistoryBatch.lengths``; every masked reduction is NaN-safe (empty
histories, all-padding segments), and padded tokens are zeroed so they cannot leak into sums.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch


class RankingModel(nn.Module):
    """What every model implements. ``forward(h, c) == score(encode_history(h), c)``.

    ``encode_history`` does all the work that does not depend on the candidate (embeddings and
    candidate-independent projections), once per request; ``score`` broadcasts over the C candidates.
    ``head`` is the final scoring MLP, the only part outside the paper's sequence FLOP formulas.
    """

    config: ModelConfig
    head: nn.Module

    def forward(self, history: HistoryBatch, candidates: Candidates) -> torch.Tensor:
        return self.score(self.encode_history(history), candidates)

    def encode_history(self, history: HistoryBatch) -> Any:
        raise NotImplementedError

    def score(self, encoded: Any, candidates: Candidates) -> torch.Tensor:
        raise NotImplementedError


def log_buckets(x: torch.Tensor, buckets: int) -> torch.Tensor:
    """Non-negative values -> 0 for 0, then two buckets per doubling, capped at ``buckets - 1``."""
    return torch.floor(2.0 * torch.log2(1.0 + x.to(torch.float32))).long().clamp(0, buckets - 1)


def recency_buckets(event_time_ms: torch.Tensor, request_time_ms: torch.Tensor, buckets: int) -> torch.Tensor:
    """Log-bucketed age of each event at request time: two buckets per doubling of seconds, 0 = padding.

    Events after the request (clock skew) count as age 0 rather than failing.
    """
    age_s = (request_time_ms[:, None] - event_time_ms).clamp_min(0).to(torch.float32) / 1000.0
    return 1 + log_buckets(age_s, buckets - 1)


class FeatureEmbedding(nn.Module):
    """Item + side-field (+ recency) embeddings summed into d-dimensional tokens."""

    def __init__(self, config: ModelConfig, use_recency: bool | None = None) -> None:
        super().__init__()
        self.config = config
        self.use_recency = config.use_recency if use_recency is None else use_recency
        std = 1.0 / math.sqrt(config.d)
        self.item = nn.Embedding(config.item_buckets, config.d)
        self.side = nn.ModuleDict({name: nn.Embedding(n, config.d) for name, n in config.side_fields.items()})
        self.recency = nn.Embedding(config.recency_buckets, config.d) if self.use_recency else None
        for emb in self.modules():
            if isinstance(emb, nn.Embedding):
                nn.init.normal_(emb.weight, std=std)

    def _lookup(self, item_ids: torch.Tensor, side: dict[str, torch.Tensor], fields: tuple[str, ...] | list[str],
                what: str) -> torch.Tensor:
        missing = [f for f in fields if f not in side]
        if missing:
            raise KeyError(f"{what} lacks side field(s) {missing} that the model config expects "
                           f"(has {sorted(side)}); build the batch with them or change the config's side fields")
        x = self.item(torch.remainder(item_ids, self.config.item_buckets))
        for name in fields:
            x = x + self.side[name](torch.remainder(side[name], self.config.side_fields[name]))
        return x

    def history(self, history: HistoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [B, L, d] (zero at padding) and the validity mask [B, L]."""
        if history.seq_len > self.config.max_len:   # the model reads only its newest max_len events
            history = HistoryBatch(history.item_ids[:, -self.config.max_len:],
                                   {k: v[:, -self.config.max_len:] for k, v in history.side.items()},
                                   history.event_time_ms[:, -self.config.max_len:],
                                   history.lengths.clamp(max=self.config.max_len), history.request_time_ms)
        mask = history.valid_mask()
        x = self._lookup(history.item_ids, history.side, list(self.config.side_fields), "the history batch")
        if self.recency is not None:
            x = x + self.recency(recency_buckets(history.event_time_ms, history.request_time_ms,
                                                 self.config.recency_buckets))
        return x * mask[..., None].to(x.dtype), mask

    def candidates(self, candidates: Candidates) -> torch.Tensor:
        """Target tokens [B, C, d]."""
        return self._lookup(candidates.item_ids, candidates.side, self.config.candidate_side_fields,
                            "the candidates")


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``mask``-ed entries; an all-masked row gives all zeros (not NaN), with finite grads."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask.to(scores.dtype)


def masked_max(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over ``dim`` of the entries where ``mask`` (broadcast to x) holds; 0 where none does."""
    filled = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    any_valid = mask.any(dim=dim)
    return torch.where(any_valid, filled.amax(dim=dim), torch.zeros((), dtype=x.dtype, device=x.device))


class TargetAttention(nn.Module):
    """Multi-head softmax target attention: the candidate queries the history.

    Split into ``project`` (history side: K = H W_k, V = H W_v, shared by all candidates) and ``attend``
    (candidate side) so serving can do the history side once per request. Cost per (user, candidate):
    2 L d^2 (K, V) + 2 L d (scores, weighted sum), the paper's eq. 20.
    """

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)

    def project(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, d] -> keys, values [B, L, h, d/h]."""
        shape = (*tokens.shape[:-1], self.heads, self.head_dim)
        return self.key(tokens).view(shape), self.value(tokens).view(shape)

    def attend(self, target: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """target [B, C, d], keys/values [B, L, h, d/h], mask [B, L] -> [B, C, d]."""
        b, c, d = target.shape
        q = self.query(target).view(b, c, self.heads, self.head_dim)
        scores = torch.einsum("bchk,blhk->bchl", q, keys) / math.sqrt(self.head_dim)
        weights = masked_softmax(scores, mask[:, None, None, :])
        return torch.einsum("bchl,blhk->bchk", weights, values).reshape(b, c, d)

    def forward(self, target: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keys, values = self.project(tokens)
        return self.attend(target, keys, values, mask)

    def forward_absorbed(self, target: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Same result as ``forward`` when the tokens are not shared across queries (LASER's GSTA: one
        query per token set). Folds W_k into the query and W_v after the weighted sum, so the L tokens are
        never projected: cost 2 h L d + 2 d^2 instead of 2 L d^2 + 2 L d."""
        b, c, d = target.shape
        q = self.query(target).view(b, c, self.heads, self.head_dim)
        w_k = self.key.weight.view(self.heads, self.head_dim, d)
        w_v = self.value.weight.view(self.heads, self.head_dim, d)
        q_in_token_space = torch.einsum("bchk,hkd->bchd", q, w_k)
        scores = torch.einsum("bchd,bld->bchl", q_in_token_space, tokens) / math.sqrt(self.head_dim)
        weights = masked_softmax(scores, mask[:, None, None, :])
        pooled = torch.einsum("bchl,bld->bchd", weights, tokens)
        return torch.einsum("bchd,hkd->bchk", pooled, w_v).reshape(b, c, d)


class SelfAttentionLayer(nn.Module):
    """Post-LN multi-head self-attention over the (masked) history, optional FFN.

    Cost 4 L d^2 (Q, K, V, O) + 2 L^2 d, the paper's eq. 19 (+ 2 r L d^2 with an FFN of ratio r).
    """

    def __init__(self, d: int, heads: int, ffn_ratio: int = 0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.ffn = (nn.Sequential(nn.Linear(d, ffn_ratio * d), nn.GELU(), nn.Linear(ffn_ratio * d, d))
                    if ffn_ratio > 0 else None)
        self.ffn_norm = nn.LayerNorm(d) if ffn_ratio > 0 else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).unbind(2)
        scores = torch.einsum("bihk,bjhk->bhij", q, k) / math.sqrt(self.head_dim)
        weights = masked_softmax(scores, mask[:, None, None, :])
        attended = torch.einsum("bhij,bjhk->bihk", weights, v).reshape(b, n, d)
        x = self.norm(x + self.out(attended))
        if self.ffn is not None:
            x = self.ffn_norm(x + self.ffn(x))
        return x * mask[..., None].to(x.dtype)


class HstuLayer(nn.Module):
    """HSTU layer (Zhai et al. 2024, eqs. 1-3): pointwise SiLU attention (no softmax) with a relative
    attention bias rab^{p,t}, gated by U, residual.

    f1 projects to U, V, Q, K (4 L d^2), attention 2 L^2 d, f2 L d^2: 5 L d^2 + 2 L^2 d per layer.
    Attention weights are SiLU(q.k + rab_p(|i - j|) + rab_t(|t_i - t_j|)) / n_valid, per head; the biases
    are learned per log-bucket of the position distance and of the time gap (seconds), as HSTU's
    bucketed relative position and time biases. Bias lookups and adds are not multiply-accumulates, so
    they add nothing to the FLOP count. Bidirectional: ranking reads a finished history.
    """

    def __init__(self, d: int, heads: int, position_buckets: int = 32, time_buckets: int = 64) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.f1 = nn.Linear(d, 4 * d)
        self.f2 = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.position_bias = nn.Embedding(position_buckets, heads)
        self.time_bias = nn.Embedding(time_buckets, heads)
        nn.init.zeros_(self.position_bias.weight)
        nn.init.zeros_(self.time_bias.weight)

    def relative_bias(self, mask: torch.Tensor, event_time_ms: torch.Tensor) -> torch.Tensor:
        """rab [B, h, L, L] from the position distance and the time gap of every pair."""
        n = mask.shape[1]
        pos = torch.arange(n, device=mask.device)
        distance = (pos[:, None] - pos[None, :]).abs()
        gap_s = (event_time_ms[:, :, None] - event_time_ms[:, None, :]).abs().to(torch.float32) / 1000.0
        p = self.position_bias(log_buckets(distance, self.position_bias.num_embeddings))       # [L, L, h]
        t = self.time_bias(log_buckets(gap_s, self.time_bias.num_embeddings))                  # [B, L, L, h]
        return (p[None] + t).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, event_time_ms: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        u, v, q, k = nn.functional.silu(self.f1(x)).split(d, dim=-1)
        split = (b, n, self.heads, self.head_dim)
        scores = torch.einsum("bihk,bjhk->bhij", q.reshape(split), k.reshape(split))
        if event_time_ms is not None:
            scores = scores + self.relative_bias(mask, event_time_ms)
        n_valid = mask.sum(dim=1).clamp_min(1).to(x.dtype)[:, None, None, None]
        weights = nn.functional.silu(scores) * mask[:, None, None, :].to(x.dtype) / n_valid
        attended = torch.einsum("bhij,bjhk->bihk", weights, v.reshape(split)).reshape(b, n, d)
        return (x + self.f2(self.norm(attended) * u)) * mask[..., None].to(x.dtype)


class MLPHead(nn.Module):
    """Fused features -> one logit."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        layers.append(nn.Linear(in_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).squeeze(-1)


def target_features(user: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    """The interaction features every model hands its head: user vector, target, and their product."""
    return [user, target, user * target]
