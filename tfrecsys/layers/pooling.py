"""Pooling of variable-length sequences under a mask."""

import tensorflow as tf


class MaskedMeanPooling(tf.keras.layers.Layer):
    """Mean of the valid steps: ``sum_t m_t x_t / max(1, sum_t m_t)``.

    Inputs: ``values`` ``[batch, seq_len, dim]`` and ``mask`` bool ``[batch, seq_len]``. Output ``[batch, dim]``;
    an empty sequence pools to zeros rather than NaN.
    """

    def call(self, values, mask):
        weights = tf.cast(mask, values.dtype)[..., tf.newaxis]
        total = tf.reduce_sum(values * weights, axis=1)
        count = tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
        return total / count
