"""The baselines are the designs their papers describe: DIN's unnormalised activation unit, HSTU's
relative bias, the Transformer's positions and FFN, TWIN's shared GSU/ESU projections over a long history."""

from __future__ import annotations

import math

import torch

from rankers.inputs import Candidates, HistoryBatch
from rankers.registry import build_model

SIDE = {"action": 5, "scenario": 3, "category": 11}


def model(name: str, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **{"d": 16, "heads": 2, "item_buckets": 97, "side_fields": SIDE, "mlp_hidden": (16,),
                                "max_len": 40, **overrides}).eval()


def batch(items: torch.Tensor, times: torch.Tensor | None = None, cands: int = 3) -> tuple[HistoryBatch, Candidates]:
    b, n = items.shape
    g = torch.Generator().manual_seed(1)
    times = 10**9 - torch.arange(n).flip(0)[None, :].expand(b, n) * 60_000 if times is None else times
    side = {k: (items % (v - 1)) + 1 for k, v in SIDE.items()}
    history = HistoryBatch(items, side, times, torch.full((b,), n), torch.full((b,), 10**9 + 1000))
    return history, Candidates(torch.randint(1, 97, (b, cands), generator=g),
                               {"category": torch.randint(1, 11, (b, cands), generator=g)})


def random_items(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 97, (b, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_din_vectorised_unit_equals_the_literal_concatenation() -> None:
    m = model("din")
    history, cands = batch(random_items(4, 40))
    assert torch.allclose(m(history, cands), m.forward_reference(history, cands), atol=1e-5)


@torch.no_grad()
def test_din_weights_are_not_normalised() -> None:
    """n copies of one event vs 2n copies: a softmax average sees the same history, DIN's sum does not."""
    m = model("din", use_recency=False)
    one = torch.full((2, 10), 7)
    _, cands = batch(one)
    short, _ = batch(one)
    long_, _ = batch(torch.full((2, 20), 7))
    assert not torch.allclose(m(short, cands), m(long_, cands), atol=1e-4)
    sm = model("transformer", use_recency=False, layers=0)          # plain softmax target attention
    sm.position.weight.zero_()
    assert torch.allclose(sm(short, cands), sm(long_, cands), atol=1e-5)


@torch.no_grad()
def test_hstu_depends_on_event_times_only_through_its_relative_bias() -> None:
    m = model("hstu", use_recency=False)
    items = random_items(3, 30)
    even, cands = batch(items)
    bursty = 10**9 - torch.cumsum(torch.randint(1, 10**7, (3, 30), generator=torch.Generator().manual_seed(2)), 1).flip(1)
    bursty_batch, _ = batch(items, bursty)
    layer = m.encoder[0]
    assert torch.allclose(m(even, cands), m(bursty_batch, cands))   # rab starts at zero
    torch.nn.init.normal_(layer.time_bias.weight)
    assert not torch.allclose(m(even, cands), m(bursty_batch, cands), atol=1e-4)
    layer.time_bias.weight.zero_()
    torch.nn.init.normal_(layer.position_bias.weight)
    # A shuffle changes which events are near each other (a reversal would keep every distance).
    shuffled, _ = batch(items[:, torch.randperm(30, generator=torch.Generator().manual_seed(3))])
    assert not torch.allclose(m(even, cands), m(shuffled, cands), atol=1e-4)   # positions matter
    layer.position_bias.weight.zero_()
    assert torch.allclose(m(even, cands), m(shuffled, cands), atol=1e-5)       # and nothing else orders


@torch.no_grad()
def test_transformer_has_an_ffn_and_positions_from_the_newest_event() -> None:
    m = model("transformer", use_recency=False)
    assert m.config.ffn_ratio == 4 and m.encoder[0].ffn is not None
    items = random_items(3, 30)
    fwd, cands = batch(items)
    rev, _ = batch(items.flip(1))
    assert not torch.allclose(m(fwd, cands), m(rev, cands), atol=1e-4)
    m.position.weight.zero_()        # without positions, attention is blind to order
    assert torch.allclose(m(fwd, cands), m(rev, cands), atol=1e-5)


@torch.no_grad()
def test_twin_gsu_retrieves_by_the_esus_own_attention_logits() -> None:
    m = model("twin", top_k=5)
    history, cands = batch(random_items(2, 40))
    enc = m.encode_history(history)
    target = m.embed.candidates(cands)
    a = m.attention
    # By hand: q = t W_q, k = h W_k, per head, summed over heads, scaled by sqrt(d_h).
    q = (target @ a.query.weight.T).view(2, 3, a.heads, a.head_dim)
    k = (enc.tokens @ a.key.weight.T).view(2, 40, a.heads, a.head_dim)
    relevance = torch.einsum("bchk,blhk->bcl", q, k) / math.sqrt(a.head_dim)
    expected = relevance.topk(5, dim=-1).indices.sort(-1).values
    got = m.retrieve(enc, m.logits(enc, target)).sort(-1).values
    assert torch.equal(got, expected)


@torch.no_grad()
def test_twin_reads_a_lifelong_history_beyond_1000_events() -> None:
    m = model("twin", max_len=1200, top_k=1200)
    items = random_items(1, 1200)
    history, cands = batch(items)
    changed = items.clone()
    changed[0, 0] = (items[0, 0] % 96) + 1 if items[0, 0] != 96 else 1      # the oldest of 1,200 events
    other, _ = batch(changed)
    assert not torch.allclose(m(history, cands), m(other, cands))
