"""esmm with a shallow position-bias tower on the position-bias simulator, which also has correlated
conversions over every impression (issue 13).

    tfrecsys-simulate --config=configs/esmm_position_bias_simulator.py
    tfrecsys-train    --config=configs/esmm_position_bias_simulator.py --model_dir=runs/esmm_position_bias
    tfrecsys-train    --config=configs/esmm_position_bias_simulator.py --config.model.backbone=mmoe \
                      --config.train.loss_weighting.kind=uncertainty

The tower's logit is added to ctr and to ctcvr (a conversion needs a click, so the position that made the
click likelier makes click-and-convert likelier too) and never to cvr, the post-click task: this choice is
ours, the papers do not cover it. Serving gives ctr, cvr and ctcvr debiased.
"""

import ml_collections

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "dnn_position_bias_simulator.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("esmm_position_bias_simulator", data_dir="runs/data/position_bias",
                             model_name="esmm")
    world.position_world(config)
    config.model.name = "esmm"
    config.model.backbone = "none"      # none | shared_bottom | mmoe | ple (with that backbone's keys below)
    config.model.num_experts = 4
    config.model.expert_units = (64,)
    config.model.tower_units = (64, 32)
    config.model.dropout = 0.0
    config.model.position_tower = ml_collections.ConfigDict(dict(
        tasks=("ctr", "ctcvr"), features=("position", "device"), hidden_units=(16,), position_dropout=0.1))
    config.tasks.ctr = dict(label="click")
    config.tasks.cvr = dict(label="conversion", loss=None, mask="click == 1", metrics=("auc", "calibration"))
    config.tasks.ctcvr = dict(label="conversion")
    config.train.best_metric = "ctr_auc"
    return config
