"""docs/adding-a-model.md: its worked example is the shipped logistic_regression file, short, and it trains."""

import json
import os
import re

from tests.serving_dnn import REPO
from tfrecsys.config import load_config
from tfrecsys.data.simulators import write_from_config
from tfrecsys.train.loop import train_and_evaluate

DOC = os.path.join(REPO, "docs", "adding-a-model.md")
MODEL_FILE = os.path.join(REPO, "tfrecsys", "models", "logistic_regression.py")
CONFIG = os.path.join(REPO, "configs", "logistic_regression_simulator.py")


def test_the_worked_example_is_the_model_file_and_under_40_lines():
    blocks = re.findall(r"```python\n(.*?)```", open(DOC).read(), re.S)
    assert blocks[0] == open(MODEL_FILE).read(), "docs/adding-a-model.md step 1 must show the model file as it is"
    assert len(blocks[0].splitlines()) < 40


def test_the_worked_example_trains_and_beats_chance(tmp_path):
    config = load_config(CONFIG, {"data.dir": str(tmp_path / "data"), "data.simulator.num_events": 30_000,
                                  "train.steps": 200, "train.steps_per_loop": 200})
    write_from_config(config.data.simulator, config.data.dir)
    metrics = train_and_evaluate(config, str(tmp_path / "model"), verbose=0)
    assert metrics["score"]["auc"] > 0.65, metrics
    assert 0.75 < metrics["score"]["calibration"] < 1.25, metrics
    with open(tmp_path / "model" / "eval_metrics.json") as f:
        assert json.load(f)["score"]["auc"] == metrics["score"]["auc"]
