import numpy as np
import pytest

from seqvault.schema import Field, Schema, SchemaError


@pytest.fixture
def schema() -> Schema:
    return Schema(
        [Field("item_id", "uint32"), Field("ts", "int64"), Field("action", "uint8"), Field("delta", "int16")],
        time_field="ts",
        name="test",
    )


def batch(n: int = 4) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return np.arange(n, dtype=np.uint64), {
        "item_id": np.arange(n, dtype=np.uint32),
        "ts": np.arange(n, dtype=np.int64) * 1000,
        "action": np.ones(n, dtype=np.uint8),
        "delta": -np.arange(n, dtype=np.int16),
    }


def test_valid_batch_keeps_dtypes(schema):
    uids, cols = schema.validate(*batch())
    assert uids.dtype == np.uint64
    assert {k: v.dtype for k, v in cols.items()} == {f.name: f.np_dtype for f in schema.fields}


def test_safe_casts_are_accepted(schema):
    uids, cols = batch()
    cols["item_id"] = cols["item_id"].astype(np.int64)  # values fit
    cols["action"] = [1, 2, 3, 4]
    u, c = schema.validate(uids.astype(np.int32), cols)
    assert c["item_id"].dtype == np.uint32 and c["action"].dtype == np.uint8 and u.dtype == np.uint64
    np.testing.assert_array_equal(c["action"], [1, 2, 3, 4])


def test_missing_column_named(schema):
    uids, cols = batch()
    del cols["action"]
    with pytest.raises(SchemaError, match="missing column 'action'") as e:
        schema.validate(uids, cols)
    assert e.value.field == "action"


def test_extra_column_named(schema):
    uids, cols = batch()
    cols["bogus"] = np.zeros(4, dtype=np.int64)
    with pytest.raises(SchemaError, match="unexpected column 'bogus'") as e:
        schema.validate(uids, cols)
    assert e.value.field == "bogus"


def test_length_mismatch(schema):
    uids, cols = batch()
    cols["ts"] = cols["ts"][:3]
    with pytest.raises(SchemaError, match="'ts' has 3 values but there are 4") as e:
        schema.validate(uids, cols)
    assert (e.value.field, e.value.row) == ("ts", 3)


def test_out_of_range_names_first_bad_row(schema):
    uids, cols = batch(6)
    cols["action"] = np.array([0, 1, 255, 256, 300, -1], dtype=np.int64)
    with pytest.raises(SchemaError, match="at row 3") as e:
        schema.validate(uids, cols)
    assert (e.value.field, e.value.row) == ("action", 3)


def test_negative_into_unsigned(schema):
    uids, cols = batch(3)
    cols["item_id"] = np.array([5, -2, 7], dtype=np.int32)
    with pytest.raises(SchemaError) as e:
        schema.validate(uids, cols)
    assert (e.value.field, e.value.row) == ("item_id", 1)


def test_negative_user_id(schema):
    _, cols = batch(3)
    with pytest.raises(SchemaError) as e:
        schema.validate(np.array([1, 2, -3]), cols)
    assert (e.value.field, e.value.row) == ("user_id", 2)


def test_uint64_too_big_for_int64(schema):
    s = Schema([Field("t", "int64")], time_field="t")
    with pytest.raises(SchemaError) as e:
        s.validate(np.array([1, 2], dtype=np.uint64), {"t": np.array([1, 2**63], dtype=np.uint64)})
    assert (e.value.field, e.value.row) == ("t", 1)


@pytest.mark.parametrize("bad", [np.array([1.0, 2.5, 3.0, 4.0]), np.array(["a", "b", "c", "d"])])
def test_unsafe_dtype_rejected(schema, bad):
    uids, cols = batch()
    cols["delta"] = bad
    with pytest.raises(SchemaError, match="cannot be cast safely") as e:
        schema.validate(uids, cols)
    assert e.value.field == "delta"


def test_2d_rejected(schema):
    uids, cols = batch()
    cols["ts"] = cols["ts"].reshape(2, 2)
    with pytest.raises(SchemaError, match="1-D"):
        schema.validate(uids, cols)


def test_json_round_trip(schema):
    again = Schema.from_json(schema.to_json())
    assert again == schema and again.time_field == "ts" and again.names == schema.names
    assert again.row_bytes == 4 + 8 + 1 + 2


@pytest.mark.parametrize(
    "fields,time,msg",
    [
        ([Field("a", "int64"), Field("a", "int64")], "a", "twice"),
        ([Field("a", "float32")], "a", "dtype"),
        ([Field("a", "int64")], "b", "time field"),
        ([Field("user_id", "int64")], "user_id", "reserved"),
        ([Field("not valid", "int64")], "not valid", "identifier"),
        ([], "a", "at least one"),
    ],
)
def test_bad_definitions(fields, time, msg):
    with pytest.raises(SchemaError, match=msg):
        Schema(fields, time_field=time)


def test_malformed_json():
    with pytest.raises(SchemaError, match="not valid JSON"):
        Schema.from_json("{nope")
    with pytest.raises(SchemaError, match="malformed"):
        Schema.from_json('{"fields": []}')
