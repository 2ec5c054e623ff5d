"""Sampled negatives of an event log (the Taobao DIN/DIEN protocol): a sampled item, as a target or at a
position of the negative history, is never the real item it stands against; sampled rows carry the real
event's history and label 0. Made-up rows, no Beam pipeline: the per-user step preprocessing runs."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.test_data_readers import dataset
from tfrecsys.config import load_config
from tfrecsys.data.negatives import sample_other_items
from tfrecsys.data.preprocess import (PreprocessConfig, _item_values, item_catalogue, plan_preprocessing,
                                      _vocabulary_values, preprocess, read_metadata, user_examples,
                                      vocabulary_path)

BIN = os.path.dirname(sys.executable)
CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")


def test_a_sampled_item_is_never_its_positive_and_every_other_item_is_drawn():
    catalogue = np.array([10, 20, 30])
    positives = np.array([10, 20, 30, 10, 10, 20] * 50)
    draws = sample_other_items(catalogue, positives, np.random.default_rng(0), per_positive=2)
    assert draws.shape == (300, 2)
    assert (catalogue[draws] != positives[:, None]).all()
    # Uniform over the other items: each of the two others of a positive gets about half of its draws.
    others_of_10 = catalogue[draws[positives == 10]].ravel()
    assert set(others_of_10) == {20, 30} and 0.4 < np.mean(others_of_10 == 20) < 0.6
    with pytest.raises(ValueError, match="at least 2 distinct items"):
        sample_other_items(np.array([10]), np.array([10]), np.random.default_rng(0))


FEATURES = {"user_id": dict(kind="id", num_buckets=10), "item_id": dict(kind="id", num_buckets=10),
            "category_id": dict(kind="id", num_buckets=10),
            "hist_item_id": dict(kind="sequence", shares="item_id", max_len=3),
            "hist_category_id": dict(kind="sequence", shares="category_id", max_len=3, aligned_with="hist_item_id"),
            "neg_hist_item_id": dict(kind="sequence", shares="item_id", max_len=3, aligned_with="hist_item_id",
                                     training_only=True),
            "neg_hist_category_id": dict(kind="sequence", shares="category_id", max_len=3,
                                         aligned_with="hist_item_id", training_only=True),
            "click": dict(kind="label")}


def test_sampled_rows_and_negative_histories_never_hold_the_real_item_at_their_position(tmp_path):
    # One user viewing items 1..3 (category = item + 100) over and over; a second user adds item 4 to the catalogue.
    rows = [(7, 1 + t % 3, 101 + t % 3, "pv", 1000 + t) for t in range(12)] + [(8, 4, 104, "pv", 1000)]
    (tmp_path / "UserBehavior.csv").write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
    config = PreprocessConfig(source="taobao-user-behavior", input=str(tmp_path), history_len=3,
                              history_columns=("item_id", "category_id"), sampled_item_columns=("category_id",),
                              keep_rows="behavior == 'pv'", negatives_per_event=1, negative_label="click")
    plan, _ = plan_preprocessing(config, FEATURES, str(tmp_path / "out"))
    events = [dict(zip(("user_id", "item_id", "category_id", "behavior", "timestamp"), row)) for row in rows]
    catalogue = item_catalogue(plan, {_item_values(plan, event) for event in events})
    assert catalogue[0].tolist() == [1, 2, 3, 4]
    examples = list(user_examples(plan, (7, events[:12]), catalogue=catalogue))
    assert len(examples) == 24 and [split for split, _, _ in examples].count("eval") == 2
    for (_, _, real), (_, _, sampled) in zip(examples[::2], examples[1::2]):
        assert (real["click"], sampled["click"]) == (1.0, 0.0)
        assert sampled["item_id"] != real["item_id"] and sampled["category_id"] == sampled["item_id"] + 100
        for name in ("hist_item_id", "hist_category_id", "neg_hist_item_id", "neg_hist_category_id"):
            assert sampled[name] == real[name] and len(real[name]) == len(real["hist_item_id"])
        negatives, positives = np.array(real["neg_hist_item_id"]), np.array(real["hist_item_id"])
        assert (negatives != positives).all()
        assert (np.array(real["neg_hist_category_id"]) == negatives + 100).all()
    # Seeded by the user: the same rows on any runner and in any order of the user's events.
    assert list(user_examples(plan, (7, events[:12][::-1]), catalogue=catalogue)) == examples


def _log_with_eval_only_items(directory) -> None:
    """40 users view two of items 1-3, then each one item of their own (40-79): the eval split's items only,
    yet in the catalogue that negatives are drawn from."""
    rows = [(user, 1 + (user + t) % 3, 101 + (user + t) % 3, "pv", 1000 + t) for user in range(40) for t in range(2)]
    rows += [(user, 40 + user, 140 + user, "pv", 2000) for user in range(40)]
    (directory / "UserBehavior.csv").write_text("".join(",".join(map(str, row)) + "\n" for row in rows))


def _negatives_config(directory) -> PreprocessConfig:
    return PreprocessConfig(source="taobao-user-behavior", input=str(directory), history_len=3,
                            history_columns=("item_id", "category_id"), sampled_item_columns=("category_id",),
                            keep_rows="behavior == 'pv'", negatives_per_event=1, negative_label="click", num_shards=1)


def test_vocabularies_count_the_items_of_negative_histories(tmp_path):
    # A negative-history item left out of item_id's vocabulary would train the OOV row as "a sampled
    # behaviour", the row every item unseen in training then gets at eval (bench/RESULTS.md, issue 12).
    _log_with_eval_only_items(tmp_path)
    out = str(tmp_path / "out")
    features = {**FEATURES, "item_id": dict(kind="id", vocabulary=vocabulary_path(out, "item_id")),
                "category_id": dict(kind="id", vocabulary=vocabulary_path(out, "category_id"))}
    plan, _ = plan_preprocessing(_negatives_config(tmp_path), features, out)
    events = [dict(zip(("user_id", "item_id", "category_id", "behavior", "timestamp"), map(int, line.split(",")[:3])),
                   behavior="pv", timestamp=int(line.split(",")[4]))
              for line in (tmp_path / "UserBehavior.csv").read_text().splitlines()]
    catalogue = item_catalogue(plan, {_item_values(plan, event) for event in events})
    train = [element for user in range(40)
             for element in user_examples(plan, (user, [e for e in events if e["user_id"] == user]), catalogue=catalogue)
             if element[0] == "train"]
    counted = {pair for element in train for pair, _ in _vocabulary_values(plan, element, ["item_id", "category_id"])}
    targets = {example["item_id"] for _, _, example in train}
    negative_history = {item for _, _, example in train for item in example["neg_hist_item_id"]}
    assert negative_history - targets, "no eval-only item reached a negative history only: the check would be empty"
    assert {("item_id", item) for item in negative_history} <= counted
    assert {("category_id", c) for _, _, example in train for c in example["neg_hist_category_id"]} <= counted


@pytest.mark.slow  # a Beam pipeline (about 10 s): make test-all
def test_preprocessed_vocabularies_hold_every_item_of_the_training_negative_histories(tmp_path):
    _log_with_eval_only_items(tmp_path)
    out = str(tmp_path / "out")
    features = {**FEATURES, "item_id": dict(kind="id", vocabulary=vocabulary_path(out, "item_id")),
                "category_id": dict(kind="id", vocabulary=vocabulary_path(out, "category_id"))}
    preprocess(_negatives_config(tmp_path), features, out)
    spec = {name: tf.io.VarLenFeature(tf.int64) for name in ("item_id", "neg_hist_item_id", "neg_hist_category_id")}
    train = tf.io.parse_example(list(tf.data.TFRecordDataset(os.path.join(out, "train-00000-of-00001.tfrecord"))
                                     .as_numpy_iterator()), spec)
    values = {name: set(train[name].values.numpy().tolist()) for name in spec}
    assert values["neg_hist_item_id"] - values["item_id"]  # some drawn items are in no training target
    for name, table in (("neg_hist_item_id", "item_id"), ("neg_hist_category_id", "category_id")):
        vocabulary = set(map(int, open(vocabulary_path(out, table)).read().split()))
        assert values[name] <= vocabulary, (name, sorted(values[name] - vocabulary))


@pytest.mark.slow  # Beam over a Taobao slice, then three short trainings: make test-all
def test_taobao_protocol_through_tfrecsys_preprocess_trains_din_dien_and_sim(tmp_path):
    """tfrecsys-preprocess on configs/sim_taobao.py over the first 3,000 rows of the shared UserBehavior file (a
    temporary copy; it plans what dien_taobao.py does, tests/test_preprocess_user_histories.py), then
    din_taobao.py, dien_taobao.py and sim_taobao.py (lifelong histories cut from the per-user store written
    beside the rows) train a few steps from that output."""
    source = dataset("taobao-user-behavior", "UserBehavior_head84474.csv")
    with open(source) as f:
        (tmp_path / "UserBehavior.csv").write_text("".join(next(f) for _ in range(3_000)))
    data_dir = str(tmp_path / "prepared")
    result = subprocess.run([os.path.join(BIN, "tfrecsys-preprocess"), f"--config={CONFIGS}/sim_taobao.py",
                             f"--config.preprocess.input={tmp_path}", f"--config.data.dir={data_dir}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = read_metadata(data_dir)
    views = [line.split(",")[0] for line in open(tmp_path / "UserBehavior.csv") if line.split(",")[3] == "pv"]
    users_held_out = sum(1 for user in set(views) if views.count(user) > 1)
    splits = metadata["splits"]
    # Every page view is a real row and a sampled one; each user's last view (and its sampled row) is eval.
    assert splits["train"]["rows"] + splits["eval"]["rows"] == 2 * len(views)
    assert splits["eval"]["rows"] == 2 * users_held_out
    store = metadata["user_histories"]
    assert store["events"] == len(views) and store["users"] == len(set(views)) and store["files"]

    from tfrecsys.train.loop import train_and_evaluate

    short = {"data.dir": data_dir, "train.steps": 6, "train.steps_per_loop": 6, "train.steps_per_execution": 3,
             "train.batch_size": 64}
    for family in ("din", "dien", "sim"):
        config = load_config(f"{CONFIGS}/{family}_taobao.py", short)
        metrics = train_and_evaluate(config, str(tmp_path / family), verbose=0)
        assert 0.0 <= metrics["score"]["auc"] <= 1.0 and np.isfinite(metrics["loss"]), (family, metrics)
