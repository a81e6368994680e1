"""The event schema shared by stores and workloads.

A :class:`Schema` is an ordered list of named integer fields with one declared time field.
Every store keeps each field as its own column; every workload produces batches that a
schema validates before anything is written anywhere.
"""

from __future__ import annotations

import json
import keyword
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

INTEGER_DTYPES: tuple[str, ...] = (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
)
USER_ID_DTYPE = np.dtype(np.uint64)


class SchemaError(ValueError):
    """A batch of events (or a schema definition) does not fit the schema.

    ``field`` names the offending field (``"user_id"`` for the user ids) and ``row`` the first bad
    row, where there is one.
    """

    def __init__(self, message: str, field: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.row = row


@dataclass(frozen=True)
class Field:
    """One integer column of the schema."""

    name: str
    dtype: str
    doc: str = ""

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


class Schema:
    """Ordered integer fields plus the name of the time field that orders each user's events."""

    def __init__(self, fields: Sequence[Field], time_field: str, name: str = "") -> None:
        if not fields:
            raise SchemaError("a schema needs at least one field")
        seen: set[str] = set()
        for f in fields:
            if not f.name.isidentifier() or keyword.iskeyword(f.name):
                raise SchemaError(f"field name {f.name!r} is not a valid identifier", field=f.name)
            if f.name == "user_id":
                raise SchemaError("'user_id' is reserved: user ids are passed separately", field=f.name)
            if f.name in seen:
                raise SchemaError(f"field {f.name!r} is declared twice", field=f.name)
            if f.dtype not in INTEGER_DTYPES:
                raise SchemaError(
                    f"field {f.name!r} has dtype {f.dtype!r}; allowed: {', '.join(INTEGER_DTYPES)}",
                    field=f.name,
                )
            seen.add(f.name)
        if time_field not in seen:
            raise SchemaError(f"time field {time_field!r} is not one of the fields", field=time_field)
        self.fields: tuple[Field, ...] = tuple(fields)
        self.time_field = time_field
        self.name = name

    # -- introspection -------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise SchemaError(f"unknown field {name!r}; the schema has {', '.join(self.names)}", field=name)

    def dtype(self, name: str) -> np.dtype:
        return self.field(name).np_dtype

    @property
    def row_bytes(self) -> int:
        """Bytes one event takes at the declared dtypes (user id excluded)."""
        return sum(f.np_dtype.itemsize for f in self.fields)

    def empty_columns(self, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return {n: np.empty(0, dtype=self.dtype(n)) for n in (fields or self.names)}

    # -- validation ----------------------------------------------------------------------------
    def validate(
        self, user_ids: np.ndarray | Sequence[int], columns: Mapping[str, np.ndarray | Sequence[int]]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Check a batch and return it as (uint64 user ids, columns at the declared dtypes).

        Raises :class:`SchemaError` naming the field and first bad row on a missing or extra
        column, mismatched lengths, a dtype that cannot be cast safely, or an out-of-range value.
        """
        uids = _cast_integer(user_ids, USER_ID_DTYPE, "user_id")
        n = len(uids)
        missing = [name for name in self.names if name not in columns]
        if missing:
            raise SchemaError(f"missing column {missing[0]!r} (schema fields: {', '.join(self.names)})",
                              field=missing[0])
        extra = [name for name in columns if name not in self.names]
        if extra:
            raise SchemaError(f"unexpected column {extra[0]!r} (schema fields: {', '.join(self.names)})",
                              field=extra[0])
        out: dict[str, np.ndarray] = {}
        for f in self.fields:
            col = columns[f.name]
            arr = np.asarray(col)
            if arr.ndim != 1:
                raise SchemaError(f"column {f.name!r} must be 1-D, got shape {arr.shape}", field=f.name)
            if len(arr) != n:
                raise SchemaError(
                    f"column {f.name!r} has {len(arr)} values but there are {n} user ids",
                    field=f.name, row=min(len(arr), n),
                )
            out[f.name] = _cast_integer(arr, f.np_dtype, f.name)
        return uids, out

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "time_field": self.time_field,
            "fields": [{"name": f.name, "dtype": f.dtype, "doc": f.doc} for f in self.fields],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Schema:
        try:
            fields = [Field(str(f["name"]), str(f["dtype"]), str(f.get("doc", ""))) for f in d["fields"]]
            return cls(fields, time_field=str(d["time_field"]), name=str(d.get("name", "")))
        except (KeyError, TypeError) as e:
            raise SchemaError(f"malformed schema description: missing or bad key {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Schema:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SchemaError(f"schema is not valid JSON: {e}") from e
        return cls.from_dict(d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        cols = ", ".join(f"{f.name}:{f.dtype}" for f in self.fields)
        return f"Schema({self.name or 'unnamed'}: {cols}; time={self.time_field})"


def _cast_integer(values: np.ndarray | Sequence[int], dtype: np.dtype, field: str) -> np.ndarray:
    """Cast to an integer dtype, refusing anything that would change a value."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise SchemaError(f"{field!r} must be 1-D, got shape {arr.shape}", field=field)
    if arr.dtype == dtype:
        return arr
    if len(arr) == 0:
        return arr.astype(dtype)
    if arr.dtype.kind == "b":
        return arr.astype(dtype)
    if arr.dtype.kind not in "iu":
        raise SchemaError(
            f"{field!r} has dtype {arr.dtype}, which cannot be cast safely to {dtype}; "
            f"convert it to an integer array first",
            field=field, row=0,
        )
    if np.can_cast(arr.dtype, dtype, casting="safe"):
        return arr.astype(dtype)
    info = np.iinfo(dtype)
    # Compare in a dtype that holds both ranges: Python ints via object would be slow, so split
    # the checks by sign instead.
    if arr.dtype.kind == "i":
        bad = arr < 0 if info.min == 0 else (arr < info.min)
        if info.max < np.iinfo(arr.dtype).max:
            bad |= arr > info.max
    else:  # unsigned source
        bad = arr > np.uint64(info.max)
    if bad.any():
        row = int(np.argmax(bad))
        raise SchemaError(
            f"{field!r} value {arr[row]} at row {row} is out of range for {dtype} "
            f"[{info.min}, {info.max}]",
            field=field, row=row,
        )
    return arr.astype(dtype)
