"""Sampled softmax: the retrieval loss of two-tower models (Yi et al., RecSys 2019, eq. 2 and 4).

For a batch of queries ``x_i`` with positives ``y_i`` and rewards ``r_i``, over the candidate columns of
``tfrecsys.layers.retrieval.MixedNegativeLogits`` (already divided by the temperature, logQ-corrected and with
accidental hits masked):

    P_B(y_i | x_i) = exp(s^c(x_i, y_i)) / Σ_j exp(s^c(x_i, y_j)),      L = − (1/B) Σ_i r_i · log P_B(y_i | x_i)

The reward ``r_i`` (a click, a watch time, a rating) arrives as the Keras sample weight, so a row with reward
0 adds nothing to the loss while its item still serves as a negative for the other rows.
"""

import tensorflow as tf


class SampledSoftmaxLoss(tf.keras.losses.Loss):
    """Softmax cross-entropy of each row's positive column.

    ``y_true``: ``[batch]`` int, the column of each row's positive (``positive_column`` of
    ``MixedNegativeLogits``); ``y_pred``: logits ``[batch, num_candidates]``. Per-example losses are
    ``[batch]``; the default reduction averages them over the batch, and ``Reduction.NONE`` returns them (a
    custom train step under a distribution strategy averages over the global batch with
    ``tf.nn.compute_average_loss``).
    """

    def __init__(self, reduction=tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE, name="sampled_softmax"):
        super().__init__(reduction=reduction, name=name)

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int64)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y_pred)
