"""generative: next-item retrieval over each user's time-ordered items (Zhai et al., "Actions Speak Louder than
Words", ICML 2024, §3.2.1), with an HSTU or a SASRec (Kang & McAuley 2018) encoder picked by config.

    x_i = √d · e(item_i) + p_i                        input: item embedding and learned position     [B, L, d]
    h   = encoder(dropout(x), lengths, timestamps)     HSTUStack or SASRecStack (causal)               [B, L, d]
    q_i = h_i / ‖h_i‖,   v_y = e(y) / ‖e(y)‖,   s_i(y) = ⟨q_i, v_y⟩ / temperature

Training predicts, at every valid position ``i`` of a history, the item that follows it (the label sequence
``next_item``, ``y_i = item_{i+1}``, the last one the row's target item) with sampled softmax
(``tfrecsys.losses.sampled_softmax``) against ``uniform`` negatives (``num_sampled`` corpus items drawn per
step, shared by the batch's positions) or ``in_batch`` negatives (every other position's label, logQ-corrected
with the training item frequencies). Both encoders share the input, the loss and the negatives, so a
comparison changes one thing. Evaluation is leave-one-out over the full corpus: the last position's query
ranks every corpus item (HR@K = ``recall_at_K``, NDCG@K, MRR; items of the history are not filtered out).
Export writes a top-K query model that takes the raw history (items and timestamps) and a candidate model
(``tfrecsys.export.retrieval``).

Config (``config.model``): ``history_feature`` (a sequence sharing the ``candidate_id`` table),
``timestamp_feature`` (a raw int64 sequence aligned with it), ``label_feature`` (an int64 label sequence of
the same ``max_len``), ``candidate_id``, ``encoder`` (hstu | sasrec), ``num_blocks``, ``num_heads``,
``dropout``, ``temperature``, ``negatives`` (uniform | in_batch), ``num_sampled``, ``eval_ks``, ``export_k``.
The corpus and item frequencies come from ``config.data.candidates_file`` / ``item_frequency_file``.
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema, IdFeature, LabelFeature, SequenceFeature
from tfrecsys.layers.hstu import HSTUStack
from tfrecsys.layers.retrieval import CorpusSampler, MixedNegativeLogits
from tfrecsys.layers.sasrec import SASRecStack
from tfrecsys.metrics.retrieval import DEFAULT_KS
from tfrecsys.models.corpus_retrieval import CorpusRetrievalModel
from tfrecsys.models.registry import register, set_options
from tfrecsys.models.tasks import register_loss, tasks_from_config

ENCODERS = ("hstu", "sasrec")
NEGATIVES = ("uniform", "in_batch")
NEXT_ITEM_LOSS = "next_item_softmax"


@register_loss(NEXT_ITEM_LOSS, needs_label=False)
def next_item_softmax(_, prediction):
    """Sampled softmax over every valid position: ``prediction`` holds ``logits`` ``[P, C]`` and
    ``positive_column`` ``[P]`` of the batch's ``P`` positions, ``row`` ``[P]`` (the row of each) and ``rows``.
    Per row: the sum of its positions' losses times ``rows / P``, so the task's mean over rows is the mean over
    positions: each position weighs the same, however long its row (as SASRec and the GR reference train)."""
    per_position = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(prediction["positive_column"], tf.int64), logits=prediction["logits"])
    rows = prediction["rows"]
    per_row = tf.math.unsorted_segment_sum(per_position, prediction["row"], rows)
    return per_row * tf.cast(rows, tf.float32) / tf.maximum(tf.cast(tf.size(per_position), tf.float32), 1.0)


def make_encoder(kind: str, num_blocks: int, num_heads: int, dropout: float, max_len: int, dim: int,
                 **hstu_settings):
    """The sequence encoder ``(x [B, L, d], lengths [B], timestamps [B, L]) -> [B, L, d]`` named by ``kind``.
    HSTU's per-head widths default to ``d / num_heads`` (SASRec's), its ``N`` to ``max_len``; ``hstu_settings``
    (``config.model.hstu``) set any other ``HSTULayer`` argument, e.g. ``attention_path="xla"``."""
    if kind == "sasrec":
        return SASRecStack(num_blocks, num_heads, dropout, name="sasrec")
    if kind == "hstu":
        settings = dict(num_heads=num_heads, attention_dim=dim // num_heads, max_seq_len=max_len, dropout=dropout)
        return HSTUStack(num_blocks, name="hstu", **{**settings, **hstu_settings})
    raise ValueError(f"config.model.encoder must be one of {ENCODERS}, got {kind!r}")


class SequenceQueries(tf.keras.layers.Layer):
    """A history (items and timestamps, padded ``[B, L]`` with its length, or ragged) → the normalised query
    ``q_i`` at every position ``[B, L, d]`` (0 at padded positions) and the lengths ``[B]`` int32."""

    def __init__(self, embedding, history: str, timestamps: str, max_len: int, encoder, dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding
        self.history = history
        self.timestamps = timestamps
        self.max_len = max_len
        self.encoder = encoder
        self.dropout = tf.keras.layers.Dropout(dropout)
        self.position = None

    def build(self, input_shape):
        dim = self.embedding.schema[self.embedding.schema[self.history].table].embedding_dim
        self.position = self.add_weight(name="position_embedding", shape=[self.max_len, dim],
                                        initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, features, training=None):
        embedded = self.embedding(features)
        items, mask = embedded[self.history], embedded[self.history + "_mask"]
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        dim = tf.cast(tf.shape(items)[-1], items.dtype)
        x = items * tf.sqrt(dim) + tf.cast(self.position, items.dtype)[tf.newaxis]
        x = self.dropout(x, training=training) * tf.cast(mask, items.dtype)[..., tf.newaxis]
        h = self.encoder(x, lengths, tf.cast(embedded[self.timestamps], tf.int64), training=training)
        return tf.math.l2_normalize(tf.cast(h, tf.float32), axis=-1), lengths


class LastPositionQuery(tf.keras.layers.Layer):
    """The query of a history's last item, ``[B, d]``: what retrieves the next item (the export's query tower)."""

    def __init__(self, queries: SequenceQueries, **kwargs):
        super().__init__(**kwargs)
        self.queries = queries

    def call(self, features, training=None):
        per_position, lengths = self.queries(features, training=training)
        return tf.gather(per_position, tf.maximum(lengths - 1, 0), batch_dims=1)


class ItemEmbedding(tf.keras.layers.Layer):
    """Item ids → ``v_y = e(y) / ‖e(y)‖`` ``[..., d]`` through the model's item table (the candidate tower)."""

    def __init__(self, embedding, candidate_id: str, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding
        self.candidate_id = candidate_id

    def call(self, features, training=None):
        ids = features[self.candidate_id] if isinstance(features, dict) else features
        rows = self.embedding.tables.embed(self.embedding.schema[self.candidate_id].table, ids)
        return tf.math.l2_normalize(tf.cast(rows, tf.float32), axis=-1)


class GenerativeRetrieval(CorpusRetrievalModel):
    """Next-item retrieval with a causal sequence encoder; ``call`` returns ``query_embedding`` ``[B, d]``
    (the last position's) and/or ``candidate_embedding`` ``[B, d]``, as the features allow."""

    def __init__(self, schema: FeatureSchema, tasks, corpus, *, history: str, timestamps: str, next_item: str,
                 candidate_id: str, encoder: str = "hstu", num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, temperature: float = 0.05, negatives: str = "uniform", num_sampled: int = 128,
                 eval_ks: Sequence[int] = DEFAULT_KS, export_k: int = 100, hstu: Optional[dict] = None,
                 candidate_model_name: Optional[str] = None, seed: int = 0, **kwargs):
        super().__init__(schema, tasks, **kwargs)
        if negatives not in NEGATIVES:
            raise ValueError(f"config.model.negatives must be one of {NEGATIVES}, got {negatives!r}")
        if negatives == "uniform" and num_sampled < 1:
            raise ValueError(f"config.model.num_sampled must be positive for uniform negatives, got {num_sampled}")
        self.init_corpus(corpus, eval_ks, export_k, candidate_model_name)
        self.task = self.tasks[0]
        # Not ``self.history``: Keras' fit sets that attribute to its History callback.
        self.history_feature, self.timestamp_feature, self.label_feature = history, timestamps, next_item
        self.label_inputs = (next_item,)
        self.candidate_id = candidate_id
        self.negatives = negatives
        max_len = schema[history].max_len
        self.queries = SequenceQueries(
            self.embedding_view([history, timestamps], name="history_features"), history, timestamps, max_len,
            make_encoder(encoder, num_blocks, num_heads, dropout, max_len, schema[candidate_id].embedding_dim,
                         **(hstu or {})), dropout,
            name="sequence_queries")
        self.query_tower = LastPositionQuery(self.queries, name="query_tower")
        self.candidate_tower = ItemEmbedding(self.embedding_view([candidate_id], name="item_features"),
                                             candidate_id, name="candidate_tower")
        self.query_features, self.candidate_features = [history, timestamps], [candidate_id]
        self.logits = MixedNegativeLogits("sampled" if negatives == "uniform" else "in_batch", temperature,
                                          logq=negatives == "in_batch", name="logits")
        self.sampler = (CorpusSampler(np.ones(len(corpus.ids)), num_sampled, 0.0, seed, name="uniform_sampler")
                        if negatives == "uniform" else None)
        self.corpus_features = {candidate_id: self._corpus_ids}
        # An item the frequency table has not counted gets the probability of one occurrence (log 0 = -inf).
        total = max(corpus.counts.sum(), 1.0)
        self._item_probability = tf.constant(np.maximum(corpus.counts, 1.0) / total, tf.float32)

    # Training ----------------------------------------------------------------------------------------------

    def training_outputs(self, features, training: bool) -> dict:
        """``{task: {logits [P, C], positive_column [P], row [P], rows}, "query_embedding": [B, d]}`` over the
        batch's ``P`` valid positions (those with a label)."""
        queries, lengths = self.queries(features, training=training)
        labels = features[self.label_feature]
        label_mask = tf.sequence_mask(features[self.label_feature + "_length"], tf.shape(labels)[1])
        positions = tf.where(label_mask)
        query = tf.gather_nd(queries, positions)
        positive_ids = tf.gather_nd(labels, positions)
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            # Every label slot looked up, then the valid ones kept: the replicas' sparse gradients of the item
            # table then have one length (the valid positions' differ, and TF 2.16's all-gather of sparse
            # gradients of different lengths fails inside a multi-step call).
            positive = tf.gather_nd(self.candidate_tower(labels, training=training), positions)
        else:
            positive = self.candidate_tower(positive_ids, training=training)
        sampled = sampled_ids = positive_probability = None
        if self.sampler is not None:
            step = self.optimizer.iterations if training and self.optimizer is not None else 0
            context = tf.distribute.get_replica_context()
            rows, _ = self.sampler(step, context.replica_id_in_sync_group if context is not None else 0)
            sampled_ids = tf.gather(self._corpus_ids, rows)
            sampled = self.candidate_tower(sampled_ids, training=training)
        else:
            known = self._corpus_rows(positive_ids)
            positive_probability = tf.where(known >= 0, tf.gather(self._item_probability, tf.maximum(known, 0)),
                                            1.0 / float(max(self.corpus.counts.sum(), 1.0)))
        # Uniform negatives need no logQ: a constant probability shifts every logit of a row alike.
        logits, positive_column = self.logits(query, positive, positive_ids, sampled, sampled_ids,
                                              positive_probability)
        last = tf.gather(queries, tf.maximum(lengths - 1, 0), batch_dims=1)
        return {self.task.name: {"logits": logits, "positive_column": positive_column,
                                 "row": tf.cast(positions[:, 0], tf.int32), "rows": tf.shape(labels)[0]},
                "query_embedding": last}

    # Evaluation --------------------------------------------------------------------------------------------

    def update_evaluation_metrics(self, features, labels, outputs) -> None:
        """Leave-one-out: the rank among the whole corpus of each row's last label (the held-out item)."""
        targets, lengths = labels[self.label_feature], labels[self.label_feature + "_length"]
        target = tf.gather(targets, tf.maximum(lengths - 1, 0), batch_dims=1)
        self.update_corpus_ranks(outputs["query_embedding"], target, tf.cast(lengths > 0, tf.float32))


def _check_schema(schema: FeatureSchema, history: str, timestamps: str, next_item: str, candidate_id: str):
    item, seq, times, label = (schema[name] for name in (candidate_id, history, timestamps, next_item))
    if not isinstance(item, IdFeature):
        raise ValueError(f"config.model.candidate_id {candidate_id!r} must be an id feature")
    if not isinstance(seq, SequenceFeature) or seq.table != item.table:
        raise ValueError(f"config.model.history_feature {history!r} must be a sequence that shares {candidate_id!r}")
    if not isinstance(times, SequenceFeature) or not times.raw or times.aligned_with != history \
            or times.dtype != "int64":
        raise ValueError(f"config.model.timestamp_feature {timestamps!r} must be a raw int64 sequence aligned_with "
                         f"{history!r}")
    if not isinstance(label, LabelFeature) or label.max_len != seq.max_len or label.dtype != item.dtype:
        raise ValueError(f"config.model.label_feature {next_item!r} must be a label sequence of {item.dtype} item "
                         f"ids with max_len {seq.max_len} (the next item at each history position)")


@register("generative")
def build_generative(config, schema: FeatureSchema, tables=None) -> GenerativeRetrieval:
    model = config.model
    tasks = tasks_from_config(config.tasks, schema)
    if len(tasks) != 1 or tasks[0].loss != NEXT_ITEM_LOSS:
        raise ValueError(f"generative trains exactly one task with loss {NEXT_ITEM_LOSS!r}; config.tasks has "
                         f"{[(t.name, t.loss) for t in tasks]}")
    names = dict(history=model.history_feature, timestamps=model.timestamp_feature, next_item=model.label_feature,
                 candidate_id=model.candidate_id)
    _check_schema(schema, **names)
    if tables is None:
        raise ValueError("generative ranks its candidate corpus: build it with "
                         "build_model(config, schema, tfrecsys.data.model_tables.ModelTables(config, schema))")
    corpus = tables.candidate_corpus([model.candidate_id], model.candidate_id)
    return GenerativeRetrieval(
        schema, tasks, corpus, **names, encoder=model.encoder, num_blocks=model.num_blocks,
        num_heads=model.num_heads, dropout=model.dropout, temperature=model.temperature,
        negatives=model.negatives, num_sampled=model.num_sampled, eval_ks=tuple(model.eval_ks),
        export_k=model.export_k, hstu=set_options(model.hstu),
        candidate_model_name=config.get("export", {}).get("candidate_model_name"),
        seed=config.train.seed, name=f"generative_{model.encoder}")
