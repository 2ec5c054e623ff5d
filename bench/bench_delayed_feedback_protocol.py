"""DEFUSE against its baselines under the paper's streaming protocol, in a drifting world, over several seeds
(issue 14).

    python -m bench.bench_delayed_feedback_protocol                          # the RESULTS.md figures
    python -m bench.bench_delayed_feedback_protocol --drift_amplitude=0 --global_drift_amplitude=0  # stationary
    python -m bench.bench_delayed_feedback_protocol --schedule=one_pass      # equal batch size instead

What differs from ``bench_delayed_feedback --parts=streaming`` (daily windows, one Keras pass over each
method's whole stream, the auxiliary models training on the stream as it goes):

* **The paper's protocol** (the reference code's ``stream_train_test``): the first ``pretrain_days`` are old
  data with final labels; the auxiliary models (``f_dp``, ``f_rn``) pretrain on them and are then **frozen**;
  the CVR model pretrains on them too (the same rows, batches and passes for every method but Bi-DEFUSE, which
  pretrains on its own two views); then **hour by hour** the model scores the hour's clicks with their final
  labels, and trains on the rows the method's stream emitted in that hour.
* **Equal optimizer steps** (``--schedule=equal_steps``, the default): every method takes
  ``--steps_per_window`` steps per hour, the hour's rows split into that many batches in time order. A
  method whose stream duplicates rows (DEFER: every click twice) gets larger batches, not more steps.
  ``--schedule=one_pass`` keeps the batch size instead (``--batch_size`` rows; DEFER then takes ~2x the steps).
* **A drifting world** (the simulator's ``drift_amplitude``, ``global_drift_amplitude``,
  ``drift_period_days``): each item's conversion logit swings by ``A_item · sin(2πt/P + φ_i)`` and all by
  ``A_global · sin(2πt/P)``, so fresh rows are worth more than old ones, which is the trade-off between
  waiting for labels and training on fresh data that the delayed-feedback methods make.
* **Several seeds** (``--seeds``): each seed draws a new world and a new initialisation; per method the mean ±
  standard deviation over seeds, and DEFUSE's paired difference to each method with its standard error.

The models are the defuse family of ``configs/defuse_simulator.py`` (one config per method), its own train
step (``RecModel.train_step``: the method's registered loss, the tasks' masks), its served CVR; rows come from
``emit_rows``, the function the Beam stream builder runs, kept in memory (building 400 hourly window files per
method through Beam and Keras ``fit`` would take hours on this machine, and would change no row or step).
Metrics per evaluated hour: AUC, PR-AUC (average precision), NLL and calibration (mean prediction / true rate),
averaged over hours weighted by clicks.
"""

import argparse
import json
import os
import sys
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from bench.bench_delayed_feedback import load_method_config
from tfrecsys.data.delayed_feedback_stream import AUXILIARY_METHODS, emit_rows, evaluation_clicks, settings_for
from tfrecsys.data.simulators.common import auc
from tfrecsys.data.simulators.delayed_feedback import DelayedFeedbackConfig, simulate_delayed_feedback
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.losses.delayed_feedback import FIRST_AUXILIARY
from tfrecsys.train.loop import build_and_compile

METHODS = ("vanilla", "oracle", "fnw", "fnc", "es_dfm", "defer", "defuse", "bi_defuse")
DAY = 86_400
FEATURES = ("user_id", "item_id", "item_category")


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision: the mean over positives of the precision at their rank."""
    order = np.argsort(-scores, kind="mergesort")
    hits = np.asarray(labels, bool)[order]
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def world_config(args, seed: int) -> DelayedFeedbackConfig:
    simulator = load_method_config("defuse").data.simulator
    return DelayedFeedbackConfig(
        num_users=simulator.num_users, num_items=simulator.num_items, num_categories=simulator.num_categories,
        num_clicks=args.clicks, days=args.days, observation_window_seconds=simulator.observation_window_seconds,
        attribution_window_days=simulator.attribution_window_days, drift_amplitude=args.drift_amplitude,
        global_drift_amplitude=args.global_drift_amplitude, drift_period_days=args.drift_period_days, seed=seed)


def _tensors(rows: dict, index: np.ndarray) -> tuple[dict, dict]:
    features = {name: tf.constant(rows[name][index]) for name in FEATURES}
    labels = {"label": tf.constant(rows["label"][index]), "sample_type": tf.constant(rows["sample_type"][index])}
    return features, labels


def _batches(count: int, schedule: str, steps_per_window: int, batch_size: int) -> list[np.ndarray]:
    """Row positions of each step's batch, in time order."""
    if count == 0:
        return []
    if schedule == "equal_steps":
        return [part for part in np.array_split(np.arange(count), min(steps_per_window, count))]
    return [np.arange(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def run_method(method: str, columns: dict, world: DelayedFeedbackConfig, args, seed: int) -> dict:
    """Pretrains, then streams hour by hour; returns the per-click predictions of the evaluated hours with
    their labels and hours, and the optimizer steps taken while streaming."""
    config = load_method_config(method)
    config.train.seed = seed
    config.train.learning_rate = args.learning_rate
    tf.keras.utils.set_random_seed(seed)
    schema = FeatureSchema.from_config(config.features)
    model = build_and_compile(config, schema)
    settings = settings_for(columns, method, world.observation_window_seconds, world.attribution_window_seconds,
                            args.window_seconds, args.pretrain_days * DAY)
    rows = emit_rows(columns, settings)
    order = np.lexsort((rows["sample_type"], rows["example_id"], rows["emit_timestamp"]))
    rows = {name: values[order] for name, values in rows.items()}
    streaming = rows["emit_timestamp"] >= settings.stream_start_timestamp
    auxiliary = rows["sample_type"] >= FIRST_AUXILIARY
    window = (rows["emit_timestamp"] - settings.origin_timestamp) // settings.window_seconds

    @tf.function(reduce_retracing=True)
    def auxiliary_step(features, labels):
        return model.train_step((features, labels))

    @tf.function(reduce_retracing=True)
    def predict(features):
        return model(features, training=False)[model.cvr_name]

    # Pretraining: the auxiliary models first, in batches of their own rows (no CVR rows: no CVR gradient),
    # then frozen (the reference code's protocol); then the CVR model on the period's other rows.
    pretraining = np.flatnonzero(~streaming & auxiliary)
    for _ in range(args.pretrain_epochs if method in AUXILIARY_METHODS else 0):
        for start in range(0, len(pretraining), args.batch_size):
            auxiliary_step(*_tensors(rows, pretraining[start:start + args.batch_size]))
    if method in AUXILIARY_METHODS:
        model.auxiliary_tables.trainable = False
        model.auxiliary_tower.trainable = False
        # A fresh optimizer for the CVR model: with the auxiliary steps on Adam's step count, CVR moments that
        # start at zero at a late step would miss Adam's bias correction (first steps ~3x larger than others').
        model.compile(optimizer=type(model.optimizer)(learning_rate=args.learning_rate))

    @tf.function(reduce_retracing=True)
    def step(features, labels):
        return model.train_step((features, labels))

    pretraining = np.flatnonzero(~streaming & ~auxiliary)
    for _ in range(args.pretrain_epochs):
        for start in range(0, len(pretraining), args.batch_size):
            step(*_tensors(rows, pretraining[start:start + args.batch_size]))

    evaluation = evaluation_clicks(columns, settings)
    eval_window = (evaluation["emit_timestamp"] - settings.origin_timestamp) // settings.window_seconds
    # The auxiliary rows of the streaming period are left out: the auxiliary models are frozen.
    stream = np.flatnonzero(streaming & ~auxiliary)
    stream_windows = window[stream]
    steps_before = int(model.optimizer.iterations.numpy())
    predictions, labels, hours = [], [], []
    for hour in range(settings.pretrain_windows, int(max(eval_window.max(), stream_windows.max())) + 1):
        clicks = np.flatnonzero(eval_window == hour)
        if len(clicks):
            features, _ = _tensors(evaluation, clicks)
            predictions.append(predict(features).numpy())
            labels.append(evaluation["label"][clicks])
            hours.append(np.full(len(clicks), hour))
        hour_rows = stream[stream_windows == hour]
        for batch in _batches(len(hour_rows), args.schedule, args.steps_per_window, args.batch_size):
            step(*_tensors(rows, hour_rows[batch]))
    return {"prediction": np.concatenate(predictions).astype(np.float64), "label": np.concatenate(labels),
            "hour": np.concatenate(hours), "stream_steps": int(model.optimizer.iterations.numpy()) - steps_before,
            "stream_rows": int(len(stream))}


def hourly_metrics(run: dict) -> dict:
    """AUC, PR-AUC, NLL and calibration per evaluated hour, averaged weighted by the hour's clicks."""
    p = np.clip(run["prediction"], 1e-7, 1 - 1e-7)
    y = run["label"].astype(np.float64)
    sums = {"auc": 0.0, "pr_auc": 0.0, "nll": 0.0, "calibration": 0.0}
    weights = dict.fromkeys(sums, 0.0)
    for hour in np.unique(run["hour"]):
        keep = run["hour"] == hour
        values = {"auc": auc(y[keep], p[keep]), "pr_auc": average_precision(y[keep], p[keep]),
                  "nll": float(-np.mean(y[keep] * np.log(p[keep]) + (1 - y[keep]) * np.log(1 - p[keep]))),
                  "calibration": float(p[keep].mean() / y[keep].mean()) if y[keep].any() else float("nan")}
        for name, value in values.items():
            if value == value:  # an hour with one class has no AUC
                sums[name] += value * keep.sum()
                weights[name] += keep.sum()
    return {name: sums[name] / weights[name] for name in sums}


def summarize(per_seed: dict, methods) -> dict:
    """Per method: mean and std over seeds of each metric; DEFUSE − method on NLL and AUC per seed, mean and
    standard error."""
    out = {}
    for method in methods:
        entries = [per_seed[seed][method] for seed in sorted(per_seed)]
        out[method] = {name: (float(np.mean([e[name] for e in entries])), float(np.std([e[name] for e in entries],
                                                                                        ddof=1)))
                       for name in ("auc", "pr_auc", "nll", "calibration", "stream_steps")}
        if "defuse" in methods and len(entries) > 1:
            for name in ("nll", "auc"):
                differences = [per_seed[seed]["defuse"][name] - per_seed[seed][method][name] for seed in per_seed]
                out[method][f"defuse_minus_{name}"] = (float(np.mean(differences)), float(
                    np.std(differences, ddof=1) / np.sqrt(len(differences))))
    return out


def arguments(argv=None) -> argparse.Namespace:
    """The protocol's settings from ``argv`` (the defaults: the RESULTS.md run)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to compare")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds: each a new world and initialisation")
    parser.add_argument("--clicks", type=int, default=200_000, help="clicks of the simulated period")
    parser.add_argument("--days", type=int, default=21, help="days of the simulated period")
    parser.add_argument("--pretrain_days", type=int, default=7, help="first days: final labels, pretraining only")
    parser.add_argument("--pretrain_epochs", type=int, default=2, help="passes over the pretraining days")
    parser.add_argument("--window_seconds", type=int, default=3600, help="streaming window (an hour)")
    parser.add_argument("--schedule", choices=("equal_steps", "one_pass"), default="equal_steps",
                        help="equal_steps: --steps_per_window steps per window for every method; one_pass: "
                             "batches of --batch_size rows over each method's window rows")
    parser.add_argument("--steps_per_window", type=int, default=2, help="optimizer steps per window (equal_steps)")
    parser.add_argument("--batch_size", type=int, default=512, help="rows per pretraining (and one_pass) batch")
    parser.add_argument("--learning_rate", type=float, default=0.002, help="Adam learning rate of every method")
    parser.add_argument("--drift_amplitude", type=float, default=1.0, help="per-item drift of the conversion logit")
    parser.add_argument("--global_drift_amplitude", type=float, default=0.3,
                        help="drift of every click's conversion logit")
    parser.add_argument("--drift_period_days", type=float, default=7.0, help="period of the drift")
    parser.add_argument("--output", default="", help="also write the per-seed results and summary as JSON here")
    return parser.parse_args(argv)


def main(argv=None):
    args = arguments(argv)
    methods = args.methods.split(",")
    results = {"uptime": os.popen("uptime").read().strip(), "args": vars(args), "per_seed": {}}
    started = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        world = world_config(args, seed)
        columns, _ = simulate_delayed_feedback(world)
        print(f"seed {seed}: CVR {columns['converted'].mean():.4f}, within w_o "
              f"{columns['converted_in_window'].mean():.4f}", flush=True)
        results["per_seed"][seed] = {}
        for method in methods:
            method_started = time.perf_counter()
            run = run_method(method, columns, world, args, seed)
            entry = {**hourly_metrics(run), "stream_steps": run["stream_steps"], "stream_rows": run["stream_rows"],
                     "seconds": time.perf_counter() - method_started}
            results["per_seed"][seed][method] = entry
            print(seed, method, json.dumps(entry), flush=True)
    results["summary"] = summarize(results["per_seed"], methods)
    results["uptime_after"] = os.popen("uptime").read().strip()
    results["seconds"] = time.perf_counter() - started
    print("| method | AUC | PR-AUC | NLL | calibration | steps | DEFUSE − method NLL (± s.e.) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, entry in results["summary"].items():
        difference = entry.get("defuse_minus_nll")
        print(f"| {method} | {entry['auc'][0]:.4f} ± {entry['auc'][1]:.4f} | {entry['pr_auc'][0]:.4f} ± "
              f"{entry['pr_auc'][1]:.4f} | {entry['nll'][0]:.5f} ± {entry['nll'][1]:.5f} | "
              f"{entry['calibration'][0]:.3f} ± {entry['calibration'][1]:.3f} | {entry['stream_steps'][0]:.0f} | "
              + (f"{difference[0]:+.5f} ± {difference[1]:.5f} |" if difference else "|"))
    print(json.dumps(results["summary"], indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
