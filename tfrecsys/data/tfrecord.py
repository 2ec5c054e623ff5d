"""Writing columnar data as sharded TFRecord files of tf.train.Example."""

import os

import numpy as np
import tensorflow as tf


def _feature(value) -> tf.train.Feature:
    array = np.asarray(value)
    if array.dtype.kind in "iub":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=array.reshape(-1).tolist()))
    if array.dtype.kind == "f":
        return tf.train.Feature(float_list=tf.train.FloatList(value=array.reshape(-1).tolist()))
    values = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist()]
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def to_examples(columns: dict) -> list[bytes]:
    """Serialized tf.train.Example per row. A column is an array ``[rows]``/``[rows, dim]`` or, for
    variable-length features, a list of 1-D arrays."""
    names = list(columns)
    count = len(columns[names[0]])
    for name in names:
        if len(columns[name]) != count:
            raise ValueError(f"column {name!r} has {len(columns[name])} rows, expected {count}")
    out = []
    for row in range(count):
        feature = {name: _feature(columns[name][row]) for name in names}
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def shard_name(output_dir: str, prefix: str, index: int, count: int) -> str:
    return os.path.join(output_dir, f"{prefix}-{index:05d}-of-{count:05d}.tfrecord")


def write_sharded(columns: dict, output_dir: str, prefix: str, num_shards: int) -> list[str]:
    """Writes rows in contiguous blocks, one per shard, so every shard keeps the rows' order (time order
    for logs). Returns the shard paths."""
    examples = to_examples(columns)
    bounds = np.linspace(0, len(examples), num_shards + 1).astype(int)
    paths = []
    for index in range(num_shards):
        path = shard_name(output_dir, prefix, index, num_shards)
        with tf.io.TFRecordWriter(path) as writer:
            for record in examples[bounds[index]:bounds[index + 1]]:
                writer.write(record)
        paths.append(path)
    return paths
