"""Ranking metrics Keras does not ship: GAUC and calibration, both masked and weighted like a task's loss.

Every metric here takes ``update_state(y_true [batch], y_pred [batch], sample_weight [batch])``; a task passes
its mask times its per-sample weight as ``sample_weight``, so a masked row counts nowhere. State lives in
SUM-aggregated variables, so under a distribution strategy ``result()`` is the metric over the global batch.
Both keep ``METRIC_DTYPE``'s policy whatever the global one (``tfrecsys.metrics``).
"""

import tensorflow as tf

from tfrecsys.metrics import METRIC_DTYPE


class Calibration(tf.keras.metrics.Metric):
    """``Σ w p / Σ w y``: mean prediction over mean label (1.0 is calibrated; >1 over-predicts).

    ``y_true``, ``y_pred``, ``sample_weight``: ``[batch]``. 0 when no positive label has been seen.
    """

    def __init__(self, name="calibration", dtype=METRIC_DTYPE, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.predicted = self.add_weight(name="predicted", initializer="zeros", dtype=tf.float64)
        self.observed = self.add_weight(name="observed", initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(tf.reshape(y_true, [-1]), tf.float64)
        y_pred = tf.cast(tf.reshape(y_pred, [-1]), tf.float64)
        weight = (tf.ones_like(y_true) if sample_weight is None
                  else tf.cast(tf.reshape(sample_weight, [-1]), tf.float64))
        self.predicted.assign_add(tf.reduce_sum(weight * y_pred))
        self.observed.assign_add(tf.reduce_sum(weight * y_true))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.predicted, self.observed), tf.float32)

    def reset_state(self):
        self.predicted.assign(0.0)
        self.observed.assign(0.0)


class GroupAUC(tf.keras.metrics.Metric):
    """GAUC (Zhou et al., DIN, KDD 2018, eq. 9): ``Σ_g n_g · AUC_g / Σ_g n_g`` over groups (users) that have
    both a positive and a negative row, ``n_g`` the group's (weighted) row count.

    Each group keeps a histogram of predictions in ``num_thresholds`` buckets per label, ``[num_groups,
    num_thresholds]`` (so AUC_g is exact up to the bucket width, like Keras' AUC); group ids go into
    ``num_groups`` slots (string ids hashed, integer ids by their remainder), so set ``num_groups`` above
    the number of evaluated users: users that share a slot are scored as one group.
    ``update_state(y_true, y_pred, groups, sample_weight)`` with ``groups`` ``[batch]`` int64 or string ids.
    """

    def __init__(self, num_groups: int = 4096, num_thresholds: int = 200, name="gauc", dtype=METRIC_DTYPE, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.num_groups = num_groups
        self.num_thresholds = num_thresholds
        shape = [num_groups, num_thresholds]
        self.positives = self.add_weight(name="positives", shape=shape, initializer="zeros", dtype=tf.float64)
        self.negatives = self.add_weight(name="negatives", shape=shape, initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, groups, sample_weight=None):
        y_true = tf.cast(tf.reshape(y_true, [-1]), tf.float64)
        y_pred = tf.clip_by_value(tf.cast(tf.reshape(y_pred, [-1]), tf.float64), 0.0, 1.0)
        weight = (tf.ones_like(y_true) if sample_weight is None
                  else tf.cast(tf.reshape(sample_weight, [-1]), tf.float64))
        groups = tf.reshape(groups, [-1])
        if groups.dtype == tf.string:
            slot = tf.strings.to_hash_bucket_fast(groups, self.num_groups)
        else:
            # Integer ids by their remainder: no string op, so the step still compiles under --jit_compile
            # (XLA has no string kernels), and ids 0 … num_groups − 1 each get a slot of their own.
            slot = tf.math.floormod(tf.cast(groups, tf.int64), self.num_groups)
        bucket = tf.minimum(tf.cast(y_pred * self.num_thresholds, tf.int64), self.num_thresholds - 1)
        index = tf.stack([slot, bucket], axis=1)
        self.positives.assign_add(tf.scatter_nd(index, weight * y_true, self.positives.shape))
        self.negatives.assign_add(tf.scatter_nd(index, weight * (1.0 - y_true), self.negatives.shape))

    def result(self):
        positives, negatives = self.positives, self.negatives
        # Pairs (positive in bucket i, negative in bucket j < i) count 1, same bucket 1/2.
        negatives_below = tf.cumsum(negatives, axis=1, exclusive=True)
        correct = tf.reduce_sum(positives * (negatives_below + 0.5 * negatives), axis=1)
        pairs = tf.reduce_sum(positives, axis=1) * tf.reduce_sum(negatives, axis=1)
        rows = tf.reduce_sum(positives + negatives, axis=1)
        scored = pairs > 0
        auc = tf.math.divide_no_nan(correct, pairs)
        weights = tf.where(scored, rows, 0.0)
        return tf.cast(tf.math.divide_no_nan(tf.reduce_sum(weights * auc), tf.reduce_sum(weights)), tf.float32)

    def reset_state(self):
        self.positives.assign(tf.zeros_like(self.positives))
        self.negatives.assign(tf.zeros_like(self.negatives))

    def get_config(self):
        return {**super().get_config(), "num_groups": self.num_groups, "num_thresholds": self.num_thresholds}
