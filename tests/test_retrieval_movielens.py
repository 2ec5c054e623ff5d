"""two_tower on MovieLens-100K, leave-one-out by time: a short run of configs/two_tower_movielens.py (its default,
mixed negatives) clearly beats the popularity ranking. The full comparison is bench/bench_retrieval.py.

Reads ../shared/datasets/movielens-100k (GroupLens' license forbids copying it into the repository) and skips
when it is absent.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.retrieval_data import leave_one_out, prepare_movielens_100k
from tfrecsys.train.loop import train_and_evaluate

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
DATASET = os.path.join(ROOT, os.pardir, "shared", "datasets", "movielens-100k")
CONFIG = os.path.join(ROOT, "configs", "two_tower_movielens.py")

needs_movielens = pytest.mark.skipif(not os.path.exists(os.path.join(DATASET, "u.data")),
                                     reason=f"MovieLens-100K is not at {DATASET}")


def test_leave_one_out_keeps_histories_strictly_before_their_target():
    users = np.array([1, 1, 1, 1, 2, 2, 3])
    items = np.array([10, 11, 12, 13, 20, 21, 30])
    times = np.array([5, 1, 5, 9, 2, 1, 4])
    split = leave_one_out(users, items, times, history_len=2)
    assert sorted(split["eval"].tolist()) == [3, 4]          # each user's last event; user 3 has one, it trains
    assert sorted(split["train"].tolist()) == [0, 1, 2, 5, 6]
    histories = [h.tolist() for h in split["histories"]]
    # Items 10 and 12 share a timestamp: neither is the other's history.
    assert histories[0] == [11] and histories[2] == [11] and histories[3] == [10, 12]
    assert histories[4] == [21] and histories[1] == [] and histories[6] == []
    assert [times[r] for r in split["train"]] == sorted(times[split["train"]])


@needs_movielens
def test_two_tower_beats_popularity_on_movielens_leave_one_out(tmp_path):
    data_dir = str(tmp_path / "data")
    metadata = prepare_movielens_100k(DATASET, data_dir)
    assert (metadata["train_rows"], metadata["eval_rows"], metadata["num_candidates"]) == (99_057, 943, 1682)
    eval_example = tf.train.Example.FromString(
        next(iter(tf.data.TFRecordDataset(os.path.join(data_dir, "eval-00000-of-00001.tfrecord")))).numpy())
    assert set(eval_example.features.feature) >= {"user_id", "hist_item_id", "item_id", "item_genres", "reward"}

    config = load_config(CONFIG, {"data.dir": data_dir, "train.steps": 400, "train.steps_per_loop": 400})
    metrics = train_and_evaluate(config, str(tmp_path / "model"), verbose=0)["retrieval"]
    popularity = metadata["popularity"]
    assert metrics["recall_at_10"] > 1.5 * popularity["recall_at_10"], (metrics, popularity)
    assert metrics["recall_at_50"] > 1.5 * popularity["recall_at_50"], (metrics, popularity)
    assert metrics["ndcg_at_10"] > 1.5 * popularity["ndcg_at_10"], (metrics, popularity)
