"""shared_bottom on Ali-CCP: the shared-bottom baseline; data, features and tasks of configs/mmoe_ali_ccp.py.

    tfrecsys-preprocess --config=configs/shared_bottom_ali_ccp.py
    tfrecsys-train      --config=configs/shared_bottom_ali_ccp.py --model_dir=runs/shared_bottom_ali_ccp
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_ali_ccp.py")


def get_config():
    config = base.get_config("shared_bottom_ali_ccp", data_dir="runs/data/ali_ccp", model_name="shared_bottom_ali_ccp")
    world.ali_ccp_world(config)
    config.model.name = "shared_bottom"
    config.model.bottom_units = (128, 64)
    return config
