"""esm2 (impression → click → action → purchase) on the position-bias simulator with its intermediate action
(configs/multitask_datasets.py's simulator world, ``action_rate`` on).

    tfrecsys-simulate --config=configs/esm2_simulator.py
    tfrecsys-train --config=configs/esm2_simulator.py --model_dir=runs/esm2

Labels: ``click``, ``action`` (click and an action such as cart or wish) and ``conversion`` (click and buy).
The position-bias tower's logit is added to the tasks on the click path (ctr, ctavr, ctcvr), never to cvr.
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
datasets = config_beside(__file__, "multitask_datasets.py")


def get_config():
    config = base.get_config("esm2_simulator", data_dir="runs/data/position_bias_actions",
                             model_name="esm2", family="esm2")
    datasets.simulator_world(config)
    config.data.simulator.action_rate = 0.3
    config.features.action = dict(kind="label")
    config.model.backbone = "none"
    config.model.tower_units = (64, 32)
    config.model.dropout = 0.0
    config.model.position_tower.update(datasets.position_tower(("ctr", "ctavr", "ctcvr")))
    config.tasks.ctr = dict(label="click")
    config.tasks.ctavr = dict(label="action")
    config.tasks.cvr = dict(label="conversion", loss=None, mask="click == 1", metrics=("auc",))
    config.tasks.ctcvr = dict(label="conversion")
    config.train.best_metric = "ctr_auc"
    return config
