"""Delayed-feedback CVR in a stream (issue 14): unbiasedness, the methods compared, and speed against real time.

    python -m bench.run_all delayed_feedback
    python -m bench.bench_delayed_feedback                         # the RESULTS.md figures
    python -m bench.bench_delayed_feedback --parts=speed --speed_clicks=1000000

1. Unbiasedness with oracle auxiliaries: the simulator's clicks go through the stream builder (every row
   kept); a small model (user and item embeddings, biases) trains on the Vanilla stream with plain
   cross-entropy and on the DEFUSE stream with the DEFUSE loss whose ``f_dp`` and ``z`` are the simulator's truth
   (``f_dp = p(y=1, w_o < d ≤ w_a | x)``, ``z`` Eq. 17). Reported: mean prediction over the clicks against the
   true CVR (DEFUSE within 5%; Vanilla low by about the delayed fraction).
2. Streaming protocol (configs/defuse_simulator.py, one config per method): the Beam stream builder writes
   each method's stream, and streaming training pretrains on the first days (final labels), then, day by
   day, scores the day's clicks with their final labels and trains on the rows the day emitted. Reported:
   AUC, PR-AUC, NLL and calibration (mean prediction / true rate) averaged over days weighted by clicks, for
   Vanilla, Oracle, FNW, FNC, ES-DFM, DEFER, DEFUSE and Bi-DEFUSE, and the share of the Vanilla→Oracle NLL gap
   each closes.
3. Speed: one simulated day of ``speed_clicks`` clicks through the Beam stream builder (DEFUSE stream) and
   one streaming pass of DEFUSE training over it; the ratio of a day (86,400 s) to the wall time of both.
"""
import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from tfrecsys.data.delayed_feedback_stream import build_stream, emit_rows, settings_for
from tfrecsys.data.simulators import write_from_config
from tfrecsys.data.simulators.delayed_feedback import DelayedFeedbackConfig, simulate_delayed_feedback
from tfrecsys.losses import delayed_feedback as dfl
from tfrecsys.train.loop import train_and_evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, os.pardir, "configs", "defuse_simulator.py")
METHODS = ("vanilla", "oracle", "fnw", "fnc", "es_dfm", "defer", "defuse", "bi_defuse")
DAY = 86_400


def load_method_config(method: str):
    spec = importlib.util.spec_from_file_location("defuse_simulator_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(method)


# 1. Unbiasedness ------------------------------------------------------------------------------------------------

def _train_small_model(rows: dict, loss_fn, num_users: int, num_items: int, epochs: int, seed: int):
    """``s = b + b_u + b_i + e_u·e_i`` (dim 8) trained with Adam on ``rows`` shuffled; returns a predictor."""
    tf.keras.utils.set_random_seed(seed)
    users = tf.keras.layers.Embedding(num_users, 9, embeddings_initializer=tf.keras.initializers.RandomNormal(0, 0.01))
    items = tf.keras.layers.Embedding(num_items, 9, embeddings_initializer=tf.keras.initializers.RandomNormal(0, 0.01))
    bias = tf.Variable(-2.9)  # sigmoid ≈ 0.05: between the in-window rate and the true rate, favouring neither
    optimizer = tf.keras.optimizers.Adam(0.01)

    def logit(u, i):
        eu, ei = users(u), items(i)
        return bias + eu[:, 0] + ei[:, 0] + tf.reduce_sum(eu[:, 1:] * ei[:, 1:], axis=-1)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(batch, logit(batch["user_id"], batch["item_id"])))
        variables = users.trainable_variables + items.trainable_variables + [bias]
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    data = tf.data.Dataset.from_tensor_slices(rows).shuffle(200_000, seed=seed).batch(2048)
    for _ in range(epochs):
        for batch in data:
            step(batch)
    return lambda u, i: tf.sigmoid(logit(tf.constant(u), tf.constant(i))).numpy()


def unbiasedness(clicks: int, epochs: int, seed: int) -> dict:
    world = DelayedFeedbackConfig(num_clicks=clicks, days=14, seed=seed)
    columns, truth = simulate_delayed_feedback(world)
    p = truth["p_convert"]
    f_dp = truth["p_delayed"]
    oracle_z = f_dp / (1 - p + f_dp)
    results = {"true_cvr": float(p.mean()), "observed_cvr_in_window": float(columns["converted_in_window"].mean()),
               "delayed_fraction": float(f_dp.mean())}
    for method in ("vanilla", "defuse"):
        settings = settings_for(columns, method, world.observation_window_seconds, world.attribution_window_seconds,
                                DAY, pretrain_seconds=0, keep_future_rows=True)
        rows = emit_rows(columns, settings)
        cvr_rows = rows["sample_type"] < dfl.FIRST_AUXILIARY
        rows = {k: v[cvr_rows] for k, v in rows.items()}
        row_click = rows["example_id"]  # the simulator's example_id is the click's index
        data = {"user_id": rows["user_id"], "item_id": rows["item_id"], "label": rows["label"],
                "sample_type": rows["sample_type"].astype(np.float32),
                "f_dp": f_dp[row_click].astype(np.float32), "z": oracle_z[row_click].astype(np.float32)}
        if method == "vanilla":
            def loss_fn(b, s):
                return dfl.weighted_cross_entropy(s, b["label"], 1.0 - b["label"])
        else:
            def loss_fn(b, s):
                return dfl.defuse_loss(b["label"], s, b["sample_type"], b["f_dp"], b["z"])
        predict = _train_small_model(data, loss_fn, world.num_users, world.num_items, epochs, seed)
        mean_prediction = float(predict(columns["user_id"], columns["item_id"]).mean())
        results[method] = {"rows": int(len(rows["label"])), "mean_prediction": mean_prediction,
                           "relative_error": mean_prediction / results["true_cvr"] - 1.0}
    return results


# 2. Streaming protocol ------------------------------------------------------------------------------------------

def streaming(methods, clicks: int, root: str) -> dict:
    results = {}
    for method in methods:
        config = load_method_config(method)
        config.data.dir = os.path.join(root, f"data_{method}")
        config.data.simulator.num_clicks = clicks
        start = time.perf_counter()
        metadata = write_from_config(config.data.simulator, config.data.dir)
        built = time.perf_counter() - start
        start = time.perf_counter()
        train_and_evaluate(config, os.path.join(root, f"model_{method}"), verbose=0)
        trained = time.perf_counter() - start
        with open(os.path.join(root, f"model_{method}", "streaming_metrics.json")) as f:
            summary = json.load(f)
        cvr = summary["row_weighted_average"]["cvr"]
        results[method] = {"auc": cvr["auc"], "pr_auc": cvr["pr_auc"], "nll": cvr["logloss"],
                           "calibration": cvr["calibration"], "windows_evaluated": len(summary["windows"]),
                           "stream_rows": metadata["stream_rows"], "build_s": built, "train_s": trained}
        print(method, json.dumps(results[method]), flush=True)
    if "vanilla" in results and "oracle" in results:
        gap = results["vanilla"]["nll"] - results["oracle"]["nll"]
        for entry in results.values():
            entry["nll_gap_closed"] = (results["vanilla"]["nll"] - entry["nll"]) / gap if gap else float("nan")
    return results


# 3. Speed -------------------------------------------------------------------------------------------------------

def speed(clicks: int, root: str) -> dict:
    config = load_method_config("defuse")
    config.data.dir = os.path.join(root, "data_speed")
    config.train.pretrain_windows = 0
    config.train.batch_size = 1024
    world = {k: v for k, v in dict(config.data.simulator).items()
             if k not in ("kind", "method", "window_seconds", "pretrain_days")}
    columns, _ = simulate_delayed_feedback(DelayedFeedbackConfig.from_config({**world, "num_clicks": clicks,
                                                                              "days": 1}))
    settings = settings_for(columns, "defuse", world["observation_window_seconds"],
                            world["attribution_window_days"] * DAY, DAY, pretrain_seconds=0)
    start = time.perf_counter()
    metadata = build_stream(columns, settings, config.data.dir)
    built = time.perf_counter() - start
    start = time.perf_counter()
    train_and_evaluate(config, os.path.join(root, "model_speed"), verbose=0)
    trained = time.perf_counter() - start
    # The time one day of 1M clicks takes, from the measured clicks (the cost grows linearly with clicks).
    seconds_per_million = (built + trained) * 1_000_000 / clicks
    return {"clicks": clicks, "stream_rows": metadata["stream_rows"], "build_s": built, "train_s": trained,
            "faster_than_real_time_at_1M_clicks_per_day": DAY / seconds_per_million}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="unbiasedness,streaming,speed",
                        help="comma-separated parts to run: unbiasedness, streaming, speed")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods of part 2")
    parser.add_argument("--clicks", type=int, default=200_000, help="clicks of the 21-day stream of part 2")
    parser.add_argument("--unbiasedness_clicks", type=int, default=200_000, help="clicks of part 1")
    parser.add_argument("--epochs", type=int, default=8, help="passes over the stream in part 1")
    parser.add_argument("--speed_clicks", type=int, default=1_000_000,
                        help="clicks in the simulated day of part 3 (fewer: the ratio is scaled to 1M per day)")
    parser.add_argument("--seed", type=int, default=0, help="simulator and model seed of part 1")
    parser.add_argument("--output", default="", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    results = {"uptime": os.popen("uptime").read().strip()}
    with tempfile.TemporaryDirectory() as root:
        if "unbiasedness" in parts:
            results["unbiasedness"] = unbiasedness(args.unbiasedness_clicks, args.epochs, args.seed)
            print("unbiasedness", json.dumps(results["unbiasedness"]), flush=True)
        if "streaming" in parts:
            results["streaming"] = streaming(args.methods.split(","), args.clicks, root)
        if "speed" in parts:
            results["speed"] = speed(args.speed_clicks, root)
            print("speed", json.dumps(results["speed"]), flush=True)
    results["uptime_after"] = os.popen("uptime").read().strip()
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
