"""ple on Ali-CCP: two extraction levels, two shared and one task-specific expert per level;
data, features and tasks of configs/mmoe_ali_ccp.py.

    tfrecsys-preprocess --config=configs/ple_ali_ccp.py
    tfrecsys-train      --config=configs/ple_ali_ccp.py --model_dir=runs/ple_ali_ccp
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_ali_ccp.py")


def get_config():
    config = base.get_config("ple_ali_ccp", data_dir="runs/data/ali_ccp", model_name="ple_ali_ccp")
    world.ali_ccp_world(config)
    config.model.name = "ple"
    config.model.num_levels = 2
    config.model.shared_experts = 2
    config.model.task_experts = 1
    config.model.expert_units = (128, 64)
    return config
