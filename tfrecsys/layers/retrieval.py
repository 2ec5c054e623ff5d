"""Retrieval layers: sampled-softmax logits with logQ correction over in-batch and corpus-sampled negatives,
accidental-hit masking, and the streaming item-frequency estimator.

Papers: Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations" (RecSys
2019) for the logQ correction and the streaming estimator; Yang et al., "Mixed Negative Sampling for Learning
Two-tower Neural Networks in Recommendations" (WWW 2020) for mixing in-batch and corpus-sampled negatives.

With a batch of ``B`` (query, positive item) pairs and ``B'`` items drawn from the corpus, the candidate set of
every query is the batch's ``B`` positives plus the ``B'`` sampled items. Both blocks are importance samples of
the softmax denominator ``Z(x) = Σ_y exp(s(x, y))``: the in-batch items are draws from the data's item
distribution ``p``, the sampled items draws from the sampler's ``q``, so

    Σ_{j ∈ batch} exp(s_j) / p_j  +  Σ_{j ∈ sampled} exp(s_j) / q_j      has expectation (B + B') · Z(x).

That is why the logQ correction is applied per column with the probability of the column's own sampler:
``s_j − log p_j`` for in-batch columns and ``s_j − log q_j`` for sampled ones (TFRS and keras-rs take one
probability vector over the columns, which this is; Merlin refuses logQ with more than one sampler).
"""

from typing import Sequence

import numpy as np
import tensorflow as tf

# As tensorflow-recommenders: far below any real logit, yet finite so that a fully masked row stays finite.
MASKED_LOGIT = float(np.float32(np.finfo(np.float32).min / 100.0))
NEGATIVE_MODES = ("in_batch", "sampled", "mixed")


class LogQCorrection(tf.keras.layers.Layer):
    """Sampling-bias correction of Yi et al. (eq. 3): ``s^c(x_i, y_j) = s(x_i, y_j) − log q_j``.

    Inputs: ``logits`` ``[batch, num_candidates]`` and ``candidate_probability``, the probability that the
    sampler which produced column ``j`` draws that item: ``[num_candidates]`` (one per column) or
    ``[batch, num_candidates]``. Probabilities are clipped to ``[min_probability, 1]`` so an item the frequency
    table has never seen does not produce an infinite logit. Output: corrected logits, same shape.

    A constant ``q`` shifts every logit of a row by the same amount, so it changes neither the ranking nor the
    softmax: the correction only matters where sampling probabilities differ between candidates.
    """

    def __init__(self, min_probability: float = 1e-9, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < min_probability <= 1.0:
            raise ValueError(f"min_probability must be in (0, 1], got {min_probability}")
        self.min_probability = min_probability

    def call(self, logits, candidate_probability):
        probability = tf.cast(candidate_probability, logits.dtype)
        return logits - tf.math.log(tf.clip_by_value(probability, self.min_probability, 1.0))

    def get_config(self):
        return {**super().get_config(), "min_probability": self.min_probability}


class RemoveAccidentalHits(tf.keras.layers.Layer):
    """Masks negatives that are the query's own positive item.

    When a popular item is the positive of several rows of a batch, or a sampler draws a row's positive, the
    softmax would push the query away from the item it should retrieve. Such columns get ``MASKED_LOGIT``.

    Inputs: ``logits`` ``[batch, num_candidates]``, ``positive_ids`` ``[batch]`` (each row's positive item),
    ``candidate_ids`` ``[num_candidates]`` and ``positive_column`` ``[batch]`` int (the column that holds the
    row's own positive, which stays), or None when the block holds no positives (a sampled block). Output:
    ``logits`` with ``logits[i, j] = MASKED_LOGIT`` where ``candidate_ids[j] == positive_ids[i]`` and
    ``j != positive_column[i]``.
    """

    def call(self, logits, positive_ids, candidate_ids, positive_column=None):
        hit = tf.equal(positive_ids[:, tf.newaxis], candidate_ids[tf.newaxis, :])
        if positive_column is not None:
            columns = tf.range(tf.shape(logits)[1], dtype=tf.int64)
            own = tf.equal(columns[tf.newaxis, :], tf.cast(positive_column, tf.int64)[:, tf.newaxis])
            hit = tf.logical_and(hit, tf.logical_not(own))
        return tf.where(hit, tf.constant(MASKED_LOGIT, logits.dtype), logits)


class CorpusSampler(tf.keras.layers.Layer):
    """Draws ``num_samples`` negatives per step from the whole corpus, with replacement.

    ``P(j) = c_j^α / Σ_k c_k^α`` over corpus rows ``j`` with item counts ``c`` (Yang et al.'s global sampler):
    ``α = 0`` is uniform, ``α = 1`` samples by frequency, ``0 < α < 1`` (e.g. 0.75, as word2vec) in between.
    Draws use the inverse CDF (``searchsorted``), ``O(num_samples · log N)`` per step.

    ``call(step, replica=0)`` returns ``(rows [num_samples] int64, probability [num_samples] float32)``: corpus
    row indices and the probability of drawing each. Draws are a pure function of ``(seed, step, replica)``
    (stateless random ops), so a resumed run draws the same negatives and replicas draw different ones.
    """

    def __init__(self, counts: Sequence[float], num_samples: int, alpha: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        counts = np.asarray(counts, np.float64)
        if counts.ndim != 1 or counts.size == 0:
            raise ValueError(f"CorpusSampler needs one count per corpus row, got shape {counts.shape}")
        if (counts < 0).any():
            raise ValueError("CorpusSampler: item counts must be non-negative")
        if num_samples < 1:
            raise ValueError(f"CorpusSampler: num_samples must be positive, got {num_samples}")
        if alpha < 0:
            raise ValueError(f"CorpusSampler: alpha must be >= 0, got {alpha}")
        weights = counts ** alpha if alpha > 0 else np.ones_like(counts)
        if weights.sum() <= 0:
            raise ValueError("CorpusSampler: every corpus item has count 0, so no item can be drawn")
        self.counts = counts
        self.num_samples = num_samples
        self.alpha = alpha
        self.seed = seed
        probability = weights / weights.sum()
        self._probability = tf.constant(probability, tf.float32)
        cdf = np.cumsum(probability)
        cdf[-1] = 1.0
        self._cdf = tf.constant(cdf, tf.float64)

    @property
    def corpus_size(self) -> int:
        return int(self.counts.size)

    def probability(self, rows):
        """The probability of drawing each corpus row in ``rows`` (any shape, int)."""
        return tf.gather(self._probability, rows)

    def call(self, step, replica=0):
        seed = tf.stack([tf.cast(self.seed, tf.int64) * 1_000_003 + tf.cast(replica, tf.int64),
                         tf.cast(step, tf.int64)])
        uniform = tf.random.stateless_uniform([self.num_samples], seed=seed, dtype=tf.float64)
        rows = tf.searchsorted(self._cdf, uniform, side="right", out_type=tf.int64)
        # uniform < 1 = cdf[-1], so rows < N; the minimum guards against float rounding at the edge.
        rows = tf.minimum(rows, self.corpus_size - 1)
        return rows, self.probability(rows)

    def get_config(self):
        return {**super().get_config(), "counts": self.counts.tolist(), "num_samples": self.num_samples,
                "alpha": self.alpha, "seed": self.seed}


class StreamingFrequencyEstimator(tf.keras.layers.Layer):
    """Streaming estimate of how often each item occurs in the training stream (Yi et al., Algorithm 2).

    State: for each of ``num_hashes`` hash functions ``h_k`` into ``num_buckets`` buckets, ``A_k[b]`` the last
    step at which bucket ``b`` was seen and ``B_k[b]`` an exponential moving average (rate ``alpha``) of the
    number of steps between its sightings. At step ``t``, for every distinct id ``y`` of the (global) batch:

        B_k[h_k(y)] ← (1 − α) · B_k[h_k(y)] + α · (t − A_k[h_k(y)]),      A_k[h_k(y)] ← t

    and the paper estimates ``1 / B`` occurrences per step, taking the largest ``B`` over the hash functions:
    a collision only makes a bucket look more frequent, so the least collided one is the best estimate.

    Two refinements, both so that the estimate converges to the true rate (a test checks it does):
    * ``C_k[b]``, the same moving average of the number of times ``m`` the bucket occurs in a step it is seen,
      ``C ← (1 − α) · C + α · m``; the rate is ``C / B``. In the paper ``m`` is always 1, which caps the
      estimate at one occurrence per step: an item in every batch, however often, would look as rare as one
      in every batch once. With ``C``, a popular item's rate is its expected count per batch;
    * because ``B`` and ``C`` are averaged with the same weights, ``C / B`` needs no warm-up: the paper's
      ``1 / B`` from ``B = 0`` overstates every item by ``1 / (1 − (1 − α)^n)`` after ``n`` sightings
      (``1/α`` times at the first one), which takes thousands of sightings to fade with a small ``α``.
    Over hash functions the smallest ``C / B`` is taken (the paper's largest ``B``).

    ``call(ids, training)``: ``ids`` ``[batch]`` (int64 or string). In training the estimator is updated with
    the ids of the whole global batch (all-gathered across replicas, so every replica holds identical state;
    the variables are mirrored and written by the first replica) and counts one step. Returns ``[batch]``
    float32, the estimated probability that one draw of the stream is each id: the rate per step divided by
    the number of ids per step. An id never seen gets one occurrence over the steps so far.
    """

    def __init__(self, num_buckets: int = 1 << 18, num_hashes: int = 3, alpha: float = 0.01, seed: int = 0,
                 **kwargs):
        # Counting statistics stay float32 under a mixed-precision policy (16-bit gaps would lose the steps).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if num_buckets < 1 or num_hashes < 1:
            raise ValueError(f"StreamingFrequencyEstimator needs num_buckets >= 1 and num_hashes >= 1, got "
                             f"{num_buckets} and {num_hashes}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"StreamingFrequencyEstimator: alpha must be in (0, 1), got {alpha}")
        self.num_buckets = num_buckets
        self.num_hashes = num_hashes
        self.alpha = alpha
        self.seed = seed
        size = num_buckets * num_hashes
        # Created here, not lazily in build: they must exist in the strategy scope the layer is made in, and
        # ONLY_FIRST_REPLICA lets each replica write in replica context (all replicas compute the same update).
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.last_step = self.add_weight(name="last_step", shape=[size], dtype=tf.int64, trainable=False,
                                         initializer="zeros", aggregation=first)
        self.mean_gap = self.add_weight(name="mean_gap", shape=[size], dtype=tf.float32, trainable=False,
                                        initializer="zeros", aggregation=first)
        self.mean_count = self.add_weight(name="mean_count", shape=[size], dtype=tf.float32, trainable=False,
                                          initializer="zeros", aggregation=first)
        self.step = self.add_weight(name="step", shape=[], dtype=tf.int64, trainable=False, initializer="zeros",
                                    aggregation=first)
        self.ids_per_step = self.add_weight(name="ids_per_step", shape=[], dtype=tf.float32, trainable=False,
                                            initializer="zeros", aggregation=first)

    def _buckets(self, ids):
        """``[num_hashes, n]`` indices into the flattened ``[num_hashes · num_buckets]`` arrays."""
        keys = ids if ids.dtype == tf.string else tf.strings.as_string(ids)
        rows = []
        for k in range(self.num_hashes):
            # Keyed SipHash: a different key per function gives independent hash functions.
            bucket = tf.strings.to_hash_bucket_strong(keys, self.num_buckets, key=[self.seed + 2 * k + 1,
                                                                                  self.seed + 2 * k + 2])
            rows.append(bucket + k * self.num_buckets)
        return tf.stack(rows)

    def update(self, ids):
        """Counts one step in which ``ids`` ``[n]`` (the whole global batch) occurred."""
        step = self.step.assign_add(1)
        buckets, _, counts = tf.unique_with_counts(tf.reshape(self._buckets(ids), [-1]), out_idx=tf.int64)
        gap = tf.cast(step - tf.gather(self.last_step, buckets), tf.float32)
        keep = 1.0 - self.alpha
        gaps = keep * tf.gather(self.mean_gap, buckets) + self.alpha * gap
        arrivals = keep * tf.gather(self.mean_count, buckets) + self.alpha * tf.cast(counts, tf.float32)
        self.mean_gap.scatter_update(tf.IndexedSlices(gaps, buckets))
        self.mean_count.scatter_update(tf.IndexedSlices(arrivals, buckets))
        self.last_step.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(buckets), step), buckets))
        self.ids_per_step.assign(tf.cast(tf.size(ids), tf.float32))

    def rate(self, ids):
        """Estimated occurrences per step of each id, ``[n]``."""
        buckets = self._buckets(ids)
        gaps, arrivals = tf.gather(self.mean_gap, buckets), tf.gather(self.mean_count, buckets)
        seen = gaps > 0.0
        rates = tf.where(seen, arrivals / tf.where(seen, gaps, 1.0), np.inf)
        unseen = 1.0 / tf.cast(tf.maximum(self.step, 1), tf.float32)
        rate = tf.reduce_min(rates, axis=0)
        return tf.where(tf.math.is_finite(rate), rate, unseen)

    def probability(self, ids):
        """Estimated probability that one id drawn from the stream is each of ``ids``, ``[n]``."""
        return self.rate(ids) / tf.maximum(self.ids_per_step, 1.0)

    def call(self, ids, training=None):
        ids = tf.reshape(ids, [-1])
        if training:
            context = tf.distribute.get_replica_context()
            everyone = ids
            if context is not None and context.num_replicas_in_sync > 1:
                everyone = context.all_gather(ids, axis=0)
            self.update(everyone)
        return self.probability(ids)

    def get_config(self):
        return {**super().get_config(), "num_buckets": self.num_buckets, "num_hashes": self.num_hashes,
                "alpha": self.alpha, "seed": self.seed}


class MixedNegativeLogits(tf.keras.layers.Layer):
    """The logit matrix of sampled softmax over in-batch and/or corpus-sampled negatives.

    Inputs: ``query`` ``[B, d]``; the batch's positives ``positive`` ``[B, d]`` with ids ``positive_ids``
    ``[B]``; optionally ``B'`` corpus-sampled candidates ``sampled`` ``[B', d]`` with ids ``sampled_ids``
    ``[B']``; and, for the logQ correction, ``positive_probability`` ``[B]`` and ``sampled_probability``
    ``[B']`` (see below). Scores are ``s(x_i, y_j) = ⟨u_i, v_j⟩ / temperature``.

    ``negatives`` picks the columns (``C`` of them):
    * ``in_batch``: ``C = B``, column ``j`` is row ``j``'s positive; row ``i``'s positive is column ``i``;
    * ``mixed`` (Yang et al.): ``C = B + B'``, the in-batch block then the sampled block;
    * ``sampled``: ``C = 1 + B'``, column 0 is the row's own positive, then the sampled block (classic sampled
      softmax; ``positive_probability`` is then the sampler's probability of each positive, as in
      ``tf.nn.sampled_softmax_loss``).

    With ``logq``, every column is corrected with its own sampler's probability (``LogQCorrection``): in-batch
    columns with ``positive_probability`` (the probability that an in-batch draw is that item, from the item
    frequency table or the streaming estimator), sampled columns with ``sampled_probability``. With
    ``remove_accidental_hits``, columns that hold the row's positive item but are not its own positive column
    are masked (``RemoveAccidentalHits``).

    Returns ``(logits [B, C], positive_column [B] int64)``.
    """

    def __init__(self, negatives: str = "in_batch", temperature: float = 1.0, logq: bool = False,
                 remove_accidental_hits: bool = True, **kwargs):
        # Logits, logQ, masking and the softmax run in float32 even when the towers compute in 16 bits.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.negatives = negatives
        self.temperature = temperature
        self.logq = logq
        self.remove_accidental_hits = remove_accidental_hits
        self._correction = LogQCorrection(dtype="float32")
        self._mask_hits = RemoveAccidentalHits(dtype="float32")

    @property
    def uses_sampled(self) -> bool:
        return self.negatives in ("sampled", "mixed")

    def call(self, query, positive, positive_ids, sampled=None, sampled_ids=None, positive_probability=None,
             sampled_probability=None):
        if self.uses_sampled and (sampled is None or sampled_ids is None):
            raise ValueError(f"negatives={self.negatives!r} needs sampled candidates and their ids")
        if self.logq and (positive_probability is None or (self.uses_sampled and sampled_probability is None)):
            raise ValueError("logq needs positive_probability (and sampled_probability for sampled negatives)")
        query, positive = tf.cast(query, tf.float32), tf.cast(positive, tf.float32)
        if sampled is not None:
            sampled = tf.cast(sampled, tf.float32)
        batch = tf.shape(query)[0]
        blocks = []
        if self.negatives == "sampled":
            own = tf.reduce_sum(query * positive, axis=-1, keepdims=True) / self.temperature
            if self.logq:
                own = self._correction(own, positive_probability[:, tf.newaxis])
            blocks.append(own)
            positive_column = tf.zeros([batch], tf.int64)
        else:
            in_batch = tf.matmul(query, positive, transpose_b=True) / self.temperature
            if self.logq:
                in_batch = self._correction(in_batch, positive_probability)
            positive_column = tf.range(batch, dtype=tf.int64)
            if self.remove_accidental_hits:
                in_batch = self._mask_hits(in_batch, positive_ids, positive_ids, positive_column)
            blocks.append(in_batch)
        if self.uses_sampled:
            negative = tf.matmul(query, sampled, transpose_b=True) / self.temperature
            if self.logq:
                negative = self._correction(negative, sampled_probability)
            if self.remove_accidental_hits:
                negative = self._mask_hits(negative, positive_ids, sampled_ids)
            blocks.append(negative)
        return tf.concat(blocks, axis=1), positive_column

    def get_config(self):
        return {**super().get_config(), "negatives": self.negatives, "temperature": self.temperature,
                "logq": self.logq, "remove_accidental_hits": self.remove_accidental_hits}
