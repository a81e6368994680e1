"""LASER pinned to an independent, plain-torch reference written from the paper (sections 3.4-3.5).

The reference below reads only the model's parameter tensors (``model.sta.query.weight`` ...) and the
embedded tokens H and target t (``model.embed``, the paper's section 3.4.1 input). It never calls the
model's own STA / GSTA / head code: every equation is an explicit loop over users, candidates, segments,
heads and layers, and it only ever sees a user's REAL events (no padding at all), so agreeing with the
model also proves the model's masking. The model runs the vectorised path (eqs. 8-12); intermediate
features are captured with forward hooks (GSTA input H' and output z, the head's fused input).

Conventions pinned here (the code's documented choices where the paper is silent or differs):
  * eq. 3: segments are counted from the NEWEST event back (the history is left-padded to a multiple of
    w), so the newest segment is full and only the oldest may be partial; all-padding segments are
    invalid (zero, excluded from GSTA and max-pool).
  * eqs. 4-5: h heads, each with its own d_q-dim Q/K slice and d/h-dim V slice; gamma = sqrt(d_q)
    (per-head key dim) unless configured; padded tokens get gate 0.
  * eq. 6: s_i = LN(FFN(s_i) + s_i), FFN = Linear(d, r d) -> exact GELU -> Linear(r d, d).
  * eq. 7: softmax target attention per head scaled by sqrt(d/h) (the code's multi-head reading of the
    paper's sqrt(d)), no output projection, t_l = t_{l-1} + o_l, z = t_M.
  * fusion: [z, t, z*t, max_pool(valid H'), newest r segments oldest->newest, zero-filled at the front].
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rankers.inputs import Candidates, HistoryBatch
from rankers.models.laser import Laser, LaserConfig

D, HEADS, DQ, W, R = 16, 2, 4, 5, 3
SIDE = {"action": 5, "scenario": 3, "category": 11}
TOL: dict[str, float] = {"rtol": 1e-10, "atol": 1e-10}


# ----------------------------------------------------------------------------------------------------
# model, inputs and hooks
# ----------------------------------------------------------------------------------------------------

def make_model(max_len: int = 40, seed: int = 0, **overrides: Any) -> Laser:
    cfg = {"d": D, "heads": HEADS, "dq": DQ, "window": W, "recent_segments": R, "gsta_layers": 2,
           "item_buckets": 97, "side_fields": dict(SIDE), "mlp_hidden": (16,), "max_len": max_len, **overrides}
    torch.manual_seed(seed)
    model = Laser(LaserConfig(**cfg)).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # LayerNorm starts at weight 1 / bias 0: randomise it so its affine is pinned too
        if model.sta.norm is not None:
            model.sta.norm.weight.copy_(1 + 0.3 * torch.randn(D, generator=g, dtype=torch.float64))
            model.sta.norm.bias.copy_(0.2 * torch.randn(D, generator=g, dtype=torch.float64))
        model.sta.query.weight.mul_(3.0)   # scores of order 1, so gamma and the gate shape matter visibly
    return model


def make_batch(lengths: list[int], seq_len: int, candidates: int = 3, seed: int = 0) -> tuple[HistoryBatch, Candidates]:
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    valid = torch.arange(seq_len)[None, :] >= (seq_len - lengths_t)[:, None]

    def field(high: int) -> torch.Tensor:
        return torch.randint(1, high, (b, seq_len), generator=g) * valid

    times = 10**9 - torch.arange(seq_len).flip(0)[None, :].expand(b, seq_len) * 60_000 * 7
    history = HistoryBatch(field(1000), {k: field(n) for k, n in SIDE.items()}, times * valid, lengths_t,
                           torch.full((b,), 10**9 + 1000))
    cands = Candidates(torch.randint(1, 1000, (b, candidates), generator=g),
                       {"category": torch.randint(1, 11, (b, candidates), generator=g)})
    return history, cands


class Capture:
    """Forward hooks recording GSTA's inputs (target, H', segment mask) and output z, and the head input."""

    def __init__(self, model: Laser) -> None:
        self.gsta_args: tuple[torch.Tensor, ...] = ()
        self.z = torch.empty(0)
        self.features = torch.empty(0)
        self.logits = torch.empty(0)

        def on_gsta(_m: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
            self.gsta_args = (*args, *kwargs.values())
            self.z = out

        def on_head(_m: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
            self.features = (*args, *kwargs.values())[0]
            self.logits = out

        self.handles = [model.gsta.register_forward_hook(on_gsta, with_kwargs=True),
                        model.head.register_forward_hook(on_head, with_kwargs=True)]

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *_exc: object) -> None:
        for h in self.handles:
            h.remove()


def run_model(model: Laser, history: HistoryBatch, cands: Candidates) -> Capture:
    with Capture(model) as cap, torch.no_grad():
        model(history, cands)
    return cap


# ----------------------------------------------------------------------------------------------------
# the independent reference (explicit loops, plain torch, parameters only)
# ----------------------------------------------------------------------------------------------------

def ref_gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def ref_layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ref_split_seq(real: torch.Tensor, w: int) -> list[torch.Tensor]:
    """Eq. 3 on a user's real events [n, d] (oldest first): segments of w from the newest back, returned
    oldest -> newest; only the oldest may be shorter than w."""
    n = real.shape[0]
    segments = []
    end = n
    while end > 0:
        segments.append(real[max(0, end - w):end])
        end -= w
    return segments[::-1]


def ref_sta_segment(model: Laser, t: torch.Tensor, seg: torch.Tensor, gamma: float, activation: str,
                    ffn: bool, layernorm: bool) -> torch.Tensor:
    """Eqs. 4-6 for one segment S_i [n_i, d] and one target t [d] -> s_i [d]."""
    c = model.config
    wq, wk, wv = model.sta.query.weight, model.sta.key.weight, model.sta.value.weight   # [h dq, d] ... [d, d]
    dv = c.d // c.heads
    parts = []
    for head in range(c.heads):
        q = wq[head * c.dq:(head + 1) * c.dq] @ t                   # Q = t W_q        [dq]
        k = seg @ wk[head * c.dq:(head + 1) * c.dq].T               # K = S_i W_k      [n_i, dq]
        v = seg @ wv[head * dv:(head + 1) * dv].T                   # V = S_i W_v      [n_i, d/h]
        scores = (k @ q) / gamma                                    # Q K^T / gamma    [n_i]
        gate = torch.sigmoid(scores) if activation == "sigmoid" else torch.softmax(scores, dim=0)
        parts.append(gate @ v)                                      # eq. 5
    s = torch.cat(parts)
    if ffn:                                                         # eq. 6
        f = model.sta.ffn
        s = f[2].weight @ ref_gelu(f[0].weight @ s + f[0].bias) + f[2].bias + s
    if layernorm:
        n = model.sta.norm
        s = ref_layernorm(s, n.weight, n.bias, n.eps)
    return s


def ref_gsta(model: Laser, t: torch.Tensor, segments: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 7: M layers, t_l = t_{l-1} + o_l over the valid segment tokens H' (list of [d])."""
    c = model.config
    hd = c.d // c.heads
    for layer in model.gsta.layers:
        if not segments:          # nothing to attend to: o_l = 0
            continue
        h_prime = torch.stack(segments)                             # [L'_valid, d]
        o = []
        for head in range(c.heads):
            rows = slice(head * hd, (head + 1) * hd)
            q = layer.query.weight[rows] @ t
            k = h_prime @ layer.key.weight[rows].T
            v = h_prime @ layer.value.weight[rows].T
            a = torch.softmax((k @ q) / math.sqrt(hd), dim=0)
            o.append(a @ v)
        t = t + torch.cat(o)
    return t


def ref_user(model: Laser, real: torch.Tensor, t: torch.Tensor, *, gamma: float | None = None,
             activation: str | None = None, ffn: bool | None = None, layernorm: bool | None = None) -> dict[str, Any]:
    """Everything for one (user, candidate): real [n, d] tokens, t [d]."""
    c = model.config
    gamma = gamma if gamma is not None else (c.gamma if c.gamma is not None else math.sqrt(c.dq))
    activation = activation or c.sta_activation
    ffn = c.sta_ffn if ffn is None else ffn
    layernorm = c.sta_layernorm if layernorm is None else layernorm
    segments = [ref_sta_segment(model, t, s, gamma, activation, ffn, layernorm) for s in ref_split_seq(real, c.window)]
    z = ref_gsta(model, t, segments)
    features = [z, t, z * t]
    if c.fusion:
        features.append(torch.stack(segments).amax(0) if segments else torch.zeros_like(t))
        recent = segments[-c.recent_segments:]
        recent = [torch.zeros_like(t)] * (c.recent_segments - len(recent)) + recent
        features.extend(recent)
    return {"segments": segments, "z": z, "features": torch.cat(features)}


def ref_head(model: Laser, features: torch.Tensor) -> torch.Tensor:
    x = features
    linears = [m for m in model.head.mlp if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(linears):
        x = lin.weight @ x + lin.bias
        if i < len(linears) - 1:
            x = torch.relu(x)
    return x[0]


def reference(model: Laser, history: HistoryBatch, cands: Candidates, **kw: Any) -> dict[str, Any]:
    """Per-user references on real events only, laid out like the model's tensors (segment j of n_seg)."""
    with torch.no_grad():
        tokens, mask = model.embed.history(history)
        target = model.embed.candidates(cands)
        b, n, d = tokens.shape
        n_seg = -(-n // model.config.window)
        out: dict[str, Any] = {
            "segments": torch.zeros(b, target.shape[1], n_seg, d, dtype=tokens.dtype),
            "seg_mask": torch.zeros(b, n_seg, dtype=torch.bool),
            "z": torch.zeros_like(target), "features": [], "logits": torch.zeros(target.shape[:2], dtype=tokens.dtype),
            "target": target, "tokens": tokens, "mask": mask,
        }
        feats = []
        for i in range(b):
            real = tokens[i][mask[i]]
            row = []
            for j in range(target.shape[1]):
                r = ref_user(model, real, target[i, j], **kw)
                k = len(r["segments"])
                if k:
                    out["segments"][i, j, n_seg - k:] = torch.stack(r["segments"])
                out["seg_mask"][i, n_seg - k:] = True
                out["z"][i, j] = r["z"]
                out["logits"][i, j] = ref_head(model, r["features"])
                row.append(r["features"])
            feats.append(torch.stack(row))
        out["features"] = torch.stack(feats)
    return out


LENGTHS = [0, 1, 4, 5, 9, 12, 17]   # empty, single event, partial/full segment, fewer than r segments, ...


def batch_for(seq_len: int) -> tuple[HistoryBatch, Candidates]:
    return make_batch([min(n, seq_len) for n in [*LENGTHS, seq_len]], seq_len)


# ----------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seq_len", [23, 25, 7, 3])
def test_eq9_global_keys_values_left_padded_to_multiple_of_w(seq_len: int) -> None:
    """encode_history = K = H W_k, V = H W_v over the whole history, zero-padded at the FRONT to Lp."""
    model = make_model()
    history, _ = batch_for(seq_len)
    with torch.no_grad():
        enc = model.encode_history(history)
        tokens, mask = model.embed.history(history)
    pad = (-seq_len) % W
    lp = seq_len + pad
    assert lp % W == 0 and enc.keys.shape == (len(LENGTHS) + 1, lp, HEADS, DQ)
    assert enc.values.shape == (len(LENGTHS) + 1, lp, HEADS, D // HEADS)
    assert torch.equal(enc.mask[:, :pad], torch.zeros_like(enc.mask[:, :pad]))
    assert torch.equal(enc.mask[:, pad:], mask)
    assert torch.equal(enc.mask.sum(1), history.lengths)
    keys = torch.einsum("bld,kd->blk", tokens, model.sta.key.weight).view(-1, seq_len, HEADS, DQ)
    values = torch.einsum("bld,kd->blk", tokens, model.sta.value.weight).view(-1, seq_len, HEADS, D // HEADS)
    torch.testing.assert_close(enc.keys[:, pad:], keys, **TOL)
    torch.testing.assert_close(enc.values[:, pad:], values, **TOL)
    assert not enc.keys[:, :pad].any() and not enc.values[:, :pad].any()


@pytest.mark.parametrize("seq_len", [23, 25, 40, 7])
def test_eq3_segments_counted_from_the_newest_event(seq_len: int) -> None:
    """L' = ceil(L / w) segments; a user with n events has exactly the newest ceil(n / w) valid, and the
    segment tokens equal the reference that splits the REAL events from the newest back."""
    model = make_model()
    history, cands = batch_for(seq_len)
    cap, ref = run_model(model, history, cands), reference(model, history, cands)
    _target, segments, seg_mask = cap.gsta_args
    assert segments.shape[2] == -(-seq_len // W) == seg_mask.shape[1]
    assert torch.equal(seg_mask, ref["seg_mask"])
    expected_valid = torch.tensor([-(-min(n, seq_len) // W) for n in [*LENGTHS, seq_len]])
    assert torch.equal(seg_mask.sum(1), expected_valid)
    torch.testing.assert_close(segments, ref["segments"], **TOL)


@pytest.mark.parametrize("seq_len", [23, 30, 37])
def test_eq8_12_vectorised_segment_tokens_equal_the_per_segment_loop(seq_len: int) -> None:
    """The model's global-projection + reshape + batched-matmul H' equals eqs. 3-6 looped per segment/head,
    and all-padding segments are exactly zero."""
    model = make_model()
    history, cands = batch_for(seq_len)
    cap, ref = run_model(model, history, cands), reference(model, history, cands)
    segments, seg_mask = cap.gsta_args[1], cap.gsta_args[2]
    torch.testing.assert_close(segments, ref["segments"], **TOL)
    assert not segments[~seg_mask[:, None, :].expand(segments.shape[:3])].any()


def test_eq4_5_sigmoid_gate_scaled_by_gamma_sqrt_dq() -> None:
    """With FFN and LN off, H' is the raw gated sum of eq. 5: sigmoid(QK^T / sqrt(d_q)) V per head, where
    the gates are independent (they do NOT sum to 1, unlike softmax). gamma=1 or softmax would differ."""
    model = make_model(sta_ffn=False, sta_layernorm=False)
    history, cands = batch_for(23)
    cap = run_model(model, history, cands)
    segments = cap.gsta_args[1]
    ref = reference(model, history, cands)
    torch.testing.assert_close(segments, ref["segments"], **TOL)
    # The check has teeth: the alternatives are far from the model.
    for alternative in ({"gamma": 1.0}, {"activation": "softmax"}):
        other = reference(model, history, cands, **alternative)["segments"]
        assert (other - segments).abs().max() > 1e-3, alternative


@pytest.mark.parametrize("gamma", [0.7, 5.0])
def test_eq5_explicit_gamma_is_used(gamma: float) -> None:
    model = make_model(gamma=gamma, sta_ffn=False, sta_layernorm=False)
    history, cands = batch_for(23)
    cap = run_model(model, history, cands)
    torch.testing.assert_close(cap.gsta_args[1], reference(model, history, cands)["segments"], **TOL)


@pytest.mark.parametrize("overrides", [{}, {"sta_layernorm": False}, {"sta_ffn": False},
                                       {"sta_activation": "softmax"}])
def test_eq6_ffn_residual_then_layernorm(overrides: dict[str, Any]) -> None:
    """s_i = LN(FFN(s_i) + s_i) with exact GELU and the LN affine; each part switchable (ablations);
    the softmax ablation normalises over the segment's real tokens only."""
    model = make_model(**overrides)
    history, cands = batch_for(23)
    cap, ref = run_model(model, history, cands), reference(model, history, cands)
    segments, seg_mask = cap.gsta_args[1], cap.gsta_args[2]
    torch.testing.assert_close(segments, ref["segments"], **TOL)
    if model.config.sta_layernorm:   # undo the affine: every valid segment token is standardised
        n = model.sta.norm
        std = (segments - n.bias) / n.weight
        valid = std[seg_mask[:, None, :].expand(std.shape[:3])]
        torch.testing.assert_close(valid.mean(-1), torch.zeros(valid.shape[0], dtype=valid.dtype), atol=1e-9, rtol=0)
        torch.testing.assert_close(valid.var(-1, unbiased=False), torch.ones(valid.shape[0], dtype=valid.dtype),
                                   atol=1e-3, rtol=0)


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_eq7_gsta_stacked_target_attention_with_residual(layers: int) -> None:
    """z = t_M with t_l = t_{l-1} + softmax(q K^T / sqrt(d/h)) V over the VALID segment tokens only.
    Checked in isolation (from the model's own H') and end to end (from the reference H')."""
    model = make_model(gsta_layers=layers)
    history, cands = batch_for(23)
    cap, ref = run_model(model, history, cands), reference(model, history, cands)
    target, segments, seg_mask = cap.gsta_args
    isolated = torch.zeros_like(cap.z)
    for i in range(segments.shape[0]):
        for j in range(segments.shape[1]):
            isolated[i, j] = ref_gsta(model, target[i, j], list(segments[i, j][seg_mask[i]]))
    torch.testing.assert_close(cap.z, isolated, **TOL)
    torch.testing.assert_close(cap.z, ref["z"], **TOL)
    empty = history.lengths == 0
    torch.testing.assert_close(cap.z[empty], target[empty], **TOL)   # nothing to attend: z = t
    if layers:
        assert (cap.z - target)[~empty].abs().max() > 1e-3   # the layers do contribute


@pytest.mark.parametrize(("seq_len", "recent"), [(23, 3), (40, 2), (7, 3), (3, 4), (25, 5)])
def test_fusion_maxpool_and_newest_r_segments(seq_len: int, recent: int) -> None:
    """Head input = [z, t, z*t, max over valid H', newest r segments (oldest->newest), zero-filled at the
    front when the user or the whole batch has fewer than r segments]."""
    model = make_model(recent_segments=recent)
    history, cands = batch_for(seq_len)
    cap, ref = run_model(model, history, cands), reference(model, history, cands)
    assert cap.features.shape[-1] == (4 + recent) * D
    torch.testing.assert_close(cap.features, ref["features"], **TOL)
    chunks = cap.features.view(*cap.features.shape[:2], 4 + recent, D)
    segments = cap.gsta_args[1]
    n_seg = segments.shape[2]
    # the newest slot is the newest segment of every non-empty user
    nonempty = history.lengths > 0
    torch.testing.assert_close(chunks[nonempty][:, :, -1], segments[nonempty][:, :, -1], **TOL)
    for i, n in enumerate(history.lengths.tolist()):
        k = -(-n // W)
        zero_slots = recent - min(k, recent)
        assert not chunks[i, :, 4:4 + zero_slots].any()
        if k:   # max-pool over the k valid segments only (not the zeroed padding segments)
            torch.testing.assert_close(chunks[i, :, 3], segments[i, :, n_seg - k:].amax(1), **TOL)
        else:
            assert not chunks[i, :, 3].any()


def test_fusion_disabled_feeds_only_the_target_features() -> None:
    model = make_model(fusion=False)
    history, cands = batch_for(23)
    cap, ref = run_model(model, history, cands), reference(model, history, cands)
    assert cap.features.shape[-1] == 3 * D
    torch.testing.assert_close(cap.features, ref["features"], **TOL)


@pytest.mark.parametrize("seq_len", [23, 40])
def test_forward_and_serving_split_match_reference_logits(seq_len: int) -> None:
    model = make_model()
    history, cands = batch_for(seq_len)
    ref = reference(model, history, cands)
    with torch.no_grad():
        full = model(history, cands)
        split = model.score(model.encode_history(history), cands)
    torch.testing.assert_close(full, ref["logits"], **TOL)
    torch.testing.assert_close(split, ref["logits"], **TOL)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_padding_in_encoded_keys_values_is_masked(activation: str) -> None:
    """Garbage in the padded key/value slots (front padding and short-history padding) changes nothing:
    the gates of masked tokens are exactly zero, so the output is still the reference on real events."""
    model = make_model(sta_activation=activation)
    history, cands = batch_for(23)
    ref = reference(model, history, cands)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        enc = model.encode_history(history)
        pad = ~enc.mask
        enc.keys[pad] = 3 * torch.randn(enc.keys[pad].shape, generator=g, dtype=enc.keys.dtype)
        enc.values[pad] = 3 * torch.randn(enc.values[pad].shape, generator=g, dtype=enc.values.dtype)
        with Capture(model) as cap:
            logits = model.score(enc, cands)
    torch.testing.assert_close(cap.gsta_args[1], ref["segments"], **TOL)
    torch.testing.assert_close(logits, ref["logits"], **TOL)


def test_extra_left_padding_and_float32_agree_with_reference() -> None:
    """Batch padding that does and does not keep segment alignment gives the same logits (segments are
    anchored at the newest event), and the float32 model matches the float64 reference loosely."""
    model = make_model()
    history, cands = make_batch([0, 3, 9, 17], seq_len=17)
    ref = reference(model, history, cands)["logits"]
    for extra in (1, 3, 5, 8):
        padded = HistoryBatch(
            torch.nn.functional.pad(history.item_ids, (extra, 0)),
            {k: torch.nn.functional.pad(v, (extra, 0)) for k, v in history.side.items()},
            torch.nn.functional.pad(history.event_time_ms, (extra, 0)), history.lengths, history.request_time_ms)
        with torch.no_grad():
            torch.testing.assert_close(model(padded, cands), ref, **TOL)
    with torch.no_grad():
        single = model.float()(history, cands)
    torch.testing.assert_close(single, ref.float(), rtol=1e-4, atol=1e-5)
