"""Lifelong user histories: each user's time-ordered events stored once, cut per example at input time.

Per-row histories copy up to ``max_len`` events into every example, so storage and parsing grow as
O(rows × max_len): a lifelong history of thousands of events cannot be stored that way. Here the event log
is stored once per user, and every example holds only its user and its timestamp. At input time
``UserHistories.cut_histories`` gives each example the most recent ``max_len`` events of its user with a
timestamp strictly before the example's (an event in the same second is not history, the same leakage rule
as the per-row builders), padded exactly like a parsed per-row sequence feature: ``[batch, max_len]``,
left-aligned, oldest first, padded with 0 (or ""), plus ``<name>_length`` ``[batch]`` int64. A model sees the
same feature dict as with per-row histories.

On disk: one Parquet file (or several, each user in one of them), one row per user::

    user_id: int64 or string     timestamp: list<int64>      item_id: list<int64>    category_id: list<...>

The list columns are aligned (the same length in a row) and sorted by (timestamp, then the columns in order),
the order in which a per-row history (``tfrecsys.data.histories`` with the same tie-break) lists events of one second. Parquet rather than one
tf.train.Example per user because a list column loads as exactly what the in-graph lookup needs, one flat
values buffer and row offsets, with no proto parsing of thousands of values per user; timestamps sorted within
a user are stored delta-encoded; and Spark, pandas or DuckDB write and read the same file.

In memory (``UserHistoryStore``): each column's events of all users one after another (a number column as
one byte string), ``row_splits`` ``[users + 1]`` and a hash table from user id to row. The cut is vectorised
over a batch: a table lookup, a binary search for the example's time inside its user's row (as many rounds of
one ``tf.gather`` as the longest row needs bits), then per column one ``tf.strings.substr`` of each history's
contiguous bytes and one ``tf.io.decode_raw`` that zero-pads them to ``max_len`` (string columns: one gather
of ``[batch, max_len]`` positions). The store lives in host memory, once per input pipeline: 8 bytes per event
and int64 column.
"""

import glob
import json
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from tfrecsys.data import parquet
from tfrecsys.features.schema import FeatureSchema, LabelFeature, SequenceFeature

_METADATA_KEY = b"tfrecsys.user_histories"
_TF_DTYPES = {"int64": tf.int64, "string": tf.string, "float32": tf.float32}


class UserHistoryError(ValueError):
    """A user history store, or a config naming one, that does not fit; the message names the file, the
    column or the feature at fault."""


def _widened(values: np.ndarray) -> np.ndarray:
    """Integers as int64, the one integer dtype of the schema; other values as they are."""
    return values.astype(np.int64) if values.dtype.kind in "iu" else values


def _ordinal_codes(values: np.ndarray) -> np.ndarray:
    """Integer codes that sort as ``values`` do (strings included, which ``np.lexsort`` cannot sort)."""
    return np.unique(values, return_inverse=True)[1]


def write_user_histories(path: str, users, timestamps, columns: Mapping[str, Sequence], *,
                         user_column: str = "user_id", time_column: str = "timestamp") -> dict:
    """Writes an event log (one entry per event, in any order) as one Parquet row per user and returns
    ``{"users": ..., "events": ..., "longest": ...}``.

    ``users``: int64 or string ids; ``timestamps``: integers (exact; they decide what is history);
    ``columns``: ``{name: values}`` aligned with the events (item ids, categories, actions: int64, float or
    string). Rows are sorted by user id and each row's events by (timestamp, then ``columns`` in order).
    ``path`` may be remote (``gs://``), written through ``tf.io.gfile``.
    """
    users, timestamps = np.asarray(users), np.asarray(timestamps)
    columns = {name: _widened(np.asarray(values)) for name, values in columns.items()}
    if not columns:
        raise UserHistoryError(f"{path}: no event column to store (give at least the item ids)")
    for name, values in {time_column: timestamps, **columns}.items():
        if len(values) != len(users):
            raise UserHistoryError(f"{path}: column {name!r} has {len(values)} events, {user_column!r} has "
                                   f"{len(users)}")
    if len(users) == 0:
        raise UserHistoryError(f"{path}: the event log is empty")
    if timestamps.dtype.kind not in "iu":
        raise UserHistoryError(f"{path}: {time_column!r} must be integers (exact times decide what is history), "
                               f"got {timestamps.dtype}")
    clash = {user_column, time_column} & set(columns)
    if clash or user_column == time_column:
        raise UserHistoryError(f"{path}: column names clash: {sorted(clash) or [user_column]}")
    tie_keys = [_ordinal_codes(values) for values in reversed(list(columns.values()))]
    order = np.lexsort((*tie_keys, timestamps, _ordinal_codes(users)))
    user_of_event = users[order]
    starts = np.flatnonzero(np.r_[True, user_of_event[1:] != user_of_event[:-1]])
    # Standard list columns have int32 offsets; a file of more events needs large lists.
    large = len(order) >= 2 ** 31
    offsets = pa.array(np.r_[starts, len(order)].astype(np.int64 if large else np.int32))

    def lists(values):
        return (pa.LargeListArray if large else pa.ListArray).from_arrays(offsets, pa.array(values[order]))

    table = pa.table({user_column: pa.array(user_of_event[starts]),
                      time_column: lists(timestamps.astype(np.int64)),
                      **{name: lists(values) for name, values in columns.items()}})
    summary = {"users": int(len(starts)), "events": int(len(order)),
               "longest": int(np.diff(np.r_[starts, len(order)]).max())}
    metadata = {"user_column": user_column, "time_column": time_column, "columns": list(columns), **summary}
    table = table.replace_schema_metadata({_METADATA_KEY: json.dumps(metadata).encode()})
    buffer = pa.BufferOutputStream()
    # Dictionary pages do not help a sorted time series; deltas of a user's timestamps take a few bits.
    pq.write_table(table, buffer, compression="zstd",
                   use_dictionary=[name for name in table.column_names if name != time_column],
                   column_encoding={f"{time_column}.list.element": "DELTA_BINARY_PACKED"})
    with tf.io.gfile.GFile(path, "wb") as out:
        out.write(buffer.getvalue().to_pybytes())
    return summary


class UserHistoryStore:
    """A user history store in memory, ready for in-graph lookups.

    ``row_splits`` ``[users + 1]`` int64 cut ``timestamps`` (``[events]``) and every event column into the
    users' rows; ``row_of_user`` maps a user id to its row (-1 for a user the store does not hold);
    ``column_dtypes`` gives each column's dtype. A number column is held as one little-endian byte string, so
    ``slice_rows`` copies each history as one contiguous run of bytes (a gather of ``[batch, max_len]``
    positions cost 3-4x more CPU, measured); a string column as ``[events + 1]`` strings, the last one "".
    """

    def __init__(self, path: str, user_ids: np.ndarray, row_splits: np.ndarray, timestamps: np.ndarray,
                 columns: Mapping[str, np.ndarray]):
        self.path = path
        self.num_users = len(user_ids)
        self.num_events = int(row_splits[-1])
        self.longest = int(np.diff(row_splits).max()) if self.num_users else 0
        self.user_dtype = tf.string if user_ids.dtype.kind in "OSU" else tf.int64
        self.row_splits = tf.constant(row_splits, tf.int64)
        self.timestamps = tf.constant(timestamps, tf.int64)
        self.column_dtypes = {name: tf.as_dtype(values.dtype) if values.dtype.kind not in "OSU" else tf.string
                              for name, values in columns.items()}
        self._columns = {name: tf.constant(np.r_[values, [""]] if self.column_dtypes[name] == tf.string
                                           else values.astype(values.dtype.newbyteorder("<")).tobytes())
                         for name, values in columns.items()}
        self.row_of_user = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(user_ids, self.user_dtype),
                                                tf.range(self.num_users, dtype=tf.int64)),
            default_value=-1)

    @classmethod
    def load(cls, paths: Union[str, Sequence[str]], columns: Optional[Sequence[str]] = None) -> "UserHistoryStore":
        """Reads the files ``write_user_histories`` writes (a path, a glob or a list): every event column, or
        only ``columns`` (which may name the time column, to cut timestamp sequences too). Raises UserHistoryError naming the file for a missing column, unaligned
        lists, nulls, unsorted timestamps or a user stored twice."""
        if isinstance(paths, str):
            pattern = paths
            paths = sorted(glob.glob(pattern)) if "://" not in pattern else sorted(tf.io.gfile.glob(pattern))
            if not paths:
                raise UserHistoryError(f"no user history file matches {pattern!r}")
        parts = [_read_store_file(path, columns) for path in paths]
        user_ids = np.concatenate([part[0] for part in parts])
        unique, counts = np.unique(user_ids, return_counts=True)
        if len(unique) != len(user_ids):
            raise UserHistoryError(f"{', '.join(paths)}: user {unique[counts > 1][0]!r} is stored in more than "
                                   "one row; a store holds each user's events in one row")
        lengths = np.concatenate([np.diff(part[1]) for part in parts])
        names = list(parts[0][3])
        return cls(", ".join(paths), user_ids, np.r_[0, np.cumsum(lengths)].astype(np.int64),
                   np.concatenate([part[2] for part in parts]),
                   {name: np.concatenate([part[3][name] for part in parts]) for name in names})

    def __repr__(self) -> str:
        return (f"UserHistoryStore({self.path!r}: {self.num_users} users, {self.num_events} events, "
                f"columns {sorted(self.column_dtypes)})")

    def events_before(self, users: tf.Tensor, times: tf.Tensor) -> tuple:
        """``(first, cut)`` ``[batch]`` int64: the flat positions of each user's first event and of its
        first event at or after ``times`` (so ``[first, cut)`` are the events strictly before; ``first ==
        cut`` for a user the store does not hold).

        A binary search inside each user's row, vectorised over the batch: ``bit_length(longest row)``
        rounds, each one ``tf.gather`` of ``[batch]`` timestamps; rows are sorted by time.
        """
        row = self.row_of_user.lookup(users)
        held = row >= 0
        safe_row = tf.maximum(row, 0)
        first = tf.where(held, tf.gather(self.row_splits, safe_row), 0)
        low, high = first, tf.where(held, tf.gather(self.row_splits, safe_row + 1), 0)
        for _ in range(self.longest.bit_length()):
            searching = low < high
            middle = (low + high) // 2
            before = tf.gather(self.timestamps, tf.minimum(middle, self.num_events - 1)) < times
            low = tf.where(searching & before, middle + 1, low)
            high = tf.where(searching & ~before, middle, high)
        return first, low

    def slice_rows(self, column: str, start: tf.Tensor, length: tf.Tensor, max_len: int) -> tf.Tensor:
        """``[batch, max_len]``: row ``b`` holds ``column``'s events ``start[b] .. start[b] + length[b] - 1``
        (flat positions, ``length <= max_len``) left-aligned, padded with 0 or ""."""
        values, dtype = self._columns[column], self.column_dtypes[column]
        if dtype == tf.string:
            offsets = tf.range(max_len, dtype=tf.int64)
            positions = tf.where(offsets[tf.newaxis, :] < length[:, tf.newaxis],
                                 start[:, tf.newaxis] + offsets[tf.newaxis, :], self.num_events)
            return tf.gather(values, positions)  # past a history's end: the "" after the last event
        # decode_raw pads each history's bytes with zeros to max_len values.
        return tf.io.decode_raw(tf.strings.substr(values, start * dtype.size, length * dtype.size), dtype,
                                fixed_length=max_len * dtype.size)


def _read_store_file(path: str, columns: Optional[Sequence[str]]) -> tuple:
    """``(user_ids, row_splits, timestamps, {column: values})`` of one store file, checked."""
    try:
        schema = pq.read_schema(parquet.readable(path))
    except (pa.ArrowException, OSError) as error:
        raise UserHistoryError(f"{path}: not a readable Parquet file ({error})") from None
    if not schema.metadata or _METADATA_KEY not in schema.metadata:
        raise UserHistoryError(f"{path}: not a user history store (no {_METADATA_KEY.decode()} metadata); "
                               "write it with tfrecsys.data.user_histories.write_user_histories")
    metadata = json.loads(schema.metadata[_METADATA_KEY])
    names = list(metadata["columns"]) if columns is None else list(columns)
    user_column, time_column = metadata["user_column"], metadata["time_column"]
    # The time column is also an event column a sequence can be cut from (raw timestamps: SIM's intervals).
    unknown = [name for name in names if name not in metadata["columns"] and name != time_column]
    if unknown:
        raise UserHistoryError(f"{path}: no event column {unknown[0]!r}; the store has {metadata['columns']} "
                               f"and the time column {time_column!r}")
    events = [name for name in names if name != time_column]
    table = pq.read_table(parquet.readable(path), columns=[user_column, time_column, *events])
    users = table.column(user_column).combine_chunks()
    lists = {name: table.column(name).combine_chunks() for name in [time_column, *events]}
    for name, array in [(user_column, users), *lists.items()]:
        if array.null_count or (name in lists and array.flatten().null_count):
            raise UserHistoryError(f"{path}: column {name!r} holds nulls")
    offsets = lists[time_column].offsets.to_numpy().astype(np.int64)
    row_splits = offsets - offsets[0]
    for name in names:
        if not np.array_equal(np.diff(lists[name].offsets.to_numpy()), np.diff(row_splits)):
            raise UserHistoryError(f"{path}: column {name!r} is not aligned with {time_column!r} (rows of "
                                   "different lengths)")
    timestamps = lists[time_column].flatten().to_numpy().astype(np.int64)
    decreasing = np.flatnonzero(np.diff(timestamps) < 0)
    boundaries = set(row_splits[1:-1].tolist())
    unsorted = [position for position in (decreasing + 1).tolist() if position not in boundaries]
    if unsorted:
        row = int(np.searchsorted(row_splits, unsorted[0], side="right")) - 1
        raise UserHistoryError(f"{path}: the events of user {users[row].as_py()!r} are not in time order")
    values = {name: _widened(lists[name].flatten().to_numpy(zero_copy_only=False)) for name in names}
    return _widened(users.to_numpy(zero_copy_only=False)), row_splits, timestamps, values


class UserHistories:
    """Sequence features of a schema cut from a ``UserHistoryStore`` at input time: what
    ``make_dataset(..., user_histories=...)`` takes.

    ``sequences`` maps each sequence feature filled from the store to the store column it holds
    (``{"hist_item_id": "item_id", "hist_category_id": "category_id"}``), or to the store's time column
    (``{"hist_timestamp": "timestamp"}``, a raw int64 sequence of the events' times); each is cut to its own feature's
    ``max_len`` (a short and a lifelong history of the same column can sit side by side). Examples hold
    ``user_feature`` (int64 or string, as the store's user ids) and ``time_feature`` (an exact int64 scalar,
    never a float: float32 keeps Unix seconds only to 128 s).
    """

    def __init__(self, store: UserHistoryStore, schema: FeatureSchema, *, user_feature: str, time_feature: str,
                 sequences: Mapping[str, str]):
        self.store, self.user_feature, self.time_feature = store, user_feature, time_feature
        self.sequences = dict(sequences)
        if not self.sequences:
            raise UserHistoryError(f"{store.path}: user_histories.sequences names no feature to fill")
        user, time = schema[user_feature], schema[time_feature]
        if isinstance(user, (SequenceFeature, LabelFeature)) or _TF_DTYPES[user.dtype] != store.user_dtype:
            raise UserHistoryError(f"feature {user_feature!r} ({type(user).__name__} {user.dtype}) cannot look up "
                                   f"users in {store.path}, whose user ids are {store.user_dtype.name} scalars")
        if isinstance(time, (SequenceFeature, LabelFeature)) or time.dtype != "int64" or getattr(time, "dim", 1) != 1:
            raise UserHistoryError(f"feature {time_feature!r} ({type(time).__name__} {time.dtype}) must be an "
                                   "int64 scalar: the cut compares exact timestamps")
        self.features = []
        for name, column in self.sequences.items():
            feature = schema[name]
            if not isinstance(feature, SequenceFeature):
                raise UserHistoryError(f"feature {name!r} is {type(feature).__name__}, not a sequence feature; "
                                       "only sequences are cut from user histories")
            if column not in store.column_dtypes:
                raise UserHistoryError(f"feature {name!r}: {store.path} has no column {column!r}; it has "
                                       f"{sorted(store.column_dtypes)}")
            if store.column_dtypes[column] != _TF_DTYPES[feature.dtype]:
                raise UserHistoryError(f"feature {name!r} is {feature.dtype} but column {column!r} of "
                                       f"{store.path} is {store.column_dtypes[column].name}")
            if feature.aligned_with is not None and feature.aligned_with not in self.sequences:
                raise UserHistoryError(f"feature {name!r} is aligned_with {feature.aligned_with!r}, which "
                                       "user_histories.sequences does not fill: both must come from the store")
            self.features.append(feature)

    @classmethod
    def from_config(cls, block: Mapping, schema: FeatureSchema, base_dir: str = "") -> "UserHistories":
        """From ``config.data.user_histories``: ``file`` (path or glob; relative to ``base_dir``),
        ``user_feature``, ``time_feature`` and ``sequences`` ``{feature: column}``."""
        block = dict(block)
        missing = sorted({"file", "user_feature", "time_feature", "sequences"} - set(block))
        unknown = sorted(set(block) - {"file", "user_feature", "time_feature", "sequences"})
        if missing or unknown:
            raise UserHistoryError(f"config.data.user_histories: missing keys {missing}, unknown keys {unknown}; "
                                   "it takes file, user_feature, time_feature and sequences")
        path = block["file"]
        if base_dir and "://" not in path and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        sequences = dict(block["sequences"])
        store = UserHistoryStore.load(path, columns=sorted(set(sequences.values())))
        return cls(store, schema, user_feature=block["user_feature"], time_feature=block["time_feature"],
                   sequences=sequences)

    def row_features(self, features: Sequence) -> list:
        """``features`` without those the store fills: what the example rows themselves must hold."""
        return [feature for feature in features if feature.name not in self.sequences]

    def cut_histories(self, rows: dict) -> dict:
        """``rows`` (a decoded batch holding ``user_feature`` and ``time_feature``) with every store-filled
        sequence set to the user's most recent ``max_len`` events strictly before the row's time:
        ``[batch, max_len]`` left-aligned, oldest first, 0/""-padded, plus ``<name>_length`` for primary
        sequences, exactly as ``FeatureSchema.pad_sequences`` lays out a per-row history."""
        first, cut = self.store.events_before(rows[self.user_feature], rows[self.time_feature])
        out = dict(rows)
        for feature in self.features:
            start = tf.maximum(first, cut - feature.max_len)
            out[feature.name] = self.store.slice_rows(self.sequences[feature.name], start, cut - start,
                                                      feature.max_len)
            if feature.aligned_with is None:
                out[feature.length_name] = cut - start
        return out
