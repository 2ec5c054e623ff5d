"""The mean-pooling baseline of DIN and DIEN on the sequential simulator: the dnn family, whose histories are
mean-pooled under their mask, over the world and features of din_simulator.py.

    tfrecsys-simulate --config=configs/mean_pooling_simulator.py
    tfrecsys-train    --config=configs/mean_pooling_simulator.py --model_dir=runs/mean_pooling
"""

import ml_collections

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
din = config_beside(__file__, "din_simulator.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("mean_pooling_simulator", data_dir="runs/data/sequential",
                             model_name="mean_pooling", family="dnn")
    din.sequential_world(config)
    config.model.hidden_units = (64, 32)
    config.model.dropout = 0.0
    return config
