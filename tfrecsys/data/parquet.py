"""Parquet as a second on-disk format: standard Arrow columns, read with pyarrow into the same feature dict
as TFRecord.

One column per stored column of the schema (a feature's ``source``; features cutting their own ``max_len``
from one stored history share it, and it is read once), of the type Spark, pandas, DuckDB or pyarrow would
write for it:

==============================  ==============================  ==============================================
feature                         written                         also read
==============================  ==============================  ==============================================
int64 id, dense, label          ``int64``                       narrower integers (int8–int32, uint8–uint32)
float32 dense (dim 1), label    ``float``                       —
string id                       ``string``                      large_string, binary, dictionary-encoded
dense with ``dim > 1``          ``fixed_size_list<float>[dim]`` ``list<float>`` with ``dim`` values per row
                                (``<int64>`` for int64 dense)
int64 sequence, label sequence  ``list<int64>``                 large_list, narrower integer elements
float32 raw sequence            ``list<float>``                 large_list
string sequence                 ``list<string>``                large_list, large_string / binary elements
==============================  ==============================  ==============================================

Anything else (a float64 price, a float id, a scalar where a sequence is expected) is a schema mismatch that
``check_parquet_schema`` names with the file, the feature and both types. A null cell, or a null element of
a list, is bad data: reading stops with an error naming file, column and row (a TFRecord row without a
required feature fails the same way); batch scoring sends such rows to its dead-letter output.

Why pyarrow and not tensorflow-io: tensorflow-io 0.37.1, the last release and the only one whose kernels load
on TF 2.16, cannot read list columns (it returns a list column's elements sized by the file's row count, so
elements past that count are garbage and row boundaries are lost). Reading through it forced a private,
non-standard encoding of every sequence, which no other tool could write or read. pyarrow (already a pinned
dependency) reads every column type; a file is read in chunks of rows by a ``tf.data`` generator, with
all per-row work vectorised: Arrow buffers become flat tensors (a sequence: its values and its row lengths;
strings: one byte buffer and offsets, cut with one ``tf.strings.substr``), and padding happens in the graph
with the same ``FeatureSchema.features_from_columns`` that TFRecord batches go through.
"""

import os
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from tfrecsys.features.schema import DenseFeature, FeatureSchema

_ARROW_TYPES = {"int64": pa.int64(), "float32": pa.float32(), "string": pa.string()}
_NUMPY_TYPES = {"int64": np.int64, "float32": np.float32}
_TF_TYPES = {"int64": tf.int64, "float32": tf.float32}
# Integer types an int64 feature reads without loss.
_INTEGERS = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())


class ParquetSchemaError(ValueError):
    """A Parquet file whose columns or values do not fit the feature schema; the message names the file and
    the feature (and the row, for bad values)."""


def arrow_type(dtype: str, is_list: bool = False, dim: int = 1) -> pa.DataType:
    """The Arrow type tfrecsys writes for a feature of ``dtype`` ("int64", "float32", "string"): a list of it
    for a sequence, a fixed-size list of ``dim`` for a dense vector."""
    if dim == 1 and not is_list:
        return _ARROW_TYPES[dtype]
    # "element": the name Parquet's list layout gives the items, so a type reads back as it was written.
    element = pa.field("element", _ARROW_TYPES[dtype])
    return pa.list_(element, dim) if dim > 1 else pa.list_(element)


def feature_arrow_type(feature) -> pa.DataType:
    """The Arrow type tfrecsys writes for ``feature``."""
    dim = feature.dim if isinstance(feature, DenseFeature) else 1
    return arrow_type(feature.dtype, feature.is_sequence, dim)


# Writing ----------------------------------------------------------------------------------------------------


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _infer_type(name: str, values) -> pa.DataType:
    """The Arrow type of a column given as ``tfrecord.write_sharded`` takes it: a numpy array ``[rows]`` or
    ``[rows, dim]``, strings, or 1-D arrays (sequences) whose numpy dtype says int64, float32 or string."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        if values.ndim == 2:
            return arrow_type("float32", dim=values.shape[1])
        for kinds, dtype in (("iub", "int64"), ("f", "float32"), ("US", "string")):
            if values.dtype.kind in kinds:
                return _ARROW_TYPES[dtype]
        raise ValueError(f"column {name!r}: numpy dtype {values.dtype} is not an integer, float or string")
    values = list(values)
    if values and all(isinstance(v, (str, bytes)) for v in values):
        return pa.string()
    sequences = [np.asarray(v) for v in values]
    # A column of only empty sequences still says what it holds by its arrays' dtype; numpy's default dtype
    # for an empty list (float64) says nothing.
    kinds = {s.dtype.kind for s in sequences if s.size} or {s.dtype.kind for s in sequences} - {"f"}
    if not kinds:
        raise ValueError(f"column {name!r}: cannot tell the type of a column without values; pass its type")
    if kinds <= set("iub"):
        return arrow_type("int64", is_list=True)
    if kinds <= set("f"):
        return arrow_type("float32", is_list=True)
    if kinds <= set("USO"):
        return arrow_type("string", is_list=True)
    raise ValueError(f"column {name!r}: sequences must hold integers, floats or strings, got numpy kinds "
                     f"{sorted(kinds)}")


def _to_arrow(name: str, values, type_: pa.DataType) -> pa.Array:
    if pa.types.is_fixed_size_list(type_):
        matrix = np.asarray(values)
        if matrix.ndim != 2 or matrix.shape[1] != type_.list_size:
            raise ValueError(f"column {name!r}: expected rows of {type_.list_size} values, got shape {matrix.shape}")
        return pa.FixedSizeListArray.from_arrays(_to_arrow(name, matrix.reshape(-1), type_.value_type),
                                                 type_.list_size)
    if pa.types.is_list(type_):
        sequences = [np.asarray(v).reshape(-1) for v in values]
        offsets = np.zeros(len(sequences) + 1, np.int64)
        np.cumsum([s.size for s in sequences], out=offsets[1:])
        flat = np.concatenate(sequences) if sequences else np.zeros(0)
        elements = _to_arrow(name, flat, type_.value_type)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), elements)
    if type_ == pa.string():
        return pa.array([_text(v) for v in np.asarray(values, object).tolist()], pa.string())
    dtype = {pa.int64(): "int64", pa.float32(): "float32"}.get(type_)
    array = np.asarray(values)
    if dtype is None or (array.size and array.dtype.kind not in ("iub" if dtype == "int64" else "iubf")):
        raise ValueError(f"column {name!r}: {array.dtype} values cannot be written as {type_}")
    return pa.array(array.astype(_NUMPY_TYPES[dtype]), type_)


def to_table(columns: Mapping, types: Optional[Mapping[str, pa.DataType]] = None) -> pa.Table:
    """Columns as ``tfrecord.write_sharded`` takes them (numpy arrays ``[rows]``/``[rows, dim]``, or lists
    of 1-D arrays for sequences) → an Arrow table of standard columns. ``types`` fixes a column's Arrow
    type (``arrow_type(...)``) where its values alone cannot tell (no rows)."""
    types = dict(types or {})
    return pa.table({name: _to_arrow(name, values, types.get(name) or _infer_type(name, values))
                     for name, values in columns.items()})


def write_parquet(columns: Mapping, path: str, types: Optional[Mapping[str, pa.DataType]] = None) -> str:
    """Writes one Parquet file (any tf.io.gfile filesystem)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(to_table(columns, types), buffer)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue().to_pybytes())
    return path


def shard_name(output_dir: str, prefix: str, index: int, count: int) -> str:
    return os.path.join(output_dir, f"{prefix}-{index:05d}-of-{count:05d}.parquet")


def write_sharded(columns: Mapping, output_dir: str, prefix: str, num_shards: int) -> list[str]:
    """Parquet twin of ``tfrecord.write_sharded``: contiguous row blocks, one per shard, in order."""
    types = {name: _infer_type(name, values) for name, values in columns.items()}
    rows = len(next(iter(columns.values())))
    bounds = np.linspace(0, rows, num_shards + 1).astype(int)
    paths = []
    for index in range(num_shards):
        block = {name: values[bounds[index]:bounds[index + 1]] for name, values in columns.items()}
        paths.append(write_parquet(block, shard_name(output_dir, prefix, index, num_shards), types))
    return paths


# Opening files, schema checks -------------------------------------------------------------------------------


def readable(path: str):
    """What pyarrow reads ``path`` from: the local path, or the bytes of a remote (gs://...) file."""
    if "://" not in path:
        return path
    with tf.io.gfile.GFile(path, "rb") as f:
        return pa.BufferReader(f.read())


def _read_schema(path: str) -> pa.Schema:
    try:
        return pq.read_schema(readable(path))
    except (pa.ArrowException, OSError) as error:
        raise ParquetSchemaError(f"{path}: not a readable Parquet file ({error})") from None


def _is_list_type(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_)


def _element_dtype(type_: pa.DataType) -> Optional[str]:
    """The feature dtype that values of Arrow type ``type_`` are read as without loss, or None."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if type_ in _INTEGERS:
        return "int64"
    if type_ == pa.float32():
        return "float32"
    if (pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_binary(type_)
            or pa.types.is_large_binary(type_)):
        return "string"
    return None


def _fits(feature, type_: pa.DataType) -> bool:
    if feature.is_sequence:
        return _is_list_type(type_) and _element_dtype(type_.value_type) == feature.dtype
    if isinstance(feature, DenseFeature) and feature.dim > 1:
        return ((_is_list_type(type_) or (pa.types.is_fixed_size_list(type_) and type_.list_size == feature.dim))
                and _element_dtype(type_.value_type) == feature.dtype)
    return _element_dtype(type_) == feature.dtype


def _read_by(feature) -> str:
    """How a message names the feature: by its column, and by its own name when it reads another one."""
    return repr(feature.name) if feature.source == feature.name else f"{feature.name!r} (column {feature.source!r})"


def _check_fields(path: str, schema: pa.Schema, features: Sequence) -> None:
    for feature in features:
        if feature.source not in schema.names:
            reader = "" if feature.source == feature.name else f", read by feature {feature.name!r}"
            raise ParquetSchemaError(f"{path}: no column {feature.source!r} (schema: {feature.dtype}{reader}); the "
                                     f"file has {schema.names}")
        found = schema.field(feature.source).type
        if not _fits(feature, found):
            kind = "sequence of " if feature.is_sequence else ""
            raise ParquetSchemaError(f"{path}: feature {_read_by(feature)} is {found} in the data but the schema "
                                     f"says {kind}{feature.dtype} ({feature_arrow_type(feature)})")


def check_parquet_schema(path: str, features: Sequence) -> None:
    """Fails at start, naming the file, the feature and both types, when a column is missing or of a type
    that does not fit its feature (see the table in the module docstring)."""
    _check_fields(path, _read_schema(path), features)


def count_rows(files: Sequence[str]) -> int:
    return sum(pq.read_metadata(readable(path)).num_rows for path in files)


# Reading ----------------------------------------------------------------------------------------------------


def _string_buffers(array: pa.Array) -> tuple[bytes, np.ndarray]:
    """A string or binary array as one byte string and its ``[rows + 1]`` int64 offsets into it."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if not len(array):
        return b"", np.zeros(1, np.int64)
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    _, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int64 if large else np.int32)
    offsets = offsets[array.offset:array.offset + len(array) + 1].astype(np.int64)
    start, stop = int(offsets[0]), int(offsets[-1])
    return (data.slice(start, stop - start).to_pybytes() if data is not None else b""), offsets - start


def _numbers(array: pa.Array, dtype: str) -> np.ndarray:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array.to_numpy(zero_copy_only=False).astype(_NUMPY_TYPES[dtype], copy=False)


def _flat(array: pa.Array, dtype: str):
    return _string_buffers(array) if dtype == "string" else _numbers(array, dtype)


def _first_null_row(array: pa.Array) -> int:
    return int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])


def _convert(path: str, feature, array: pa.Array, first_row: int):
    """One column of a chunk, read for ``feature`` → what ``raw_signature`` says: a numpy array, or for a
    sequence its flat values and row lengths; strings as ``(bytes, offsets)``. Nulls and dense vectors of
    another size are errors."""
    column = feature.source
    if array.null_count:
        raise ParquetSchemaError(f"{path}: column {column!r} is null in row {first_row + _first_null_row(array)}")
    if feature.is_sequence or (isinstance(feature, DenseFeature) and feature.dim > 1):
        values = array.flatten()
        if pa.types.is_fixed_size_list(array.type):
            lengths = np.full(len(array), array.type.list_size, np.int64)
        else:
            lengths = array.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        if values.null_count:
            row = int(np.searchsorted(np.cumsum(lengths), _first_null_row(values), side="right"))
            raise ParquetSchemaError(f"{path}: column {column!r} holds a null element in row {first_row + row}")
        if feature.is_sequence:
            return _flat(values, feature.dtype), lengths
        wrong = np.flatnonzero(lengths != feature.dim)
        if wrong.size:
            raise ParquetSchemaError(f"{path}: column {column!r} holds {lengths[wrong[0]]} values in row "
                                     f"{first_row + int(wrong[0])}; the schema says dense of dim {feature.dim}")
        return _numbers(values, feature.dtype).reshape(-1, feature.dim)
    return _flat(array, feature.dtype)


def _tables(parquet_file: pq.ParquetFile, names: list[str], chunk_rows: int) -> Iterator[pa.Table]:
    """The rows of a file in tables of exactly ``chunk_rows`` rows (the last: the rest), in file order, so
    a Parquet file is cut where the TFRecord file holding the same rows is."""
    pending, count = [], 0
    for batch in parquet_file.iter_batches(batch_size=chunk_rows, columns=names):
        pending.append(batch)
        count += batch.num_rows
        while count >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_rows)
            rest = table.slice(chunk_rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def _one_array(column: pa.ChunkedArray) -> pa.Array:
    """The column as one array, without a copy when it already is one (``combine_chunks`` always copies)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _by_column(features: Sequence) -> dict:
    """``{column: the first feature reading it}``; the schema makes every feature of one column read it alike."""
    columns = {}
    for feature in features:
        columns.setdefault(feature.source, feature)
    return columns


def read_chunks(path: str, features: Sequence, chunk_rows: int) -> Iterator[dict]:
    """Chunks of ``chunk_rows`` rows of ``path`` as ``{column: numpy arrays}`` (see ``raw_signature``), each
    column the features read (their ``source``) once.

    Raises ParquetSchemaError naming the file (and the column and row) when the file cannot be read, its
    columns do not fit the features, or a value is null.
    """
    columns = _by_column(features)
    names = list(columns)
    try:
        parquet_file = pq.ParquetFile(readable(path))
    except (pa.ArrowException, OSError) as error:
        raise ParquetSchemaError(f"{path}: not a readable Parquet file ({error})") from None
    with parquet_file:
        _check_fields(path, parquet_file.schema_arrow, features)
        first_row = 0
        try:
            for table in _tables(parquet_file, names, chunk_rows):
                yield {name: _convert(path, feature, _one_array(table.column(name)), first_row)
                       for name, feature in columns.items()}
                first_row += table.num_rows
        except (pa.ArrowException, OSError) as error:
            raise ParquetSchemaError(f"{path}: cannot read the Parquet data after row {first_row} ({error})") from None


def _flat_spec(dtype: str):
    if dtype == "string":
        return tf.TensorSpec([], tf.string), tf.TensorSpec([None], tf.int64)
    return tf.TensorSpec([None], _TF_TYPES[dtype])


def raw_signature(features: Sequence) -> dict:
    """What ``read_chunks`` yields, as ``tf.data`` specs by column: ``[rows]`` per scalar, ``[rows, dim]``
    per dense vector, ``(values [n], lengths [rows])`` per sequence; strings as ``(bytes [], offsets [n + 1])``."""
    specs = {}
    for name, feature in _by_column(features).items():
        if feature.is_sequence:
            specs[name] = (_flat_spec(feature.dtype), tf.TensorSpec([None], tf.int64))
        elif isinstance(feature, DenseFeature) and feature.dim > 1:
            specs[name] = tf.TensorSpec([None, feature.dim], _TF_TYPES[feature.dtype])
        else:
            specs[name] = _flat_spec(feature.dtype)
    return specs


def _strings(data: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
    """``bytes`` and ``[n + 1]`` offsets into it → the ``[n]`` strings they hold (one vectorised op)."""
    return tf.strings.substr(data, offsets[:-1], offsets[1:] - offsets[:-1])


@tf.autograph.experimental.do_not_convert  # builds a dataset from Python; nothing for AutoGraph to convert
def chunk_dataset(path: tf.Tensor, features: Sequence, chunk_rows: int) -> tf.data.Dataset:
    """The rows of one Parquet file in chunks of ``chunk_rows`` (usable inside ``interleave``, where ``path``
    is a tensor): per feature a ``[rows]`` or ``[rows, dim]`` tensor, or ``(values, lengths)`` for a
    sequence, so that chunks concatenated column by column stay rows."""
    features = list(features)

    def generate(path_bytes):
        yield from read_chunks(path_bytes.decode(), features, chunk_rows)

    def assemble(raw):
        out = {}
        for name, feature in _by_column(features).items():
            value = raw[name]
            if feature.is_sequence:
                values, lengths = value
                value = (_strings(*values) if feature.dtype == "string" else values), lengths
            elif feature.dtype == "string":
                value = _strings(*value)
            out[name] = value
        return out

    return (tf.data.Dataset.from_generator(generate, args=(path,), output_signature=raw_signature(features))
            .map(assemble))


def decode_batch(rows: dict, schema: FeatureSchema, features: Sequence, ragged: bool = False) -> dict:
    """Chunks of ``chunk_dataset`` (one, or several concatenated) → the dict ``schema.parse_examples`` gives
    for the same rows: sequences padded to ``[rows, max_len]`` plus ``<name>_length``, or with ``ragged``
    ragged ``[rows, (len)]``."""
    columns = {}
    for name, feature in _by_column(features).items():
        value = rows[name]
        if feature.is_sequence:
            values, lengths = value
            value = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
        columns[name] = value
    return schema.features_from_columns(columns, features, ragged=ragged)
