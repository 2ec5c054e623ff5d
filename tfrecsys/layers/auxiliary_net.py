"""DIEN's auxiliary network: how likely a behaviour is to follow an interest state (Zhou et al., AAAI 2019, §4.2).

The paper scores the pair with an inner product, ``σ(h_t · e_b[t+1])``; the authors' released code and DeepCTR
score it with a small MLP over the concatenation, which is what ``AuxiliaryNet`` is. ``auxiliary_loss``
(``tfrecsys.layers.augru``) takes either.
"""

import tensorflow as tf

from tfrecsys.layers.mlp import MLP


class AuxiliaryNet(tf.keras.layers.Layer):
    """``s(h_t, e) = w · MLP([h_t ; e]) + b``, the logit that behaviour ``e`` follows the interest ``h_t``.

    ``call(states [..., d_h], behaviours [..., d])`` → ``[...]`` logits, the leading axes broadcast against each
    other (``[batch, len]`` and ``[batch, len]``; or ``[pairs]`` states against ``[2, pairs]`` positive and
    negative behaviours). The first layer is applied as ``W_h h_t + W_e e + b`` (``MLP`` on parts, the same
    kernel as on the concatenation), so a state scored against several behaviours is projected once.
    ``hidden_units`` ``(100, 50)`` with ``sigmoid`` activations are the DIEN authors' (and DeepCTR's) auxiliary
    net: unlike the inner product, the net does not force the item embeddings the ranking head reads to align
    with the GRU's states, so the auxiliary task shapes the extractor without bending the shared embedding
    space.
    """

    def __init__(self, hidden_units=(100, 50), activation="sigmoid", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(hidden_units)
        self.activation = activation
        self.mlp = MLP(self.hidden_units, activation=activation, output_units=1, name="mlp")

    def call(self, states, behaviours):
        return tf.squeeze(self.mlp((states, tf.cast(behaviours, states.dtype))), axis=-1)

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "activation": self.activation}
