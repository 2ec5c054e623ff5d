"""The mean-pooling baseline of DIN and DIEN on Taobao UserBehavior: the dnn family, whose histories are
mean-pooled under their mask, over the protocol, data and features of din_taobao.py.

    tfrecsys-preprocess --config=configs/mean_pooling_taobao.py   # the same output as din_taobao.py's
    tfrecsys-train      --config=configs/mean_pooling_taobao.py --model_dir=runs/mean_pooling_taobao

The negative histories the output carries are training-only and DIEN's alone: the dnn reads serving
features only. Sizes as the peer benchmark's WDL baseline (bench/bench_sequence_peers.py): DNN (256, 128, 64).
"""

import ml_collections

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
din = config_beside(__file__, "din_taobao.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("mean_pooling_taobao", data_dir="runs/data/taobao",
                             model_name="mean_pooling_taobao", family="dnn")
    din.taobao_world(config, epochs=1)  # validation AUC after 1 / 2 epochs: 0.749 / 0.743
    config.model.hidden_units = (256, 128, 64)
    config.model.dropout = 0.0
    return config
