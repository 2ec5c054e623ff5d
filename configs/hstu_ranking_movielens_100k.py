"""hstu_ranking on MovieLens-100K: each rating is a row whose candidate is the rated movie and whose history
is the user's earlier movies interleaved with the ratings given them (the actions); two tasks on the
candidate, ``like`` (rating >= 4) and ``love`` (rating = 5). Split chronologically (the last 10% of ratings in
time are the eval split), as configs/dnn_movielens_100k.py.

    tfrecsys-preprocess --config=configs/hstu_ranking_movielens_100k.py   # ../shared/datasets/movielens-100k
    tfrecsys-train      --config=configs/hstu_ranking_movielens_100k.py --model_dir=runs/hstu_ranking_ml100k
    tfrecsys-export     --config=configs/hstu_ranking_movielens_100k.py --model_dir=runs/hstu_ranking_ml100k \\
                        --export_base=runs/export

The candidate's timestamp is the rating's (the request time); ``user_id`` is read for GAUC only.
bench/bench_hstu_ranking.py trains DIN on the same rows (``din_features``) and compares AUC.
"""

import ml_collections

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")

HISTORY_LEN = 50
EMBEDDING_DIM = 32
NUM_ITEMS = 1682
NUM_USERS = 943


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("hstu_ranking_movielens_100k", data_dir="runs/data/movielens_100k_ratings",
                             model_name="hstu_ranking_movielens_100k", family="hstu_ranking")
    config.preprocess = ml_collections.ConfigDict(dict(
        source="movielens-100k", input="../shared/datasets/movielens-100k", split="chronological",
        eval_fraction=0.1, history_len=HISTORY_LEN, history_columns=("item_id", "timestamp", "rating"),
        labels={"like": "rating >= 4", "love": "rating >= 5"},
        num_shards=4))

    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS + 1, embedding_dim=8, training_only=True)
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS + 1, embedding_dim=EMBEDDING_DIM)
    config.features.hist_item_id = dict(kind="sequence", shares="item_id", max_len=HISTORY_LEN)
    config.features.hist_rating = dict(kind="sequence", raw=True, dtype="float32", max_len=HISTORY_LEN,
                                       aligned_with="hist_item_id")
    config.features.hist_timestamp = dict(kind="sequence", raw=True, aligned_with="hist_item_id",
                                          max_len=HISTORY_LEN)
    config.features.timestamp = dict(kind="dense", dtype="int64", default=0)
    config.features.like = dict(kind="label")
    config.features.love = dict(kind="label")

    config.model.history_feature = "hist_item_id"
    config.model.action_feature = "hist_rating"
    config.model.num_actions = 6                  # ratings 1..5 (row 0 unused)
    config.model.timestamp_feature = "hist_timestamp"
    config.model.candidate_id = "item_id"
    config.model.candidate_timestamp_feature = "timestamp"
    config.model.num_blocks = 2
    config.model.num_heads = 1
    config.model.dropout = 0.2
    config.model.hidden_units = (32,)
    # Also train the towers at every history item, labelled by its own rating (like: >= 4, love: 5).
    config.model.history_labels = {"like": 4, "love": 5}
    config.model.history_weight = 1.0
    config.model.hstu.attention_path = "padded"

    for task in ("like", "love"):
        config.tasks[task] = dict(label=task, metrics=("auc", "logloss", "gauc"), group="user_id")

    config.train.batch_size = 256
    config.train.steps = 1000
    config.train.steps_per_loop = 250
    config.train.learning_rate = 0.001
    config.train.best_metric = ""
    return config
