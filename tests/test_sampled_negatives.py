"""Sampled negatives of an event log (the Taobao DIN/DIEN protocol): a sampled item, as a target or at a
position of the negative history, is never the real item it stands against; sampled rows carry the real
event's history and label 0. Made-up rows, no Beam pipeline: the per-user step preprocessing runs."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_data_readers import dataset
from tfrecsys.config import load_config
from tfrecsys.data.negatives import sample_other_items
from tfrecsys.data.preprocess import (PreprocessConfig, _item_values, item_catalogue, plan_preprocessing,
                                      read_metadata, user_examples)

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


@pytest.mark.slow  # Beam over a Taobao slice, then two short trainings: make test-all
def test_taobao_protocol_through_tfrecsys_preprocess_trains_din_and_dien(tmp_path):
    """tfrecsys-preprocess on configs/dien_taobao.py over the first 3,000 rows of the shared UserBehavior file (a
    temporary copy), then din_taobao.py and dien_taobao.py train a few steps from that output."""
    source = dataset("taobao-user-behavior", "UserBehavior_head84474.csv")
    with open(source) as f:
        (tmp_path / "UserBehavior.csv").write_text("".join(next(f) for _ in range(3_000)))
    data_dir = str(tmp_path / "prepared")
    result = subprocess.run([os.path.join(BIN, "tfrecsys-preprocess"), f"--config={CONFIGS}/dien_taobao.py",
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

    from tfrecsys.train.loop import train_and_evaluate

    short = {"data.dir": data_dir, "train.steps": 6, "train.steps_per_loop": 6, "train.steps_per_execution": 3,
             "train.batch_size": 64}
    for family in ("din", "dien"):
        config = load_config(f"{CONFIGS}/{family}_taobao.py", short)
        metrics = train_and_evaluate(config, str(tmp_path / family), verbose=0)
        assert 0.0 <= metrics["score"]["auc"] <= 1.0 and np.isfinite(metrics["loss"]), (family, metrics)
