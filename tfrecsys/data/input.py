"""tf.data input: TFRecord shards of tf.train.Example → batches of ``(inputs, targets)``.

Batches are parsed after batching (one vectorised ``parse_example`` per batch rather than one per row) and
prefetched. Under a distribution strategy each worker reads its own files (``input_context`` sharding).
"""

import glob
import os
import re
from typing import Mapping, Optional, Sequence, Union

import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema


class DataError(RuntimeError):
    """Unreadable or missing input data; the message names the file (and record) at fault."""


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


def make_dataset(files: Sequence[str], schema: FeatureSchema, batch_size: int, *,
                 targets: Mapping[str, str], training: bool, shuffle_buffer: int = 10_000,
                 seed: Optional[int] = None, input_context: Optional[tf.distribute.InputContext] = None,
                 parallel_reads: int = 4) -> tf.data.Dataset:
    """Batches of ``(inputs, {output_name: label})`` from TFRecord ``files``.

    ``targets`` maps model output names to label features (``{"score": "click"}``). Training data is
    shuffled (files, then rows) and repeated forever — the train loop counts steps; eval data is one pass
    in file order. ``batch_size`` is per replica when ``input_context`` is given, else global.
    """
    for output, label in targets.items():
        schema[label]  # raises naming the label if the schema lacks it
    files_ds = tf.data.Dataset.from_tensor_slices(list(files))
    if input_context is not None and input_context.num_input_pipelines > 1:
        files_ds = files_ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    records = files_ds.interleave(tf.data.TFRecordDataset, cycle_length=min(parallel_reads, len(files)),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if training:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    label_names = dict(targets)

    def parse(serialized):
        batch = schema.parse_examples(serialized, with_labels=True)
        inputs, labels = schema.split_labels(batch)
        return inputs, {output: tf.cast(labels[label], tf.float32) for output, label in label_names.items()}

    return (records.batch(batch_size, drop_remainder=training)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def count_records(files: Sequence[str]) -> int:
    """Number of records in ``files`` (a graph-side scan: no parsing)."""
    return int(tf.data.TFRecordDataset(list(files)).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _short(message: str) -> str:
    """TensorFlow's message without its graph-node prefix and op suffix: "corrupted record at 1397174"."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message.splitlines()[0])
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", message).strip()


def find_bad_record(files: Sequence[str], schema: FeatureSchema) -> Optional[str]:
    """Reads every file record by record and returns ``"<file>: record N: <reason>"`` for the first one
    that cannot be read or parsed with ``schema``, or None when all are good.

    Used after a training error to name the file at fault: TensorFlow's own message ("corrupted record at
    12345") does not say which of many shards it was reading.
    """
    spec = schema.parse_spec(schema.inputs + schema.labels)

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


_KIND_OF_DTYPE = {"int64": "int64_list", "float32": "float_list", "string": "bytes_list"}


def check_schema(path: str, schema: FeatureSchema, features=None) -> None:
    """Compares the first record of ``path`` with the schema and fails at start, naming the feature and
    both types, instead of failing mid-training on a type mismatch (or the feature not being there)."""
    features = features if features is not None else schema.inputs + schema.labels
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
        if feature.name not in present:
            raise DataError(f"{path}: record 0 has no feature {feature.name!r} (schema: {feature.dtype}); "
                            f"the record has {sorted(present)}")
        kind = present[feature.name].WhichOneof("kind")
        expected = _KIND_OF_DTYPE[feature.dtype]
        if kind is not None and kind != expected:
            raise DataError(f"{path}: feature {feature.name!r} is {kind} in the data but the schema says "
                            f"{feature.dtype} ({expected})")
