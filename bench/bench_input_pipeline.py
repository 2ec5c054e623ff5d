"""Input pipeline vs dnn training: examples/s of the tf.data pipelines (TFRecord and Parquet) against the dnn
model's training examples/s (configs/dnn_simulator.py), same machine, same run; the data layer should never
be what training waits for (the issue asks for at least 10x).

    python -m bench.run_all input_pipeline

All read the same simulated click-log rows (4 TFRecord shards, and the same rows in 4 Parquet files) with the
config's batch size and shuffle buffer:

* input: ``make_dataset(training=True)`` consumed alone (chunked reads, one decode and one permutation per
  shuffle window, prefetch), for TFRecord (tf.train.Example parsing) and for Parquet (pyarrow column chunks,
  no proto parsing);
* TFRecord input with tf.data's autotuner on: the same pipeline as it ran before ``make_dataset`` turned the
  autotuner off, to show what that buys;
* TFRecord records in memory: the same decode, permutation and batching (``batches_from_chunks``) fed from
  chunks of serialized records already in memory, so no file is read: the most any TFRecord reader could
  deliver, with ``tf.io.parse_example`` doing the decoding;
* baseline input: the per-row pipeline ``make_dataset`` replaced (interleaved records, a row shuffle buffer,
  batch, parse), to show what the chunked design buys;
* training: Keras ``fit`` of the dnn on each of those inputs but the baseline, and on the same batches cached
  in memory (the model's own speed: if they match, input is not what training waits for).

The acceptance ratio is input examples/s over dnn training examples/s on that input (training as it runs);
the ratio over training on cached batches (the model alone, no input work sharing the CPU) is the stricter one
and is printed too.

Input is consumed the way training consumes it: an iterator advanced inside a ``tf.function`` (a graph
``while`` loop over ``next(iterator)``, as Keras' train function does), after a warm-up call that traces the
function and fills the first shuffle windows and the prefetch queue; timing one Python ``next()`` per batch
would add Python overhead that is not the pipeline's. The measurements alternate ROUNDS times and the medians
are compared (the machine is shared and noisy).
"""

import os
import statistics
import tempfile
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data import parquet, tfrecord
from tfrecsys.data.input import batches_from_chunks, make_dataset
from tfrecsys.data.simulators.click_log import ClickLogConfig, simulate_click_log
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.train.loop import build_and_compile

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "dnn_simulator.py")
INPUT_BATCHES = 1000
WARMUP_BATCHES = 40
TRAIN_STEPS = 400
CACHED_BATCHES = 200
ROUNDS = 5


def per_row_pipeline(files, schema, batch_size, shuffle_buffer, seed):
    """The baseline: one tf.data element per record through interleave, shuffle and batch."""
    records = (tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
               .interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
               .shuffle(shuffle_buffer, seed=seed).repeat())

    def parse(serialized):
        inputs, labels = schema.split_labels(schema.parse_examples(serialized))
        return inputs, {"score": labels["click"]}

    return (records.batch(batch_size, drop_remainder=True).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def input_rates(dataset: tf.data.Dataset, batches: int, warmup_batches: int = WARMUP_BATCHES) -> tuple:
    """(examples/s of wall time, µs of this process' CPU time per example) of consuming ``batches`` batches in a
    ``tf.function`` loop, as training consumes input; on a machine other jobs share, the CPU time is the
    steadier of the two."""
    iterator = iter(dataset)

    @tf.function
    def consume(steps):
        examples = tf.constant(0, tf.int64)
        for _ in tf.range(steps):
            batch = next(iterator)
            examples += tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]
        return examples

    consume(tf.constant(warmup_batches))  # trace; fill the first windows and the prefetch queue
    started, cpu_started = time.perf_counter(), time.process_time()
    examples = int(consume(tf.constant(batches)))
    return examples / (time.perf_counter() - started), (time.process_time() - cpu_started) / examples * 1e6


def training_examples_per_second(model, dataset: tf.data.Dataset, steps: int, batch_size: int) -> float:
    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * batch_size / (time.perf_counter() - started)


def with_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with tf.data's autotuner back on (options set later override those set earlier)."""
    options = tf.data.Options()
    options.autotune.enabled = True
    return dataset.with_options(options)


def records_in_memory(files, schema, batch_size, shuffle_buffer, seed):
    """The training pipeline with file reading taken out: chunks of serialized records are read once, held
    in memory interleaved across the files (chunk k of each file in turn, as ``make_dataset``'s interleave
    takes them, without its per-epoch file shuffle), and go through the same ``batches_from_chunks`` (one
    ``parse_example`` per window, permutation, batching) forever."""
    chunk_rows = -(-shuffle_buffer // len(files))
    per_file = [list(tf.data.TFRecordDataset(path).batch(chunk_rows)) for path in files]
    in_order = [chunks[k] for k in range(max(map(len, per_file))) for chunks in per_file if k < len(chunks)]
    chunks = tf.data.Dataset.from_tensor_slices(tf.ragged.stack(in_order)).repeat()
    return batches_from_chunks(chunks, schema.parse_examples, schema, batch_size, targets={"score": "click"},
                               training=True, window_chunks=len(files), seed=seed)


LABELS = {
    "input": "TFRecord input pipeline",
    "input_autotuned": "TFRecord input, autotuner on",
    "in_memory": "TFRecord records in memory",
    "parquet": "Parquet input pipeline",
    "per_row": "per-row pipeline (baseline)",
    "training": "dnn training on TFRecord input",
    "training_autotuned": "dnn training, TFRecord autotuned",
    "training_in_memory": "dnn training, records in memory",
    "training_parquet": "dnn training on Parquet input",
    "training_cached": "dnn training on cached batches",
}

# Each input pipeline and the training measured on it.
TRAINED_ON = {"input": "training", "input_autotuned": "training_autotuned", "in_memory": "training_in_memory",
              "parquet": "training_parquet"}


def main() -> None:
    config = load_config(CONFIG)
    schema = FeatureSchema.from_config(config.features)
    batch_size, buffer, seed = config.train.batch_size, config.train.shuffle_buffer, config.train.seed
    rates = {name: [] for name in LABELS}
    with tempfile.TemporaryDirectory() as directory:
        columns, _ = simulate_click_log(ClickLogConfig.from_config(config.data.simulator))
        tfrecord_files = tfrecord.write_sharded(columns, directory, "train", 4)
        parquet_files = parquet.write_sharded(columns, directory, "train", 4)

        def pipeline(files):
            return make_dataset(files, schema, batch_size, targets={"score": "click"}, training=True,
                                shuffle_buffer=buffer, seed=seed)

        inputs = {
            "input": lambda: pipeline(tfrecord_files),
            "input_autotuned": lambda: with_autotune(pipeline(tfrecord_files)),
            "in_memory": lambda: records_in_memory(tfrecord_files, schema, batch_size, buffer, seed),
            "parquet": lambda: pipeline(parquet_files),
        }
        model = build_and_compile(config, schema)
        model.fit(pipeline(tfrecord_files), epochs=1, steps_per_epoch=40, verbose=0)  # trace and warm up
        cached = pipeline(tfrecord_files).take(CACHED_BATCHES).cache().repeat()
        model.fit(cached, epochs=1, steps_per_epoch=CACHED_BATCHES, verbose=0)  # fill the cache
        for _ in range(ROUNDS):
            for name, make in inputs.items():
                rates[name].append(input_rates(make(), INPUT_BATCHES)[0])
                rates[TRAINED_ON[name]].append(training_examples_per_second(model, make(), TRAIN_STEPS, batch_size))
            rates["per_row"].append(input_rates(
                per_row_pipeline(tfrecord_files, schema, batch_size, buffer, seed), INPUT_BATCHES)[0])
            rates["training_cached"].append(training_examples_per_second(model, cached, TRAIN_STEPS, batch_size))
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"batch size {batch_size}, shuffle buffer {buffer}, 4 shards of {len(columns['click'])} simulated "
          f"impressions; median of {ROUNDS} alternating rounds, examples/s")
    for name, label in LABELS.items():
        print(f"{label:34s} {median[name]:>11,.0f}   rounds {[round(r) for r in rates[name]]}")

    def ratio(input_name, training_name):
        return median[input_name] / median[training_name]

    print(f"ratio TFRecord input / dnn training on it: {ratio('input', 'training'):.1f}x (acceptance: >= 10x)")
    print(f"ratio Parquet input / dnn training on it:  {ratio('parquet', 'training_parquet'):.1f}x "
          "(acceptance: >= 10x)")
    print(f"ratio TFRecord records in memory / dnn training on them (the most any TFRecord reader could give): "
          f"{ratio('in_memory', 'training_in_memory'):.1f}x")
    print(f"ratio TFRecord input autotuned / dnn training on it: "
          f"{ratio('input_autotuned', 'training_autotuned'):.1f}x")
    print(f"ratio TFRecord / Parquet / in-memory input / dnn training on cached batches (the model's own speed): "
          f"{ratio('input', 'training_cached'):.1f}x / {ratio('parquet', 'training_cached'):.1f}x / "
          f"{ratio('in_memory', 'training_cached'):.1f}x")
    print(f"TFRecord input, autotuner off / on: {ratio('input', 'input_autotuned'):.2f}; dnn training on it: "
          f"{ratio('training', 'training_autotuned'):.2f}")
    print(f"ratio TFRecord input / per-row baseline: {ratio('input', 'per_row'):.1f}x")
    print(f"training on TFRecord / Parquet input / cached batches: {ratio('training', 'training_cached'):.2f}"
          f" / {ratio('training_parquet', 'training_cached'):.2f}")


if __name__ == "__main__":
    main()
