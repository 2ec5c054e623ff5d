"""dnn trained in streaming mode on the click-log simulator cut into daily windows (docs/streaming-training.md).

    tfrecsys-simulate --config=configs/dnn_streaming_simulator.py      # runs/data/click_log_stream/window-*.tfrecord
    tfrecsys-train --config=configs/dnn_streaming_simulator.py --model_dir=runs/dnn_streaming

Each day is evaluated with the model of the days before it, then trained on once; the per-day metrics and
their averages are in runs/dnn_streaming/streaming_metrics.json. Rerunning the train command continues after
the last finished day (and picks up days written since).
"""

import ml_collections

from tfrecsys.data.simulators.time_windows import WINDOW_FILES, WINDOW_KEY

NUM_USERS = 2000
NUM_ITEMS = 1000
NUM_CATEGORIES = 20
HISTORY_LEN = 20


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "dnn_streaming_simulator"

    config.data = ml_collections.ConfigDict()
    config.data.dir = "runs/data/click_log_stream"
    # Every window file; window_key's group is a file's window, and windows train in the order of their keys.
    config.data.train_files = WINDOW_FILES
    config.data.window_key = WINDOW_KEY
    # Streaming evaluates each window on its own; these rows only give the export its sample and warmup rows.
    config.data.eval_files = WINDOW_FILES
    # 30 days of impressions, one window per day (4000 rows each).
    config.data.simulator = ml_collections.ConfigDict(dict(
        kind="click_log_stream", window_seconds=86_400, shards_per_window=1, num_users=NUM_USERS,
        num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES, num_events=120_000, history_len=50, seed=0))

    config.features = ml_collections.ConfigDict()
    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS, embedding_dim=16)
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS, embedding_dim=16)
    config.features.item_category = dict(kind="id", num_buckets=NUM_CATEGORIES, embedding_dim=8)
    config.features.item_price = dict(kind="dense")
    config.features.user_activity = dict(kind="dense")
    config.features.hist_item_id = dict(kind="sequence", shares="item_id", max_len=HISTORY_LEN)
    config.features.hist_category = dict(kind="sequence", shares="item_category", max_len=HISTORY_LEN,
                                         aligned_with="hist_item_id")
    config.features.click = dict(kind="label")

    config.model = ml_collections.ConfigDict()
    config.model.name = "dnn"
    config.model.hidden_units = (128, 64)
    config.model.dropout = 0.0

    config.tasks = ml_collections.ConfigDict()
    config.tasks.score = dict(label="click", loss="binary_crossentropy", weight=1.0)

    config.train = ml_collections.ConfigDict()
    config.train.mode = "streaming"          # one pass per time window, each evaluated before it is trained on
    config.train.batch_size = 256            # global batch
    config.train.steps_per_execution = 4
    config.train.learning_rate = 0.003
    config.train.optimizer = "adam"
    config.train.eval_batch_size = 2048
    config.train.seed = 42
    config.train.max_checkpoints = 3

    config.export = ml_collections.ConfigDict()
    config.export.model_name = "dnn_streaming"
    config.export.warmup_requests = 8
    return config
