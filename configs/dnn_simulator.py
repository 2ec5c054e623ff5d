"""dnn (embeddings + MLP) on the click-log simulator: the quickstart experiment.

    tfrecsys-train --config=configs/dnn_simulator.py --model_dir=runs/dnn
    tfrecsys-train --config=configs/dnn_simulator.py --config.train.steps=1000 --config.model.hidden_units='(256, 128)'
"""

import ml_collections

from tfrecsys.config import config_beside

NUM_USERS = 2000
NUM_ITEMS = 1000
NUM_CATEGORIES = 20
HISTORY_LEN = 20

base = config_beside(__file__, "base.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("dnn_simulator", data_dir="runs/data/click_log",
                             model_name="dnn", family="dnn")

    config.data.simulator = ml_collections.ConfigDict(dict(
        num_users=NUM_USERS, num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES, num_events=120_000,
        history_len=50, seed=0))

    # One schema for parsing, embeddings and the serving signature (tfrecsys/features/schema.py).
    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS, embedding_dim=16)
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS, embedding_dim=16)
    config.features.item_category = dict(kind="id", num_buckets=NUM_CATEGORIES, embedding_dim=8)
    config.features.item_price = dict(kind="dense")
    config.features.user_activity = dict(kind="dense")
    config.features.hist_item_id = dict(kind="sequence", shares="item_id", max_len=HISTORY_LEN)
    config.features.hist_category = dict(kind="sequence", shares="item_category", max_len=HISTORY_LEN,
                                         aligned_with="hist_item_id")
    config.features.click = dict(kind="label")

    config.model.hidden_units = (128, 64)
    config.model.dropout = 0.0

    config.tasks.score = dict(label="click", loss="binary_crossentropy", weight=1.0)

    config.train.steps = 400

    return config
