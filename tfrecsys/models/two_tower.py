"""two_tower: retrieval with a query tower and a candidate tower (Yi et al., RecSys 2019; Yang et al., WWW 2020).

    u(x) = normalize(MLP_q([e(user features); pool(e(history)); dense]))        query tower    [batch, dim]
    v(y) = normalize(MLP_c([e(item features); ...]))                            candidate tower [batch, dim]
    s(x, y) = ⟨u(x), v(y)⟩ / temperature

trained with sampled softmax (``tfrecsys.losses.sampled_softmax``) over in-batch negatives, negatives sampled
from the whole corpus, or both (``MixedNegativeLogits``), each with or without the logQ correction, whose
in-batch probabilities come from the preprocessed item frequency table or the streaming estimator.
Evaluation ranks the held-out item among every corpus item (Recall@K, NDCG@K, MRR). Export writes a top-K
query model over a brute-force index and a candidate-embedding model (``tfrecsys.export.retrieval``).

Config (``config.model``): ``query_features``, ``candidate_features`` (schema inputs of each tower),
``candidate_id`` (the item id feature), ``hidden_units``, ``output_dim``, ``dropout``, ``temperature``,
``negatives`` (in_batch | sampled | mixed), ``num_sampled`` (B′), ``sampler_alpha`` (sampled negatives
∝ count^α; 0 = uniform), ``logq`` (none | table | streaming), ``remove_accidental_hits``, ``estimator``
(``num_buckets``, ``num_hashes``, ``alpha`` of the streaming estimator), ``eval_ks``, ``export_k``.
The candidate corpus (``config.data.candidates_file``, one tf.train.Example per corpus item, and
``config.data.item_frequency_file``, ``item_id<TAB>count``) comes from ``tfrecsys.data.model_tables``. The
one task's ``sample_weight`` is the reward ``r_i`` that weights each row's loss.
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema, IdFeature, LabelFeature, SequenceFeature
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.layers.retrieval import (NEGATIVE_MODES, CorpusSampler, MixedNegativeLogits,
                                       StreamingFrequencyEstimator)
from tfrecsys.metrics.retrieval import DEFAULT_KS
from tfrecsys.models.corpus_retrieval import CorpusRetrievalModel
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import task_columns, tasks_from_config

LOGQ_SOURCES = ("none", "table", "streaming")
SAMPLED_SOFTMAX = "sampled_softmax"


class Tower(tf.keras.layers.Layer):
    """One tower: ``normalize(MLP([e_id_1; …; mean_t e_seq,t; …; dense]))`` → ``[batch, output_dim]``.

    ``embedding`` is the model's view of the tower's features (their tables belong to the model, so a history
    in the query tower and the item id in the candidate tower share one item table). Id features are embedded
    (``[batch, d_f]``), sequences embedded ``[batch, max_len, d]`` and mean-pooled under their mask, dense
    features ``[batch, dim]`` taken as they are; the concatenation goes through ``hidden_units`` ReLU layers
    and a linear ``output_dim`` layer, then is L2-normalised (Yi et al.: normalised embeddings with a
    temperature train better than raw inner products).
    """

    def __init__(self, embedding, hidden_units=(), output_dim: int = 32, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding
        self.hidden_units = tuple(hidden_units)
        self.output_dim = output_dim
        self.dropout = dropout
        self.mlp = MLP(self.hidden_units, dropout=dropout, output_units=output_dim, name="mlp")

    @property
    def feature_names(self) -> list:
        return self.embedding.include

    def call(self, features, training=None):
        flat = concat_pooled(self.embedding(features), self.embedding.schema, self.feature_names)
        return tf.math.l2_normalize(self.mlp(flat, training=training), axis=-1)

    def get_config(self):
        return {**super().get_config(), "feature_names": self.feature_names, "hidden_units": self.hidden_units,
                "output_dim": self.output_dim, "dropout": self.dropout}


class TwoTowerRetrieval(CorpusRetrievalModel):
    """Two-tower retrieval model.

    Its one task reads ``training_outputs``: the logits of each row against its in-batch and sampled negatives
    and the column of its positive, which the ``sampled_softmax`` loss scores (the row's reward, the task's
    ``sample_weight``, weights it). The full-corpus metrics are model metrics, computed in evaluation only:
    they score every corpus item for every query. Exported as a top-K query model and a candidate model.

    ``call(features)`` returns the embeddings the features allow: ``query_embedding`` and/or
    ``candidate_embedding`` ``[batch, output_dim]``.
    """

    def __init__(self, schema: FeatureSchema, tasks, corpus, *, query_features: Sequence[str],
                 candidate_features: Sequence[str], candidate_id: str, hidden_units=(),
                 output_dim: int = 32, dropout: float = 0.0, temperature: float = 0.05, negatives: str = "in_batch",
                 num_sampled: int = 0, sampler_alpha: float = 0.0, logq: str = "none",
                 remove_accidental_hits: bool = True, estimator: Optional[dict] = None,
                 eval_ks: Sequence[int] = DEFAULT_KS, export_k: int = 100,
                 candidate_model_name: Optional[str] = None, seed: int = 0, **kwargs):
        super().__init__(schema, tasks, **kwargs)
        if logq not in LOGQ_SOURCES:
            raise ValueError(f"config.model.logq must be one of {LOGQ_SOURCES}, got {logq!r}")
        if negatives != "in_batch" and num_sampled < 1:
            raise ValueError(f"config.model.negatives={negatives!r} draws config.model.num_sampled negatives per "
                             f"step; it must be positive, got {num_sampled}")
        if logq == "table" and negatives != "sampled" and corpus.counts.sum() <= 0:
            raise ValueError("config.model.logq='table' needs the item frequency table "
                             "(config.data.item_frequency_file)")
        self.init_corpus(corpus, eval_ks, export_k, candidate_model_name)
        self.query_features = list(query_features)
        self.candidate_features = list(candidate_features)
        self.candidate_id = candidate_id
        self.task = self.tasks[0]
        self.negatives = negatives
        self.logq = logq
        self.query_tower = Tower(self.embedding_view(self.query_features, name="query_features"), hidden_units,
                                 output_dim, dropout, name="query_tower")
        self.candidate_tower = Tower(self.embedding_view(self.candidate_features, name="candidate_features"),
                                     hidden_units, output_dim, dropout, name="candidate_tower")
        self.logits = MixedNegativeLogits(negatives, temperature, logq=logq != "none",
                                          remove_accidental_hits=remove_accidental_hits, name="logits")
        self.sampler = (CorpusSampler(corpus.counts, num_sampled, sampler_alpha, seed, name="corpus_sampler")
                        if negatives != "in_batch" else None)
        self.frequency_estimator = (StreamingFrequencyEstimator(**(estimator or {}), seed=seed,
                                                                name="frequency_estimator")
                                    if logq == "streaming" and negatives != "sampled" else None)
        self.corpus_features = {name: tf.constant(value) for name, value in corpus.features.items()}
        total = max(corpus.counts.sum(), 1.0)
        # An item the table has not counted gets the probability of one occurrence, not 0 (log 0 = -inf).
        self._table_probability = tf.constant(np.maximum(corpus.counts, 1.0) / total, tf.float32)
        self._unseen_probability = float(1.0 / total)

    # Training ----------------------------------------------------------------------------------------------

    def _positive_probability(self, ids, training):
        """Per in-batch column, the probability that an in-batch draw is that item (or, for sampled-only
        negatives, that the sampler draws it); None without logQ correction."""
        if self.logq == "none":
            return None
        if self.negatives == "sampled":
            rows = self._corpus_rows(ids)
            known = self.sampler.probability(tf.maximum(rows, 0))
            return tf.where(rows >= 0, known, 0.0)
        if self.logq == "streaming":
            return self.frequency_estimator(ids, training=training)
        if self.logq == "table":
            rows = self._corpus_rows(ids)
            return tf.where(rows >= 0, tf.gather(self._table_probability, tf.maximum(rows, 0)),
                            self._unseen_probability)
        return None

    def _sampled_candidates(self, training):
        """``(embeddings [B', d], ids [B'], probability [B'])`` of this step's corpus draws."""
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        step = self.optimizer.iterations if training and self.optimizer is not None else 0
        rows, probability = self.sampler(step, replica)
        features = {name: tf.gather(value, rows) for name, value in self.corpus_features.items()}
        return self.candidate_tower(features, training=training), tf.gather(self._corpus_ids, rows), probability

    def training_outputs(self, features, training: bool) -> dict:
        """``{task: {"logits": [batch, B + B'], "positive_column": [batch]}, "query_embedding": [batch, d]}``."""
        query = self.query_tower(features, training=training)
        positive = self.candidate_tower(features, training=training)
        positive_ids = features[self.candidate_id]
        sampled = sampled_ids = sampled_probability = None
        if self.sampler is not None:
            sampled, sampled_ids, sampled_probability = self._sampled_candidates(training)
        positive_probability = self._positive_probability(positive_ids, training)
        logits, positive_column = self.logits(query, positive, positive_ids, sampled, sampled_ids,
                                              positive_probability, sampled_probability)
        return {self.task.name: {"logits": logits, "positive_column": positive_column}, "query_embedding": query}

    # Evaluation --------------------------------------------------------------------------------------------

    def update_evaluation_metrics(self, features, labels, outputs) -> None:
        """The rank of each row's item among the whole corpus (rows of positive weight)."""
        positive = self.task.row_weights(task_columns(self.task, features, labels),
                                         tf.shape(outputs["query_embedding"])[0]) > 0
        self.update_corpus_ranks(outputs["query_embedding"], features[self.candidate_id],
                                 tf.cast(positive, tf.float32))


def _check_tower_features(schema: FeatureSchema, names: Sequence[str], field: str) -> None:
    for name in names:
        feature = schema[name]
        if isinstance(feature, LabelFeature) or feature.training_only:
            raise ValueError(f"config.model.{field}: {name!r} is a label or training-only feature; towers take "
                             "serving inputs")
        if isinstance(feature, SequenceFeature) and feature.aligned_with and feature.aligned_with not in names:
            raise ValueError(f"config.model.{field}: {name!r} is aligned with {feature.aligned_with!r}, which "
                             "must be in the same tower (it holds the length)")


@register("two_tower")
def build_two_tower(config, schema: FeatureSchema, tables=None) -> TwoTowerRetrieval:
    model = config.model
    tasks = tasks_from_config(config.tasks, schema)
    if len(tasks) != 1 or tasks[0].loss != SAMPLED_SOFTMAX:
        raise ValueError(f"two_tower trains exactly one task with loss {SAMPLED_SOFTMAX!r} (its sample_weight is "
                         f"each row's reward); config.tasks has {[(t.name, t.loss) for t in tasks]}")
    query_features, candidate_features = list(model.query_features), list(model.candidate_features)
    _check_tower_features(schema, query_features, "query_features")
    _check_tower_features(schema, candidate_features, "candidate_features")
    if model.candidate_id not in candidate_features or not isinstance(schema[model.candidate_id], IdFeature):
        raise ValueError(f"config.model.candidate_id {model.candidate_id!r} must be an id feature of the candidate "
                         f"tower ({candidate_features})")
    if model.negatives not in NEGATIVE_MODES:
        raise ValueError(f"config.model.negatives must be one of {NEGATIVE_MODES}, got {model.negatives!r}")
    if tables is None:
        raise ValueError("two_tower indexes its candidate corpus: build it with "
                         "build_model(config, schema, tfrecsys.data.model_tables.ModelTables(config, schema))")
    corpus = tables.candidate_corpus(candidate_features, model.candidate_id)
    return TwoTowerRetrieval(
        schema, tasks, corpus, query_features=query_features, candidate_features=candidate_features,
        candidate_id=model.candidate_id, hidden_units=tuple(model.hidden_units),
        output_dim=model.output_dim, dropout=model.dropout, temperature=model.temperature,
        negatives=model.negatives, num_sampled=model.num_sampled, sampler_alpha=model.sampler_alpha,
        logq=model.logq, remove_accidental_hits=model.remove_accidental_hits, estimator=model.estimator.to_dict(),
        eval_ks=tuple(model.eval_ks), export_k=model.export_k,
        candidate_model_name=config.get("export", {}).get("candidate_model_name"), seed=config.train.seed,
        name="two_tower")
