"""SeqVault: a schema-aware store of each user's newest events (DRAM hash index, packed columns on SSD).

Public API: :class:`SeqVault` (open / append / get / get_many / delete / merge / bulk_load / stats /
open_vectors), :class:`VectorTable` (cached per-user vectors) and ``VECTOR_DTYPES``,
:class:`MergePolicy`, the shared :class:`Schema` and :class:`Field`, and the errors
:class:`SeqVaultError`, :class:`CorruptionError` and :class:`SchemaError`.
"""

from seqvault.errors import CorruptionError, SeqVaultError
from seqvault.policy import MergePolicy
from seqvault.schema import Field, Schema, SchemaError
from seqvault.vectorcodec import VECTOR_DTYPES


def __getattr__(name: str) -> object:
    # The engine pulls in Numba kernels; import it on first use so `import seqvault` stays light
    # for code that only needs the schema.
    if name == "SeqVault":
        from seqvault.engine import SeqVault
        return SeqVault
    if name == "VectorTable":
        from seqvault.vectors import VectorTable
        return VectorTable
    raise AttributeError(f"module 'seqvault' has no attribute {name!r}")


__all__ = ["VECTOR_DTYPES", "CorruptionError", "Field", "MergePolicy", "Schema", "SchemaError", "SeqVault",
           "SeqVaultError", "VectorTable"]
