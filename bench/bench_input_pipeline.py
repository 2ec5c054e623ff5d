"""Input pipeline vs dnn training: examples/s of the tf.data pipelines (TFRecord and Parquet) against the dnn
model's training examples/s (configs/dnn_simulator.py), same machine, same run; the data layer should never
be what training waits for (the issue asks for at least 10x).

    python -m bench.run_all input_pipeline

All read the same simulated click-log rows (4 TFRecord shards, and the same rows in 4 Parquet files) with the
config's batch size and shuffle buffer:

* input: ``make_dataset(training=True)`` consumed alone (chunked reads, one decode and one permutation per
  shuffle window, prefetch), for TFRecord (tf.train.Example parsing) and for Parquet (pyarrow column chunks,
  no proto parsing);
* baseline input: the per-row pipeline ``make_dataset`` replaced (interleaved records, a row shuffle buffer,
  batch, parse), to show what the chunked design buys;
* training: Keras ``fit`` of the dnn on the TFRecord and on the Parquet pipeline, and on the same batches
  cached in memory (the model's own speed: if they match, input is not what training waits for).

The acceptance ratio is input examples/s over dnn training examples/s on the TFRecord pipeline (training as
it runs); the ratio over training on cached batches (the model alone, no input work sharing the CPU) is the
stricter one and is printed too.

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
from tfrecsys.data.input import make_dataset
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


def input_examples_per_second(dataset: tf.data.Dataset, batches: int) -> float:
    iterator = iter(dataset)

    @tf.function
    def consume(steps):
        examples = tf.constant(0, tf.int64)
        for _ in tf.range(steps):
            _, labels = next(iterator)
            examples += tf.shape(labels["score"], out_type=tf.int64)[0]
        return examples

    consume(tf.constant(WARMUP_BATCHES))  # trace; fill the first windows and the prefetch queue
    started = time.perf_counter()
    examples = int(consume(tf.constant(batches)))
    return examples / (time.perf_counter() - started)


def training_examples_per_second(model, dataset: tf.data.Dataset, steps: int, batch_size: int) -> float:
    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    config = load_config(CONFIG)
    schema = FeatureSchema.from_config(config.features)
    batch_size, buffer, seed = config.train.batch_size, config.train.shuffle_buffer, config.train.seed
    rates = {name: [] for name in ("input", "parquet", "per_row", "training", "training_parquet", "training_cached")}
    with tempfile.TemporaryDirectory() as directory:
        columns, _ = simulate_click_log(ClickLogConfig.from_config(config.data.simulator))
        tfrecord_files = tfrecord.write_sharded(columns, directory, "train", 4)
        parquet_files = parquet.write_sharded(columns, directory, "train", 4)

        def pipeline(files):
            return make_dataset(files, schema, batch_size, targets={"score": "click"}, training=True,
                                shuffle_buffer=buffer, seed=seed)

        model = build_and_compile(config, schema)
        model.fit(pipeline(tfrecord_files), epochs=1, steps_per_epoch=40, verbose=0)  # trace and warm up
        cached = pipeline(tfrecord_files).take(CACHED_BATCHES).cache().repeat()
        model.fit(cached, epochs=1, steps_per_epoch=CACHED_BATCHES, verbose=0)  # fill the cache
        for _ in range(ROUNDS):
            rates["input"].append(input_examples_per_second(pipeline(tfrecord_files), INPUT_BATCHES))
            rates["per_row"].append(input_examples_per_second(
                per_row_pipeline(tfrecord_files, schema, batch_size, buffer, seed), INPUT_BATCHES))
            rates["training"].append(training_examples_per_second(model, pipeline(tfrecord_files), TRAIN_STEPS,
                                                                  batch_size))
            rates["training_cached"].append(training_examples_per_second(model, cached, TRAIN_STEPS, batch_size))
            rates["parquet"].append(input_examples_per_second(pipeline(parquet_files), INPUT_BATCHES))
            rates["training_parquet"].append(training_examples_per_second(model, pipeline(parquet_files),
                                                                          TRAIN_STEPS, batch_size))
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"batch size {batch_size}, shuffle buffer {buffer}, 4 shards of {len(columns['click'])} simulated "
          f"impressions; median of {ROUNDS} alternating rounds, examples/s")
    labels = {"input": "TFRecord input pipeline", "parquet": "Parquet input pipeline",
              "per_row": "per-row pipeline (baseline)", "training": "dnn training on TFRecord input",
              "training_parquet": "dnn training on Parquet input",
              "training_cached": "dnn training on cached batches"}
    for name, label in labels.items():
        print(f"{label:32s} {median[name]:>11,.0f}   rounds {[round(r) for r in rates[name]]}")
    print(f"ratio TFRecord input / dnn training: {median['input'] / median['training']:.1f}x (acceptance: >= 10x)")
    print(f"ratio Parquet input / dnn training:  {median['parquet'] / median['training']:.1f}x (acceptance: >= 10x)")
    print(f"ratio TFRecord / Parquet input / dnn training on cached batches (the model's own speed): "
          f"{median['input'] / median['training_cached']:.1f}x / {median['parquet'] / median['training_cached']:.1f}x")
    print(f"ratio TFRecord input / per-row baseline: {median['input'] / median['per_row']:.1f}x")
    print(f"training on TFRecord / Parquet input / cached batches: {median['training'] / median['training_cached']:.2f}"
          f" / {median['training_parquet'] / median['training_cached']:.2f}")


if __name__ == "__main__":
    main()
