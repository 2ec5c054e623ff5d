"""ple (two CGC extraction levels, shared and task-specific experts) on the multi-task simulator.

    tfrecsys-simulate --config=configs/ple_simulator.py
    tfrecsys-train --config=configs/ple_simulator.py --model_dir=runs/ple
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_simulator.py")


def get_config():
    config = base.get_config("ple_simulator", data_dir="runs/data/multitask", model_name="ple")
    world.multitask_world(config)
    config.model.name = "ple"
    config.model.num_levels = 2
    config.model.shared_experts = 2
    config.model.task_experts = 1
    config.model.expert_units = (64,)
    config.model.tower_units = (32,)
    config.model.dropout = 0.0
    config.tasks.ctr = dict(label="click")
    config.tasks.cvr = dict(label="conversion", mask="click == 1")
    return config
