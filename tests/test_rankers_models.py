"""Every model: shapes, NaN-safe masks, padding invariance, the serving split, and LASER's STA."""

from __future__ import annotations

import pytest
import torch

from rankers.config import ModelConfig
from rankers.inputs import Candidates, HistoryBatch
from rankers.layers import recency_buckets
from rankers.models.laser import LaserConfig, SegmentedTargetAttention
from rankers.registry import MODEL_NAMES, build_model, make_config

SMALL = {"d": 16, "heads": 2, "item_buckets": 97, "side_fields": {"action": 5, "scenario": 3, "category": 11},
         "mlp_hidden": (16,)}
PER_MODEL = {"base": {"short_len": 6}, "twin": {"top_k": 5}, "laser": {"dq": 4, "window": 4, "recent_segments": 2}}


def small_model(name: str, max_len: int = 23, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **{**SMALL, **PER_MODEL.get(name, {}), "max_len": max_len, **overrides}).eval()


def random_batch(lengths: list[int], seq_len: int, candidates: int = 3, seed: int = 0,
                 garbage_padding: bool = False) -> tuple[HistoryBatch, Candidates]:
    """Left-padded histories; with ``garbage_padding`` the padded slots hold random ids (must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    valid = torch.arange(seq_len)[None, :] >= (seq_len - lengths_t.clamp(max=seq_len))[:, None]

    def field(high: int) -> torch.Tensor:
        x = torch.randint(1, high, (b, seq_len), generator=g)
        return x if garbage_padding else x * valid

    times = 10**9 - torch.arange(seq_len).flip(0)[None, :].expand(b, seq_len) * 60_000
    history = HistoryBatch(field(1000), {"action": field(5), "scenario": field(3), "category": field(11)},
                           times * (valid | garbage_padding), lengths_t, torch.full((b,), 10**9 + 1000))
    cands = Candidates(torch.randint(1, 1000, (b, candidates), generator=g),
                       {"category": torch.randint(1, 11, (b, candidates), generator=g)})
    return history, cands


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes_and_finite_with_empty_and_partial_histories(name: str) -> None:
    model = small_model(name).train()
    # empty history, one event, a partial segment, full
    history, cands = random_batch([0, 1, 5, 23], seq_len=23, candidates=4)
    logits = model(history, cands)
    assert logits.shape == (4, 4)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    for pname, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shorter_than_window_and_all_empty(name: str) -> None:
    model = small_model(name, max_len=3)   # L=3 < w=4, fewer segments than r
    history, cands = random_batch([0, 2, 3], seq_len=3)
    out = model(history, cands)
    assert out.shape == (3, 3) and torch.isfinite(out).all()
    history, cands = random_batch([0, 0], seq_len=8)
    model = small_model(name, max_len=8).train()
    out = model(history, cands)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_is_ignored(name: str) -> None:
    """Garbage in padded slots and extra left padding change nothing."""
    model = small_model(name, max_len=40)
    history, cands = random_batch([0, 3, 9, 17], seq_len=17)
    reference = model(history, cands)
    garbage, _ = random_batch([0, 3, 9, 17], seq_len=17, garbage_padding=True)
    garbage.item_ids[history.valid_mask()] = history.item_ids[history.valid_mask()]
    for k in garbage.side:
        garbage.side[k][history.valid_mask()] = history.side[k][history.valid_mask()]
    garbage.event_time_ms[history.valid_mask()] = history.event_time_ms[history.valid_mask()]
    torch.testing.assert_close(model(garbage, cands), reference)
    for extra in (1, 5, 8):   # left padding that does and does not keep segment alignment
        padded = HistoryBatch(
            torch.nn.functional.pad(history.item_ids, (extra, 0)),
            {k: torch.nn.functional.pad(v, (extra, 0)) for k, v in history.side.items()},
            torch.nn.functional.pad(history.event_time_ms, (extra, 0)), history.lengths, history.request_time_ms)
        torch.testing.assert_close(model(padded, cands), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_serving_split_equals_forward_and_each_pair_alone(name: str) -> None:
    model = small_model(name)
    history, cands = random_batch([0, 4, 11, 23], seq_len=23, candidates=5)
    with torch.no_grad():
        full = model(history, cands)
        shared = model.score(model.encode_history(history), cands)
        torch.testing.assert_close(shared, full)
        for b in range(4):
            for c in range(5):
                alone = model(history.select(slice(b, b + 1)), cands.select(slice(b, b + 1), slice(c, c + 1)))
                torch.testing.assert_close(alone[0, 0], full[b, c], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_reads_only_newest_max_len(name: str) -> None:
    model = small_model(name, max_len=10)
    long, cands = random_batch([15, 30], seq_len=30)
    cropped = HistoryBatch(long.item_ids[:, -10:], {k: v[:, -10:] for k, v in long.side.items()},
                           long.event_time_ms[:, -10:], long.lengths.clamp(max=10), long.request_time_ms)
    torch.testing.assert_close(model(long, cands), model(cropped, cands))


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("seq_len", [3, 12, 13])
def test_vectorised_sta_equals_naive_segment_loop(activation: str, seq_len: int) -> None:
    torch.manual_seed(1)
    config = LaserConfig(**{**SMALL, "dq": 4, "window": 4, "max_len": seq_len, "sta_activation": activation})
    sta = SegmentedTargetAttention(config)
    tokens = torch.randn(3, seq_len, 16)
    mask = torch.arange(seq_len)[None, :] >= torch.tensor([seq_len, seq_len - 2, 0])[:, None]
    tokens = tokens * mask[..., None]
    target = torch.randn(3, 5, 16)
    fast, fast_mask = sta(target, tokens, mask)
    naive, naive_mask = sta.forward_naive(target, tokens, mask)
    assert fast.shape == (3, 5, -(-seq_len // 4), 16)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast_mask, naive_mask)


def test_sigmoid_gate_silences_while_softmax_cannot() -> None:
    """The paper's "silence mechanism": sigmoid weights of an irrelevant segment can all go to ~0,
    softmax weights of a segment with any valid token always sum to 1."""
    config = LaserConfig(**{**SMALL, "dq": 4, "window": 4, "max_len": 8, "sta_ffn": False, "sta_layernorm": False})
    sta = SegmentedTargetAttention(config)
    with torch.no_grad():
        sta.query.weight.fill_(1.0)
        sta.key.weight.fill_(1.0)
        sta.value.weight.copy_(torch.eye(16))
    tokens = -torch.ones(1, 8, 16)   # every key anti-aligned with the query: scores very negative
    mask = torch.ones(1, 8, dtype=torch.bool)
    target = torch.ones(1, 1, 16)
    segments, _ = sta(target, tokens, mask)
    assert segments.abs().max() < 1e-6
    sta.activation = "softmax"
    segments, _ = sta(target, tokens, mask)
    torch.testing.assert_close(segments, -torch.ones_like(segments))


def test_absorbed_gsta_gives_the_same_scores() -> None:
    standard = small_model("laser")
    absorbed = small_model("laser", gsta_absorbed=True)
    absorbed.load_state_dict(standard.state_dict())
    history, cands = random_batch([0, 3, 9, 23], seq_len=23, candidates=6)
    torch.testing.assert_close(absorbed(history, cands), standard(history, cands), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", [
    {"sta_activation": "softmax"}, {"sta_ffn": False, "sta_layernorm": False}, {"sta_layernorm": False},
    {"fusion": False}, {"use_recency": False}, {"window": 1}, {"window": 20}, {"gsta_layers": 0},
    {"gsta_layers": 4},
])
def test_laser_ablation_switches_run(overrides: dict[str, object]) -> None:
    model = small_model("laser", **overrides)
    history, cands = random_batch([0, 7, 23], seq_len=23)
    out = model(history, cands)
    assert out.shape == (3, 3) and torch.isfinite(out).all()
    assert (model.embed.recency is None) == (overrides.get("use_recency") is False)


def test_recency_changes_the_score_only_when_enabled() -> None:
    history, cands = random_batch([5, 9], seq_len=9)
    later = HistoryBatch(history.item_ids, history.side, history.event_time_ms, history.lengths,
                         history.request_time_ms + 86_400_000 * 30)
    with_recency, without = small_model("laser"), small_model("laser", use_recency=False)
    assert not torch.allclose(with_recency(history, cands), with_recency(later, cands))
    torch.testing.assert_close(without(history, cands), without(later, cands))


def test_recency_buckets_are_log_spaced_and_monotone() -> None:
    ages_ms = torch.tensor([[0, 500, 1000, 3000, 60_000, 3_600_000, 86_400_000, 10**12, 10**13]])
    b = recency_buckets(10**13 - ages_ms, torch.tensor([10**13]), 64).tolist()[0]
    assert b == sorted(b) and len(set(b)) == len(b)      # distinct, increasing with age
    assert b[0] == 1 and b[-1] == 63                     # 0 is padding; very old events saturate
    assert recency_buckets(torch.tensor([[5000]]), torch.tensor([0]), 64).item() == 1   # future event: age 0


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="divisible"):
        build_model("din", d=10, heads=3)
    with pytest.raises(TypeError, match="window"):
        build_model("din", window=3)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gpt")
    with pytest.raises(ValueError, match="candidate_side_fields"):
        ModelConfig(side_fields={"action": 3})
    with pytest.raises(KeyError, match="category"):
        model = small_model("din")
        history, cands = random_batch([3], seq_len=5)
        model(history, Candidates(cands.item_ids))


def test_configs_share_fields_and_have_paper_settings() -> None:
    shared = ModelConfig(d=24, heads=3, max_len=77)
    for name in MODEL_NAMES:
        cfg = make_config(name, shared)
        assert (cfg.d, cfg.heads, cfg.max_len) == (24, 3, 77)
        paper = make_config(name, paper=True)
        # TWIN's search unit reads the lifelong history (its paper's 10,000 events); the others L=1000.
        assert (paper.d, paper.max_len) == (128, 10_000 if name == "twin" else 1000)
    laser = make_config("laser", paper=True)
    assert (laser.heads * laser.dq, laser.window, laser.gsta_layers, laser.ffn_ratio) == (32, 10, 2, 4)


def planted_task(n: int, seq_len: int = 40, old: int = 8, seed: int = 0) -> tuple[HistoryBatch, Candidates, torch.Tensor]:
    """Each user's OLDEST ``old`` events share one interest category (1..10); newer events are noise from
    other categories (11..20). Label = the candidate has the user's old interest category."""
    g = torch.Generator().manual_seed(seed)
    interest = torch.randint(1, 11, (n, 1), generator=g)
    cats = torch.cat([interest.expand(n, old), torch.randint(11, 21, (n, seq_len - old), generator=g)], 1)
    labels = torch.rand(n, 1, generator=g) < 0.5
    other = 1 + (interest - 1 + torch.randint(1, 10, (n, 1), generator=g)) % 10
    ones = torch.ones(n, seq_len, dtype=torch.long)
    times = 10**9 - torch.arange(seq_len).flip(0)[None, :].expand(n, seq_len) * 3_600_000
    history = HistoryBatch(torch.randint(1, 1000, (n, seq_len), generator=g),
                           {"action": ones, "scenario": ones, "category": cats}, times,
                           torch.full((n,), seq_len), torch.full((n,), 10**9))
    cands = Candidates(torch.randint(1, 1000, (n, 1), generator=g), {"category": torch.where(labels, interest, other)})
    return history, cands, labels[:, 0].float()


def train_and_auc(model: torch.nn.Module, epochs: int, n_train: int = 1280, n_test: int = 256) -> float:
    history, cands, labels = planted_task(n_train + n_test)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _epoch in range(epochs):
        for start in range(0, n_train, 64):
            rows = slice(start, start + 64)
            logits = model(history.select(rows), cands.select(rows))[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    test = slice(n_train, n_train + n_test)
    with torch.no_grad():
        scores = model.eval()(history.select(test), cands.select(test))[:, 0]
    y = labels[test]
    return (scores[y == 1][:, None] > scores[y == 0][None, :]).float().mean().item()




@pytest.mark.usefixtures("one_torch_thread")
def test_laser_learns_planted_long_range_signal_that_a_short_window_misses() -> None:
    side = {"action": 5, "scenario": 3, "category": 21}
    laser = small_model("laser", max_len=40, side_fields=side, window=8).train()
    assert train_and_auc(laser, epochs=8) > 0.85
    # Base reads only the newest 20 events, which hold no signal: it must stay near chance.
    base = small_model("base", max_len=40, side_fields=side, short_len=20).train()
    assert 0.3 < train_and_auc(base, epochs=4) < 0.7
