"""shared_bottom on Census-Income (KDD): the baseline of configs/mmoe_census.py, same data and tasks.

    tfrecsys-preprocess --config=configs/shared_bottom_census.py
    tfrecsys-train      --config=configs/shared_bottom_census.py --model_dir=runs/shared_bottom_census
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
census = config_beside(__file__, "mmoe_census.py")


def get_config():
    config = base.get_config("shared_bottom_census", data_dir="runs/data/census", model_name="shared_bottom_census")
    census.census_world(config)
    config.model.name = "shared_bottom"
    config.model.bottom_units = (256, 128)
    return config
