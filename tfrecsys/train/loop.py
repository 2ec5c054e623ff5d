"""The one generic train loop: every model family trains through ``train_and_evaluate``.

It builds the model named by the config inside the strategy scope, compiles one loss and metric set per
task, resumes from the latest checkpoint in ``model_dir``, runs Keras ``fit`` in loops of
``steps_per_loop`` steps (checkpoint and TensorBoard summaries after each) and ends with a full evaluation
written to ``<model_dir>/eval_metrics.json``. Models that need their own step override ``train_step``; the
loop stays the same.
"""

import contextlib
import json
import os

import tensorflow as tf
from absl import logging

from tfrecsys.data.input import (DataError, check_schema, count_records, find_bad_record, make_dataset,
                                 resolve_files)
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.models.tasks import tasks_from_config
from tfrecsys.train import callbacks as callbacks_lib
from tfrecsys.train.strategy import is_chief, strategy_from_environment, worker_dir

CHECKPOINT_SUBDIR = "checkpoints"
EVAL_METRICS_FILE = "eval_metrics.json"


def _optimizer(name: str, learning_rate: float):
    optimizers = {"adam": tf.keras.optimizers.Adam, "adagrad": tf.keras.optimizers.Adagrad,
                  "sgd": tf.keras.optimizers.SGD}
    if name not in optimizers:
        raise ValueError(f"config.train.optimizer {name!r} is not one of {sorted(optimizers)}")
    return optimizers[name](learning_rate=learning_rate)


def data_files(config) -> tuple[list[str], list[str]]:
    return (resolve_files(config.data.train_files, config.data.dir),
            resolve_files(config.data.eval_files, config.data.dir))


@contextlib.contextmanager
def naming_bad_files(files, schema):
    """Turns a read or parse error inside TensorFlow into a DataError naming the file and record."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        bad = find_bad_record(files, schema)
        if bad is None:
            raise
        raise DataError(f"cannot read input data: {bad}") from error


def build_and_compile(config, schema: FeatureSchema):
    """The registry model for ``config``, compiled with its tasks' losses, weights and metrics."""
    tasks = tasks_from_config(config.tasks)
    model = build_model(config, schema)
    if hasattr(model, "compile_kwargs"):
        # A model that computes its own loss and metrics in train_step (a tfrs.Model, a custom step) says
        # what compile needs instead of the per-task defaults.
        kwargs = model.compile_kwargs(tasks)
    else:
        kwargs = dict(loss={t.name: t.make_loss() for t in tasks},
                      loss_weights={t.name: t.weight for t in tasks},
                      metrics={t.name: t.make_metrics() for t in tasks})
    model.compile(optimizer=_optimizer(config.train.optimizer, config.train.learning_rate),
                  steps_per_execution=config.train.steps_per_execution, **kwargs)
    return model


def restore_latest(model, model_dir: str, expect_partial: bool = False):
    """Restores the newest checkpoint under ``model_dir`` into ``model`` (and its optimizer when the model
    is compiled). Returns the checkpoint path, or None when there is none."""
    directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    path = tf.train.latest_checkpoint(directory)
    if path is None:
        return None
    items = {"model": model}
    if model.optimizer is not None:
        items["optimizer"] = model.optimizer
    status = tf.train.Checkpoint(**items).restore(path)
    if expect_partial:
        status.expect_partial()
    return path


def _distributed(strategy, files, schema, config, targets, training):
    batch = config.train.batch_size if training else config.train.eval_batch_size

    def dataset_fn(context: tf.distribute.InputContext):
        return make_dataset(files, schema, context.get_per_replica_batch_size(batch), targets=targets,
                            training=training, shuffle_buffer=config.train.shuffle_buffer,
                            seed=config.train.seed, input_context=context)

    return strategy.distribute_datasets_from_function(dataset_fn)


def train_and_evaluate(config, model_dir: str, strategy=None, verbose: int = 1) -> dict:
    """Trains ``config`` for ``config.train.steps`` steps into ``model_dir`` and returns eval metrics
    ``{"loss": …, "<task>": {"auc": …, "logloss": …}}``."""
    strategy = strategy or strategy_from_environment()
    tf.keras.utils.set_random_seed(config.train.seed)
    schema = FeatureSchema.from_config(config.features)
    tasks = tasks_from_config(config.tasks)
    targets = {t.name: t.label for t in tasks}
    train_files, eval_files = data_files(config)
    check_schema(train_files[0], schema)
    check_schema(eval_files[0], schema)

    steps, per_loop = config.train.steps, min(config.train.steps_per_loop, config.train.steps)
    if steps % per_loop:
        raise ValueError(f"config.train.steps ({steps}) must be a multiple of config.train.steps_per_loop "
                         f"({per_loop})")
    with strategy.scope():
        model = build_and_compile(config, schema)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        manager = tf.train.CheckpointManager(checkpoint, worker_dir(os.path.join(model_dir, CHECKPOINT_SUBDIR)),
                                             max_to_keep=config.train.max_checkpoints)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint)
            logging.info("resuming from %s", manager.latest_checkpoint)
    done = int(model.optimizer.iterations.numpy())
    train_data = _distributed(strategy, train_files, schema, config, targets, training=True)
    eval_data = _distributed(strategy, eval_files, schema, config, targets, training=False)
    # steps_per_execution > 1 needs a step count even for a finite eval set.
    eval_steps = config.train.eval_steps or -(-count_records(eval_files) // config.train.eval_batch_size)

    if done < steps:
        loop_callbacks = [callbacks_lib.ThroughputLogger(config.train.batch_size, per_loop),
                          callbacks_lib.CheckpointEveryLoop(manager)]
        if is_chief():
            loop_callbacks.append(tf.keras.callbacks.TensorBoard(os.path.join(model_dir, "logs")))
        with naming_bad_files(train_files + eval_files, schema):
            model.fit(train_data, epochs=steps // per_loop, initial_epoch=done // per_loop,
                      steps_per_epoch=per_loop, callbacks=loop_callbacks, verbose=verbose)
    else:
        logging.info("checkpoint is at step %d of %d: nothing left to train", done, steps)

    with naming_bad_files(eval_files, schema):
        raw = model.evaluate(eval_data, steps=eval_steps, return_dict=True, verbose=0)
    metrics = _by_task(raw, [t.name for t in tasks])
    if is_chief():
        with tf.io.gfile.GFile(os.path.join(model_dir, EVAL_METRICS_FILE), "w") as f:
            json.dump({"step": int(model.optimizer.iterations.numpy()), **metrics}, f, indent=2, sort_keys=True)
    logging.info("eval: %s", metrics)
    return metrics


def _by_task(raw: dict, task_names) -> dict:
    """Groups Keras' flat metric names by task: ``<task>_auc`` (several outputs) or ``auc`` (one output)
    become ``{task: {"auc": …}}``; names that belong to no task (a model's own metrics) stay at the top."""
    out = {"loss": float(raw["loss"])}
    claimed = {"loss"}
    for task in task_names:
        prefix = f"{task}_"
        values = {k[len(prefix):]: float(v) for k, v in raw.items() if k.startswith(prefix)}
        claimed.update(k for k in raw if k.startswith(prefix))
        values.pop("loss", None)
        out[task] = values
    rest = {k: float(v) for k, v in raw.items() if k not in claimed}
    if len(task_names) == 1:
        out[task_names[0]].update(rest)
    else:
        out.update(rest)
    return out
