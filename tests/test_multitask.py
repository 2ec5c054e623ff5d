"""Multi-task families (shared_bottom, mmoe, ple, esmm, esm2) and their layers: the papers' equivalences and
gradient routing, checked on tiny untrained models built from the repository's configs.

* PLE with one level and no task-specific experts is MMoE; MMoE with one expert is shared-bottom (weights
  copied, outputs equal);
* every gate is a distribution over its experts;
* experts run as one matmul per expert and equal the one-einsum form they replaced (issue 13 speed);
* ESMM trains its CVR tower only through pCTCVR: no gradient from the CTR loss, some from the CTCVR loss even
  on a batch without clicks; a PLE level's task experts get no gradient from another task's loss.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.serving_dnn import REPO, synthetic_examples
from tfrecsys.config import load_config
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.experts import (Experts, ExtractionLevel, MixtureOfExpertsBackbone,
                                     ProgressiveLayeredExtraction)
from tfrecsys.models import build_model

CONFIGS = os.path.join(REPO, "configs")
SMALL = {"model.tower_units": (4,)}
EXPERTS = {"model.expert_units": (8,)}


def model_and_batch(family: str, overrides: dict, config_file: str = ""):
    """An untrained model of ``configs/<family>.py:simulator`` (esm2: ``configs/esm2_simulator.py``), seeded,
    and a parsed batch of 64 random rows."""
    config_file = config_file or ("esm2_simulator.py" if family == "esm2" else f"{family}.py:simulator")
    config = load_config(os.path.join(CONFIGS, config_file), {**SMALL, **overrides})
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, schema)
    features, labels = schema.split_labels(schema.parse_examples(tf.constant(synthetic_examples(schema, 64, seed=3))))
    model(features, training=False)
    return model, features, labels


def assert_outputs_equal(left, right, features):
    a, b = left(features, training=False), right(features, training=False)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), atol=1e-6, err_msg=name)


def test_ple_with_one_level_and_no_task_experts_is_mmoe():
    mmoe, features, _ = model_and_batch("mmoe", {**EXPERTS, "model.num_experts": 3})
    ple, _, _ = model_and_batch("ple", {**EXPERTS, "model.num_levels": 1, "model.shared_experts": 3,
                                        "model.task_experts": 0})
    assert [w.shape for w in ple.weights] == [w.shape for w in mmoe.weights]
    ple.set_weights(mmoe.get_weights())
    assert_outputs_equal(ple, mmoe, features)


def test_mmoe_with_one_expert_is_shared_bottom():
    mmoe, features, _ = model_and_batch("mmoe", {**EXPERTS, "model.num_experts": 1})
    bottom, _, _ = model_and_batch("shared_bottom", {"model.bottom_units": (8,)})
    without_gates = [value for variable, value in zip(mmoe.weights, mmoe.get_weights())
                     if "/gate_" not in variable.name]
    bottom.set_weights(without_gates)
    assert_outputs_equal(bottom, mmoe, features)


def test_every_gate_is_a_distribution_over_its_experts():
    x = tf.random.stateless_normal([16, 6], seed=[1, 2]) * 3.0
    mmoe = MixtureOfExpertsBackbone(num_tasks=2, num_experts=5, expert_units=(4,))
    level = ExtractionLevel(num_tasks=2, shared_experts=2, task_experts=3, expert_units=(4,), last=False)
    mmoe(x)
    level([x, x, x])
    gates = [(g, 5) for g in mmoe.gates(x)] + list(zip(level.gates([x, x, x]), (5, 5, 8)))
    for gate, experts in gates:
        assert gate.shape == (16, experts)
        assert np.all(gate.numpy() >= 0)
        np.testing.assert_allclose(gate.numpy().sum(axis=1), 1.0, atol=1e-6)
    assert len({round(float(g[0, 0]), 6) for g, _ in gates}) > 1, "gates must depend on their own weights"


def experts_as_one_einsum(experts: Experts, inputs) -> tf.Tensor:
    """The previous ``Experts.call``: every layer of all experts as one einsum over the ``[n, d, h]`` kernel."""
    hidden = tf.stack(inputs, axis=1) if isinstance(inputs, list) else inputs
    for layer, (kernel, bias) in enumerate(zip(experts.kernels, experts.biases)):
        equation = "bd,ndh->bnh" if layer == 0 and hidden.shape.rank == 2 else "bnd,ndh->bnh"
        hidden = tf.nn.relu(tf.einsum(equation, hidden, kernel) + bias)
    return hidden


@pytest.mark.parametrize("shape", ["shared", "stacked", "list"])
def test_experts_equal_the_one_einsum_form_in_outputs_and_gradients(shape):
    x = tf.random.stateless_normal([32, 3, 6], seed=[5, 6])
    experts = Experts(3, (8, 4), name="experts")
    experts(x)
    for i, bias in enumerate(experts.biases):  # not the zeros they start at: a misplaced bias must show
        bias.assign(tf.random.stateless_normal(bias.shape, seed=[7, i]))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        inputs = {"shared": x[:, 0], "stacked": x, "list": tf.unstack(x, axis=1)}[shape]
        new = experts(inputs)
        old = experts_as_one_einsum(experts, inputs)
        new_loss, old_loss = tf.reduce_sum(new * tf.cos(new)), tf.reduce_sum(old * tf.cos(old))
    assert new.shape == (32, 3, 4)
    np.testing.assert_allclose(new.numpy(), old.numpy(), atol=1e-5)
    unstacked = Experts(3, (8, 4), stack_outputs=False)
    unstacked(x)
    unstacked.set_weights(experts.get_weights())
    np.testing.assert_allclose(tf.stack(unstacked(inputs), axis=1).numpy(), new.numpy(), atol=1e-6)
    for name, variable in [("inputs", x)] + [(v.name, v) for v in experts.trainable_variables]:
        np.testing.assert_allclose(tape.gradient(new_loss, variable).numpy(), tape.gradient(old_loss, variable).numpy(),
                                   atol=1e-5, err_msg=name)


def tower_variables(model, head: str) -> list:
    return model.towers[head].trainable_variables + model.logit_layers[head].trainable_variables


def bce(label, probability):
    return tf.reduce_mean(tf.keras.losses.binary_crossentropy(label[:, None], probability[:, None]))


def test_esmm_trains_cvr_only_through_ctcvr():
    model, features, labels = model_and_batch("esmm", {})
    assert sorted(model._step.task_losses) == ["ctcvr", "ctr"], "no loss on cvr directly"
    cvr_variables = tower_variables(model, "cvr")
    no_clicks = tf.zeros_like(labels["click"])
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(features, training=True)
        ctr_loss = bce(labels["click"], outputs["ctr"])
        ctcvr_loss = bce(no_clicks, outputs["ctcvr"])
    from_ctr = tape.gradient(ctr_loss, cvr_variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    from_ctcvr = tape.gradient(ctcvr_loss, cvr_variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    assert all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in from_ctr)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0.0 for g in from_ctcvr)
    np.testing.assert_allclose(outputs["ctcvr"].numpy(), (outputs["ctr"] * outputs["cvr"]).numpy(), rtol=1e-6)


def test_esmm_on_an_mmoe_backbone_serves_its_three_outputs():
    model, features, _ = model_and_batch("esmm", {**EXPERTS, "model.backbone": "mmoe", "model.num_experts": 2})
    outputs = model(features, training=False)
    assert sorted(outputs) == ["ctcvr", "ctr", "cvr"]
    assert isinstance(model.backbone, MixtureOfExpertsBackbone)
    assert np.all(outputs["ctcvr"].numpy() <= np.minimum(outputs["ctr"], outputs["cvr"]) + 1e-7)


def test_esm2_decomposes_conversion_through_the_action():
    model, features, _ = model_and_batch("esm2", {"model.tower_units": ()})
    logits = {name: value.numpy() for name, value in model.logits(features).items()}
    y1, y2, y3, y4 = (1 / (1 + np.exp(-logits[h])) for h in model.HEADS)
    outputs = {name: value.numpy() for name, value in model(features, training=False).items()}
    np.testing.assert_allclose(outputs["ctavr"], y1 * y2, rtol=1e-5)
    np.testing.assert_allclose(outputs["cvr"], (1 - y2) * y4 + y2 * y3, rtol=1e-5)
    np.testing.assert_allclose(outputs["ctcvr"], y1 * outputs["cvr"], rtol=1e-5)
    assert sorted(model._step.task_losses) == ["ctavr", "ctcvr", "ctr"]


def test_ple_task_experts_learn_only_from_their_own_task():
    x = tf.random.stateless_normal([8, 5], seed=[3, 4])
    ple = ProgressiveLayeredExtraction(num_tasks=2, num_levels=1, shared_experts=1, task_experts=2,
                                       expert_units=(4,))
    with tf.GradientTape(persistent=True) as tape:
        task_0, task_1 = ple(x)
        losses = [tf.reduce_sum(task_0 ** 2), tf.reduce_sum(task_1 ** 2)]
    kernel = ple.levels[0].experts.kernels[0]  # [experts: task 0's two, task 1's two, the shared one]
    for task, loss in enumerate(losses):
        gradient = tf.reduce_sum(tf.abs(tape.gradient(loss, kernel)), axis=[1, 2]).numpy()
        own = slice(2 * task, 2 * task + 2)
        other = slice(2 * (1 - task), 2 * (1 - task) + 2)
        assert np.all(gradient[own] > 0) and np.all(gradient[other] == 0) and gradient[4] > 0


def test_a_task_without_an_output_is_named():
    config = load_config(os.path.join(CONFIGS, "esmm.py:simulator"))
    config.tasks.purchase = dict(label="conversion")
    with pytest.raises(ValueError, match=r"tasks \['purchase'\] of config.tasks name no output; its outputs are "
                                         r"\['ctcvr', 'ctr', 'cvr'\]"):
        build_model(config, FeatureSchema.from_config(config.features))


def test_simulated_actions_lie_on_the_click_path_and_leave_the_world_unchanged():
    from tfrecsys.data.simulators import PositionBiasConfig, simulate_position_bias

    small = dict(num_users=50, num_items=40, num_requests=400, candidates_per_request=20, target_ctr=0.3)
    plain, _ = simulate_position_bias(PositionBiasConfig(**small))
    with_actions, _ = simulate_position_bias(PositionBiasConfig(**small, action_rate=0.3, purchase_action_rate=0.8))
    assert "action" not in plain and set(with_actions) == set(plain) | {"action"}
    for name, column in plain.items():
        np.testing.assert_array_equal(column, with_actions[name], err_msg=name)
    action, click, conversion = (with_actions[name] == 1 for name in ("action", "click", "conversion"))
    assert not np.any(action & ~click)
    assert 0.65 < action[conversion].mean() < 0.95 and 0.2 < action[click & ~conversion].mean() < 0.4


def test_dense_batch_norm_makes_training_outputs_independent_of_a_dense_column_scale():
    config = load_config(os.path.join(CONFIGS, "mmoe.py:simulator"), {**SMALL, **EXPERTS})
    config.features.capital_gains = dict(kind="dense")
    config.model.dense_batch_norm = True
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, schema)
    features, _ = schema.split_labels(schema.parse_examples(tf.constant(synthetic_examples(schema, 32, seed=3))))
    thousands = {**features, "capital_gains": features["capital_gains"] * 1e3}
    millions = {**features, "capital_gains": features["capital_gains"] * 1e6 + 5e4}
    a, b = model(thousands, training=True), model(millions, training=True)
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), atol=1e-5, err_msg=name)
