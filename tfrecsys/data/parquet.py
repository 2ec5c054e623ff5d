"""Parquet as a second on-disk format, read through tensorflow-io into the same feature dict as TFRecord.

tensorflow-io's Parquet reader (0.37.1) reads flat columns only: a list column comes back as its flattened
elements, sized by the file's row count, so elements past that count are garbage and row boundaries are lost
(checked on 0.37.1). A row's variable-length sequence is therefore stored in one flat cell:

* int64 sequences: a binary cell of little-endian int64 values (``int64_le``);
* string sequences: a string cell, every element preceded by ``\\x1f`` (``string_sep``), so an empty
  sequence, a sequence of one empty string and any other sequence stay distinct;
* dense features with ``dim > 1``: a binary cell of ``dim`` little-endian float32 values (``float32_le``).

The file's key-value metadata ``tfrecsys.encodings`` records which columns are encoded and how, so
``check_parquet_schema`` can tell an encoded cell from an ordinary binary column and name a mismatch.
Scalars are ordinary int64, float (float32) and string columns. Files are written with pyarrow.
"""

import json
import os
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from tfrecsys.features.schema import DenseFeature, FeatureSchema, SequenceFeature

ENCODINGS_KEY = b"tfrecsys.encodings"
STRING_SEPARATOR = "\x1f"
INT64_LE, STRING_SEP, FLOAT32_LE = "int64_le", "string_sep", "float32_le"
_TF_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}


class ParquetSchemaError(ValueError):
    """A Parquet file whose columns do not match the feature schema; the message names file and feature."""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode_column(name: str, values) -> tuple[pa.Array, Optional[str]]:
    """One column as ``tfrecord.write_sharded`` takes it (a numpy array ``[rows]`` or ``[rows, dim]``, or a
    list / object array of 1-D sequences or of strings) → an Arrow array and its encoding (None: plain)."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        if values.ndim == 2:
            return pa.array([np.asarray(row, "<f4").tobytes() for row in values], pa.binary()), FLOAT32_LE
        if values.dtype.kind in "iub":
            return pa.array(values.astype(np.int64), pa.int64()), None
        if values.dtype.kind == "f":
            return pa.array(values.astype(np.float32), pa.float32()), None
        return pa.array([_text(v) for v in values], pa.string()), None
    values = list(values)
    if all(isinstance(v, (str, bytes)) for v in values):
        return pa.array([_text(v) for v in values], pa.string()), None
    sequences = [np.asarray(v) for v in values]
    kinds = {s.dtype.kind for s in sequences if s.size}
    if kinds <= set("iub"):
        return pa.array([s.astype("<i8").tobytes() for s in sequences], pa.binary()), INT64_LE
    if kinds <= set("USO"):
        cells = []
        for sequence in sequences:
            elements = [_text(e) for e in sequence.tolist()]
            if any(STRING_SEPARATOR in e for e in elements):
                raise ValueError(f"column {name!r}: a value contains the separator \\x1f")
            cells.append("".join(STRING_SEPARATOR + e for e in elements))
        return pa.array(cells, pa.string()), STRING_SEP
    raise ValueError(f"column {name!r}: sequences must hold integers or strings, got numpy kinds {sorted(kinds)}")


def to_table(columns: dict) -> pa.Table:
    """Columns (numpy arrays ``[rows]``/``[rows, dim]``, or lists of 1-D arrays for sequences) → an Arrow
    table with the tfrecsys encodings in its metadata."""
    arrays, encodings = {}, {}
    for name, values in columns.items():
        arrays[name], encoding = _encode_column(name, values)
        if encoding:
            encodings[name] = encoding
    table = pa.table(arrays)
    return table.replace_schema_metadata({ENCODINGS_KEY: json.dumps(encodings, sort_keys=True).encode()})


def write_parquet(columns: dict, path: str) -> str:
    """Writes one Parquet file (any tf.io.gfile filesystem)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(to_table(columns), buffer)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue().to_pybytes())
    return path


def _source(path: str):
    """What pyarrow reads ``path`` from: the local path, or the bytes of a remote (gs://...) file."""
    if "://" not in path:
        return path
    with tf.io.gfile.GFile(path, "rb") as f:
        return pa.BufferReader(f.read())


def shard_name(output_dir: str, prefix: str, index: int, count: int) -> str:
    return os.path.join(output_dir, f"{prefix}-{index:05d}-of-{count:05d}.parquet")


def write_sharded(columns: dict, output_dir: str, prefix: str, num_shards: int) -> list[str]:
    """Parquet twin of ``tfrecord.write_sharded``: contiguous row blocks, one per shard, in order."""
    rows = len(next(iter(columns.values())))
    bounds = np.linspace(0, rows, num_shards + 1).astype(int)
    paths = []
    for index in range(num_shards):
        block = {name: values[bounds[index]:bounds[index + 1]] for name, values in columns.items()}
        paths.append(write_parquet(block, shard_name(output_dir, prefix, index, num_shards)))
    return paths


def _read_schema(path: str) -> pa.Schema:
    try:
        return pq.read_schema(_source(path))
    except (pa.ArrowException, OSError) as error:
        raise ParquetSchemaError(f"{path}: not a readable Parquet file ({error})") from None


def encodings_of(schema: pa.Schema) -> dict:
    raw = (schema.metadata or {}).get(ENCODINGS_KEY)
    return json.loads(raw) if raw else {}


def _expected(feature) -> tuple[str, Optional[str]]:
    """(Arrow type name, encoding) a feature's column must have."""
    if isinstance(feature, SequenceFeature):
        return ("binary", INT64_LE) if feature.dtype == "int64" else ("string", STRING_SEP)
    if isinstance(feature, DenseFeature) and feature.dim > 1:
        return "binary", FLOAT32_LE
    return {"int64": "int64", "float32": "float", "string": "string"}[feature.dtype], None


def check_parquet_schema(path: str, features: Sequence) -> None:
    """Fails at start, naming the feature and both types, when a column is missing or of another type."""
    schema = _read_schema(path)
    encodings = encodings_of(schema)
    for feature in features:
        if feature.name not in schema.names:
            raise ParquetSchemaError(f"{path}: no column {feature.name!r} (schema: {feature.dtype}); the file has "
                                     f"{schema.names}")
        arrow_type = schema.field(feature.name).type
        found = "string" if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) else str(arrow_type)
        expected_type, expected_encoding = _expected(feature)
        encoding = encodings.get(feature.name)
        if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
            raise ParquetSchemaError(
                f"{path}: column {feature.name!r} is {arrow_type} in the data but the schema says {feature.dtype} "
                f"{type(feature).__name__}; tensorflow-io reads flat columns only, so write sequences with "
                "tfrecsys.data.parquet (one encoded cell per row)")
        if found != expected_type or encoding != expected_encoding:
            kind = "sequence of " if isinstance(feature, SequenceFeature) else ""
            stored = f"{found} ({encoding})" if encoding else found
            wanted = f"{expected_type}, {expected_encoding}" if expected_encoding else expected_type
            raise ParquetSchemaError(f"{path}: feature {feature.name!r} is {stored} in the data but the schema says "
                                     f"{kind}{feature.dtype} ({wanted})")


def count_rows(files: Sequence[str]) -> int:
    total = 0
    for path in files:
        total += pq.ParquetFile(_source(path)).metadata.num_rows
    return total


def column_specs(features: Sequence) -> dict:
    """``{column: tf.TensorSpec}`` of the stored (flat) columns, as tensorflow-io needs them in graph mode."""
    specs = {}
    for feature in features:
        stored, encoding = _expected(feature)
        dtype = tf.string if encoding or stored == "string" else _TF_DTYPES[feature.dtype]
        specs[feature.name] = tf.TensorSpec([], dtype)
    return specs


def chunk_dataset(path: tf.Tensor, specs: dict, chunk_rows: int) -> tf.data.Dataset:
    """The rows of one Parquet file in chunks of ``chunk_rows``: dicts of ``[rows]`` column tensors, read
    through tensorflow-io's Parquet kernels (usable inside ``interleave``, where ``path`` is a tensor).

    ``tfio.IODataset.from_parquet`` reads the same kernels but yields one element per row, and a per-row
    tf.data element costs more than the row itself; reading whole chunks keeps the pipeline vectorised.
    """
    from tensorflow_io.python.ops import core_ops  # loads tensorflow-io's native ops only where Parquet is read

    container = "ParquetIODataset"
    components, shapes, _ = core_ops.io_parquet_readable_info(path, shared=path, container=container)
    rows = shapes[0][0]  # every column of a Parquet file has the file's row count

    def read(start):
        stop = tf.minimum(start + chunk_rows, rows)
        return {name: core_ops.io_parquet_readable_read(input=path, shared=path, component=name,
                                                        shape=tf.reshape(rows, [1]), start=start, stop=stop,
                                                        dtype=spec.dtype, container=container)
                for name, spec in specs.items()}

    return tf.data.Dataset.range(0, rows, chunk_rows).map(read)


def _decode_int64_sequences(cells: tf.Tensor) -> tf.RaggedTensor:
    lengths = tf.strings.length(cells) // 8
    width = tf.maximum(tf.reduce_max(lengths), 1)  # 1: decode_raw needs a positive width
    values = tf.io.decode_raw(cells, tf.int64, little_endian=True, fixed_length=tf.cast(width * 8, tf.int32))
    return tf.RaggedTensor.from_tensor(values, lengths=tf.cast(lengths, tf.int64))


def _decode_string_sequences(cells: tf.Tensor) -> tf.RaggedTensor:
    return tf.strings.split(cells, sep=STRING_SEPARATOR)[:, 1:]


def decode_batch(rows: dict, schema: FeatureSchema, features: Sequence) -> dict:
    """A batch of stored rows → the dict ``schema.parse_examples`` gives for the same rows."""
    out = {}
    for feature in features:
        value = rows[feature.name]
        if isinstance(feature, SequenceFeature):
            value = _decode_int64_sequences(value) if feature.dtype == "int64" else _decode_string_sequences(value)
        elif isinstance(feature, DenseFeature) and feature.dim > 1:
            value = tf.reshape(tf.io.decode_raw(value, tf.float32, little_endian=True), [-1, feature.dim])
        out[feature.name] = value
    return schema.pad_sequences(out)


def read_columns(path: str, names: Sequence[str]) -> pa.Table:
    """Reads ``names`` of ``path`` with pyarrow; ParquetSchemaError naming the file when it is damaged."""
    try:
        return pq.read_table(_source(path), columns=list(names))
    except (pa.ArrowException, OSError) as error:
        raise ParquetSchemaError(f"{path}: cannot read the Parquet data ({error})") from None
