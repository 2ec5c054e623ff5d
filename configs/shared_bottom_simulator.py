"""shared_bottom (one shared MLP, a tower per task) on the multi-task simulator: the baseline of MMoE/PLE.

    tfrecsys-simulate --config=configs/shared_bottom_simulator.py
    tfrecsys-train --config=configs/shared_bottom_simulator.py --model_dir=runs/shared_bottom
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_simulator.py")


def get_config():
    config = base.get_config("shared_bottom_simulator", data_dir="runs/data/multitask", model_name="shared_bottom")
    world.multitask_world(config)
    config.model.name = "shared_bottom"
    config.model.bottom_units = (64,)
    config.model.tower_units = (32,)
    config.model.dropout = 0.0
    config.tasks.ctr = dict(label="click")
    config.tasks.cvr = dict(label="conversion", mask="click == 1")
    return config
