"""Data-adaptive activations of DIN (Zhou et al., KDD 2018, §4.3): PReLU and Dice.

Both act elementwise on ``[..., channels]`` with one learned ``α`` per channel (the last axis). ``activation_layer``
turns a config name (``"dice"``, ``"prelu"`` or any Keras activation) into a layer, so an MLP can take any of them.
"""

import tensorflow as tf


class PReLU(tf.keras.layers.Layer):
    """``f(s) = s`` if ``s > 0`` else ``α s`` (the paper's eq. 3 with the rectifier point fixed at 0); ``α`` starts
    at 0 (ReLU). ``[..., channels] → [..., channels]``."""

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=[input_shape[-1]], initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return tf.where(inputs > 0, inputs, self.alpha * inputs)


class Dice(tf.keras.layers.Layer):
    """Dice (DIN eq. 4): ``f(s) = p(s)·s + (1 − p(s))·α·s``, ``p(s) = sigmoid((s − E[s]) / sqrt(Var[s] + ε))``.

    PReLU whose rectifier point follows the data: ``E[s]`` and ``Var[s]`` are per-channel moments of the
    mini-batch in training and moving averages (``momentum``) at inference, as in batch normalisation.

    ``call(inputs [..., channels], training, mask [...] bool)``: with ``mask`` the moments are taken over the
    valid positions only, so padding of a behaviour sequence changes neither the statistics nor, through them,
    the activation of real behaviours. Moving moments are ON_READ/MEAN variables like Keras'
    BatchNormalization's, so each replica keeps its own and a read averages them. Under a mixed-precision
    policy (bfloat16/float16 compute) the moving moments stay float32 and are updated in float32: an update
    of ``(1 − momentum)·x`` would round away in 16 bits. The whole activation is computed in float32 too (16-bit
    in, 16-bit out; casts that are no-ops under float32): in float16 ``ε = 1e-8`` rounds to 0, so a channel
    constant over the batch (zero variance) gave ``0 · inf = NaN``, and the gradient's ``(Var[s] + ε)^(−3/2)``
    overflows from ``Var[s] ≈ 1e-4`` on (every such step skipped by the loss scale).
    """

    def __init__(self, epsilon: float = 1e-8, momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.momentum = momentum

    def build(self, input_shape):
        channels = input_shape[-1]
        # Not autocast (read as float32 inside a 16-bit call): Dice computes in float32, and the running
        # averages are kept in float32.
        self.alpha = self.add_weight(name="alpha", shape=[channels], initializer="zeros", experimental_autocast=False)
        moving = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                      aggregation=tf.VariableAggregation.MEAN, experimental_autocast=False)
        self.moving_mean = self.add_weight(name="moving_mean", shape=[channels], initializer="zeros", **moving)
        self.moving_variance = self.add_weight(name="moving_variance", shape=[channels], initializer="ones",
                                               **moving)
        super().build(input_shape)

    def call(self, inputs, training=None, mask=None):
        wide = tf.cast(inputs, tf.float32)
        if training:
            outputs, mean, variance = _dice_over_batch(wide, mask, tf.cast(self.alpha, tf.float32), self.epsilon)
            for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                moving.assign(self.momentum * moving + (1.0 - self.momentum) * batch)
            return tf.cast(outputs, inputs.dtype)
        p = tf.sigmoid((wide - self.moving_mean) * tf.math.rsqrt(self.moving_variance + self.epsilon))
        # p·s + (1 − p)·α·s factored as s·(α + (1 − α)·p): fewer passes over [..., channels].
        return tf.cast(wide * (self.alpha + (1.0 - self.alpha) * p), inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "momentum": self.momentum}


def _dice_over_batch(inputs, mask, alpha, epsilon: float):
    """Dice in training, ``(f(s) [..., channels], E[s], Var[s] [channels])`` with the moments over the valid
    positions (all of them without ``mask``), and the gradient of ``f`` written out.

    Why by hand: differentiated by TensorFlow, each of the step's products of a ``[n, channels]`` tensor with a
    ``[channels]`` one builds a dynamic broadcast reduction (about 85 gradient nodes per Dice with an unknown
    batch size: DIEN's attention has two); the gradient below is the same algebra, batch-norm style, in ~25
    nodes. With ``x̂ = (s − E[s]) · r``, ``r = (Var[s] + ε)^(−1/2)``, ``p = σ(x̂)``, ``f = s · (α + (1 − α) p)``,
    ``w`` the mask and ``m = Σ w``:
    ``∂x̂ = ∂f · s (1 − α) p (1 − p)``; ``∂α = Σ ∂f · s (1 − p)``;
    ``∂s = ∂f (α + (1 − α) p) + r ∂x̂ − (w / m) Σ r ∂x̂ − (w / m) r³ (s − E[s]) Σ ∂x̂ (s − E[s])``
    (the sums over positions, per channel; the mean's own term ``Σ w (s − E[s])`` is 0). The moments are
    outputs for the moving averages only: no gradient flows back through them.
    """
    flat = inputs if inputs.shape.rank == 2 else tf.reshape(inputs, [-1, inputs.shape[-1]])
    # Masked sums as [1, n] × [n, channels] matmuls: no weighted copy of the inputs to build and reduce,
    # forward or backward (with the factored output: 8% less CPU time on DIN's [256, 50, 80]).
    weights = (tf.ones([1, tf.shape(flat)[0]], flat.dtype) if mask is None
               else tf.reshape(tf.cast(mask, flat.dtype), [1, -1]))
    count = tf.maximum(tf.reduce_sum(weights), 1.0)

    @tf.custom_gradient
    def dice(flat, alpha):
        mean = tf.matmul(weights, flat)[0] / count
        centred = flat - mean
        variance = tf.matmul(weights, tf.square(centred))[0] / count
        rsqrt = tf.math.rsqrt(variance + epsilon)
        p = tf.sigmoid(centred * rsqrt)
        outputs = flat * (alpha + (1.0 - alpha) * p)

        def gradient(d_outputs, *unused_moment_gradients):
            d_standardised = d_outputs * flat * (1.0 - alpha) * p * (1.0 - p)
            d_alpha = tf.reduce_sum(d_outputs * flat * (1.0 - p), axis=0)
            sums = tf.reduce_sum(tf.concat([d_standardised, d_standardised * centred], -1), axis=0)
            d_by_mean, d_by_variance = tf.split(sums * tf.concat([rsqrt, rsqrt * rsqrt * rsqrt], -1) / count, 2)
            d_flat = (d_outputs * (alpha + (1.0 - alpha) * p) + d_standardised * rsqrt
                      - tf.transpose(weights) * (d_by_mean + d_by_variance * centred))
            return d_flat, d_alpha

        return (outputs, tf.stop_gradient(mean), tf.stop_gradient(variance)), gradient

    outputs, mean, variance = dice(flat, alpha)
    return (outputs if inputs.shape.rank == 2 else tf.reshape(outputs, tf.shape(inputs))), mean, variance


def activation_layer(activation: str, **kwargs) -> tf.keras.layers.Layer:
    """``"dice"`` → ``Dice``, ``"prelu"`` → ``PReLU``, any other Keras activation name → ``Activation``;
    ``kwargs`` (a layer ``name``) go to the layer."""
    if activation == "dice":
        return Dice(**kwargs)
    if activation == "prelu":
        return PReLU(**kwargs)
    return tf.keras.layers.Activation(activation, **kwargs)


def takes_mask(layer: tf.keras.layers.Layer) -> bool:
    """Whether ``layer`` (from ``activation_layer``) takes ``mask=`` and ``training=``: only Dice does."""
    return isinstance(layer, Dice)
