"""Bi-DEFUSE's two-task head: in-window and out-window conversion over shared and task experts."""

import tensorflow as tf


class BiDistributionHeads(tf.keras.layers.Layer):
    """The multi-task head of Bi-DEFUSE (Chen et al., WWW 2022, §4.2, Fig. 3): single-layer experts for the
    in-window task, the out-window task and both (shared); each task mixes its own expert with the shared one
    by a learned softmax attention and ends in a logit.

        h_in, h_sh, h_out = E_in(x), E_sh(x), E_out(x)                 [batch, units] each
        m_t = a_t,0 · h_t + a_t,1 · h_sh,   a_t = softmax(v_t) ∈ R²     t ∈ {in, out}
        s_IP = w_in · m_in + b_in,   s_DP = w_out · m_out + b_out       [batch] each

    ``F_IP = sigmoid(s_IP)`` estimates ``p(y=1, d ≤ w_o | x)``, ``F_DP = sigmoid(s_DP)`` ``p(y=1, d > w_o | x)``;
    the CVR is their sum (Eq. 18). Input ``[batch, d]``; output ``{"inw_logit", "outw_logit"}`` ``[batch]``.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.experts = {name: tf.keras.layers.Dense(units, activation="relu", name=f"{name}_expert")
                        for name in ("in_window", "shared", "out_window")}
        self.logits = {name: tf.keras.layers.Dense(1, dtype="float32", name=f"{name}_logit")
                       for name in ("in_window", "out_window")}

    def build(self, input_shape):
        self.attention = {name: self.add_weight(name=f"{name}_attention", shape=[2], initializer="zeros")
                          for name in ("in_window", "out_window")}
        super().build(input_shape)

    def call(self, inputs):
        shared = self.experts["shared"](inputs)
        out = {}
        for task, key in (("in_window", "inw_logit"), ("out_window", "outw_logit")):
            mix = tf.nn.softmax(self.attention[task])
            mixed = mix[0] * self.experts[task](inputs) + mix[1] * shared
            out[key] = tf.squeeze(self.logits[task](mixed), axis=-1)
        return out

    def get_config(self):
        return {**super().get_config(), "units": self.units}
