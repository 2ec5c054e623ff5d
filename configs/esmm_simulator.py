"""esmm on the multi-task simulator: losses on ctr and ctcvr over every impression, none on cvr.

    tfrecsys-simulate --config=configs/esmm_simulator.py
    tfrecsys-train --config=configs/esmm_simulator.py --model_dir=runs/esmm
    tfrecsys-train --config=configs/esmm_simulator.py --config.model.backbone=mmoe   # ESMM towers on MMoE

The simulator's ``conversion`` label is click-and-convert, the CTCVR label; ``cvr`` is measured against it
over clicked rows only, where it is the conversion of the click.
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_simulator.py")


def get_config():
    config = base.get_config("esmm_simulator", data_dir="runs/data/multitask", model_name="esmm")
    world.multitask_world(config)
    config.model.name = "esmm"
    config.model.backbone = "none"      # none | shared_bottom | mmoe | ple (with that backbone's keys below)
    config.model.num_experts = 4
    config.model.expert_units = (64,)
    config.model.tower_units = (64, 32)
    config.model.dropout = 0.0
    config.tasks.ctr = dict(label="click")
    config.tasks.cvr = dict(label="conversion", loss=None, mask="click == 1", metrics=("auc", "calibration"))
    config.tasks.ctcvr = dict(label="conversion")
    return config
