"""FLOPs per (user, candidate): the paper's analytic formulas (eqs. 13-20) and a measured count.

Convention: like the paper, a "FLOP" here is one multiply-accumulate (MAC): a d x d projection of L
tokens costs L*d^2. ``torch.utils.flop_counter.FlopCounterMode`` counts 2 per MAC, so measured
figures are its count divided by 2.

Scope (both sides): the sequence modules the formulas cover -- the history- and candidate-side
projections, attention scores, weighted sums, FFNs and layers of each model. Embedding lookups,
LayerNorm, activations and softmax are 0 (the counter does not count elementwise ops either), and the
final scoring MLP (``model.head``) is left out of the measured figure, as the formulas leave it out.
The measured figure also contains the tiny query projections the paper calls negligible (d*d_q, M*d^2).

Per request (:func:`flops_split`, :func:`request_flops`, :func:`measured_request_flops`): a request scores
C candidates for one user, and the serving path (``encode_history`` once, ``score`` over all C) does
the candidate-independent work once. So a request costs ``history + C * per_candidate``: the paper's
per-pair figure is that at C=1, and it hides how each model grows with C. The split names the
per-candidate query projections the per-pair formulas drop (d^2 per target attention), since at
C=500 they are no longer negligible. Models that cache a user representation in storage (VISTA,
LLaTTE) also have ``refresh``: computing the cached summary, paid by the refresh job once per
refresh, not by the request.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import RankingModel
from rankers.models import (
    BaseConfig,
    DinConfig,
    HstuConfig,
    LaserConfig,
    LlatteConfig,
    TransformerConfig,
    TwinConfig,
    VistaConfig,
)
from rankers.models.llatte import trimmed_lengths

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
        assert isinstance(config, DinConfig)
        split = din_flops_split(config, n)   # the per-pair figure leaves out the query-like target block
        return float(sum(split.history.values()) + sum(v for k, v in split.per_candidate.items() if k != "unit_target"))
    if name == "base":
        assert isinstance(config, BaseConfig)
        k = min(n, config.short_len)
        return float(config.self_attention_layers * self_attention_flops(k, d) + target_attention_flops(k, d))
    if name == "twin":
        assert isinstance(config, TwinConfig)
        k = min(n, config.top_k)
        # K of the lifelong history, GSU logits over it, values and weighted sum of the top k.
        return float(n * d * d + n * d + k * d * d + k * d)
    if name == "transformer":
        assert isinstance(config, TransformerConfig)
        per_layer = self_attention_flops(n, d) + 2 * config.ffn_ratio * n * d * d
        return float(config.layers * per_layer + target_attention_flops(n, d))
    if name == "hstu":
        assert isinstance(config, HstuConfig)
        # f1 (U, V, Q, K: 4 n d^2) + attention (2 n^2 d) + f2 (n d^2), then target attention.
        return float(config.layers * (5 * n * d * d + 2 * n * n * d) + target_attention_flops(n, d))
    if name in ("vista", "llatte"):
        # Cached models: one pair computed from the raw history, as ``forward`` does it = refresh (the
        # summary) + history side + one candidate. A request that reads the cache pays only the last two.
        split = flops_split(name, config, n)
        return float(sum(sum(part.values()) for part in (split.refresh, split.history, split.per_candidate)))
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


@dataclass
class FlopSplit:
    """MACs of one request by where they are paid, each a dict of named terms."""

    history: dict[str, float] = field(default_factory=dict)        # once per request
    per_candidate: dict[str, float] = field(default_factory=dict)  # once per (request, candidate)
    refresh: dict[str, float] = field(default_factory=dict)        # once per cache refresh (cached models)

    def totals(self, candidates: int) -> dict[str, float]:
        history, per_candidate = sum(self.history.values()), sum(self.per_candidate.values())
        return {"candidates": candidates, "history_macs": float(history),
                "per_candidate_macs": float(per_candidate),
                "per_request_macs": float(history + candidates * per_candidate),
                "refresh_macs": float(sum(self.refresh.values()))}


def _target_attention_split(n: int, d: int) -> tuple[dict[str, float], dict[str, float]]:
    """Eq. 20 split: K, V of the n tokens once per request; query, scores and weighted sum per candidate."""
    return {"ta_kv_projection": 2.0 * n * d * d}, {"ta_query": float(d * d), "ta_attention": 2.0 * n * d}


def din_flops_split(config: DinConfig, n: int) -> FlopSplit:
    """DIN's activation unit at history length n with hidden widths a_1..a_m: the folded history block
    of the first layer once per request (n d a_1); per candidate its target block (d a_1, like a query
    projection, left out of the per-pair figure), the product block n d a_1, the hidden layers
    n a_i a_{i+1}, the output n a_m and the weighted sum n d."""
    d, widths = config.d, config.attention_hidden
    hidden = sum(a * b for a, b in itertools.pairwise(widths))
    return FlopSplit(history={"unit_history": float(n * d * widths[0])},
                     per_candidate={"unit_target": float(d * widths[0]), "unit_product": float(n * d * widths[0]),
                                    "unit_hidden": float(n * hidden), "unit_out": float(n * widths[-1]),
                                    "weighted_sum": float(n * d)})


def vista_flops_split(config: VistaConfig, n: int) -> FlopSplit:
    """VISTA at history length n: the refresh job summarises n events into S tokens (per round: query
    projection S d^2, K/V 2 n d^2, scores + weighted sum 2 S n d, FFN 2 r S d^2); a request projects the
    S cached tokens and R = min(recent_len, n) newest events to K/V once; each candidate runs one target
    attention over the S + R tokens."""
    d, s, rounds = config.d, config.summary_tokens, config.summary_layers
    m = s + min(config.recent_len, n)
    return FlopSplit(
        history={"ta_kv_projection": 2.0 * m * d * d},
        per_candidate={"ta_query": float(d * d), "ta_attention": 2.0 * m * d},
        refresh={"summary_query": float(rounds * s * d * d), "summary_kv_projection": 2.0 * rounds * n * d * d,
                 "summary_attention": 2.0 * rounds * s * n * d,
                 "summary_ffn": 2.0 * rounds * config.summary_ffn_ratio * s * d * d})


def llatte_flops_split(config: LlatteConfig, n: int) -> FlopSplit:
    """LLaTTE at history length n. Refresh: the user encoder's self-attention layers over n events, then
    pooling with P queries. Online layer l reads k_l = min(ceil(online_len trim^l), n) tokens: K/V of
    them and of the P user tokens once per request, plus queries, attention, W_o and FFN for only the
    q_l = k_{l+1} tokens the next layer keeps (0 after the last layer); per candidate and layer: query,
    W_o and FFN (2 + 2r) d^2 and attention over k_l + P keys 2 (k_l + P) d."""
    d, p, r = config.d, config.user_tokens, config.ffn_ratio
    kept = [min(k, n) for k in trimmed_lengths(config)]
    queries = [*kept[1:], 0]
    return FlopSplit(
        history={"online_kv_projection": 2.0 * sum(kept) * d * d,
                 "online_user_kv_projection": 2.0 * len(kept) * p * d * d,
                 "online_self_attention": float(sum((2 + 2 * r) * q * d * d + 2 * q * k * d
                                                    for q, k in zip(queries, kept, strict=True)))},
        per_candidate={"online_query_out_ffn": float(len(kept) * (2 + 2 * r) * d * d),
                       "online_target_attention": float(sum(2 * (k + p) * d for k in kept))},
        refresh={"encoder": float(config.encoder_layers * (self_attention_flops(n, d) + 2 * r * n * d * d)),
                 "pool_query": float(p * d * d), "pool_kv_projection": 2.0 * n * d * d,
                 "pool_attention": 2.0 * p * n * d})


def flops_split(name: str, config: ModelConfig, seq_len: int | None = None) -> FlopSplit:
    """The analytic per-request split of model ``name`` at history length ``seq_len`` (default
    ``config.max_len``): history-side terms, per-candidate terms and, for cached models, refresh terms.
    At C=1, history + per_candidate is :func:`analytic_flops` plus the per-candidate query projections."""
    n = config.max_len if seq_len is None else min(seq_len, config.max_len)
    d = config.d
    if name == "laser":
        assert isinstance(config, LaserConfig)
        terms = laser_flops_terms(config, n)
        dq = config.heads * config.dq
        return FlopSplit(history={"sta_projection": terms["sta_projection"]},
                         per_candidate={"sta_query": float(d * dq), "sta_attention": terms["sta_attention"],
                                        "sta_ffn": terms["sta_ffn"], "gsta": terms["gsta"],
                                        "gsta_query": float(config.gsta_layers * d * d)})
    if name == "din":
        assert isinstance(config, DinConfig)
        return din_flops_split(config, n)
    if name in ("transformer", "hstu", "base"):
        k = min(n, config.short_len) if isinstance(config, BaseConfig) else n
        history, per_candidate = _target_attention_split(k, d)
        if isinstance(config, TransformerConfig):
            history["encoder"] = float(config.layers * (self_attention_flops(k, d) + 2 * config.ffn_ratio * k * d * d))
        elif isinstance(config, HstuConfig):
            history["encoder"] = float(config.layers * (5 * k * d * d + 2 * k * k * d))
        elif isinstance(config, BaseConfig):
            history["encoder"] = float(config.self_attention_layers * self_attention_flops(k, d))
        return FlopSplit(history=history, per_candidate=per_candidate)
    if name == "twin":
        assert isinstance(config, TwinConfig)
        k = min(n, config.top_k)
        # K is shared and candidate-independent; the top-k set depends on the candidate, so its values
        # are per candidate. The ESU reuses the GSU logits of the picked events.
        return FlopSplit(history={"gsu_key_projection": float(n * d * d)},
                         per_candidate={"esu_query": float(d * d), "gsu_logits": float(n * d),
                                        "esu_value_projection": float(k * d * d), "esu_weighted_sum": float(k * d)})
    if name == "vista":
        assert isinstance(config, VistaConfig)
        return vista_flops_split(config, n)
    if name == "llatte":
        assert isinstance(config, LlatteConfig)
        return llatte_flops_split(config, n)
    raise ValueError(f"no FLOP formula for model {name!r}")


def request_flops(name: str, config: ModelConfig, candidates: int, seq_len: int | None = None) -> dict[str, float]:
    """Analytic MACs of one request with ``candidates`` candidates: history_macs, per_candidate_macs,
    per_request_macs (= history + C * per_candidate) and refresh_macs."""
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    return flops_split(name, config, seq_len).totals(candidates)


@torch.no_grad()
def measured_request_flops(model: RankingModel, candidates: int, seq_len: int | None = None) -> dict[str, float]:
    """Counted MACs of one request (B=1, full history, ``candidates`` candidates) the way serving runs it:
    the history side once, then ``score`` over all candidates. Returns history_macs, per_candidate_macs
    (the score's count / C, scoring MLP excluded), head_per_candidate_macs, per_request_macs and
    refresh_macs (a cached model's ``summarize``; 0 for the others)."""
    n = model.config.max_len if seq_len is None else seq_len
    history, cands = probe_batch(model.config, n, candidates=candidates)
    refresh = 0.0
    if hasattr(model, "summarize") and hasattr(model, "encode_cached"):
        cache = model.summarize(history)
        refresh = _count(model.summarize, history) / 2
        history_macs = _count(model.encode_cached, cache, history) / 2
        encoded = model.encode_cached(cache, history)
    else:
        history_macs = _count(model.encode_history, history) / 2
        encoded = model.encode_history(history)
    captured: list[tuple[Any, ...]] = []
    hook = model.head.register_forward_hook(lambda _m, args, _out: captured.append(args))
    try:
        score = _count(model.score, encoded, cands) / 2
    finally:
        hook.remove()
    head = _count(model.head, *captured[0]) / 2
    per_candidate = (score - head) / candidates
    return {"candidates": candidates, "history_macs": history_macs, "per_candidate_macs": per_candidate,
            "head_per_candidate_macs": head / candidates,
            "per_request_macs": history_macs + candidates * per_candidate, "refresh_macs": refresh}
