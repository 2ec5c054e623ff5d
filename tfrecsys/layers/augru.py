"""DIEN's recurrent layers (Zhou et al., Deep Interest Evolution Network, AAAI 2019, §4.2–4.3).

* ``InterestExtractor``: a GRU over the behaviour embeddings whose hidden state ``h_t`` is the interest at step
  ``t``, and ``auxiliary_loss``, which makes ``h_t`` predict the next behaviour against a negative one.
* ``InterestEvolution``: a second GRU over ``h_t`` driven by the attention of each ``h_t`` to the target ad,
  in one of three variants: AIGRU (attention scales the input), AGRU (attention replaces the update gate) and
  AUGRU (attention scales the update gate, the paper's final model), built on ``AttentionGRUCell``.

Gate convention: the paper writes ``h_t = (1 − u_t) ∘ h_{t−1} + u_t ∘ h̃_t``, Keras' GRU
``h_t = z_t ∘ h_{t−1} + (1 − z_t) ∘ h̃_t``, i.e. ``z = 1 − u``. ``AttentionGRUCell`` follows the paper, so
"attention 0" means "keep the state" in every variant.
"""

import tensorflow as tf

from tfrecsys.layers.target_attention import TargetAttention

GRU_VARIANTS = ("aigru", "agru", "augru")


class AttentionGRUCell(tf.keras.layers.Layer):
    """One step of AGRU or AUGRU; its input is ``[i_t ; a_t]`` ``[batch, dim + 1]``, the attention score last.

    ``u_t = σ(W^u i_t + U^u h_{t−1} + b^u)``, ``r_t = σ(W^r i_t + U^r h_{t−1} + b^r)``,
    ``h̃_t = tanh(W^h i_t + r_t ∘ (U^h h_{t−1}) + b^h)`` (Keras' ``reset_after`` form, as in DIEN), then
    AUGRU: ``ũ_t = a_t · u_t``, ``h_t = (1 − ũ_t) ∘ h_{t−1} + ũ_t ∘ h̃_t``;
    AGRU:  ``h_t = (1 − a_t) · h_{t−1} + a_t · h̃_t`` (no update gate).
    State ``[batch, units]``.
    """

    def __init__(self, units: int, variant: str = "augru", **kwargs):
        super().__init__(**kwargs)
        if variant not in ("agru", "augru"):
            raise ValueError(f"{self.name}: an attention GRU cell is 'agru' or 'augru', got {variant!r}")
        self.units = units
        self.variant = variant
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        dim = input_shape[-1] - 1
        # Columns: update, reset, candidate.
        self.kernel = self.add_weight(name="kernel", shape=[dim, 3 * self.units], initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=[self.units, 3 * self.units],
                                                initializer="orthogonal")
        self.bias = self.add_weight(name="bias", shape=[2, 3 * self.units], initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, states):
        state = states[0]
        x, attention = inputs[:, :-1], inputs[:, -1:]
        from_input = tf.matmul(x, self.kernel) + self.bias[0]
        from_state = tf.matmul(state, self.recurrent_kernel) + self.bias[1]
        x_u, x_r, x_h = tf.split(from_input, 3, axis=-1)
        h_u, h_r, h_h = tf.split(from_state, 3, axis=-1)
        reset = tf.sigmoid(x_r + h_r)
        candidate = tf.tanh(x_h + reset * h_h)
        update = attention * tf.sigmoid(x_u + h_u) if self.variant == "augru" else attention
        new_state = (1.0 - update) * state + update * candidate
        return new_state, [new_state]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "variant": self.variant}


class InterestExtractor(tf.keras.layers.Layer):
    """DIEN's interest extractor: ``h_t = GRU(e_b[t], h_{t−1})`` over the behaviours.

    ``call(behaviours [batch, len, dim], mask [batch, len] bool)`` → ``[batch, len, units]``; padded steps keep the
    state (Keras' masked RNN) and their output is not used by anything downstream.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        # RNN(GRUCell), not GRU: the same equations (reset_after), without GRU's cuDNN/CPU implementation
        # selection, whose graph took 7.5 s against 3.1 s to a first training step here.
        self.gru = tf.keras.layers.RNN(tf.keras.layers.GRUCell(units, name="gru_cell"), return_sequences=True,
                                       name="gru")

    def call(self, behaviours, mask, training=None):
        return self.gru(behaviours, mask=mask, training=training)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def auxiliary_loss(interests, next_behaviours, negative_behaviours, mask, scorer=None):
    """DIEN eq. 6: ``L_aux = −1/N Σ_i Σ_t [log σ(s(h_t, e_b[t+1])) + log(1 − σ(s(h_t, ê_b[t+1])))]``.

    ``interests`` ``[batch, len, d]`` are the extractor's states ``h_t``; ``next_behaviours`` and
    ``negative_behaviours`` ``[batch, len, d]`` the clicked behaviours and the sampled negatives, so that step
    ``t`` is scored against ``e_b[t+1]``; ``mask`` ``[batch, len]`` bool the valid behaviours. Pairs ``(t, t+1)``
    with both steps valid count; the mean is over them (0 when a batch has none), so history length does not
    weight a user. ``scorer(states, behaviours)`` → logits ``[batch, len − 1]`` is the auxiliary network
    ``s`` (e.g. ``tfrecsys.layers.auxiliary_net.AuxiliaryNet``); None is the paper's inner product
    ``s(h, e) = h · e`` (which needs ``d`` equal for both).
    """
    states, positives, negatives = interests[:, :-1], next_behaviours[:, 1:], negative_behaviours[:, 1:]
    valid = tf.cast(tf.logical_and(mask[:, :-1], mask[:, 1:]), tf.float32)
    if scorer is None:
        def scorer(states, behaviours):
            return tf.reduce_sum(states * behaviours, axis=-1)
    positive_logits = tf.cast(scorer(states, positives), tf.float32)
    negative_logits = tf.cast(scorer(states, negatives), tf.float32)
    # −log σ(x) = softplus(−x) and −log(1 − σ(x)) = softplus(x), without overflow.
    losses = tf.nn.softplus(-positive_logits) + tf.nn.softplus(negative_logits)
    return tf.math.divide_no_nan(tf.reduce_sum(losses * valid), tf.reduce_sum(valid))


class InterestEvolution(tf.keras.layers.Layer):
    """DIEN's interest-evolving layer: the final interest ``h'_T`` of a GRU over ``h_1..h_T`` steered by the
    target.

    ``a_t`` is the softmax over valid steps of the activation unit's score of ``h_t`` against the target
    ``e_a`` (``TargetAttention(normalization="softmax")``, as DeepCTR's DIEN; the paper writes the bilinear
    ``h_t W e_a``). Variants: ``aigru`` runs a plain GRU on ``a_t · h_t``; ``agru`` and ``augru`` run
    ``AttentionGRUCell``. ``call(interests [batch, len, d], mask [batch, len] bool, target [batch, d])`` →
    ``[batch, units]``, the state after the last valid step (zeros for an empty history).
    """

    def __init__(self, units: int, variant: str = "augru", attention_units=(64, 16), attention_activation="dice",
                 **kwargs):
        super().__init__(**kwargs)
        if variant not in GRU_VARIANTS:
            raise ValueError(f"{self.name}: variant must be one of {GRU_VARIANTS}, got {variant!r}")
        self.units = units
        self.variant = variant
        self.attention_units = tuple(attention_units)
        self.attention_activation = attention_activation
        self.attention = TargetAttention(attention_units, attention_activation, normalization="softmax",
                                         name="attention")
        if variant == "aigru":
            self.rnn = tf.keras.layers.RNN(tf.keras.layers.GRUCell(units, name="gru_cell"), name="gru")
        else:
            self.rnn = tf.keras.layers.RNN(AttentionGRUCell(units, variant, name=f"{variant}_cell"), name=variant)

    def call(self, interests, mask, target, training=None):
        scores = self.attention.weights_for(interests, mask, target, training=training)[..., tf.newaxis]
        # AIGRU needs the mask (a zero input still moves a GRU); AGRU/AUGRU keep their state at padding anyway,
        # where the attention is 0, and the mask makes that independent of float rounding.
        if self.variant == "aigru":
            return self.rnn(interests * scores, mask=mask, training=training)
        return self.rnn(tf.concat([interests, scores], axis=-1), mask=mask, training=training)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "variant": self.variant,
                "attention_units": self.attention_units, "attention_activation": self.attention_activation}
