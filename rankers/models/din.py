"""DIN (Zhou et al. 2018): a local activation unit weighs every history event by its relevance to the
candidate, and the weighted sum of the events is the user vector.

The activation unit is an MLP on [h_i, t, h_i - t, h_i * t] (PReLU hidden layers, one output), and,
as in the DIN paper, its weights are *not* normalised by a softmax: a user with many relevant events
gets a larger user vector. The first layer's four blocks are folded: (W_h + W_diff) h_i does not
depend on the candidate and is computed once per request (L d a_1), (W_t - W_diff) t once per candidate
(d a_1), and W_prod (h_i * t) per (event, candidate) (L d a_1); then the hidden layers L a_1 a_2 and the
output L a_2, and the weighted sum L d. ``forward_reference`` runs the literal concatenation.

Simplifications: PReLU instead of Dice, no mini-batch aware regularisation, and the shared recency and
side-field embeddings of this repo's models in place of DIN's feature groups.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import FeatureEmbedding, MLPHead, RankingModel, target_features


@dataclass
class DinConfig(ModelConfig):
    attention_hidden: tuple[int, ...] = (64, 32)   # DIN's activation unit (the paper used 80, 40)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.attention_hidden or min(self.attention_hidden) < 1:
            raise ValueError(f"attention_hidden needs at least one width >= 1; got {self.attention_hidden}")


class PReLU(nn.Module):
    """PReLU with one slope per feature of the *last* dim (``nn.PReLU`` would use dim 1)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.full((width,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, self.slope * x)


@dataclass
class DinEncoded:
    tokens: torch.Tensor        # [B, L, d]
    history_part: torch.Tensor  # [B, L, a1]: (W_h + W_diff) h_i, candidate-independent
    mask: torch.Tensor          # [B, L]


class Din(RankingModel):
    def __init__(self, config: DinConfig) -> None:
        super().__init__()
        self.config = config
        d, widths = config.d, config.attention_hidden
        self.embed = FeatureEmbedding(config)
        self.first = nn.Linear(4 * d, widths[0])      # blocks: [h, t, h - t, h * t]
        self.first_act = PReLU(widths[0])
        hidden: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            hidden += [nn.Linear(a, b), PReLU(b)]
        self.hidden = nn.Sequential(*hidden)
        self.out = nn.Linear(widths[-1], 1)
        self.head = MLPHead(3 * d, config.mlp_hidden)

    def _blocks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.first.weight.split(self.config.d, dim=1)   # W_h, W_t, W_diff, W_prod: [a1, d] each

    def encode_history(self, history: HistoryBatch) -> DinEncoded:
        tokens, mask = self.embed.history(history)
        w_h, _, w_diff, _ = self._blocks()
        return DinEncoded(tokens, nn.functional.linear(tokens, w_h + w_diff), mask)

    def _weights(self, first_layer: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """First-layer pre-activations [B, C, L, a1] -> unnormalised event weights [B, C, L], 0 at padding."""
        x = self.hidden(self.first_act(first_layer))
        return self.out(x).squeeze(-1) * mask[:, None, :].to(x.dtype)

    def score(self, encoded: DinEncoded, candidates: Candidates) -> torch.Tensor:
        target = self.embed.candidates(candidates)                                    # [B, C, d]
        _, w_t, w_diff, w_prod = self._blocks()
        target_part = nn.functional.linear(target, w_t - w_diff, self.first.bias)     # [B, C, a1]
        product = encoded.tokens[:, None, :, :] * target[:, :, None, :]               # [B, C, L, d]
        first = encoded.history_part[:, None] + target_part[:, :, None] + nn.functional.linear(product, w_prod)
        weights = self._weights(first, encoded.mask)
        user = torch.einsum("bcl,bld->bcd", weights, encoded.tokens)
        return self.head(torch.cat(target_features(user, target), dim=-1))

    def forward_reference(self, history: HistoryBatch, candidates: Candidates) -> torch.Tensor:
        """The activation unit literally: concatenate [h, t, h - t, h * t] for every pair (slow; tests)."""
        tokens, mask = self.embed.history(history)
        target = self.embed.candidates(candidates)
        b, c, d = target.shape
        n = tokens.shape[1]
        h = tokens[:, None].expand(b, c, n, d)
        t = target[:, :, None].expand(b, c, n, d)
        weights = self._weights(self.first(torch.cat([h, t, h - t, h * t], dim=-1)), mask)
        user = (weights[..., None] * h).sum(dim=2)
        return self.head(torch.cat(target_features(user, target), dim=-1))
