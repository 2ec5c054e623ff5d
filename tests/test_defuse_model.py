"""The defuse family (tfrecsys/models/defuse.py): auxiliary models under stop-gradient, served outputs per method."""

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema
from tfrecsys.losses import delayed_feedback as dfl
from tfrecsys.models import build_model

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "defuse_simulator.py")
_spec = importlib.util.spec_from_file_location("defuse_simulator_config", CONFIG)
defuse_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(defuse_config)
ROWS = 32


def small_model(method: str):
    config = defuse_config.get_config(method)
    config.model.hidden_units, config.model.auxiliary_hidden_units, config.model.expert_units = (8,), (4,), 4
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, schema)
    # Plain SGD: a step moves exactly the variables with a gradient (Adam's momentum would carry on).
    model.compile(optimizer=tf.keras.optimizers.SGD(0.5), run_eagerly=True)
    return model


def batch(sample_types):
    rng = np.random.default_rng(0)
    kinds = np.asarray(sample_types, np.int64)
    features = {"user_id": tf.constant(rng.integers(0, 50, ROWS)), "item_id": tf.constant(rng.integers(0, 50, ROWS)),
                "item_category": tf.constant(rng.integers(0, 5, ROWS))}
    positive = np.isin(kinds, [dfl.IMMEDIATE_POSITIVE, dfl.DELAYED_POSITIVE, dfl.AUXILIARY_IMMEDIATE,
                               dfl.AUXILIARY_DELAYED])
    labels = {"label": tf.constant(positive.astype(np.float32)), "sample_type": tf.constant(kinds)}
    return features, labels


def variables_of(layers):
    return [v.numpy().copy() for layer in layers for v in layer.trainable_variables]


def changed(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_cvr_rows_leave_the_auxiliary_models_unchanged_and_auxiliary_rows_the_cvr_model():
    model = small_model("defuse")
    stream_rows = batch(np.resize([dfl.OBSERVED_NEGATIVE, dfl.IMMEDIATE_POSITIVE, dfl.DELAYED_POSITIVE], ROWS))
    auxiliary_rows = batch(np.resize([dfl.AUXILIARY_IMMEDIATE, dfl.AUXILIARY_DELAYED,
                                      dfl.AUXILIARY_REAL_NEGATIVE], ROWS))
    model(stream_rows[0])
    model.training_outputs(stream_rows[0], training=False)
    auxiliary = [model.auxiliary_tables, model.auxiliary_tower]
    cvr = [model.embeddings, model.bottom, model.head]
    aux_before, cvr_before = variables_of(auxiliary), variables_of(cvr)
    model.train_on_batch(*stream_rows)
    assert not changed(aux_before, variables_of(auxiliary)), "a CVR step moved the auxiliary models"
    assert changed(cvr_before, variables_of(cvr))
    cvr_before = variables_of(cvr)
    model.train_on_batch(*auxiliary_rows)
    assert changed(aux_before, variables_of(auxiliary))
    assert not changed(cvr_before, variables_of(cvr)), "auxiliary rows moved the CVR model"


def test_served_cvr_per_method():
    features, _ = batch(np.zeros(ROWS))
    bi = small_model("bi_defuse")
    parts = bi.heads(bi.bottom(tf.concat([bi.embedding(features)[n] for n in bi.serving_features], -1)))
    expected = np.clip(tf.sigmoid(parts["inw_logit"]) + tf.sigmoid(parts["outw_logit"]), 0, 1)
    np.testing.assert_allclose(bi(features)["cvr"].numpy(), expected, rtol=1e-5)
    fnc = small_model("fnc")
    q = tf.sigmoid(fnc.training_outputs(features, training=False)["cvr"]["logit"]).numpy()
    np.testing.assert_allclose(fnc(features)["cvr"].numpy(), np.clip(q / (1 - q), 0, 1), rtol=1e-5)
    assert set(small_model("defuse")(features)) == {"cvr"}  # the auxiliary outputs are not served


def test_a_method_without_its_tasks_is_refused():
    config = defuse_config.get_config("defuse")
    config.model.method = "vanilla"
    with pytest.raises(ValueError, match="method 'vanilla' trains one CVR task with loss logit_cross_entropy"):
        build_model(config, FeatureSchema.from_config(config.features))
    config = defuse_config.get_config("vanilla")
    config.model.method = "defuse"
    with pytest.raises(ValueError, match="loss defuse or defuse_z2"):
        build_model(config, FeatureSchema.from_config(config.features))


def test_defuse_z2_is_the_defuse_method_with_the_z2_loss():
    config = defuse_config.get_config("defuse_z2")
    assert (config.model.method, config.data.simulator.method) == ("defuse", "defuse")  # DEFUSE's stream and model
    assert (config.tasks.cvr.loss, config.tasks.auxiliary.loss) == ("defuse_z2", "delayed_feedback_auxiliary")
    assert config.data.dir == defuse_config.get_config("defuse").data.dir  # the same rows
    model = small_model("defuse_z2")
    assert model.method == "defuse"
    assert sorted(task.loss for task in model.tasks) == ["defuse_z2", "delayed_feedback_auxiliary"]


def test_the_served_cvr_is_what_calibration_and_distillation_apply_to():
    from tfrecsys.calibration import binary_tasks
    from tfrecsys.losses.distillation import Distillation, teacher_cross_entropy

    for method in defuse_config.METHOD_LOSS:  # the CVR task, never the training-only auxiliary task
        assert [task.name for task in binary_tasks(defuse_config.get_config(method))] == ["cvr"], method
    features, labels = batch(np.zeros(ROWS))
    teacher = tf.fill([ROWS], 0.3)
    student = small_model("fnc").training_outputs(features, training=False)["cvr"]
    distilled = Distillation((("cvr", "teacher"),), 0.2).row_losses("cvr", student, features,
                                                                   {**labels, "teacher": teacher})
    # Against the served (corrected) CVR, not the logit FNC learns through.
    np.testing.assert_allclose(distilled, 0.2 * teacher_cross_entropy(teacher, student["probability"]), rtol=1e-6)


@pytest.mark.slow
def test_streaming_scores_each_day_on_its_clicks_after_the_pretraining_days(tmp_path):
    from tfrecsys.data.simulators import write_from_config
    from tfrecsys.train.loop import train_and_evaluate

    config = defuse_config.get_config("defuse")
    config.data.dir = str(tmp_path / "data")
    simulator = config.data.simulator
    simulator.num_clicks, simulator.days, simulator.pretrain_days = 3000, 5, 2
    simulator.num_users, simulator.num_items = 100, 100
    config.train.pretrain_windows = 2
    config.model.hidden_units, config.model.auxiliary_hidden_units = (8,), (4,)
    metadata = write_from_config(simulator, config.data.dir)
    train_and_evaluate(config, str(tmp_path / "model"), verbose=0)
    summary = json.loads((tmp_path / "model" / "streaming_metrics.json").read_text())
    clicks = {w["window"]: w["rows"] for w in metadata["evaluation_windows"]}
    assert [(w["window"], w["rows"]) for w in summary["windows"]] == sorted(clicks.items())
    assert min(clicks) == 2 and summary["windows_trained"] == len(metadata["windows"])
    assert 0.5 < summary["row_weighted_average"]["cvr"]["auc"] <= 1.0

    # The trained DEFUSE model exports with its calibration inside, fitted on the final-labelled clicks, and
    # its run report draws the reliability diagram before and after.
    from tfrecsys.calibration import apply_calibration, fit_for_export
    from tfrecsys.data.input import resolve_files
    from tfrecsys.export.trained import export_trained, first_records, load_trained_model
    from tfrecsys.report import write_calibration, write_report

    config.export.calibration.method = "isotonic"
    path = export_trained(config, str(tmp_path / "model"), str(tmp_path / "export"))
    model, schema, _ = load_trained_model(config, str(tmp_path / "model"))
    maps, _ = fit_for_export(config, model, schema)
    records = first_records(resolve_files(config.data.eval_files, config.data.dir), 64)
    features = schema.parse_examples(tf.constant(records), with_labels=False, serving=True)
    raw = model(features, training=False)["cvr"].numpy()
    expected = apply_calibration(maps["cvr"], raw).numpy()
    assert np.max(np.abs(expected - raw)) > 1e-3
    served = tf.saved_model.load(path).signatures["serving_default"](**features)
    np.testing.assert_allclose(served["cvr"].numpy(), expected, atol=1e-6)
    write_calibration(config, str(tmp_path / "model"))
    write_report(str(tmp_path / "model"))
    assert (tmp_path / "model" / "report" / "calibration_cvr.png").exists()
