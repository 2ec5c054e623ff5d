"""SASRec: causal softmax self-attention over a user's items (Kang & McAuley, "Self-Attentive Sequential
Recommendation", ICDM 2018), the baseline of generative retrieval (HSTU, Zhai et al. 2024).

Same call as ``tfrecsys.layers.hstu.HSTUStack`` so that a model swaps one for the other by config:
``(x [batch, seq_len, dim], lengths [batch], timestamps [batch, seq_len] int64) -> [batch, seq_len, dim]``
(SASRec does not read the timestamps: its notion of order is the position embedding the model adds to ``x``).
"""

import tensorflow as tf


def causal_valid_mask(lengths, seq_len):
    """``mask[b, i, j] = j <= i and j < lengths[b]``: ``[batch, seq_len, seq_len]`` bool. A query sees itself
    and earlier valid items, never a later or padded one, so an output never depends on what follows it."""
    positions = tf.range(seq_len)
    causal = positions[tf.newaxis, :] <= positions[:, tf.newaxis]
    valid_keys = tf.sequence_mask(lengths, seq_len)
    return tf.logical_and(causal[tf.newaxis], valid_keys[:, tf.newaxis, :])


class SASRecBlock(tf.keras.layers.Layer):
    """One SASRec block, pre-norm (the paper's residual + LayerNorm + dropout around each sub-layer, with the
    LayerNorm moved before it as in later Transformer practice, so a stack trains without warm-up):

        H = X + Dropout(MultiHeadSoftmaxAttention(LN(X)) under the causal mask)
        Y = H + Dropout(W_2 · Dropout(ReLU(W_1 · LN(H) + b_1)) + b_2)

    Shapes: ``x`` ``[batch, seq_len, dim]``, ``mask`` ``[batch, seq_len, seq_len]`` bool
    (``causal_valid_mask``) → ``[batch, seq_len, dim]``. The attention is
    ``softmax(Q Kᵀ / √d_head) V`` per head, ``d_head = dim / num_heads``.
    """

    def __init__(self, num_heads: int = 1, dropout: float = 0.0, ffn_multiplier: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.dropout = dropout
        self.ffn_multiplier = ffn_multiplier

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if dim % self.num_heads:
            raise ValueError(f"{self.name}: width {dim} is not divisible by num_heads={self.num_heads}")
        self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="attention_norm")
        self.attention = tf.keras.layers.MultiHeadAttention(self.num_heads, dim // self.num_heads,
                                                            dropout=self.dropout, name="attention")
        self.ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="ffn_norm")
        self.ffn_in = tf.keras.layers.Dense(dim * self.ffn_multiplier, activation="relu", name="ffn_in")
        self.ffn_out = tf.keras.layers.Dense(dim, name="ffn_out")
        self.residual_dropout = tf.keras.layers.Dropout(self.dropout)
        self.ffn_dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def call(self, x, mask, training=None):
        normed = self.attention_norm(x)
        attended = self.attention(normed, normed, attention_mask=mask, training=training)
        h = x + self.residual_dropout(attended, training=training)
        hidden = self.ffn_dropout(self.ffn_in(self.ffn_norm(h)), training=training)
        return h + self.residual_dropout(self.ffn_out(hidden), training=training)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.dropout,
                "ffn_multiplier": self.ffn_multiplier}


class SASRecStack(tf.keras.layers.Layer):
    """``num_blocks`` SASRec blocks and a final LayerNorm; outputs at padded positions are 0.

    ``call(x [batch, seq_len, dim], lengths [batch], timestamps=None)`` → ``[batch, seq_len, dim]``; the output
    at position ``i`` encodes items ``0..i`` (the query for the item at ``i + 1``).
    """

    def __init__(self, num_blocks: int = 2, num_heads: int = 1, dropout: float = 0.0, ffn_multiplier: int = 1,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.dropout = dropout
        self.ffn_multiplier = ffn_multiplier
        self.blocks = [SASRecBlock(num_heads, dropout, ffn_multiplier, name=f"block_{i}") for i in range(num_blocks)]
        self.output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="output_norm")

    def call(self, x, lengths, timestamps=None, training=None):
        seq_len = tf.shape(x)[1]
        mask = causal_valid_mask(lengths, seq_len)
        for block in self.blocks:
            x = block(x, mask, training=training)
        valid = tf.sequence_mask(lengths, seq_len, dtype=x.dtype)[..., tf.newaxis]
        return self.output_norm(x) * valid

    def get_config(self):
        return {**super().get_config(), "num_blocks": self.num_blocks, "num_heads": self.num_heads,
                "dropout": self.dropout, "ffn_multiplier": self.ffn_multiplier}
