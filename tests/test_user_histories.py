"""Lifelong histories cut at input time equal the per-row ones (issue 11, deliverable 5).

One seeded event log with many events in the same second, a user with a single event, and examples whose
user the store does not hold or whose time lies before or after all of the user's events. The same examples
are written twice: with their histories stored per row (as the per-row builders write them), and with only
user and timestamp next to a per-user store. ``make_dataset`` must give equal batches from both.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.data import parquet, tfrecord
from tfrecsys.data.input import make_dataset
from tfrecsys.data.histories import history_rows
from tfrecsys.data.user_histories import UserHistories, UserHistoryError, UserHistoryStore, write_user_histories
from tfrecsys.features.schema import FeatureSchema

MOVIELENS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared", "datasets", "movielens-100k")
NUM_USERS, NUM_ITEMS, SHORT_LEN = 8, 30, 2
ABSENT_USER = 99
SEQUENCES = {"hist_item_id": "item_id", "hist_category": "category", "hist_action": "action",
             "hist_timestamp": "timestamp", "recent_item_id": "item_id"}  # the store's time column cut too


def event_log(seed=0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, NUM_USERS - 1, 120)
    users = np.r_[users, NUM_USERS - 1]  # the last user has one event
    timestamps = rng.integers(1_700_000_000, 1_700_000_012, len(users))  # 12 distinct seconds: many ties
    items = rng.integers(1, NUM_ITEMS, len(users))
    actions = rng.integers(1, 4, len(users))
    # One event per (user, second, item): the per-row builder orders a second's events by item only.
    _, unique = np.unique(np.c_[users, timestamps, items], axis=0, return_index=True)
    unique = np.sort(unique)
    users, timestamps, items, actions = users[unique], timestamps[unique], items[unique], actions[unique]
    return {"user_id": users, "timestamp": timestamps, "item_id": items, "category": items % 4 + 1,
            "action": actions}


def reference_history(log, user, time, column, max_len):
    """The straightforward per-row rule: the user's events strictly before ``time``, ordered by (time, item),
    the most recent ``max_len``, oldest first."""
    mine = np.flatnonzero((log["user_id"] == user) & (log["timestamp"] < time))
    mine = mine[np.lexsort((log["item_id"][mine], log["timestamp"][mine]))]
    return log[column][mine[max(0, len(mine) - max_len):]].astype(np.int64)


def schema_for(max_len):
    return FeatureSchema.from_config({
        "user_id": dict(kind="id", num_buckets=128),
        "timestamp": dict(kind="dense", dtype="int64"),
        "hist_item_id": dict(kind="sequence", num_buckets=NUM_ITEMS, max_len=max_len),
        "hist_category": dict(kind="sequence", num_buckets=8, max_len=max_len, aligned_with="hist_item_id"),
        "hist_action": dict(kind="sequence", num_buckets=8, max_len=max_len, aligned_with="hist_item_id"),
        "hist_timestamp": dict(kind="sequence", raw=True, max_len=max_len, aligned_with="hist_item_id"),
        "recent_item_id": dict(kind="sequence", num_buckets=NUM_ITEMS, max_len=SHORT_LEN),
        "click": dict(kind="label"),
    })


def examples(log):
    """Every event of the log as an example, then a user the store lacks and times before and after all."""
    users = np.r_[log["user_id"], ABSENT_USER, 0, 0]
    times = np.r_[log["timestamp"], 1_700_000_005, 1_600_000_000, 1_800_000_000]
    clicks = np.random.default_rng(1).integers(0, 2, len(users)).astype(np.float32)
    return users, times, clicks


def write_both(directory, log, max_len, write_sharded):
    users, times, clicks = examples(log)
    rows = {"user_id": users, "timestamp": times, "click": clicks}
    per_row = dict(rows)
    for feature, column in SEQUENCES.items():
        length = SHORT_LEN if feature == "recent_item_id" else max_len
        per_row[feature] = [reference_history(log, u, t, column, length) for u, t in zip(users, times)]
    store = str(directory / "user_histories.parquet")
    write_user_histories(store, log["user_id"], log["timestamp"],
                         {name: log[name] for name in ("item_id", "category", "action")})
    return (write_sharded(per_row, str(directory), "per_row", 2), write_sharded(rows, str(directory), "rows", 2),
            store, per_row)


def batches(dataset, count=None):
    dataset = dataset if count is None else dataset.take(count)
    return [(inputs, labels) for inputs, labels in dataset.as_numpy_iterator()]


def assert_same_batches(expected, actual):
    assert len(expected) == len(actual) > 0
    for (inputs, labels), (got_inputs, got_labels) in zip(expected, actual):
        assert sorted(inputs) == sorted(got_inputs)
        for name in inputs:
            np.testing.assert_array_equal(got_inputs[name], inputs[name], err_msg=name)
        np.testing.assert_array_equal(got_labels["score"], labels["score"])


def per_row_histories(users, items, times, max_len: int) -> list:
    """Item histories from the per-row builder every writer of per-row histories uses (tfrecsys.data.histories),
    same-second events ordered by item id as the store orders them."""
    return [items[rows] for rows in history_rows(users, times, max_len, tiebreak=items)]


def test_reference_is_the_per_row_builder():
    """The reference above is the per-row history builder (tfrecsys.data.histories) on the log's events."""
    log = event_log()
    assert len(np.unique(np.c_[log["user_id"], log["timestamp"]], axis=0)) < len(log["user_id"])  # ties
    for max_len in (1, 3, 40):
        built = per_row_histories(log["user_id"], log["item_id"], log["timestamp"], max_len)
        for row, history in enumerate(built):
            np.testing.assert_array_equal(
                reference_history(log, log["user_id"][row], log["timestamp"][row], "item_id", max_len), history)


@pytest.mark.parametrize("max_len, write_sharded", [(1, tfrecord.write_sharded), (3, tfrecord.write_sharded),
                                                    (40, tfrecord.write_sharded), (3, parquet.write_sharded)])
def test_histories_cut_at_input_time_equal_per_row_histories(tmp_path, max_len, write_sharded):
    log = event_log()
    schema = schema_for(max_len)
    per_row_files, row_files, store, per_row = write_both(tmp_path, log, max_len, write_sharded)
    user_histories = UserHistories(UserHistoryStore.load(store, columns=sorted(set(SEQUENCES.values()))), schema,
                                   user_feature="user_id", time_feature="timestamp", sequences=SEQUENCES)

    def dataset(files, histories, training):
        return make_dataset(files, schema, 16, targets={"score": "click"}, training=training, shuffle_buffer=64,
                            seed=3, user_histories=histories)

    expected = batches(dataset(per_row_files, None, training=False))
    assert_same_batches(expected, batches(dataset(row_files, user_histories, training=False)))
    assert_same_batches(batches(dataset(per_row_files, None, training=True), 12),
                        batches(dataset(row_files, user_histories, training=True), 12))

    # The log has ties and histories of every length up to max_len; the last three examples' users and times
    # lie outside the store: absent user, before the user's first event, after the user's last.
    lengths = np.concatenate([inputs["hist_item_id_length"] for inputs, _ in expected])
    assert set(range(min(max_len, 3) + 1)) <= set(lengths.tolist()) and lengths.max() <= max_len
    assert lengths[-3:].tolist() == [0, 0, min(max_len, int((log["user_id"] == 0).sum()))]
    assert len(per_row["hist_item_id"]) == len(lengths)


def test_string_user_ids(tmp_path):
    log = event_log()
    names = np.asarray([f"user-{u}" for u in log["user_id"]], dtype=object)
    store_path = str(tmp_path / "histories.parquet")
    genres = np.asarray([f"genre-{c}" for c in log["category"]], dtype=object)
    write_user_histories(store_path, names, log["timestamp"], {"item_id": log["item_id"], "genre": genres})
    schema = FeatureSchema.from_config({
        "user_id": dict(kind="id", dtype="string", hash_buckets=64),
        "timestamp": dict(kind="dense", dtype="int64"),
        "hist_item_id": dict(kind="sequence", num_buckets=NUM_ITEMS, max_len=5),
        "hist_genre": dict(kind="sequence", dtype="string", hash_buckets=8, max_len=5, aligned_with="hist_item_id")})
    cut = UserHistories(UserHistoryStore.load(store_path), schema, user_feature="user_id",
                        time_feature="timestamp", sequences={"hist_item_id": "item_id", "hist_genre": "genre"}
                        ).cut_histories({"user_id": tf.constant(["user-0", "nobody"]),
                                         "timestamp": tf.constant([1_700_000_002] * 2, tf.int64)})
    items = reference_history(log, 0, 1_700_000_002, "item_id", 5)
    categories = reference_history(log, 0, 1_700_000_002, "category", 5)
    assert 0 < len(items) < 5  # the padding shows
    assert cut["hist_item_id"].numpy().tolist() == [items.tolist() + [0] * (5 - len(items)), [0] * 5]
    assert cut["hist_genre"].numpy().tolist() == [
        [f"genre-{c}".encode() for c in categories] + [b""] * (5 - len(items)), [b""] * 5]
    assert cut["hist_item_id_length"].numpy().tolist() == [len(items), 0]


def test_errors_name_the_feature_or_column(tmp_path):
    log = event_log()
    store_path = str(tmp_path / "histories.parquet")
    write_user_histories(store_path, log["user_id"], log["timestamp"], {"item_id": log["item_id"]})
    store = UserHistoryStore.load(store_path)
    schema = schema_for(3)
    with pytest.raises(UserHistoryError, match=r"hist_category.*has no column 'category'"):
        UserHistories(store, schema, user_feature="user_id", time_feature="timestamp", sequences=SEQUENCES)
    float_time = FeatureSchema.from_config({"user_id": dict(kind="id", num_buckets=128),
                                            "timestamp": dict(kind="dense"),
                                            "hist_item_id": dict(kind="sequence", num_buckets=NUM_ITEMS, max_len=3)})
    with pytest.raises(UserHistoryError, match=r"'timestamp' \(DenseFeature float32\) must be an int64"):
        UserHistories(store, float_time, user_feature="user_id", time_feature="timestamp",
                      sequences={"hist_item_id": "item_id"})
    with pytest.raises(UserHistoryError, match="no user history file matches '.*missing-\\*.parquet'"):
        UserHistoryStore.load(str(tmp_path / "missing-*.parquet"))


def test_from_config_reads_the_store_relative_to_the_data_dir(tmp_path):
    log = event_log()
    write_user_histories(str(tmp_path / "histories.parquet"), log["user_id"], log["timestamp"],
                         {"item_id": log["item_id"], "category": log["category"], "action": log["action"]})
    block = {"file": "histories.parquet", "user_feature": "user_id", "time_feature": "timestamp",
             "sequences": SEQUENCES}
    histories = UserHistories.from_config(block, schema_for(3), base_dir=str(tmp_path))
    assert histories.store.num_events == len(log["user_id"]) and sorted(histories.store.column_dtypes) == [
        "action", "category", "item_id", "timestamp"]
    with pytest.raises(UserHistoryError, match=r"unknown keys \['max_len'\]"):
        UserHistories.from_config({**block, "max_len": 3}, schema_for(3), base_dir=str(tmp_path))


@pytest.mark.skipif(not os.path.exists(os.path.join(MOVIELENS, "u.data")),
                    reason=f"MovieLens-100K is not at {MOVIELENS}")
def test_movielens_histories_equal_the_per_row_builder(tmp_path):
    """All 100,000 ratings (many users rate several movies in one second): the cut equals the per-row builder's."""
    from tfrecsys.data.readers.movielens import read_movielens_100k

    ratings = read_movielens_100k(MOVIELENS).ratings
    users, items, times = (ratings[c].astype(np.int64) for c in ("user_id", "item_id", "timestamp"))
    write_user_histories(str(tmp_path / "ml.parquet"), users, times, {"item_id": items})
    schema = FeatureSchema.from_config({"user_id": dict(kind="id", num_buckets=944),
                                        "timestamp": dict(kind="dense", dtype="int64"),
                                        "hist_item_id": dict(kind="sequence", num_buckets=1683, max_len=50)})
    cut = UserHistories(UserHistoryStore.load(str(tmp_path / "ml.parquet")), schema, user_feature="user_id",
                        time_feature="timestamp", sequences={"hist_item_id": "item_id"}).cut_histories(
        {"user_id": tf.constant(users), "timestamp": tf.constant(times)})
    expected = per_row_histories(users, items, times, 50)
    lengths = cut["hist_item_id_length"].numpy()
    assert lengths.tolist() == [len(history) for history in expected]
    padded = np.zeros((len(expected), 50), np.int64)
    for row, history in enumerate(expected):
        padded[row, :len(history)] = history
    np.testing.assert_array_equal(cut["hist_item_id"].numpy(), padded)


def test_training_and_export_take_histories_from_the_store(tmp_path):
    """config.data.user_histories end to end: the loop trains on rows that hold only user and time, and the
    export's warmup requests carry the cut histories the serving signature takes from clients."""
    import ml_collections

    from tfrecsys.export.trained import export_trained, serving_rows
    from tfrecsys.train.loop import train_and_evaluate

    log = event_log()
    _, row_files, store, per_row = write_both(tmp_path, log, 4, tfrecord.write_sharded)
    config = ml_collections.ConfigDict({
        "data": {"dir": str(tmp_path), "train_files": "rows-*", "eval_files": "rows-*",
                 "user_histories": {"file": os.path.basename(store), "user_feature": "user_id",
                                    "time_feature": "timestamp", "sequences": {"hist_item_id": "item_id"}}},
        "features": {"user_id": dict(kind="id", num_buckets=128),
                     "hist_item_id": dict(kind="sequence", num_buckets=NUM_ITEMS, max_len=4),
                     "timestamp": dict(kind="dense", dtype="int64", training_only=True),
                     "click": dict(kind="label")},
        "model": {"name": "logistic_regression"}, "tasks": {"score": dict(label="click")},
        "train": dict(batch_size=16, steps=4, steps_per_loop=4, steps_per_execution=1, learning_rate=0.01,
                      optimizer="adam", shuffle_buffer=64, eval_batch_size=32, eval_steps=0, seed=0,
                      max_checkpoints=1),
        "export": dict(model_name="lr", warmup_requests=5)})
    metrics = train_and_evaluate(config, str(tmp_path / "model"), verbose=0)
    assert 0.0 < metrics["score"]["logloss"] < 2.0
    schema = FeatureSchema.from_config(config.features)
    rows = [tf.train.Example.FromString(row).features.feature for row in serving_rows(config, schema, 5)]
    assert [list(row["hist_item_id"].int64_list.value) for row in rows] == [
        history.tolist() for history in per_row["hist_item_id"][:5]]
    path = export_trained(config, str(tmp_path / "model"), str(tmp_path / "export"))
    assert os.path.exists(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))
