"""tfrecsys' Adam: Keras' update, bit for bit, with the step's scalars built once instead of once per variable."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.train.adam import Adam
from tfrecsys.train.loop import optimizer_from_config


def _train(optimizer_class, **options):
    """Three steps of ``optimizer_class`` on two embedding tables (sparse gradients, repeated rows) and a kernel;
    returns the final variables and slots, and the node count of the traced step."""
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
    nodes = len(step.get_concrete_function(*inputs).graph.as_graph_def().node)
    return [v.numpy() for v in variables + optimizer.variables], nodes


@pytest.mark.parametrize("options", [{}, {"amsgrad": True}, {"adaptive_epsilon": True}])
def test_adam_trains_the_weights_of_keras_adam_bit_for_bit_with_a_smaller_graph(options):
    ours, our_nodes = _train(Adam, **options)
    keras, keras_nodes = _train(tf.keras.optimizers.Adam, **options)

    assert len(ours) == len(keras)
    for value, expected in zip(ours, keras):
        np.testing.assert_array_equal(value, expected)
    # The step's scalars (13 nodes) and constants are built for the first variable only.
    assert our_nodes <= keras_nodes - 2 * 13


def test_the_train_config_adam_is_tfrecsys_adam_and_round_trips_its_config():
    optimizer = optimizer_from_config(ml_collections.ConfigDict({"optimizer": "adam", "learning_rate": 0.01}))
    assert type(optimizer) is Adam
    assert type(tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(optimizer))) is Adam
