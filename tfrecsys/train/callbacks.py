"""Training callbacks: step-numbered checkpoints, the step training starts from, throughput logging."""

import time

import tensorflow as tf
from absl import logging


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
