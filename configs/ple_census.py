"""ple on Census-Income (KDD): two extraction levels, one shared and one task-specific expert per level.

    tfrecsys-preprocess --config=configs/ple_census.py
    tfrecsys-train      --config=configs/ple_census.py --model_dir=runs/ple_census
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
census = config_beside(__file__, "mmoe_census.py")


def get_config():
    config = base.get_config("ple_census", data_dir="runs/data/census", model_name="ple_census")
    census.census_world(config)
    config.model.name = "ple"
    config.model.num_levels = 2
    config.model.shared_experts = 1
    config.model.task_experts = 1
    config.model.expert_units = (256,)
    return config
