"""The shallow position-bias tower (tfrecsys.layers.position_bias, RecModel.add_position_tower): trained with
the position, served without it; and, on the simulator, that it learns the examination curve and that the
debiased score ranks by true relevance better than the same model without a tower (slow)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.serving_dnn import synthetic_examples
from tfrecsys.config import load_config
from tfrecsys.export.trained import export_model
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.position_bias import add_bias_logit
from tfrecsys.models import build_model

CONFIG = "configs/dnn_position_bias_simulator.py"


def tiny_config():
    config = load_config(CONFIG)
    config.model.hidden_units = (8,)
    config.model.position_tower.hidden_units = (4,)
    return config


def parsed_batch(schema, rows=128, seed=0):
    parsed = schema.parse_examples(tf.constant(synthetic_examples(schema, rows, seed=seed)))
    return schema.split_labels(parsed)


def test_bias_logit_adds_in_logit_space():
    p, b = tf.constant([0.1, 0.5, 0.9, 0.0, 1.0]), tf.constant([0.7, -1.2, 2.0, 3.0, -3.0])
    logit = np.log([0.1, 0.5, 0.9]) - np.log1p(-np.array([0.1, 0.5, 0.9]))
    expected = 1 / (1 + np.exp(-(logit + b.numpy()[:3])))
    np.testing.assert_allclose(add_bias_logit(p, b).numpy(), [*expected, 0.0, 1.0], rtol=1e-5)


def test_exported_model_has_no_position_input_and_does_not_depend_on_position(tmp_path):
    tf.keras.utils.set_random_seed(0)
    config = tiny_config()
    schema = FeatureSchema.from_config(config.features)
    model = build_model(config, schema)
    features, _ = parsed_batch(schema)
    model(features)
    model.build_training_towers(features)
    # Position embeddings far from their near-zero start, as training leaves them (no fit: it costs seconds).
    table = model.embeddings.table("position")
    table.embeddings.assign(tf.random.normal(table.embeddings.shape))

    # Training sees the position: another position for every row moves the trained ctr...
    moved = dict(features, position=11 - features["position"] % 11)
    trained = model.with_position_bias(model(features), features, training=False)["ctr"].numpy()
    trained_moved = model.with_position_bias(model(moved), moved, training=False)["ctr"].numpy()
    assert np.abs(trained - trained_moved).max() > 1e-3
    # ...and never the served one.
    np.testing.assert_array_equal(model(moved)["ctr"].numpy(), model(features)["ctr"].numpy())

    path = export_model(model, str(tmp_path), "position_bias", warmup_examples=synthetic_examples(schema, 4, seed=1))
    signature = tf.saved_model.load(path).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert "position" not in inputs and "device" not in inputs
    assert set(signature.structured_outputs) == {"ctr"}
    served = signature(**{name: features[name] for name in inputs})["ctr"].numpy()
    np.testing.assert_allclose(served, model(features)["ctr"].numpy(), atol=1e-6)
    assert np.abs(served - trained).max() > 1e-3, "the export serves the debiased score, not the trained one"


def test_position_dropout_and_config_errors():
    config = tiny_config()
    config.model.position_tower.position_dropout = 0.5
    schema = FeatureSchema.from_config(config.features)
    model = build_model(config, schema)
    features, _ = parsed_batch(schema, rows=400)
    tower = model.position_tower
    kept = tower(features, training=False).numpy()
    # A dropped row sees the "missing" position, a zero embedding, and keeps its device.
    missing = tower.tower(tf.concat([tf.zeros([400, 4]), tower.embedding(features)["device"]], axis=-1))[:, 0]
    tf.random.set_seed(1)
    trained = tower(features, training=True).numpy()
    dropped = np.isclose(trained, missing.numpy(), atol=1e-6) & ~np.isclose(kept, missing.numpy(), atol=1e-6)
    assert 0.4 < dropped.mean() < 0.6, dropped.mean()
    np.testing.assert_allclose(trained[~dropped], kept[~dropped], atol=1e-6)

    config.features.position = dict(kind="id", num_buckets=11, embedding_dim=4)  # served: not allowed
    with pytest.raises(ValueError, match="feature 'position' must be training_only"):
        build_model(config, FeatureSchema.from_config(config.features))
    config = tiny_config()
    config.model.position_tower.tasks = ("ctcvr",)
    with pytest.raises(ValueError, match=r"tasks \['ctcvr'\] must name one or more of the tasks \['ctr'\]"):
        build_model(config, FeatureSchema.from_config(config.features))
    config.model.position_tower.tasks = ()
    assert build_model(config, FeatureSchema.from_config(config.features)).position_tower is None


@pytest.mark.slow
def test_tower_recovers_the_examination_curve_and_ranks_by_relevance_better(tmp_path):
    from bench.bench_position_bias import run

    result = run(seed=0, steps=800, work_dir=str(tmp_path), num_requests=20_000)
    assert min(result["tower"]["spearman_by_device"]) >= 0.95, result["tower"]
    assert result["tower"]["ndcg_true_relevance"] > result["no_tower"]["ndcg_true_relevance"] + 0.005, result


def test_simulator_adds_correlated_conversions_without_changing_the_click_log():
    from tfrecsys.data.simulators import PositionBiasConfig, simulate_position_bias

    settings = dict(num_requests=3000, num_users=300, num_items=300, seed=2)
    correlated, truth = simulate_position_bias(PositionBiasConfig(task_correlation=0.9, **settings))
    independent, _ = simulate_position_bias(PositionBiasConfig(task_correlation=0.0, **settings))
    np.testing.assert_array_equal(correlated["click"], independent["click"])
    clicked = correlated["click"] == 1
    assert correlated["conversion"][~clicked].sum() == 0, "a conversion needs a click"
    assert abs(correlated["conversion"][clicked].mean() - 0.1) < 0.03
    # Clicked rows are a biased sample for CVR when the tasks correlate: ESMM's entire-space argument.
    assert truth["pcvr"][clicked].mean() > 1.2 * truth["pcvr"].mean()
    np.testing.assert_allclose(truth["pctcvr"], truth["probability"] * truth["pcvr"])
    # The logging boost moves boosted items up the lists.
    boosted, boost_truth = simulate_position_bias(PositionBiasConfig(logging_boost_std=2.0, **settings))
    top = boosted["position"] <= 3
    assert boost_truth["item_boost"][boosted["item_id"][top]].mean() > boost_truth["item_boost"][
        boosted["item_id"][~top]].mean() + 0.5


def test_esmm_takes_the_tower_on_ctr_and_ctcvr_only():
    tf.keras.utils.set_random_seed(0)
    config = load_config("configs/esmm.py:simulator")
    config.model.tower_units = (4,)
    config.train.loss_weighting.kind = "uncertainty"
    schema = FeatureSchema.from_config(config.features)
    model = build_model(config, schema)
    assert model.loss_weighting.kind == "uncertainty"
    features, _ = parsed_batch(schema)
    served = model(features)
    trained = model.with_position_bias(served, features, training=False)
    for name in ("ctr", "ctcvr"):
        assert np.abs(trained[name].numpy() - served[name].numpy()).max() > 1e-4
    np.testing.assert_array_equal(trained["cvr"].numpy(), served["cvr"].numpy())
    moved = dict(features, position=11 - features["position"] % 11, device=1 - features["device"])
    for name, value in model(moved).items():
        np.testing.assert_array_equal(value.numpy(), served[name].numpy())
