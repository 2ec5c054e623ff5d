"""Training callbacks: step-numbered checkpoints, the step training starts from, throughput logging, a clean
stop on Ctrl-C, evaluation every loop (of the averaged weights under ``config.train.ema_momentum``), the best
checkpoint by an eval metric and early stopping."""

import contextlib
import json
import os
import signal
import threading
import time

import tensorflow as tf
from absl import logging

from tfrecsys.train.strategy import is_chief, worker_dir


def uses_weight_averaging(model) -> bool:
    return bool(getattr(model.optimizer, "use_ema", False))


@contextlib.contextmanager
def averaged_weights(model):
    """Inside the block ``model``'s trainable weights are the optimizer's moving average of them (Polyak
    averaging, ``config.train.ema_momentum`` m > 0: after every step a ← m·a + (1 − m)·w, a starting at the
    initial weights); the trained weights come back after it, so training goes on from them. Without an
    average the block changes nothing."""
    if not uses_weight_averaging(model):
        yield
        return
    variables = model.trainable_variables
    trained = [tf.identity(variable) for variable in variables]
    model.optimizer.finalize_variable_values(variables)
    try:
        yield
    finally:
        for variable, value in zip(variables, trained):
            variable.assign(value)


class CheckpointEveryLoop(tf.keras.callbacks.Callback):
    """Saves ``manager``'s checkpoint at the end of every fit epoch (one "loop" of ``steps_per_loop``
    steps), numbered by the optimizer's step count so a resumed run continues the numbering.

    ``scratch``: the manager writes to a worker's scratch directory (a non-chief worker under
    MultiWorkerMirroredStrategy must take part in every save, but only the chief's copy is kept), which is
    removed after each save.
    """

    def __init__(self, manager: tf.train.CheckpointManager, scratch: bool = False):
        super().__init__()
        self.manager = manager
        self.scratch = scratch

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        path = self.manager.save(checkpoint_number=step)
        if self.scratch:
            tf.io.gfile.rmtree(self.manager.directory)
        else:
            logging.info("step %d: checkpoint %s", step, path)


class StartLogger(tf.keras.callbacks.Callback):
    """Logs the step training starts from: 0, a checkpoint's step, or, after a restart, the step of the
    BackupAndRestore backup (which restores in its own ``on_train_begin``, so it must come earlier in the
    callback list)."""

    def __init__(self, total_steps: int, task: str):
        super().__init__()
        self.total_steps = total_steps
        self.task = task

    def on_train_begin(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        logging.info("%s: training from step %d to step %d", self.task, step, self.total_steps)


class ThroughputLogger(tf.keras.callbacks.Callback):
    """Adds ``examples_per_sec`` of each loop to the logs (and so to TensorBoard and the history)."""

    def __init__(self, global_batch_size: int, steps_per_loop: int):
        super().__init__()
        self.examples = global_batch_size * steps_per_loop
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        rate = self.examples / max(time.perf_counter() - self._start, 1e-9)
        if logs is not None:
            logs["examples_per_sec"] = rate


BEST_CHECKPOINT_SUBDIR = "best"
BEST_CHECKPOINT_FILE = "best.json"
EARLY_STOP_FILE = "early_stopped.json"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, raised after the step that was running finished and was saved; ``step`` is
    the step a rerun of the same command resumes from."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


class BackupEveryLoop(tf.keras.callbacks.BackupAndRestore):
    """BackupAndRestore that backs up at the end of every loop (as ``save_freq="epoch"`` does) and, through
    ``back_up_now``, also inside a loop, from where a rerun of ``fit`` continues at the next step.

    Keras resumes inside an epoch only when ``save_freq`` is a number of batches, so it gets one no run
    reaches and the loop-end backups are made here, marked as the loop's last step (a rerun starts the
    next loop).
    """

    _NEVER = 2**62

    def __init__(self, backup_dir: str, steps_per_loop: int):
        super().__init__(backup_dir, save_freq=self._NEVER)
        self.steps_per_loop = steps_per_loop

    def on_epoch_end(self, epoch, logs=None):
        self._back_up_after(self.steps_per_loop - 1)

    def back_up_now(self, step: int):
        """Backs up the state after global step ``step`` of the current loop. (Not the ``batch`` of
        ``on_train_batch_end``: with steps_per_execution > 1 that is the first step of the execution.)"""
        self._back_up_after(step - 1 - self._current_epoch * self.steps_per_loop)

    def _back_up_after(self, batch: int):
        # tf-keras 2.16 saves the loop position from the training state's variables (set by the batch
        # hooks to the first step of the running execution), not from back_up's arguments.
        self._training_state._ckpt_saved_batch.assign(batch)
        self._backup(epoch=self._current_epoch, batch=batch)


class StopOnInterrupt(tf.keras.callbacks.Callback):
    """Turns the first Ctrl-C (SIGINT) during ``fit`` into a clean stop: the running step finishes, the
    checkpoint manager and the BackupAndRestore backup are written at that step (the backup keeps the position
    inside the loop, so a rerun continues from exactly that step), then ``TrainingInterrupted`` is raised.
    A second Ctrl-C interrupts at once, as Python does by default.

    Single-worker only: under several workers each would see the signal at a different step, and the
    collective save would wait for peers that already stopped.
    """

    def __init__(self, backup: BackupEveryLoop, manager: tf.train.CheckpointManager):
        super().__init__()
        self.backup = backup
        self.manager = manager
        self._requested = False
        self._previous_handler = None

    def _request_stop(self, signum, frame):
        self._requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_begin(self, logs=None):
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._request_stop)

    def on_train_batch_end(self, batch, logs=None):
        if not self._requested:
            return
        self._restore_handler()
        step = int(self.model.optimizer.iterations.numpy())
        self.backup.back_up_now(step)
        self.manager.save(checkpoint_number=step)
        logging.info("interrupted: checkpoint and backup at step %d", step)
        raise TrainingInterrupted(step)

    def on_train_end(self, logs=None):
        self._restore_handler()

    def _restore_handler(self):
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


class EvaluateEveryLoop(tf.keras.callbacks.Callback):
    """Evaluates on the eval split after every ``every_loops``-th loop and adds the results to the loop's
    logs as ``val_<metric>``, as Keras' own validation does: the TensorBoard callback after it writes them to
    ``logs/validation`` next to the training curves of ``logs/train``, and the best-checkpoint and
    early-stopping callbacks read them."""

    def __init__(self, eval_input, every_loops: int = 1):
        """``eval_input``: its ``data`` (distributed batches) and ``steps``, read at the first evaluation
        (``tfrecsys.train.loop.EvalInput`` builds them then)."""
        super().__init__()
        self.eval_input = eval_input
        self.every_loops = every_loops

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every_loops:
            return
        with averaged_weights(self.model):
            results = self.model.evaluate(self.eval_input.data, steps=self.eval_input.steps, return_dict=True,
                                          verbose=0)
        logs.update({f"val_{name}": float(value) for name, value in results.items()})


def metric_mode(metric: str) -> str:
    """``min`` for losses (``loss``, ``logloss``, ``<task>_logloss``, ``mse``), ``max`` for the rest (AUC,
    Recall@K, NDCG@K, MRR)."""
    return "min" if metric.endswith(("loss", "mse")) else "max"


def _monitored(logs, metric: str):
    """``val_<metric>`` of the loop's logs, None when this loop was not evaluated; an unknown metric is a
    config error naming the ones there are."""
    names = sorted(name[len("val_"):] for name in logs if name.startswith("val_"))
    if not names:
        return None
    # "auc" names the one task's "<task>_auc" when the model has a single task with that metric.
    matches = [name for name in names if name == metric] or [name for name in names if name.endswith(f"_{metric}")]
    if len(matches) != 1:
        raise ValueError(f"config.train.best_metric {metric!r} is not one eval metric of this model "
                         f"({'several match: ' + str(matches) if matches else 'none matches'}); it has {names}")
    return float(logs[f"val_{matches[0]}"])


class BestCheckpoint(tf.keras.callbacks.Callback):
    """Keeps the checkpoint of the loop with the best eval ``metric`` in ``<model_dir>/best/`` and records its
    step and value in ``<model_dir>/best/best.json``; a resumed run continues from the recorded best.

    Every worker must call it (the save is collective); ``scratch``: this worker's copy goes to a scratch
    directory that is removed after each save (the chief's is the one kept).
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, metric: str, scratch: bool = False):
        super().__init__()
        self.metric = metric
        self.mode = metric_mode(metric)
        self.scratch = scratch
        self.directory = os.path.join(model_dir, BEST_CHECKPOINT_SUBDIR)
        self.record_path = os.path.join(self.directory, BEST_CHECKPOINT_FILE)
        self.manager = tf.train.CheckpointManager(checkpoint, worker_dir(self.directory), max_to_keep=1)
        self.best = read_best(model_dir)

    def _improves(self, value: float) -> bool:
        if self.best is None or self.best["metric"] != self.metric:
            return True
        return value < self.best["value"] if self.mode == "min" else value > self.best["value"]

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs or {}, self.metric)
        if value is None or not self._improves(value):
            return
        step = int(self.model.optimizer.iterations.numpy())
        path = self.manager.save(checkpoint_number=step)
        self.best = {"metric": self.metric, "mode": self.mode, "value": value, "step": step,
                     "checkpoint": os.path.basename(path)}
        if self.scratch:
            tf.io.gfile.rmtree(self.manager.directory)
            return
        with tf.io.gfile.GFile(self.record_path, "w") as f:
            json.dump(self.best, f, indent=2, sort_keys=True)
        logging.info("step %d: best %s so far (%.4f), kept in %s", step, self.metric, value, self.directory)


def read_best(model_dir: str):
    """``<model_dir>/best/best.json`` (metric, mode, value, step, checkpoint), or None before the first."""
    path = os.path.join(model_dir, BEST_CHECKPOINT_SUBDIR, BEST_CHECKPOINT_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


class EarlyStopping(tf.keras.callbacks.Callback):
    """Stops training when the eval ``metric`` has not improved for ``patience`` evaluations, and records so
    in ``<model_dir>/early_stopped.json`` (only the chief writes it) so that rerunning the command does not
    train on: the run is finished, at fewer steps than config.train.steps."""

    def __init__(self, model_dir: str, metric: str, patience: int, write: bool = True):
        super().__init__()
        self.path = os.path.join(model_dir, EARLY_STOP_FILE)
        self.metric = metric
        self.mode = metric_mode(metric)
        self.patience = patience
        self.write = write
        self.best = None
        self.evaluations_without_improvement = 0

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs or {}, self.metric)
        if value is None:
            return
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best, self.evaluations_without_improvement = value, 0
            return
        self.evaluations_without_improvement += 1
        if self.evaluations_without_improvement < self.patience:
            return
        self.model.stop_training = True
        step = int(self.model.optimizer.iterations.numpy())
        logging.info("step %d: early stop, %s has not improved on %.4f for %d evaluations", step, self.metric,
                     self.best, self.patience)
        if self.write:
            with tf.io.gfile.GFile(self.path, "w") as f:
                json.dump({"step": step, "metric": self.metric, "best": self.best, "patience": self.patience}, f,
                          indent=2, sort_keys=True)


def stopped_early(model_dir: str) -> bool:
    """Whether an earlier run in ``model_dir`` ended by early stopping (so there is nothing left to train)."""
    return tf.io.gfile.exists(os.path.join(model_dir, EARLY_STOP_FILE))


def evaluation_callbacks(train_config, model_dir: str, checkpoint: tf.train.Checkpoint, eval_input) -> list:
    """The callbacks that ``config.train`` asks for, in the order they must run (each reads what the one
    before it added to the loop's logs; the TensorBoard callback goes after them):

    - ``eval_every_loop`` N > 0: evaluate after every N-th loop (``val_*`` curves in TensorBoard);
    - ``best_metric`` (e.g. ``auc``, ``loss``, ``recall_at_50``; ``<task>_auc`` with several tasks): keep the
      best checkpoint by it in ``<model_dir>/best/`` (minimised for losses, maximised otherwise);
    - ``early_stopping_patience`` P > 0: stop after P evaluations without improvement of ``best_metric``.
    """
    # Absent keys (a config not built on configs/base.py) leave evaluation to the end of training.
    every, metric = train_config.get("eval_every_loop", 0), train_config.get("best_metric", "")
    patience = train_config.get("early_stopping_patience", 0)
    if (metric or patience) and every <= 0:
        raise ValueError("config.train.best_metric and config.train.early_stopping_patience need evaluation during "
                         "training: set config.train.eval_every_loop to 1 or more")
    if patience and not metric:
        raise ValueError("config.train.early_stopping_patience needs config.train.best_metric (e.g. 'auc')")
    callbacks = []
    if every > 0:
        callbacks.append(EvaluateEveryLoop(eval_input, every))
    if metric:
        callbacks.append(BestCheckpoint(checkpoint, model_dir, metric, scratch=not is_chief()))
    if patience:
        callbacks.append(EarlyStopping(model_dir, metric, patience, write=is_chief()))
    return callbacks
