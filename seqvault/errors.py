"""Errors raised by SeqVault. Kept in one module so the codec, index and engine share them."""

from __future__ import annotations


class SeqVaultError(Exception):
    """Base class of SeqVault's own errors."""


class CorruptionError(SeqVaultError):
    """Stored bytes failed a checksum or structural check; nothing decoded from them is returned."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None,
                 user_id: int | None = None) -> None:
        where = ", ".join(
            part for part in (
                f"file {path}" if path is not None else "",
                f"offset {offset}" if offset is not None else "",
                f"user {user_id}" if user_id is not None else "",
            ) if part
        )
        super().__init__(f"{message} ({where})" if where else message)
        self.path = path
        self.offset = offset
        self.user_id = user_id
