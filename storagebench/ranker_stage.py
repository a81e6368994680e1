"""The ranker side of an end-to-end request: wire payloads -> model inputs -> device -> scores -> top k.

One :class:`RankerStage` holds one model on one device. Each step is a separate call so the e2e
driver can time it: :meth:`decode` (decompress, parse, build the left-padded history and the
candidate tensors on the host), :meth:`to_device` (host-to-device copy, synchronised on CUDA) and
:meth:`forward_topk` (history encoded once per request and shared by its C candidates, then top k,
copied back to the host). The same code runs on CPU and CUDA; on CPU the copy is a no-op.

Models that cache a user summary in storage (VISTA, LLaTTE: those with ``summarize`` and
``encode_cached``) read two things per request: the user's cached vector (an entry of
:mod:`seqvault.vectors`, dequantised in :meth:`decode`) and the newest ``seq_len`` events; their
summary is computed from ``history_len`` events by the refresh job (:meth:`summarize_csr`).

Models are freshly initialised (untrained): serving latency does not depend on the weights' values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqvault.schema import Schema
from storagebench import wire

TORCH_MISSING = "the e2e ranker needs PyTorch: pip install storagebench[rankers]"

# Per model: the serving config next to the paper setting (d=128, heads 2), as serve-bench uses.
# LASER's gsta_absorbed is its serving optimisation (same outputs, fewer FLOPs per candidate).
SERVING_OVERRIDES: dict[str, dict[str, Any]] = {"laser": {"gsta_absorbed": True}}
# Cached models: the config field that holds the events read online (the rest come through the cache).
ONLINE_LENGTH_FIELD: dict[str, str] = {"vista": "recent_len", "llatte": "online_len"}


def import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(TORCH_MISSING) from e
    return torch


@dataclass
class Features:
    """One batch on the host or the device: histories [B, L] and candidates [B, C]."""

    history: Any
    candidates: Any
    cache: Any = None        # cached models: [B, *cache_shape] dequantised summaries
    cold: int = 0            # requests of the batch whose user had no cached vector (zeros used)


class RankerStage:
    """One model on one device, serving batches of requests."""

    def __init__(self, model_name: str, seq_len: int, schema: Schema, wire_format: str, codec: str,
                 dictionary: Any = None, *, device: str = "auto", seed: int = 0, history_len: int | None = None,
                 vector_dtype: str = "fp16", dtype: str = "fp32", compiled: bool = False) -> None:
        torch = import_torch()
        from rankers.registry import build_model, make_config
        from rankers.serving import DTYPES, resolve_device

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")

        self.torch = torch
        self.device, self.device_note = resolve_device(device)
        torch.manual_seed(seed)  # same seed, same weights: the tests score the same model directly
        self.cached = model_name in ONLINE_LENGTH_FIELD
        self.history_len = history_len or seq_len
        lengths = ({"max_len": self.history_len, ONLINE_LENGTH_FIELD[model_name]: seq_len} if self.cached
                   else {"max_len": seq_len})
        config = make_config(model_name, paper=True, **lengths, **SERVING_OVERRIDES.get(model_name, {}))
        self.model = build_model(model_name, config).eval().to(self.device, DTYPES[dtype])
        self.dtype, self.model_dtype = dtype, DTYPES[dtype]
        # torch.compile needs a working compiler toolchain; the first failing call falls back to eager.
        self.compiled, self.compile_note = compiled, None
        self._score = torch.compile(self._score_eager, dynamic=True) if compiled else self._score_eager
        self.model_name, self.seq_len, self.config = model_name, seq_len, config
        self.vector_dtype = vector_dtype
        self.cache_shape: tuple[int, ...] = tuple(self.model.cache_shape()) if self.cached else ()
        self.vector_dim = int(np.prod(self.cache_shape)) if self.cached else 0
        self.schema, self.wire_format, self.codec = schema, wire_format, codec
        self._decompressor = wire.decompressor(codec, dictionary)
        self.side_fields = tuple(config.side_fields)
        self.candidate_fields = tuple(config.candidate_side_fields)

    def set_dictionary(self, dictionary: Any) -> None:
        """The zstd dictionary the wire payloads are compressed with (trained after the stage is built)."""
        self._decompressor = wire.decompressor(self.codec, dictionary)

    def decode(self, payloads: Sequence[bytes], request_time_ms: np.ndarray,
               cand_items: np.ndarray, cand_side: dict[str, np.ndarray],
               vectors: Sequence[bytes | None] | None = None) -> Features:
        """Wire payloads of a batch (one per request; for cached models also each user's vector entry
        or None) -> host tensors (decompression, parsing, dequantisation, feature building)."""
        from rankers.inputs import candidates_from_numpy, history_from_csr

        per_user = []
        for p in payloads:
            raw = p if self._decompressor is None else self._decompressor.decompress(p)
            per_user.append(wire.decode(raw, self.schema, self.wire_format))
        offsets = np.zeros(len(per_user) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(c[self.schema.time_field]) for c in per_user])
        needed = ("item_id", self.schema.time_field, *self.side_fields)
        columns = {k: np.concatenate([c[k] for c in per_user]) for k in needed}
        # A summary-only model (N=0) still gets a 1-slot, all-padding history: the batch shape needs one.
        history = history_from_csr(offsets, columns, max_len=max(self.seq_len, 1), request_time_ms=request_time_ms,
                                   time_field=self.schema.time_field, side_fields=self.side_fields)
        cands = candidates_from_numpy(cand_items, {k: cand_side[k] for k in self.candidate_fields})
        if not self.cached:
            return Features(history, cands)
        cache, cold = self.decode_vectors(vectors if vectors is not None else [None] * len(payloads))
        return Features(history, cands, cache, cold)

    def decode_vectors(self, entries: Sequence[bytes | None]) -> tuple[Any, int]:
        """Vector entries (None: the user has none yet) -> ([B, *cache_shape] float32, users without one)."""
        from seqvault.vectorcodec import decode_entries
        from seqvault.vectors import entry_checksums

        out = np.zeros((len(entries), self.vector_dim), dtype=np.float32)
        present = [i for i, e in enumerate(entries) if e]
        if present:
            _, _, vecs = decode_entries(b"".join(entries[i] for i in present), self.vector_dim, self.vector_dtype,
                                        checksum=entry_checksums)
            out[present] = vecs
        return self.torch.from_numpy(out).view(len(entries), *self.cache_shape), len(entries) - len(present)

    def summarize_csr(self, offsets: np.ndarray, columns: dict[str, np.ndarray],
                      request_time_ms: np.ndarray) -> np.ndarray:
        """The refresh job's step: users' stored histories (CSR, up to ``history_len`` events each) ->
        their summaries as float32 rows of ``vector_dim`` values, what the store caches."""
        from rankers.inputs import history_from_csr

        history = history_from_csr(offsets, columns, max_len=self.history_len, request_time_ms=request_time_ms,
                                   time_field=self.schema.time_field, side_fields=self.side_fields)
        with self.torch.inference_mode():
            cache = self.model.summarize(history.to(self.device))
        return cache.float().reshape(len(offsets) - 1, -1).cpu().numpy()

    def to_device(self, feats: Features) -> Features:
        """Host-to-device copy of a batch (returns at once on CPU, where the tensors already are)."""
        out = Features(feats.history.to(self.device), feats.candidates.to(self.device),
                       None if feats.cache is None else feats.cache.to(self.device, self.model_dtype), feats.cold)
        self.synchronize()
        return out

    def forward_topk(self, feats: Features, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Score every candidate, keep the k best per request: (indices [B, k], scores [B, k]) on the host."""
        with self.torch.inference_mode():
            try:
                scores = self._score(feats)
            except Exception as exc:   # only a compiled call can fail here and not fail eager too
                if self._score == self._score_eager:
                    raise
                self.compile_note = f"torch.compile failed ({type(exc).__name__}: {exc}); ran eager instead"
                self._score, self.compiled = self._score_eager, False
                scores = self._score(feats)
            top = self.torch.topk(scores, min(k, scores.shape[1]), dim=1)
            idx, val = top.indices.cpu().numpy(), top.values.float().cpu().numpy()  # .cpu() synchronises
        return idx, val

    def _score_eager(self, feats: Features) -> Any:
        if self.cached:
            return self.model.score(self.model.encode_cached(feats.cache, feats.history), feats.candidates)
        return self.model(feats.history, feats.candidates)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict

        torch = self.torch
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"model": self.model_name, "device": str(self.device), "device_name": name,
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "weights": "untrained (random init): latency does not depend on the weights' values",
                "model_config": asdict(self.config), "device_note": self.device_note,
                "cached": self.cached, "history_len": self.history_len, "dtype": self.dtype,
                "compiled": self.compiled, "compile_note": self.compile_note,
                **({"cache_shape": list(self.cache_shape), "vector_dtype": self.vector_dtype} if self.cached else {})}
