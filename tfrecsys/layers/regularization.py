"""Mini-batch aware regularisation (Zhou et al., DIN, KDD 2018, §4.2, eq. 6)."""

import tensorflow as tf


def mini_batch_aware_l2(table: tf.Variable, rows: tf.Tensor, l2: float, valid=None) -> tf.Tensor:
    """``λ Σ_{j ∈ B} ‖w_j‖²``: L2 over the embedding rows the mini-batch ``B`` uses, each once.

    ``table`` ``[vocab, dim]``; ``rows`` int row indices of any shape (OOV and padding rows included, as the
    lookup produced them). Full L2 over a table of millions of rows would cost a dense gradient per step; the
    paper penalises only the rows a batch touches, each weighted by ``1/n_j`` (``n_j`` its count in the whole
    training set). Here ``n_j = 1``: every touched row is weighted alike, which keeps the sparse gradient and
    needs no frequency table; the penalty is per step, so frequent rows are still regularised more often.

    With ``valid`` (bool, the shape of ``rows``) the same penalty over the valid slots' rows, computed with a
    gradient of one row per slot, ``rows.size`` of them whatever the ids: every replica of a distribution
    strategy then all-gathers sparse gradients of one length (of different lengths, TF 2.16's all-gather fails
    inside a multi-step call). Each touched row's slots share its weight: ``Σ_slots v_s / c(r_s) ‖w_{r_s}‖²``,
    ``c(r)`` the valid slots of row ``r``.
    """
    rows = tf.reshape(tf.cast(rows, tf.int64), [-1])
    if valid is None:
        unique_rows, _ = tf.unique(rows)
        return l2 * tf.reduce_sum(tf.square(tf.gather(table, unique_rows)))
    valid = tf.cast(tf.reshape(valid, [-1]), table.dtype)
    unique_rows, slot_row = tf.unique(rows)
    slots_per_row = tf.math.unsorted_segment_sum(valid, slot_row, tf.size(unique_rows))
    weights = tf.math.divide_no_nan(valid, tf.gather(slots_per_row, slot_row))
    return l2 * tf.reduce_sum(weights * tf.reduce_sum(tf.square(tf.gather(table, rows)), axis=-1))
