"""Online-learning options of streaming training (tfrecsys/train/online.py): freezing all but the embeddings,
replay of window t − R mixed into window t, and distillation from a teacher (BCE(y, s) + λ·CE(t, s)).

Fast tests work on one tiny dnn and a few hand-written windows; the slow one streams a small simulated log
with all three options on and a teacher SavedModel.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.serving_dnn import DNN_CONFIG, SMALL_DNN, export_ranking_model, synthetic_examples
from tfrecsys.config import load_config
from tfrecsys.data.simulators.time_windows import write_windows
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.train import online, streaming
from tfrecsys.train.loop import CHECKPOINT_SUBDIR, train_and_evaluate

STREAM_CONFIG = os.path.join(os.path.dirname(DNN_CONFIG), "dnn_streaming_simulator.py")


def tiny_dnn(learning_rate: float, frozen: bool = False):
    config = load_config(DNN_CONFIG, SMALL_DNN)
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, schema)
    if frozen:
        online.freeze(model, online.OnlineSettings(freeze="all_but_embeddings"))
    # Eager steps: a one-step test need not pay for tracing the train function.
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate), run_eagerly=True)
    records = synthetic_examples(schema, 32, seed=1)
    features = schema.parse_examples(tf.constant(records), with_labels=False)
    labels = {"click": schema.parse_examples(tf.constant(records), with_labels=True)["click"]}
    return model, features, labels


def test_freezing_keeps_every_variable_but_the_embeddings():
    model, features, labels = tiny_dnn(learning_rate=0.5, frozen=True)
    model(features, training=False)
    tables = {id(v) for v in model.embeddings.weights}
    assert tables and {id(v) for v in model.trainable_variables} == tables
    before = {v.name: v.numpy().copy() for v in model.weights}
    model.train_on_batch(features, labels)
    changed = {v.name for v in model.weights if not np.array_equal(v.numpy(), before[v.name])}
    assert changed and changed <= {v.name for v in model.embeddings.weights}
    # The dense layers exist and stayed put: freezing is not an empty model.
    assert any("dense" in v.name or "logit" in v.name for v in model.weights if id(v) not in tables)


def test_the_distillation_loss_equals_its_formula():
    model, features, labels = tiny_dnn(learning_rate=0.0)
    rng = np.random.default_rng(4)
    teacher = rng.uniform(0.05, 0.95, size=32).astype(np.float32)
    model.distill({"score": "teacher_score"}, weight=0.2)
    with pytest.raises(KeyError, match="teacher_score"):
        model.train_on_batch(features, labels)  # the error names the column the batch lacks
    labels = {**labels, "teacher_score": tf.constant(teacher)}
    trained = model.train_on_batch(features, labels, return_dict=True)["loss"]
    evaluated = model.test_on_batch(features, labels, return_dict=True)["loss"]
    s = np.clip(model(features, training=False)["score"].numpy().astype(np.float64), 1e-7, 1 - 1e-7)
    y = labels["click"].numpy().reshape(-1)

    def cross_entropy(target):
        return -(target * np.log(s) + (1 - target) * np.log(1 - s))

    assert trained == pytest.approx(np.mean(cross_entropy(y) + 0.2 * cross_entropy(teacher)), rel=1e-5)
    assert evaluated == pytest.approx(np.mean(cross_entropy(y)), rel=1e-5)  # evaluation: the plain loss


def windows_of(directory: str, rows_per_window: list[int]):
    """Window files holding ``example_id`` ``w·1000 + i`` for row ``i`` of window ``w``; returns the windows as
    the streaming trainer lists them, and the schema."""
    ids = np.concatenate([w * 1000 + np.arange(n) for w, n in enumerate(rows_per_window)]).astype(np.int64)
    timestamps = np.repeat(np.arange(len(rows_per_window)) * 3600, rows_per_window).astype(np.int64)
    write_windows({"timestamp": timestamps, "example_id": ids, "user_id": ids % 7,
                   "click": (ids % 3 == 0).astype(np.float32)}, "timestamp", 3600, directory)
    schema = FeatureSchema.from_config({"user_id": dict(kind="id", num_buckets=7, embedding_dim=2),
                                        "example_id": dict(kind="label", dtype="int64"),
                                        "click": dict(kind="label")})
    config = load_config(STREAM_CONFIG, {"data.dir": directory})
    return streaming.time_windows(config), schema


def test_replay_mixes_window_t_minus_r_evenly_into_window_t(tmp_path):
    windows, schema = windows_of(str(tmp_path), [7, 5, 9, 6])
    settings = online.OnlineSettings(replay_windows=2)
    assert [online.replayed_window(windows, w, settings) for w in windows[:2]] == [None, None]
    assert online.replayed_window(windows, windows[3], settings) is windows[1]
    replay = (windows[1], 6, 5)
    data = streaming._window_data(tf.distribute.get_strategy(), windows[3], schema, 4, replay)
    batches = [labels["example_id"].numpy().reshape(-1).tolist() for _, labels in data]
    assert [len(b) for b in batches] == [4, 4, 3]
    seen = sum(batches, [])
    # Every row of window 3 and of window 1 once, each window in its own order, spread through the mix.
    assert sorted(seen) == [1000 + i for i in range(5)] + [3000 + i for i in range(6)]
    assert [i for i in seen if i < 2000] == sorted(i for i in seen if i < 2000)
    assert [i for i in seen if i >= 3000] == sorted(i for i in seen if i >= 3000)
    positions = [p for p, i in enumerate(seen) if i < 2000]
    assert positions == [2, 4, 6, 8, 10]


def test_online_options_are_refused_outside_streaming_mode():
    config = load_config(DNN_CONFIG, {"train.online.replay_windows": 24})
    with pytest.raises(ValueError, match="streaming"):
        online.OnlineSettings.from_config(config)
    with pytest.raises(ValueError, match="freeze must be one of"):
        online.OnlineSettings(freeze="towers")


@pytest.mark.slow
def test_streaming_with_every_online_option(tmp_path):
    from tests.test_streaming import SMALL
    from tfrecsys.data.simulators import write_from_config

    data_dir, model_dir = str(tmp_path / "data"), str(tmp_path / "model")
    teacher = export_ranking_model(DNN_CONFIG, {"model.hidden_units": (8,)}, str(tmp_path / "teacher"), "teacher")
    config = load_config(STREAM_CONFIG, {
        "data.dir": data_dir, **SMALL, "train.max_checkpoints": 20, "train.online.freeze": "all_but_embeddings",
        "train.online.replay_windows": 1, "train.online.distillation_weight": 0.2,
        "train.online.teacher_saved_model": os.path.dirname(teacher)})
    windows = write_from_config(config.data.simulator, data_dir)["windows"]
    train_and_evaluate(config, model_dir, verbose=0)
    summary = json.load(open(os.path.join(model_dir, streaming.STREAMING_METRICS_FILE)))
    assert summary["windows_trained"] == len(windows)
    # Each window after the first trains on its rows and the previous window's.
    rows = [w["rows"] for w in windows]
    steps = [-(-rows[0] // SMALL["train.batch_size"])] + [
        -(-(rows[i] + rows[i - 1]) // SMALL["train.batch_size"]) for i in range(1, len(rows))]
    checkpoints = tf.train.get_checkpoint_state(os.path.join(model_dir, CHECKPOINT_SUBDIR)).all_model_checkpoint_paths
    assert [int(path.rsplit("-", 1)[1]) for path in checkpoints] == np.cumsum(steps).tolist()
    first, last = tf.train.load_checkpoint(checkpoints[0]), tf.train.load_checkpoint(checkpoints[-1])
    names = [name for name, _ in tf.train.list_variables(checkpoints[-1])
             if name.startswith("model/") and "OPTIMIZER_SLOT" not in name and "embeddings" not in name]
    tables = [name for name, _ in tf.train.list_variables(checkpoints[-1])
              if name.startswith("model/embeddings") and "OPTIMIZER_SLOT" not in name]
    assert names and tables
    assert all(np.array_equal(first.get_tensor(n), last.get_tensor(n)) for n in names)
    assert any(not np.array_equal(first.get_tensor(n), last.get_tensor(n)) for n in tables)
