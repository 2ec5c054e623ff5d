"""Mini-batch aware regularisation (Zhou et al., DIN, KDD 2018, §4.2, eq. 6)."""

import tensorflow as tf


def mini_batch_aware_l2(table: tf.Variable, rows: tf.Tensor, l2: float) -> tf.Tensor:
    """``λ Σ_{j ∈ B} ‖w_j‖²``: L2 over the embedding rows the mini-batch ``B`` uses, each once.

    ``table`` ``[vocab, dim]``; ``rows`` int row indices of any shape (OOV and padding rows included, as the
    lookup produced them). Full L2 over a table of millions of rows would cost a dense gradient per step; the
    paper penalises only the rows a batch touches, each weighted by ``1/n_j`` (``n_j`` its count in the whole
    training set). Here ``n_j = 1``: every touched row is weighted alike, which keeps the sparse gradient and
    needs no frequency table; the penalty is per step, so frequent rows are still regularised more often.
    """
    unique_rows, _ = tf.unique(tf.reshape(tf.cast(rows, tf.int64), [-1]))
    return l2 * tf.reduce_sum(tf.square(tf.gather(table, unique_rows)))
