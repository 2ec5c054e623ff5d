"""Auxiliary losses that are means over the global batch under a distribution strategy.

Keras scales every ``add_loss`` loss by ``1 / replicas`` (``tfrecsys.models.base``: ``scale_regularization_loss``)
and sums the replicas' gradients: right for a loss that is a mean over the batch's rows when every replica
has as many rows, wrong for a mean over a count that differs from replica to replica (DIEN's auxiliary loss
over the valid behaviour pairs, hstu_ranking's over the valid history positions). There each replica's
``sum / count`` weighs its own few valid positions as much as another replica's many, and two replicas would
not take the one-device step over the same global batch (tests/test_families_distributed.py).
"""

import tensorflow as tf


def mean_over_global_batch(total: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """``total / count`` for ``add_loss``, such that the replicas' losses, scaled by ``1 / replicas`` as Keras
    scales them, sum to ``Σ total / Σ count`` over the global batch (0 when the global count is 0).

    ``total``: this replica's sum of the loss over its valid positions (scalar float32, differentiable);
    ``count``: how many positions it has (scalar; no gradient flows through it). On one replica, or outside
    a replica context (a model called directly, an export), it is the plain ``total / count``; in a
    replica context with several replicas it is ``replicas · total / Σ_replicas count``, one scalar all-reduce.
    """
    count = tf.cast(count, total.dtype)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.math.divide_no_nan(total, count)
    global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(count))
    return tf.math.divide_no_nan(total * float(context.num_replicas_in_sync), global_count)
