"""ple on AliExpress: two extraction levels, two shared and one task-specific expert per level;
data, features and tasks of configs/mmoe_aliexpress.py.

    tfrecsys-preprocess --config=configs/ple_aliexpress.py
    tfrecsys-train      --config=configs/ple_aliexpress.py --model_dir=runs/ple_aliexpress
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_aliexpress.py")


def get_config():
    config = base.get_config("ple_aliexpress", data_dir="runs/data/aliexpress", model_name="ple_aliexpress")
    world.aliexpress_world(config)
    config.model.name = "ple"
    config.model.num_levels = 2
    config.model.shared_experts = 2
    config.model.task_experts = 1
    config.model.expert_units = (128, 64)
    return config
