"""Multi-layer perceptron: the tower, expert and gate body of most ranking models."""

import tensorflow as tf

from tfrecsys.layers.xla import XlaLayer


class MLP(XlaLayer):
    """``h_{l+1} = dropout(act(W_l h_l + b_l))`` for each width in ``hidden_units``; ``[batch, d_in] → [batch, d_out]``.

    ``output_units``: an optional last linear layer (no activation), e.g. 1 for a logit.
    ``xla``: run the stack as one XLA-compiled function in training and evaluation (bias adds and activations
    fuse into the matmuls; for GPUs: on CPU a step measured 2-4x slower, see ``tfrecsys.layers.xla``); exported
    serving signatures take the plain path.

    The input may also be a tuple of parts ``(x_1, …, x_k)`` standing for their concatenation on the last axis,
    whose leading axes broadcast against each other: the first layer is then ``Σ_i x_i W_1,i + b_1`` with
    ``W_1 = [W_1,1 ; …; W_1,k]`` (the same kernel), so a part shared by several rows (one state scored against
    several behaviours) is projected once, and the concatenation is never built.
    """

    def __init__(self, hidden_units, activation="relu", dropout=0.0, output_units=None, xla=False, **kwargs):
        super().__init__(xla=xla, **kwargs)
        self.hidden_units = list(hidden_units)
        self.activation = activation
        self.dropout = dropout
        self.output_units = output_units
        # The layers take the MLP's own dtype policy (a float32 tower in a mixed precision model), not the global one.
        policy = self.dtype_policy
        self._dense = [tf.keras.layers.Dense(units, activation=activation, dtype=policy) for units in self.hidden_units]
        self._dropout = [tf.keras.layers.Dropout(dropout, dtype=policy) for _ in self.hidden_units] if dropout else []
        self._output = tf.keras.layers.Dense(output_units, dtype=policy) if output_units else None

    def plain_call(self, inputs, training=None):
        layers = self._dense + ([self._output] if self._output is not None else [])
        hidden = inputs
        for i, dense in enumerate(layers):
            if i == 0 and isinstance(inputs, (tuple, list)):
                hidden = _dense_on_parts(dense, inputs)
            else:
                hidden = dense(hidden)
            if self._dropout and i < len(self._dense):
                hidden = self._dropout[i](hidden, training=training)
        return hidden

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "activation": self.activation,
                "dropout": self.dropout, "output_units": self.output_units}


def _dense_on_parts(dense: tf.keras.layers.Dense, parts) -> tf.Tensor:
    """``dense`` applied to the concatenation of ``parts`` on the last axis, as ``act(Σ_i x_i W_i + b)``."""
    widths = [part.shape[-1] for part in parts]
    if not dense.built:
        with tf.name_scope(dense.name):
            dense.build(tf.TensorShape([None, sum(widths)]))
    kernels = tf.split(dense.kernel, widths, axis=0)
    projected = flat_matmul(parts[0], kernels[0])
    for part, kernel in zip(parts[1:], kernels[1:]):
        projected = projected + flat_matmul(part, kernel)
    return dense.activation(projected + dense.bias)


def flat_matmul(inputs, kernel):
    """``inputs [..., d] · kernel [d, units]`` → ``[..., units]`` as one ``[rows, d]`` matmul (e.g. ``[batch, len, d]``
    as ``[batch·len, d]``).

    The same product as ``tf.tensordot(inputs, kernel, axes=1)`` (Keras' Dense on a 3-D input), which with an
    unknown batch size builds ~20 shape nodes forward and as many backward; with the static inner dimensions
    this is two reshapes around the matmul.
    """
    flat = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]), kernel)
    return tf.reshape(flat, tf.concat([tf.shape(inputs)[:-1], [kernel.shape[-1]]], axis=0))
