"""SeqVault: a schema-aware store of each user's newest events (DRAM hash index, packed columns on SSD)."""

from seqvault.schema import Field, Schema, SchemaError

__all__ = ["Field", "Schema", "SchemaError"]
