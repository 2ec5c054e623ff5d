"""Item frequency tables: how often each item occurs in the training data.

Retrieval needs them twice: the logQ correction of Yi et al. (RecSys 2019) subtracts ``log q(item)`` from
every in-batch logit, where ``q(item) = count(item) / total`` is the probability that an in-batch candidate
is that item, and mixed negative sampling draws global negatives with probability ``∝ count^α``.

A table is a TSV file with one line per item, ``item_id<TAB>count``, no header, sorted by count (descending)
and then by id, so the same counts always give byte-identical files. Ids are int64 or strings; a string id
may not contain a tab or a line break.
"""

import os
import re
import uuid
from typing import Iterable, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from tfrecsys.data.input import DataError

ItemId = Union[int, str]
_KINDS = {"int64_list": tf.int64, "bytes_list": tf.string}
_READ_BATCH = 4096
_INT64 = re.compile(r"^-?[0-9]+$")


def _feature_dtype(path: str, feature: str) -> tf.DType:
    """The dtype of ``feature`` in the first record of ``path`` (int64 or string ids)."""
    first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    if first is None:
        raise DataError(f"{path}: the file holds no records")
    example = tf.train.Example.FromString(first.numpy())
    if feature not in example.features.feature:
        raise DataError(f"{path}: record 0 has no feature {feature!r}; the record has "
                        f"{sorted(example.features.feature)}")
    kind = example.features.feature[feature].WhichOneof("kind")
    if kind not in _KINDS:
        raise DataError(f"{path}: feature {feature!r} is {kind}; item ids must be int64_list or bytes_list")
    return _KINDS[kind]


def count_items(files: Iterable[str], feature: str) -> dict:
    """Occurrences of every value of ``feature`` in TFRecord files of tf.train.Example.

    Every value counts, so a list feature (a history) counts each of its ids. Returns ``{id: count}`` with
    int ids for int64 features and str ids for bytes features. A record without the feature is an error that
    names the file and the record: silently counting nothing would bias the table.
    """
    files = list(files)
    if not files:
        raise DataError(f"count_items: no input files for feature {feature!r}")
    dtype = _feature_dtype(files[0], feature)
    spec = {feature: tf.io.RaggedFeature(dtype)}
    counts: dict = {}
    for path in files:
        dataset = tf.data.TFRecordDataset(path).batch(_READ_BATCH).map(
            lambda records: tf.io.parse_example(records, spec)[feature])
        first_row = 0
        try:
            for ragged in dataset:
                lengths = ragged.row_lengths().numpy()
                if (lengths == 0).any():
                    raise DataError(f"{path}: record {first_row + int(np.argmax(lengths == 0))} has no value for "
                                    f"feature {feature!r}")
                values, value_counts = np.unique(ragged.flat_values.numpy(), return_counts=True)
                for value, count in zip(values.tolist(), value_counts.tolist()):
                    key = value.decode("utf-8") if isinstance(value, bytes) else int(value)
                    counts[key] = counts.get(key, 0) + count
                first_row += len(lengths)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
            raise DataError(f"{path}: cannot read feature {feature!r} near record {first_row}: "
                            f"{error.message.splitlines()[0]}") from None
    return counts


def _sort_key(item):
    item_id, count = item
    return (-count, isinstance(item_id, str), item_id)


def write_item_frequency(path: str, counts: Mapping[ItemId, int]) -> None:
    """Writes ``counts`` as an item frequency table at ``path`` (any tf.io.gfile path).

    The file is written beside its final name and renamed, so a reader never sees half a table. Fails,
    naming the item, on a negative or non-integer count and on a string id with a tab or line break.
    """
    lines = []
    for item_id, count in sorted(counts.items(), key=_sort_key):
        if isinstance(count, (bool, float)) or int(count) != count or count < 0:
            raise ValueError(f"item frequency table {path}: item {item_id!r} has count {count!r}; counts are "
                             "non-negative integers")
        if isinstance(item_id, bytes):
            item_id = item_id.decode("utf-8")
        if isinstance(item_id, str) and any(c in item_id for c in "\t\r\n"):
            raise ValueError(f"item frequency table {path}: item id {item_id!r} contains a tab or line break")
        if not isinstance(item_id, (str, int, np.integer)):
            raise ValueError(f"item frequency table {path}: item id {item_id!r} is neither int nor str")
        lines.append(f"{item_id}\t{int(count)}\n")
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    staging = os.path.join(directory, f".tmp-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
    try:
        with tf.io.gfile.GFile(staging, "w") as f:
            f.write("".join(lines))
        tf.io.gfile.rename(staging, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.remove(staging)


def read_item_frequency(path: str, key_dtype: Optional[str] = None) -> dict:
    """Reads an item frequency table into ``{id: count}``.

    ``key_dtype`` is "int64" or "string" (the item feature's dtype in the schema); when None, ids are ints if
    every id is an integer literal and strings otherwise. A malformed line is an error naming the file and
    line number.
    """
    if key_dtype not in (None, "int64", "string"):
        raise ValueError(f"key_dtype must be 'int64', 'string' or None, got {key_dtype!r}")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"item frequency table {path} does not exist")
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0]:
            raise DataError(f"{path}: line {number}: expected 'item_id<TAB>count', got {line!r}")
        try:
            count = int(fields[1])
        except ValueError:
            raise DataError(f"{path}: line {number}: count {fields[1]!r} is not an integer") from None
        if count < 0:
            raise DataError(f"{path}: line {number}: count {count} is negative")
        rows.append((number, fields[0], count))
    if key_dtype is None:
        key_dtype = "int64" if all(_is_int(item_id) for _, item_id, _ in rows) else "string"
    counts: dict = {}
    for number, item_id, count in rows:
        if key_dtype == "int64":
            if not _is_int(item_id):
                raise DataError(f"{path}: line {number}: item id {item_id!r} is not an int64 id")
            item_id = int(item_id)
        if item_id in counts:
            raise DataError(f"{path}: line {number}: item {item_id!r} is listed twice")
        counts[item_id] = count
    return counts


def _is_int(text: str) -> bool:
    """An int64 literal: Python's int() would also take "1_000" and " 7", which no writer produces."""
    return bool(_INT64.match(text)) and -2**63 <= int(text) < 2**63
