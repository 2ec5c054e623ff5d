"""dnn on MovieLens-100K: predict whether a user likes a movie (rating >= 4), split chronologically.

    tfrecsys-preprocess --config=configs/dnn_movielens_100k.py   # ../shared/datasets/movielens-100k → data.dir
    tfrecsys-train      --config=configs/dnn_movielens_100k.py --model_dir=runs/dnn_ml100k

Preprocessing builds the user, item and genre vocabularies from the train split (items seen fewer than
twice fall into the OOV row) and gives every rating the user's earlier ratings (strictly earlier
timestamps) as its history. ``--config.preprocess.input`` points at another copy of the GroupLens files;
``--config.data.dir`` moves the output, and the vocabulary paths follow it.
"""

import ml_collections

from tfrecsys.config import config_beside

HISTORY_LEN = 20

base = config_beside(__file__, "base.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("dnn_movielens_100k", data_dir="runs/data/movielens_100k",
                             model_name="dnn_movielens_100k", family="dnn")
    data_dir = config.data.get_ref("dir")

    config.preprocess = ml_collections.ConfigDict(dict(
        source="movielens-100k",
        input="../shared/datasets/movielens-100k",
        split="chronological",           # the last 10% of ratings in time are the eval split
        eval_fraction=0.1,
        history_len=HISTORY_LEN,
        labels={"like": "rating >= 4"},
        min_counts={"item_id": 2},
        num_shards=4,
    ))

    def vocabulary(feature):
        return data_dir + f"/vocabularies/{feature}.txt"

    config.features.user_id = dict(kind="id", vocabulary=vocabulary("user_id"), embedding_dim=16)
    config.features.item_id = dict(kind="id", vocabulary=vocabulary("item_id"), embedding_dim=16)
    config.features.genres = dict(kind="sequence", dtype="string", max_len=6, vocabulary=vocabulary("genres"),
                                  embedding_dim=8)
    config.features.occupation = dict(kind="id", dtype="string", vocabulary=vocabulary("occupation"),
                                      embedding_dim=4)
    config.features.gender = dict(kind="id", dtype="string", vocabulary=("F", "M"), embedding_dim=2)
    config.features.age = dict(kind="dense")
    config.features.release_year = dict(kind="id", hash_buckets=100, embedding_dim=4)
    config.features.hist_item_id = dict(kind="sequence", shares="item_id", max_len=HISTORY_LEN)
    config.features.like = dict(kind="label")

    config.model.hidden_units = (128, 64)
    config.model.dropout = 0.0

    config.tasks.score = dict(label="like", loss="binary_crossentropy", weight=1.0)

    config.train.steps = 600
    config.train.steps_per_loop = 200
    config.train.learning_rate = 0.002

    return config
