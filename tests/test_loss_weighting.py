"""Loss weighting (tfrecsys.losses.weighting): each kind against its formula on fixed numbers, and the step's
per-task gradients against numpy on a tiny model."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.test_model_base import SCHEMA, batch
from tfrecsys.config import load_config
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.losses.weighting import (DynamicWeightAverage, GradNorm, LossWeighting, PCGrad, TaskLosses,
                                       UncertaintyWeighting, dwa_multipliers, gradnorm_update,
                                       loss_weighting_from_config, pcgrad_project)
from tfrecsys.models import build_model
from tfrecsys.models.logistic_regression import LogisticRegression
from tfrecsys.models.tasks import tasks_from_config

TWO_TASKS = {"ctr": dict(label="click"), "cvr": dict(label="converted", mask="click == 1")}


def test_pcgrad_projects_only_conflicting_gradients():
    g = tf.constant([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    projected = pcgrad_project(g, tf.constant([0, 1, 2])).numpy()
    # Task 0 conflicts with task 1 (dot −1) only: it loses its component along g_1 and is then orthogonal to it.
    np.testing.assert_allclose(projected[0], [0.5, 0.5, 0.0], atol=1e-6)
    assert abs(projected[0] @ g[1].numpy()) < 1e-6
    np.testing.assert_allclose(projected[1], [0.0, 1.0, 0.0], atol=1e-6)  # g_1 + g_0: its part along g_0 removed
    # Task 2 conflicts with neither (dots 1 and 0): unchanged.
    np.testing.assert_array_equal(projected[2], g[2].numpy())
    # No conflict at all: nothing moves, whatever the order.
    agreeing = tf.constant([[1.0, 0.2], [0.5, 1.0]])
    np.testing.assert_array_equal(pcgrad_project(agreeing, tf.constant([1, 0])).numpy(), agreeing.numpy())


def test_uncertainty_weights_follow_the_closed_form():
    losses = TaskLosses(shares=[tf.constant(0.5), tf.constant(2.0)], global_means=tf.constant([0.5, 2.0]),
                        extra=tf.constant(0.0))
    weighting = UncertaintyWeighting([1.0, 1.0])
    # At s = 0 it is the plain sum.
    np.testing.assert_allclose(weighting.combine(losses, training=True).numpy(), 2.5, rtol=1e-6)
    optimizer = tf.keras.optimizers.SGD(0.5)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            total = weighting.combine(losses, training=True)
        optimizer.apply_gradients(zip(tape.gradient(total, weighting.trainable_variables),
                                      weighting.trainable_variables))

    for _ in range(100):
        step()
    # d/ds (exp(−s)·L + s) = 0 at exp(s) = L: the weights are 1/L (the small loss gets the large weight).
    np.testing.assert_allclose(weighting.multipliers().numpy(), [2.0, 0.5], rtol=1e-3)


def task_losses(values) -> TaskLosses:
    """One replica's losses: its shares are the global means."""
    return TaskLosses(shares=[tf.constant(v) for v in values], global_means=tf.constant(values), extra=tf.constant(0.0))


def test_dwa_weights_follow_the_loss_ratios_of_the_last_two_periods():
    np.testing.assert_allclose(dwa_multipliers(tf.constant([0.5, 0.5, 0.5]), tf.constant([1.0, 1.0, 1.0]), 2.0),
                               [1.0, 1.0, 1.0], rtol=1e-6)
    weighting = DynamicWeightAverage([1.0, 1.0], temperature=2.0, period_steps=2)
    steps = [[1.2, 0.8], [0.8, 1.2],   # period 1: means (1.0, 1.0)
             [0.4, 1.0], [0.6, 0.8],   # period 2: means (0.5, 0.9)
             [0.3, 0.9]]
    seen = []
    for losses in steps:
        seen.append(weighting.multipliers().numpy())
        weighting.combine(task_losses(losses), training=True)
    for early in seen[:4]:
        np.testing.assert_array_equal(early, [1.0, 1.0])
    ratios = np.array([0.5 / 1.0, 0.9 / 1.0]) / 2.0
    expected = 2 * np.exp(ratios) / np.exp(ratios).sum()
    np.testing.assert_allclose(seen[4], expected, rtol=1e-5)
    assert seen[4][1] > seen[4][0], "the task whose loss falls slowest gets the larger weight"
    np.testing.assert_allclose(seen[4].sum(), 2.0, rtol=1e-6)
    # Evaluation batches do not move the periods.
    weighting.combine(task_losses([5.0, 5.0]), training=False)
    assert weighting.period_count.numpy() == 1.0


def test_gradnorm_step_follows_its_formula():
    # G = λ·g = (2, 1), mean 1.5; L̃ = (0.5, 0.9), r = L̃/mean(L̃); target = 1.5·r; λ −= 0.1·sign(G − target)·g.
    updated = gradnorm_update(tf.constant([1.0, 1.0]), tf.constant([2.0, 1.0]), tf.constant([0.5, 0.9]),
                              tf.constant([1.0, 1.0]), alpha=1.0, learning_rate=0.1).numpy()
    np.testing.assert_allclose(updated, np.array([0.8, 1.1]) * 2 / 1.9, rtol=1e-6)
    assert updated[1] > updated[0], "the task that trains slower (higher relative loss) gains weight"
    np.testing.assert_allclose(updated.sum(), 2.0, rtol=1e-6)


def step_gradients(weighting, optimizer=None):
    """(plain gradients of Σ w_t L_t, the per-task gradients, the weighting's gradients) on one batch."""
    tf.keras.utils.set_random_seed(0)
    model = LogisticRegression(SCHEMA, tasks_from_config(TWO_TASKS))
    model.compile(optimizer=optimizer or tf.keras.optimizers.SGD(0.1))
    features, labels = batch()
    model(features)
    with tf.GradientTape(persistent=True) as tape:
        total, losses = model._step_loss((features, labels), training=True)
    variables = model.trainable_variables
    dense = lambda grads: [None if g is None else tf.convert_to_tensor(g).numpy() for g in grads]
    plain = dense(tape.gradient(total, variables))
    tasks = [dense(tape.gradient(loss, variables)) for loss in losses.shares]
    mine = [g.numpy() for g in weighting.gradients(tape, losses, variables, model.optimizer)]
    return model, plain, tasks, mine


def test_pcgrad_step_projects_the_shared_gradient_and_leaves_the_heads_alone():
    # Task weights (1, −1) turn this batch's agreeing shared gradients (dot > 0) into conflicting ones.
    weights = np.array([1.0, -1.0])
    model, _, tasks, mine = step_gradients(PCGrad(list(weights)))
    names = [v.name for v in model.trainable_variables]
    shared = [i for i, name in enumerate(names) if "embedding" in name]
    assert shared and len(shared) < len(names)
    for i in set(range(len(names))) - set(shared):
        task = 0 if "/ctr/" in names[i] else 1
        np.testing.assert_allclose(mine[i], weights[task] * tasks[task][i], rtol=1e-5, atol=1e-8)
    g = np.stack([w * np.concatenate([t[i].ravel() for i in shared]) for w, t in zip(weights, tasks)])
    dot = g[0] @ g[1]
    assert dot < 0
    expected = [g[0] - dot / (g[1] @ g[1]) * g[1], g[1] - dot / (g[0] @ g[0]) * g[0]]
    got = np.concatenate([mine[i].ravel() for i in shared])
    np.testing.assert_allclose(got, expected[0] + expected[1], rtol=1e-4, atol=1e-8)
    assert np.abs(got - g.sum(axis=0)).max() > 1e-3 * np.abs(got).max(), "the projection changed the update"


def test_gradient_kinds_match_the_plain_step_without_conflict_and_under_loss_scaling():
    _, plain, _, mine = step_gradients(GradNorm([1.0, 1.0]))
    for a, b in zip(plain, mine):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
    scaled = tf.keras.mixed_precision.LossScaleOptimizer(tf.keras.optimizers.SGD(0.1))
    _, _, _, unscaled = step_gradients(GradNorm([1.0, 1.0]), optimizer=scaled)
    for a, b in zip(mine, unscaled):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


def test_config_picks_the_kind_and_names_bad_settings(tmp_path):
    config = load_config("configs/logistic_regression_simulator.py")
    config.train.loss_weighting = {"kind": "dwa", "temperature": 1.0, "period_steps": 50}
    model = build_model(config, FeatureSchema.from_config(config.features))
    assert isinstance(model.loss_weighting, DynamicWeightAverage) and model.loss_weighting.period_steps == 50
    assert isinstance(loss_weighting_from_config(None, [1.0]), LossWeighting)
    with pytest.raises(ValueError, match="'pcgrad' takes \\['seed'\\], not \\['alpha'\\]"):
        loss_weighting_from_config({"kind": "pcgrad", "alpha": 1.0}, [1.0, 1.0])
    with pytest.raises(ValueError, match="kind 'kendall' is not one of"):
        loss_weighting_from_config({"kind": "kendall"}, [1.0])


@pytest.mark.slow
def test_weighted_steps_are_the_same_on_two_replicas(tmp_path):
    """Every kind takes the same step on two replicas (logical CPU devices, a subprocess) as on one."""
    script = tmp_path / "two_replicas.py"
    script.write_text("""
import numpy as np, tensorflow as tf
import tfrecsys
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.test_loss_weighting import LogisticRegression, SCHEMA, TWO_TASKS, batch, tasks_from_config
from tfrecsys.losses.weighting import loss_weighting_from_config
features, labels = batch()
# One strategy for every kind: strategies created one after another reuse collective keys.
two_replicas = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for kind in ("uncertainty", "dwa", "gradnorm", "pcgrad"):
    weights = []
    for strategy in (tf.distribute.get_strategy(), two_replicas):
        with strategy.scope():
            tf.keras.utils.set_random_seed(0)
            model = LogisticRegression(SCHEMA, tasks_from_config(TWO_TASKS))
            settings = {"kind": kind, **({"period_steps": 1} if kind == "dwa" else {})}
            model.set_loss_weighting(loss_weighting_from_config(settings, [1.0, 1.0]))
            model.compile(optimizer=tf.keras.optimizers.SGD(1.0))
        model.fit(tf.data.Dataset.from_tensors((features, labels)).repeat(3), epochs=1, verbose=0)
        weights.append([v.numpy() for v in model.weights])
    for one, two in zip(*weights):
        np.testing.assert_allclose(one, two, rtol=1e-4, atol=1e-6, err_msg=kind)
print("same steps")
""")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and "same steps" in result.stdout, result.stderr[-3000:]
