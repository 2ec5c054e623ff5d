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
* **Bi-DEFUSE's pretraining** (``--bi_defuse_pretraining``): ``stream`` (the default) on its own stream and
  loss over the pretraining days; ``final_labels``, the reference code's, plain cross-entropy of the in-window
  head on "converted within w_o" and of the out-window head on "converted later, within w_a", as the other
  methods pretrain on final labels (the pretraining clicks' later DP rows then stay out of the stream).
* **Several seeds** (``--seeds``): each seed draws a new world and a new initialisation; per method the mean ±
  standard deviation over seeds, and DEFUSE's paired difference to each method with its standard error, for
  DEFUSE with ``z1 = 1 − f_rn`` (``defuse``, the config's default) and with ``z2 = f_dp / (f_dp + 1 − f_θ)``
  (``defuse_z2``: the same stream and model, only the loss differs).
* **The auxiliaries' quality** (``auxiliary_quality`` per seed, methods with auxiliary models): ``f_dp``,
  ``f_rn`` and both fake-negative probabilities, as each hour's clicks met them, on their targets over the
  streaming period, against the simulator's true probabilities (``auxiliary_quality``).
* **Frozen or refreshed auxiliaries** (``--auxiliary_updates``): ``frozen`` (the default, the reference
  code's) stops the auxiliary models after pretraining; ``stream`` also updates them hour by hour on the
  clicks whose attribution window closed in that hour, the only rows whose final label is known then (the
  digest's "frozen (or updated separately)"): ``--steps_per_window`` steps on them per hour with the
  pretraining optimizer, before the CVR steps, for every method with auxiliary models alike.

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
from tfrecsys.losses.delayed_feedback import FIRST_AUXILIARY, auxiliary_loss, weighted_cross_entropy
from tfrecsys.train.loop import build_and_compile

METHODS = ("vanilla", "oracle", "fnw", "fnc", "es_dfm", "defer", "defuse", "defuse_z2", "bi_defuse")
# The methods the others are compared with, paired by seed: DEFUSE with z1 = 1 − f_rn and with z2.
PAIRED_WITH = ("defuse", "defuse_z2")
DAY = 86_400
FEATURES = ("user_id", "item_id", "item_category")
AUXILIARY_UPDATES = ("frozen", "stream")
BI_DEFUSE_PRETRAINING = ("stream", "final_labels")


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


def _pretrain_bi_defuse_on_final_labels(model, columns: dict, settings, args) -> None:
    """The reference code's Bi-DEFUSE pretraining: plain cross-entropy of the in-window head on "converted
    within w_o" and of the out-window head on "converted after w_o, within w_a", over the pretraining clicks
    (final labels known) in time order, ``--pretrain_epochs`` passes of ``--batch_size``."""
    t0 = np.asarray(columns["click_timestamp"], np.int64)
    clicks = np.flatnonzero(t0 < settings.stream_start_timestamp)
    clicks = clicks[np.argsort(t0[clicks], kind="stable")]
    conversion = np.asarray(columns["conversion_timestamp"], np.int64)[clicks]
    delay = np.where(conversion >= 0, conversion - t0[clicks], np.iinfo(np.int64).max)
    in_window = (delay <= settings.observation_window_seconds).astype(np.float32)
    out_window = ((delay <= settings.attribution_window_seconds) & (in_window == 0)).astype(np.float32)

    @tf.function(reduce_retracing=True)
    def pretrain_step(features, in_window, out_window):
        with tf.GradientTape() as tape:
            heads = model.training_outputs(features, training=True)[model.cvr_name]
            loss = tf.reduce_mean(weighted_cross_entropy(heads["inw_logit"], in_window, 1.0 - in_window)
                                  + weighted_cross_entropy(heads["outw_logit"], out_window, 1.0 - out_window))
        model.optimizer.minimize(loss, model.trainable_variables, tape=tape)

    for _ in range(args.pretrain_epochs):
        for start in range(0, len(clicks), args.batch_size):
            batch = slice(start, start + args.batch_size)
            features = {name: tf.constant(np.asarray(columns[name])[clicks[batch]]) for name in FEATURES}
            pretrain_step(features, tf.constant(in_window[batch]), tf.constant(out_window[batch]))


def run_method(method: str, columns: dict, world: DelayedFeedbackConfig, args, seed: int) -> dict:
    """Pretrains, then streams hour by hour; returns the per-click predictions of the evaluated hours with
    their labels, hours and positions among the evaluation clicks, the optimizer steps taken while streaming,
    and for methods with auxiliary models their outputs on the evaluation clicks."""
    config = load_method_config(method)
    config.train.seed = seed
    config.train.learning_rate = args.learning_rate
    tf.keras.utils.set_random_seed(seed)
    schema = FeatureSchema.from_config(config.features)
    model = build_and_compile(config, schema)
    # A variant (defuse_z2) reads its method's stream; only its loss differs.
    method = config.model.method
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
        # The auxiliary variables keep their pretraining optimizer for --auxiliary_updates=stream.
        auxiliary_optimizer = model.optimizer
        auxiliary_variables = model.auxiliary_tables.weights + model.auxiliary_tower.weights
        # A fresh optimizer for the CVR model: with the auxiliary steps on Adam's step count, CVR moments that
        # start at zero at a late step would miss Adam's bias correction (first steps ~3x larger than others').
        model.compile(optimizer=type(model.optimizer)(learning_rate=args.learning_rate))

        @tf.function(reduce_retracing=True)
        def refresh_auxiliary(features, labels):
            """A step of the auxiliary models alone on rows of clicks older than w_a (frozen to the CVR steps)."""
            with tf.GradientTape() as tape:
                tape.watch(auxiliary_variables)
                logits = model.training_outputs(features, training=True)[model.auxiliary_name]
                loss = tf.reduce_mean(auxiliary_loss(logits["f_dp_logit"], logits["f_rn_logit"],
                                                     labels["sample_type"]))
            auxiliary_optimizer.apply_gradients(zip(tape.gradient(loss, auxiliary_variables), auxiliary_variables))

    @tf.function(reduce_retracing=True)
    def step(features, labels):
        return model.train_step((features, labels))

    bi_defuse_on_final_labels = method == "bi_defuse" and args.bi_defuse_pretraining == "final_labels"
    if bi_defuse_on_final_labels:
        _pretrain_bi_defuse_on_final_labels(model, columns, settings, args)
        # The pretraining clicks' rows were learnt with their final labels: their later DP rows are left out.
        streaming &= rows["click_timestamp"] >= settings.stream_start_timestamp
    else:
        pretraining = np.flatnonzero(~streaming & ~auxiliary)
        for _ in range(args.pretrain_epochs):
            for start in range(0, len(pretraining), args.batch_size):
                step(*_tensors(rows, pretraining[start:start + args.batch_size]))

    evaluation = evaluation_clicks(columns, settings)
    eval_window = (evaluation["emit_timestamp"] - settings.origin_timestamp) // settings.window_seconds
    stream = np.flatnonzero(streaming & ~auxiliary)
    stream_windows = window[stream]
    # The streaming period's auxiliary rows: trained on with --auxiliary_updates=stream, else left out.
    refreshed = np.flatnonzero(streaming & auxiliary) if (
        method in AUXILIARY_METHODS and args.auxiliary_updates == "stream") else np.zeros(0, np.int64)
    refreshed_windows = window[refreshed]
    steps_before = int(model.optimizer.iterations.numpy())
    auxiliary_steps = 0
    predictions, labels, hours, positions, auxiliary_outputs = [], [], [], [], []
    for hour in range(settings.pretrain_windows, int(max(eval_window.max(), stream_windows.max())) + 1):
        clicks = np.flatnonzero(eval_window == hour)
        if len(clicks):
            features, _ = _tensors(evaluation, clicks)
            predictions.append(predict(features).numpy())
            labels.append(evaluation["label"][clicks])
            hours.append(np.full(len(clicks), hour))
            positions.append(clicks)
            if method in AUXILIARY_METHODS:
                # The outputs the hour's stream weights read, as the hour's clicks met them.
                auxiliary_outputs.append(model.training_outputs(features, training=False)[model.cvr_name])
        hour_refreshed = refreshed[refreshed_windows == hour]
        for batch in _batches(len(hour_refreshed), args.schedule, args.steps_per_window, args.batch_size):
            refresh_auxiliary(*_tensors(rows, hour_refreshed[batch]))
            auxiliary_steps += 1
        hour_rows = stream[stream_windows == hour]
        for batch in _batches(len(hour_rows), args.schedule, args.steps_per_window, args.batch_size):
            step(*_tensors(rows, hour_rows[batch]))
    run = {"prediction": np.concatenate(predictions).astype(np.float64), "label": np.concatenate(labels),
           "hour": np.concatenate(hours), "position": np.concatenate(positions),
           "stream_steps": int(model.optimizer.iterations.numpy()) - steps_before, "stream_rows": int(len(stream)),
           "auxiliary_steps": auxiliary_steps}
    if method in AUXILIARY_METHODS:
        for name in ("f_dp", "f_rn"):
            run[name] = np.concatenate([o[name].numpy() for o in auxiliary_outputs]).astype(np.float64)
    return run


def _nll(target: np.ndarray, probability: np.ndarray) -> float:
    p = np.clip(probability, 1e-7, 1 - 1e-7)
    return float(-np.mean(target * np.log(p) + (1 - target) * np.log(1 - p)))


def fixed_point_excess_nll(p: np.ndarray, delayed: np.ndarray, f_dp: np.ndarray, f_rn: np.ndarray) -> dict:
    """What the auxiliaries' errors alone cost each method: per click with true CVR ``p`` and delayed-positive
    rate ``delayed``, the prediction ``f`` that minimises the method's expected loss over the click's stream
    rows (the digest's A.10 masses: IP ``p − delayed``, observed negative ``1 − p + delayed``, DP ``delayed``;
    DEFER also every non-delayed click again with its real label), ``f/(1 − f) = Σ w_pos / Σ w_neg``, and its
    mean KL divergence from ``p`` (the NLL above the truth's a perfect CVR network would still pay). With the
    true auxiliaries it is 0 for every method. ``z2`` and DEFER read ``f`` itself: iterated to the fixed point."""
    g, negative = delayed, 1 - p + delayed

    def defuse(z):
        positive = (p - g) * (1 + f_dp) + g + negative * z * f_dp
        return positive / (positive + negative * (1 - z) * (1 + f_dp))

    def defer(f):
        positive = (2 * p - g) * f / np.maximum(f - f_dp / 2, f / 2)
        return positive / (positive + (2 - 2 * p + g) * (1 - f) / (1 - f + f_dp / 2))

    fixed = {"es_dfm": p * (1 + f_dp) / (p * (1 + f_dp) + negative * (1 + f_dp) * f_rn), "defuse": defuse(1 - f_rn)}
    z2_fixed, defer_fixed = p.copy(), p.copy()
    for _ in range(50):
        z2_fixed = defuse(f_dp / (f_dp + 1 - z2_fixed))
        defer_fixed = defer(defer_fixed)
    fixed.update(defuse_z2=z2_fixed, defer=defer_fixed)
    return {method: float(np.mean(p * np.log(p / f) + (1 - p) * np.log((1 - p) / (1 - f))))
            for method, f in fixed.items()}


def auxiliary_quality(run: dict, columns: dict, truth: dict, world: DelayedFeedbackConfig, args) -> dict:
    """How right the auxiliary models and the fake-negative probabilities are over the streaming period,
    each on its own target among the evaluated clicks, beside the simulator's true probability of that target:
    NLL, ``excess`` NLL over the truth's, and calibration (mean prediction / observed rate).

    * ``f_dp`` on every click, target "delayed positive" (``w_o < d ≤ w_a``), truth ``p_delayed``;
    * ``f_rn`` on the observed negatives (no conversion within ``w_o``), target "real negative", truth
      ``(1 − p_convert) / (1 − p_immediate)``;
    * ``z1 = 1 − f_rn`` and ``z2 = f_dp / (f_dp + 1 − f_θ)`` (``f_θ``: the run's prediction for the click,
      made before it trained on the click's hour) on the observed negatives, target "fake negative", truth
      Eq. 17, ``p_delayed / (1 − p_immediate)``;
    * ``fixed_point_excess_nll``: what these errors alone cost each method (``fixed_point_excess_nll``).
    """
    settings = settings_for(columns, "defuse", world.observation_window_seconds, world.attribution_window_seconds,
                            args.window_seconds, args.pretrain_days * DAY)
    clicks = np.flatnonzero(np.asarray(columns["click_timestamp"]) >= settings.stream_start_timestamp)[run["position"]]
    t0, conversion = columns["click_timestamp"][clicks], columns["conversion_timestamp"][clicks]
    delay = np.where(conversion >= 0, conversion - t0, np.iinfo(np.int64).max)
    immediate = delay <= world.observation_window_seconds
    delayed = (delay <= world.attribution_window_seconds) & ~immediate
    p_convert, p_immediate = truth["p_convert"][clicks], truth["p_immediate"][clicks]
    f_dp, f_rn, f_theta = run["f_dp"], run["f_rn"], np.clip(run["prediction"], 0.0, 1.0)
    negative = ~immediate
    z_true = truth["p_delayed"][clicks] / (1 - p_immediate)
    z2 = np.clip(f_dp / np.maximum(f_dp + 1 - f_theta, 1e-6), 0.0, 1.0)
    estimates = {"f_dp": (np.ones_like(negative), delayed, f_dp, truth["p_delayed"][clicks]),
                 "f_rn": (negative, ~delayed, f_rn, (1 - p_convert) / (1 - p_immediate)),
                 "z1": (negative, delayed, 1 - f_rn, z_true), "z2": (negative, delayed, z2, z_true)}
    out = {}
    for name, (rows, target, estimate, true_probability) in estimates.items():
        target, estimate, true_probability = (target[rows].astype(np.float64), estimate[rows],
                                              true_probability[rows])
        nll = _nll(target, estimate)
        out[name] = {"nll": nll, "excess_nll": nll - _nll(target, true_probability),
                     "calibration": float(estimate.mean() / target.mean())}
    out["fixed_point_excess_nll"] = fixed_point_excess_nll(p_convert, truth["p_delayed"][clicks], f_dp, f_rn)
    return out


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
    """Per method: mean and std over seeds of each metric; DEFUSE (z1, z2) − method on NLL and AUC per seed,
    mean and standard error."""
    out = {}
    for method in methods:
        entries = [per_seed[seed][method] for seed in sorted(per_seed)]
        out[method] = {name: (float(np.mean([e[name] for e in entries])), float(np.std([e[name] for e in entries],
                                                                                        ddof=1)))
                       for name in ("auc", "pr_auc", "nll", "calibration", "stream_steps")}
        for reference in (r for r in PAIRED_WITH if r in methods and len(entries) > 1):
            for name in ("nll", "auc"):
                differences = [per_seed[seed][reference][name] - per_seed[seed][method][name] for seed in per_seed]
                out[method][f"{reference}_minus_{name}"] = (float(np.mean(differences)), float(
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
    parser.add_argument("--auxiliary_updates", choices=AUXILIARY_UPDATES, default="frozen",
                        help="frozen: the auxiliary models (f_dp, f_rn) stop learning after pretraining (the "
                             "reference code); stream: each window they also take --steps_per_window steps (or "
                             "--batch_size batches with one_pass) on the clicks whose attribution window closed "
                             "in it, every method with auxiliary models alike")
    parser.add_argument("--bi_defuse_pretraining", choices=BI_DEFUSE_PRETRAINING, default="stream",
                        help="stream: Bi-DEFUSE pretrains on its own stream of the pretraining days with its own "
                             "loss (the stream builder's rows); final_labels: plain cross-entropy of each head on "
                             "the clicks' final in-window and out-window labels (the reference code's pretraining; "
                             "every other method pretrains on final labels)")
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
        columns, truth = simulate_delayed_feedback(world)
        print(f"seed {seed}: CVR {columns['converted'].mean():.4f}, within w_o "
              f"{columns['converted_in_window'].mean():.4f}", flush=True)
        results["per_seed"][seed] = {}
        for method in methods:
            method_started = time.perf_counter()
            run = run_method(method, columns, world, args, seed)
            entry = {**hourly_metrics(run), "stream_steps": run["stream_steps"], "stream_rows": run["stream_rows"],
                     "auxiliary_steps": run["auxiliary_steps"], "seconds": time.perf_counter() - method_started}
            if "f_dp" in run:
                entry["auxiliary_quality"] = auxiliary_quality(run, columns, truth, world, args)
            results["per_seed"][seed][method] = entry
            print(seed, method, json.dumps(entry), flush=True)
    results["summary"] = summarize(results["per_seed"], methods)
    results["uptime_after"] = os.popen("uptime").read().strip()
    results["seconds"] = time.perf_counter() - started
    references = [r for r in PAIRED_WITH if r in methods]
    print("| method | AUC | PR-AUC | NLL | calibration | steps |"
          + "".join(f" {r} − method NLL (± s.e.) |" for r in references))
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * len(references))
    for method, entry in results["summary"].items():
        differences = [entry.get(f"{r}_minus_nll") for r in references]
        print(f"| {method} | {entry['auc'][0]:.4f} ± {entry['auc'][1]:.4f} | {entry['pr_auc'][0]:.4f} ± "
              f"{entry['pr_auc'][1]:.4f} | {entry['nll'][0]:.5f} ± {entry['nll'][1]:.5f} | "
              f"{entry['calibration'][0]:.3f} ± {entry['calibration'][1]:.3f} | {entry['stream_steps'][0]:.0f} | "
              + "".join(f" {d[0]:+.5f} ± {d[1]:.5f} |" if d else " |" for d in differences))
    print(json.dumps(results["summary"], indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
