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
sim_simulator = config_beside(__file__, "sim_simulator.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("sim_taobao", data_dir="runs/data/taobao_sim", model_name="sim_taobao")

    # user_id finds the user's history and groups GAUC; the model reads the user only through the histories.
    config.features.user_id = dict(kind="id", hash_buckets=1000, training_only=True)
    config.features.timestamp = dict(kind="dense", dtype="int64")
    config.features.item_id = dict(kind="id", hash_buckets=200_000, embedding_dim=16)
    config.features.category_id = dict(kind="id", hash_buckets=20_000, embedding_dim=8)
    sim_simulator.lifelong_ranker(config, category="category_id", item_category="category_id",
                                  recent_len=RECENT_LEN, lifelong_len=LIFELONG_LEN)
    config.train.steps = 1200
    config.train.steps_per_loop = 400
    config.train.learning_rate = 0.002
    config.train.best_metric = ""
    return config
