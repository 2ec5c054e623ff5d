"""Output rows and the files they go to: JSON lines, Parquet or TFRecord of tf.train.Example.

Every output row names the row it scored and the model that scored it:

* ``score`` mode, one row per input row and model: ``{<key>, model_name, model_version, <output>...}``
  with every output of the signature by name (``[batch, k]`` outputs as lists);
* ``retrieve`` mode, one row per input row, model and candidate: ``{<key>, model_name, model_version,
  item_id, score, rank}`` from a retrieval model's ``item_ids``/``scores`` (``[batch, K]``, best first),
  ``rank`` counting from 1.

Rows of several models (champion and challenger) share one output; ``model_name`` and ``model_version``
tell them apart.
"""

import dataclasses
import json
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from apache_beam.transforms import window

from tfrecsys.scoring.model_handler import BatchScores
from tfrecsys.scoring.rows import Key, KeyedBatch
from tfrecsys.scoring.saved_models import ScoringModel

MODES = ("score", "retrieve")
OUTPUT_FORMATS = ("jsonl", "parquet", "tfrecord")
FILE_SUFFIXES = {"jsonl": ".jsonl", "parquet": ".parquet", "tfrecord": ".tfrecord"}
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
RETRIEVAL_ITEM_IDS = "item_ids"
RETRIEVAL_SCORES = "scores"
ITEM_COLUMN = "item_id"
SCORE_COLUMN = "score"
RANK_COLUMN = "rank"
# Parquet row groups of about this many bytes (uncompressed, in memory) before they are written; smaller
# groups make large files slow to read, larger ones cost worker memory.
ROW_GROUP_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass
class OutputBatch:
    """Output rows of one model for one input batch, by column: ``values[name][i]`` belongs to ``keys[i]``."""
    keys: list[Key]
    model_name: str
    model_version: Optional[int]
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.keys)


@dataclasses.dataclass(frozen=True)
class Column:
    """A value column: its TensorFlow dtype and rank per output row (0 scalar, 1 list, ...; None unknown)."""
    dtype: Optional[tf.dtypes.DType]
    rank: Optional[int]


class RowFormatter:
    """Turns one model's ``BatchScores`` into ``OutputBatch`` rows in the job's mode.

    Args:
      mode: "score" or "retrieve".
      key_name: the key column's name (the key feature).
      model: the model whose scores it formats.
      top_k: in retrieve mode, how many of the model's candidates to keep per row (best first); 0 for all.
    """

    def __init__(self, mode: str, key_name: str, model: ScoringModel, top_k: int = 0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if top_k < 0:
            raise ValueError(f"top_k must be 0 (all candidates) or positive, got {top_k}")
        self.mode, self.key_name, self.model, self.top_k = mode, key_name, model, top_k
        self.columns = self._columns()
        if {key_name, MODEL_NAME, MODEL_VERSION} & set(self.columns) or key_name in (MODEL_NAME, MODEL_VERSION):
            raise ValueError(f"Key feature {key_name!r} clashes with the output columns {sorted(self.columns)} and "
                             f"{[MODEL_NAME, MODEL_VERSION]} of model {model.tag}; pick another --key_feature")

    def _columns(self) -> dict[str, Column]:
        outputs = self.model.signature.outputs
        if self.mode == "score":
            return {name: Column(spec.dtype, None if spec.rank is None else spec.rank - 1)
                    for name, spec in outputs.items()}
        missing = [name for name in (RETRIEVAL_ITEM_IDS, RETRIEVAL_SCORES) if name not in outputs]
        if missing:
            raise ValueError(f"Signature {self.model.signature.name!r} of {self.model.model_dir} has outputs "
                             f"{sorted(outputs)}, not the retrieval outputs {list(missing)}; retrieve mode needs "
                             f"{RETRIEVAL_ITEM_IDS!r} and {RETRIEVAL_SCORES!r} shaped [batch, K], best first")
        for name in (RETRIEVAL_ITEM_IDS, RETRIEVAL_SCORES):
            shape = outputs[name].shape
            if shape is not None and len(shape) != 2:
                raise ValueError(f"Output {name!r} of {self.model.model_dir} has shape {list(shape)}; retrieve mode "
                                 "needs [batch, K]")
        candidates = outputs[RETRIEVAL_ITEM_IDS].shape
        if self.top_k and candidates is not None and candidates[1] > 0 and self.top_k > candidates[1]:
            raise ValueError(f"top_k={self.top_k} but model {self.model.tag} returns {candidates[1]} candidates "
                             "per row")
        return {ITEM_COLUMN: Column(outputs[RETRIEVAL_ITEM_IDS].dtype, 0),
                SCORE_COLUMN: Column(outputs[RETRIEVAL_SCORES].dtype, 0), RANK_COLUMN: Column(tf.int64, 0)}

    def format(self, batch: KeyedBatch, scores: BatchScores) -> OutputBatch:
        keys = [batch.keys[row] for row in scores.rows]
        if self.mode == "score":
            return OutputBatch(keys, self.model.name, self.model.version, scores.outputs)
        if not keys:
            return OutputBatch([], self.model.name, self.model.version, {})
        item_ids, item_scores = scores.outputs[RETRIEVAL_ITEM_IDS], scores.outputs[RETRIEVAL_SCORES]
        if item_ids.ndim != 2 or item_ids.shape != item_scores.shape:
            raise ValueError(f"Model {self.model.tag} returned {RETRIEVAL_ITEM_IDS} {item_ids.shape} and "
                             f"{RETRIEVAL_SCORES} {item_scores.shape}; retrieve mode needs both [batch, K]")
        kept = item_ids.shape[1] if not self.top_k else min(self.top_k, item_ids.shape[1])
        return OutputBatch(
            keys=[key for key in keys for _ in range(kept)], model_name=self.model.name,
            model_version=self.model.version,
            values={ITEM_COLUMN: item_ids[:, :kept].reshape(-1), SCORE_COLUMN: item_scores[:, :kept].reshape(-1),
                    RANK_COLUMN: np.tile(np.arange(1, kept + 1, dtype=np.int64), len(keys))})


def output_columns(formatters: Sequence[RowFormatter]) -> dict[str, Column]:
    """The value columns of all models' rows, in order of first appearance (outputs by name; item_id, score,
    rank in retrieve mode); a column name means one dtype and rank across models."""
    columns: dict[str, tuple[Column, str]] = {}
    for formatter in formatters:
        for name, column in formatter.columns.items():
            if name in columns and columns[name][0] != column:
                other, tag = columns[name]
                raise ValueError(f"Output {name!r} is {_describe(other)} for model {tag} but {_describe(column)} for "
                                 f"model {formatter.model.tag}; one output column needs one type")
            columns.setdefault(name, (column, formatter.model.tag))
    return {name: column for name, (column, _) in columns.items()}


def _describe(column: Column) -> str:
    dtype = column.dtype.name if column.dtype is not None else "composite"
    return f"{dtype} of rank {column.rank}" if column.rank is not None else f"{dtype} of unknown rank"


class JsonLines:
    """One JSON object per row: the key, the model's name and version, then the model's values in column order.

    Floats are the exact float32 values as Python floats, whose repr round-trips, so nothing is lost;
    ``[k]`` values are lists and strings are UTF-8 text.
    """
    format_name = "jsonl"

    def __init__(self, key_name: str, columns: dict[str, Column]):
        self.key_name = key_name
        self.column_names = list(columns)

    def encode(self, batch: OutputBatch) -> Iterable[str]:
        """All rows of the batch as one element: Beam's text sink writes it with one newline after it."""
        if not batch.keys:
            return []
        names = [name for name in self.column_names if name in batch.values]
        values = [_plain(batch.values[name].tolist()) for name in names]
        head = {MODEL_NAME: batch.model_name, MODEL_VERSION: batch.model_version}
        lines = []
        for row, key in enumerate(batch.keys):
            line = {self.key_name: key, **head}
            line.update((name, column[row]) for name, column in zip(names, values))
            lines.append(json.dumps(line))
        return ["\n".join(lines)]

    def write(self, prefix: str, num_shards: int) -> beam.PTransform:
        return beam.io.WriteToText(prefix, file_name_suffix=FILE_SUFFIXES[self.format_name], num_shards=num_shards)


class ParquetTables:
    """Arrow tables with one schema for every model: key, model_name, model_version, then value columns.

    A model without some output of another model leaves that column null in its rows.
    """
    format_name = "parquet"

    def __init__(self, key_name: str, key_dtype: str, columns: dict[str, Column]):
        self.key_name = key_name
        fields = [pa.field(key_name, pa.int64() if key_dtype == "int64" else pa.string(), nullable=False),
                  pa.field(MODEL_NAME, pa.string(), nullable=False), pa.field(MODEL_VERSION, pa.int64())]
        for name, column in columns.items():
            fields.append(pa.field(name, _arrow_type(name, column)))
        self.schema = pa.schema(fields)

    def encode(self, batch: OutputBatch) -> Iterable[pa.Table]:
        if not batch.keys:
            return []
        count = len(batch.keys)
        arrays = [pa.array(batch.keys, type=self.schema.field(0).type),
                  pa.array([batch.model_name] * count, type=pa.string()),
                  pa.array([batch.model_version] * count, type=pa.int64())]
        for field in list(self.schema)[3:]:
            values = batch.values.get(field.name)
            arrays.append(pa.nulls(count, field.type) if values is None else _arrow_array(values, field.type))
        return [pa.Table.from_arrays(arrays, schema=self.schema)]

    def write(self, prefix: str, num_shards: int) -> beam.PTransform:
        return _WriteParquet(prefix, self.schema, num_shards)


class TFRecordExamples:
    """One tf.train.Example per row: the key feature, ``model_name``, ``model_version`` (left out when unknown)
    and each value flattened into a float, int64 or bytes list."""
    format_name = "tfrecord"

    def __init__(self, key_name: str):
        self.key_name = key_name

    def encode(self, batch: OutputBatch) -> Iterable[bytes]:
        names = sorted(batch.values)
        values = [batch.values[name] for name in names]
        head = {MODEL_NAME: _feature(np.array([batch.model_name.encode("utf-8")], dtype=object))}
        if batch.model_version is not None:
            head[MODEL_VERSION] = _feature(np.array([batch.model_version], dtype=np.int64))
        for row, key in enumerate(batch.keys):
            features = {self.key_name: _feature(np.array([key.encode("utf-8") if isinstance(key, str) else key])),
                        **head}
            features.update((name, _feature(np.asarray(column[row]))) for name, column in zip(names, values))
            yield tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    def write(self, prefix: str, num_shards: int) -> beam.PTransform:
        return beam.io.WriteToTFRecord(prefix, file_name_suffix=FILE_SUFFIXES[self.format_name],
                                       num_shards=num_shards)


def make_output_format(output_format: str, key_name: str, key_dtype: str, columns: dict[str, Column]):
    """The writer of ``output_format`` for rows with these key and value columns."""
    if output_format == "jsonl":
        return JsonLines(key_name, columns)
    if output_format == "parquet":
        return ParquetTables(key_name, key_dtype, columns)
    if output_format == "tfrecord":
        return TFRecordExamples(key_name)
    raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {output_format!r}")


def _plain(value: Any) -> Any:
    """Decodes bytes (string outputs such as retrieval item ids) as UTF-8, inside nested lists too."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _arrow_type(name: str, column: Column) -> pa.DataType:
    if column.rank is None or column.dtype is None:
        raise ValueError(f"Output {name!r} has {_describe(column)}; Parquet output needs a known dtype and rank "
                         "(write jsonl or tfrecord instead)")
    arrow_type = pa.string() if column.dtype == tf.string else pa.from_numpy_dtype(column.dtype.as_numpy_dtype)
    for _ in range(column.rank):
        arrow_type = pa.list_(arrow_type)
    return arrow_type


def _arrow_array(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    if values.ndim == 1 and values.dtype != object:
        return pa.array(values, type=arrow_type)
    return pa.array(_plain(values.tolist()), type=arrow_type)


def _feature(values: np.ndarray) -> tf.train.Feature:
    flat = values.reshape(-1)
    if flat.dtype.kind == "f":
        return tf.train.Feature(float_list=tf.train.FloatList(value=flat.tolist()))
    if flat.dtype.kind in "iub":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=flat.tolist()))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=flat.tolist()))


class _WriteParquet(beam.PTransform):
    """Batches' tables gathered into row groups of about ``ROW_GROUP_BYTES``, then written."""

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: int):
        super().__init__()
        self._prefix, self._schema, self._num_shards = prefix, schema, num_shards

    def expand(self, tables):
        return (tables
                | "GatherRowGroups" >> beam.ParDo(_GatherRowGroups(ROW_GROUP_BYTES))
                | "WriteParquet" >> beam.io.WriteToParquetBatched(
                    self._prefix, self._schema, file_name_suffix=FILE_SUFFIXES["parquet"],
                    num_shards=self._num_shards))


class _GatherRowGroups(beam.DoFn):
    """Concatenates the tables of a bundle up to a byte budget: each written table becomes a row group."""

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        self._tables: list[pa.Table] = []
        self._bytes = 0

    def start_bundle(self):
        self._tables, self._bytes = [], 0

    def process(self, table: pa.Table):
        self._tables.append(table)
        self._bytes += table.nbytes
        if self._bytes >= self._max_bytes:
            yield self._take()

    def finish_bundle(self):
        if self._tables:
            yield window.GlobalWindows.windowed_value_at_end_of_window(self._take())

    def _take(self) -> pa.Table:
        table = pa.concat_tables(self._tables)
        self._tables, self._bytes = [], 0
        return table
