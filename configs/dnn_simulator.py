"""dnn (embeddings + MLP) on the click-log simulator: the quickstart experiment.

    tfrecsys-train --config=configs/dnn_simulator.py --model_dir=runs/dnn
    tfrecsys-train --config=configs/dnn_simulator.py --config.train.steps=1000 --config.model.hidden_units='(256, 128)'
"""

import ml_collections

NUM_USERS = 2000
NUM_ITEMS = 1000
NUM_CATEGORIES = 20
HISTORY_LEN = 20


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "dnn_simulator"

    config.data = ml_collections.ConfigDict()
    # Where `tfrecsys-simulate --config=...` writes and training reads; a relative path is taken from the
    # working directory.
    config.data.dir = "runs/data/click_log"
    config.data.train_files = "train-*.tfrecord"
    config.data.eval_files = "eval-*.tfrecord"
    config.data.simulator = ml_collections.ConfigDict(dict(
        num_users=NUM_USERS, num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES, num_events=120_000,
        history_len=50, seed=0))

    # One schema for parsing, embeddings and the serving signature (tfrecsys/features/schema.py).
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

    # Output name -> label, loss and weight; every model family reads the same block.
    config.tasks = ml_collections.ConfigDict()
    config.tasks.score = dict(label="click", loss="binary_crossentropy", weight=1.0)

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 512            # global batch: split across replicas under a strategy
    config.train.steps = 400
    config.train.steps_per_loop = 100        # steps between checkpoints / progress summaries
    config.train.steps_per_execution = 20    # steps per tf.function call: fewer Python round trips on CPU
    config.train.learning_rate = 0.003
    config.train.optimizer = "adam"
    config.train.shuffle_buffer = 20_000
    config.train.eval_batch_size = 2048
    config.train.eval_steps = 0              # 0: the whole eval split
    config.train.seed = 42
    config.train.max_checkpoints = 3
    config.train.eval_every_loop = 1         # evaluate after every N-th loop (TensorBoard val curves); 0: only at the end
    config.train.best_metric = "auc"         # keep <model_dir>/best/ by this eval metric ("": no best checkpoint)
    config.train.early_stopping_patience = 0 # stop after N evaluations without a better best_metric; 0: never

    config.export = ml_collections.ConfigDict()
    config.export.model_name = "dnn"
    config.export.warmup_requests = 8
    return config
