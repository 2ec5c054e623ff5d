"""Layer-level XLA (tfrecsys/layers/xla.py): an MLP with ``xla=True`` runs an XLA-compiled function in
training and evaluation, its plain path in exported serving signatures, and both give the same numbers."""

import contextlib

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.export import saved_model as contract
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.xla import in_serving_mode, serving_mode

SCHEMA_CONFIG = {"item_price": {"kind": "dense"}, "user_activity": {"kind": "dense"}, "click": {"kind": "label"}}
INPUT_SPEC = tf.TensorSpec([None, 6], tf.float32)


def inputs(rows: int = 16, seed: int = 1) -> tf.Tensor:
    return tf.random.stateless_normal([rows, 6], seed=[seed, 7])


def xla_compiled_in_trace(layer, training=False) -> list[str]:
    """Names of the functions with ``_XlaMustCompile`` that a graph tracing ``layer`` calls."""
    graph_def = tf.function(lambda x: layer(x, training=training)).get_concrete_function(
        INPUT_SPEC).graph.as_graph_def()
    return [f.signature.name for f in graph_def.library.function
            if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]


def test_xla_and_plain_paths_agree_and_only_the_xla_path_is_compiled():
    tf.keras.utils.set_random_seed(0)
    layer = MLP([32, 16], output_units=1, xla=True)
    x = inputs()
    compiled = layer(x).numpy()
    with serving_mode():
        plain = layer(x).numpy()
    np.testing.assert_allclose(compiled, plain, atol=1e-5)
    assert np.abs(plain).max() > 1e-3  # a real output, not zeros agreeing with zeros

    assert xla_compiled_in_trace(layer), "xla=True must call an XLA-compiled function"
    assert xla_compiled_in_trace(layer, training=True), "training must take the XLA path too"
    with serving_mode():
        assert xla_compiled_in_trace(layer) == []
    assert xla_compiled_in_trace(MLP([32, 16], output_units=1, xla=False)) == []


def test_serving_mode_nests_and_restores():
    assert not in_serving_mode()
    with serving_mode():
        with serving_mode():
            assert in_serving_mode()
        assert in_serving_mode()
    assert not in_serving_mode()


def test_a_training_step_through_the_xla_path_equals_the_plain_one():
    """Gradients flow through the compiled function: one SGD step from the same weights gives the same weights."""
    tf.keras.utils.set_random_seed(0)
    layers = {xla: MLP([16], output_units=1, xla=xla) for xla in (True, False)}
    x, y = inputs(), tf.random.stateless_normal([16, 1], seed=[3, 4])
    layers[True](x)
    layers[False](x)
    layers[False].set_weights(layers[True].get_weights())
    initial = layers[True].get_weights()
    after = {}
    for xla, layer in layers.items():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x, training=True) - y))
        gradients = tape.gradient(loss, layer.trainable_variables)
        assert all(g is not None for g in gradients)
        tf.keras.optimizers.SGD(0.5).apply_gradients(zip(gradients, layer.trainable_variables))
        after[xla] = layer.get_weights()
    for compiled, plain in zip(after[True], after[False]):
        np.testing.assert_allclose(compiled, plain, atol=1e-5)
    assert all(np.abs(a - b).max() > 1e-4 for a, b in zip(after[True], initial))  # the step moved every weight


def test_get_config_keeps_the_xla_option():
    layer = MLP([8], output_units=1, xla=True)
    clone = MLP.from_config(layer.get_config())
    assert clone.xla is True and clone.hidden_units == [8] and clone.output_units == 1


class XlaScorer(tf.keras.Model):
    """A ranker whose MLP has an XLA path: ``score = sigmoid(MLP([price ; activity]))``."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP([16, 8], output_units=1, xla=True)

    def call(self, features, training=None):
        x = tf.stack([features["item_price"], features["user_activity"]], axis=-1)
        return {"score": tf.sigmoid(tf.squeeze(self.mlp(x, training=training), -1))}


def built_scorer():
    tf.keras.utils.set_random_seed(0)
    model = XlaScorer()
    features = {"item_price": tf.constant([0.5, 1.5, -1.0, 2.0]), "user_activity": tf.constant([1.0, 0.0, 2.0, 3.0])}
    model(features)
    return model, features


def test_a_model_with_an_xla_layer_exports_its_plain_path_and_serves_the_same_scores(tmp_path):
    model, features = built_scorer()
    expected = model(features)["score"].numpy()  # the XLA path
    schema = FeatureSchema.from_config(SCHEMA_CONFIG)
    path = contract.export_saved_model(model, schema, str(tmp_path), "xla_scorer")
    assert contract.xla_compiled_functions(path) == {}
    # Not even unreachable XLA functions (the layer's training traces, Keras' own layer traces) are saved.
    library = contract.read_saved_model_proto(path).meta_graphs[0].graph_def.library.function
    assert library and [f.signature.name for f in library if f.attr["_XlaMustCompile"].b] == []

    loaded = tf.saved_model.load(path)
    served = loaded.signatures[contract.SERVING_DEFAULT](**features)["score"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "item_price": tf.train.Feature(float_list=tf.train.FloatList(value=[float(price)])),
        "user_activity": tf.train.Feature(float_list=tf.train.FloatList(value=[float(activity)]))}))
        .SerializeToString() for price, activity in zip(features["item_price"].numpy(),
                                                         features["user_activity"].numpy())]
    from_examples = loaded.signatures[contract.SERVING_EXAMPLES](inputs=tf.constant(examples))["score"].numpy()
    np.testing.assert_allclose(from_examples, expected, atol=1e-5)


def test_without_serving_mode_the_export_is_refused(tmp_path, monkeypatch):
    """The export check stays: traced outside serving mode, the same model needs XLA to serve."""
    model, _ = built_scorer()
    monkeypatch.setattr(contract, "serving_mode", contextlib.nullcontext)
    with pytest.raises(ValueError, match=r"needs XLA to serve \(.*serving_default: .*plain_call"):
        contract.export_saved_model(model, FeatureSchema.from_config(SCHEMA_CONFIG), str(tmp_path), "xla_scorer")
    assert (tmp_path / "xla_scorer").is_dir() and not any((tmp_path / "xla_scorer").iterdir())
