"""LLaTTE (Meta, "LLaTTE: Scaling Laws for Multi-Stage Sequence Modeling in Large-Scale Ads
Recommendation", arXiv 2601.20083): a two-stage model, our reading.

Upstream (offline, asynchronous, cacheable): a user encoder that is not target-aware reads the full
history (up to ``max_len`` events): ``encoder_layers`` self-attention layers, then attention pooling
with P learned queries -> P user tokens of width d (``summarize``; P x d values per user in storage).

Online (per request, target-aware): the newest ``online_len`` events go through ``online_layers``
post-LN attention layers with pyramidal K/V trimming: layer l reads the newest
``k_l = ceil(online_len * trim**l)`` tokens of its input (``k_0 = online_len``, see
:func:`trimmed_lengths`). History side (``encode_cached``, shared by all candidates): layer l projects
its k_l tokens to K/V, projects the P cached user tokens with the same W_k/W_v, and runs self-attention
for the tokens layer l+1 keeps. Candidate side (``score``): the candidate token t goes through the same
layers: ``t <- LN(t + W_o Attn(W_q t, [K_l; K_user], [V_l; V_user]))`` (+ ``LN(t + FFN(t))`` with
``ffn_ratio > 0``), a residual per layer; history tokens never attend to candidates, so the history
side is candidate-independent. The head gets ``target_features(t_final, target)`` plus the P user
tokens (flattened). ``encode_history(h) = encode_cached(summarize(h), h)``.

Exact serving optimisation (same outputs as running every layer on all its tokens, which
:meth:`Llatte.forward_reference` does): layer l computes queries, attention output, W_o and FFN only
for the newest k_{l+1} tokens, because the older ones are trimmed before layer l+1 reads them; the
last layer's history tokens only need K/V. That is what makes the pyramid cheap.

Cost (MACs, :func:`rankers.flops.flops_split`), with n = min(L, max_len), k_l = min(k_l, n),
q_l = k_{l+1} (0 for the last layer), r = ``ffn_ratio``:
refresh ``encoder_layers * (4 n d^2 + 2 n^2 d + 2 r n d^2) + P d^2 + 2 n d^2 + 2 P n d``;
per request ``sum_l [2 k_l d^2 + 2 P d^2 + (2 + 2r) q_l d^2 + 2 q_l k_l d]``;
per candidate ``sum_l [(2 + 2r) d^2 + 2 (k_l + P) d]`` (+ the scoring MLP).

Simplifications against the paper:

- Sizes are small: the paper's upstream model is Meta's largest user model (deep, long-context,
  scaled by its scaling-law study) and its online model is a production ranking stack; here both are
  a few attention layers of width d over L <= ``max_len`` events. ``paper_setting`` (d=128, L=1000,
  P=4, one encoder layer, online_len=400, two online layers, trim=0.5) is our choice of scale, not the
  paper's figures.
- Plain multi-head softmax attention and post-LN layers; the paper's attention variant (e.g. MLA-style
  latent K/V), its semantic/content features (which it finds a prerequisite for scaling), and the
  DHEN backbone for non-sequence features are left out; tokens are this repo's item + side + recency
  embeddings.
- The user encoder is trained end to end with the ranking loss; the paper trains the upstream model
  on its own objectives and transfers its embeddings downstream. Cache staleness (asynchronous
  refresh) is not modelled: the cache is whatever ``summarize`` returned for the history passed.
- The candidate token does not attend to itself, the online history tokens do not attend to the user
  tokens, and trimming keeps a fixed newest-k (no learned or score-based token selection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import nn

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import (
    FeatureEmbedding,
    MLPHead,
    RankingModel,
    SelfAttentionLayer,
    TargetAttention,
    masked_softmax,
    target_features,
)
from rankers.models.vista import newest_events, reference_attention


@dataclass
class LlatteConfig(ModelConfig):
    user_tokens: int = 4          # P: pooled user tokens of width d (the cache: P x d values per user)
    encoder_layers: int = 1       # self-attention layers of the offline user encoder over the full history
    online_len: int = 400         # newest events the online model reads (kept <= 400 in our setting)
    online_layers: int = 2        # target-aware online layers
    trim: float = 0.5             # layer l keeps the newest ceil(online_len * trim**l) tokens
    ffn_ratio: int = 0            # FFN of width r*d in the encoder and online layers (0 = none)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.user_tokens, self.online_len, self.online_layers) < 1:
            raise ValueError("user_tokens, online_len and online_layers must be >= 1")
        if self.encoder_layers < 0 or self.ffn_ratio < 0:
            raise ValueError("encoder_layers and ffn_ratio must be >= 0")
        if not 0.0 < self.trim <= 1.0:
            raise ValueError(f"trim must be in (0, 1]; got {self.trim}")

    @classmethod
    def paper_setting(cls, **overrides: Any) -> Self:
        """d=128, L=1000; P=4 user tokens, one encoder layer, online_len=400, two online layers,
        trim=0.5 (400 then 200 tokens). Our scale, not the paper's production sizes."""
        base = {"user_tokens": 4, "encoder_layers": 1, "online_len": 400, "online_layers": 2, "trim": 0.5}
        return super().paper_setting(**{**base, **overrides})


def cache_shape(config: LlatteConfig) -> tuple[int, int]:
    """Shape of the cached tensor per user: (P, d)."""
    return (config.user_tokens, config.d)


def trimmed_lengths(config: LlatteConfig) -> list[int]:
    """Tokens each online layer reads: ceil(n * trim**l), n = min(online_len, max_len), at least 1."""
    n = min(config.online_len, config.max_len)
    # round() first: 100 * 0.1 is 10.000000000000002 in floating point, whose ceil would be 11.
    return [max(1, math.ceil(round(n * config.trim ** layer, 9))) for layer in range(config.online_layers)]


class TargetAwareLayer(nn.Module):
    """Post-LN multi-head attention layer run by the online history tokens (self-attention over the
    layer's trimmed tokens) and by the candidate token (target attention over the same K/V plus the
    user tokens), with the same weights."""

    def __init__(self, d: int, heads: int, ffn_ratio: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.ffn = (nn.Sequential(nn.Linear(d, ffn_ratio * d), nn.GELU(), nn.Linear(ffn_ratio * d, d))
                    if ffn_ratio > 0 else None)
        self.ffn_norm = nn.LayerNorm(d) if ffn_ratio > 0 else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, self.head_dim)

    def project(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, n, d] -> keys, values [B, n, h, d/h]."""
        return self._heads(self.key(tokens)), self._heads(self.value(tokens))

    def update(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual + LN after attention (W_o applied here), then the optional FFN block."""
        x = self.norm(x + self.out(attended))
        if self.ffn is not None:
            x = self.ffn_norm(x + self.ffn(x))
        return x

    def attend(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """Queries from x [B, m, d] over keys/values [B, n, h, d/h] (mask [B, n]) -> updated x [B, m, d]."""
        b, m, d = x.shape
        q = self._heads(self.query(x))
        scores = torch.einsum("bmhk,bnhk->bhmn", q, keys) / math.sqrt(self.head_dim)
        weights = masked_softmax(scores, mask[:, None, None, :])
        attended = torch.einsum("bhmn,bnhk->bmhk", weights, values).reshape(b, m, d)
        return self.update(x, attended)


@dataclass
class OnlineLayerKV:
    keys: torch.Tensor     # [B, k_l + P, h, d/h]: layer l's trimmed history keys, then the user tokens'
    values: torch.Tensor   # [B, k_l + P, h, d/h]
    mask: torch.Tensor     # [B, k_l + P]; user tokens always valid


@dataclass
class LlatteEncoded:
    layers: list[OnlineLayerKV]
    user: torch.Tensor     # [B, P, d] the cached user tokens (the head reads them)


class Llatte(RankingModel):
    def __init__(self, config: LlatteConfig) -> None:
        super().__init__()
        self.config = config
        self.trimmed = trimmed_lengths(config)
        self.embed = FeatureEmbedding(config)
        self.encoder = nn.ModuleList(SelfAttentionLayer(config.d, config.heads, config.ffn_ratio)
                                     for _ in range(config.encoder_layers))
        self.pool_queries = nn.Parameter(torch.randn(config.user_tokens, config.d) / math.sqrt(config.d))
        self.pool = TargetAttention(config.d, config.heads)
        self.online = nn.ModuleList(TargetAwareLayer(config.d, config.heads, config.ffn_ratio)
                                    for _ in range(config.online_layers))
        self.head = MLPHead((3 + config.user_tokens) * config.d, config.mlp_hidden)

    def cache_shape(self) -> tuple[int, int]:
        return cache_shape(self.config)

    # -- offline: the cacheable, non-target-aware user encoder -----------------------------------------
    def summarize(self, history: HistoryBatch) -> torch.Tensor:
        """[B, P, d] user tokens of each user's newest ``max_len`` events (zeros for an empty history)."""
        tokens, mask = self.embed.history(history)
        for layer in self.encoder:
            tokens = layer(tokens, mask)
        # repeat, not expand: a view of a parameter made under no_grad trips FlopCounterMode's module hooks
        return self.pool(self.pool_queries.repeat(history.batch_size, 1, 1), tokens, mask)

    # -- online -----------------------------------------------------------------------------------------
    def encode_cached(self, cache: torch.Tensor, history: HistoryBatch) -> LlatteEncoded:
        """History side of the online stack, once per request: per layer the trimmed K/V of the newest
        events and the cached user tokens' K/V."""
        expected = self.cache_shape()
        if cache.dim() != 3 or tuple(cache.shape[1:]) != expected:
            raise ValueError(f"cache must be [B, {expected[0]}, {expected[1]}]; got {tuple(cache.shape)}")
        if history is None:
            raise ValueError("LLaTTE's online layers read the newest events: encode_cached needs the history")
        tokens, mask = self.embed.history(newest_events(history, self.trimmed[0]))
        tokens = tokens.to(cache.dtype)
        user_mask = torch.ones(cache.shape[:2], dtype=torch.bool, device=cache.device)
        layers = []
        for index, layer in enumerate(self.online):
            # Left-padded, so the newest k_l tokens are the last k_l slots.
            tokens, mask = tokens[:, -self.trimmed[index]:], mask[:, -self.trimmed[index]:]
            keys, values = layer.project(tokens)
            user_keys, user_values = layer.project(cache)
            layers.append(OnlineLayerKV(torch.cat([keys, user_keys], 1), torch.cat([values, user_values], 1),
                                        torch.cat([mask, user_mask], 1)))
            if index + 1 < len(self.online):   # queries only for the tokens the next layer keeps
                keep = self.trimmed[index + 1]
                tokens = layer.attend(tokens[:, -keep:], keys, values, mask)
                tokens = tokens * mask[:, -keep:, None].to(tokens.dtype)
        return LlatteEncoded(layers, cache)

    def encode_history(self, history: HistoryBatch) -> LlatteEncoded:
        return self.encode_cached(self.summarize(history), history)

    def score(self, encoded: LlatteEncoded, candidates: Candidates) -> torch.Tensor:
        target = self.embed.candidates(candidates)
        b, c, _ = target.shape
        t = target
        for layer, kv in zip(self.online, encoded.layers, strict=True):
            t = layer.attend(t, kv.keys, kv.values, kv.mask)
        user = encoded.user.flatten(1)[:, None, :].expand(b, c, -1)
        return self.head(torch.cat([*target_features(t, target), user], dim=-1))

    # -- reference ---------------------------------------------------------------------------------------
    def forward_reference(self, history: HistoryBatch, candidates: Candidates) -> torch.Tensor:
        """Same weights, written without the vectorised path: per user, only the real events are sliced
        out (no masks); every layer runs on ALL its tokens (no query skipping) and trims by slicing the
        newest k_l; plain loops over tokens, heads, layers and candidates with ``torch.softmax``."""
        tokens, mask = self.embed.history(history)
        targets = self.embed.candidates(candidates)
        n_slots = tokens.shape[1]
        rows = []
        for b in range(history.batch_size):
            events = tokens[b, n_slots - int(mask[b].sum()):]             # oldest -> newest, real only
            x = events
            for layer in self.encoder:
                x = _reference_self_attention(layer, x)
            user = torch.stack([reference_attention(self.pool, q, x) for q in self.pool_queries])
            memories = []
            y = events
            for index, layer in enumerate(self.online):
                y = y[max(0, y.shape[0] - self.trimmed[index]):]          # keep the newest k_l
                memories.append(torch.cat([y, user]))                      # what the candidate reads
                if y.shape[0]:                                             # full self-attention on all k_l
                    y = torch.stack([_reference_layer_step(layer, token, y) for token in y])
            scores = []
            for c in range(candidates.count):
                target = targets[b, c]
                t = target
                for layer, memory in zip(self.online, memories, strict=True):
                    t = _reference_layer_step(layer, t, memory)
                features = torch.cat([t, target, t * target, user.flatten()])
                scores.append(self.head(features))
            rows.append(torch.stack(scores))
        return torch.stack(rows)


def _reference_heads(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention of one projected query [d] over projected keys/values [n, d] (n >= 1), per head."""
    head_dim = query.shape[0] // heads
    out = []
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        weights = torch.softmax(keys[:, cols] @ query[cols] / math.sqrt(head_dim), dim=0)
        out.append(weights @ values[:, cols])
    return torch.cat(out)


def _reference_layer_step(layer: TargetAwareLayer, token: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """One token [d] through a :class:`TargetAwareLayer` attending to memory [n, d] (n >= 1)."""
    attended = _reference_heads(layer.query(token), layer.key(memory), layer.value(memory), layer.heads)
    x = layer.norm(token + layer.out(attended))
    if layer.ffn is not None:
        x = layer.ffn_norm(x + layer.ffn(x))
    return x


def _reference_self_attention(layer: SelfAttentionLayer, x: torch.Tensor) -> torch.Tensor:
    """A :class:`SelfAttentionLayer` over real tokens x [n, d], one query at a time."""
    if x.shape[0] == 0:
        return x
    d = x.shape[1]
    weight = layer.qkv.weight                                          # rows: W_q, then W_k, then W_v
    keys, values = x @ weight[d:2 * d].T, x @ weight[2 * d:].T
    out = []
    for token in x:
        attended = _reference_heads(weight[:d] @ token, keys, values, layer.heads)
        y = layer.norm(token + layer.out(attended))
        if layer.ffn is not None:
            y = layer.ffn_norm(y + layer.ffn(y))
        out.append(y)
    return torch.stack(out)
