"""shared_bottom on AliExpress: the shared-bottom baseline; data, features and tasks of configs/mmoe_aliexpress.py.

    tfrecsys-preprocess --config=configs/shared_bottom_aliexpress.py
    tfrecsys-train      --config=configs/shared_bottom_aliexpress.py --model_dir=runs/shared_bottom_aliexpress
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_aliexpress.py")


def get_config():
    config = base.get_config("shared_bottom_aliexpress", data_dir="runs/data/aliexpress",
                             model_name="shared_bottom_aliexpress")
    world.aliexpress_world(config)
    config.model.name = "shared_bottom"
    config.model.bottom_units = (128, 64)
    return config
