"""tfrecsys-train: train the config's model, with checkpoints, TensorBoard logs and eval metrics.

    tfrecsys-train --config=configs/dnn_simulator.py --model_dir=runs/dnn [--config.train.steps=1000]

Re-running with the same --model_dir resumes from its newest checkpoint. Under TF_CONFIG with several
workers it trains with MultiWorkerMirroredStrategy; config.train.batch_size is always the global batch.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from tfrecsys.cli.common import run_binary

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py): features, model, tasks, data and train settings. "
    "Any field can be overridden, e.g. --config.train.batch_size=256 --config.data.dir=/data/click_log.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Run directory: checkpoints/ (resumed on restart), logs/ (TensorBoard) and "
    "eval_metrics.json are written here.")
_COLLECTIVE = flags.DEFINE_enum(
    "collective", "RING", ["RING", "NCCL", "AUTO"],
    "Collective implementation for multi-worker training (used only when TF_CONFIG names several workers): "
    "RING on CPUs, NCCL on GPUs, AUTO lets TensorFlow choose.")
flags.mark_flags_as_required(["config", "model_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # The strategy must exist before any other TensorFlow op (MultiWorkerMirroredStrategy requirement).
    from tfrecsys.train.strategy import strategy_from_environment

    strategy = strategy_from_environment(_COLLECTIVE.value)
    from tfrecsys.train.loop import train_and_evaluate

    metrics = train_and_evaluate(_CONFIG.value, _MODEL_DIR.value, strategy=strategy)
    print(f"eval metrics: {json.dumps(metrics)}")


def run():
    run_binary("tfrecsys-train", __name__, __doc__, main)


if __name__ == "__main__":
    run()
