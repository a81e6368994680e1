"""history_from_csr / candidates_from_numpy: the vectorised conversion against a per-user loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankers.inputs import Candidates, HistoryBatch, candidates_from_numpy, history_from_csr

SIDES = ("action", "scenario", "category")


def make_csr(counts: list[int], seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(offsets[-1])
    cols = {"item_id": rng.integers(0, 2**40, n, dtype=np.uint64), "ts": rng.integers(1, 10**12, n)}
    cols |= {name: rng.integers(0, 50, n).astype(np.uint8) for name in SIDES}
    return offsets, cols


def loop_reference(offsets: np.ndarray, cols: dict[str, np.ndarray], max_len: int) -> dict[str, np.ndarray]:
    n_users = len(offsets) - 1
    out = {name: np.zeros((n_users, max_len), np.int64) for name in ("item_id", "ts", *SIDES)}
    lengths = np.zeros(n_users, np.int64)
    for i in range(n_users):
        lo, hi = offsets[i], offsets[i + 1]
        lo = max(lo, hi - max_len)
        k = hi - lo
        lengths[i] = k
        for name in out:
            shift = 0 if name == "ts" else 1
            if k:
                out[name][i, max_len - k:] = cols[name][lo:hi].astype(np.int64) + shift
    return out | {"lengths": lengths}


def check_against_loop(counts: list[int], max_len: int, seed: int = 0) -> None:
    offsets, cols = make_csr(counts, seed)
    req = np.arange(len(counts)) + 10**12
    batch = history_from_csr(offsets, cols, max_len=max_len, request_time_ms=req)
    ref = loop_reference(offsets, cols, max_len)
    assert batch.item_ids.shape == (len(counts), max_len)
    np.testing.assert_array_equal(batch.item_ids.numpy(), ref["item_id"])
    np.testing.assert_array_equal(batch.event_time_ms.numpy(), ref["ts"])
    for name in SIDES:
        np.testing.assert_array_equal(batch.side[name].numpy(), ref[name])
    np.testing.assert_array_equal(batch.lengths.numpy(), ref["lengths"])
    np.testing.assert_array_equal(batch.request_time_ms.numpy(), req)
    # validity mask == the slots that hold real events
    mask = batch.valid_mask().numpy()
    assert (mask.sum(1) == ref["lengths"]).all()
    assert (batch.item_ids.numpy()[~mask] == 0).all() and (batch.item_ids.numpy()[mask] > 0).all()


def test_truncates_to_newest_and_left_pads() -> None:
    check_against_loop([0, 1, 5, 7, 30], max_len=7)


def test_newest_event_is_last_column() -> None:
    offsets, cols = make_csr([4, 12])
    batch = history_from_csr(offsets, cols, max_len=6, request_time_ms=np.array([1, 2]))
    assert batch.item_ids[0, -1] == int(cols["item_id"][3]) + 1
    assert batch.item_ids[1, -1] == int(cols["item_id"][15]) + 1
    assert batch.item_ids[1, 0] == int(cols["item_id"][10]) + 1
    assert batch.item_ids[0, :2].tolist() == [0, 0]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 25), min_size=1, max_size=12), st.integers(1, 20), st.integers(0, 10**6))
def test_matches_loop_property(counts: list[int], max_len: int, seed: int) -> None:
    check_against_loop(counts, max_len, seed)


def test_all_users_empty() -> None:
    offsets, cols = make_csr([0, 0, 0])
    batch = history_from_csr(offsets, cols, max_len=4, request_time_ms=np.zeros(3))
    assert batch.lengths.tolist() == [0, 0, 0]
    assert int(batch.item_ids.abs().sum()) == 0


def test_bad_inputs_say_what_to_do() -> None:
    offsets, cols = make_csr([2, 3])
    with pytest.raises(KeyError, match="category"):
        history_from_csr(offsets, {k: v for k, v in cols.items() if k != "category"}, max_len=4,
                         request_time_ms=np.zeros(2))
    with pytest.raises(ValueError, match="one entry per user"):
        history_from_csr(offsets, cols, max_len=4, request_time_ms=np.zeros(3))
    with pytest.raises(ValueError, match="offsets"):
        history_from_csr(np.array([0, 3, 2]), cols, max_len=4, request_time_ms=np.zeros(2))
    with pytest.raises(ValueError, match="offsets end"):
        history_from_csr(np.array([0, 2, 4]), cols, max_len=4, request_time_ms=np.zeros(2))
    # fewer side fields is fine when asked for
    batch = history_from_csr(offsets, cols, max_len=4, request_time_ms=np.zeros(2), side_fields=("action",))
    assert set(batch.side) == {"action"}


def test_batch_shape_checks() -> None:
    with pytest.raises(ValueError, match="event_time_ms"):
        HistoryBatch(torch.zeros(2, 3, dtype=torch.long), {}, torch.zeros(2, 4, dtype=torch.long),
                     torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="category"):
        Candidates(torch.zeros(2, 3, dtype=torch.long), {"category": torch.zeros(2, 2, dtype=torch.long)})


def test_candidates_shift_matches_history() -> None:
    offsets, cols = make_csr([3])
    batch = history_from_csr(offsets, cols, max_len=3, request_time_ms=np.zeros(1))
    cands = candidates_from_numpy(cols["item_id"][None, :], {"category": cols["category"][None, :]})
    assert torch.equal(cands.item_ids, batch.item_ids)
    assert torch.equal(cands.side["category"], batch.side["category"])
    assert candidates_from_numpy(np.array([5, 6])).item_ids.shape == (2, 1)
