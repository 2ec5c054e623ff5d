"""SIM's two-stage search over lifelong behaviour histories (Pi et al., "Search-based User Interest Modeling
with Lifelong Sequential Behavior Data for Click-Through Rate Prediction", CIKM 2020).

* General Search Unit (GSU): picks the ``K`` behaviours of a history of ``L`` (thousands) most relevant to
  the target, ``K ≪ L``: ``HardSearch`` (behaviours of the target's category) or ``SoftSearch`` (top-K
  inner products of learned embeddings). Selection is an index ``[batch, K]`` and a mask ``[batch, K]``;
  ``gather_selected`` takes the selected behaviours' columns, so only ``K`` of them are ever embedded after
  a hard search, and behaviours the GSU did not select cannot change what follows (no gradient reaches them).
* Exact Search Unit (ESU): ``ExactSearchUnit``, multi-head target attention over the ``K`` selected
  behaviours, each concatenated with the embedding of its time interval to the request
  (``TimeIntervalEmbedding``, from raw timestamps).
"""

import math

import tensorflow as tf

_MASKED_LOGIT = -1e9


def masked_logit(dtype: tf.DType) -> tf.Tensor:
    """The logit of a masked position in ``dtype``: ``-1e9``, or the lowest finite value of a narrower type.
    ``-1e9`` is ``-inf`` in float16 (mixed_float16), and a row masked throughout then softmaxes to NaN
    (``-inf − (−inf)``), which the ``× mask`` after it does not clear; float32 and bfloat16 keep ``-1e9``."""
    return tf.constant(max(_MASKED_LOGIT, dtype.min), dtype)


def gather_selected(values: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """``values`` ``[batch, L, ...]`` at the selected positions ``indices`` ``[batch, K]`` → ``[batch, K, ...]``."""
    return tf.gather(values, indices, batch_dims=1)


class HardSearch(tf.keras.layers.Layer):
    """GSU hard search: ``r_i = 1[C_i = C_a]``, the behaviours whose category equals the target's.

    Inputs: ``history_categories`` ``[batch, L]`` (raw ids, int64 or string, compared as they are),
    ``history_mask`` bool ``[batch, L]``, ``target_category`` ``[batch]``.
    Output: ``(indices [batch, K] int32, selected_mask [batch, K] bool)``, ``K = min(top_k, L)``: of the
    matching behaviours, the most recent ``K`` (histories are oldest first, so the highest positions), most
    recent first; when fewer than ``K`` match, the remaining slots are masked (their index is arbitrary).
    """

    def __init__(self, top_k: int, **kwargs):
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"HardSearch: top_k must be positive, got {top_k}")
        self.top_k = top_k

    def call(self, history_categories, history_mask, target_category):
        length = history_categories.shape[1]
        match = tf.logical_and(history_mask, tf.equal(history_categories, target_category[:, tf.newaxis]))
        # Score = position for a match, -1 otherwise: top-K of it is "the most recent K matches", ties impossible.
        positions = tf.broadcast_to(tf.range(length, dtype=tf.int32), tf.shape(history_categories))
        scores = tf.where(match, positions, -1)
        best = tf.math.top_k(scores, k=min(self.top_k, length), sorted=True)
        return best.indices, best.values >= 0

    def get_config(self):
        return {**super().get_config(), "top_k": self.top_k}


class SoftSearch(tf.keras.layers.Layer):
    """GSU soft search: ``r_i = (W_b e_i) · (W_a e_a)``, the ``K`` behaviours of the highest inner product.

    Inputs: ``history`` ``[batch, L, d]`` behaviour embeddings, ``history_mask`` bool ``[batch, L]``,
    ``target`` ``[batch, d_a]``.
    Output: ``(indices [batch, K] int32, selected_mask [batch, K] bool, relevance [batch, L])``,
    ``K = min(top_k, L)``, best first; equal scores keep the lower position first (``tf.math.top_k``'s rule);
    padded behaviours are never chosen before a valid one and are masked. ``relevance`` (``masked_logit``, -1e9,
    at padding) is what the GSU's auxiliary CTR loss pools by (``relevance_pooling``): the top-K selection
    itself has no gradient, so that loss is what trains ``W_a``, ``W_b``.
    """

    def __init__(self, top_k: int, projection_dim: int, **kwargs):
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"SoftSearch: top_k must be positive, got {top_k}")
        self.top_k = top_k
        self.projection_dim = projection_dim
        self.project_history = tf.keras.layers.Dense(projection_dim, use_bias=False, name="history_projection")
        self.project_target = tf.keras.layers.Dense(projection_dim, use_bias=False, name="target_projection")

    def call(self, history, history_mask, target):
        relevance = tf.einsum("bld,bd->bl", self.project_history(history), self.project_target(target))
        relevance = tf.where(history_mask, relevance, masked_logit(relevance.dtype))
        best = tf.math.top_k(relevance, k=min(self.top_k, history.shape[1]), sorted=True)
        return best.indices, gather_selected(history_mask, best.indices), relevance

    def get_config(self):
        return {**super().get_config(), "top_k": self.top_k, "projection_dim": self.projection_dim}


def relevance_pooling(history: tf.Tensor, history_mask: tf.Tensor, relevance: tf.Tensor) -> tf.Tensor:
    """The soft-search GSU's user vector for its auxiliary CTR task: ``U_r = Σ_i softmax(r)_i e_i`` over the
    valid behaviours (the paper weights by ``r_i``; normalised here so a history of thousands stays in
    range). ``[batch, L, d]``, ``[batch, L]``, ``[batch, L]`` → ``[batch, d]``; an empty history → zeros."""
    weights = tf.nn.softmax(relevance, axis=-1) * tf.cast(history_mask, relevance.dtype)
    return tf.einsum("bl,bld->bd", weights, history)


class TimeIntervalEmbedding(tf.keras.layers.Layer):
    """Embedding of the time between a behaviour and the request, from raw timestamps (SIM's ``e_t``).

    ``Δt = max(0, request_time − t_i)`` seconds falls in bucket ``min(B − 1, ⌊log2(1 + Δt / unit)⌋)``: equal
    widths on a log scale, so a minute and an hour, a day and a month are told apart alike.
    Inputs: ``timestamps`` ``[batch, K]`` int64, ``request_time`` ``[batch]`` or ``[batch, 1]`` int64.
    Output: ``[batch, K, dim]``.
    """

    def __init__(self, num_buckets: int = 24, dim: int = 8, unit_seconds: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.num_buckets, self.dim, self.unit_seconds = num_buckets, dim, unit_seconds
        self.table = tf.keras.layers.Embedding(num_buckets, dim, name="time_interval_embedding")

    def buckets(self, timestamps, request_time):
        """``[batch, K]`` int32 bucket of each interval."""
        # The difference of two exact int64 times first: float32 keeps a Unix time only to 128 s.
        interval = tf.maximum(tf.reshape(request_time, [-1, 1]) - timestamps, 0)
        scaled = tf.cast(interval, tf.float32) / self.unit_seconds
        bucket = tf.floor(tf.math.log1p(scaled) / math.log(2.0))
        return tf.cast(tf.minimum(bucket, self.num_buckets - 1), tf.int32)

    def call(self, timestamps, request_time):
        return self.table(self.buckets(timestamps, request_time))

    def get_config(self):
        return {**super().get_config(), "num_buckets": self.num_buckets, "dim": self.dim,
                "unit_seconds": self.unit_seconds}


class ExactSearchUnit(tf.keras.layers.Layer):
    """ESU: multi-head target attention over the GSU's ``K`` behaviours.

    ``z_k = [e_k ; e_t,k]`` (behaviour and time-interval embedding), per head ``h``:
    ``att_h = softmax_k((W_b,h z_k) · (W_a,h e_a) / √d_h)`` over the selected (masked) behaviours,
    ``head_h = Σ_k att_h,k z_k``; output ``[head_1 ; … ; head_H]``.
    Inputs: ``selected`` ``[batch, K, d_z]``, ``selected_mask`` bool ``[batch, K]``, ``target`` ``[batch, d_a]``.
    Output: ``[batch, H · d_z]``; zeros for a row with nothing selected.
    """

    def __init__(self, num_heads: int = 2, head_dim: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.project_keys = tf.keras.layers.Dense(num_heads * head_dim, use_bias=False, name="key_projection")
        self.project_query = tf.keras.layers.Dense(num_heads * head_dim, use_bias=False, name="query_projection")

    def call(self, selected, selected_mask, target):
        keys = tf.reshape(self.project_keys(selected), [-1, tf.shape(selected)[1], self.num_heads, self.head_dim])
        query = tf.reshape(self.project_query(target), [-1, self.num_heads, self.head_dim])
        logits = tf.einsum("bkhd,bhd->bhk", keys, query) / math.sqrt(self.head_dim)
        mask = selected_mask[:, tf.newaxis, :]
        logits = tf.where(mask, logits, masked_logit(logits.dtype))
        # × mask: a row with nothing selected gets weights 0 (not the uniform softmax of -1e9s).
        attention = tf.nn.softmax(logits, axis=-1) * tf.cast(mask, logits.dtype)
        heads = tf.einsum("bhk,bkd->bhd", attention, selected)
        return tf.reshape(heads, [-1, self.num_heads * selected.shape[-1]])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "head_dim": self.head_dim}


__all__ = ["HardSearch", "SoftSearch", "TimeIntervalEmbedding", "ExactSearchUnit", "gather_selected",
           "relevance_pooling"]
