"""Serving benchmark: one request = one user's history scored against C candidates.

``encode_history`` runs once per request and its keys/values are shared by all C candidates (the
serving path); :func:`shared_vs_unshared` measures what that sharing saves against scoring each
(user, candidate) pair on its own. Latencies are wall-clock per request, synchronised on GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from rankers.flops import probe_batch
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import RankingModel
from rankers.registry import build_model, make_config

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class ServingResult:
    model: str
    device: str
    dtype: str
    compiled: bool
    seq_len: int
    candidates: int
    samples: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    requests_per_s: float
    candidates_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str) -> tuple[torch.device, str | None]:
    """``"auto"`` -> CUDA when present, else CPU. Asking for CUDA without one falls back to CPU with a note."""
    if device in ("auto", "cuda") or device.startswith("cuda:"):
        if torch.cuda.is_available():
            return torch.device("cuda" if device == "auto" else device), None
        note = None if device == "auto" else f"{device} requested but torch.cuda.is_available() is False: ran on CPU"
        return torch.device("cpu"), note
    return torch.device(device), None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable[[], Any], device: torch.device, *, warmup: int = 1, min_samples: int = 3,
               max_samples: int = 50, budget_s: float = 2.0) -> np.ndarray:
    """Latencies in ms of ``call``: ``warmup`` untimed calls, then at least ``min_samples`` and at most
    ``max_samples``, stopping once ``budget_s`` of timed calls have run."""
    for _ in range(warmup):
        call()
    _synchronize(device)
    latencies: list[float] = []
    spent = 0.0
    while len(latencies) < max_samples and (len(latencies) < min_samples or spent < budget_s):
        start = time.perf_counter()
        call()
        _synchronize(device)
        elapsed = time.perf_counter() - start
        latencies.append(elapsed * 1000.0)
        spent += elapsed
    return np.asarray(latencies)


def make_request(model: RankingModel, seq_len: int, candidates: int, device: torch.device,
                 seed: int = 0) -> tuple[HistoryBatch, Candidates]:
    history, cands = probe_batch(model.config, seq_len, candidates=candidates, seed=seed)
    return history.to(device), cands.to(device)


def request_fn(model: RankingModel, history: HistoryBatch, cands: Candidates,
               compiled: bool = False) -> Callable[[], torch.Tensor]:
    """A zero-argument call that serves one request (history side once, then all candidates)."""
    forward = torch.compile(model, dynamic=False) if compiled else model

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return forward(history, cands)

    return call


def serving_grid(model_name: str = "laser", seq_lens: Sequence[int] = (500, 1000, 2000, 4000),
                 candidate_counts: Sequence[int] = (1, 100, 500), *, device: str = "cpu", dtype: str = "fp32",
                 compiled: bool = False, paper_setting: bool = True, budget_s: float = 2.0,
                 max_samples: int = 50, config_overrides: dict[str, Any] | None = None,
                 on_cell: Callable[[ServingResult], None] | None = None) -> tuple[list[ServingResult], list[str]]:
    """Requests/s and latency p50/p99 for every (L, C). Returns the results and notes (fallbacks)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    dev, note = resolve_device(device)
    notes = [note] if note else []
    results: list[ServingResult] = []
    for seq_len in seq_lens:
        config = make_config(model_name, paper=paper_setting, **{**(config_overrides or {}), "max_len": seq_len})
        model = build_model(model_name, config).eval().to(dev, DTYPES[dtype])
        for count in candidate_counts:
            history, cands = make_request(model, seq_len, count, dev)
            call = request_fn(model, history, cands, compiled)
            try:
                lat = time_calls(call, dev, warmup=2 if compiled else 1, budget_s=budget_s,
                                 max_samples=max_samples)
            except Exception as exc:   # torch.compile needs a working toolchain; say so and run eager
                if not compiled:
                    raise
                notes.append(f"torch.compile failed ({type(exc).__name__}: {exc}); ran eager instead")
                compiled = False
                lat = time_calls(request_fn(model, history, cands), dev, budget_s=budget_s,
                                 max_samples=max_samples)
            mean = float(lat.mean())
            result = ServingResult(model_name, str(dev), dtype, compiled, seq_len, count, len(lat),
                                   float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), mean,
                                   1000.0 / mean, 1000.0 * count / mean)
            results.append(result)
            if on_cell is not None:
                on_cell(result)
    return results, notes


def shared_vs_unshared(model: RankingModel, seq_len: int, candidates: int, *, device: str = "cpu",
                       budget_s: float = 2.0) -> dict[str, float]:
    """Median ms per request three ways: ``shared`` (history side once, C candidates batched),
    ``unshared_batched`` (the history repeated per candidate: C independent pairs in one batch) and
    ``looped`` (C separate single-pair forwards)."""
    dev, _ = resolve_device(device)
    model = model.eval().to(dev)
    history, cands = make_request(model, seq_len, candidates, dev)
    repeated = history.select(torch.zeros(candidates, dtype=torch.long, device=dev))
    per_pair = Candidates(cands.item_ids.reshape(candidates, 1), {k: v.reshape(candidates, 1)
                                                                  for k, v in cands.side.items()})

    def looped() -> list[torch.Tensor]:
        with torch.inference_mode():
            return [model(history, cands.select(cols=slice(j, j + 1))) for j in range(candidates)]

    timings = {
        "shared": time_calls(request_fn(model, history, cands), dev, budget_s=budget_s, max_samples=20),
        "unshared_batched": time_calls(request_fn(model, repeated, per_pair), dev, budget_s=budget_s,
                                       max_samples=20),
        "looped": time_calls(looped, dev, budget_s=budget_s, min_samples=2, max_samples=5),
    }
    out = {f"{k}_ms": float(np.median(v)) for k, v in timings.items()}
    out["speedup_vs_unshared_batched"] = out["unshared_batched_ms"] / out["shared_ms"]
    out["speedup_vs_looped"] = out["looped_ms"] / out["shared_ms"]
    return out


def format_results(results: Iterable[ServingResult]) -> list[str]:
    """One plain-text line per cell (for logs and closing notes)."""
    return [f"{r.model} {r.device} {r.dtype}{' compiled' if r.compiled else ''} L={r.seq_len:<5d} C={r.candidates:<4d} "
            f"p50={r.p50_ms:9.2f} ms  p99={r.p99_ms:9.2f} ms  {r.requests_per_s:9.1f} req/s  "
            f"{r.candidates_per_s:11.0f} cand/s  (n={r.samples})" for r in results]
