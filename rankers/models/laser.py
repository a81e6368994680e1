"""LASER (paper sections 3.4-3.5): Segmented Target Attention -> Global Stacked Target Attention -> fusion.

The history of length L is left-padded to a multiple of w so the newest segment is always full and
``segments[-r:]`` are the newest r. STA keys/values (``H W_k``, ``H W_v``) are candidate-independent and
computed once per request in ``encode_history``; everything after depends on the candidate.

Choices where the paper is silent or loose (tests/test_laser_equations.py pins each):
- STA is multi-head: h heads, each with its own dq-wide query/key slice (d_q = h * dq of eq. 13) gating
  its own d/h slice of V; the paper writes one head. gamma (unspecified) defaults to sqrt(dq).
- GSTA (eq. 7) is multi-head target attention scaled by sqrt(d/h), without an output projection.
- A history that is not a multiple of w is left-padded, so only the oldest segment is partial;
  all-padding segments are zeroed and masked out of GSTA and the max-pool (the paper has no padding).
- Fusion's "s_1..s_r" is read as the newest r segments, oldest to newest, zero-filled at the front
  when there are fewer; the head is an MLP on [z, t, z*t, max-pool, recent], not RankMixer.
- The FFN of eq. 6 is Linear(d, r d) -> GELU -> Linear(r d, d).
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
    TargetAttention,
    masked_max,
    masked_softmax,
    target_features,
)


@dataclass
class LaserConfig(ModelConfig):
    dq: int = 8                         # query/key dimension per head in STA (d_q = heads * dq in eq. 13)
    window: int = 10                    # w: tokens per segment
    gamma: float | None = None          # sigmoid temperature; None -> sqrt(dq)
    gsta_layers: int = 2                # M
    ffn_ratio: int = 4                  # r in eq. 15: FFN width r*d on segment tokens
    recent_segments: int = 4            # newest segments fed to the fusion ("r" of section 3.4.4)
    # Ablation switches (paper Table 3)
    sta_activation: str = "sigmoid"     # "sigmoid" (LASER) or "softmax"
    sta_ffn: bool = True                # FFN + residual on segment tokens
    sta_layernorm: bool = True          # LayerNorm after it
    fusion: bool = True                 # max-pool + newest segments next to the GSTA output
    # Serving optimisation, same outputs: GSTA folds W_k/W_v into the query side instead of projecting
    # every segment token of every candidate (2 M L' d^2 -> ~2 M h L' d per candidate).
    gsta_absorbed: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sta_activation not in ("sigmoid", "softmax"):
            raise ValueError(f"sta_activation must be 'sigmoid' or 'softmax'; got {self.sta_activation!r}")
        if min(self.dq, self.window, self.ffn_ratio, self.recent_segments) < 1 or self.gsta_layers < 0:
            raise ValueError("dq, window, ffn_ratio, recent_segments must be >= 1 and gsta_layers >= 0")

    @classmethod
    def paper_setting(cls, **overrides: Any) -> Self:
        """Section 4.1.2: L=1000, d=128, w=10, 2 heads x d_q=16, M=2, FFN ratio 4, r=4."""
        base = {"dq": 16, "window": 10, "gsta_layers": 2, "ffn_ratio": 4, "recent_segments": 4, "heads": 2}
        return super().paper_setting(**{**base, **overrides})


@dataclass
class LaserEncoded:
    keys: torch.Tensor     # [B, Lp, h, dq]   Lp = L rounded up to a multiple of w (left-padded)
    values: torch.Tensor   # [B, Lp, h, d/h]
    mask: torch.Tensor     # [B, Lp]


def _left_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad dim 1 at the front with zeros (False for bool)."""
    if pad == 0:
        return x
    return torch.cat([x.new_zeros((x.shape[0], pad, *x.shape[2:])), x], dim=1)


class SegmentedTargetAttention(nn.Module):
    """STA: per-segment target attention with low-dimensional keys and sigmoid gating (eqs. 4-6),
    computed the vectorised way of section 3.5.1 (global projections and scores, reshape, batched matmul)."""

    def __init__(self, config: LaserConfig) -> None:
        super().__init__()
        c = config
        self.heads, self.dq, self.window, self.d = c.heads, c.dq, c.window, c.d
        self.gamma = c.gamma if c.gamma is not None else math.sqrt(c.dq)
        self.activation = c.sta_activation
        self.query = nn.Linear(c.d, c.heads * c.dq, bias=False)
        self.key = nn.Linear(c.d, c.heads * c.dq, bias=False)
        self.value = nn.Linear(c.d, c.d, bias=False)
        self.ffn = (nn.Sequential(nn.Linear(c.d, c.ffn_ratio * c.d), nn.GELU(), nn.Linear(c.ffn_ratio * c.d, c.d))
                    if c.sta_ffn else None)
        self.norm = nn.LayerNorm(c.d) if c.sta_layernorm else None

    def project(self, tokens: torch.Tensor, mask: torch.Tensor) -> LaserEncoded:
        """Global K and V of the whole history (eq. 9), left-padded to a multiple of w."""
        b, n, _ = tokens.shape
        pad = (-n) % self.window
        keys = self.key(tokens).view(b, n, self.heads, self.dq)
        values = self.value(tokens).view(b, n, self.heads, self.d // self.heads)
        return LaserEncoded(_left_pad(keys, pad), _left_pad(values, pad), _left_pad(mask, pad))

    def _gate(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return torch.sigmoid(scores / self.gamma) * mask.to(scores.dtype)
        return masked_softmax(scores / self.gamma, mask)

    def aggregate(self, target: torch.Tensor, enc: LaserEncoded) -> tuple[torch.Tensor, torch.Tensor]:
        """Target [B, C, d] -> segment tokens [B, C, L', d] (before the FFN) and segment mask [B, L']."""
        b, c, _ = target.shape
        n_seg = enc.keys.shape[1] // self.window
        q = self.query(target).view(b, c, self.heads, self.dq)
        scores = torch.einsum("bchq,blhq->bchl", q, enc.keys)                       # eq. 10, all L at once
        seg_mask = enc.mask.view(b, 1, 1, n_seg, self.window)
        alpha = self._gate(scores.view(b, c, self.heads, n_seg, self.window), seg_mask)   # R(alpha), eq. 11
        values = enc.values.view(b, n_seg, self.window, self.heads, self.d // self.heads)
        segments = torch.einsum("bchsw,bswhv->bcshv", alpha, values)                # batched matmul, eq. 12
        return segments.reshape(b, c, n_seg, self.d), enc.mask.view(b, n_seg, self.window).any(-1)

    def refine(self, segments: torch.Tensor) -> torch.Tensor:
        """s_i = LN(FFN(s_i) + s_i), eq. 6 (either part switchable for the ablations)."""
        if self.ffn is not None:
            segments = self.ffn(segments) + segments
        if self.norm is not None:
            segments = self.norm(segments)
        return segments

    def forward(self, target: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        segments, seg_mask = self.aggregate(target, self.project(tokens, mask))
        return self.refine(segments), seg_mask

    def forward_naive(self, target: torch.Tensor, tokens: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference: eqs. 3-6 literally, one segment at a time (slow; for tests)."""
        b, n, _ = tokens.shape
        pad = (-n) % self.window
        tokens, mask = _left_pad(tokens, pad), _left_pad(mask, pad)
        q = self.query(target).view(b, -1, self.heads, self.dq)
        out, seg_valid = [], []
        for start in range(0, tokens.shape[1], self.window):
            seg, seg_mask = tokens[:, start:start + self.window], mask[:, start:start + self.window]
            k = self.key(seg).view(b, -1, self.heads, self.dq)
            v = self.value(seg).view(b, -1, self.heads, self.d // self.heads)
            scores = torch.einsum("bchq,bwhq->bchw", q, k)
            alpha = self._gate(scores, seg_mask[:, None, None, :])
            out.append(torch.einsum("bchw,bwhv->bchv", alpha, v).flatten(2))
            seg_valid.append(seg_mask.any(-1))
        return self.refine(torch.stack(out, dim=2)), torch.stack(seg_valid, dim=1)


class GlobalStackedTargetAttention(nn.Module):
    """GSTA (eq. 7): M layers of softmax target attention over segment tokens, t_l = t_{l-1} + o_l."""

    def __init__(self, config: LaserConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TargetAttention(config.d, config.heads) for _ in range(config.gsta_layers))
        self.absorbed = config.gsta_absorbed

    def forward(self, target: torch.Tensor, segments: torch.Tensor, seg_mask: torch.Tensor) -> torch.Tensor:
        """target [B, C, d], segments [B, C, L', d], seg_mask [B, L'] -> z [B, C, d]."""
        b, c, n_seg, d = segments.shape
        # Segment tokens differ per candidate, so each (user, candidate) pair is its own attention batch.
        flat_segments = segments.reshape(b * c, n_seg, d)
        flat_mask = seg_mask[:, None, :].expand(b, c, n_seg).reshape(b * c, n_seg)
        t = target.reshape(b * c, 1, d)
        for layer in self.layers:
            attend = layer.forward_absorbed if self.absorbed else layer
            t = t + attend(t, flat_segments, flat_mask)
        return t.view(b, c, d)


class Laser(RankingModel):
    def __init__(self, config: LaserConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = FeatureEmbedding(config)
        self.sta = SegmentedTargetAttention(config)
        self.gsta = GlobalStackedTargetAttention(config)
        n_features = 3 + ((1 + config.recent_segments) if config.fusion else 0)
        self.head = MLPHead(n_features * config.d, config.mlp_hidden)

    def encode_history(self, history: HistoryBatch) -> LaserEncoded:
        tokens, mask = self.embed.history(history)
        return self.sta.project(tokens, mask)

    def score(self, encoded: LaserEncoded, candidates: Candidates) -> torch.Tensor:
        target = self.embed.candidates(candidates)
        segments, seg_mask = self.sta.aggregate(target, encoded)
        segments = self.sta.refine(segments) * seg_mask[:, None, :, None].to(segments.dtype)
        z = self.gsta(target, segments, seg_mask)
        features = target_features(z, target)
        if self.config.fusion:
            features.append(masked_max(segments, seg_mask[:, None, :, None], dim=2))
            recent = segments[:, :, -self.config.recent_segments:]
            missing = self.config.recent_segments - recent.shape[2]
            if missing > 0:   # fewer segments than r (L < r*w): zero-fill the oldest slots
                recent = torch.cat([recent.new_zeros((*recent.shape[:2], missing, recent.shape[3])), recent], 2)
            features.append(recent.flatten(2))
        return self.head(torch.cat(features, dim=-1))
