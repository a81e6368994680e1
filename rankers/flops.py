"""FLOPs per (user, candidate): the paper's analytic formulas (eqs. 13-20) and a measured count.

Convention: like the paper, a "FLOP" here is one multiply-accumulate (MAC): a d x d projection of L
tokens costs L*d^2. ``torch.utils.flop_counter.FlopCounterMode`` counts 2 per MAC, so measured
figures are its count divided by 2.

Scope (both sides): the sequence modules the formulas cover -- the history- and candidate-side
projections, attention scores, weighted sums, FFNs and layers of each model. Embedding lookups,
LayerNorm, activations and softmax are 0 (the counter does not count elementwise ops either), and the
final scoring MLP (``model.head``) is left out of the measured figure, as the formulas leave it out.
The measured figure also contains the tiny query projections the paper calls negligible (d*d_q, M*d^2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import RankingModel
from rankers.models import BaseConfig, HstuConfig, LaserConfig, TransformerConfig, TwinConfig

FLOP_CONVENTION = "multiply-accumulates (paper's convention: an L x d by d x d matmul = L*d^2)"


def target_attention_flops(n: int, d: int) -> float:
    """Eq. 20: K, V projections 2 n d^2, scores + weighted sum 2 n d."""
    return 2 * n * d * d + 2 * n * d


def self_attention_flops(n: int, d: int) -> float:
    """Eq. 19: Q, K, V, O projections 4 n d^2, scores + weighted sum 2 n^2 d."""
    return 4 * n * d * d + 2 * n * n * d


def laser_flops_terms(config: LaserConfig, seq_len: int) -> dict[str, float]:
    """LASER's cost by term (eqs. 13-17) at history length ``seq_len``."""
    d, n = config.d, seq_len
    dq = config.heads * config.dq          # d_q of eq. 13 is the total over heads
    n_seg = math.ceil(n / config.window)
    return {
        "sta_projection": n * d * d + n * d * dq,                                   # eq. 13
        "sta_attention": n * dq + n * d,                                            # eq. 14
        "sta_ffn": n_seg * 2 * config.ffn_ratio * d * d if config.sta_ffn else 0,   # eq. 15
        "gsta": config.gsta_layers * (                                              # eq. 17
            2 * config.heads * n_seg * d + 2 * d * d if config.gsta_absorbed else n_seg * (2 * d * d + 2 * d)),
    }


def laser_flops_closed_form(config: LaserConfig, seq_len: int) -> float:
    """Eq. 18: L d^2 (1 + d_q/d + (2r + 2M)/w)."""
    d, dq = config.d, config.heads * config.dq
    return seq_len * d * d * (1 + dq / d + (2 * config.ffn_ratio + 2 * config.gsta_layers) / config.window)


def analytic_flops(name: str, config: ModelConfig, seq_len: int | None = None) -> float:
    """FLOPs (MACs) per (user, candidate) of model ``name`` by the paper's formulas; ``seq_len`` defaults
    to ``config.max_len``."""
    n = config.max_len if seq_len is None else min(seq_len, config.max_len)
    d = config.d
    if name == "laser":
        assert isinstance(config, LaserConfig)
        return float(sum(laser_flops_terms(config, n).values()))
    if name == "din":
        return float(target_attention_flops(n, d))
    if name == "base":
        assert isinstance(config, BaseConfig)
        k = min(n, config.short_len)
        return float(config.self_attention_layers * self_attention_flops(k, d) + target_attention_flops(k, d))
    if name == "twin":
        assert isinstance(config, TwinConfig)
        k = min(n, config.top_k)
        return float(n * d + target_attention_flops(k, d))     # retrieval dot products + TA on top-k
    if name == "transformer":
        assert isinstance(config, TransformerConfig)
        per_layer = self_attention_flops(n, d) + 2 * config.ffn_ratio * n * d * d
        return float(config.layers * per_layer + target_attention_flops(n, d))
    if name == "hstu":
        assert isinstance(config, HstuConfig)
        # f1 (U, V, Q, K: 4 n d^2) + attention (2 n^2 d) + f2 (n d^2), then target attention.
        return float(config.layers * (5 * n * d * d + 2 * n * n * d) + target_attention_flops(n, d))
    raise ValueError(f"no FLOP formula for model {name!r}")


def probe_batch(config: ModelConfig, seq_len: int, candidates: int = 1, batch: int = 1,
                seed: int = 0) -> tuple[HistoryBatch, Candidates]:
    """Random full-length histories (every slot a real event) and candidates for a config."""
    gen = torch.Generator().manual_seed(seed)

    def ids(shape: tuple[int, ...], high: int) -> torch.Tensor:
        return torch.randint(1, max(high, 2), shape, generator=gen)

    request_ms = 10**12
    history = HistoryBatch(
        item_ids=ids((batch, seq_len), config.item_buckets),
        side={k: ids((batch, seq_len), n) for k, n in config.side_fields.items()},
        event_time_ms=request_ms - torch.sort(ids((batch, seq_len), 10**9), dim=1, descending=True).values,
        lengths=torch.full((batch,), seq_len, dtype=torch.int64),
        request_time_ms=torch.full((batch,), request_ms, dtype=torch.int64),
    )
    cands = Candidates(ids((batch, candidates), config.item_buckets),
                       {k: ids((batch, candidates), config.side_fields[k]) for k in config.candidate_side_fields})
    return history, cands


def _count(fn: Any, *args: Any) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


@torch.no_grad()
def measured_flops(model: RankingModel, seq_len: int | None = None) -> dict[str, float]:
    """Count one (user, candidate) pair (B=1, C=1, full history) with ``FlopCounterMode``.

    Returns MACs: ``sequence`` (what the formulas cover), ``head`` (the scoring MLP) and ``total``.
    """
    n = model.config.max_len if seq_len is None else seq_len
    history, cands = probe_batch(model.config, n)
    captured: list[tuple[Any, ...]] = []
    hook = model.head.register_forward_hook(lambda _m, args, _out: captured.append(args))
    try:
        total = _count(model, history, cands) / 2
    finally:
        hook.remove()
    head = _count(model.head, *captured[0]) / 2
    return {"total": total, "head": head, "sequence": total - head}
