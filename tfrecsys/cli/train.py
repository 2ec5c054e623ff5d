"""tfrecsys-train: train the config's model, with checkpoints, TensorBoard logs and eval metrics.

    tfrecsys-train --config=configs/dnn_simulator.py --model_dir=runs/dnn [--config.train.steps=1000]

Re-running with the same --model_dir resumes from its newest checkpoint (Ctrl-C stops cleanly after the
running step: exit status 130, and the same command resumes from that step). At the end the chief writes the
run report, <model_dir>/report/index.html (tfrecsys-report). With config.train.mode=streaming it trains time
windows in order, evaluating each before training on it, and resumes after the last finished window
(docs/streaming-training.md).

Under TF_CONFIG with several workers it trains with MultiWorkerMirroredStrategy (every worker runs this
binary with the same flags; tfrecsys-launch starts such a cluster on one machine); config.train.batch_size is
always the global batch.
A restarted worker resumes, with the others, from the last backup in <model_dir>/backup.
See docs/distributed-training.md.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from tfrecsys.cli.common import run_binary

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py): features, model, tasks, data and train settings. "
    "Any field can be overridden, e.g. --config.train.batch_size=256 --config.data.dir=/data/click_log.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Run directory: checkpoints/ (resumed on restart), best/ (the best checkpoint by "
    "config.train.best_metric), logs/ (TensorBoard, training and eval curves), eval_metrics.json and report/ "
    "(the run report) are written here (streaming mode: checkpoints/ and streaming_metrics.json).")
_COLLECTIVE = flags.DEFINE_enum(
    "collective", "RING", ["RING", "NCCL", "AUTO"],
    "Collective implementation for multi-worker training (used only when TF_CONFIG names several workers): "
    "RING on CPUs, NCCL on GPUs, AUTO lets TensorFlow choose.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "none", ["none", "mixed_float16", "mixed_bfloat16"],
    "Compute precision: none (float32); mixed_float16 (float16 compute, float32 variables, dynamic loss "
    "scaling: NVIDIA GPUs with tensor cores); mixed_bfloat16 (bfloat16 compute, float32 variables: TPUs, "
    "Ampere and later GPUs, recent CPUs). Outputs and losses stay float32; exports are float32.")
_JIT_COMPILE = flags.DEFINE_bool(
    "jit_compile", False, "XLA-compile the train and eval steps (fuses ops; fastest on GPUs). The model's "
    "in-graph preprocessing must be XLA-compatible: string vocabularies and hashing are not.")
_CONNECT_TIMEOUT_S = flags.DEFINE_float(
    "connect_timeout_s", 300.0, "Multi-worker only: seconds a worker waits for every worker of TF_CONFIG to "
    "connect before it exits with an error naming the addresses.", lower_bound=1.0)
_HEARTBEAT_TIMEOUT_S = flags.DEFINE_float(
    "heartbeat_timeout_s", 30.0, "Multi-worker only: seconds without a heartbeat after which a worker counts "
    "as dead and the others fail (to be restarted from the last backup) instead of waiting forever in a "
    "collective.", lower_bound=1.0)
_EXPORT_BASE = flags.DEFINE_string(
    "export_base", None, "If set, the chief exports the trained model to <export_base>/<model_name>/<version>/ "
    "after training (atomically, as tfrecsys-export does); other workers write nothing there.")
flags.mark_flags_as_required(["config", "model_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # The strategy must exist before any other TensorFlow op (MultiWorkerMirroredStrategy requirement).
    from tfrecsys.train.strategy import strategy_from_environment

    strategy = strategy_from_environment(_COLLECTIVE.value, connect_timeout_s=_CONNECT_TIMEOUT_S.value,
                                         heartbeat_timeout_s=_HEARTBEAT_TIMEOUT_S.value)
    from tfrecsys.train.loop import train_and_evaluate

    metrics = train_and_evaluate(_CONFIG.value, _MODEL_DIR.value, strategy=strategy,
                                 mixed_precision=_MIXED_PRECISION.value, jit_compile=_JIT_COMPILE.value)
    print(f"eval metrics: {json.dumps(metrics)}")
    from tfrecsys.train.strategy import is_chief

    if is_chief():
        from tfrecsys.report import write_calibration, write_report

        write_calibration(_CONFIG.value, _MODEL_DIR.value)
        print(f"report: {write_report(_MODEL_DIR.value)}")
    if _EXPORT_BASE.value:
        from tfrecsys.export.trained import export_trained

        path = export_trained(_CONFIG.value, _MODEL_DIR.value, _EXPORT_BASE.value)
        if path:
            print(f"exported SavedModel to {path}")


def run():
    run_binary("tfrecsys-train", __name__, __doc__, main)


if __name__ == "__main__":
    run()
