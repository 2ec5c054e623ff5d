"""Training callbacks: step-numbered checkpoints and throughput logging."""

import time

import tensorflow as tf
from absl import logging


class CheckpointEveryLoop(tf.keras.callbacks.Callback):
    """Saves ``manager``'s checkpoint at the end of every fit epoch (one "loop" of ``steps_per_loop``
    steps), numbered by the optimizer's step count so a resumed run continues the numbering."""

    def __init__(self, manager: tf.train.CheckpointManager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        path = self.manager.save(checkpoint_number=step)
        logging.info("step %d: checkpoint %s", step, path)


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
