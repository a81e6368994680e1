"""Train and evaluate any ranking model on a CTR task given as plain arrays.

Model-agnostic: a model is anything with ``forward(history, candidates) -> logits [B, C]``. The data
is a :class:`CTRArrays`: one row per ranking request, each with a window into a flat event log (its
history) and ``C`` scored candidates with 0/1 labels. Keeping histories as windows into one shared
event log instead of padded ``[R, L]`` copies keeps a 100k-request task at L=1000 in memory; each
batch is padded on the fly by :func:`rankers.inputs.history_from_csr`, the same conversion the
serving path uses, so training and serving see identical inputs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rankers.inputs import Candidates, HistoryBatch, candidates_from_numpy, history_from_csr


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite during training."""


@dataclass
class CTRArrays:
    """A CTR dataset: requests, each with a history window and ``C`` labelled candidates.

    ``events`` holds flat per-field columns of the whole event log (raw ids, ungrouped), and request
    ``i``'s history is ``events[f][hist_start[i]:hist_end[i]]``, oldest first; batches keep the
    newest ``max_len`` of it. Candidate ids are raw ids too (shifted like history ids when batched).
    """

    events: dict[str, np.ndarray]            # field -> [N_events]
    hist_start: np.ndarray                   # [R] int64, inclusive
    hist_end: np.ndarray                     # [R] int64, exclusive
    request_time_ms: np.ndarray              # [R] int64
    cand_item_ids: np.ndarray                # [R, C] int64
    cand_side: dict[str, np.ndarray]         # field -> [R, C] int64
    labels: np.ndarray                       # [R, C] float32, 1 = clicked
    max_len: int
    item_field: str = "item_id"
    time_field: str = "ts"
    side_fields: tuple[str, ...] = ("action", "scenario", "category")
    user_ids: np.ndarray | None = None       # [R] owner of each request, for inspection only
    cand_time_ms: np.ndarray | None = None   # [R, C] when each candidate was shown, for inspection only

    def __post_init__(self) -> None:
        r = len(self.hist_start)
        if len(self.hist_end) != r or len(self.request_time_ms) != r or len(self.labels) != r:
            raise ValueError(
                f"CTRArrays: hist_start, hist_end, request_time_ms and labels need one row per request; "
                f"got {len(self.hist_start)}, {len(self.hist_end)}, {len(self.request_time_ms)}, "
                f"{len(self.labels)}")
        if self.cand_time_ms is not None and self.cand_time_ms.shape != self.labels.shape:
            raise ValueError(f"CTRArrays: cand_time_ms {self.cand_time_ms.shape} must have the labels' "
                             f"[R, C] shape {self.labels.shape}")
        if self.cand_item_ids.shape != self.labels.shape:
            raise ValueError(f"CTRArrays: cand_item_ids {self.cand_item_ids.shape} and labels "
                             f"{self.labels.shape} must have the same [R, C] shape")
        for name in (self.item_field, self.time_field, *self.side_fields):
            if name not in self.events:
                raise ValueError(f"CTRArrays: events lack field {name!r} (have {sorted(self.events)})")
        if r and (np.any(self.hist_start > self.hist_end) or np.any(self.hist_start < 0)
                  or np.any(self.hist_end > len(self.events[self.time_field]))):
            raise ValueError("CTRArrays: every history window needs 0 <= hist_start <= hist_end <= n_events")

    def __len__(self) -> int:
        return len(self.hist_start)

    @property
    def num_candidates(self) -> int:
        return int(self.labels.shape[1]) if self.labels.ndim == 2 else 0

    def subset(self, rows: np.ndarray) -> CTRArrays:
        """The requests at ``rows`` (sharing the same event log, no copy of it)."""
        return CTRArrays(
            events=self.events, hist_start=self.hist_start[rows], hist_end=self.hist_end[rows],
            request_time_ms=self.request_time_ms[rows], cand_item_ids=self.cand_item_ids[rows],
            cand_side={k: v[rows] for k, v in self.cand_side.items()}, labels=self.labels[rows],
            max_len=self.max_len, item_field=self.item_field, time_field=self.time_field,
            side_fields=self.side_fields,
            user_ids=None if self.user_ids is None else self.user_ids[rows],
            cand_time_ms=None if self.cand_time_ms is None else self.cand_time_ms[rows])

    def history_csr(self, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Histories of ``rows`` in the CSR form stores return: (offsets [b+1], columns).

        Only the newest ``max_len`` events of each window are gathered.
        """
        end = self.hist_end[rows]
        start = np.maximum(self.hist_start[rows], end - self.max_len)
        lens = end - start
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        # Global event index of every gathered slot: each row's start, then consecutive.
        idx = np.repeat(start - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
        cols = {name: self.events[name][idx]
                for name in (self.item_field, self.time_field, *self.side_fields)}
        return offsets, cols


@dataclass
class TrainResult:
    """What :func:`fit` did: per-epoch figures and the validation metrics of the kept weights."""

    epochs: list[dict[str, float]] = field(default_factory=list)  # epoch, train_loss, valid_auc, ...
    best_epoch: int = -1
    valid: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    train_requests: int = 0
    examples_per_s: float = 0.0
    num_parameters: int = 0

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs, "best_epoch": self.best_epoch, "valid": self.valid,
            "seconds": self.seconds, "device": self.device, "train_requests": self.train_requests,
            "examples_per_s": self.examples_per_s, "num_parameters": self.num_parameters,
        }


# -- metrics -----------------------------------------------------------------------------------

def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; tied scores share ranks.

    Equals the fraction of (positive, negative) pairs ranked correctly, ties counting one half.
    NaN when only one class is present.
    """
    y = np.asarray(labels).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise ValueError(f"roc_auc: {len(y)} labels but {len(s)} scores")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    bounds = np.flatnonzero(sorted_s[1:] != sorted_s[:-1]) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(s)]))
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based mean rank of a tie run
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy computed from logits (stable for large |logit|)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


# -- device and batching -----------------------------------------------------------------------

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present and falls back to the CPU; ``cuda`` without a GPU is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but no CUDA GPU is available; "
                           f"use --device auto (falls back to the CPU) or --device cpu")
    return dev


def make_batch(data: CTRArrays, rows: np.ndarray, device: torch.device | str = "cpu"
               ) -> tuple[HistoryBatch, Candidates, torch.Tensor]:
    """The model inputs and labels of requests ``rows``, on ``device``."""
    rows = np.asarray(rows, dtype=np.int64)
    offsets, cols = data.history_csr(rows)
    history = history_from_csr(
        offsets, cols, max_len=data.max_len, request_time_ms=data.request_time_ms[rows],
        item_field=data.item_field, time_field=data.time_field, side_fields=data.side_fields)
    candidates = candidates_from_numpy(data.cand_item_ids[rows],
                                       {k: v[rows] for k, v in data.cand_side.items()})
    labels = torch.from_numpy(np.ascontiguousarray(data.labels[rows], dtype=np.float32))
    return history.to(device), candidates.to(device), labels.to(device)


# -- training ----------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, data: CTRArrays, device: torch.device | str | None = None,
            batch_size: int = 512) -> np.ndarray:
    """Logits ``[R, C]`` for every request of ``data``, on ``device`` (default: where the model is)."""
    if device is None:
        param = next(model.parameters(), None)
        dev = param.device if param is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
    was_training = model.training
    model.eval()
    out = np.empty(data.labels.shape, dtype=np.float32)
    try:
        for lo in range(0, len(data), batch_size):
            rows = np.arange(lo, min(lo + batch_size, len(data)))
            history, candidates, _ = make_batch(data, rows, dev)
            out[lo:lo + len(rows)] = model(history, candidates).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def evaluate(model: nn.Module, data: CTRArrays, device: torch.device | str | None = None,
             batch_size: int = 512) -> dict[str, float]:
    """AUC and log loss over every (request, candidate) pair of ``data``."""
    logits = predict(model, data, device, batch_size)
    if not np.all(np.isfinite(logits)):
        raise TrainingDiverged("the model produced NaN/inf logits on evaluation data; "
                               "check the inputs or lower the learning rate")
    return {"auc": roc_auc(data.labels, logits), "logloss": log_loss(data.labels, logits)}


def fit(model: nn.Module, train: CTRArrays, valid: CTRArrays, *, epochs: int = 3,
        batch_size: int = 128, lr: float = 1e-2, device: str | torch.device = "auto",
        progress: bool = True, seed: int = 0, weight_decay: float = 0.0, clip_grad_norm: float = 1.0,
        on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train ``model`` with Adam on binary cross-entropy; keep the weights of the best valid AUC.

    Every model gets the same loop, optimiser and budget, so comparisons between them are fair.
    The model is left on ``device`` holding the best epoch's weights.
    """
    if len(train) == 0:
        raise ValueError("fit: the training set is empty; generate a larger workload or more requests")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"fit: epochs ({epochs}) and batch_size ({batch_size}) must be >= 1 and lr ({lr}) > 0")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    result = TrainResult(device=str(dev), train_requests=len(train),
                         num_parameters=sum(p.numel() for p in model.parameters()))
    steps_per_epoch = math.ceil(len(train) / batch_size)
    best_auc, best_state = -math.inf, None
    t0 = time.perf_counter()
    train_seconds = 0.0
    with _progress(progress, total=epochs * steps_per_epoch) as advance:
        for epoch in range(epochs):
            model.train()
            perm = rng.permutation(len(train))
            loss_sum, n_seen = 0.0, 0
            t_epoch = time.perf_counter()
            for step in range(steps_per_epoch):
                rows = perm[step * batch_size:(step + 1) * batch_size]
                history, candidates, labels = make_batch(train, rows, dev)
                logits = model(history, candidates)
                loss = loss_fn(logits.float(), labels)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                        f"lower the learning rate (now {lr}) or check the inputs")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad_norm > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                optimiser.step()
                loss_sum += loss.item() * len(rows)
                n_seen += len(rows)
                advance(f"epoch {epoch + 1}/{epochs} loss {loss_sum / n_seen:.4f}")
            train_seconds += time.perf_counter() - t_epoch
            metrics = evaluate(model, valid, dev) if len(valid) else {"auc": float("nan"),
                                                                       "logloss": float("nan")}
            row = {"epoch": epoch + 1, "train_loss": loss_sum / n_seen,
                   "valid_auc": metrics["auc"], "valid_logloss": metrics["logloss"]}
            result.epochs.append(row)
            if on_epoch is not None:
                on_epoch(row)
            # NaN AUC (single-class valid set) never beats -inf, so the last epoch is kept then.
            score = metrics["auc"] if not math.isnan(metrics["auc"]) else -math.inf
            if score > best_auc or best_state is None:
                best_auc, result.best_epoch, result.valid = score, epoch + 1, metrics
                best_state = copy.deepcopy(model.state_dict())
    if best_state is not None and result.best_epoch != epochs:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - t0
    result.examples_per_s = epochs * len(train) * train.num_candidates / max(train_seconds, 1e-9)
    return result


class _progress:
    """A rich progress bar over training steps, or a no-op when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._bar = None

    def __enter__(self) -> Callable[[str], None]:
        if not self.enabled:
            return lambda _desc: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        self._bar.__enter__()
        task = self._bar.add_task("training", total=self.total)
        bar = self._bar
        return lambda desc: bar.update(task, advance=1, description=desc)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
