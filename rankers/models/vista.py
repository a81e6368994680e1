"""VISTA (Meta, "Massive Memorization with Hundreds of Trillions of Parameters for Sequential Transducer
Generative Recommenders", arXiv 2510.22049): VIrtual Sequential Target Attention, our reading.

Two stages. (1) Summarisation, candidate-independent and cached in storage: S learned query vectors
attend over the user's embedded history and become S summary tokens of width d (``summarize``; the
refresh job pays it once per refresh, not the request). (2) Candidate attention, online: the S cached
tokens are projected to keys/values once per request (``encode_cached``), and each candidate runs
softmax target attention over them (``score``), then the scoring MLP on ``target_features``.
``encode_history(h) = encode_cached(summarize(h), h)``, so ``forward`` is the usual ``RankingModel``.

Summarisation layer (``summary_layers`` rounds, each its own weights):
``q <- LN(q + TA(q, H))`` then, with ``summary_ffn_ratio > 0``, ``q <- LN(q + FFN(q))``; ``TA`` is the
multi-head softmax attention of :class:`~rankers.layers.TargetAttention` with the queries as targets and
the masked history ``H`` as keys/values (K = H W_k, V = H W_v, no output projection). An empty history
gives ``LN(q)``: the summary of a user with no events is the learned prior, never NaN.

``recent_len > 0`` also reads the newest ``recent_len`` events online: their embeddings are projected
by the same candidate-attention W_k/W_v and concatenated to the S cached tokens (S + R keys). With
``recent_len = 0`` (default) the online score depends on the history only through the cache.

Cost (MACs, :func:`rankers.flops.flops_split`): refresh ``summary_layers * (S d^2 + 2 L d^2 + 2 S L d
+ 2 r S d^2)``; per request ``2 (S + R) d^2``; per candidate ``d^2 + 2 (S + R) d`` (+ the scoring MLP).
Cache per user: S x d values (:func:`cache_shape`).

Simplifications against the paper (all deliberate; the point here is the cost/storage split):

- Summarisation is plain softmax cross-attention from learned queries over an L <= ``max_len`` history
  (the paper's histories reach 1e6 events and its summariser uses quasi-linear attention, QLA, to stay
  O(N)); at L=1000 softmax attention costs the same order, and nothing downstream depends on the kind.
- No generative sequential reconstruction loss and no separate summarisation training stage: the
  summariser is trained end to end with the ranking loss here (the paper trains it in the foundation
  model only and freezes/caches its output for downstream models).
- The cache is kept in the model's dtype; the paper quantises the cached embeddings (and stores them in
  a KV store of 100 TB-1 PB). Quantisation would change storage bytes, not these MACs.
- The candidate side is one multi-head softmax target attention over the S summary tokens (+ R
  recent events), the same block as the DIN baseline, then this repo's scoring MLP; the paper's
  candidate attention sits inside its production ranking model, which is not reproduced.
- ``paper_setting`` is d=128, L=1000 (shared with every model here) and S=128: the paper speaks of
  "a few hundred" summary tokens for lifelong (up to 1e6-event) histories; at L=1000 we use 128
  (an 8x compression), which is our choice, not a figure from the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import nn

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import FeatureEmbedding, MLPHead, RankingModel, TargetAttention, target_features


@dataclass
class VistaConfig(ModelConfig):
    summary_tokens: int = 64         # S: cached summary tokens per user (S x d values in storage)
    summary_layers: int = 1          # rounds of query -> history attention in the summariser
    summary_ffn_ratio: int = 0       # r: FFN of width r*d on the S tokens after each round (0 = none)
    recent_len: int = 0              # R: newest events also read online (0 = summary only)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.summary_tokens < 1 or self.summary_layers < 1:
            raise ValueError(f"summary_tokens and summary_layers must be >= 1; got {self.summary_tokens}, "
                             f"{self.summary_layers}")
        if self.summary_ffn_ratio < 0 or self.recent_len < 0:
            raise ValueError("summary_ffn_ratio and recent_len must be >= 0")

    @classmethod
    def paper_setting(cls, **overrides: Any) -> Self:
        """d=128, L=1000 and S=128 summary tokens (the paper: "a few hundred" for lifelong histories;
        128 at L=1000 is our choice), one summarisation round, summary only (R=0)."""
        base = {"summary_tokens": 128, "summary_layers": 1, "recent_len": 0}
        return super().paper_setting(**{**base, **overrides})


def cache_shape(config: VistaConfig) -> tuple[int, int]:
    """Shape of the cached tensor per user: (S, d)."""
    return (config.summary_tokens, config.d)


def newest_events(history: HistoryBatch, n: int) -> HistoryBatch:
    """The newest ``n`` columns of a left-padded batch (all of it when it is shorter), lengths clamped."""
    if history.seq_len <= n:
        return history
    return HistoryBatch(history.item_ids[:, -n:], {k: v[:, -n:] for k, v in history.side.items()},
                        history.event_time_ms[:, -n:], history.lengths.clamp(max=n), history.request_time_ms)


def reference_attention(attention: TargetAttention, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """One query [d] over real tokens only ([n, d], n may be 0 -> zeros), head by head with
    ``torch.softmax``: the plain-loop reading of :class:`TargetAttention` the tests compare against."""
    d = query.shape[-1]
    if memory.shape[0] == 0:
        return query.new_zeros(d)
    q = attention.query(query)
    keys, values = attention.key(memory), attention.value(memory)
    out = []
    for h in range(attention.heads):
        cols = slice(h * attention.head_dim, (h + 1) * attention.head_dim)
        weights = torch.softmax(keys[:, cols] @ q[cols] / math.sqrt(attention.head_dim), dim=0)
        out.append(weights @ values[:, cols])
    return torch.cat(out)


class SummaryLayer(nn.Module):
    """One summarisation round: q <- LN(q + TA(q, H)), then optionally q <- LN(q + FFN(q))."""

    def __init__(self, d: int, heads: int, ffn_ratio: int) -> None:
        super().__init__()
        self.attention = TargetAttention(d, heads)
        self.norm = nn.LayerNorm(d)
        self.ffn = (nn.Sequential(nn.Linear(d, ffn_ratio * d), nn.GELU(), nn.Linear(ffn_ratio * d, d))
                    if ffn_ratio > 0 else None)
        self.ffn_norm = nn.LayerNorm(d) if ffn_ratio > 0 else None

    def refine(self, queries: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = self.norm(queries + attended)
        if self.ffn is not None:
            x = self.ffn_norm(x + self.ffn(x))
        return x

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.refine(queries, self.attention(queries, tokens, mask))


@dataclass
class VistaEncoded:
    keys: torch.Tensor     # [B, S + R, h, d/h]: the cached tokens' (then the recent events') keys
    values: torch.Tensor   # [B, S + R, h, d/h]
    mask: torch.Tensor     # [B, S + R]; the S summary tokens are always valid


class Vista(RankingModel):
    def __init__(self, config: VistaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = FeatureEmbedding(config)
        self.summary_queries = nn.Parameter(torch.randn(config.summary_tokens, config.d) / math.sqrt(config.d))
        self.summarizer = nn.ModuleList(SummaryLayer(config.d, config.heads, config.summary_ffn_ratio)
                                        for _ in range(config.summary_layers))
        self.attention = TargetAttention(config.d, config.heads)
        self.head = MLPHead(3 * config.d, config.mlp_hidden)

    def cache_shape(self) -> tuple[int, int]:
        return cache_shape(self.config)

    # -- offline: the cacheable, candidate-independent summary ----------------------------------------
    def summarize(self, history: HistoryBatch) -> torch.Tensor:
        """[B, S, d] summary tokens of each user's newest ``max_len`` events."""
        tokens, mask = self.embed.history(history)
        # repeat, not expand: a view of a parameter made under no_grad trips FlopCounterMode's module hooks
        x = self.summary_queries.repeat(history.batch_size, 1, 1)
        for layer in self.summarizer:
            x = layer(x, tokens, mask)
        return x

    # -- online -----------------------------------------------------------------------------------------
    def encode_cached(self, cache: torch.Tensor, history: HistoryBatch | None = None) -> VistaEncoded:
        """Keys/values of the cached [B, S, d] tokens (and of the newest ``recent_len`` events), once per
        request. ``history`` is only read when ``recent_len > 0``."""
        expected = self.cache_shape()
        if cache.dim() != 3 or tuple(cache.shape[1:]) != expected:
            raise ValueError(f"cache must be [B, {expected[0]}, {expected[1]}]; got {tuple(cache.shape)}")
        tokens = cache
        mask = torch.ones(cache.shape[:2], dtype=torch.bool, device=cache.device)
        if self.config.recent_len > 0:
            if history is None:
                raise ValueError(f"recent_len={self.config.recent_len}: encode_cached needs the history "
                                 "to read the newest events")
            recent = min(self.config.recent_len, self.config.max_len)
            recent_tokens, recent_mask = self.embed.history(newest_events(history, recent))
            tokens = torch.cat([tokens, recent_tokens.to(tokens.dtype)], dim=1)
            mask = torch.cat([mask, recent_mask], dim=1)
        keys, values = self.attention.project(tokens)
        return VistaEncoded(keys, values, mask)

    def encode_history(self, history: HistoryBatch) -> VistaEncoded:
        return self.encode_cached(self.summarize(history), history)

    def score(self, encoded: VistaEncoded, candidates: Candidates) -> torch.Tensor:
        target = self.embed.candidates(candidates)
        user = self.attention.attend(target, encoded.keys, encoded.values, encoded.mask)
        return self.head(torch.cat(target_features(user, target), dim=-1))

    # -- reference ---------------------------------------------------------------------------------------
    def forward_reference(self, history: HistoryBatch, candidates: Candidates) -> torch.Tensor:
        """Same weights, written without the vectorised path: per user, only the real events are sliced
        out (no masks), then plain loops over summary queries, rounds and candidates with
        ``torch.softmax`` (slow; for tests)."""
        tokens, mask = self.embed.history(history)
        targets = self.embed.candidates(candidates)
        n_slots = tokens.shape[1]
        rows = []
        for b in range(history.batch_size):
            events = tokens[b, n_slots - int(mask[b].sum()):]            # oldest -> newest, real only
            summary = list(self.summary_queries)
            for layer in self.summarizer:
                summary = [layer.refine(q, reference_attention(layer.attention, q, events)) for q in summary]
            memory = torch.stack(summary)
            if self.config.recent_len > 0:
                memory = torch.cat([memory, events[max(0, events.shape[0] - self.config.recent_len):]])
            scores = []
            for c in range(candidates.count):
                target = targets[b, c]
                user = reference_attention(self.attention, target, memory)
                scores.append(self.head(torch.cat([user, target, user * target])))
            rows.append(torch.stack(scores))
        return torch.stack(rows)
