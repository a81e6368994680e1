"""VISTA and LLaTTE, the models that cache a candidate-independent user summary in storage: vectorised
path == plain-loop reference, the cache/serving split, what the online path reads (LLaTTE's newest
``online_len`` events and pyramidal trimming, VISTA's cache-only score), and the FLOP split against
FlopCounterMode at the paper setting."""

from __future__ import annotations

import pytest
import torch

from rankers.flops import analytic_flops, measured_flops, measured_request_flops, request_flops
from rankers.inputs import Candidates, HistoryBatch
from rankers.models import llatte, vista
from rankers.models.llatte import LlatteConfig, trimmed_lengths
from rankers.models.vista import VistaConfig
from rankers.registry import MODEL_NAMES, build_model, make_config

SMALL = {"d": 16, "heads": 2, "item_buckets": 97, "side_fields": {"action": 5, "scenario": 3, "category": 11},
         "mlp_hidden": (16,)}
DEFAULTS = {"vista": {"summary_tokens": 5}, "llatte": {"online_len": 9, "user_tokens": 3}}


def small_model(name: str, max_len: int = 20, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **{**SMALL, **DEFAULTS[name], "max_len": max_len, **overrides}).eval()


def random_batch(lengths: list[int], seq_len: int, candidates: int = 3, seed: int = 0) -> tuple[HistoryBatch, Candidates]:
    """Left-padded histories (zeros at padding), one event a minute, and random candidates."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    valid = torch.arange(seq_len)[None, :] >= (seq_len - lengths_t.clamp(max=seq_len))[:, None]

    def field(high: int) -> torch.Tensor:
        return torch.randint(1, high, (b, seq_len), generator=g) * valid

    times = (10**9 - torch.arange(seq_len).flip(0)[None, :].expand(b, seq_len) * 60_000) * valid
    history = HistoryBatch(field(1000), {"action": field(5), "scenario": field(3), "category": field(11)},
                           times, lengths_t, torch.full((b,), 10**9 + 1000))
    cands = Candidates(torch.randint(1, 1000, (b, candidates), generator=g),
                       {"category": torch.randint(1, 11, (b, candidates), generator=g)})
    return history, cands


def with_item(history: HistoryBatch, row: int, column: int, item: int) -> HistoryBatch:
    """A copy of ``history`` with one event's item id changed."""
    items = history.item_ids.clone()
    items[row, column] = item
    return HistoryBatch(items, history.side, history.event_time_ms, history.lengths, history.request_time_ms)


VISTA_CASES = [{}, {"recent_len": 4}, {"summary_layers": 2, "summary_ffn_ratio": 2, "recent_len": 30},
               {"summary_tokens": 1, "use_recency": False, "heads": 4}]
LLATTE_CASES = [{}, {"online_len": 9, "online_layers": 3}, {"online_len": 50, "trim": 0.3, "encoder_layers": 2,
                                                           "ffn_ratio": 2},
                {"online_len": 7, "online_layers": 1, "encoder_layers": 0}, {"trim": 1.0},
                {"user_tokens": 1, "heads": 4, "online_layers": 4, "trim": 0.6}]
CASES = [("vista", c) for c in VISTA_CASES] + [("llatte", c) for c in LLATTE_CASES]
# (lengths, padded length): full, shorter than L and empty; longer than max_len=20; a short padded batch
BATCHES = [([0, 1, 5, 12, 20], 20, 4), ([3, 30, 0], 30, 1), ([2, 7], 8, 6), ([0], 5, 2)]


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_vectorised_equals_reference(name: str, overrides: dict[str, object]) -> None:
    model = small_model(name, **overrides)
    with torch.no_grad():
        for seed, (lengths, seq_len, c) in enumerate(BATCHES):
            history, cands = random_batch(lengths, seq_len, candidates=c, seed=seed)
            fast = model(history, cands)
            assert fast.shape == (len(lengths), c) and torch.isfinite(fast).all()
            torch.testing.assert_close(fast, model.forward_reference(history, cands), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "overrides"), [("vista", {"recent_len": 4}), ("llatte", {"online_layers": 3})])
def test_all_empty_histories_are_finite_with_finite_grads(name: str, overrides: dict[str, object]) -> None:
    model = small_model(name, **overrides).train()
    history, cands = random_batch([0, 0, 0], seq_len=6)
    out = model(history, cands)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_forward_is_score_of_encoded_cache_and_the_cache_is_candidate_independent(
        name: str, overrides: dict[str, object]) -> None:
    model = small_model(name, **overrides)
    history, cands = random_batch([0, 4, 11, 20], seq_len=20, candidates=5)
    _, other = random_batch([0, 4, 11, 20], seq_len=20, candidates=2, seed=7)
    module = vista if name == "vista" else llatte
    with torch.no_grad():
        cache = model.summarize(history)
        assert cache.shape == (4, *module.cache_shape(model.config)) == (4, *model.cache_shape())
        encoded = model.encode_cached(cache, history)
        torch.testing.assert_close(model.score(encoded, cands), model(history, cands))
        torch.testing.assert_close(model.score(encoded, other), model(history, other))   # same cache
        torch.testing.assert_close(model.summarize(history), cache)                        # deterministic
        # Each user's summary is its own: summarising one user alone gives the same row.
        for b in range(4):
            torch.testing.assert_close(model.summarize(history.select(slice(b, b + 1)))[0], cache[b],
                                       rtol=1e-5, atol=1e-6)
        # A cache that went through storage (numpy bytes and back) scores the same.
        stored = torch.from_numpy(cache.numpy().copy())
        torch.testing.assert_close(model.score(model.encode_cached(stored, history), cands), model(history, cands))
        with pytest.raises(ValueError, match="cache must be"):
            model.encode_cached(cache[:, :1, :3], history)


def test_vista_summary_only_score_depends_on_history_only_through_the_cache() -> None:
    model = small_model("vista")   # recent_len=0
    history, cands = random_batch([6, 20], seq_len=20)
    changed = with_item(history, 1, 19, 555)   # the newest event of user 1
    with torch.no_grad():
        cache = model.summarize(history)
        online = model.score(model.encode_cached(cache, history), cands)
        torch.testing.assert_close(model.score(model.encode_cached(cache, changed), cands), online)
        torch.testing.assert_close(model.score(model.encode_cached(cache, None), cands), online)
        # ...while through the cache the change does matter.
        assert not torch.allclose(model(changed, cands)[1], model(history, cands)[1])
        torch.testing.assert_close(model(changed, cands)[0], model(history, cands)[0])


def test_vista_recent_events_are_read_online_and_only_the_newest_recent_len() -> None:
    model = small_model("vista", recent_len=3)
    history, cands = random_batch([6, 20], seq_len=20)
    with torch.no_grad():
        cache = model.summarize(history)
        online = model.score(model.encode_cached(cache, history), cands)
        newest = model.score(model.encode_cached(cache, with_item(history, 1, 19, 555)), cands)
        fourth = model.score(model.encode_cached(cache, with_item(history, 1, 16, 555)), cands)
    assert not torch.allclose(newest[1], online[1])
    torch.testing.assert_close(fourth, online)
    with pytest.raises(ValueError, match="recent_len"):
        model.encode_cached(cache, None)


def test_llatte_online_stack_reads_only_the_newest_online_len_events() -> None:
    model = small_model("llatte", online_len=6, online_layers=2)
    history, cands = random_batch([15, 20], seq_len=20)
    old = with_item(history, 1, 20 - 7, 555)      # 7th newest: outside the online window, inside max_len
    recent = with_item(history, 1, 20 - 6, 555)   # 6th newest: the oldest event the online stack reads
    with torch.no_grad():
        cache = model.summarize(history)
        online = model.score(model.encode_cached(cache, history), cands)
        torch.testing.assert_close(model.score(model.encode_cached(cache, old), cands), online)
        assert not torch.allclose(model.score(model.encode_cached(cache, recent), cands)[1], online[1])
        # The old event still reaches the score, through the cache (the offline encoder reads max_len).
        assert not torch.allclose(model.summarize(old)[1], cache[1])
        assert not torch.allclose(model(old, cands)[1], model(history, cands)[1])


def test_trimmed_lengths() -> None:
    assert trimmed_lengths(LlatteConfig(online_len=400, online_layers=3, trim=0.5)) == [400, 200, 100]
    assert trimmed_lengths(LlatteConfig(online_len=100, online_layers=3, trim=0.1)) == [100, 10, 1]
    assert trimmed_lengths(LlatteConfig(online_len=9, online_layers=4, trim=0.5)) == [9, 5, 3, 2]
    assert trimmed_lengths(LlatteConfig(online_len=400, max_len=30, online_layers=2)) == [30, 15]
    assert trimmed_lengths(LlatteConfig(online_len=5, online_layers=3, trim=1.0)) == [5, 5, 5]
    with pytest.raises(ValueError, match="trim"):
        LlatteConfig(trim=0.0)


def test_llatte_trimming_keeps_the_newest_tokens_per_layer() -> None:
    """Layer l's keys are the newest ceil(8 * 0.5**l) slots: with 3 real events (left-padded to 8) a
    layer that kept the oldest 4 or 2 slots would see only padding."""
    model = small_model("llatte", online_len=8, online_layers=3, trim=0.5, user_tokens=2)
    history, _ = random_batch([3, 6, 8], seq_len=8)
    with torch.no_grad():
        encoded = model.encode_cached(model.summarize(history), history)
        layers = encoded.layers
        assert [kv.keys.shape[1] for kv in layers] == [8 + 2, 4 + 2, 2 + 2]
        valid_history = [kv.mask[:, :-2].sum(1).tolist() for kv in layers]
        assert valid_history == [[3, 6, 8], [3, 4, 4], [2, 2, 2]]
        for kv in layers:
            assert kv.mask[:, -2:].all()                                       # user tokens: always valid
            assert torch.equal(kv.mask[:, :-2], kv.mask[:, :-2].sort(1).values)   # padding before events
        # Layer 1's keys are W_k of layer 0's output at the NEWEST 4 slots, computed here from scratch.
        tokens, mask = model.embed.history(history)
        layer0, layer1 = model.online[0], model.online[1]
        keys0, values0 = layer0.project(tokens)
        out0 = layer0.attend(tokens, keys0, values0, mask) * mask[..., None]
        expected = layer1.key(out0[:, -4:]).view(3, 4, 2, 8)
        torch.testing.assert_close(layers[1].keys[:, :4], expected * mask[:, -4:, None, None], rtol=1e-5, atol=1e-6)
        oldest = layer1.key(out0[:, :4]).view(3, 4, 2, 8)
        assert not torch.allclose(layers[1].keys[:, :4], oldest)


def test_registry_and_cache_sizes_at_the_paper_setting() -> None:
    assert MODEL_NAMES[-2:] == ("vista", "llatte")
    v, ll = make_config("vista", paper=True), make_config("llatte", paper=True)
    assert isinstance(v, VistaConfig) and isinstance(ll, LlatteConfig)
    assert (v.d, v.max_len, v.summary_tokens) == (128, 1000, 128)
    assert vista.cache_shape(v) == (128, 128)                     # 16384 values per user
    assert llatte.cache_shape(ll) == (4, 128)                     # 512 values per user
    assert (ll.online_len, ll.online_layers, ll.trim) == (400, 2, 0.5)
    assert trimmed_lengths(ll) == [400, 200]


# -- FLOPs ------------------------------------------------------------------------------------------------

def paper(name: str, **overrides: object):
    return make_config(name, paper=True, item_buckets=1000, **overrides)


@pytest.mark.parametrize("name", ["vista", "llatte"])
@pytest.mark.parametrize("candidates", [1, 100])
def test_flop_split_matches_counted_serving_path_at_paper_setting(name: str, candidates: int) -> None:
    """history (encode_cached once), per candidate (score / C, head excluded) and refresh (summarize)
    analytic == FlopCounterMode / 2 at d=128, L=1000."""
    config = paper(name)
    torch.manual_seed(0)
    model = build_model(name, config).eval()
    analytic = request_flops(name, config, candidates)
    counted = measured_request_flops(model, candidates)
    for key in ("history_macs", "per_candidate_macs", "per_request_macs", "refresh_macs"):
        assert counted[key] == pytest.approx(analytic[key], rel=0.02), key
    assert analytic["per_request_macs"] == analytic["history_macs"] + candidates * analytic["per_candidate_macs"]
    assert analytic["refresh_macs"] > analytic["history_macs"] > 0   # the cache is what the request saves


@pytest.mark.parametrize(("name", "overrides"), [
    ("vista", {"recent_len": 50, "summary_layers": 2, "summary_ffn_ratio": 2}),
    ("vista", {"summary_tokens": 16, "heads": 4}),
    ("llatte", {"trim": 0.3, "ffn_ratio": 2, "online_layers": 3, "encoder_layers": 2}),
    ("llatte", {"online_len": 500, "trim": 1.0, "encoder_layers": 0, "user_tokens": 8}),
])
def test_flop_split_matches_counted_for_variants(name: str, overrides: dict[str, object]) -> None:
    config = paper(name, d=64, max_len=300, **overrides)
    torch.manual_seed(0)
    counted = measured_request_flops(build_model(name, config).eval(), 7)
    analytic = request_flops(name, config, 7)
    for key in ("history_macs", "per_candidate_macs", "refresh_macs"):
        assert counted[key] == pytest.approx(analytic[key], rel=0.02), key


@pytest.mark.parametrize("name", ["vista", "llatte"])
def test_per_pair_figure_is_refresh_plus_request_at_one_candidate(name: str) -> None:
    config = paper(name, d=64, max_len=300)
    one = request_flops(name, config, 1)
    assert analytic_flops(name, config) == pytest.approx(one["refresh_macs"] + one["per_request_macs"])
    torch.manual_seed(0)
    model = build_model(name, config).eval()
    assert measured_flops(model)["sequence"] == pytest.approx(analytic_flops(name, config), rel=0.02)
    # A history shorter than the online window / max_len: the split follows the real length.
    short = request_flops(name, config, 3, seq_len=50)
    counted = measured_request_flops(model, 3, seq_len=50)
    for key in ("history_macs", "per_candidate_macs", "refresh_macs"):
        assert counted[key] == pytest.approx(short[key], rel=0.02), key
    assert short["refresh_macs"] < one["refresh_macs"]
