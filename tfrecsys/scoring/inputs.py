"""Reading the rows to score: TFRecord files of tf.train.Example, or Parquet files, as ``RowBatch``es.

TFRecord files are read whole by one worker each (the format cannot be split), with tf.data's C++ reader in
batches; a file that turns unreadable part-way (truncated, corrupted) keeps the rows before the damage and
reports the rest as one dead letter. Parquet files are read by row group with Beam's Parquet IO, and each row
becomes a tf.train.Example typed by what the models parse (``rows.ParquetRows``), so the model's own example
parsing scores Parquet and TFRecord rows alike.
"""

import os
from typing import Iterable, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from google.protobuf.message import DecodeError

from tfrecsys.scoring.rows import (KEY_DTYPES, DeadLetter, ParquetRows, RowBatch, RowError, example_key,
                                  short_tf_message)
from tfrecsys.scoring.saved_models import ScoringModel, ensure_tensorflow_filesystem

INPUT_FORMATS = ("tfrecord", "parquet")
METRICS_NAMESPACE = "tfrecsys.scoring"
ROWS_READ = "rows_read"
DEAD_LETTER = "dead_letter"
# Rows looked at to learn the key's dtype before the job starts; a key feature missing from all of them
# is almost certainly a wrong --key_feature, worth failing at once rather than rejecting every row.
KEY_PROBE_ROWS = 100
_COMPRESSION_BY_SUFFIX = {".gz": "GZIP", ".gzip": "GZIP", ".zlib": "ZLIB"}


def match_files(input_pattern: str) -> list[str]:
    """The files matching the pattern (any Beam filesystem), sorted; fails before the job starts when there
    are none, since a typo would otherwise score zero rows."""
    files = sorted(metadata.path for metadata in FileSystems.match([input_pattern])[0].metadata_list)
    if not files:
        raise FileNotFoundError(f"No input files match {input_pattern!r}")
    return files


def compression_of(path: str) -> str:
    """tf.data's compression type for a TFRecord file, by its extension as Beam does (".gz" is GZIP)."""
    return _COMPRESSION_BY_SUFFIX.get(os.path.splitext(path)[1].lower(), "")


def first_records(files: list[str], count: int = KEY_PROBE_ROWS) -> list[bytes]:
    """Up to ``count`` rows from the start of ``files``, in order; a damaged file gives the rows before the
    damage (the job reports the rest as a dead letter) and the next file the rest. The probe that
    ``tfrecord_key_dtype`` and ``check_tfrecord_features`` read, once per job."""
    records: list[bytes] = []
    for path in files:
        ensure_tensorflow_filesystem(path)
        dataset = tf.data.TFRecordDataset(path, compression_type=compression_of(path)).take(count - len(records))
        try:
            for record in dataset:
                records.append(record.numpy())
        except tf.errors.OpError:
            pass
        if len(records) >= count:
            break
    return records


def _first_rows_of(files: list[str], count: int) -> str:
    return f"the first {count} rows of {files[0] if len(files) == 1 else f'{files[0]} and the files after it'}"


def tfrecord_key_dtype(files: list[str], records: list[bytes], key_feature: str) -> str:
    """The key's dtype ("int64" or "string") from the first of ``records`` (``first_records(files)``) that has a
    usable key feature.

    Raises ValueError naming the feature and file when none of them has one.
    """
    if not records:
        return "int64"  # no rows at all: nothing will be keyed
    for record in records:
        dtype = _key_dtype_of(record, key_feature)
        if dtype is not None:
            return dtype
    raise ValueError(f"None of {_first_rows_of(files, len(records))} has a key feature {key_feature!r} holding "
                     "one int64 or bytes value; each output row carries its input row's key (--key_feature names "
                     "the feature)")


def check_tfrecord_features(files: list[str], records: list[bytes], models: Iterable[ScoringModel]) -> None:
    """Fails before the job when a feature that a model's export says it parses is in none of ``records``
    (``first_records(files)``): the rows are not what the model reads (another config's data, or rows whose
    histories a per-user store holds). Left to run, every row would go to the dead letters, or, for a
    sequence, be scored as an empty history without a word: parsing reads an absent list as an empty one.
    """
    if not records:
        return
    present: set[str] = set()
    for record in records:
        try:
            present.update(tf.train.Example.FromString(record).features.feature.keys())
        except DecodeError:
            continue
    for model in models:
        if model.needs is None or not model.needs.exact:
            continue
        absent = [need for need in model.needs.features if need.name not in present]
        if absent:
            described = ", ".join(f"{need.name!r} ({need.describe()})" for need in absent)
            raise ValueError(
                f"None of {_first_rows_of(files, len(records))} has feature(s) {described}, which model "
                f"{model.tag} parses: these are not rows of its schema. Every serving input must be in the rows, "
                "histories too (a config's data.user_histories store is read by training and export only)")


def _key_dtype_of(record: bytes, key_feature: str) -> Optional[str]:
    """"int64" or "string" when the row has a usable key, else None."""
    try:
        features = tf.train.Example.FromString(record).features.feature
    except DecodeError:
        return None
    for dtype in KEY_DTYPES:
        try:
            example_key(features, key_feature, dtype)
            return dtype
        except RowError:
            continue
    return None


def parquet_schema(path: str) -> pa.Schema:
    """The Arrow schema of a Parquet file (any Beam filesystem), from its footer alone."""
    with FileSystems.open(path) as f:
        return pq.read_schema(f)


class ReadTFRecord(beam.PTransform):
    """``RowBatch``es of at most ``batch_size`` rows from every file matching ``input_pattern``, with a
    ``DEAD_LETTER`` output for the unreadable parts of damaged files."""

    def __init__(self, input_pattern: str, batch_size: int):
        super().__init__()
        self._input_pattern, self._batch_size = input_pattern, batch_size

    def expand(self, pipeline):
        return (pipeline
                | "InputPattern" >> beam.Create([self._input_pattern])
                | "MatchFiles" >> fileio.MatchAll()
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadBatches" >> beam.ParDo(_ReadTFRecordFile(self._batch_size)).with_outputs(
                    DEAD_LETTER, main="batches"))


class _ReadTFRecordFile(beam.DoFn):
    """One TFRecord file (a ``FileMetadata``) as ``RowBatch``es, counting the rows read."""

    def __init__(self, batch_size: int):
        self._batch_size = batch_size
        self._rows_read = Metrics.counter(METRICS_NAMESPACE, ROWS_READ)

    def process(self, file_metadata) -> Iterable:
        path = file_metadata.path
        ensure_tensorflow_filesystem(path)
        compression = compression_of(path)
        read = 0
        batches = iter(tf.data.TFRecordDataset(path, compression_type=compression).batch(self._batch_size))
        while True:
            try:
                records = next(batches).numpy().tolist()
            except StopIteration:
                return
            except tf.errors.OpError:
                # The damaged batch is read again record by record, to keep the rows before the damage.
                yield from self._rows_before_damage(path, compression, read)
                return
            read += len(records)
            self._rows_read.inc(len(records))
            yield RowBatch(path, records)

    def _rows_before_damage(self, path: str, compression: str, start: int) -> Iterable:
        records, reason = [], None
        try:
            for record in tf.data.TFRecordDataset(path, compression_type=compression).skip(start):
                records.append(record.numpy())
        except tf.errors.OpError as error:
            reason = f"records from {start + len(records)} on are unreadable: {short_tf_message(error.message)}"
        for offset in range(0, len(records), self._batch_size):
            batch = records[offset:offset + self._batch_size]
            self._rows_read.inc(len(batch))
            yield RowBatch(path, batch)
        if reason is not None:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(path, reason))


class ReadParquet(beam.PTransform):
    """``RowBatch``es of at most ``batch_size`` rows (serialized tf.train.Example built by ``rows``) from
    every Parquet file matching ``input_pattern``, with a ``DEAD_LETTER`` output for rows with nulls."""

    def __init__(self, input_pattern: str, rows: ParquetRows, batch_size: int):
        super().__init__()
        self._input_pattern, self._rows, self._batch_size = input_pattern, rows, batch_size

    def expand(self, pipeline):
        return (pipeline
                | "InputPattern" >> beam.Create([self._input_pattern])
                | "ReadRowGroups" >> beam.io.ReadAllFromParquetBatched(columns=self._rows.columns,
                                                                       with_filename=True)
                | "ToExamples" >> beam.ParDo(_ParquetToExamples(self._rows, self._batch_size)).with_outputs(
                    DEAD_LETTER, main="batches"))


class _ParquetToExamples(beam.DoFn):
    """One row group (``(file name, Arrow table)``) as ``RowBatch``es of examples, nulls as dead letters."""

    def __init__(self, rows: ParquetRows, batch_size: int):
        self._rows, self._batch_size = rows, batch_size
        self._rows_read = Metrics.counter(METRICS_NAMESPACE, ROWS_READ)

    def process(self, file_and_table: tuple[str, pa.Table]) -> Iterable:
        path, table = file_and_table
        self._rows_read.inc(table.num_rows)
        for start in range(0, table.num_rows, self._batch_size):
            batch, rejected = self._rows.to_examples(table.slice(start, self._batch_size), path)
            for dead_letter in rejected:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter)
            if batch.records:
                yield batch
