"""SIM's model and its world: the lifelong store the sequential simulator writes holds exactly the per-row
histories, and soft search learns only through the GSU's auxiliary task (the top-K has no gradient)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.serving_dnn import synthetic_examples
from tests.sim_cases import SIM_CONFIG, SMALL_SIM
from tfrecsys.config import load_config
from tfrecsys.data.simulators.sequential import SequentialConfig, _simulate
from tfrecsys.data.user_histories import UserHistories, UserHistoryStore, write_user_histories
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model

WORLD = dict(num_users=12, num_items=60, num_categories=6, events_per_user=60, target_ctr=0.3, history_len=200,
             seed=3)


def test_lifelong_store_holds_the_per_row_histories(tmp_path):
    per_row, _, _ = _simulate(SequentialConfig(**WORLD))
    rows, _, log = _simulate(SequentialConfig(**WORLD, lifelong_store=True))
    assert "hist_item_id" not in rows and np.array_equal(rows["timestamp"], per_row["timestamp"])
    store = str(tmp_path / "histories.parquet")
    write_user_histories(store, log["user_id"], log["timestamp"], {"item_id": log["item_id"],
                                                                    "category": log["category"]})
    schema = FeatureSchema.from_config({
        "user_id": dict(kind="id", num_buckets=WORLD["num_users"]), "timestamp": dict(kind="dense", dtype="int64"),
        "hist_item_id": dict(kind="sequence", num_buckets=WORLD["num_items"], max_len=WORLD["history_len"]),
        "hist_category": dict(kind="sequence", raw=True, max_len=WORLD["history_len"], aligned_with="hist_item_id"),
        "hist_timestamp": dict(kind="sequence", raw=True, max_len=WORLD["history_len"],
                               aligned_with="hist_item_id")})
    sequences = {"hist_item_id": "item_id", "hist_category": "category", "hist_timestamp": "timestamp"}
    histories = UserHistories(UserHistoryStore.load(store, columns=list(sequences.values())), schema,
                              user_feature="user_id", time_feature="timestamp", sequences=sequences)
    cut = histories.cut_histories({"user_id": tf.constant(rows["user_id"]),
                                   "timestamp": tf.constant(rows["timestamp"])})
    lengths = cut["hist_item_id_length"].numpy()
    assert lengths.max() > 10
    for name in sequences:
        values = cut[name].numpy()
        for row, length in enumerate(lengths):
            np.testing.assert_array_equal(values[row, :length], per_row[name][row], err_msg=name)

    fewer, _, _ = _simulate(SequentialConfig(**WORLD, lifelong_store=True, warmup_events=5, row_fraction=0.5))
    assert len(fewer["user_id"]) < (len(rows["user_id"]) - 5 * WORLD["num_users"]) * 0.7
    first_times = {user: rows["timestamp"][rows["user_id"] == user][4] for user in range(WORLD["num_users"])}
    assert all(time > first_times[user] for user, time in zip(fewer["user_id"], fewer["timestamp"]))


def soft_search_model(with_gsu_task=True):
    config = load_config(SIM_CONFIG, {**SMALL_SIM, "model.search": "soft"})
    if with_gsu_task:
        config.tasks.gsu = dict(label="click", weight=0.1, metrics=())
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    return build_model(config, schema), schema


def test_soft_search_learns_only_through_the_auxiliary_gsu_task():
    model, schema = soft_search_model()
    features = schema.parse_examples(tf.constant(synthetic_examples(schema, 8, seed=4)), with_labels=False,
                                     serving=True)
    assert set(model(features)) == {"score"}  # the GSU head is a training output only: never exported
    projections = [model.general_search.project_history.kernel, model.general_search.project_target.kernel]
    with tf.GradientTape(persistent=True) as tape:
        outputs = model.training_outputs(features, training=True)
    assert set(outputs) == {"score", "gsu"}
    assert all(g is None for g in tape.gradient(outputs["score"], projections))
    assert all(np.abs(g.numpy()).sum() > 0 for g in tape.gradient(outputs["gsu"], projections))


def test_soft_search_without_the_gsu_task_is_refused():
    with pytest.raises(ValueError, match=r"config.tasks.gsu"):
        soft_search_model(with_gsu_task=False)
