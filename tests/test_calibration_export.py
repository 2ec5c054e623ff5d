"""Calibration served from the SavedModel (config.export.calibration): the exported signatures return the
calibrated scores that the fitted maps give in process, under the same output names, and the run report's
reliability diagram gains the calibrated curve.

The fast test exports an untrained tiny dnn with every kind of map chained; the slow ones go the user's way
(a tiny dnn run of 3k simulated impressions and 20 steps, tfrecsys-export's export_trained, the report).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.serving_dnn import DNN_CONFIG, SMALL_DNN, synthetic_examples
from tfrecsys.calibration import CalibrationSettings, apply_calibration, fit_calibration, fit_for_export
from tfrecsys.config import load_config
from tfrecsys.contract import METADATA_FILE
from tfrecsys.data.input import resolve_files
from tfrecsys.data.simulators.click_log import ClickLogConfig, write_click_log
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.export.trained import export_trained, first_records, load_trained_model
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.report import CALIBRATION_FILE, write_calibration, write_report
from tfrecsys.train.loop import train_and_evaluate

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "dnn_simulator.py")


def tiny_config(data_dir: str, **overrides):
    return load_config(CONFIG, {"data.dir": data_dir, "train.steps": 20, "train.steps_per_loop": 20,
                                "train.steps_per_execution": 10, "train.batch_size": 64,
                                "train.eval_every_loop": 0, "train.best_metric": "", "model.hidden_units": (8,),
                                "export.warmup_requests": 2, **overrides})


def test_every_calibration_map_is_served_as_in_process(tmp_path):
    config = load_config(DNN_CONFIG, SMALL_DNN)
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, schema)
    records = synthetic_examples(schema, 200, seed=1)
    features = schema.parse_examples(tf.constant(records), with_labels=False, serving=True)
    raw = model(features, training=False)["score"].numpy()
    labels = (np.random.default_rng(2).uniform(size=raw.size) < raw * 0.4).astype(np.float64)
    maps = (fit_calibration(CalibrationSettings(method="platt", negative_sampling_rate=0.3), raw, labels)
            + fit_calibration(CalibrationSettings(method="isotonic"), raw, labels))
    expected = apply_calibration(maps, raw).numpy()
    assert np.max(np.abs(expected - raw)) > 1e-2  # the maps change the scores: not an identity export

    path = export_saved_model(model, schema, str(tmp_path), "calibrated", calibrators={"score": maps})
    served = tf.saved_model.load(path)
    by_features = served.signatures["serving_default"](**features)
    assert sorted(by_features) == ["score"]
    np.testing.assert_allclose(by_features["score"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(served.signatures["regress_score"](inputs=tf.constant(records))["outputs"].numpy(),
                               expected, atol=1e-6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrated")
    data_dir, model_dir = str(root / "data"), str(root / "model")
    write_click_log(ClickLogConfig(num_events=3_000, num_shards=1), data_dir)
    train_and_evaluate(tiny_config(data_dir), model_dir, verbose=0)
    return dict(root=root, data_dir=data_dir, model_dir=model_dir)


@pytest.mark.slow
@pytest.mark.parametrize("method,rate", [("isotonic", 1.0), ("platt", 0.5)])
def test_the_exported_run_serves_the_calibration_fitted_on_its_eval_split(run, method, rate):
    config = tiny_config(run["data_dir"], **{"export.calibration.method": method,
                                             "export.calibration.negative_sampling_rate": rate})
    path = export_trained(config, run["model_dir"], str(run["root"] / f"export_{method}"))
    model, schema, _ = load_trained_model(config, run["model_dir"])
    maps, summary = fit_for_export(config, model, schema)
    records = first_records(resolve_files(config.data.eval_files, config.data.dir), 64)
    features = schema.parse_examples(tf.constant(records), with_labels=False, serving=True)
    raw = model(features, training=False)["score"].numpy()
    expected = apply_calibration(maps["score"], raw).numpy()

    served = tf.saved_model.load(path)
    by_features = served.signatures["serving_default"](**features)
    by_examples = served.signatures["serving_examples"](inputs=tf.constant(records))
    assert sorted(by_features) == ["score"]
    np.testing.assert_allclose(by_features["score"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(by_examples["score"].numpy(), expected, atol=1e-6)
    assert np.max(np.abs(expected - raw)) > 1e-3  # the maps change the scores: not an identity export
    recorded = json.load(open(os.path.join(path, METADATA_FILE)))["calibration"]
    assert recorded == json.loads(json.dumps(summary))
    assert [m["layer"] for m in recorded["outputs"]["score"]["maps"]] == (
        ["IsotonicCalibration"] if method == "isotonic" else ["NegativeDownsamplingCorrection", "PlattScaling"])


@pytest.mark.slow
def test_the_report_draws_the_calibration_before_and_after(run):
    config = tiny_config(run["data_dir"], **{"export.calibration.method": "isotonic"})
    write_calibration(config, run["model_dir"])
    bins = json.load(open(os.path.join(run["model_dir"], CALIBRATION_FILE)))["score"]
    assert bins["calibrated"]["method"] == "isotonic"
    assert sum(bins["calibrated"]["count"]) == sum(bins["count"]) > 0
    # Fitted on these rows, isotonic is calibrated on them bin by bin (up to the bins' mixing of blocks).
    gap_before = np.average(np.abs(np.subtract(bins["mean_predicted"], bins["observed_rate"])), weights=bins["count"])
    after = bins["calibrated"]
    gap_after = np.average(np.abs(np.subtract(after["mean_predicted"], after["observed_rate"])), weights=after["count"])
    assert gap_after < gap_before
    write_report(run["model_dir"])
    assert os.path.exists(os.path.join(run["model_dir"], "report", "calibration_score.png"))
