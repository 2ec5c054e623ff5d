"""dien on the sequential simulator (the world of din_simulator.py): interest extractor GRU with the
auxiliary loss, AUGRU interest evolution.

    tfrecsys-simulate --config=configs/dien_simulator.py
    tfrecsys-train    --config=configs/dien_simulator.py --model_dir=runs/dien
    tfrecsys-train    --config=configs/dien_simulator.py --config.model.aux_weight=0 --model_dir=runs/dien_no_aux
    tfrecsys-train    --config=configs/dien_simulator.py --config.model.gru_variant=aigru --model_dir=runs/aigru

The simulator writes no negative history, so the auxiliary loss draws its negatives from the batch's own
behaviours (``model.negative_history`` empty).
"""

import ml_collections

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
din = config_beside(__file__, "din_simulator.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("dien_simulator", data_dir="runs/data/sequential", model_name="dien", family="dien")
    din.sequential_world(config)
    config.model.history = ("hist_item_id", "hist_category")
    config.model.negative_history = ()
    config.model.gru_variant = "augru"
    config.model.aux_weight = 1.0
    config.model.attention_units = (32, 16)
    config.model.attention_activation = "dice"
    config.model.hidden_units = (64, 32)
    config.model.dropout = 0.0
    return config
