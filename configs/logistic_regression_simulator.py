"""logistic_regression on the click-log simulator: the linear baseline, and the model of docs/adding-a-model.md.

    tfrecsys-simulate --config=configs/logistic_regression_simulator.py
    tfrecsys-train --config=configs/logistic_regression_simulator.py --model_dir=runs/lr
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
click_log = config_beside(__file__, "dnn_simulator.py")


def get_config():
    config = base.get_config("logistic_regression_simulator", data_dir="runs/data/click_log",
                             model_name="logistic_regression", family="logistic_regression")
    same_world = click_log.get_config()
    config.data.simulator = same_world.data.simulator
    config.features = same_world.features
    config.tasks.score = dict(label="click", metrics=("auc", "logloss", "calibration"))
    config.train.steps = 400
    return config
