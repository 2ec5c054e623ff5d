"""Full-corpus retrieval metrics: where the held-out item ranks among every item of the corpus.

Each evaluation query has one target item (leave-one-out). Its 0-based ``rank`` is the number of other corpus
items that score at least as high: ties count against the target, so a model that gives every item the same
score ranks every target last rather than first. A target that is not in the corpus is a miss
(``MISSING_RANK``). Over queries:

* ``recall_at_k`` = mean(rank < K); with one target per query this is also the hit rate HR@K;
* ``ndcg_at_k``   = mean(1 / log2(rank + 2) if rank < K else 0) (the ideal DCG of one target is 1);
* ``mrr``         = mean(1 / (rank + 1)) over the whole corpus, not truncated at K.
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrecsys.metrics import METRIC_DTYPE

DEFAULT_KS = (10, 50, 100)
MISSING_RANK = np.iinfo(np.int64).max


def target_ranks(scores, target_rows):
    """``scores`` ``[batch, num_items]`` of every corpus item, ``target_rows`` ``[batch]`` int (the target's
    corpus row, -1 when the target is not in the corpus) → ``[batch]`` int64 ranks."""
    scores = tf.convert_to_tensor(scores)
    target_rows = tf.cast(target_rows, tf.int64)
    known = target_rows >= 0
    target_score = tf.gather(scores, tf.maximum(target_rows, 0), batch_dims=1)
    at_least = tf.reduce_sum(tf.cast(scores >= target_score[:, tf.newaxis], tf.int64), axis=1)
    return tf.where(known, at_least - 1, tf.constant(MISSING_RANK, tf.int64))


class RecallAtK(tf.keras.metrics.Mean):
    """Mean of ``rank < k`` (Recall@K = HR@K with one target per query). ``update_state(ranks, weights)``."""

    def __init__(self, k: int, name: Optional[str] = None, **kwargs):
        super().__init__(name=name or f"recall_at_{k}", **{"dtype": METRIC_DTYPE, **kwargs})
        self.k = k

    def update_state(self, ranks, sample_weight=None):
        return super().update_state(tf.cast(tf.cast(ranks, tf.int64) < self.k, tf.float32), sample_weight)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


class NDCGAtK(tf.keras.metrics.Mean):
    """Mean of ``1 / log2(rank + 2)`` for ``rank < k``, else 0 (one relevant item, so the ideal DCG is 1)."""

    def __init__(self, k: int, name: Optional[str] = None, **kwargs):
        super().__init__(name=name or f"ndcg_at_{k}", **{"dtype": METRIC_DTYPE, **kwargs})
        self.k = k

    def update_state(self, ranks, sample_weight=None):
        ranks = tf.cast(ranks, tf.int64)
        gain = 1.0 / (tf.math.log(tf.cast(tf.minimum(ranks, self.k), tf.float32) + 2.0) / tf.math.log(2.0))
        return super().update_state(tf.where(ranks < self.k, gain, 0.0), sample_weight)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


class MeanReciprocalRank(tf.keras.metrics.Mean):
    """Mean of ``1 / (rank + 1)`` over the full ranking (a missing target contributes 0)."""

    def __init__(self, name: str = "mrr", **kwargs):
        super().__init__(name=name, **{"dtype": METRIC_DTYPE, **kwargs})

    def update_state(self, ranks, sample_weight=None):
        ranks = tf.cast(ranks, tf.int64)
        reciprocal = 1.0 / (tf.cast(tf.minimum(ranks, MISSING_RANK - 1), tf.float64) + 1.0)
        return super().update_state(tf.cast(reciprocal, tf.float32), sample_weight)


def retrieval_metrics(ks: Sequence[int] = DEFAULT_KS) -> list:
    """Recall@K and NDCG@K for every K, then MRR: the metric set every retrieval evaluation reports."""
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"retrieval metric cutoffs must be positive integers, got {ks}")
    return [RecallAtK(k) for k in ks] + [NDCGAtK(k) for k in ks] + [MeanReciprocalRank()]


def summarize_ranks(ranks, ks: Sequence[int] = DEFAULT_KS, weights=None) -> dict:
    """``{metric name: value}`` of the retrieval metrics over ``ranks`` (e.g. of a non-Keras baseline such as
    popularity), computed by the same metric classes as training's evaluation."""
    out = {}
    for metric in retrieval_metrics(ks):
        metric.update_state(tf.constant(np.asarray(ranks), tf.int64), weights)
        out[metric.name] = float(metric.result())
    return out
