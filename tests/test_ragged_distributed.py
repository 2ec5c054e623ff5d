"""Ragged training input (``config.data.ragged``) under MirroredStrategy over two logical CPUs.

With ragged sequences the replicas' sparse embedding gradients differ in length, and TF 2.16's all-gather of
them fails inside a multi-step call (``steps_per_execution`` > 1): the train loop refuses that setting at
once, naming the way out (``tfrecsys.train.strategy.check_ragged_input``), and with one step per call DIN
trains on ragged input on two replicas. Logical devices must be set before TensorFlow starts, so the checks
run in a fresh process (``python -m tests.test_ragged_distributed <output.json>``), as in
tests/test_families_distributed.py.
"""

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
SMALL_DIN = {"model.attention_units": (8,), "model.hidden_units": (8,), "train.steps": 20,
             "train.steps_per_loop": 20, "train.batch_size": 64, "train.eval_batch_size": 256}


def _din_config(root: str, **overrides):
    from tfrecsys.config import load_config

    config = load_config(os.path.join(REPO, "configs", "din_simulator.py"),
                         {"data.dir": os.path.join(root, "data"), **SMALL_DIN, **overrides})
    with config.unlocked():
        config.data.ragged = True
    return config


def _checks(root: str) -> dict:
    from tests.test_families_distributed import _two_replicas

    two = _two_replicas()
    from tfrecsys.data.simulators import write_from_config
    from tfrecsys.train.loop import train_and_evaluate

    result = {}
    try:  # refused before any data is read
        train_and_evaluate(_din_config(os.path.join(root, "none")), os.path.join(root, "refused"), strategy=two,
                           verbose=0)
        result["refused"] = ""
    except ValueError as error:
        result["refused"] = str(error)
    config = _din_config(root, **{"train.steps_per_execution": 1})
    simulator = config.data.simulator
    simulator.num_users, simulator.num_items, simulator.events_per_user = 200, 200, 40
    write_from_config(simulator, config.data.dir)
    metrics = train_and_evaluate(config, os.path.join(root, "model"), strategy=two, verbose=0)
    result["metrics"] = {"loss": metrics["loss"], "auc": metrics["score"]["auc"]}
    return result


def main(argv):
    output = argv[1]
    import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow loads; no op runs before the devices are set)

    result = _checks(os.path.dirname(os.path.abspath(output)))
    with open(output, "w") as f:
        json.dump(result, f, indent=1)


def test_ragged_input_on_two_replicas_is_refused_with_multi_step_calls_and_trains_with_one(tmp_path):
    output = tmp_path / "result.json"
    process = subprocess.run([sys.executable, "-m", "tests.test_ragged_distributed", str(output)], cwd=REPO,
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    assert process.returncode == 0, process.stderr[-6000:]
    result = json.loads(output.read_text())
    assert result["refused"].startswith("config.data.ragged with 2 replicas needs config.train.steps_per_execution=1")
    assert np.isfinite(result["metrics"]["loss"]) and 0.0 < result["metrics"]["auc"] <= 1.0, result


if __name__ == "__main__":
    main(sys.argv)
