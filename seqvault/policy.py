"""When the sequence-level merge and space reclamation run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MergePolicy:
    """Thresholds for :meth:`SeqVault.maintain` (and its background thread when ``background``).

    A merge runs when the update buffer holds ``max_buffer_events`` events or its oldest event is
    ``max_age_s`` seconds old. A data file (other than the one being written) is reclaimed when
    its live bytes fall below ``reclaim_live_fraction`` of its size. A new data file is started
    once the current one exceeds ``data_file_bytes``. A merge also runs once the WAL holds
    ``max_wal_bytes`` (deletes alone fill it without buffering events).

    Backpressure: while the buffers hold ``stall_buffer_events`` events (merges failing or not
    keeping up), ``append`` waits up to ``stall_timeout_s`` for a merge to drain them, then raises
    BackpressureError; memory never grows without bound.
    """

    background: bool = False
    max_buffer_events: int = 1_000_000
    max_age_s: float = 30.0
    reclaim_live_fraction: float = 0.5
    data_file_bytes: int = 256 << 20
    max_wal_bytes: int = 256 << 20
    interval_s: float = 0.2
    stall_buffer_events: int | None = None  # appends block past this (default 4 x max_buffer_events)
    stall_timeout_s: float = 10.0  # ... for at most this long, then raise BackpressureError

    @property
    def stall_events(self) -> int:
        return self.stall_buffer_events if self.stall_buffer_events is not None else 4 * self.max_buffer_events

    def __post_init__(self) -> None:
        if self.max_buffer_events < 1:
            raise ValueError(f"max_buffer_events must be >= 1, got {self.max_buffer_events}")
        if self.max_age_s < 0 or self.interval_s <= 0:
            raise ValueError("max_age_s must be >= 0 and interval_s > 0")
        if not 0.0 <= self.reclaim_live_fraction <= 1.0:
            raise ValueError(f"reclaim_live_fraction must be in [0, 1], got {self.reclaim_live_fraction}")
        if self.stall_buffer_events is not None and self.stall_buffer_events < 1:
            raise ValueError(f"stall_buffer_events must be >= 1, got {self.stall_buffer_events}")
        if self.stall_timeout_s < 0:
            raise ValueError(f"stall_timeout_s must be >= 0, got {self.stall_timeout_s}")
        if self.data_file_bytes < 4096:
            raise ValueError(f"data_file_bytes must be >= 4096, got {self.data_file_bytes}")
