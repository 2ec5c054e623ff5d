"""sim (GSU + ESU over a lifelong click history, DIN over the recent one) on the sequential simulator.

    tfrecsys-simulate --config=configs/sim_simulator.py
    tfrecsys-train --config=configs/sim_simulator.py --model_dir=runs/sim
    tfrecsys-train --config=configs/sim_simulator.py --config.model.search=soft --config.tasks.gsu.weight=0.1

The world: interests drift slowly (a current interest lasts about 1/drift_rate impressions, dozens of clicks),
so the recent history holds the current interest and the user's other long-term interests are clicked long
before it; users click hundreds of times over their lives. Each user's clicks are stored once
(``user_histories.parquet``); the input pipeline cuts the recent ``RECENT_LEN`` clicks and the lifelong
``LIFELONG_LEN`` from it for every row (``config.data.user_histories``). ``user_id`` is training-only: it
finds the user's history in the store and groups GAUC, but the model never sees it, so what it knows of a
user's interests comes from the histories alone (as for a user it did not train on).
"""

import ml_collections

from tfrecsys.config import config_beside

NUM_USERS = 400
NUM_ITEMS = 4000
NUM_CATEGORIES = 50
RECENT_LEN = 20
LIFELONG_LEN = 1000

base = config_beside(__file__, "base.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("sim_simulator", data_dir="runs/data/sequential_lifelong", model_name="sim")

    config.data.simulator = ml_collections.ConfigDict(dict(
        kind="sequential", num_users=NUM_USERS, num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
        events_per_user=2400, long_term_interests=4, drift_rate=0.004, explore_rate=0.1, relevant_exposure=0.5,
        current_boost=2.0, long_term_boost=1.5, target_ctr=0.12, lifelong_store=True, warmup_events=800,
        row_fraction=0.2, seed=0))
    config.data.user_histories = ml_collections.ConfigDict(dict(
        file="user_histories.parquet", user_feature="user_id", time_feature="timestamp",
        sequences={"recent_item_id": "item_id", "recent_category": "category",
                   "long_item_id": "item_id", "long_category": "category", "long_timestamp": "timestamp"}))

    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS, training_only=True)
    config.features.timestamp = dict(kind="dense", dtype="int64")  # the request time: intervals are from it
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS, embedding_dim=16)
    config.features.item_category = dict(kind="id", num_buckets=NUM_CATEGORIES, embedding_dim=8)
    config.features.recent_item_id = dict(kind="sequence", shares="item_id", max_len=RECENT_LEN)
    config.features.recent_category = dict(kind="sequence", shares="item_category", max_len=RECENT_LEN,
                                           aligned_with="recent_item_id")
    config.features.long_item_id = dict(kind="sequence", shares="item_id", max_len=LIFELONG_LEN)
    config.features.long_category = dict(kind="sequence", shares="item_category", max_len=LIFELONG_LEN,
                                         aligned_with="long_item_id")
    config.features.long_timestamp = dict(kind="sequence", raw=True, max_len=LIFELONG_LEN,
                                          aligned_with="long_item_id")
    config.features.click = dict(kind="label")

    config.model.name = "sim"
    config.model.recent_history = ("recent_item_id", "recent_category")
    config.model.lifelong_history = ("long_item_id", "long_category")
    config.model.lifelong_timestamps = "long_timestamp"
    config.model.request_time = "timestamp"
    config.model.search = "hard"                       # hard | soft (soft needs config.tasks.gsu)
    config.model.hard_search = ("long_category", "item_category")
    config.model.top_k = 50
    config.model.soft_search_dim = 16
    config.model.gsu_task = "gsu"
    config.model.num_heads = 2
    config.model.head_dim = 16
    config.model.time_buckets = 24                     # ⌊log2(1 + Δt / unit)⌋, capped: a minute to years
    config.model.time_embedding_dim = 8
    config.model.time_unit_seconds = 60.0
    config.model.attention_hidden_units = (80, 40)
    config.model.attention_activation = "dice"
    config.model.hidden_units = (128, 64)
    config.model.dropout = 0.0

    config.tasks.score = dict(label="click", metrics=("auc", "gauc", "logloss"), group="user_id")

    config.train.batch_size = 256
    # About one pass over the 117k training rows: longer runs overfit the item embeddings (bench/RESULTS.md).
    config.train.steps = 450
    config.train.steps_per_loop = 150
    config.train.best_metric = "auc"
    return config
