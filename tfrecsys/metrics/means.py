"""Weighted means of per-row values: a task's loss, and its per-row metrics (logloss, MSE).

Keras' ``Mean`` (and the ``MeanMetricWrapper``s ``BinaryCrossentropy`` and ``MeanSquaredError``) broadcasts
``sample_weight`` against the values; when the batch size is unknown at trace time (Keras' in-memory input,
any input with a last partial batch, every evaluation) that broadcast is a runtime assertion of 49 graph
nodes per metric, traced, optimised and run with every step (about 0.05 CPU-seconds of the first step per
metric, bench/RESULTS.md "first step, continued"). A task's weights are one per row, the shape of the values,
so the sums need no broadcast: these metrics add the same ``Σ w·v`` and ``Σ w`` to the same two variables as
Keras' and give the same result.
"""

import tensorflow as tf

from tfrecsys.metrics import METRIC_DTYPE


class WeightedMean(tf.keras.metrics.Mean):
    """Keras' ``Mean`` of values ``[batch]`` weighted by ``sample_weight`` ``[batch]`` (the same shape: a
    shape that differs at trace time raises ``ValueError``), without broadcasting the weights."""

    def __init__(self, name: str = "mean", dtype=METRIC_DTYPE):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, values, sample_weight=None):
        values = tf.cast(values, self.dtype)
        if sample_weight is None:
            return super().update_state(values)
        sample_weight = tf.cast(sample_weight, self.dtype)
        if not values.shape.is_compatible_with(sample_weight.shape):
            raise ValueError(f"metric {self.name!r}: sample_weight of shape {sample_weight.shape} must have the "
                             f"shape of the values, {values.shape}")
        value_sum = tf.reduce_sum(values * sample_weight)
        with tf.control_dependencies([value_sum]):
            update_total = self.total.assign_add(value_sum)
        with tf.control_dependencies([update_total]):
            return self.count.assign_add(tf.reduce_sum(sample_weight))


class WeightedRowMean(WeightedMean):
    """The weighted mean of ``fn(y_true, y_pred)`` ``[batch]``, ``fn`` a Keras loss function averaging over
    the last axis of ``[batch, 1]`` labels and predictions: Keras' ``MeanMetricWrapper(fn)`` (its
    ``BinaryCrossentropy`` and ``MeanSquaredError`` metrics) with per-row weights ``[batch]``."""

    def __init__(self, fn, name: str, dtype=METRIC_DTYPE):
        super().__init__(name=name, dtype=dtype)
        self._fn = fn

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(self._fn(tf.cast(y_true, self.dtype), tf.cast(y_pred, self.dtype)),
                                    sample_weight)

    def get_config(self):
        return {**super().get_config(), "fn": tf.keras.losses.serialize(self._fn)}

    @classmethod
    def from_config(cls, config):
        return cls(tf.keras.losses.get(config.pop("fn")), **config)


def logloss(name: str) -> WeightedRowMean:
    """``Σ w·(−y log p − (1−y) log(1−p)) / Σ w``: Keras' ``BinaryCrossentropy`` metric."""
    return WeightedRowMean(tf.keras.losses.binary_crossentropy, name=name)


def mean_squared_error(name: str) -> WeightedRowMean:
    """``Σ w·(p − y)² / Σ w``: Keras' ``MeanSquaredError`` metric."""
    return WeightedRowMean(tf.keras.losses.mean_squared_error, name=name)
