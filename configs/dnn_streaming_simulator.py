"""dnn trained in streaming mode on the click-log simulator cut into daily windows (docs/streaming-training.md).

    tfrecsys-simulate --config=configs/dnn_streaming_simulator.py      # runs/data/click_log_stream/window-*.tfrecord
    tfrecsys-train --config=configs/dnn_streaming_simulator.py --model_dir=runs/dnn_streaming

Each day is evaluated with the model of the days before it, then trained on once; the per-day metrics and
their averages are in runs/dnn_streaming/streaming_metrics.json. Rerunning the train command continues after
the last finished day (and picks up days written since).
"""

from tfrecsys.config import config_beside
from tfrecsys.data.simulators.time_windows import WINDOW_FILES, WINDOW_KEY

base = config_beside(__file__, "base.py")
click_log = config_beside(__file__, "dnn_simulator.py")


def get_config():
    config = base.get_config("dnn_streaming_simulator", data_dir="runs/data/click_log_stream",
                             model_name="dnn_streaming", family="dnn")
    # Every window file; window_key's group is a file's window, and windows train in the order of their keys.
    config.data.train_files = WINDOW_FILES
    config.data.window_key = WINDOW_KEY
    # Streaming evaluates each window on its own; these rows only give the export its sample and warmup rows.
    config.data.eval_files = WINDOW_FILES
    # The quickstart's click-log world, 30 days of impressions cut into one window per day (4000 rows each).
    same_world = click_log.get_config()
    config.data.simulator = same_world.data.simulator
    config.data.simulator.kind = "click_log_stream"
    config.data.simulator.window_seconds = 86_400
    config.data.simulator.shards_per_window = 1
    config.features = same_world.features
    config.model = same_world.model
    config.tasks = same_world.tasks

    config.train.mode = "streaming"          # one pass per time window, each evaluated before it is trained on
    config.train.batch_size = 256            # global batch
    config.train.steps_per_execution = 4
    return config
