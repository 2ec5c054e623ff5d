"""tfrecsys' Adam: Keras' algorithm with the step's scalars built once; fused (the default) each variable's update is
one kernel, within float32 rounding of Keras' weights; ``fused=False`` is Keras' update bit for bit."""

import functools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.train.adam import Adam
from tfrecsys.train.loop import optimizer_from_config


def _train(optimizer_class, **options):
    """Three steps of ``optimizer_class`` on two embedding tables (sparse gradients, repeated rows) and a kernel;
    returns the final variables and slots, and the traced step's graph."""
    tf.keras.utils.set_random_seed(0)
    variables = [tf.Variable(tf.random.normal([6, 3])), tf.Variable(tf.random.normal([5, 3])),
                 tf.Variable(tf.random.normal([3, 2]))]
    optimizer = optimizer_class(learning_rate=0.1, **options)
    optimizer.build(variables)

    @tf.function
    def step(rows, values, kernel_gradient):
        gradients = [tf.IndexedSlices(values, rows, tf.constant([6, 3])),
                     tf.IndexedSlices(2.0 * values, rows, tf.constant([5, 3])), kernel_gradient]
        optimizer.apply_gradients(zip(gradients, variables))

    rng = np.random.default_rng(0)
    for _ in range(3):
        inputs = (tf.constant([0, 2, 2, 4]), tf.constant(rng.normal(size=(4, 3)), tf.float32),
                  tf.constant(rng.normal(size=(3, 2)), tf.float32))
        step(*inputs)
    graph = step.get_concrete_function(*inputs).graph.as_graph_def()
    return [v.numpy() for v in variables + optimizer.variables], graph


@functools.lru_cache
def _keras(**options):
    """``_train`` of Keras' Adam, once per set of options (shared by the tests: a training costs ~0.3 s)."""
    return _train(tf.keras.optimizers.Adam, **options)


def _op_count(graph, op_type: str) -> int:
    return sum(node.op == op_type for node in graph.node)


@pytest.mark.parametrize("options", [{}, {"amsgrad": True}])
def test_unfused_adam_trains_the_weights_of_keras_adam_bit_for_bit_with_a_smaller_graph(options):
    ours, our_graph = _train(Adam, fused=False, **options)
    keras, keras_graph = _keras(**options)

    assert len(ours) == len(keras)
    for value, expected in zip(ours, keras):
        np.testing.assert_array_equal(value, expected)
    # The step's scalars (13 nodes) and constants are built for the first variable only.
    assert len(our_graph.node) <= len(keras_graph.node) - 2 * 13


@pytest.mark.parametrize("options", [{}, {"amsgrad": True}])
def test_fused_adam_is_one_kernel_per_variable_within_float_rounding_of_keras_adam(options):
    ours, our_graph = _train(Adam, **options)
    keras, keras_graph = _keras(**options)

    kernel = "ResourceApplyAdamWithAmsgrad" if options.get("amsgrad") else "ResourceApplyAdam"
    assert _op_count(our_graph, kernel) == 3
    # The repeated row 2 is summed before the update, as Keras' deduplication sums it (a scatter of the raw
    # rows would differ by far more than rounding), and untouched rows decay their moments as in Keras.
    for value, expected in zip(ours, keras):
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    # Keras: ~25 nodes per table (deduplication, decays, scatters) and ~12 per kernel; fused: 1 or 2 each.
    assert len(our_graph.node) <= len(keras_graph.node) - 50


def test_adaptive_epsilon_keeps_keras_update_when_fused():
    ours, our_graph = _train(Adam, adaptive_epsilon=True)
    keras, _ = _keras(adaptive_epsilon=True)
    assert _op_count(our_graph, "ResourceApplyAdam") == 0
    for value, expected in zip(ours, keras):
        np.testing.assert_array_equal(value, expected)


@pytest.mark.parametrize("name, fused", [("adam", True), ("adam_keras", False)])
def test_the_train_config_adams_are_tfrecsys_adam_and_round_trip_their_config(name, fused):
    optimizer = optimizer_from_config(ml_collections.ConfigDict({"optimizer": name, "learning_rate": 0.01}))
    assert type(optimizer) is Adam and optimizer.fused is fused
    restored = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(optimizer))
    assert type(restored) is Adam and restored.fused is fused
