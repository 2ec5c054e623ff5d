"""hstu_ranking: generative ranking (Zhai et al., "Actions Speak Louder than Words", ICML 2024, §3.2.2): the
user's items and actions interleaved in one sequence, the candidate items appended, an HSTU encoder, and one
tower per task at the candidates' item positions.

    tokens = x_0, a_0, …, x_{n−1}, a_{n−1}, c_1 … c_m      √d · e(item) / √d · e_a(action), [B, 2L + M, d]
    h      = HSTUStack(dropout(tokens), 2n + m, timestamps, num_targets = m)                   [B, 2L + M, d]
    p_task(c_k) = sigmoid(tower_task(h_{2n+k}))                                                 [B, M]
    p_task(x_i) = sigmoid(tower_task(h_{2i}))      history item positions (``history_labels``)  [B, L]

The candidate mask of ``tfrecsys.layers.hstu`` lets each candidate read every history item and action (in the
bottom layer: target-aware, as DIN's attention but through the whole stack) and itself, never another
candidate, and gives every candidate the position right after the history: ``score_candidates`` scores m
candidates of a history in one pass exactly as m passes of one candidate would. The towers are shared by all
item positions. Training and the exported signature score one candidate per row (``call``: the schema's
``candidate_id``), so every training row is one (history, candidate, labels) example of the foundation's tasks
(each a binary label of the candidate's action, e.g. ``like = rating >= 4``), and with ``history_labels``
also n more, one per history item, labelled by its own action; a serving client with m candidates of one
history sends m rows, a caller in process uses ``score_candidates``.

Config (``config.model``): ``history_feature`` (item sequence sharing the ``candidate_id`` table),
``action_feature`` (a raw int64 or float32 sequence ``aligned_with`` the history: the action taken on each
item as a small integer, click 0/1 or a rating 1–5), ``num_actions`` (rows of the model's action table
``e_a``; an action is rounded and clipped to ``[0, num_actions − 1]``), ``timestamp_feature`` (raw int64
sequence aligned with the history), ``candidate_id``, ``candidate_timestamp_feature`` (a dense int64 feature:
the request time; "" uses the last history event's time), ``num_blocks``, ``num_heads``, ``dropout``,
``hidden_units`` (each task's tower), ``hstu`` (any other ``HSTULayer`` argument, e.g.
``attention_path="xla"``; exports take the padded path), ``history_labels`` ``{task: a}`` and
``history_weight``: also train the named tasks' towers at every history item position ``x_i``, its label
``a_i >= a`` (its own action), weighted by ``history_weight`` against the candidate's tasks: every event of
the history is a training example of the same function that scores candidates.
"""

from typing import Optional, Sequence

import tensorflow as tf

from tfrecsys.features.schema import DenseFeature, FeatureSchema, IdFeature, SequenceFeature
from tfrecsys.layers.action_tokens import InterleavedActionTokens
from tfrecsys.layers.hstu import HSTUStack
from tfrecsys.layers.mlp import MLP
from tfrecsys.losses.replicas import mean_over_global_batch
from tfrecsys.models.base import RecModel
from tfrecsys.models.registry import register, set_options
from tfrecsys.models.tasks import tasks_from_config


class HSTURanking(RecModel):
    """Outputs ``{task: [batch]}``: the probability of each task's action on the row's candidate."""

    def __init__(self, schema: FeatureSchema, tasks, *, history: str, actions: str, timestamps: str,
                 candidate_id: str, num_actions: int, candidate_timestamp: Optional[str] = None, num_blocks: int = 2,
                 num_heads: int = 1, dropout: float = 0.2, hidden_units: Sequence[int] = (),
                 hstu: Optional[dict] = None, history_labels: Optional[dict] = None, history_weight: float = 1.0,
                 **kwargs):
        super().__init__(schema, tasks, **kwargs)
        # Not ``self.history``: Keras' fit sets that attribute to its History callback.
        self.history_feature, self.action_feature, self.timestamp_feature = history, actions, timestamps
        self.candidate_id, self.candidate_timestamp = candidate_id, candidate_timestamp
        inputs = [history, actions, timestamps] + ([candidate_timestamp] if candidate_timestamp else [])
        self.history_embedding = self.embedding_view(inputs, name="history_features")
        max_len, dim = schema[history].max_len, schema[candidate_id].embedding_dim
        self.num_actions = num_actions
        unknown = sorted(set(history_labels or {}) - {task.name for task in self.tasks})
        if unknown:
            raise ValueError(f"config.model.history_labels names {unknown}, which are not tasks "
                             f"({[task.name for task in self.tasks]})")
        self.history_labels = dict(sorted((history_labels or {}).items()))
        self.history_weight = history_weight
        self.action_embedding = tf.keras.layers.Embedding(num_actions, dim, name="action_embedding")
        self.tokens = InterleavedActionTokens(name="interleaved_tokens")
        self.dropout = tf.keras.layers.Dropout(dropout)
        settings = dict(num_heads=num_heads, attention_dim=dim // num_heads, max_seq_len=2 * max_len + 1,
                        dropout=dropout)
        self.encoder = HSTUStack(num_blocks, name="hstu", **{**settings, **(hstu or {})})
        self.towers = {task.name: MLP(hidden_units, output_units=1, dtype="float32", name=f"{task.name}_tower")
                       for task in self.tasks}

    def _item_rows(self, ids):
        return self.embeddings.embed(self.schema[self.candidate_id].table, ids)

    def _encode(self, features, candidates, candidate_lengths, training):
        """``(h [B, 2L + M, d], candidate positions [B, M], candidate_lengths [B], embedded inputs)``."""
        embedded = self.history_embedding(features)
        items, mask = embedded[self.history_feature], embedded[self.history_feature + "_mask"]
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        timestamps = tf.cast(embedded[self.timestamp_feature], tf.int64)
        candidates = tf.convert_to_tensor(candidates)
        num_candidates = tf.shape(candidates)[1]
        if candidate_lengths is None:
            candidate_lengths = tf.fill([tf.shape(candidates)[0]], num_candidates)
        if self.candidate_timestamp:
            request_time = tf.reshape(embedded[self.candidate_timestamp], [-1])
        else:  # the last history event's time (0 for an empty history)
            last = tf.gather(timestamps, tf.maximum(lengths - 1, 0), batch_dims=1)
            request_time = tf.where(lengths > 0, last, tf.zeros_like(last))
        action_ids = tf.cast(tf.round(tf.cast(embedded[self.action_feature], tf.float32)), tf.int32)
        actions = tf.cast(self.action_embedding(tf.clip_by_value(action_ids, 0, self.num_actions - 1)), items.dtype)
        dim = tf.cast(tf.shape(items)[-1], items.dtype)
        tokens, token_times, token_lengths, positions = self.tokens(
            items * tf.sqrt(dim), actions * tf.sqrt(dim), timestamps, lengths,
            self._item_rows(candidates) * tf.sqrt(dim), candidate_lengths,
            tf.repeat(request_time[:, None], num_candidates, axis=1))
        hidden = self.encoder(self.dropout(tokens, training=training), token_lengths, token_times,
                              num_targets=candidate_lengths, training=training)
        return hidden, positions, candidate_lengths, embedded

    def _towers(self, hidden, valid, training) -> dict:
        hidden = tf.cast(hidden, tf.float32)
        return {name: tf.sigmoid(tower(hidden, training=training)[..., 0]) * tf.cast(valid, tf.float32)
                for name, tower in self.towers.items()}

    def score_candidates(self, features, candidates, candidate_lengths=None, training=None) -> dict:
        """``{task: [B, M]}`` for the candidate items ``candidates`` ``[B, M]`` of each row's history (the first
        ``candidate_lengths[b]`` of row ``b``, default all M), in one pass; padded candidates score 0."""
        hidden, positions, candidate_lengths, _ = self._encode(features, candidates, candidate_lengths, training)
        valid = tf.sequence_mask(candidate_lengths, tf.shape(positions)[1])
        return self._towers(tf.gather(hidden, positions, batch_dims=1), valid, training)

    def item_position_scores(self, features, training=None) -> dict:
        """``{task: [B, L]}``: the towers at every history item position ``x_i`` (0 at padding). ``x_i`` reads
        the events before it and itself, not its own action ``a_i``: the score of ``x_i`` as a candidate of the
        history before it, at its own time (what ``history_labels`` trains)."""
        return self._item_positions(features, training)[0]

    def _item_positions(self, features, training):
        candidates = tf.reshape(features[self.candidate_id], [-1, 1])
        hidden, positions, candidate_lengths, embedded = self._encode(features, candidates, None, training)
        width = tf.shape(embedded[self.history_feature])[1]
        at_items = hidden[:, :2 * width:2]  # x_0, x_1, … of the interleaved tokens
        scores = self._towers(at_items, embedded[self.history_feature + "_mask"], training)
        at_candidate = self._towers(tf.gather(hidden, positions, batch_dims=1), tf.ones_like(positions, tf.bool),
                                    training)
        return scores, at_candidate, embedded

    def call(self, features, training=None):
        if training and self.history_labels:
            # One pass gives the candidate's outputs and every history item's, whose labels are their actions.
            scores, at_candidate, embedded = self._item_positions(features, training)
            self.add_loss(self.history_weight * self.history_label_loss(scores, embedded))
        else:
            at_candidate = self.score_candidates(features, tf.reshape(features[self.candidate_id], [-1, 1]),
                                                 training=training)
        return {name: score[:, 0] for name, score in at_candidate.items()}

    def history_label_loss(self, scores, embedded) -> tf.Tensor:
        """Mean over the ``history_labels`` tasks of the BCE at every valid history item position, the label
        of task t at x_i being ``a_i >= history_labels[t]``."""
        mask = tf.cast(embedded[self.history_feature + "_mask"], tf.float32)
        actions = tf.cast(embedded[self.action_feature], tf.float32)
        losses = []
        for name, threshold in self.history_labels.items():
            labels = tf.cast(actions >= threshold, tf.float32)
            per_position = tf.keras.backend.binary_crossentropy(labels[..., None], scores[name][..., None])[..., 0]
            # Under a strategy, the mean over the global batch's valid positions.
            losses.append(mean_over_global_batch(tf.reduce_sum(per_position * mask), tf.reduce_sum(mask)))
        return tf.add_n(losses) / len(losses)


def _check_schema(schema: FeatureSchema, history: str, actions: str, timestamps: str, candidate_id: str,
                  num_actions: int, candidate_timestamp: Optional[str]):
    names = [history, actions, timestamps, candidate_id] + ([candidate_timestamp] if candidate_timestamp else [])
    known = {f.name for f in schema.inputs}
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"hstu_ranking: config.model names features {missing} that are not inputs of the schema "
                         f"({sorted(known)})")
    item, seq, acts, times = (schema[name] for name in (candidate_id, history, actions, timestamps))
    if not isinstance(item, IdFeature):
        raise ValueError(f"config.model.candidate_id {candidate_id!r} must be an id feature")
    if not isinstance(seq, SequenceFeature) or seq.table != item.table:
        raise ValueError(f"config.model.history_feature {history!r} must be a sequence that shares {candidate_id!r}")
    if not isinstance(acts, SequenceFeature) or not acts.raw or acts.aligned_with != history:
        raise ValueError(f"config.model.action_feature {actions!r} must be a raw sequence aligned_with {history!r} "
                         "(the action on each history item as a small integer)")
    if num_actions < 1:
        raise ValueError(f"config.model.num_actions must be >= 1 (the action table's rows), got {num_actions}")
    if not isinstance(times, SequenceFeature) or not times.raw or times.aligned_with != history \
            or times.dtype != "int64":
        raise ValueError(f"config.model.timestamp_feature {timestamps!r} must be a raw int64 sequence aligned_with "
                         f"{history!r}")
    if candidate_timestamp:
        request = schema[candidate_timestamp]
        if not isinstance(request, DenseFeature) or request.dtype != "int64" or request.dim != 1:
            raise ValueError(f"config.model.candidate_timestamp_feature {candidate_timestamp!r} must be a dense "
                             "int64 feature of dim 1 (the request time)")


@register("hstu_ranking")
def build_hstu_ranking(config, schema: FeatureSchema, tables=None) -> HSTURanking:
    model = config.model
    names = dict(history=model.history_feature, actions=model.action_feature, timestamps=model.timestamp_feature,
                 candidate_id=model.candidate_id, num_actions=model.num_actions,
                 candidate_timestamp=model.candidate_timestamp_feature or None)
    _check_schema(schema, **names)
    return HSTURanking(schema, tasks_from_config(config.tasks, schema), **names, num_blocks=model.num_blocks,
                       num_heads=model.num_heads, dropout=model.dropout,
                       hidden_units=tuple(model.hidden_units),
                       hstu=set_options(model.hstu),
                       history_labels=dict(model.history_labels), history_weight=model.history_weight,
                       name="hstu_ranking")
