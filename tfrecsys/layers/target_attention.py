"""DIN's target attention (Zhou et al., Deep Interest Network, KDD 2018, §4.3, eq. 3).

``v_U(A) = Σ_j a(e_j, v_A) · e_j``: the history ``e_1..e_H`` pooled with weights that depend on the target ``v_A``,
so a user's representation changes with the item being ranked. ``a`` is the *activation unit*, a small MLP over
``[e_j ; v_A ; e_j − v_A ; e_j ⊙ v_A]`` with one linear output. The paper keeps the weights unnormalised ("to
reserve the intensity of user interests"): a history with many relevant behaviours yields a larger vector.
"""

import tensorflow as tf

from tfrecsys.layers.activations import Dice, activation_layer, takes_mask
from tfrecsys.layers.mlp import flat_matmul
from tfrecsys.layers.xla import tracing_inside_xla

NORMALIZATIONS = ("none", "softmax")


class PairProjection(tf.keras.layers.Layer):
    """The activation unit's first layer, ``W [e_j ; v_A ; e_j − v_A ; e_j ⊙ v_A] + b``, without building the concat.

    With ``W = [W_e ; W_q ; W_d ; W_p]`` (one ``[4d, units]`` kernel, as a Dense layer on the concat would hold),
    ``W [·] = [e_j ; e_j ⊙ v_A] [W_e + W_d ; W_p] + v_A (W_q − W_d)``: the target's part is computed once per row
    instead of once per behaviour, and the per-behaviour matmul is ``2d`` wide instead of ``4d``.
    ``call(keys [batch, len, d], query [batch, d])`` → ``[batch, len, units]``; or, with ``rows``, packed keys
    ``[n, d]`` whose key ``i`` belongs to the query of row ``rows[i]`` (``[n]`` int64, ascending) → ``[n, units]``.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, keys_shape, query_shape=None):
        dim = keys_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=[4 * dim, self.units], initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=[self.units], initializer="zeros")
        super().build(keys_shape)

    def call(self, keys, query, rows=None):
        w_key, w_query, w_difference, w_product = tf.split(self.kernel, 4, axis=0)
        per_row = tf.matmul(query, w_query - w_difference) + self.bias
        if rows is None:
            query, per_row = query[:, tf.newaxis, :], per_row[:, tf.newaxis, :]
        else:
            query, per_row = gather_rows(query, rows), gather_rows(per_row, rows)
        per_behaviour = tf.concat([keys, keys * query], axis=-1)
        return flat_matmul(per_behaviour, tf.concat([w_key + w_difference, w_product], axis=0)) + per_row

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class ActivationUnit(tf.keras.layers.Layer):
    """``a(e_j, v_A) = w^T f(…f(W_1 [e_j ; v_A ; e_j − v_A ; e_j ⊙ v_A] + b_1)…) + b``: one score per behaviour.

    ``call(keys [batch, len, dim], query [batch, dim], key_mask [batch, len] bool)`` → ``[batch, len]`` scores,
    0 at masked positions (``TargetAttention`` masks them anyway); ``call(keys [n, dim], query, rows=rows)``:
    keys already packed, key ``i`` of row ``rows[i]`` (``[n]`` int64, ascending) → ``[n]`` scores.
    ``activation``: ``"dice"`` (the paper's), ``"prelu"`` or a Keras activation; Dice takes its batch moments
    over the valid behaviours only (in training over packed rows, as one batch normalisation op:
    ``dice_as_batch_norm``). The first layer is a ``PairProjection`` (the score itself when ``hidden_units`` is
    empty).

    With ``key_mask`` the MLP runs on the valid behaviours only, packed into ``[n_valid, dim]`` and its scores
    scattered back: the same function, without the work on padding (a quarter of Taobao's history slots).
    Inside an XLA-compiled function it runs over every slot instead (XLA needs static shapes).
    """

    def __init__(self, hidden_units=(80, 40), activation="dice", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(hidden_units)
        self.activation = activation
        widths = self.hidden_units
        self._first = PairProjection(widths[0] if widths else 1, name="pair_projection")
        self._dense = [tf.keras.layers.Dense(units, name=f"dense_{i + 1}") for i, units in enumerate(widths[1:])]
        self._activations = [activation_layer(activation, name=f"{activation}_{i}") for i in range(len(widths))]
        self._score = tf.keras.layers.Dense(1, name="score") if widths else None

    def call(self, keys, query, key_mask=None, training=None, rows=None):
        if keys.shape[-1] != query.shape[-1]:
            raise ValueError(f"{self.name}: keys have dimension {keys.shape[-1]} but the query has "
                             f"{query.shape[-1]}; the activation unit compares them elementwise (e_j − v_A, "
                             "e_j ⊙ v_A), so embed the history and the target alike")
        if rows is not None:
            return self._scores(keys, query, rows=rows, valid=None, training=training)
        if key_mask is None:
            return self._scores(keys, query, rows=None, valid=None, training=training)
        if tracing_inside_xla():
            # XLA compiles static shapes: the packed rows' data-dependent count fails its dynamic padder (the
            # softmax weights' gradient), so an XLA-compiled step runs the MLP over every slot, Dice masked.
            scores = self._scores(keys, query, rows=None, valid=key_mask, training=training)
            return tf.where(key_mask, scores, tf.zeros_like(scores))
        positions = tf.where(key_mask)  # [n_valid, 2]: (row, step) of each valid behaviour
        scores = self._scores(tf.gather_nd(keys, positions), query, rows=positions[:, 0], valid=None,
                              training=training)
        return tf.scatter_nd(positions, scores, tf.shape(key_mask, out_type=tf.int64))

    def _scores(self, keys, query, rows, valid, training):
        """Scores of ``keys`` (``[batch, len, dim]``, or packed ``[n, dim]`` with their ``rows``); ``valid``:
        Dice's mask over the keys' positions, None when every key is valid (packed keys are)."""
        hidden = self._first(keys, query, rows=rows)
        if self._score is None:
            return tf.squeeze(hidden, axis=-1)
        # The layers after the first act on each behaviour alone: run them on [batch·len, units] rows (packed
        # keys are rows already), where a Dense layer is one matmul (on [batch, len, units] Keras builds a tensordot, ~20 shape nodes each
        # way), and Dice's moments are the same sums.
        hidden = tf.reshape(hidden, [-1, hidden.shape[-1]])
        row_mask = None if valid is None else tf.reshape(valid, [-1])
        for index, activation in enumerate(self._activations):
            if index:
                hidden = self._dense[index - 1](hidden)
            if training and row_mask is None and _dice_as_batch_norm_applies(activation, hidden):
                hidden = dice_as_batch_norm(activation, hidden)
            elif takes_mask(activation):
                hidden = activation(hidden, training=training, mask=row_mask)
            else:
                hidden = activation(hidden)
        return tf.reshape(self._score(hidden), tf.shape(keys)[:-1])

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "activation": self.activation}


def sum_rows(values, rows, count):
    """``values [n, ...]`` summed per row: ``[count, ...]``, entry ``r`` the sum of the ``values[i]`` with
    ``rows[i] = r`` (``[n]`` int64, ascending), zeros for a row without any.

    ``tf.math.unsorted_segment_sum`` would do, but its gradient gathers with a guard against negative ids (a
    compare, a select over ``[n, ...]``); sorted ids need neither: the gradient of a sorted segment sum is a
    plain gather.
    """
    sums = tf.math.segment_sum(values, rows)  # as many rows as the last key's row + 1
    padding = [[0, tf.cast(count, tf.int32) - tf.shape(sums)[0]]] + [[0, 0]] * (values.shape.rank - 1)
    return tf.pad(sums, padding)


@tf.custom_gradient
def gather_rows(values, rows):
    """``tf.gather(values, rows)`` for ascending ``rows`` (``[n]`` int64): each row's entry repeated for its
    keys. Its gradient is ``sum_rows`` (a sorted segment sum) instead of the unsorted segment sum TensorFlow
    builds for a gather's gradient into a dense tensor."""
    def gradient(upstream):
        return sum_rows(upstream, rows, tf.shape(values)[0]), None

    return tf.gather(values, rows), gradient


def _dice_as_batch_norm_applies(activation, rows) -> bool:
    """Whether ``dice_as_batch_norm`` computes what ``activation(rows, training=True)`` does: a ``Dice`` exactly
    (no subclass) whose settings are the ones it knows (``epsilon``, ``momentum``), float32 rows, outside XLA."""
    if type(activation) is not Dice or rows.dtype != tf.float32 or tracing_inside_xla():
        return False
    settings = set(activation.get_config()) - set(tf.keras.layers.Layer.get_config(activation))
    return settings == {"epsilon", "momentum"}


def dice_as_batch_norm(dice: Dice, rows: tf.Tensor) -> tf.Tensor:
    """``dice(rows, training=True)`` over ``[n, channels]`` rows that are all valid, its standardisation
    ``x̂ = (s − E[s]) / sqrt(Var[s] + ε)`` as one batch normalisation (``FusedBatchNormV3``, scale 1, offset 0).

    Same function, same moving-moment updates: batch normalisation's training statistics are Dice's (per-channel
    mean and biased variance over the rows). Why: the op and its gradient op each make one or two passes
    over the rows where Dice's own form takes ~5 forward and ~15 backward elementwise passes (oneDNN kernels).
    The packed activation unit's rows are its valid behaviours, so no mask is needed; with a mask, or under
    XLA, or another policy than float32, the unit calls the layer itself (``_dice_as_batch_norm_applies``).
    """
    channels = rows.shape[-1]
    if not dice.built:
        with tf.name_scope(dice.name):
            dice.build(tf.TensorShape([None, channels]))
    standardised, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=tf.reshape(rows, [-1, 1, 1, channels]), scale=tf.ones([channels]), offset=tf.zeros([channels]),
        mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=dice.epsilon, exponential_avg_factor=1.0,
        data_format="NHWC", is_training=True)
    # The op returns the variance with Bessel's n / (n − 1) (for its own moving average), and NaN moments for
    # no rows; Dice averages the biased variance and takes zeros for an empty batch.
    count = tf.cast(tf.shape(rows)[0], rows.dtype)
    variance = unbiased_variance * (tf.maximum(count - 1.0, 0.0) / tf.maximum(count, 1.0))
    for moving, batch in ((dice.moving_mean, mean), (dice.moving_variance, variance)):
        batch = tf.where(count > 0, batch, tf.zeros_like(batch))
        moving.assign(dice.momentum * moving + (1.0 - dice.momentum) * batch)
    p = tf.sigmoid(tf.reshape(standardised, [-1, channels]))
    return rows * (dice.alpha + (1.0 - dice.alpha) * p)


class TargetAttention(tf.keras.layers.Layer):
    """DIN pooling: ``v_U(A) = Σ_j w_j e_j`` with ``w_j = a(e_j, v_A)`` from an ``ActivationUnit``.

    ``call(keys [batch, len, dim], key_mask [batch, len] bool, query [batch, dim])`` → ``[batch, dim]``; or
    ``call(keys [n, dim], None, query, rows=rows)`` with the valid behaviours already packed (key ``i`` belongs
    to row ``rows[i]``, ``[n]`` int64, ascending, as ``tf.where`` of a mask gives them): the same result
    without the padding ever built (DIN looks up only the valid behaviours' embeddings). Padded behaviours
    (``key_mask`` False) get weight exactly 0, so padding never changes the result and an empty history pools
    to zeros. ``normalization``: ``"none"`` (DIN: raw scores, the weights need not sum to 1)
    or ``"softmax"`` over the valid behaviours (DIEN's attention). ``weights_for(...)`` gives the ``[batch, len]``
    weights themselves (DIEN's AUGRU consumes them).
    """

    def __init__(self, hidden_units=(80, 40), activation="dice", normalization="none", **kwargs):
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"{self.name}: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.hidden_units = tuple(hidden_units)
        self.activation = activation
        self.normalization = normalization
        self.unit = ActivationUnit(hidden_units, activation, name="activation_unit")

    def weights_for(self, keys, key_mask, query, training=None):
        """``[batch, len]`` weights ``w_j``, 0 at padding."""
        scores = self.unit(keys, query, key_mask=key_mask, training=training)
        mask = tf.cast(key_mask, scores.dtype)
        if self.normalization == "softmax":
            # The lowest finite score (not −inf) for padding, so an all-padding row gives zeros, not NaN.
            lowest = tf.fill(tf.shape(scores), tf.constant(scores.dtype.min, scores.dtype))
            scores = tf.nn.softmax(tf.where(key_mask, scores, lowest), axis=-1)
        return scores * mask

    def call(self, keys, key_mask, query, training=None, rows=None):
        if rows is not None:
            return self._pooled_packed(keys, rows, query, training)
        weights = self.weights_for(keys, key_mask, query, training=training)
        # A batched [1, len] × [len, dim] matmul: the same sums as einsum("bl,bld->bd"), a third less CPU time
        # forward and backward (measured at [256, 50, 32]).
        return tf.squeeze(tf.matmul(weights[:, tf.newaxis, :], keys), axis=1)

    def _pooled_packed(self, keys, rows, query, training):
        """``Σ_j w_j e_j`` per row from the valid behaviours alone: ``keys [n, dim]``, key ``i`` of row
        ``rows[i]``."""
        scores = self.unit(keys, query, rows=rows, training=training)
        batch = tf.shape(query, out_type=rows.dtype)[0]
        if self.normalization == "softmax":
            # Per-row softmax over the row's keys (a row without keys has none to weigh). The max only keeps
            # exp in range: softmax does not depend on it, so no gradient goes through it.
            largest = tf.stop_gradient(tf.math.unsorted_segment_max(scores, rows, batch))
            exponentials = tf.exp(scores - tf.gather(largest, rows))
            scores = exponentials / gather_rows(sum_rows(exponentials, rows, batch), rows)
        return sum_rows(scores[:, tf.newaxis] * keys, rows, batch)

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "activation": self.activation,
                "normalization": self.normalization}
