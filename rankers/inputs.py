"""The one input contract every ranking model takes, and the vectorised conversion from store output.

Histories are LEFT-padded: the newest event of every user sits at index ``L - 1`` and padding (id 0)
fills the front. Ids coming from a store are shifted by +1 so that 0 is never a real id; validity is
always derived from ``lengths`` (never from ``id == 0``), so hashing an id onto bucket 0 is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_SIDE_FIELDS: tuple[str, ...] = ("action", "scenario", "category")


@dataclass
class HistoryBatch:
    """A batch of user histories, oldest -> newest, left-padded with 0 to a common length ``L``."""

    item_ids: torch.Tensor                   # [B, L] int64
    side: dict[str, torch.Tensor]            # [B, L] int64 each; 0 = padding
    event_time_ms: torch.Tensor              # [B, L] int64; 0 at padding
    lengths: torch.Tensor                    # [B] int64, number of real events (0 allowed)
    request_time_ms: torch.Tensor            # [B] int64

    def __post_init__(self) -> None:
        if self.item_ids.dim() != 2:
            raise ValueError(f"item_ids must be [B, L]; got shape {tuple(self.item_ids.shape)}")
        shape = self.item_ids.shape
        for name, t in [("event_time_ms", self.event_time_ms), *[(f"side[{k!r}]", v) for k, v in self.side.items()]]:
            if t.shape != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)} but item_ids has {tuple(shape)}; "
                                 "every history field must be [B, L]")
        if self.lengths.shape != shape[:1] or self.request_time_ms.shape != shape[:1]:
            raise ValueError(f"lengths and request_time_ms must be [B]={shape[0]}; got "
                             f"{tuple(self.lengths.shape)} and {tuple(self.request_time_ms.shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.item_ids.shape[1])

    def valid_mask(self) -> torch.Tensor:
        """[B, L] bool, True at real events (the newest ``lengths[b]`` positions)."""
        positions = torch.arange(self.seq_len, device=self.item_ids.device)
        return positions[None, :] >= (self.seq_len - self.lengths.clamp(0, self.seq_len))[:, None]

    def to(self, device: torch.device | str) -> HistoryBatch:
        return HistoryBatch(
            item_ids=self.item_ids.to(device),
            side={k: v.to(device) for k, v in self.side.items()},
            event_time_ms=self.event_time_ms.to(device),
            lengths=self.lengths.to(device),
            request_time_ms=self.request_time_ms.to(device),
        )

    def select(self, rows: torch.Tensor | slice) -> HistoryBatch:
        """The sub-batch of the given rows (index tensor or slice)."""
        return HistoryBatch(
            item_ids=self.item_ids[rows],
            side={k: v[rows] for k, v in self.side.items()},
            event_time_ms=self.event_time_ms[rows],
            lengths=self.lengths[rows],
            request_time_ms=self.request_time_ms[rows],
        )


@dataclass
class Candidates:
    """C candidate items per user, with the candidate-side fields (e.g. ``category``)."""

    item_ids: torch.Tensor                                      # [B, C] int64
    side: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, C] each; may be empty

    def __post_init__(self) -> None:
        if self.item_ids.dim() != 2:
            raise ValueError(f"candidate item_ids must be [B, C]; got shape {tuple(self.item_ids.shape)}")
        for k, v in self.side.items():
            if v.shape != self.item_ids.shape:
                raise ValueError(f"candidate side[{k!r}] has shape {tuple(v.shape)} but item_ids has "
                                 f"{tuple(self.item_ids.shape)}")

    @property
    def count(self) -> int:
        return int(self.item_ids.shape[1])

    def to(self, device: torch.device | str) -> Candidates:
        return Candidates(self.item_ids.to(device), {k: v.to(device) for k, v in self.side.items()})

    def select(self, rows: torch.Tensor | slice = slice(None), cols: torch.Tensor | slice = slice(None)) -> Candidates:
        """The given rows and candidate columns (keeps 2-D shapes when given slices / 1-D index tensors)."""
        return Candidates(self.item_ids[rows][:, cols], {k: v[rows][:, cols] for k, v in self.side.items()})


def _shifted(values: np.ndarray) -> np.ndarray:
    # +1 keeps 0 free for padding; int64 arithmetic wraps for ids >= 2**63, which only hashing sees.
    return values.astype(np.int64, copy=False) + 1


def history_from_csr(
    offsets: np.ndarray,
    columns: Mapping[str, np.ndarray],
    *,
    max_len: int,
    request_time_ms: np.ndarray,
    item_field: str = "item_id",
    time_field: str = "ts",
    side_fields: Sequence[str] = DEFAULT_SIDE_FIELDS,
) -> HistoryBatch:
    """Turn the CSR form a store returns (user ``i`` is ``offsets[i]:offsets[i+1]``, oldest first) into a
    left-padded :class:`HistoryBatch` that keeps each user's newest ``max_len`` events.

    Item and side ids are shifted by +1 so that 0 stays padding; times are copied as they are.
    Vectorised: one gather per column, no per-user Python loop.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1; got {max_len}")
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be a non-decreasing 1-D array starting at 0 (length users + 1)")
    n_users = offsets.size - 1
    request_time_ms = np.asarray(request_time_ms)
    if request_time_ms.shape != (n_users,):
        raise ValueError(f"request_time_ms must have one entry per user ({n_users}); "
                         f"got shape {request_time_ms.shape}")
    needed = [item_field, time_field, *side_fields]
    missing = [name for name in needed if name not in columns]
    if missing:
        raise KeyError(f"columns {missing} are missing; available: {sorted(columns)}. Pass side_fields= "
                       "(and item_field=/time_field=) naming columns the store returned.")
    total = int(offsets[-1])
    for name in needed:
        if len(columns[name]) != total:
            raise ValueError(f"column {name!r} has {len(columns[name])} values but offsets end at {total}")

    counts = np.diff(offsets)
    lengths = np.minimum(counts, max_len)
    positions = np.arange(max_len, dtype=np.int64)
    # Output slot j of user i holds source event offsets[i+1] - max_len + j when it is real.
    source = offsets[1:, None] - max_len + positions[None, :]
    valid = positions[None, :] >= (max_len - lengths)[:, None]
    source = np.where(valid, source, 0)

    def gather(name: str, shift: bool) -> torch.Tensor:
        col = np.asarray(columns[name])
        if total == 0:
            return torch.zeros((n_users, max_len), dtype=torch.int64)
        values = _shifted(col) if shift else col.astype(np.int64, copy=False)
        return torch.from_numpy(np.where(valid, values[source], 0))

    return HistoryBatch(
        item_ids=gather(item_field, shift=True),
        side={name: gather(name, shift=True) for name in side_fields},
        event_time_ms=gather(time_field, shift=False),
        lengths=torch.from_numpy(lengths.astype(np.int64)),
        request_time_ms=torch.from_numpy(request_time_ms.astype(np.int64)),
    )


def candidates_from_numpy(item_ids: np.ndarray, side: Mapping[str, np.ndarray] | None = None) -> Candidates:
    """Candidates from raw store/workload ids ([B, C] arrays), shifted by +1 like :func:`history_from_csr`
    so that a candidate and the same item in a history get the same embedding."""
    item_ids = np.asarray(item_ids)
    if item_ids.ndim == 1:
        item_ids = item_ids[:, None]
    return Candidates(
        torch.from_numpy(_shifted(item_ids)),
        {k: torch.from_numpy(_shifted(np.asarray(v).reshape(item_ids.shape))) for k, v in (side or {}).items()},
    )
