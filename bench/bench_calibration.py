"""Calibration error before and after Platt and isotonic on the delayed-feedback simulator (issue 14).

    python -m bench.run_all calibration

The simulator's 100,000 clicks over 14 days (tfrecsys/data/simulators/delayed_feedback.py; the last 20% in
time are the eval split) train three dnn models (user, item, category embeddings; MLP 64-32):

* **Vanilla**: labels as seen one observation window (1 h) after the click (``converted_in_window``), the
  delayed conversions counted as negatives: it under-predicts by about the delayed share;
* **Oracle**: the final labels (``converted``);
* **Down-sampled**: the final labels with only a share w = 0.2 of the negatives kept: it over-predicts, and
  the correction ``q = p / (p + (1 − p)/w)`` needs no fit.

Platt and isotonic (tfrecsys/calibration.py, the maps ``tfrecsys-export`` serves) are fitted on the first
half of the eval split in time, against the final labels, and measured on the second half: expected
calibration error (10 equal-width bins), mean prediction over the observed rate, log-loss and AUC.

``--families=defuse`` measures the same on the defuse family itself (models/defuse.py) as it streams:
Vanilla, DEFUSE and Bi-DEFUSE trained by the protocol of ``bench_delayed_feedback_protocol`` (its defaults:
the drifting world, seed 0, pretraining, then hour by hour), their predictions of each hour's clicks made
before training on that hour; the maps are fitted on the first half of the streaming days and measured on
the second half.
"""
import argparse

import os
import tempfile
import time

import numpy as np

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from tfrecsys.calibration import (CalibrationSettings, apply_calibration, expected_calibration_error,
                                  fit_calibration)
from tfrecsys.config import config_beside
from tfrecsys.data.input import make_dataset, resolve_files
from tfrecsys.data.simulators.common import auc
from tfrecsys.data.simulators.delayed_feedback import DelayedFeedbackConfig, write_delayed_feedback
from tfrecsys.export.trained import load_trained_model
from tfrecsys.train.loop import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = DelayedFeedbackConfig(num_clicks=100_000, eval_fraction=0.2, num_shards=2, seed=0)
KEPT_NEGATIVES = 0.2
EPOCHS = 5  # passes over each model's train split: the down-sampled one is smaller, not trained longer
BATCH = 512


def dnn_config(data_dir: str, label: str, train_rows: int, train_files: str = "train-*.tfrecord"):
    base = config_beside(os.path.join(REPO, "configs", "base.py"), "base.py")
    config = base.get_config("bench_calibration", data_dir=data_dir, model_name="dnn", family="dnn")
    config.data.train_files = train_files
    config.features.user_id = dict(kind="id", num_buckets=WORLD.num_users, embedding_dim=16)
    config.features.item_id = dict(kind="id", num_buckets=WORLD.num_items, embedding_dim=16)
    config.features.item_category = dict(kind="id", num_buckets=WORLD.num_categories, embedding_dim=8)
    config.features.converted = dict(kind="label")
    config.features.converted_in_window = dict(kind="label")
    config.model.hidden_units = (64, 32)
    config.tasks.score = dict(label=label, loss="binary_crossentropy")
    steps = EPOCHS * train_rows // BATCH // 10 * 10
    config.train.batch_size = BATCH
    config.train.steps = steps
    config.train.steps_per_loop = steps
    config.train.eval_every_loop = 0
    config.train.best_metric = ""
    return config


def write_downsampled_train(data_dir: str) -> tuple[str, int]:
    """The train rows with every positive and a seeded share KEPT_NEGATIVES of the negatives, as a
    ``downsampled-*`` shard beside the others; returns its glob and its rows."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(resolve_files("train-*.tfrecord", data_dir))]
    labels = [tf.train.Example.FromString(r).features.feature["converted"].float_list.value[0] for r in records]
    keep = np.random.default_rng(1).random(len(records)) < KEPT_NEGATIVES
    kept = [r for r, y, k in zip(records, labels, keep) if y > 0 or k]
    path = os.path.join(data_dir, "downsampled-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in kept:
            writer.write(record)
    print(f"down-sampled train split: {len(kept)} of {len(records)} rows")
    return "downsampled-*.tfrecord", len(kept)


def eval_scores(config, model_dir: str) -> tuple[np.ndarray, np.ndarray]:
    model, schema, _ = load_trained_model(config, model_dir)
    scores, labels = [], []
    for features, label in make_dataset(resolve_files(config.data.eval_files, config.data.dir), schema, 4096,
                                        training=False):
        scores.append(model(features, training=False)["score"].numpy())
        labels.append(label["converted"].numpy().reshape(-1))
    return np.concatenate(scores).astype(np.float32), np.concatenate(labels).astype(np.float64)


def measure(probability: np.ndarray, labels: np.ndarray) -> dict:
    p = np.clip(probability.astype(np.float64), 1e-7, 1 - 1e-7)
    return {"ece": expected_calibration_error(p, labels), "ratio": p.mean() / labels.mean(),
            "logloss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))), "auc": auc(labels, p)}


def print_calibrated(name: str, scores: np.ndarray, labels: np.ndarray, maps_by_variant: dict) -> None:
    """One table row per calibration variant, measured on ``scores`` against ``labels``."""
    for variant, maps in maps_by_variant.items():
        calibrated = apply_calibration(maps, scores).numpy() if maps else scores
        m = measure(calibrated, labels)
        print(f"| {name} | {variant} | {m['ece']:.4f} | {m['ratio']:.3f} | {m['logloss']:.4f} | "
              f"{m['auc']:.4f} |", flush=True)


def defuse_family():
    """Vanilla, DEFUSE and Bi-DEFUSE of the defuse family, streaming; calibration fitted on the first half of
    the streaming days' predictions, measured on the second half."""
    from bench.bench_delayed_feedback_protocol import arguments, run_method, world_config
    from tfrecsys.data.simulators.delayed_feedback import simulate_delayed_feedback

    args = arguments(["--seeds=0"])
    world = world_config(args, seed=0)
    columns, _ = simulate_delayed_feedback(world)
    print(f"defuse family, drifting world: {world.num_clicks} clicks over {world.days} days, CVR "
          f"{columns['converted'].mean():.4f}; streaming from day {args.pretrain_days}, hourly")
    print("| model | calibration | ECE | mean pred / rate | log-loss | AUC |")
    print("|---|---|---:|---:|---:|---:|")
    for method in ("vanilla", "defuse", "bi_defuse"):
        run = run_method(method, columns, world, args, seed=0)
        scores, labels = run["prediction"].astype(np.float32), run["label"].astype(np.float64)
        first = run["hour"] < (run["hour"].min() + run["hour"].max() + 1) / 2
        variants = {"none": []}
        for calibration in ("platt", "isotonic"):
            variants[calibration] = fit_calibration(CalibrationSettings(method=calibration), scores[first],
                                                    labels[first])
        print_calibrated(f"defuse family, method {method}", scores[~first], labels[~first], variants)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="dnn,defuse",
                        help="comma-separated: dnn (Vanilla, Oracle and down-sampled dnn rankers on the 14-day "
                             "split) and defuse (the defuse family streaming hour by hour)")
    families = parser.parse_args(argv).families.split(",")
    started = time.perf_counter()
    if "defuse" in families:
        defuse_family()
    if "dnn" in families:
        dnn_models()
    print(f"total {time.perf_counter() - started:.0f} s")


def dnn_models():
    """Vanilla, Oracle and down-sampled dnn rankers on the 14-day split, with and without calibration."""
    tf.keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as root:
        data_dir = os.path.join(root, "data")
        metadata = write_delayed_feedback(WORLD, data_dir)
        print(f"simulator: {metadata['train_rows']} train / {metadata['eval_rows']} eval clicks, CVR "
              f"{metadata['conversion_rate']:.4f}, seen within w_o {metadata['conversion_rate_in_window']:.4f}")
        rows = metadata["train_rows"]
        downsampled, downsampled_rows = write_downsampled_train(data_dir)
        runs = {"Vanilla (labels at w_o)": (dnn_config(data_dir, "converted_in_window", rows), 1.0),
                "Oracle (final labels)": (dnn_config(data_dir, "converted", rows), 1.0),
                f"Down-sampled negatives (w={KEPT_NEGATIVES})": (
                    dnn_config(data_dir, "converted", downsampled_rows, downsampled), KEPT_NEGATIVES)}
        print("| model | calibration | ECE | mean pred / rate | log-loss | AUC |")
        print("|---|---|---:|---:|---:|---:|")
        for name, (config, rate) in runs.items():
            model_dir = os.path.join(root, name.split()[0].lower())
            train_and_evaluate(config, model_dir, verbose=0)
            scores, labels = eval_scores(config, model_dir)
            half = len(scores) // 2
            variants = {"none": []}
            if rate != 1.0:
                variants["down-sampling correction"] = fit_calibration(
                    CalibrationSettings(negative_sampling_rate=rate), scores[:half], labels[:half])
            for method in ("platt", "isotonic"):
                settings = CalibrationSettings(method=method, negative_sampling_rate=rate)
                variants[settings.description] = fit_calibration(settings, scores[:half], labels[:half])
            print_calibrated(name, scores[half:], labels[half:], variants)


if __name__ == "__main__":
    main()
