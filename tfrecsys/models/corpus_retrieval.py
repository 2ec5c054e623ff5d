"""What every retrieval family shares: a fixed candidate corpus, full-corpus evaluation and the retrieval export.

A retrieval family (two_tower, generative) scores a query ``u [B, d]`` against every corpus item ``v [N, d]``:

    s = u · vᵀ                                    [B, N]
    rank(target) = 1 + #{items scored above the target}   → Recall@K, NDCG@K, MRR over the whole corpus

Its subclass builds ``query_tower`` and ``candidate_tower`` (Keras layers over feature dicts), says which schema
inputs each reads (``query_features``, ``candidate_features``) and keeps what a corpus item's candidate tower
reads in ``corpus_features``; this base then gives ``call`` (whichever tower the features allow), the corpus
row lookup, the rank metrics and ``retrieval_export`` (``tfrecsys.export.retrieval``).
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrecsys.metrics.retrieval import retrieval_metrics, target_ranks
from tfrecsys.models.base import RecModel, StepMetrics


class CorpusRetrievalModel(RecModel):
    """Base of the retrieval families: ``call`` returns ``query_embedding [B, d]`` and/or
    ``candidate_embedding [B, d]`` as the features allow."""

    export_kinds = ("retrieval",)

    def init_corpus(self, corpus, eval_ks: Sequence[int], export_k: int,
                    candidate_model_name: Optional[str]) -> None:
        """Keeps ``corpus`` (ids, features, counts, path: ``tfrecsys.data.model_tables``), its id → row table
        and the full-corpus rank metrics at ``eval_ks``."""
        self.corpus = corpus
        self.export_k = export_k
        self.candidate_model_name = candidate_model_name
        self._corpus_ids = tf.constant(corpus.ids)
        ids = np.asarray(corpus.ids)
        if ids.dtype.kind in "iu":
            # Integer ids are found by binary search in the sorted ids: XLA compiles it (--jit_compile), where
            # it has no kernel for a hash table's lookup.
            order = np.argsort(ids, kind="stable")
            self._sorted_ids, self._sorted_rows = tf.constant(ids[order]), tf.constant(order, tf.int64)
            self._corpus_row = None
        else:
            self._corpus_row = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(self._corpus_ids, tf.range(len(ids), dtype=tf.int64)),
                default_value=-1)
        self.corpus_metrics = StepMetrics(retrieval_metrics(eval_ks))

    def _corpus_rows(self, ids):
        """Each id's row in the corpus, ``-1`` for an id outside it; same shape as ``ids``."""
        ids = tf.cast(ids, self._corpus_ids.dtype)
        if self._corpus_row is not None:
            return self._corpus_row.lookup(ids)
        flat = tf.reshape(ids, [-1])
        position = tf.minimum(tf.searchsorted(self._sorted_ids, flat), tf.size(self._sorted_ids) - 1)
        found = tf.gather(self._sorted_ids, position) == flat
        return tf.reshape(tf.where(found, tf.gather(self._sorted_rows, position), -1), tf.shape(ids))

    def corpus_embeddings(self, training=False):
        """The candidate tower's embedding of every corpus item, ``[N, d]``."""
        return self.candidate_tower(self.corpus_features, training=training)

    @property
    def evaluation_metrics(self) -> list:
        return self.corpus_metrics.metrics

    def update_corpus_ranks(self, query, target_ids, weights) -> None:
        """Ranks each row's target among the whole corpus by ``query [B, d]`` and adds the ranks to the metrics
        with ``weights [B]`` (0 leaves a row out)."""
        # float32 scores: 16-bit ones (mixed precision) would tie many items and blur the ranks.
        scores = tf.matmul(tf.cast(query, tf.float32), tf.cast(self.corpus_embeddings(), tf.float32),
                           transpose_b=True)
        ranks = target_ranks(scores, self._corpus_rows(target_ids))
        for metric in self.corpus_metrics.metrics:
            metric.update_state(ranks, weights)

    def call(self, features, training=None):
        out = {}
        if all(name in features for name in self.query_features):
            out["query_embedding"] = self.query_tower(features, training=training)
        if all(name in features for name in self.candidate_features):
            out["candidate_embedding"] = self.candidate_tower(features, training=training)
        if not out:
            raise KeyError(f"{type(self).__name__} needs the query features {list(self.query_features)} or the candidate "
                           f"features {list(self.candidate_features)}; got {sorted(features)}")
        return out

    def retrieval_export(self) -> dict:
        """The towers and corpus the retrieval export indexes (``tfrecsys.export.retrieval``)."""
        return dict(query_tower=self.query_tower, candidate_tower=self.candidate_tower, schema=self.schema,
                    query_features=list(self.query_features), candidate_features=list(self.candidate_features),
                    candidate_ids=self._corpus_ids, corpus_features=self.corpus_features,
                    corpus_path=self.corpus.path, k=min(self.export_k, len(self.corpus.ids)),
                    candidate_model_name=self.candidate_model_name)
