"""config.train.ema_momentum: the train loop evaluates, and export serves, the moving average of the weights.

The fast test takes one optimizer step by hand and checks the average inside ``averaged_weights`` and after a
checkpoint restore. The slow ones share a tiny run (logistic_regression on a small click log, 20 steps of
64 rows, every step its own execution) that records the trained weights after every step and averages them
in numpy, a ← m·a + (1 − m)·w from the initial weights, to compare with what evaluation, the restore and the
SavedModel use.
"""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.simulators.click_log import ClickLogConfig, write_click_log
from tfrecsys.export.trained import export_trained, first_records, load_trained_model
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.train.callbacks import averaged_weights
from tfrecsys.train.loop import (CHECKPOINT_SUBDIR, build_and_compile, create_variables, optimizer_from_config,
                                 train_and_evaluate)

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "logistic_regression_simulator.py")
MOMENTUM = 0.9


def test_one_step_average_inside_averaged_weights_and_after_a_restore(tmp_path):
    data_dir, model_dir = str(tmp_path / "data"), str(tmp_path / "model")
    write_click_log(ClickLogConfig(num_users=50, num_items=30, num_events=300, num_shards=1), data_dir)
    config = load_config(CONFIG, {"data.dir": data_dir, "train.learning_rate": 0.1, "train.ema_momentum": 0.5})
    schema = FeatureSchema.from_config(config.features)
    model = build_and_compile(config, schema)
    create_variables(model, schema)
    variables = model.trainable_variables
    initial = [v.numpy() for v in variables]
    model.optimizer.apply_gradients(zip([tf.ones_like(v) for v in variables], variables))
    trained = [v.numpy() for v in variables]
    average = [0.5 * i + 0.5 * t for i, t in zip(initial, trained)]
    assert min(np.abs(t - a).min() for t, a in zip(trained, average)) > 0.01  # Adam moved every weight by 0.1
    with averaged_weights(model):
        for variable, expected in zip(variables, average):
            np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
    for variable, expected in zip(variables, trained):
        np.testing.assert_array_equal(variable.numpy(), expected)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=model.optimizer),
                               os.path.join(model_dir, CHECKPOINT_SUBDIR), max_to_keep=1).save()
    restored, _, _ = load_trained_model(config, model_dir)
    assert len(restored.trainable_variables) == len(average)
    for variable, expected in zip(restored.trainable_variables, average):
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)


class WeightsEveryStep(tf.keras.callbacks.Callback):
    """The numpy moving average of the trained weights after every step, the last trained weights, and the
    eval logloss of each evaluated loop."""

    def on_train_begin(self, logs=None):
        self.average = [v.numpy() for v in self.model.trainable_variables]
        self.val_loglosses = []

    def on_train_batch_end(self, batch, logs=None):
        self.trained = [v.numpy() for v in self.model.trainable_variables]
        self.average = [MOMENTUM * a + (1 - MOMENTUM) * w for a, w in zip(self.average, self.trained)]

    def on_epoch_end(self, epoch, logs=None):
        self.val_loglosses.append(logs["val_score_logloss"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("averaging")
    data_dir, model_dir = str(root / "data"), str(root / "model")
    write_click_log(ClickLogConfig(num_users=200, num_items=100, num_events=4000, num_shards=1), data_dir)
    config = load_config(CONFIG, {"data.dir": data_dir, "train.steps": 20, "train.steps_per_loop": 10,
                                  "train.steps_per_execution": 1, "train.batch_size": 64,
                                  "train.learning_rate": 0.05, "train.ema_momentum": MOMENTUM,
                                  "export.warmup_requests": 2})
    recorder = WeightsEveryStep()
    metrics = train_and_evaluate(config, model_dir, verbose=0, callbacks=[recorder])
    return dict(root=root, config=config, model_dir=model_dir, metrics=metrics, recorder=recorder,
                records=first_records(glob.glob(os.path.join(data_dir, "eval-*.tfrecord")), 100_000))


def eval_logloss(run, scores) -> float:
    labels = tf.io.parse_example(tf.constant(run["records"]), {"click": tf.io.FixedLenFeature([], tf.float32)})
    return float(tf.keras.metrics.binary_crossentropy(labels["click"], scores))


@pytest.mark.slow
def test_export_restores_the_moving_average_not_the_last_weights(run):
    model, _, _ = load_trained_model(run["config"], run["model_dir"])
    restored = [v.numpy() for v in model.trainable_variables]
    assert len(restored) == len(run["recorder"].average) > 0
    for value, average in zip(restored, run["recorder"].average):
        np.testing.assert_allclose(value, average, rtol=1e-5, atol=1e-6)
    distance = max(np.abs(value - trained).max() for value, trained in zip(restored, run["recorder"].trained))
    assert distance > 1e-3  # the average is not the last weights: the comparison above can fail


@pytest.mark.slow
def test_evaluation_measures_the_moving_average(run):
    """The loop's evaluations (after the last loop, and at the end into eval_metrics.json) give the logloss
    of the restored averaged weights over the eval rows."""
    model, schema, _ = load_trained_model(run["config"], run["model_dir"])
    features = schema.parse_examples(tf.constant(run["records"]), with_labels=False, serving=True)
    logloss = eval_logloss(run, model(features, training=False)["score"])
    assert run["recorder"].val_loglosses[-1] == pytest.approx(logloss, rel=1e-4)
    assert run["metrics"]["score"]["logloss"] == pytest.approx(logloss, rel=1e-4)
    with open(os.path.join(run["model_dir"], "eval_metrics.json")) as f:
        assert json.load(f)["score"]["logloss"] == pytest.approx(logloss, rel=1e-4)


@pytest.mark.slow
def test_saved_model_serves_the_moving_average(run):
    export_path = export_trained(run["config"], run["model_dir"], str(run["root"] / "export"))
    served = tf.saved_model.load(export_path).signatures["serving_examples"]
    scores = served(inputs=tf.constant(run["records"]))["score"]
    assert eval_logloss(run, scores) == pytest.approx(run["metrics"]["score"]["logloss"], rel=1e-4)
    model, schema, _ = load_trained_model(run["config"], run["model_dir"])
    features = schema.parse_examples(tf.constant(run["records"]), with_labels=False, serving=True)
    np.testing.assert_allclose(scores.numpy(), model(features, training=False)["score"].numpy(), atol=1e-6)


@pytest.mark.parametrize("momentum", [1.0, -0.1])
def test_a_momentum_outside_0_1_is_refused_naming_the_field(momentum):
    config = load_config(CONFIG, {"train.ema_momentum": momentum})
    with pytest.raises(ValueError, match="config.train.ema_momentum must lie in"):
        optimizer_from_config(config.train)


def test_streaming_training_refuses_weight_averaging(tmp_path):
    config = load_config(CONFIG, {"train.mode": "streaming", "train.ema_momentum": 0.9})
    with pytest.raises(ValueError, match="ema_momentum .* batch mode only"):
        train_and_evaluate(config, str(tmp_path), verbose=0)
