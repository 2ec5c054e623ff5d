"""hstu_ranking on the sequential simulator: the world of din_simulator.py, with every earlier impression and
its action (1 = click, 0 = not) in the history, the interleaved item/action stream HSTU ranks from.

    tfrecsys-simulate --config=configs/hstu_ranking_simulator.py
    tfrecsys-train    --config=configs/hstu_ranking_simulator.py --model_dir=runs/hstu_ranking
    tfrecsys-export   --config=configs/hstu_ranking_simulator.py --model_dir=runs/hstu_ranking --export_base=runs/export

The candidate's timestamp is the row's request time (``timestamp``); ``user_id`` is read for GAUC only
(training_only: the model ranks from the sequence alone, and serving does not send it).
"""

import ml_collections

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
din = config_beside(__file__, "din_simulator.py")

EMBEDDING_DIM = 32


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("hstu_ranking_simulator", data_dir="runs/data/sequential_impressions",
                             model_name="hstu_ranking", family="hstu_ranking")
    din.sequential_world(config)
    config.data.simulator.history = "impressions"
    max_len = config.data.simulator.history_len
    del config.features["item_category"], config.features["hist_category"]
    config.features.user_id = dict(kind="id", num_buckets=din.NUM_USERS, embedding_dim=4, training_only=True)
    config.features.item_id = dict(kind="id", num_buckets=din.NUM_ITEMS, embedding_dim=EMBEDDING_DIM)
    config.features.hist_action = dict(kind="sequence", raw=True, max_len=max_len, aligned_with="hist_item_id")
    config.features.hist_timestamp = dict(kind="sequence", raw=True, aligned_with="hist_item_id", max_len=max_len)
    config.features.timestamp = dict(kind="dense", dtype="int64", default=0)

    config.model.history_feature = "hist_item_id"
    config.model.action_feature = "hist_action"
    config.model.num_actions = 2                  # 0: shown, not clicked; 1: clicked
    config.model.timestamp_feature = "hist_timestamp"
    config.model.candidate_id = "item_id"
    config.model.candidate_timestamp_feature = "timestamp"
    config.model.num_blocks = 2
    config.model.num_heads = 1
    config.model.dropout = 0.1
    config.model.hidden_units = (32,)
    # Also train the tower at every history item, labelled by its own action (clicked: action >= 1).
    config.model.history_labels = {"score": 1}
    config.model.history_weight = 1.0
    # Other HSTULayer arguments; attention_path: padded | xla | jagged (exports take the padded one).
    config.model.hstu.attention_path = "padded"
    config.train.learning_rate = 0.001
    return config
