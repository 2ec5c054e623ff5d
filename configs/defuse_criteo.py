"""DEFUSE (or a baseline) in streaming mode on the Criteo Conversion Logs (Chapelle, KDD 2014), for users who
have ``data.txt`` (data/criteo-conversion-logs.md; never copied into the repository).

    tfrecsys-preprocess --config=configs/defuse_criteo.py:defuse    # the method's stream, Beam
    tfrecsys-train --config=configs/defuse_criteo.py:defuse --model_dir=runs/defuse_criteo

The protocol of the DEFUSE reference code: the first 30 days pretrain (their labels are final), then hour by
hour each hour's clicks are scored with their final labels and the model trains on the rows that hour
emitted; w_o = 1 hour and w_a = 7 days by default
(``--config.delayed_feedback_stream.observation_window_seconds``, ``...attribution_window_seconds``).
"""

import ml_collections

from tfrecsys.config import config_beside
from tfrecsys.data.readers.criteo import CONVERSION_CATEGORICALS, CONVERSION_INTEGERS

base = config_beside(__file__, "base.py")
simulator = config_beside(__file__, "defuse_simulator.py")

HOUR, DAY = 3600, 86_400
PRETRAIN_DAYS = 30


def get_config(method: str = "defuse") -> ml_collections.ConfigDict:
    method = method or "defuse"
    world = simulator.get_config(method)  # the method's tasks and model, checked there
    method = world.model.method  # a variant (defuse_z2) reads its method's stream
    config = base.get_config("defuse_criteo", data_dir=f"runs/data/criteo_conversion_stream_{method}",
                             model_name="defuse_criteo", family="defuse")
    config.data.train_files = world.data.train_files
    config.data.window_eval_files = world.data.window_eval_files
    config.data.window_key = world.data.window_key
    config.data.eval_files = world.data.eval_files
    config.delayed_feedback_stream = ml_collections.ConfigDict(dict(
        input="../shared/datasets/criteo-conversion-logs/data.txt", source="criteo-conversion-logs",
        method=method, observation_window_seconds=HOUR, attribution_window_seconds=7 * DAY, window_seconds=HOUR,
        pretrain_seconds=PRETRAIN_DAYS * DAY))

    for name in CONVERSION_CATEGORICALS:
        config.features[name] = dict(kind="id", dtype="string", hash_buckets=100_000, embedding_dim=8)
    for name in CONVERSION_INTEGERS:
        config.features[name] = dict(kind="dense")
    config.features.label = dict(kind="label")
    config.features.sample_type = dict(kind="label", dtype="int64")

    config.model = world.model
    config.model.hidden_units = (256, 256, 128)
    config.tasks = world.tasks
    config.train.mode = "streaming"
    config.train.pretrain_windows = PRETRAIN_DAYS * 24
    config.train.batch_size = 1024
    config.train.steps_per_execution = 10
    config.train.learning_rate = 0.0005
    config.train.best_metric = ""
    return config
