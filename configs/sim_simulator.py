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
    config = base.get_config("sim_simulator", data_dir="runs/data/sequential_lifelong", model_name="sim",
                             family="sim")

    config.data.simulator = ml_collections.ConfigDict(dict(
        kind="sequential", num_users=NUM_USERS, num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
        events_per_user=2400, long_term_interests=4, drift_rate=0.004, explore_rate=0.1, relevant_exposure=0.5,
        current_boost=2.0, long_term_boost=1.5, target_ctr=0.12, lifelong_store=True, warmup_events=800,
        row_fraction=0.2, seed=0))
    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS, training_only=True)
    config.features.timestamp = dict(kind="dense", dtype="int64")  # the request time: intervals are from it
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS, embedding_dim=16)
    config.features.item_category = dict(kind="id", num_buckets=NUM_CATEGORIES, embedding_dim=8)
    lifelong_ranker(config, category="category", item_category="item_category", recent_len=RECENT_LEN,
                    lifelong_len=LIFELONG_LEN)
    config.model.soft_search_dim = 16
    config.model.gsu_task = "gsu"
    # About one pass over the 117k training rows: longer runs overfit the item embeddings (bench/RESULTS.md).
    config.train.steps = 450
    config.train.steps_per_loop = 150
    config.train.best_metric = "auc"
    return config


def lifelong_ranker(config: ml_collections.ConfigDict, *, category: str, item_category: str, recent_len: int,
                    lifelong_len: int) -> None:
    """What every sim config shares, after its user, time, item and ``item_category`` features: the
    per-user store (``user_histories.parquet``: ``item_id``, ``category``, ``timestamp``) cut into the recent
    ``recent_item_id`` / ``recent_<category>`` and lifelong ``long_*`` sequences, the click label, the sim
    model with hard search on the candidate's category and its GAUC-grouped task."""
    config.data.user_histories = ml_collections.ConfigDict(dict(
        file="user_histories.parquet", user_feature="user_id", time_feature="timestamp",
        sequences={"recent_item_id": "item_id", f"recent_{category}": category,
                   "long_item_id": "item_id", f"long_{category}": category, "long_timestamp": "timestamp"}))
    features = config.features
    features.recent_item_id = dict(kind="sequence", shares="item_id", max_len=recent_len)
    features[f"recent_{category}"] = dict(kind="sequence", shares=item_category, max_len=recent_len,
                                          aligned_with="recent_item_id")
    features.long_item_id = dict(kind="sequence", shares="item_id", max_len=lifelong_len)
    features[f"long_{category}"] = dict(kind="sequence", shares=item_category, max_len=lifelong_len,
                                        aligned_with="long_item_id")
    features.long_timestamp = dict(kind="sequence", raw=True, max_len=lifelong_len, aligned_with="long_item_id")
    features.click = dict(kind="label")

    model = config.model
    model.recent_history = ("recent_item_id", f"recent_{category}")
    model.lifelong_history = ("long_item_id", f"long_{category}")
    model.lifelong_timestamps = "long_timestamp"
    model.request_time = "timestamp"
    model.search = "hard"                       # hard | soft (soft needs a gsu task and soft_search_dim)
    model.hard_search = (f"long_{category}", item_category)
    model.top_k = 50
    model.num_heads = 2
    model.head_dim = 16
    model.time_buckets = 24                     # ⌊log2(1 + Δt / unit)⌋, capped: a minute to years
    model.time_embedding_dim = 8
    model.time_unit_seconds = 60.0
    model.attention_hidden_units = (80, 40)
    model.attention_activation = "dice"
    model.hidden_units = (128, 64)
    model.dropout = 0.0

    config.tasks.score = dict(label="click", metrics=("auc", "gauc", "logloss"), group="user_id")
    config.train.batch_size = 256
