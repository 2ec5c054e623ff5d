"""DEFUSE (or a baseline: the config argument after ':') trained in streaming mode on the delayed-feedback simulator.

    tfrecsys-simulate --config=configs/defuse_simulator.py        # runs/data/defuse_stream_defuse/{window,clicks}-*
    tfrecsys-train --config=configs/defuse_simulator.py --model_dir=runs/defuse

    # a baseline (the config argument after ':'): the stream, the tasks and the model change together
    tfrecsys-simulate --config=configs/defuse_simulator.py:vanilla
    tfrecsys-train --config=configs/defuse_simulator.py:vanilla --model_dir=runs/vanilla

Methods: vanilla, oracle, fnw, fnc, es_dfm, defer, defuse, bi_defuse, and defuse_z2: DEFUSE on the same stream
with the fake-negative probability ``z2 = f_dp / (f_dp + 1 − f_θ)`` instead of ``z1 = 1 − f_rn``.
The first ``pretrain_days`` days are old data with final labels, trained on (the CVR model and the auxiliary
models) without evaluation; then each day's clicks, with their final labels, are scored by the model of the
days before, and the model trains on the rows that day emitted (docs/delayed-feedback.md).
"""

import ml_collections

from tfrecsys.config import config_beside
from tfrecsys.data.delayed_feedback_stream import CLICK_FILES, STREAM_FILES, WINDOW_KEY
from tfrecsys.losses.delayed_feedback import FIRST_AUXILIARY

base = config_beside(__file__, "base.py")

NUM_USERS, NUM_ITEMS, NUM_CATEGORIES = 2000, 1000, 20
PRETRAIN_DAYS = 7
# The CVR task per method: its loss, and for methods with auxiliary models the auxiliary task beside it.
METHOD_LOSS = {"vanilla": "logit_cross_entropy", "oracle": "logit_cross_entropy", "fnw": "fnw",
               "fnc": "logit_cross_entropy", "es_dfm": "es_dfm", "defer": "defer", "defuse": "defuse",
               "bi_defuse": "bi_defuse", "defuse_z2": "defuse_z2"}
# Config arguments that are a variant of a method: the stream and the model are the method's, only the loss differs.
STREAM_METHOD = {"defuse_z2": "defuse"}


def tasks_for(method: str) -> ml_collections.ConfigDict:
    """The tasks block of ``method``: ``cvr`` on the stream's CVR rows, ``auxiliary`` on the rows older than w_a."""
    tasks = ml_collections.ConfigDict()
    tasks.cvr = dict(label="label", loss=METHOD_LOSS[method], mask=f"sample_type < {FIRST_AUXILIARY}",
                     metrics=("auc", "pr_auc", "logloss", "calibration"))
    if STREAM_METHOD.get(method, method) in ("es_dfm", "defer", "defuse"):
        tasks.auxiliary = dict(loss="delayed_feedback_auxiliary", mask=f"sample_type >= {FIRST_AUXILIARY}",
                               metrics=())
    return tasks


def get_config(method: str = "defuse") -> ml_collections.ConfigDict:
    variant = method or "defuse"
    if variant not in METHOD_LOSS:
        raise ValueError(f"configs/defuse_simulator.py:{variant}: the method is not one of {sorted(METHOD_LOSS)}")
    method = STREAM_METHOD.get(variant, variant)
    config = base.get_config("defuse_simulator", data_dir=f"runs/data/defuse_stream_{method}",
                             model_name="defuse", family="defuse")
    config.data.train_files = STREAM_FILES
    config.data.window_eval_files = CLICK_FILES
    config.data.window_key = WINDOW_KEY
    config.data.eval_files = CLICK_FILES
    config.data.simulator = ml_collections.ConfigDict(dict(
        kind="delayed_feedback_stream", method=method, window_seconds=86_400, pretrain_days=PRETRAIN_DAYS,
        num_users=NUM_USERS, num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES, num_clicks=200_000, days=21,
        observation_window_seconds=3600, attribution_window_days=3, seed=0,
        # A stationary world; set them to let each item's CVR (and the mean) drift (docs/delayed-feedback.md).
        drift_amplitude=0.0, global_drift_amplitude=0.0, drift_period_days=7.0))

    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS, embedding_dim=8)
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS, embedding_dim=8)
    config.features.item_category = dict(kind="id", num_buckets=NUM_CATEGORIES, embedding_dim=4)
    config.features.label = dict(kind="label")
    config.features.sample_type = dict(kind="label", dtype="int64")

    config.model.method = method
    config.model.hidden_units = (64, 32)
    config.model.auxiliary_hidden_units = (32,)
    config.model.expert_units = 16
    config.tasks = tasks_for(variant)

    config.train.mode = "streaming"
    config.train.pretrain_windows = PRETRAIN_DAYS
    config.train.batch_size = 512
    config.train.steps_per_execution = 10
    config.train.learning_rate = 0.002
    config.train.best_metric = ""
    return config
