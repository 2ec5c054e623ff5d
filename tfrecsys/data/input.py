"""tf.data input: TFRecord shards of tf.train.Example (or Parquet files) → batches of ``(inputs, targets)``.

Batches are parsed after batching (one vectorised ``parse_example`` per batch rather than one per row) and
prefetched. Under a distribution strategy each worker reads its own files (``input_context`` sharding).
Parquet files (``*.parquet`` of standard Arrow columns: ``list<int64>`` sequences and so on, see
``tfrecsys.data.parquet``) are read with pyarrow and give the same feature dict, batch for batch, as TFRecord
files holding the same rows.
"""

import glob
import itertools
import os
import random
import re
from typing import Callable, Mapping, Optional, Sequence, Union

import tensorflow as tf

from tfrecsys.data import parquet
from tfrecsys.data.user_histories import UserHistories
from tfrecsys.features.schema import FeatureSchema

PARQUET_SUFFIX = ".parquet"


class DataError(RuntimeError):
    """Unreadable or missing input data; the message names the file (and record) at fault."""


def is_parquet(files: Sequence[str]) -> bool:
    """Whether ``files`` are Parquet (by suffix); a mix of Parquet and TFRecord files is an error."""
    flags = [str(f).endswith(PARQUET_SUFFIX) for f in files]
    if any(flags) and not all(flags):
        raise DataError(f"input mixes Parquet and TFRecord files ({files[flags.index(True)]} and "
                        f"{files[flags.index(False)]}); use one format per dataset")
    return bool(flags) and all(flags)


def resolve_files(patterns: Union[str, Sequence[str]], base_dir: str = "") -> list[str]:
    """Expands comma-separated or listed glob patterns (relative ones under ``base_dir``) to sorted files.

    A pattern that matches nothing is an error naming it, not an empty dataset that trains on nothing.
    """
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    files = []
    for pattern in patterns:
        pattern = pattern.strip()
        if base_dir and "://" not in pattern and not os.path.isabs(pattern):
            pattern = os.path.join(base_dir, pattern)
        matched = sorted(tf.io.gfile.glob(pattern)) if "://" in pattern else sorted(glob.glob(pattern))
        if not matched:
            raise DataError(f"no input file matches {pattern!r}")
        for path in matched:
            if tf.io.gfile.isdir(path):
                raise DataError(f"{path} is a directory, not a TFRecord file")
        files.extend(matched)
    return files


READ_CHUNK_ROWS = 1024  # rows per read in file order (evaluation); training reads shuffle-window chunks
FIRST_WINDOW_BATCHES = 8  # the first training window's size in batches (later ones: ``shuffle_buffer`` rows)
_READ_BUFFER_BYTES = 4 << 20


def _pipeline_options() -> tf.data.Options:
    """tf.data's autotuner off. It times every element of every stage, and a TFRecord file is read one element
    per record, so that bookkeeping cost about 15% of the pipeline's CPU (2.8 against 2.3 µs per example;
    TFRecord input 1.12x faster without it, bench/RESULTS.md). Without it each AUTOTUNE parallelism is fixed
    at min(16, cores) (interleave: at most ``cycle_length``), which is what a CPU-bound pipeline settles on
    anyway, and a prefetch buffer grows whenever the consumer finds it empty."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def make_dataset(files: Sequence[str], schema: FeatureSchema, batch_size: int, *,
                 training: bool, targets: Optional[Mapping[str, str]] = None, shuffle_buffer: int = 10_000,
                 seed: Optional[int] = None, input_context: Optional[tf.distribute.InputContext] = None,
                 parallel_reads: int = 4, ragged: bool = False,
                 user_histories: Optional[UserHistories] = None) -> tf.data.Dataset:
    """Batches of ``(inputs, labels)`` from TFRecord or Parquet ``files``.

    ``labels`` holds every label feature of the schema by its name, in its own dtype (what a model's tasks
    read: labels, masks, sample weights, auxiliary columns); with ``targets`` (``{"score": "click"}``) it is
    ``{output_name: float32 label}`` instead. ``batch_size`` is per replica when ``input_context`` is given,
    else global. ``ragged``: sequences as ``tf.RaggedTensor`` cut to their ``max_len`` instead of padded with
    ``<name>_length`` (``FeatureSchema.parse_examples``).

    Every stage works on chunks of rows, never on single rows (a per-row tf.data element costs more than
    parsing the row): each file is read in chunks, ``parallel_reads`` files at a time, and the chunks go
    through ``batches_from_chunks``. Training data is shuffled (files, then rows) and repeated forever — the
    train loop counts steps: a window of chunks from ``parallel_reads`` files in turn, about ``shuffle_buffer``
    rows, is decoded at once, permuted as a whole and cut into batches, so a batch is a uniform draw from a
    window that spans several files; the first window is ``FIRST_WINDOW_BATCHES`` batches, so the first step
    does not wait for a whole ``shuffle_buffer`` to be decoded. The permutation is seeded by ``seed`` and the
    window's index, so a seeded pipeline gives the same batches every time, from TFRecord and Parquet alike.
    From the second epoch on, each file is read from a seeded random chunk onwards and round to its start
    (``_rotation``), so an epoch does not replay the previous one's windows in the same order.
    Eval data is one pass over the files in order, chunks of the files taken in turn.

    ``user_histories`` (``tfrecsys.data.user_histories``): the files hold per example only the user and the
    timestamp, not the sequences it fills; those are cut from the per-user store batch by batch, so the
    batches equal those of files that store the same histories per row.
    """
    for label in (targets or {}).values():
        schema[label]  # raises naming the label if the schema lacks it
    features = schema.inputs + schema.labels
    if user_histories is not None:
        features = user_histories.row_features(features)
    files = list(files)
    cycle = max(1, min(parallel_reads, len(files)))
    chunk_rows, chunks_per_file_window = READ_CHUNK_ROWS, 1
    if training:
        # The first window is small (FIRST_WINDOW_BATCHES batches): the first step waits for its decode and
        # permutation only, not for a whole ``shuffle_buffer`` (about 1 s for MovieLens' 100,000 rows).
        first_window_rows = min(shuffle_buffer, FIRST_WINDOW_BATCHES * batch_size)
        chunk_rows = max(1, -(-first_window_rows // cycle))
        chunks_per_file_window = max(1, round(shuffle_buffer / (chunk_rows * cycle)))
    if is_parquet(files):
        def read_chunks(path):
            return parquet.chunk_dataset(path, features, chunk_rows)

        def read_chunks_from(path, first_chunk):
            chunks = read_chunks(path)
            return chunks.skip(first_chunk).concatenate(chunks.take(first_chunk))

        def decode(rows):
            return parquet.decode_batch(rows, schema, features, ragged=ragged)
    else:
        def read_chunks(path):
            return tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES).batch(chunk_rows)

        def read_chunks_from(path, first_chunk):
            # Skipped as records, before batching: the reader steps over them without batching them (skipping
            # 70,000 of 142,172 Taobao records and reading the rest took 0.13 s, reading them all 0.41 s).
            records, skipped = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES), first_chunk * chunk_rows
            return records.skip(skipped).batch(chunk_rows).concatenate(records.take(skipped).batch(chunk_rows))

        def decode(serialized):
            columns = tf.io.parse_example(serialized, schema.parse_spec(features))
            return schema.features_from_columns(columns, features, ragged=ragged)

    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        files_ds = files_ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    window_seed = 0
    if training:
        window_seed = seed if seed is not None else random.SystemRandom().randrange(2 ** 31)
        files_ds = files_ds.shuffle(len(files), seed=window_seed, reshuffle_each_iteration=True).repeat()
        files_per_epoch = len(files)
        if input_context is not None and input_context.num_input_pipelines > 1:
            files_per_epoch = len(files[input_context.input_pipeline_id::input_context.num_input_pipelines])
        chunk_counts = {}  # per file, counted once: later epochs rotate each file by a random chunk

        def chunk_count(path, later_epoch):
            if not later_epoch:
                return 0
            if path.numpy() not in chunk_counts:
                chunk_counts[path.numpy()] = -(-count_records([path.numpy().decode()]) // chunk_rows)
            return chunk_counts[path.numpy()]

        def rotated(opened, path):
            count = tf.py_function(chunk_count, [path, opened >= files_per_epoch], tf.int64)
            count.set_shape([])
            return read_chunks_from(path, _rotation(opened, count, window_seed))

        chunks = files_ds.enumerate().interleave(rotated, cycle_length=cycle, num_parallel_calls=tf.data.AUTOTUNE,
                                                 deterministic=True)
    else:
        chunks = files_ds.interleave(read_chunks, cycle_length=cycle, num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=True)
    batches = batches_from_chunks(chunks, decode, schema, batch_size, targets=targets, training=training,
                                  window_chunks=cycle * chunks_per_file_window, first_window_chunks=cycle,
                                  seed=window_seed)
    if user_histories is None:
        return batches
    # Cut per batch, after the shuffle: the window's permutation then moves users and times, not histories.
    return batches.map(lambda inputs, labels: (user_histories.cut_histories(inputs), labels),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def batches_from_chunks(chunks: tf.data.Dataset, decode: Callable, schema: FeatureSchema, batch_size: int, *,
                        training: bool, targets: Optional[Mapping[str, str]] = None, window_chunks: int = 1,
                        first_window_chunks: Optional[int] = None, seed: int = 0) -> tf.data.Dataset:
    """Batches of ``(inputs, {output_name: label})`` from a dataset of raw row chunks, whatever they were read
    from: ``decode`` turns one chunk (a ``[rows]`` string tensor of serialized Examples, or Parquet columns)
    into the schema's feature dict.

    Training: ``window_chunks`` chunks at a time form one shuffle window: one decode per window, then one
    permutation of the decoded rows (seeded by ``seed`` and the window's index), then batches of exactly
    ``batch_size`` rows, so per-row work stays vectorised. ``first_window_chunks`` (fewer) makes the first
    window smaller, so the first batch comes sooner. Evaluation: each chunk is decoded in order and the last
    batch may be smaller.
    """
    def inputs_and_targets(rows):
        inputs, labels = schema.split_labels(rows)
        if targets is None:
            return inputs, labels
        return inputs, {output: tf.cast(labels[label], tf.float32) for output, label in targets.items()}

    if training:
        def shuffled_window(index, window):
            rows = decode(tf.nest.map_structure(lambda column: column.flat_values, window))
            count = tf.shape(tf.nest.flatten(rows)[0], out_type=tf.int64)[0]
            order = tf.random.experimental.stateless_shuffle(
                tf.range(count), seed=tf.stack([tf.constant(seed, tf.int64), index]))
            return inputs_and_targets({name: tf.gather(value, order) for name, value in rows.items()})

        batches = (_windows(chunks, window_chunks, first_window_chunks or window_chunks)
                   .map(shuffled_window, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                   .rebatch(batch_size, drop_remainder=True))
    else:
        batches = (chunks.map(lambda chunk: inputs_and_targets(decode(chunk)), num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
                   .rebatch(batch_size))
    return batches.prefetch(tf.data.AUTOTUNE).with_options(_pipeline_options())


def _rotation(opened: tf.Tensor, count: tf.Tensor, seed: int) -> tf.Tensor:
    """The chunk a file of ``count`` chunks is read from in one epoch (then on and round to where it began).

    ``opened`` counts the files opened so far and seeds the offset; ``count`` is 0 in epoch 0, whose files are
    read from their first chunk (the first step waits for no count). Without the rotation every epoch of a file
    read in order replays the same windows in the same order (one file: window k of epoch 2 holds half the
    rows of window k of epoch 1, row positions correlated 0.88); on a one-file validation split of Taobao
    that cost 0.04 eval AUC in the second epoch (bench/RESULTS.md, issue 12, "the second pass"). Skipping to
    the offset reads those chunks without decoding them; every epoch still reads each row exactly once."""
    return tf.random.stateless_uniform([], seed=tf.stack([tf.constant(seed, tf.int64), opened]),
                                       minval=0, maxval=tf.maximum(count, 1), dtype=tf.int64)


def _windows(chunks: tf.data.Dataset, window_chunks: int, first_window_chunks: int) -> tf.data.Dataset:
    """``(window index, chunks of the window)``: the first window holds ``first_window_chunks`` chunks, each
    next one twice as many up to ``window_chunks``, then every window ``window_chunks``. Doubling rather than
    jumping to full size keeps the work decoded ahead, in parallel with the first steps, small too."""
    if first_window_chunks >= window_chunks:
        return chunks.ragged_batch(window_chunks).enumerate()
    ramp_sizes = []
    while first_window_chunks * 2 ** len(ramp_sizes) < window_chunks:
        ramp_sizes.append(first_window_chunks * 2 ** len(ramp_sizes))
    ramp_ends = tf.constant(list(itertools.accumulate(ramp_sizes)), tf.int64)
    ramp_sizes = tf.constant(ramp_sizes, tf.int64)
    ramp_windows, size = len(ramp_sizes), tf.constant(window_chunks, tf.int64)

    def window_of(chunk_index, _):
        after_ramp = ramp_windows + (chunk_index - ramp_ends[-1]) // size
        in_ramp = tf.searchsorted(ramp_ends, chunk_index[tf.newaxis], side="right", out_type=tf.int64)[0]
        return tf.where(chunk_index < ramp_ends[-1], in_ramp, after_ramp)

    def window_size(window_index):
        ramp_size = tf.gather(ramp_sizes, tf.minimum(window_index, ramp_windows - 1))
        return tf.where(window_index < ramp_windows, ramp_size, size)

    def batched(window_index, window):
        return window.ragged_batch(window_chunks).map(lambda _, chunk_batch: (window_index, chunk_batch))

    return chunks.enumerate().group_by_window(window_of, batched, window_size_func=window_size)


def count_records(files: Sequence[str], limit: Optional[int] = None) -> int:
    """Number of records in ``files`` (a graph-side scan: no parsing; Parquet: the files' row counts), or
    ``limit`` when there are at least that many (only that many are read)."""
    if is_parquet(files):
        count = parquet.count_rows(files)
        return count if limit is None else min(count, limit)
    records = tf.data.TFRecordDataset(list(files), buffer_size=_READ_BUFFER_BYTES)
    if limit is not None:
        records = records.take(limit)
    # Counted in batches of records: one reduce step per record took 10.5 s for 142,172 Taobao rows, 1.0 s so.
    records = records.batch(READ_CHUNK_ROWS)
    return int(records.reduce(tf.constant(0, tf.int64), lambda n, batch: n + tf.size(batch, out_type=tf.int64)))


def _short(message: str) -> str:
    """TensorFlow's message without its graph-node prefix and op suffix: "corrupted record at 1397174"."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message.splitlines()[0])
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", message).strip()


def find_bad_record(files: Sequence[str], schema: FeatureSchema, features=None) -> Optional[str]:
    """Reads every file record by record and returns ``"<file>: record N: <reason>"`` for the first one
    that cannot be read or parsed with ``schema``, or None when all are good.

    Used after a training error to name the file at fault: TensorFlow's own message ("corrupted record at
    12345") does not say which of many shards it was reading.
    """
    features = features if features is not None else schema.inputs + schema.labels
    if is_parquet(files):
        return _find_bad_parquet(files, features)
    spec = schema.parse_spec(features)

    def first_unparseable(records, first_index):
        try:
            tf.io.parse_example(records, spec)
            return None
        except tf.errors.InvalidArgumentError:
            for offset, record in enumerate(records):
                try:
                    tf.io.parse_example([record], spec)
                except tf.errors.InvalidArgumentError as error:
                    return first_index + offset, _short(error.message)
        return None

    for path in files:
        if not tf.io.gfile.exists(path):
            return f"{path}: file does not exist"
        pending, read = [], 0
        try:
            for record in tf.data.TFRecordDataset(path):
                pending.append(record.numpy())
                read += 1
                if len(pending) == 1024:
                    bad = first_unparseable(pending, read - len(pending))
                    if bad:
                        return f"{path}: record {bad[0]}: {bad[1]}"
                    pending = []
        except tf.errors.DataLossError as error:
            return f"{path}: record {read}: {_short(error.message)}"
        bad = pending and first_unparseable(pending, read - len(pending))
        if bad:
            return f"{path}: record {bad[0]}: {bad[1]}"
    return None


def _find_bad_parquet(files: Sequence[str], features) -> Optional[str]:
    """Reads every file as training does (same reader, same checks) and returns the first problem."""
    for path in files:
        if not tf.io.gfile.exists(path):
            return f"{path}: file does not exist"
        try:
            for _ in parquet.read_chunks(path, features, READ_CHUNK_ROWS):
                pass
        except parquet.ParquetSchemaError as error:
            return str(error)
    return None


_KIND_OF_DTYPE = {"int64": "int64_list", "float32": "float_list", "string": "bytes_list"}


def check_schema(path: str, schema: FeatureSchema, features=None) -> None:
    """Compares the first record of ``path`` with the schema and fails at start, naming the feature and
    both types, instead of failing mid-training on a type mismatch (or the feature not being there)."""
    features = features if features is not None else schema.inputs + schema.labels
    if str(path).endswith(PARQUET_SUFFIX):
        try:
            parquet.check_parquet_schema(path, features)
        except parquet.ParquetSchemaError as error:
            raise DataError(str(error)) from None
        return
    try:
        first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError as error:
        raise DataError(f"{path}: cannot read the first record: {_short(error.message)}") from None
    if first is None:
        raise DataError(f"{path}: the file holds no records")
    try:
        example = tf.train.Example.FromString(first.numpy())
    except Exception as error:  # protobuf's DecodeError; its type is an implementation detail
        raise DataError(f"{path}: record 0 is not a tf.train.Example ({error})") from None
    present = example.features.feature
    for feature in features:
        # A feature may read another feature's stored column (``source``): say which, when it does.
        reader = "" if feature.source == feature.name else f", read by feature {feature.name!r}"
        if feature.source not in present:
            raise DataError(f"{path}: record 0 has no feature {feature.source!r} (schema: {feature.dtype}"
                            f"{reader}); the record has {sorted(present)}")
        kind = present[feature.source].WhichOneof("kind")
        expected = _KIND_OF_DTYPE[feature.dtype]
        if kind is not None and kind != expected:
            raise DataError(f"{path}: feature {feature.source!r} is {kind} in the data but the schema says "
                            f"{feature.dtype} ({expected}{reader})")
