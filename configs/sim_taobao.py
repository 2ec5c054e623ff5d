"""sim on Taobao UserBehavior: the real next item against a random item, each user's last event as test.

    python -m bench.bench_sim_taobao --prepare_only --data_dir=runs/data/taobao_sim   # writes the layout below
    tfrecsys-train --config=configs/sim_taobao.py --model_dir=runs/sim_taobao

Layout under ``data.dir`` (what ``bench/bench_sim_taobao.py`` writes from ``UserBehavior*.csv``; the
preprocessing of issue 12 is to write the same): ``train-*.tfrecord`` / ``eval-*.tfrecord`` rows of
``user_id``, ``timestamp`` (the event's time), ``item_id``, ``category_id`` and ``click`` (1 for the item the
user acted on, 0 for a random item of the log with its category, one of each per event), and
``user_histories.parquet``, every event of every user once (``tfrecsys.data.user_histories``: ``item_id``,
``category_id``). The input pipeline cuts for every row the 10 most recent behaviours (DIN branch) and the
500 most recent (GSU/ESU) strictly before its time. Item and category ids are the release's raw ids, hashed
inside the model.
"""

import ml_collections

from tfrecsys.config import config_beside

RECENT_LEN = 10
LIFELONG_LEN = 500

base = config_beside(__file__, "base.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("sim_taobao", data_dir="runs/data/taobao_sim", model_name="sim_taobao")

    config.data.user_histories = ml_collections.ConfigDict(dict(
        file="user_histories.parquet", user_feature="user_id", time_feature="timestamp",
        sequences={"recent_item_id": "item_id", "recent_category_id": "category_id",
                   "long_item_id": "item_id", "long_category_id": "category_id", "long_timestamp": "timestamp"}))

    # user_id finds the user's history and groups GAUC; the model reads the user only through the histories.
    config.features.user_id = dict(kind="id", hash_buckets=1000, training_only=True)
    config.features.timestamp = dict(kind="dense", dtype="int64")
    config.features.item_id = dict(kind="id", hash_buckets=200_000, embedding_dim=16)
    config.features.category_id = dict(kind="id", hash_buckets=20_000, embedding_dim=8)
    config.features.recent_item_id = dict(kind="sequence", shares="item_id", max_len=RECENT_LEN)
    config.features.recent_category_id = dict(kind="sequence", shares="category_id", max_len=RECENT_LEN,
                                              aligned_with="recent_item_id")
    config.features.long_item_id = dict(kind="sequence", shares="item_id", max_len=LIFELONG_LEN)
    config.features.long_category_id = dict(kind="sequence", shares="category_id", max_len=LIFELONG_LEN,
                                            aligned_with="long_item_id")
    config.features.long_timestamp = dict(kind="sequence", raw=True, max_len=LIFELONG_LEN,
                                          aligned_with="long_item_id")
    config.features.click = dict(kind="label")

    config.model.name = "sim"
    config.model.recent_history = ("recent_item_id", "recent_category_id")
    config.model.lifelong_history = ("long_item_id", "long_category_id")
    config.model.lifelong_timestamps = "long_timestamp"
    config.model.request_time = "timestamp"
    config.model.search = "hard"
    config.model.hard_search = ("long_category_id", "category_id")
    config.model.top_k = 50
    config.model.num_heads = 2
    config.model.head_dim = 16
    config.model.time_buckets = 24
    config.model.time_embedding_dim = 8
    config.model.time_unit_seconds = 60.0
    config.model.attention_hidden_units = (80, 40)
    config.model.attention_activation = "dice"
    config.model.hidden_units = (128, 64)
    config.model.dropout = 0.0

    config.tasks.score = dict(label="click", metrics=("auc", "gauc", "logloss"), group="user_id")

    config.train.batch_size = 256
    config.train.steps = 1200
    config.train.steps_per_loop = 400
    config.train.learning_rate = 0.002
    config.train.best_metric = ""
    return config
