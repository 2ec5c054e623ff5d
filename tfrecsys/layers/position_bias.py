"""Shallow position-bias tower (Zhao et al., "Recommending What Video to Watch Next", RecSys 2019, §4.3).

A small tower reads only selection-bias features (position, device) and gives a bias logit ``b(x_bias)``
that is added, in training only, to the logit of each engagement task:

    p_train = sigmoid(z(x) + b(x_bias)),        p_served = sigmoid(z(x))

so the main network ``z`` is trained on clicks explained in part by where the item was shown, and serving
(which does not know the position yet) scores with ``z`` alone: the debiased score. Position is dropped
during training (the position embedding of a row is zeroed with probability ``position_dropout``) so the
tower does not lean on position alone when it is unknown or noisy.
"""

from typing import Sequence

import tensorflow as tf

from tfrecsys.features.embedding import FeatureEmbedding
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled


def add_bias_logit(probability: tf.Tensor, bias_logit: tf.Tensor) -> tf.Tensor:
    """``sigmoid(logit(p) + b) = p / (p + (1 − p)·exp(−b))``, shapes ``[batch]``: exact for any family that
    serves probabilities, without reading the logit back (and so without its ±∞ at p = 0 or 1)."""
    probability = tf.cast(probability, tf.float32)
    return tf.math.divide_no_nan(probability, probability + (1.0 - probability) * tf.exp(-bias_logit))


class PositionBiasTower(tf.keras.layers.Layer):
    """``b = MLP([e_position ⊙ keep ; e_device ; …])`` → ``[batch]`` float32, ``keep ~ Bernoulli(1 −
    position_dropout)`` per row in training (1 otherwise).

    ``embedding``: a view over the selection-bias features (the model's tables, e.g.
    ``model.embedding_view(["position", "device"])``); ``position_feature`` the one dropped out;
    ``hidden_units``: widths before the one-unit output (empty: a linear tower, one weight per position and
    device embedding dimension).
    """

    def __init__(self, embedding: FeatureEmbedding, position_feature: str = "position",
                 hidden_units: Sequence[int] = (), position_dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if position_feature not in embedding.include:
            raise ValueError(f"position tower: position_feature {position_feature!r} is not one of its features "
                             f"{embedding.include}")
        if not 0.0 <= position_dropout < 1.0:
            raise ValueError(f"position tower: position_dropout must lie in [0, 1), got {position_dropout}")
        self.embedding = embedding
        self.position_feature = position_feature
        self.hidden_units = tuple(hidden_units)
        self.position_dropout = float(position_dropout)
        self.tower = MLP(self.hidden_units, output_units=1, name="bias_mlp")

    @property
    def feature_names(self) -> list[str]:
        return list(self.embedding.include)

    def call(self, features, training=None):
        embedded = dict(self.embedding(features))
        if training and self.position_dropout:
            position = embedded[self.position_feature]
            keep = tf.random.uniform(tf.shape(position)[:1]) >= self.position_dropout
            embedded[self.position_feature] = position * tf.cast(keep, position.dtype)[:, tf.newaxis]
        x = concat_pooled(embedded, self.embedding.schema, self.feature_names)
        return tf.cast(self.tower(x, training=training)[:, 0], tf.float32)

    def get_config(self):
        return {**super().get_config(), "embedding": self.embedding.get_config(),
                "position_feature": self.position_feature, "hidden_units": list(self.hidden_units),
                "position_dropout": self.position_dropout}

    @classmethod
    def from_config(cls, config):
        config["embedding"] = FeatureEmbedding.from_config(config["embedding"])
        return cls(**config)
