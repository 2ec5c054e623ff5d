"""Rows on their way to a model: keys, checks against the model's feature needs, Parquet rows as examples.

Scoring works on batches of rows from one source file (``RowBatch``), not on single rows: Beam's cost per
element is paid once per batch. A row that cannot be scored never fails the job and never sinks the other
rows of its batch: it leaves as a ``DeadLetter`` that says why.
"""

import base64
import dataclasses
import json
import re
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import pyarrow as pa
import tensorflow as tf
from google.protobuf.message import DecodeError

from tfrecsys.scoring.saved_models import FeatureNeed, ScoringModel

Key = Union[int, str]
KEY_DTYPES = ("int64", "string")
_LIST_KIND = {"int64": "int64_list", "float32": "float_list", "string": "bytes_list"}
# Which column types may feed a feature of each dtype: ints widen to floats exactly enough for features
# such as prices stored as integers; nothing narrows (a float id or a numeric string would be a guess).
_FEEDS = {"int64": ("int64",), "float32": ("float32", "int64"), "string": ("string",)}


@dataclasses.dataclass
class RowBatch:
    """Consecutive rows of one source file: serialized tf.train.Example, in file order."""
    source: str
    records: list[bytes]

    def __len__(self) -> int:
        return len(self.records)


@dataclasses.dataclass
class KeyedBatch:
    """The rows of one source that a model scores, each with its key."""
    source: str
    keys: list[Key]
    records: list[bytes]

    def __len__(self) -> int:
        return len(self.records)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A row (or the unreadable rest of a file) that was not scored, and why.

    ``record`` is the serialized tf.train.Example as it would have been scored; ``row`` holds the Parquet
    columns instead when no example could be built from them. The model fields are set when one model
    rejected the row (another model of the same run may have scored it).
    """
    source: str
    reason: str
    key: Optional[Key] = None
    model_name: Optional[str] = None
    model_version: Optional[int] = None
    record: Optional[bytes] = None
    row: Optional[dict] = None

    def to_json(self) -> str:
        entry: dict[str, Any] = {"source": self.source, "reason": self.reason, "key": self.key,
                                 "model_name": self.model_name, "model_version": self.model_version}
        if self.record is not None:
            entry["record_base64"] = base64.b64encode(self.record).decode("ascii")
        if self.row is not None:
            entry["row"] = self.row
        return json.dumps(entry, sort_keys=True)


class RowError(ValueError):
    """Why one row cannot be scored; the message becomes its dead letter's reason."""


def example_key(features: Mapping[str, tf.train.Feature], key_feature: str, key_dtype: str) -> Key:
    """The row's key: the single int64 (``key_dtype`` "int64") or UTF-8 bytes ("string") value of ``key_feature``."""
    if key_feature not in features:
        raise RowError(f"key feature {key_feature!r} is missing")
    feature = features[key_feature]
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value if kind else ()
    if len(values) != 1 or kind != _LIST_KIND[key_dtype]:
        raise RowError(f"key feature {key_feature!r} must hold exactly one {key_dtype} value "
                       f"({_LIST_KIND[key_dtype]}), got {len(values)} value(s) in {kind or 'an empty feature'}")
    key = values[0]
    if key_dtype == "int64":
        return key
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise RowError(f"key feature {key_feature!r} is not UTF-8 text: {key!r}") from None


def check_example(features: Mapping[str, tf.train.Feature], needs: Iterable[FeatureNeed]) -> Optional[str]:
    """The first reason the model's parsing would reject this example, or None when it would parse it.

    Mirrors ``tf.io.parse_example`` with the schema's spec: scalars and dense vectors are FixedLenFeature
    without default (present, right type, exact count), sequences RaggedFeature (any count, right type; a
    sequence the row lacks is parsed as an empty one, so it is no reason to reject the row: the row is scored
    alike whether or not another row of its batch failed).
    """
    for need in needs:
        if need.name not in features:
            if need.num_values is None:
                continue  # parsed as an empty sequence
            return f"feature {need.name!r} is missing (the model parses {need.describe()})"
        feature = features[need.name]
        kind = feature.WhichOneof("kind")
        count = len(getattr(feature, kind).value) if kind else 0
        if kind is None and need.num_values is None:
            continue  # an empty sequence: a user without history
        if kind != _LIST_KIND[need.dtype]:
            return (f"feature {need.name!r} holds {kind or 'no values'}; the model parses {need.dtype} "
                    f"({_LIST_KIND[need.dtype]})")
        if need.num_values is not None and count != need.num_values:
            return f"feature {need.name!r} holds {count} values; the model parses exactly {need.num_values}"
    return None


def key_batch(batch: RowBatch, key_feature: str, key_dtype: str) -> tuple[KeyedBatch, list[DeadLetter]]:
    """Pairs each row of a batch with its key; rows that are not tf.train.Example or have no usable key
    become dead letters.

    One vectorised parse of the key feature serves a clean batch; only a batch where it fails is looked at
    row by row in Python, to tell the good rows from the bad and say what is wrong with each.
    """
    try:
        return KeyedBatch(batch.source, _parse_keys(batch.records, key_feature, key_dtype), list(batch.records)), []
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
        pass
    keyed, rejected = KeyedBatch(batch.source, [], []), []
    for record in batch.records:
        try:
            features = tf.train.Example.FromString(record).features.feature
        except DecodeError as error:
            rejected.append(DeadLetter(batch.source, f"not a serialized tf.train.Example ({error})", record=record))
            continue
        try:
            keyed.keys.append(example_key(features, key_feature, key_dtype))
        except RowError as error:
            rejected.append(DeadLetter(batch.source, str(error), record=record))
            continue
        keyed.records.append(record)
    return keyed, rejected


def _parse_keys(records: list[bytes], key_feature: str, key_dtype: str) -> list[Key]:
    """The keys of all rows at once; raises (InvalidArgumentError, UnicodeDecodeError) if any row has no
    usable key. TensorFlow's message quotes the bytes of an unparseable row, which Python then fails to
    decode: that is the UnicodeDecodeError."""
    dtype = tf.int64 if key_dtype == "int64" else tf.string
    keys = tf.io.parse_example(tf.constant(records, dtype=tf.string),
                               {key_feature: tf.io.FixedLenFeature([], dtype)})[key_feature].numpy().tolist()
    return keys if key_dtype == "int64" else [key.decode("utf-8") for key in keys]


def first_problem(record: bytes, needs: Iterable[FeatureNeed]) -> Optional[str]:
    """``check_example`` on a serialized row."""
    try:
        features = tf.train.Example.FromString(record).features.feature
    except DecodeError as error:
        return f"not a serialized tf.train.Example ({error})"
    return check_example(features, needs)


def short_tf_message(message: str) -> str:
    """The one line of a TensorFlow error that says what is wrong, e.g. "Feature: user_id (data type: int64)
    is required but could not be found.", without the graph-execution header, node names and op suffix."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(
        ("Graph execution error", "Detected at node", "<stack traces", "File ", "[["))]
    line = (useful or lines or ["unknown error"])[0]
    line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line)
    # A failed tf.debugging assertion in the model's parsing: its own message, without the tensors' dump.
    assertion = re.match(r"^assertion failed: \[(.*?)\](?: \[|$)", line)
    if assertion:
        line = assertion.group(1).replace("\\'", "'")
    line = re.sub(r"\s*\[\[\{\{node [^]]*\]\]", "", line)
    line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", line)
    # Rows are scored one at a time by then, so the batch index and the unnamed example add nothing.
    line = re.sub(r"^Name: <unknown>, ", "", line)
    return re.sub(r", Index: \d+\.", ".", line).strip()


def merged_needs(models: Sequence[ScoringModel]) -> Optional[dict[str, FeatureNeed]]:
    """The features any of ``models`` parses, by name; None when some model does not say what it parses
    (then every column that an example can hold is passed on).

    Raises ValueError when two models parse one feature differently: one column cannot feed both.
    """
    if any(model.needs is None for model in models):
        return None
    merged: dict[str, tuple[FeatureNeed, str]] = {}
    for model in models:
        for need in model.needs.features:
            if need.name in merged:
                other, other_tag = merged[need.name]
                if (other.dtype, other.is_list) != (need.dtype, need.is_list):
                    raise ValueError(f"Feature {need.name!r} is {other.describe()} for model {other_tag} but "
                                     f"{need.describe()} for model {model.tag}; one input column cannot feed both")
                continue
            merged[need.name] = (need, model.tag)
    return {name: need for name, (need, _) in merged.items()}


def _value_type(arrow_type: pa.DataType) -> tuple[bool, pa.DataType]:
    """``(is_list, element type)``, dictionary encoding looked through."""
    is_list = (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
               or pa.types.is_fixed_size_list(arrow_type))
    value = arrow_type.value_type if is_list else arrow_type
    if pa.types.is_dictionary(value):
        value = value.value_type
    return is_list, value


def arrow_feature_dtype(arrow_type: pa.DataType) -> tuple[bool, Optional[str]]:
    """``(is_list, "int64" | "float32" | "string")`` for a column type a tf.train.Example can hold;
    the dtype is None for any other type (timestamps, structs, nested lists)."""
    is_list, value = _value_type(arrow_type)
    if pa.types.is_integer(value) or pa.types.is_boolean(value):
        return is_list, "int64"
    if pa.types.is_floating(value):
        return is_list, "float32"
    if (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_binary(value)
            or pa.types.is_large_binary(value)):
        return is_list, "string"
    return is_list, None


def parquet_key_dtype(arrow_schema: pa.Schema, key_column: str, source: str) -> str:
    """The key's dtype from its column: integers are int64 keys, strings and bytes are string keys."""
    if key_column not in arrow_schema.names:
        raise ValueError(f"{source} has no key column {key_column!r} (--key_feature names it); its columns: "
                         f"{arrow_schema.names}")
    is_list, dtype = arrow_feature_dtype(arrow_schema.field(key_column).type)
    if is_list or dtype not in KEY_DTYPES:
        raise ValueError(f"Key column {key_column!r} of {source} is {arrow_schema.field(key_column).type}; a key "
                         "must be an integer or a string")
    return dtype


@dataclasses.dataclass(frozen=True)
class ColumnPlan:
    """How one Parquet column becomes one tf.train.Example feature."""
    name: str
    dtype: str
    is_list: bool


class ParquetRows:
    """Turns Parquet tables into serialized tf.train.Example rows with the model's feature dtypes.

    Args:
      needs: the features the models parse (``merged_needs``); None to pass on every column an example can
        hold, typed by its Parquet type.
      key_column: copied into every example as the key feature.
      key_dtype: the key's dtype ("int64" or "string").
    """

    def __init__(self, needs: Optional[Mapping[str, FeatureNeed]], key_column: str, key_dtype: str):
        self.needs = dict(needs) if needs is not None else None
        self.key_column = key_column
        self.key_dtype = key_dtype

    @property
    def columns(self) -> Optional[list[str]]:
        """The columns to read; None for all of them."""
        if self.needs is None:
            return None
        return sorted(set(self.needs) | {self.key_column})

    def plan(self, arrow_schema: pa.Schema, source: str) -> list[ColumnPlan]:
        """The conversion of each column, checked against the model's needs.

        Raises ValueError naming the column, its Parquet type, the file and what the model parses, when a
        needed column is missing or holds a type that cannot feed the feature.
        """
        plans = [ColumnPlan(self.key_column, self.key_dtype, False)]
        if self.needs is None:
            for field in arrow_schema:
                is_list, dtype = arrow_feature_dtype(field.type)
                if field.name != self.key_column and dtype is not None:
                    plans.append(ColumnPlan(field.name, dtype, is_list))
            return plans
        for name, need in sorted(self.needs.items()):
            if name not in arrow_schema.names:
                raise ValueError(f"{source} has no column {name!r}; the model parses feature {name!r} as "
                                 f"{need.describe()}. Its columns: {arrow_schema.names}")
            column_type = arrow_schema.field(name).type
            is_list, dtype = arrow_feature_dtype(column_type)
            if is_list != need.is_list or dtype not in _FEEDS[need.dtype]:
                shape = "a list column" if need.is_list else "a scalar column"
                raise ValueError(f"Column {name!r} of {source} is {column_type}, which cannot feed feature "
                                 f"{name!r}: the model parses {need.describe()} ({shape} of "
                                 f"{' or '.join(_FEEDS[need.dtype])})")
            if name != self.key_column:
                plans.append(ColumnPlan(name, need.dtype, need.is_list))
        return plans

    def to_examples(self, table: pa.Table, source: str) -> tuple[RowBatch, list[DeadLetter]]:
        """One serialized example per row of ``table``; rows with nulls become dead letters.

        A table whose columns do not fit the model (a file unlike the first one) rejects all its rows with
        the reason ``plan`` gives.
        """
        try:
            plans = self.plan(table.schema, source)
        except ValueError as error:
            rows = table.to_pylist()
            return RowBatch(source, []), [DeadLetter(source, str(error), _key_of(row, self.key_column),
                                                     row=_json_row(row)) for row in rows]
        columns = [(plan, table.column(plan.name).to_pylist()) for plan in plans]
        records, rejected = [], []
        for row in range(table.num_rows):
            try:
                records.append(_example(columns, row))
            except RowError as error:
                values = {plan.name: values[row] for plan, values in columns}
                rejected.append(DeadLetter(source, str(error), _key_of(values, self.key_column),
                                           row=_json_row(values)))
        return RowBatch(source, records), rejected


def _example(columns: Sequence[tuple[ColumnPlan, list]], row: int) -> bytes:
    feature = {}
    for plan, values in columns:
        value = values[row]
        if value is None:
            raise RowError(f"column {plan.name!r} is null")
        items = value if plan.is_list else [value]
        if plan.is_list and any(item is None for item in items):
            raise RowError(f"column {plan.name!r} holds a null element")
        if plan.dtype == "string":
            items = [item.encode("utf-8") if isinstance(item, str) else item for item in items]
        try:
            if plan.dtype == "int64":
                feature[plan.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=items))
            elif plan.dtype == "float32":
                feature[plan.name] = tf.train.Feature(float_list=tf.train.FloatList(value=items))
            else:
                feature[plan.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=items))
        except (TypeError, ValueError) as error:
            raise RowError(f"column {plan.name!r} cannot be held as {plan.dtype}: {error}") from None
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _key_of(row: Mapping[str, Any], key_column: str) -> Optional[Key]:
    key = row.get(key_column)
    if isinstance(key, bytes):
        return key.decode("utf-8", errors="backslashreplace")
    return key if isinstance(key, (int, str)) else None


def _json_row(row: Mapping[str, Any]) -> dict:
    """A Parquet row as JSON can hold it: bytes as (escaped) text, other values as Python gives them."""

    def plain(value):
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="backslashreplace")
        if isinstance(value, list):
            return [plain(item) for item in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return str(value)

    return {name: plain(value) for name, value in row.items()}
