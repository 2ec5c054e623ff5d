"""Calibration maps applied to a served probability, inside the SavedModel (tfrecsys/calibration.py fits them).

Each layer maps probabilities ``p`` of any shape (``[batch]``) to calibrated probabilities of the same shape;
its parameters are non-trainable weights, so an exported model carries them and serves calibrated scores
through the same signatures and output names. The forms (../shared/reference/digest-defuse-and-practice.md,
B.2; He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", 2014):

* ``NegativeDownsamplingCorrection``: ``q = p / (p + (1 − p)/w)`` for a model trained with a share ``w`` of
  its negatives kept;
* ``PlattScaling``: ``p' = sigmoid(a · logit(p) + b)`` (Platt 1999, on the model's logit);
* ``IsotonicCalibration``: a non-decreasing piecewise-linear map through the knots of a pool-adjacent-
  violators fit (flat inside each pooled block, linear between blocks, clamped outside the fitted range).
"""

import numpy as np
import tensorflow as tf

# Probabilities are clipped this far inside (0, 1) before a logit, so p = 0 or 1 maps to a finite score.
_LOGIT_EPSILON = 1e-7


class NegativeDownsamplingCorrection(tf.keras.layers.Layer):
    """``q = p / (p + (1 − p)/w)``: the probability of the full data from ``p``, learned on data that kept a
    share ``w`` in (0, 1] of the negatives (and every positive). The identity at ``w = 1``.

    Shapes: ``[...]`` → ``[...]``.
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"negative down-sampling rate w must lie in (0, 1], got {rate}")
        self.rate = float(rate)
        self.rate_weight = self.add_weight(name="rate", shape=[], trainable=False,
                                           initializer=tf.keras.initializers.Constant(self.rate))

    def call(self, probability):
        probability = tf.cast(probability, tf.float32)
        return probability / (probability + (1.0 - probability) / self.rate_weight)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class PlattScaling(tf.keras.layers.Layer):
    """``p' = sigmoid(a · logit(p) + b)``, with ``logit(p) = log(p / (1 − p))`` of ``p`` clipped to
    ``[ε, 1 − ε]``; ``a = 1, b = 0`` is the identity.

    Shapes: ``[...]`` → ``[...]``.
    """

    def __init__(self, slope: float, intercept: float, **kwargs):
        super().__init__(**kwargs)
        self.slope, self.intercept = float(slope), float(intercept)
        self.slope_weight = self.add_weight(name="slope", shape=[], trainable=False,
                                            initializer=tf.keras.initializers.Constant(self.slope))
        self.intercept_weight = self.add_weight(name="intercept", shape=[], trainable=False,
                                                initializer=tf.keras.initializers.Constant(self.intercept))

    def call(self, probability):
        probability = tf.clip_by_value(tf.cast(probability, tf.float32), _LOGIT_EPSILON, 1.0 - _LOGIT_EPSILON)
        logit = tf.math.log(probability) - tf.math.log1p(-probability)
        return tf.sigmoid(self.slope_weight * logit + self.intercept_weight)

    def get_config(self):
        return {**super().get_config(), "slope": self.slope, "intercept": self.intercept}


class IsotonicCalibration(tf.keras.layers.Layer):
    """A non-decreasing map through knots ``(x_k, y_k)``, ``x`` strictly and ``y`` weakly increasing:
    ``p' = y_k + (p − x_k)(y_{k+1} − y_k)/(x_{k+1} − x_k)`` for ``x_k ≤ p ≤ x_{k+1}``, ``y_0`` below ``x_0``
    and ``y_K`` above ``x_K``.

    Shapes: knots ``[K]``; ``[...]`` → ``[...]``.
    """

    def __init__(self, knots, values, **kwargs):
        super().__init__(**kwargs)
        knots, values = np.asarray(knots, np.float32), np.asarray(values, np.float32)
        if knots.ndim != 1 or knots.shape != values.shape or not len(knots):
            raise ValueError(f"isotonic knots and values must be two equal, non-empty vectors; got shapes "
                             f"{knots.shape} and {values.shape}")
        if np.any(np.diff(knots) <= 0) or np.any(np.diff(values) < 0):
            raise ValueError("isotonic knots must increase strictly and their values must not decrease")
        self.knots, self.values = knots.tolist(), values.tolist()
        self.knot_weight = self.add_weight(name="knots", shape=knots.shape, trainable=False,
                                           initializer=tf.keras.initializers.Constant(knots))
        self.value_weight = self.add_weight(name="values", shape=values.shape, trainable=False,
                                            initializer=tf.keras.initializers.Constant(values))

    def call(self, probability):
        probability = tf.cast(probability, tf.float32)
        shape = tf.shape(probability)
        flat = tf.reshape(probability, [-1])
        if len(self.knots) == 1:
            return tf.fill(shape, self.value_weight[0])
        # Index of the right knot of each value's segment, kept inside [1, K−1] so values outside the knots
        # use the end segments, whose clipped fraction is 0 or 1 there.
        right = tf.clip_by_value(tf.searchsorted(self.knot_weight, flat, side="right"), 1, len(self.knots) - 1)
        x0, x1 = tf.gather(self.knot_weight, right - 1), tf.gather(self.knot_weight, right)
        y0, y1 = tf.gather(self.value_weight, right - 1), tf.gather(self.value_weight, right)
        fraction = tf.clip_by_value((flat - x0) / (x1 - x0), 0.0, 1.0)
        return tf.reshape(y0 + fraction * (y1 - y0), shape)

    def get_config(self):
        return {**super().get_config(), "knots": self.knots, "values": self.values}


__all__ = ["NegativeDownsamplingCorrection", "PlattScaling", "IsotonicCalibration"]
