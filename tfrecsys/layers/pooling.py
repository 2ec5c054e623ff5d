"""Pooling of variable-length sequences under a mask."""

import tensorflow as tf

from tfrecsys.features.schema import SequenceFeature


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """``sum_t m_t x_t / max(1, sum_t m_t)``: ``[batch, seq_len, dim]`` and bool ``[batch, seq_len]`` →
    ``[batch, dim]``; an empty sequence pools to zeros rather than NaN. A raw float sequence ``[batch, seq_len]``
    (ratings, dwell times) pools to ``[batch, 1]``."""
    if values.shape.rank == 2:
        values = values[..., tf.newaxis]
    weights = tf.cast(mask, values.dtype)[..., tf.newaxis]
    total = tf.reduce_sum(values * weights, axis=1)
    count = tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
    return total / count


def concat_pooled(embedded: dict, schema, feature_names) -> tf.Tensor:
    """``[e_1 ; … ; mean_t e_seq,t ; … ; dense]`` → ``[batch, Σ d_f]``: the flat input of an MLP tower.

    ``embedded`` is ``FeatureEmbedding``'s output; id and dense features are taken as they are, sequences are
    mean-pooled under their mask, in the order of ``feature_names``.
    """
    parts = []
    for name in feature_names:
        if embedded[name].dtype in (tf.int64, tf.string):
            raise ValueError(f"feature {name!r} is a raw {embedded[name].dtype.name} input (not embedded): a tower "
                             "cannot concatenate it; leave it out of the tower or derive a float feature from it")
        if isinstance(schema[name], SequenceFeature):
            parts.append(masked_mean(embedded[name], embedded[name + "_mask"]))
        else:
            parts.append(embedded[name])
    return tf.concat(parts, axis=-1)
