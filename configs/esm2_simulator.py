"""esm2 (impression → click → action → purchase) on the multi-task simulator with its intermediate action.

    tfrecsys-simulate --config=configs/esm2_simulator.py
    tfrecsys-train --config=configs/esm2_simulator.py --model_dir=runs/esm2

Labels: ``click``, ``action`` (click and an action such as cart or wish) and ``conversion`` (click and buy).
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
world = config_beside(__file__, "mmoe_simulator.py")


def get_config():
    config = base.get_config("esm2_simulator", data_dir="runs/data/multitask_actions", model_name="esm2")
    world.multitask_world(config)
    config.data.simulator.action_rate = 0.3
    config.features.action = dict(kind="label")
    config.model.name = "esm2"
    config.model.backbone = "none"
    config.model.tower_units = (64, 32)
    config.model.dropout = 0.0
    config.tasks.ctr = dict(label="click")
    config.tasks.ctavr = dict(label="action")
    config.tasks.cvr = dict(label="conversion", loss=None, mask="click == 1", metrics=("auc",))
    config.tasks.ctcvr = dict(label="conversion")
    return config
