"""Batch scoring throughput: the Beam pipeline on DirectRunner against a plain in-process batched loop.

Both score the same TFRecord file of simulated click-log rows with the same dnn SavedModel through its
``serving_examples`` signature in batches of 1024, and both write the same keyed JSON lines
(``{"example_id", "model_name", "model_version", "score"}``). The loop is what one would write by hand:
tf.data reads and batches, one vectorised parse pulls out the keys, one signature call per batch, one
``json.dumps`` per row. The pipeline adds what production needs on top: per-row keys and dead-letter
checks, bisection of failing batches, metrics, and sharded atomic file writes. Wall times include loading
the model, as a job pays it. The two alternate for a few rounds and the median ratio is reported, because
this machine is shared and noisy; the ratio of rows per CPU-second of this process (TensorFlow's threads
included) is printed beside it, as other processes' load moves it much less than wall time.

    python -m bench.run_all scoring
    python -m bench.bench_scoring --rows=200000 --rounds=5
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.simulators.click_log import ClickLogConfig, write_click_log
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.export.trained import first_records
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.scoring import pipeline

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "dnn_simulator.py")
BATCH_SIZE = 1024
KEY = "example_id"


def export_dnn(data_dir: str, export_base: str) -> str:
    """The quickstart dnn, built and exported untrained: throughput does not depend on the weights."""
    config = load_config(CONFIG, {"data.dir": data_dir})
    schema = FeatureSchema.from_config(config.features)
    model = build_model(config, schema)
    sample = first_records([os.path.join(data_dir, "eval-00000-of-00001.tfrecord")], 2)
    model(schema.parse_examples(tf.constant(sample), with_labels=False, serving=True), training=False)
    export_saved_model(model, schema, export_base, "dnn", version=1)
    return os.path.join(export_base, "dnn")


def plain_loop(input_file: str, model_base: str, output_path: str) -> int:
    """The hand-written baseline; returns the rows scored."""
    model_dir = os.path.join(model_base, "1")
    signature = tf.saved_model.load(model_dir).signatures["serving_examples"]
    key_spec = {KEY: tf.io.FixedLenFeature([], tf.int64)}
    rows = 0
    with open(output_path, "w") as out:
        for serialized in tf.data.TFRecordDataset(input_file).batch(BATCH_SIZE):
            keys = tf.io.parse_example(serialized, key_spec)[KEY].numpy().tolist()
            scores = signature(inputs=serialized)["score"].numpy().tolist()
            for key, value in zip(keys, scores):
                out.write(json.dumps({KEY: key, "model_name": "dnn", "model_version": 1, "score": value}) + "\n")
            rows += len(keys)
    return rows


def beam_pipeline(input_file: str, model_base: str, output_prefix: str, output_format: str = "jsonl") -> int:
    summary = pipeline.score(input_file, model_base, output_prefix, output_format=output_format,
                             batch_size=BATCH_SIZE, pipeline_args=["--runner=DirectRunner"])
    if summary.rows_rejected:
        raise RuntimeError(f"{summary.rows_rejected} rows rejected in a benchmark of clean rows")
    return summary.rows_scored


def timed(fn, *args, **kwargs) -> tuple[int, float, float]:
    """``(rows, wall seconds, CPU seconds of this process)`` of one run."""
    started, cpu_started = time.perf_counter(), time.process_time()
    rows = fn(*args, **kwargs)
    return rows, time.perf_counter() - started, time.process_time() - cpu_started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows to score per run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of loop and pipeline")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench_scoring_")
    try:
        data_dir = os.path.join(root, "data")
        # Half the simulated events land in the single eval shard that both sides score.
        write_click_log(ClickLogConfig(num_events=2 * args.rows, eval_fraction=0.5, num_shards=1), data_dir)
        input_file = os.path.join(data_dir, "eval-00000-of-00001.tfrecord")
        model_base = export_dnn(data_dir, os.path.join(root, "export"))
        # One small run each first, so neither side pays the process's one-off TensorFlow and Beam set-up.
        warm_input = os.path.join(data_dir, "train-00000-of-00001.tfrecord")
        plain_loop(warm_input, model_base, os.path.join(root, "warm.jsonl"))
        beam_pipeline(warm_input, model_base, os.path.join(root, "warm"))

        ratios, cpu_ratios, loop_rates, beam_rates = [], [], [], []
        for round_index in range(args.rounds):
            loop_output = os.path.join(root, f"loop{round_index}.jsonl")
            loop_rows, loop_s, loop_cpu = timed(plain_loop, input_file, model_base, loop_output)
            beam_rows, beam_s, beam_cpu = timed(beam_pipeline, input_file, model_base,
                                                os.path.join(root, f"beam{round_index}"))
            if loop_rows != beam_rows:
                raise RuntimeError(f"loop scored {loop_rows} rows, pipeline {beam_rows}")
            loop_rates.append(loop_rows / loop_s)
            beam_rates.append(beam_rows / beam_s)
            ratios.append(beam_rates[-1] / loop_rates[-1])
            cpu_ratios.append(loop_cpu / beam_cpu)
            print(f"round {round_index}: {loop_rows} rows  loop {loop_rates[-1]:,.0f} rows/s ({loop_s:.2f} s, "
                  f"{loop_cpu:.2f} CPU-s)  pipeline {beam_rates[-1]:,.0f} rows/s ({beam_s:.2f} s, {beam_cpu:.2f} CPU-s)"
                  f"  ratio {ratios[-1]:.2f} (CPU {cpu_ratios[-1]:.2f})", flush=True)
        parquet_rows, parquet_s, _ = timed(beam_pipeline, input_file, model_base, os.path.join(root, "parquet"),
                                           "parquet")
        print(f"\nDirectRunner pipeline / plain loop, rows/s (median of {args.rounds}): {statistics.median(ratios):.2f}"
              f"  (loop {statistics.median(loop_rates):,.0f} rows/s, "
              f"pipeline {statistics.median(beam_rates):,.0f} rows/s); rows per CPU-second: "
              f"{statistics.median(cpu_ratios):.2f}")
        print(f"pipeline with Parquet output: {parquet_rows / parquet_s:,.0f} rows/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
