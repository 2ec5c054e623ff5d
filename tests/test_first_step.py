"""Time to the first training step: what the package and the train loop do so the first step is not paid twice.

Timing itself is not asserted (the machine is shared); the two causes measured in docs/retrieval.md are:
AutoGraph converting code that is already graph-safe, and a train step traced twice because the model's
variables were created inside its first trace.
"""

import contextlib
import functools

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.autograph.impl import conversion
from tensorflow.python.eager import context
from tf_keras.src.engine import data_adapter

from tests.test_model_base import SCHEMA, batch, compiled
from tfrecsys.layers.mlp import MLP
from tfrecsys.metrics import means
from tfrecsys.layers.retrieval import MixedNegativeLogits
from tfrecsys.models import execution, in_memory
from tfrecsys.models.dnn import DNNRanker
from tfrecsys.models.logistic_regression import LogisticRegression
from tfrecsys.models.tasks import tasks_from_config
from tfrecsys.train.loop import create_variables


def user_function(x):
    return x + 1


def test_autograph_leaves_tfrecsys_and_tf_keras_alone_and_still_converts_user_code():
    assert conversion.is_allowlisted(MLP.call)
    assert conversion.is_allowlisted(MixedNegativeLogits.call)
    assert conversion.is_allowlisted(tf.keras.layers.Dense.call)
    assert not conversion.is_allowlisted(user_function)


class TraceCountingModel(LogisticRegression):
    """Counts how often ``fit`` traces the train step (Python in a tf.function runs only while tracing)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.traces = []

    def train_step(self, data):
        self.traces.append(len(self.traces))
        return super().train_step(data)


def test_fit_traces_the_train_step_once_after_create_variables():
    model = compiled(TraceCountingModel(SCHEMA, tasks_from_config({"ctr": dict(label="click")})))
    create_variables(model, SCHEMA)
    assert model.trainable_variables, "the forward pass was not traced: no variables"
    assert model.optimizer.variables, "the optimizer's slots were not created"
    weights_before = [v.numpy().copy() for v in model.trainable_variables]

    model.fit(tf.data.Dataset.from_tensors(batch()).repeat(), epochs=1, steps_per_epoch=3, verbose=0)

    assert len(model.traces) == 1
    assert int(model.optimizer.iterations.numpy()) == 3
    assert any((before != after.numpy()).any() for before, after in zip(weights_before, model.trainable_variables))


class CountingDNN(DNNRanker):
    """A dnn ranker with dropout (random draws in every step) that counts how often its step is traced (its
    own ``train_step`` would make the base keep Keras' functions)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.traces = []

    def _step_loss(self, data, training):
        self.traces.append(len(self.traces))
        return super()._step_loss(data, training)


def _train_with_steps_per_execution(keras_functions: bool):
    """Trains a tiny dnn ranker (dropout 0.5, ``steps_per_execution`` 4) for 6 steps; returns the
    model, its weights and the steps Keras reported to callbacks."""
    tf.keras.utils.set_random_seed(0)
    tasks = tasks_from_config({"ctr": dict(label="click")})
    model = CountingDNN(SCHEMA, tasks, hidden_units=(8,), dropout=0.5)
    if keras_functions:  # what tf_keras builds for any model
        model.make_train_function = functools.partial(tf.keras.Model.make_train_function, model)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), steps_per_execution=4)
    create_variables(model, SCHEMA)
    reported = []
    logged = tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda step, logs: reported.append(step))
    features, labels = batch()
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(32).repeat()
    history = model.fit(data, epochs=1, steps_per_epoch=6, verbose=0, callbacks=[logged])
    return model, [v.numpy() for v in model.weights], reported, history.history["loss"]


def test_multi_step_execution_traces_the_step_once_and_trains_the_same_weights_as_keras(monkeypatch):
    optimized_calls = []
    real_graph_optimization = execution.graph_optimization

    @contextlib.contextmanager
    def recorded_graph_optimization():
        with real_graph_optimization():
            optimized_calls.append(len(optimized_calls))
            yield

    monkeypatch.setattr(execution, "graph_optimization", recorded_graph_optimization)
    ours, weights, reported, losses = _train_with_steps_per_execution(keras_functions=False)
    ours_calls = len(optimized_calls)
    keras, keras_weights, keras_reported, keras_losses = _train_with_steps_per_execution(keras_functions=True)

    assert len(keras.traces) == 2, "the premise: tf_keras traces a multi-step train step twice"
    assert len(ours.traces) == 1
    # Every call of our train function has its graph optimised with GRAPH_OPTIMIZATION; Keras' none.
    assert ours_calls == 3 and len(optimized_calls) == 3
    # The first call runs one step, the later ones steps_per_execution (the epoch's end truncates them).
    assert reported == [0, 4, 5]
    assert keras_reported == [3, 5]
    assert int(ours.optimizer.iterations.numpy()) == int(keras.optimizer.iterations.numpy()) == 6
    assert int(ours._steps_per_execution.numpy()) == 4
    np.testing.assert_allclose(losses, keras_losses, rtol=0, atol=1e-6)
    for ours_weight, keras_weight in zip(weights, keras_weights):
        np.testing.assert_allclose(ours_weight, keras_weight, rtol=0, atol=1e-6)


class UserControlFlowDNN(DNNRanker):
    """A dnn ranker whose ``call`` is the user's own and branches in Python on a tensor: traced into a graph,
    it works only if AutoGraph converts it."""

    def call(self, features, training=None):
        outputs = super().call(features, training=training)
        if tf.reduce_max(outputs["ctr"]) > 2.0:  # never, for a probability
            outputs = {**outputs, "ctr": tf.zeros_like(outputs["ctr"])}
        return outputs


class UserControlFlowMean(tf.keras.metrics.Mean):
    """A metric of the user's own that branches in Python on a tensor."""

    def update_state(self, values, sample_weight=None):
        if tf.reduce_max(values) > 2.0:
            values = tf.zeros_like(values)
        return super().update_state(values, sample_weight=sample_weight)


def _train_dnn(model_class=DNNRanker, steps: int = 5):
    """A tiny dnn ranker (``steps_per_execution`` 2) trained ``steps`` steps on fixed batches: the model."""
    tf.keras.utils.set_random_seed(0)
    model = model_class(SCHEMA, tasks_from_config({"ctr": dict(label="click")}), hidden_units=(8,))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), steps_per_execution=2)
    create_variables(model, SCHEMA)
    features, labels = batch()
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(32).repeat()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return model


def test_autograph_is_off_for_tfrecsys_code_alone_and_the_same_weights_result(monkeypatch):
    ours = _train_dnn()
    assert execution.autograph_converts_nothing(ours)
    assert ours.train_tf_function._autograph is False
    monkeypatch.setattr(execution, "autograph_converts_nothing", lambda model: False)
    with_autograph = _train_dnn()
    assert with_autograph.train_tf_function._autograph is True
    assert int(ours.optimizer.iterations.numpy()) == int(with_autograph.optimizer.iterations.numpy()) == 5
    for weight, expected in zip(ours.weights, with_autograph.weights):
        np.testing.assert_array_equal(weight.numpy(), expected.numpy())


def test_a_user_layer_or_metric_keeps_autograph_and_its_python_control_flow_is_converted(monkeypatch):
    model = _train_dnn(UserControlFlowDNN)
    assert not execution.autograph_converts_nothing(model)
    assert model.train_tf_function._autograph is True
    assert int(model.optimizer.iterations.numpy()) == 5

    metric_model = DNNRanker(SCHEMA, tasks_from_config({"ctr": dict(label="click")}), hidden_units=(8,))
    assert execution.autograph_converts_nothing(metric_model)
    metric_model._step.tasks["ctr"].append(UserControlFlowMean(name="user_mean"))
    assert not execution.autograph_converts_nothing(metric_model)

    # The premise: with AutoGraph off, the user's branch on a tensor cannot be traced.
    monkeypatch.setattr(execution, "autograph_converts_nothing", lambda model: True)
    with pytest.raises(tf.errors.OperatorNotAllowedInGraphError):
        _train_dnn(UserControlFlowDNN)


class ForwardCountingDNN(DNNRanker):
    """A dnn ranker that counts how often its forward pass is traced."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.forward_traces = []

    def call(self, features, training=None):
        self.forward_traces.append(len(self.forward_traces))
        return super().call(features, training=training)


def _variables_created(by_tf_function: bool):
    tf.keras.utils.set_random_seed(0)
    model = ForwardCountingDNN(SCHEMA, tasks_from_config({"ctr": dict(label="click")}), hidden_units=(8,),
                               name="dnn")
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    if by_tf_function:  # what create_variables did before: a tf.function that creates variables traces twice
        tf.function(model).get_concrete_function(SCHEMA.input_signature(serving=False))
        model.optimizer.build(model.trainable_variables)
    else:
        create_variables(model, SCHEMA)
    return model


def test_create_variables_traces_the_forward_pass_once_with_the_initial_weights_of_a_tf_function():
    ours, by_tf_function = _variables_created(by_tf_function=False), _variables_created(by_tf_function=True)

    assert len(by_tf_function.forward_traces) == 2, "the premise: a variable-creating tf.function traces twice"
    assert len(ours.forward_traces) == 1
    assert [v.shape for v in ours.weights] == [v.shape for v in by_tf_function.weights]
    for created, expected in zip(ours.weights, by_tf_function.weights):
        np.testing.assert_array_equal(created.numpy(), expected.numpy())
    assert len(ours.optimizer.variables) == len(by_tf_function.optimizer.variables) > 1


def _rewrite_options() -> rewriter_config_pb2.RewriterConfig:
    serialized = context.context().function_call_options.config_proto_serialized
    return config_pb2.ConfigProto.FromString(serialized).graph_options.rewrite_options


def test_graph_optimization_sets_one_grappler_round_without_the_gpu_passes_and_restores_the_options():
    before = context.context().function_call_options.config_proto_serialized
    with execution.graph_optimization():
        inside = _rewrite_options()
        soft_placement = config_pb2.ConfigProto.FromString(
            context.context().function_call_options.config_proto_serialized).allow_soft_placement
    options = rewriter_config_pb2.RewriterConfig
    assert inside.meta_optimizer_iterations == options.ONE
    assert inside.memory_optimization == options.NO_MEM_OPT
    assert inside.layout_optimizer == options.OFF
    # The other passes keep the context's settings (default: on), and so does the rest of the config.
    assert inside.remapping == inside.constant_folding == inside.arithmetic_optimization == options.DEFAULT
    assert soft_placement == config_pb2.ConfigProto.FromString(before).allow_soft_placement
    assert context.context().function_call_options.config_proto_serialized == before


def _assertions(metric, *specs) -> int:
    """Assert ops in the graph of ``metric.update_state`` (its conditions' branches included) traced with
    ``specs`` (batch size unknown), every row weighted by the first value's."""
    def update(*values):
        metric.update_state(*values, sample_weight=tf.reshape(values[0], [-1]))

    graph = tf.function(update).get_concrete_function(*specs).graph.as_graph_def()
    nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
    return sum(node.op == "Assert" for node in nodes)


def test_weighted_means_give_keras_results_without_a_runtime_assertion():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, (64, 1)).astype(np.float32)
    probability = rng.uniform(0.01, 0.99, (64, 1)).astype(np.float32)
    weight = rng.uniform(0.0, 2.0, 64).astype(np.float32)
    row, column = tf.TensorSpec([None], tf.float32), tf.TensorSpec([None, 1], tf.float32)
    pairs = [(means.WeightedMean("loss"), tf.keras.metrics.Mean("loss"), (probability[:, 0],), (row,)),
             (means.logloss("logloss"), tf.keras.metrics.BinaryCrossentropy("logloss"), (label, probability),
              (column, column)),
             (means.mean_squared_error("mse"), tf.keras.metrics.MeanSquaredError("mse"), (label, probability),
              (column, column))]
    for ours, keras, values, specs in pairs:
        for metric in (ours, keras):  # two batches, the second partial
            metric.update_state(*[v[:48] for v in values], sample_weight=weight[:48])
            metric.update_state(*[v[48:] for v in values], sample_weight=weight[48:])
        np.testing.assert_allclose(ours.result().numpy(), keras.result().numpy(), rtol=1e-6)
        assert [v.name for v in ours.variables] == [v.name for v in keras.variables]
        assert _assertions(keras, *specs) > 0, "the premise: Keras asserts the weights' broadcast at run time"
        assert _assertions(ours, *specs) == 0
    with pytest.raises(ValueError, match="'loss'.*shape"):
        means.WeightedMean("loss").update_state(tf.ones([4]), sample_weight=tf.ones([4, 1]))


def _misaligned(array: np.ndarray) -> np.ndarray:
    """``array``'s values in a buffer 16 bytes past a 64-byte boundary: where numpy's large allocations start,
    and why TensorFlow copies them a second time."""
    raw = np.empty(array.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + 16
    out = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def test_in_memory_arrays_become_the_tensors_keras_makes_and_own_their_copy():
    rng = np.random.default_rng(0)
    arrays = {"ids": _misaligned(rng.integers(0, 2**40, (300, 7))), "counts": rng.integers(0, 9, 300).astype(np.int32),
              "label": rng.uniform(size=300), "mask": rng.uniform(size=(300, 2)) > 0.5,
              "strided": rng.integers(0, 99, (300, 4))[:, ::2], "names": np.array(["a", "b"] * 150)}
    ours = in_memory.as_tensors(arrays)
    keras = data_adapter._process_tensorlike(arrays)
    for name in ("ids", "counts", "label", "mask", "strided"):
        assert isinstance(ours[name], tf.Tensor), name
        assert ours[name].dtype == keras[name].dtype and ours[name].shape == keras[name].shape, name
        np.testing.assert_array_equal(ours[name].numpy(), keras[name].numpy(), err_msg=name)
    assert ours["label"].dtype == tf.float32, "floating arrays in Keras' floatx, as Keras converts them"
    assert ours["names"] is arrays["names"], "strings are left to Keras"
    before = ours["ids"].numpy().copy()
    arrays["ids"][:] = -1
    np.testing.assert_array_equal(ours["ids"].numpy(), before, err_msg="the tensor shares the caller's array")
    dataset = tf.data.Dataset.range(3)
    assert in_memory.as_tensors((dataset, None)) == (dataset, None)


def _fit_on_arrays(fit):
    """A tiny logistic regression trained 2 epochs by ``fit`` on shuffled in-memory numpy rows, validated on
    numpy rows and evaluated; returns its weights, history and evaluation."""
    features, labels = batch(seed=3)
    x = {name: _misaligned(value.numpy()) for name, value in features.items()}
    y = {name: value.numpy().astype(np.float64) for name, value in labels.items()}
    tf.keras.utils.set_random_seed(0)
    model = compiled(LogisticRegression(SCHEMA, tasks_from_config({"ctr": dict(label="click")})))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), steps_per_execution=2)
    history = fit(model, x, y, batch_size=32, epochs=2, shuffle=True, verbose=0, validation_data=(x, y))
    return [v.numpy() for v in model.trainable_variables], history.history, model.evaluate(x, y, verbose=0)


def test_fit_on_numpy_arrays_trains_as_keras_conversion_does():
    weights, history, evaluation = _fit_on_arrays(lambda model, *args, **kwargs: model.fit(*args, **kwargs))
    keras_weights, keras_history, keras_evaluation = _fit_on_arrays(
        lambda model, *args, **kwargs: tf.keras.Model.fit(model, *args, **kwargs))
    for ours, keras in zip(weights, keras_weights):
        np.testing.assert_array_equal(ours, keras)
    assert history == keras_history
    assert evaluation == keras_evaluation
