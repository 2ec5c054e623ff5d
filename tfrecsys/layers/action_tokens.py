"""The ranking sequence of generative recommenders (Zhai et al., "Actions Speak Louder than Words", ICML 2024,
§3.2.2): items and the user's actions on them interleaved in one time series, the candidates appended.

    x_0, a_0, x_1, a_1, …, x_{n−1}, a_{n−1}, c_1, …, c_m          tokens of row b, then padding

``x_i`` the embedding of the i-th history item, ``a_i`` of the action taken on it (click / no click, a rating),
``c_k`` of the k-th candidate item. Both tokens of an event carry its timestamp; candidates carry theirs (the
request time). An encoder with HSTU's candidate mask (``tfrecsys.layers.hstu``, ``num_targets = m``) then
lets every candidate read the whole history, actions included, in its bottom layer (target-aware, unlike a
next-item model) but no other candidate, so the m candidates of one pass score as m separate passes.
"""

import tensorflow as tf


class InterleavedActionTokens(tf.keras.layers.Layer):
    """Builds the token sequence above; no weights.

    Call: ``(items [B, L, d], actions [B, L, d], timestamps [B, L] int64, lengths [B] int, candidates [B, M, d],
    candidate_lengths [B] int, candidate_timestamps [B, M] int64)`` →
    ``(tokens [B, 2L + M, d], token_timestamps [B, 2L + M] int64, token_lengths [B] int32 = 2n + m,
    candidate_positions [B, M] int32 = 2n + k)``. Row ``b``'s valid history is its first ``n = lengths[b]``
    events, its valid candidates the first ``m = candidate_lengths[b]``; tokens past ``2n + m`` are 0.
    """

    def call(self, items, actions, timestamps, lengths, candidates, candidate_lengths, candidate_timestamps):
        batch, history_width, dim = tf.shape(items)[0], tf.shape(items)[1], tf.shape(items)[2]
        num_candidates = tf.shape(candidates)[1]
        lengths = tf.cast(lengths, tf.int32)
        candidate_lengths = tf.cast(candidate_lengths, tf.int32)
        interleaved = tf.reshape(tf.stack([items, actions], axis=2), [batch, 2 * history_width, dim])
        interleaved_times = tf.repeat(tf.cast(timestamps, tf.int64), 2, axis=1)
        stacked = tf.concat([interleaved, tf.cast(candidates, items.dtype)], axis=1)
        stacked_times = tf.concat([interleaved_times, tf.cast(candidate_timestamps, tf.int64)], axis=1)
        # A per-row permutation of [history tokens | candidates] that moves the candidates right after the
        # row's own 2n history tokens (its padded history slots go after them).
        position = tf.range(2 * history_width + num_candidates)[None, :]
        history_end = 2 * lengths[:, None]
        source = tf.where(position < history_end, position,
                          tf.where(position < history_end + num_candidates,
                                   2 * history_width + position - history_end, position - num_candidates))
        token_lengths = 2 * lengths + candidate_lengths
        valid = tf.sequence_mask(token_lengths, 2 * history_width + num_candidates)
        tokens = tf.gather(stacked, source, batch_dims=1) * tf.cast(valid, items.dtype)[..., None]
        token_times = tf.gather(stacked_times, source, batch_dims=1) * tf.cast(valid, tf.int64)
        candidate_positions = history_end + tf.range(num_candidates)[None, :]
        return tokens, token_times, token_lengths, candidate_positions
