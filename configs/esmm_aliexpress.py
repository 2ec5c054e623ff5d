"""esmm on AliExpress: losses on ctr and ctcvr over every impression, cvr measured over clicks;
data, features and tasks of configs/mmoe_aliexpress.py.

    tfrecsys-preprocess --config=configs/esmm_aliexpress.py
    tfrecsys-train      --config=configs/esmm_aliexpress.py --model_dir=runs/esmm_aliexpress
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_aliexpress.py")


def get_config():
    config = base.get_config("esmm_aliexpress", data_dir="runs/data/aliexpress", model_name="esmm_aliexpress")
    world.aliexpress_world(config)
    config.model.name = "esmm"
    config.model.backbone = "none"
    config.model.tower_units = (128, 64)
    config.tasks.cvr = dict(label="conversion", loss=None, mask="click == 1", metrics=("auc",))
    config.tasks.ctcvr = dict(label="conversion")   # a conversion implies a click: it is the CTCVR label
    return config
