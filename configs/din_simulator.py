"""din on the sequential simulator: target attention over a click history whose relevant part drifts.

    tfrecsys-simulate --config=configs/din_simulator.py
    tfrecsys-train    --config=configs/din_simulator.py --model_dir=runs/din

The world (``tfrecsys.data.simulators.sequential``): each user clicks mostly in a current interest category
that drifts between long-term interests; a candidate of the current category is clicked most. The same world
and features serve ``mean_pooling_simulator.py`` (the baseline) and ``dien_simulator.py``.
"""

import ml_collections

from tfrecsys.config import config_beside

NUM_USERS = 2000
NUM_ITEMS = 2000
NUM_CATEGORIES = 40
HISTORY_LEN = 30

base = config_beside(__file__, "base.py")


def sequential_world(config: ml_collections.ConfigDict) -> None:
    """The simulator block, the features and the task every behaviour-sequence config of this world shares."""
    config.data.simulator = ml_collections.ConfigDict(dict(
        kind="sequential", num_users=NUM_USERS, num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
        events_per_user=120, history_len=HISTORY_LEN, seed=0))
    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS, embedding_dim=8)
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS, embedding_dim=12)
    config.features.item_category = dict(kind="id", num_buckets=NUM_CATEGORIES, embedding_dim=4)
    config.features.hist_item_id = dict(kind="sequence", shares="item_id", max_len=HISTORY_LEN)
    config.features.hist_category = dict(kind="sequence", shares="item_category", max_len=HISTORY_LEN,
                                         aligned_with="hist_item_id")
    config.features.click = dict(kind="label")
    config.tasks.score = dict(label="click", metrics=("auc", "logloss", "gauc"), group="user_id")
    config.train.steps = 1500
    config.train.steps_per_loop = 500
    config.train.batch_size = 256
    config.train.learning_rate = 0.002


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("din_simulator", data_dir="runs/data/sequential", model_name="din", family="din")
    sequential_world(config)
    config.model.history = ("hist_item_id", "hist_category")
    config.model.attention_units = (32, 16)
    config.model.attention_activation = "dice"
    config.model.hidden_units = (64, 32)
    config.model.dropout = 0.0
    config.model.mba_l2 = 0.0
    return config
