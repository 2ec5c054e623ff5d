"""tfrecsys-simulate: write the config's simulated data as TFRecord shards, with its ground truth.

    tfrecsys-simulate --config=configs/dnn_simulator.py [--output_dir=runs/data/click_log]
    tfrecsys-simulate --config=configs/two_tower_simulator.py    # retrieval: also candidates and item frequencies

The config's data.simulator.kind picks the simulator (click_log, retrieval, sequential, sequential_next_item,
position_bias, delayed_feedback, and the time-windowed click_log_stream and delayed_feedback_stream;
tfrecsys/data/simulators), click_log when absent.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from tfrecsys.cli.common import run_binary

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py); its data.simulator block picks the simulator "
    "(kind: click_log, retrieval, sequential, sequential_next_item, position_bias, delayed_feedback, "
    "click_log_stream, delayed_feedback_stream) "
    "and sets the world (users, items, events, seed), data.dir the default output directory. Fields can be overridden, "
    "e.g. --config.data.simulator.num_events=50000.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Directory for the TFRecord shards (train-*/eval-*; the stream kinds: one file per time "
    "window), metadata.json and ground_truth.npz (retrieval: also candidates.tfrecord and item_frequency.tsv; "
    "default: the config's data.dir).")
flags.mark_flag_as_required("config")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfrecsys.data.simulators import write_from_config

    config = _CONFIG.value
    output_dir = _OUTPUT_DIR.value or config.data.dir
    # data.simulator.kind picks the simulator (tfrecsys/data/simulators); the click log when absent.
    metadata = write_from_config(config.data.simulator, output_dir)
    summary = {k: v for k, v in metadata.items() if k in ("train_rows", "eval_rows", "rows") or k.endswith(("_rate", "auc"))}
    print(f"wrote simulated {metadata['simulator'].replace('_', ' ')} to {output_dir}: {json.dumps(summary)}")


def run():
    run_binary("tfrecsys-simulate", __name__, __doc__, main)


if __name__ == "__main__":
    run()
