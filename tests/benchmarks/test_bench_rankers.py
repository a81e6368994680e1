"""Ranking-model serving speed at the paper's setting (d=128, CPU unless RANKERS_BENCH_DEVICE=cuda).

Sizes: RANKERS_BENCH_L (default 1000 events), RANKERS_BENCH_C (default 100 candidates per request;
the issue's figure is C=500). Run: ``tox -e perf -- -k rankers`` or
``pytest tests/benchmarks/test_bench_rankers.py --benchmark-enable``.
Targets (checked only when benchmarking is enabled): sharing the history-side projections across
candidates beats one forward per candidate by >= 1.5x, and for ONE (user, candidate) pair LASER is
faster than the Transformer baseline (the paper's claim: ~9x fewer FLOPs per pair). With many
candidates per request no such target holds: the Transformer's self-attention is candidate-independent
and runs once per request, while LASER's FFN and GSTA run per candidate (see the closing note).
"""

from __future__ import annotations

import os

import pytest
import torch

from rankers.registry import MODEL_NAMES, build_model, make_config
from rankers.serving import make_request, resolve_device

SEQ_LEN = int(os.environ.get("RANKERS_BENCH_L", "1000"))
CANDIDATES = int(os.environ.get("RANKERS_BENCH_C", "100"))
DEVICE, _ = resolve_device(os.environ.get("RANKERS_BENCH_DEVICE", "cpu"))
MIN_SHARING_SPEEDUP = 1.5
_medians: dict[str, float] = {}


def _paper_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, make_config(name, paper=True, max_len=SEQ_LEN, item_buckets=10_000)).eval().to(DEVICE)


def _serve(model, history, cands):
    with torch.inference_mode():
        out = model(history, cands)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bench_request(benchmark, name: str) -> None:
    """One request: a user's L-event history against C candidates."""
    model = _paper_model(name)
    history, cands = make_request(model, SEQ_LEN, CANDIDATES, DEVICE)
    logits = benchmark.pedantic(_serve, args=(model, history, cands), rounds=5, iterations=1, warmup_rounds=1)
    assert logits.shape == (1, CANDIDATES) and torch.isfinite(logits).all()
    if not benchmark.disabled:
        _medians[name] = benchmark.stats.stats.median
        benchmark.extra_info["candidates_per_s"] = CANDIDATES / benchmark.stats.stats.median


@pytest.mark.parametrize("name", ["transformer", "laser"])
def test_bench_single_pair(benchmark, name: str) -> None:
    """One user, one candidate: the setting of the paper's FLOPs-per-pair comparison."""
    model = _paper_model(name)
    history, cands = make_request(model, SEQ_LEN, 1, DEVICE)
    benchmark.pedantic(_serve, args=(model, history, cands), rounds=10, iterations=1, warmup_rounds=1)
    if not benchmark.disabled:
        _medians[f"pair-{name}"] = benchmark.stats.stats.median
        if name == "laser":
            assert _medians["pair-laser"] < _medians["pair-transformer"], _medians


def test_bench_laser_one_forward_per_candidate(benchmark) -> None:
    """The unshared path: each (user, candidate) pair scored alone, recomputing the history side."""
    model = _paper_model("laser")
    history, cands = make_request(model, SEQ_LEN, CANDIDATES, DEVICE)

    def looped() -> list[torch.Tensor]:
        return [_serve(model, history, cands.select(cols=slice(j, j + 1))) for j in range(CANDIDATES)]

    benchmark.pedantic(looped, rounds=3, iterations=1, warmup_rounds=1)
    if not benchmark.disabled:
        shared = _medians.get("laser")
        if shared is not None:
            speedup = benchmark.stats.stats.median / shared
            benchmark.extra_info["sharing_speedup"] = speedup
            assert speedup >= MIN_SHARING_SPEEDUP, f"sharing saves only {speedup:.2f}x"
