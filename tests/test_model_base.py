"""The model contract every family stands on (tfrecsys.models.base, tasks, shared embedding tables).

Each test builds a tiny model on an in-memory batch and compares what the step computes with numpy: the
masked and weighted task losses, the masked AUC, the training-only tower that serving leaves out, an output
with no loss that is still exported, and one variable per shared table.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.serving_dnn import synthetic_examples
from tfrecsys.export.trained import export_model
from tfrecsys.features.embedding import FeatureEmbedding
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.models.base import RecModel
from tfrecsys.models.logistic_regression import LogisticRegression
from tfrecsys.models.tasks import tasks_from_config

SCHEMA = FeatureSchema.from_config({
    "user_id": dict(kind="id", num_buckets=50, embedding_dim=4),
    "item_id": dict(kind="id", num_buckets=50, embedding_dim=4),
    "hist_item_id": dict(kind="sequence", shares="item_id", max_len=3),
    "position": dict(kind="id", num_buckets=50, embedding_dim=2, training_only=True),
    "click": dict(kind="label"),
    "converted": dict(kind="label"),
    "weight": dict(kind="label"),
})
ROWS = 256


def batch(seed: int = 0):
    """``(features, labels)``: one parsed batch of random rows, with random 0/1 labels and weights in (0, 2)."""
    examples = tf.constant(synthetic_examples(SCHEMA, ROWS, seed=seed))
    parsed = SCHEMA.parse_examples(examples)
    features, labels = SCHEMA.split_labels(parsed)
    rng = np.random.default_rng(seed)
    labels["weight"] = tf.constant(rng.uniform(0.1, 2.0, ROWS), tf.float32)
    return features, labels


def numpy_auc(labels, scores) -> float:
    """Mann-Whitney AUC with ties counted half."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    greater = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return greater / (len(positive) * len(negative))


def numpy_bce(labels, probability):
    probability = np.clip(probability, 1e-7, 1 - 1e-7)
    return -(labels * np.log(probability) + (1 - labels) * np.log(1 - probability))


def compiled(model: RecModel) -> RecModel:
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    return model


def test_masked_task_loss_and_auc_equal_numpy_over_the_masked_rows():
    tf.keras.utils.set_random_seed(0)
    tasks = tasks_from_config({"ctr": dict(label="click"),
                               "cvr": dict(label="converted", mask="click == 1", metrics=("auc", "logloss"))})
    model = compiled(LogisticRegression(SCHEMA, tasks))
    features, labels = batch()
    predicted = {name: value.numpy() for name, value in model(features).items()}
    clicked = labels["click"].numpy() == 1
    assert 0 < clicked.sum() < ROWS
    # Unclicked rows get labels the model ranks perfectly, so an AUC over every row would be far from the
    # AUC over the clicked rows: the comparison below tells a masked AUC from an unmasked one.
    ordered = (predicted["cvr"] > np.median(predicted["cvr"])).astype(np.float32)
    converted = np.where(clicked, labels["converted"].numpy(), ordered)
    labels["converted"] = tf.constant(converted)
    result = model.evaluate(tf.data.Dataset.from_tensors((features, labels)), return_dict=True, verbose=0)
    cvr_loss = numpy_bce(converted[clicked], predicted["cvr"][clicked]).mean()
    np.testing.assert_allclose(result["cvr_loss"], cvr_loss, rtol=1e-5)
    np.testing.assert_allclose(result["cvr_logloss"], cvr_loss, rtol=1e-5)
    masked_auc = numpy_auc(converted[clicked], predicted["cvr"][clicked])
    assert abs(numpy_auc(converted, predicted["cvr"]) - masked_auc) > 0.1
    np.testing.assert_allclose(result["cvr_auc"], masked_auc, atol=2e-3)
    ctr_loss = numpy_bce(labels["click"].numpy(), predicted["ctr"]).mean()
    np.testing.assert_allclose(result["ctr_loss"], ctr_loss, rtol=1e-5)
    np.testing.assert_allclose(result["loss"], ctr_loss + cvr_loss, rtol=1e-5)


def test_per_sample_weights_give_the_numpy_weighted_mean():
    tf.keras.utils.set_random_seed(0)
    tasks = tasks_from_config({"ctr": dict(label="click", sample_weight="weight", weight=0.5)})
    model = compiled(LogisticRegression(SCHEMA, tasks))
    features, labels = batch(seed=1)
    result = model.evaluate(tf.data.Dataset.from_tensors((features, labels)), return_dict=True, verbose=0)
    losses = numpy_bce(labels["click"].numpy(), model(features)["ctr"].numpy())
    weighted = np.average(losses, weights=labels["weight"].numpy())
    assert abs(weighted - losses.mean()) > 1e-3
    np.testing.assert_allclose(result["ctr_loss"], weighted, rtol=1e-5)
    np.testing.assert_allclose(result["loss"], 0.5 * weighted, rtol=1e-5)


class PositionBiasedRanker(RecModel):
    """Relevance from the serving features plus a training-only position tower: ``score`` (served, no loss)
    is ``sigmoid(relevance)``; ``click_biased`` (trained, not served) is ``sigmoid(relevance + bias(position))``."""

    training_heads = ("click_biased",)

    def __init__(self, schema, tasks, **kwargs):
        super().__init__(schema, tasks, **kwargs)
        self.features = self.embedding_view(self.serving_features)
        self.position = self.embedding_view(["position"])
        self.relevance = tf.keras.layers.Dense(1)
        self.position_bias = tf.keras.layers.Dense(1)

    def call(self, features, training=None):
        relevance = self.relevance(concat_pooled(self.features(features), self.schema, self.serving_features))[:, 0]
        outputs = {"score": tf.sigmoid(relevance)}
        if self.has_features(features, self.training_only_features):
            bias = self.position_bias(self.position(features)["position"])[:, 0]
            outputs["click_biased"] = tf.sigmoid(relevance + bias)
        return outputs


def test_training_only_tower_changes_training_logits_and_is_not_served(tmp_path):
    tf.keras.utils.set_random_seed(0)
    tasks = tasks_from_config({"score": dict(loss=None), "click_biased": dict(label="click")})
    model = compiled(PositionBiasedRanker(SCHEMA, tasks))
    features, labels = batch()
    model.fit(tf.data.Dataset.from_tensors((features, labels)).repeat(), steps_per_epoch=5, epochs=1, verbose=0)
    outputs = model(features)
    assert not np.allclose(outputs["click_biased"].numpy(), outputs["score"].numpy(), atol=1e-3)

    warmup = synthetic_examples(SCHEMA, 4, seed=3)
    path = export_model(model, str(tmp_path), "biased", warmup_examples=warmup)
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    assert "position" not in signature.structured_input_signature[1]
    assert set(signature.structured_outputs) == {"score"}, "a training head must not be served"
    assert "classify_score" in loaded.signatures and "classify_click_biased" not in loaded.signatures
    serving_inputs = {name: features[name] for name in signature.structured_input_signature[1]}
    served = signature(**serving_inputs)["score"].numpy()
    np.testing.assert_allclose(served, outputs["score"].numpy(), atol=1e-6)
    # Another position for every row leaves the served score as it was: it never reads the tower.
    moved = dict(features, position=(features["position"] + 7) % 50)
    np.testing.assert_allclose(model(moved)["score"].numpy(), served, atol=1e-6)
    assert not np.allclose(model(moved)["click_biased"].numpy(), outputs["click_biased"].numpy(), atol=1e-4)


def test_output_with_no_loss_is_exported_and_takes_no_gradient(tmp_path):
    tf.keras.utils.set_random_seed(0)
    tasks = tasks_from_config({"ctr": dict(label="click"), "served_only": dict(loss=None)})
    model = compiled(LogisticRegression(SCHEMA, tasks))
    features, labels = batch()
    before = model(features)  # builds the heads
    head_before = model.heads["served_only"].get_weights()[0].copy()
    model.fit(tf.data.Dataset.from_tensors((features, labels)).repeat(), steps_per_epoch=3, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.heads["served_only"].get_weights()[0], head_before)
    assert not np.allclose(model(features)["ctr"].numpy(), before["ctr"].numpy())
    path = export_model(model, str(tmp_path), "lr")
    outputs = tf.saved_model.load(path).signatures["serving_default"].structured_outputs
    assert set(outputs) == {"ctr", "served_only"}


def test_a_shared_item_table_is_one_variable():
    tf.keras.utils.set_random_seed(0)
    model = LogisticRegression(SCHEMA, tasks_from_config({"ctr": dict(label="click")}))
    features, _ = batch()
    model(features)
    tables = [v for v in model.trainable_variables if "item_id_embedding" in v.name]
    assert len(tables) == 1, [v.name for v in model.trainable_variables]
    # Both the candidate id and the history read it: each moves the output.
    item_rows = model.embeddings.embed("item_id", features["item_id"])
    history_rows = model.embedding.call(features)["hist_item_id"]
    np.testing.assert_array_equal(history_rows[:, 0].numpy(),
                                  model.embeddings.embed("item_id", features["hist_item_id"][:, 0]).numpy())
    assert item_rows.shape == (ROWS, 4)


def test_task_config_errors_name_the_task_and_field():
    with pytest.raises(ValueError, match=r"task 'cvr': loss 'binary_crossentropy' needs a 'label'"):
        tasks_from_config({"cvr": dict(mask="click")})
    with pytest.raises(ValueError, match=r"task 'ctr': unknown metrics \['aucc'\]"):
        tasks_from_config({"ctr": dict(label="click", metrics=("aucc",))})
    with pytest.raises(ValueError, match=r"task 'ctr' reads column 'clicked', which is not a feature"):
        tasks_from_config({"ctr": dict(label="click", mask="clicked == 1")}, SCHEMA)
    with pytest.raises(ValueError, match=r"metric 'gauc' needs 'group'"):
        tasks_from_config({"ctr": dict(label="click", metrics=("gauc",))})


def test_gauc_and_calibration_equal_numpy():
    tf.keras.utils.set_random_seed(0)
    tasks = tasks_from_config({"ctr": dict(label="click", metrics=("gauc", "calibration"), group="user_id")})
    model = compiled(LogisticRegression(SCHEMA, tasks))
    features, labels = batch(seed=4)
    features["user_id"] = features["user_id"] % 8  # 8 users with ~32 rows each
    model(features)
    # Spread the untrained model's scores over (0, 1): GAUC buckets predictions by 1/200.
    kernel, bias = model.heads["ctr"].get_weights()
    model.heads["ctr"].set_weights([kernel * 40, bias])
    result = model.evaluate(tf.data.Dataset.from_tensors((features, labels)), return_dict=True, verbose=0)
    predicted = model(features)["ctr"].numpy()
    clicks, users = labels["click"].numpy(), features["user_id"].numpy()
    aucs, counts = [], []
    for user in np.unique(users):
        rows = users == user
        if 0 < clicks[rows].sum() < rows.sum():
            aucs.append(numpy_auc(clicks[rows], predicted[rows]))
            counts.append(rows.sum())
    np.testing.assert_allclose(result["ctr_gauc"], np.average(aucs, weights=counts), atol=5e-3)
    np.testing.assert_allclose(result["ctr_calibration"], predicted.mean() / clicks.mean(), rtol=1e-5)


def test_loss_is_averaged_over_the_global_batch_under_a_strategy(tmp_path):
    """Two replicas on logical CPU devices (a subprocess: devices are fixed when TensorFlow starts) take the
    same step as one replica over the whole batch: the replicas' shares add up to the global weighted mean."""
    import subprocess
    import sys

    script = tmp_path / "two_replicas.py"
    script.write_text(f"""
import numpy as np, tensorflow as tf
import tfrecsys
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.test_model_base import LogisticRegression, SCHEMA, batch, tasks_from_config
features, labels = batch()
tasks = {{"ctr": dict(label="click", sample_weight="weight"), "cvr": dict(label="converted", mask="click == 1")}}
weights = []
for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
    with strategy.scope():
        tf.keras.utils.set_random_seed(0)
        model = LogisticRegression(SCHEMA, tasks_from_config(tasks))
        model.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    data = tf.data.Dataset.from_tensors((features, labels))
    model.fit(data, epochs=1, verbose=0)
    weights.append(model.heads["cvr"].get_weights()[0])
assert strategy.num_replicas_in_sync == 2
np.testing.assert_allclose(weights[0], weights[1], rtol=1e-4, atol=1e-6)
print("same step")
""")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and "same step" in result.stdout, result.stderr[-3000:]


TIMED = FeatureSchema.from_config({
    "item_id": dict(kind="id", num_buckets=50, embedding_dim=4),
    "hist_item_id": dict(kind="sequence", shares="item_id", max_len=4),
    "hist_time": dict(kind="sequence", raw=True, aligned_with="hist_item_id", max_len=4),
    "request_time": dict(kind="dense", dtype="int64"),
    "click": dict(kind="label"),
})


def timed_examples():
    """Rows whose times are ~1.7e9 s with odd low digits: float32 would round them to multiples of 128."""
    rows = []
    for row in range(6):
        times = [1_700_000_001 + 37 * row + 3 * t for t in range(row % 5)]
        feature = {"item_id": [row], "hist_item_id": [row + t for t in range(len(times))], "hist_time": times,
                   "request_time": [1_700_000_999 + row], "click": [float(row % 2)]}
        rows.append(tf.train.Example(features=tf.train.Features(feature={
            name: (tf.train.Feature(float_list=tf.train.FloatList(value=value)) if name == "click" else
                   tf.train.Feature(int64_list=tf.train.Int64List(value=value))) for name, value in feature.items()
        })).SerializeToString())
    return rows


def test_raw_timestamp_sequence_and_int64_time_reach_the_model_exact():
    examples = timed_examples()
    for ragged in (False, True):
        features, _ = TIMED.split_labels(TIMED.parse_examples(tf.constant(examples), ragged=ragged))
        embedded = FeatureEmbedding(TIMED)(features)
        assert embedded["hist_time"].dtype == tf.int64 and embedded["request_time"].dtype == tf.int64
        for row in range(6):
            expected = [1_700_000_001 + 37 * row + 3 * t for t in range(row % 5)][-4:]
            got = embedded["hist_time"][row].numpy()
            np.testing.assert_array_equal(got[:len(expected)], expected)
            assert embedded["hist_time_mask"][row].numpy().sum() == len(expected)
        np.testing.assert_array_equal(embedded["request_time"].numpy()[:, 0], 1_700_000_999 + np.arange(6))


def test_ragged_batches_give_the_padded_batches_step():
    tf.keras.utils.set_random_seed(0)
    tasks = tasks_from_config({"ctr": dict(label="click")})
    model = compiled(LogisticRegression(SCHEMA, tasks))
    examples = tf.constant(synthetic_examples(SCHEMA, ROWS, seed=5))
    results = []
    for ragged in (False, True):
        features, labels = SCHEMA.split_labels(SCHEMA.parse_examples(examples, ragged=ragged))
        assert isinstance(features["hist_item_id"], tf.RaggedTensor) == ragged
        results.append(model.evaluate(tf.data.Dataset.from_tensors((features, labels)), return_dict=True,
                                      verbose=0))
    assert results[0] == results[1]
