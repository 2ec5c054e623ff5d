"""esmm on Ali-CCP: losses on ctr and ctcvr over every impression, cvr measured over clicks;
data, features and tasks of configs/mmoe_ali_ccp.py.

    tfrecsys-preprocess --config=configs/esmm_ali_ccp.py
    tfrecsys-train      --config=configs/esmm_ali_ccp.py --model_dir=runs/esmm_ali_ccp
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_ali_ccp.py")


def get_config():
    config = base.get_config("esmm_ali_ccp", data_dir="runs/data/ali_ccp", model_name="esmm_ali_ccp")
    world.ali_ccp_world(config)
    config.model.name = "esmm"
    config.model.backbone = "none"
    config.model.tower_units = (128, 64)
    config.tasks.cvr = dict(label="purchase", loss=None, mask="click == 1", metrics=("auc",))
    config.tasks.ctcvr = dict(label="purchase")   # a purchase implies a click: it is the CTCVR label
    return config
