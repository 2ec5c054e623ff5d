"""One training step of a ranking family at float32 and under Keras' ``mixed_bfloat16`` policy, alternating in
one process: CPU milliseconds per step and, with ``--profile``, where the step's time goes by op type.

    .venv/bin/python -m bench.bench_precision_step --models=mmoe,din --rounds=3
    .venv/bin/python -m bench.bench_precision_step --models=dien --profile    # op summary per precision

Each model is built, compiled (``tfrecsys-train``'s Adam) and given one fixed batch of 256 real rows: Census-Income
(``bench_multitask_peers``' rows and configs) for shared_bottom, mmoe, ple and esmm, Taobao UserBehavior
(``bench_sequence_peers``' rows and models) for din and dien (with the MLP auxiliary net). The step is the
model's own ``train_step`` in a ``tf.function``, with no input pipeline, so the figure is the model's
arithmetic and per-op overhead only. Per round and precision: 5 warm-up steps, then ``--steps`` timed with
``time.process_time`` (every thread of the process: on a loaded machine it moves much less than wall time).
Rounds alternate float32 and bfloat16 so that a change of load hits both; the median over rounds is printed
with the bfloat16 speed-up (float32 CPU-ms ÷ bfloat16 CPU-ms).

``--profile``: one more traced run of ``--steps`` steps per precision under ``tf.profiler``, the host's op
events summed by op type (wall ms per step): which ops bfloat16 made cheaper and which it added (Cast).
"""

import argparse
import collections
import glob
import os
import statistics
import tempfile
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from bench import bench_multitask_peers, bench_sequence_peers
from tfrecsys.config import load_config
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.train.adam import Adam
from tfrecsys.train.loop import build_and_compile, create_variables
from tfrecsys.train.strategy import precision_policy

CENSUS = ("shared_bottom", "mmoe", "ple", "esmm")
TAOBAO = ("din", "dien")
PRECISIONS = ("none", "mixed_bfloat16")
BATCH = 256


def census_batch(data_dir: str, family: str):
    """``(build, batch)``: a builder of ``family``'s model and the first 256 training rows as its step data."""
    _, train, _ = bench_multitask_peers.census_rows(data_dir)
    config = load_config(os.path.join(bench_multitask_peers.CONFIGS, f"{family}.py:census"),
                         {"data.dir": data_dir, "train.ema_momentum": 0.0})
    schema = FeatureSchema.from_config(config.features)
    features = {f.name: tf.constant(train[f.name][:BATCH]) for f in schema.inputs}
    labels = {f.name: tf.constant(train[f.name][:BATCH]) for f in schema.labels}

    def build():
        model = build_and_compile(config, schema)
        create_variables(model, schema)
        return model

    return build, (features, labels)


def taobao_batch(name: str):
    train, _, vocabulary = bench_sequence_peers.taobao_rows()
    rows = np.random.default_rng(0).permutation(len(train["label"]))[:BATCH]  # a mix of users and lengths
    features = {k: tf.constant(v[rows]) for k, v in train.items() if k not in ("label", "seq_length")}
    features["hist_item_id_length"] = tf.constant(train["seq_length"][rows])
    labels = {"label": tf.constant(train["label"][rows])}

    def build():
        model = bench_sequence_peers.our_model(name, vocabulary)
        model.compile(optimizer=Adam(bench_sequence_peers.LEARNING_RATE))
        create_variables(model, model.schema)
        return model

    return build, (features, labels)


def timed_steps(model, batch, steps: int) -> float:
    """CPU milliseconds per step of ``model.train_step`` on ``batch`` after 5 warm-up steps."""
    step = tf.function(model.train_step)
    for _ in range(5):
        step(batch)
    started = time.process_time()
    for _ in range(steps):
        logs = step(batch)
    float(logs["loss"])  # wait for the last step
    return 1000 * (time.process_time() - started) / steps


def op_summary(model, batch, steps: int, top: int) -> list:
    """``[(op type, wall ms per step)]`` of the ``top`` costliest op types of the host over ``steps`` steps
    (op events' durations: wall time, so read them as shares of one run, not as CPU time)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    step = tf.function(model.train_step)
    for _ in range(5):
        step(batch)
    logdir = tempfile.mkdtemp(prefix="precision_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        logs = step(batch)
    float(logs["loss"])
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {i: m.name for i, m in plane.event_metadata.items()}
        for line in plane.lines:
            # Op events are named "<op name>:<op type>"; executor events ("ExecutorState::Process") and whole
            # function calls ("...:__inference_train_step_N") would count their ops twice.
            for event in line.events:
                name = names.get(event.metadata_id, "")
                op_type = name.rsplit(":", 1)[-1].strip()
                if ":" in name and "::" not in name and not op_type.startswith("__inference"):
                    totals[op_type] += event.duration_ps / 1e9 / steps
    return totals.most_common(top)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CENSUS + TAOBAO),
                        help=f"Comma-separated subset of {CENSUS + TAOBAO}.")
    parser.add_argument("--data_dir", default="runs/data/census",
                        help="Preprocessed Census-Income (bench_multitask_peers preprocesses it when absent).")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds of float32 and bfloat16 per model.")
    parser.add_argument("--steps", type=int, default=50, help="Timed steps per round and precision.")
    parser.add_argument("--profile", action="store_true", help="Also print the costliest op types of a step per "
                        "precision (tf.profiler host op events, wall ms per step).")
    parser.add_argument("--top", type=int, default=15, help="How many op types --profile prints.")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(CENSUS + TAOBAO))
    if unknown:
        parser.error(f"--models {unknown} are not among {CENSUS + TAOBAO}")
    print(f"load before: {os.getloadavg()[0]:.1f}")
    for name in models:
        build, batch = census_batch(args.data_dir, name) if name in CENSUS else taobao_batch(name)
        built = {}
        for precision in PRECISIONS:
            tf.keras.utils.set_random_seed(0)
            with precision_policy(precision):
                built[precision] = build()
        times = {precision: [] for precision in PRECISIONS}
        for _ in range(args.rounds):
            for precision in PRECISIONS:
                with precision_policy(precision):
                    times[precision].append(timed_steps(built[precision], batch, args.steps))
        medians = {precision: statistics.median(values) for precision, values in times.items()}
        rounds = "; ".join(f"{p} " + " ".join(f"{t:.1f}" for t in times[p]) for p in PRECISIONS)
        print(f"{name:14s} CPU-ms/step float32 {medians['none']:6.1f}  mixed_bfloat16 {medians['mixed_bfloat16']:6.1f}"
              f"  bfloat16 speed-up {medians['none'] / medians['mixed_bfloat16']:.2f}x  (rounds: {rounds})  "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        if args.profile:
            for precision in PRECISIONS:
                with precision_policy(precision):
                    summary = op_summary(built[precision], batch, args.steps, args.top)
                print(f"  {precision}: " + ", ".join(f"{op} {ms:.2f}" for op, ms in summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
