"""The whole path for the dnn model: simulator data → train → SavedModel → gRPC Predict → Beam scores.

One small run (60k simulated impressions, 300 steps) is shared by the module; every check compares against
the scores of the trained Keras model in this process.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import served_model
from tfrecsys.config import load_config
from tfrecsys.data.input import DataError
from tfrecsys.data.simulators.click_log import ClickLogConfig, write_click_log
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.export.trained import export_trained, first_records, load_trained_model
from tfrecsys.scoring.pipeline import score
from tfrecsys.serving.client import ServingClient
from tfrecsys.train.loop import train_and_evaluate

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "dnn_simulator.py")
BIN = os.path.dirname(sys.executable)


def small_config(data_dir: str, **overrides):
    return load_config(CONFIG, {"data.dir": data_dir, "train.steps": 300, "train.steps_per_loop": 100,
                                "train.batch_size": 256, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("skeleton")
    data_dir, model_dir, export_base = str(root / "data"), str(root / "model"), str(root / "export")
    write_click_log(ClickLogConfig(num_events=60_000, num_shards=2), data_dir)
    config = small_config(data_dir)
    metrics = train_and_evaluate(config, model_dir, verbose=0)
    export_path = export_trained(config, model_dir, export_base)
    model, schema, _ = load_trained_model(config, model_dir)
    eval_files = sorted(glob.glob(os.path.join(data_dir, "eval-*.tfrecord")))
    records = first_records(eval_files, 10_000)
    features = schema.parse_examples(tf.constant(records), with_labels=False, serving=True)
    keras_scores = model(features, training=False)["score"].numpy()
    return dict(root=root, data_dir=data_dir, model_dir=model_dir, export_base=export_base,
                export_path=export_path, metrics=metrics, config=config, schema=schema, records=records,
                features={k: v.numpy() for k, v in features.items()}, keras_scores=keras_scores,
                eval_files=eval_files)


def test_dnn_learns_the_simulated_preferences(run):
    assert run["metrics"]["score"]["auc"] >= 0.70
    saved = json.load(open(os.path.join(run["model_dir"], "eval_metrics.json")))
    assert saved["step"] == 300 and saved["score"]["auc"] == pytest.approx(run["metrics"]["score"]["auc"])


def test_export_layout_and_signatures(run):
    assert run["export_path"] == os.path.join(run["export_base"], "dnn", "1")
    assert os.listdir(os.path.join(run["export_base"], "dnn")) == ["1"]  # no staging directory left behind
    loaded = tf.saved_model.load(run["export_path"])
    inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    assert sorted(inputs) == sorted(run["schema"].input_signature(serving=True))
    assert "click" not in inputs
    assert inputs["hist_item_id"].shape.as_list() == [None, 20] and inputs["user_id"].dtype == tf.int64
    assert loaded.signatures["serving_examples"].structured_input_signature[1]["inputs"].dtype == tf.string
    assert os.path.getsize(os.path.join(run["export_path"], "assets.extra", "tf_serving_warmup_requests")) > 0


def test_reloaded_savedmodel_gives_the_keras_scores(run):
    loaded = tf.saved_model.load(run["export_path"])
    raw = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in run["features"].items()})
    examples = loaded.signatures["serving_examples"](inputs=tf.constant(run["records"]))
    assert np.abs(raw["score"].numpy() - run["keras_scores"]).max() < 1e-5
    assert np.abs(examples["score"].numpy() - run["keras_scores"]).max() < 1e-5


def test_grpc_predict_gives_the_keras_scores_and_survives_bad_requests(run):
    import grpc

    rows = slice(0, 200)
    inputs = {k: v[rows] for k, v in run["features"].items()}
    with served_model(os.path.join(run["export_base"], "dnn"), "dnn", run["root"]) as target:
        with ServingClient(target) as client:
            served = client.predict("dnn", inputs)["score"]
            assert np.abs(served - run["keras_scores"][rows]).max() < 1e-5

            with pytest.raises(grpc.RpcError) as unknown:
                client.predict("no_such_model", inputs)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            missing = {k: v for k, v in inputs.items() if k != "item_price"}
            with pytest.raises(grpc.RpcError) as error:
                client.predict("dnn", missing)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "item_price" in error.value.details()
            wrong_dtype = {**inputs, "user_id": inputs["user_id"].astype(np.float32)}
            with pytest.raises(grpc.RpcError) as error:
                client.predict("dnn", wrong_dtype)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in error.value.details()

            again = client.predict("dnn", inputs)["score"]
            np.testing.assert_array_equal(again, served)


def test_beam_scores_are_the_keras_scores(run):
    output = str(run["root"] / "scores" / "dnn")
    summary = score(run["eval_files"][0], os.path.join(run["export_base"], "dnn"), output)
    keys = [tf.train.Example.FromString(r).features.feature["example_id"].int64_list.value[0]
            for r in run["records"]]
    keras = dict(zip(keys, run["keras_scores"]))
    rows = [json.loads(line) for path in summary.output_files for line in open(path)]
    assert summary.rows_scored == len(rows) == len(keras)
    assert sorted(r["example_id"] for r in rows) == sorted(keras)
    assert max(abs(r["score"] - keras[r["example_id"]]) for r in rows) < 1e-5


class StateAtFirstStep(tf.keras.callbacks.Callback):
    """Records the optimizer step and the weights as the first train step sees them, and the steps run.

    Keras creates a model's variables in its first call, and a checkpoint restore waits for them; calling
    the model once on ``features`` before the first step creates them (and so applies a pending restore)
    where this callback can read them.
    """

    def __init__(self, features: dict):
        super().__init__()
        self.features = features

    def on_train_begin(self, logs=None):
        self.start_step = int(self.model.optimizer.iterations.numpy())
        self.model(self.features, training=False)
        self.first_step_weights = [w.numpy() for w in self.model.weights]

    def on_train_end(self, logs=None):
        self.steps_run = int(self.model.optimizer.iterations.numpy()) - self.start_step


def test_training_resumes_from_its_checkpoint(run):
    checkpoint_model, _, _ = load_trained_model(run["config"], run["model_dir"])
    checkpoint_weights = [w.numpy() for w in checkpoint_model.weights]
    config = small_config(run["data_dir"], **{"train.steps": 400})
    first_step = StateAtFirstStep({name: value[:2] for name, value in run["features"].items()})
    metrics = train_and_evaluate(config, run["model_dir"], verbose=0, callbacks=[first_step])
    assert (first_step.start_step, first_step.steps_run) == (300, 100)
    assert len(first_step.first_step_weights) == len(checkpoint_weights) > 0
    for resumed, saved in zip(first_step.first_step_weights, checkpoint_weights):
        np.testing.assert_array_equal(resumed, saved)
    assert json.load(open(os.path.join(run["model_dir"], "eval_metrics.json")))["step"] == 400
    assert metrics["score"]["auc"] >= 0.70


def test_eval_steps_beyond_the_eval_split_evaluate_the_whole_split(run, tmp_path):
    """``train.eval_steps`` caps the eval batches: asked for more than the split holds, Keras' evaluate would run
    out of data in its first multi-step call and return no metrics (training then failed with "error: loss")."""
    from tfrecsys.data.input import count_records
    from tfrecsys.train.loop import EvalInput

    eval_records = count_records(run["eval_files"])
    config = small_config(run["data_dir"], **{"train.steps": 20, "train.steps_per_loop": 20,
                                              "train.eval_batch_size": 4096, "train.eval_steps": 10_000})
    whole_split = -(-eval_records // 4096)
    assert EvalInput(None, run["eval_files"], run["schema"], config).steps == whole_split > 1
    config.train.eval_steps = 1
    assert EvalInput(None, run["eval_files"], run["schema"], config).steps == 1
    assert count_records(run["eval_files"], limit=100) == 100
    config.train.eval_steps = 10_000
    metrics = train_and_evaluate(config, str(tmp_path / "model"), verbose=0)
    assert 0.0 < metrics["loss"] and 0.5 < metrics["score"]["auc"] <= 1.0


def test_export_never_overwrites_a_version(run):
    model, schema, _ = load_trained_model(run["config"], run["model_dir"])
    base = str(run["root"] / "versions")
    assert export_saved_model(model, schema, base, "dnn").endswith("/dnn/1")
    assert export_saved_model(model, schema, base, "dnn").endswith("/dnn/2")
    with pytest.raises(FileExistsError, match="dnn/2 exists already"):
        export_saved_model(model, schema, base, "dnn", version=2)
    assert sorted(os.listdir(os.path.join(base, "dnn"))) == ["1", "2"]


def test_training_on_missing_data_names_the_pattern(tmp_path):
    config = small_config(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere/train-"):
        train_and_evaluate(config, str(tmp_path / "model"), verbose=0)


def corrupt_copy(run, tmp_path):
    """The run's data with 64 bytes in the middle of train-00001 overwritten."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for path in glob.glob(os.path.join(run["data_dir"], "*.tfrecord")):
        content = open(path, "rb").read()
        if "train-00001" in path:
            content = content[: len(content) // 2] + b"\xff" * 64 + content[len(content) // 2 + 64:]
        (data_dir / os.path.basename(path)).write_bytes(content)
    return data_dir


def test_training_on_a_corrupt_shard_names_the_file(run, tmp_path):
    config = small_config(str(corrupt_copy(run, tmp_path)), **{"train.steps": 200, "train.steps_per_loop": 200})
    with pytest.raises(DataError, match=r"train-00001-of-00002\.tfrecord: record \d+: corrupted record"):
        train_and_evaluate(config, str(tmp_path / "model"), verbose=0)


@pytest.mark.slow  # a binary end to end (tests/test_command_line.py checks the one-line error path quickly)
def test_the_train_binary_names_a_corrupt_shard_in_one_error_line(run, tmp_path):
    data_dir = corrupt_copy(run, tmp_path)
    result = subprocess.run([os.path.join(BIN, "tfrecsys-train"), f"--config={CONFIG}",
                             f"--config.data.dir={data_dir}", f"--model_dir={tmp_path / 'cli_model'}",
                             "--config.train.steps=200", "--config.train.steps_per_loop=200"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "tfrecsys-train: error: cannot read input data:" in result.stderr
    assert "train-00001-of-00002.tfrecord" in result.stderr and "Traceback" not in result.stderr


def test_schema_mismatch_fails_at_start_naming_the_feature(run, tmp_path):
    config = small_config(run["data_dir"])
    config.features.item_price = dict(kind="id", num_buckets=10)
    with pytest.raises(DataError, match="feature 'item_price' is float_list in the data but the schema says int64"):
        train_and_evaluate(config, str(tmp_path / "model"), verbose=0)


@pytest.mark.parametrize("binary, expected_flags", [
    ("tfrecsys-simulate", ["--config", "--output_dir"]),
    ("tfrecsys-train", ["--config", "--model_dir", "--collective"]),
    ("tfrecsys-export", ["--config", "--model_dir", "--export_base", "--version", "--checkpoint"]),
    ("tfrecsys-report", ["--model_dir"]),
    ("tfrecsys-quickstart", ["--workdir", "--config", "--port", "--step_timeout"]),
])
def test_help_explains_every_flag(binary, expected_flags, binary_help):
    result = binary_help[binary]
    assert result.returncode == 0, result.stderr[-3000:]
    for flag in expected_flags:
        assert f"{flag}:" in result.stdout, f"{binary} --help does not explain {flag}"


def test_simulate_help_names_every_simulator_kind(binary_help):
    """The help listed six kinds; the two stream kinds (defuse_simulator.py's, dnn_streaming_simulator.py's)
    were missing from it."""
    from tfrecsys.data.simulators import SIMULATORS

    result = binary_help["tfrecsys-simulate"]
    assert result.returncode == 0, result.stderr[-3000:]
    help_text = " ".join(result.stdout.split())
    assert [kind for kind in SIMULATORS if kind not in help_text] == []
