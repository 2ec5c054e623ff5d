"""sim: search-based interest modelling over lifelong histories (Pi et al., SIM, CIKM 2020), with a DIN branch
over the recent history (Zhou et al., DIN, KDD 2018).

    e_a  = [e(item_id) ; e(item_category)]                                   target             [batch, d]
    GSU: (idx, m) = top-K of r_i over the lifelong history (L events, K ≪ L)  hard: r_i = 1[C_i = C_a]
                                                                             soft: r_i = (W_b e_i)·(W_a e_a)
    ESU: u_long = MultiHeadTargetAttention([e_i ; e_t(Δt_i)]_{i ∈ idx}, m, e_a)                   [batch, H·(d+d_t)]
    DIN: u_recent = Σ_j a(e_j, e_a) e_j over the recent history                                  [batch, d]
    p_task = sigmoid(w_task · MLP([e_a ; u_recent ; u_long ; other features]) + b_task)

Hard search compares raw category ids before anything is embedded, so of a history of thousands only the K
selected behaviours are looked up. Soft search embeds the whole history; its projections learn only through
the GSU's auxiliary CTR task (the top-K has no gradient): ``p_gsu = sigmoid(MLP_gsu([Σ_i softmax(r)_i e_i ;
e_a]))``, the training output ``model.gsu_task``, whose task in ``config.tasks`` gives its label and weight
(the paper's ``L = α L_GSU + β L_ESU``); it is not exported.

Config (``config.model``): ``recent_history`` and ``lifelong_history`` (behaviour histories,
``tfrecsys.models.behaviours``: aligned sequences, each sharing the table of a candidate id feature, the
lifelong one the same tables in the same order; those id features are the target ``e_a``),
``lifelong_timestamps`` (raw int64 sequence aligned with the lifelong history), ``request_time`` (int64 dense
feature), ``search`` (hard | soft), ``hard_search`` (``(history category feature, target category
feature)``), ``top_k``, ``soft_search_dim``, ``gsu_task``, ``num_heads``, ``head_dim``,
``time_buckets``, ``time_embedding_dim``, ``time_unit_seconds``, ``attention_hidden_units``,
``attention_activation``, ``hidden_units``, ``dropout``. Every other serving feature (user profile, dense
context) enters the MLP as ``concat_pooled`` gives it. The serving signature takes the raw histories:
padded id matrices, the lifelong one with its raw timestamps.
"""

from typing import Sequence

import tensorflow as tf

from tfrecsys.features.schema import DenseFeature, FeatureSchema, SequenceFeature
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.layers.search import (ExactSearchUnit, HardSearch, SoftSearch, TimeIntervalEmbedding, gather_selected,
                                    relevance_pooling)
from tfrecsys.layers.target_attention import TargetAttention
from tfrecsys.models.base import RecModel
from tfrecsys.models.behaviours import behaviour_history
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import tasks_from_config

SEARCH_MODES = ("hard", "soft")


def _padded(value, max_len: int) -> tf.Tensor:
    """A sequence as ``[batch, max_len]``, whether the batch holds it padded or ragged."""
    return value.to_tensor(shape=[None, max_len]) if isinstance(value, tf.RaggedTensor) else value


def _mask(features, feature: SequenceFeature) -> tf.Tensor:
    """``[batch, max_len]`` bool: the valid events of a primary sequence, padded or ragged."""
    value = features[feature.name]
    lengths = value.row_lengths() if isinstance(value, tf.RaggedTensor) else features[feature.length_name]
    return tf.sequence_mask(lengths, feature.max_len)


def _check_roles(schema: FeatureSchema, lifelong, timestamps: str, request_time: str, hard_search) -> None:
    """The time and search roles of config.model name schema features of the right kind; the error names the
    key at fault (the histories are checked by ``behaviour_history``)."""
    stamps = schema[timestamps]
    if not isinstance(stamps, SequenceFeature) or not stamps.raw or stamps.dtype != "int64" or (
            stamps.aligned_with != (schema[lifelong.sequences[0]].aligned_with or lifelong.sequences[0])):
        raise ValueError(f"config.model.lifelong_timestamps: {timestamps!r} must be a raw int64 sequence "
                         f"aligned_with {lifelong.sequences[0]!r}")
    time = schema[request_time]
    if not isinstance(time, DenseFeature) or time.dtype != "int64" or time.training_only:
        raise ValueError(f"config.model.request_time: {request_time!r} must be an int64 dense serving feature")
    if hard_search is not None and (hard_search[0] not in lifelong.sequences or
                                    hard_search[1] != lifelong.targets[lifelong.sequences.index(hard_search[0])]):
        raise ValueError(f"config.model.hard_search {tuple(hard_search)}: a lifelong_history feature and the "
                         f"target feature it shares ({dict(zip(lifelong.sequences, lifelong.targets))})")


class SIMRanker(RecModel):
    """SIM (GSU + ESU over the lifelong history) with a DIN branch over the recent one; see the module doc."""

    def __init__(self, schema: FeatureSchema, tasks, *, recent_history: Sequence[str],
                 lifelong_history: Sequence[str], lifelong_timestamps: str, request_time: str, search="hard",
                 hard_search=("", ""), top_k=50, soft_search_dim=16, gsu_task="gsu", num_heads=2, head_dim=16,
                 time_buckets=24, time_embedding_dim=8, time_unit_seconds=60.0, attention_hidden_units=(80, 40),
                 attention_activation="dice", hidden_units=(128, 64), dropout=0.0, **kwargs):
        super().__init__(schema, tasks, **kwargs)
        if search not in SEARCH_MODES:
            raise ValueError(f"config.model.search must be one of {SEARCH_MODES}, got {search!r}")
        self.recent = behaviour_history(schema, recent_history, "model.recent_history")
        self.lifelong = behaviour_history(schema, lifelong_history, "model.lifelong_history",
                                          targets=self.recent.targets)
        _check_roles(schema, self.lifelong, lifelong_timestamps, request_time,
                     hard_search if search == "hard" else None)
        self.timestamps, self.request_time, self.search = lifelong_timestamps, request_time, search
        self.hard_search_on = tuple(hard_search)
        self.gsu_task = gsu_task
        served_tasks = [t for t in self.tasks if t.name != gsu_task]
        if search == "soft" and len(served_tasks) == len(self.tasks):
            raise ValueError(f"config.model.search='soft' learns its projections only through the GSU's auxiliary "
                             f"CTR task: add config.tasks.{gsu_task} (label, weight α), or use search='hard'")
        roles = {*self.recent.targets, *self.recent.sequences, *self.lifelong.sequences, lifelong_timestamps,
                 request_time}
        self.other_features = [name for name in self.serving_features if name not in roles]
        self.embedding = self.embedding_view([*self.recent.targets, *self.recent.sequences, *self.other_features],
                                             name="features")
        self.recent_attention = TargetAttention(attention_hidden_units, attention_activation, name="din_attention")
        if search == "hard":
            self.general_search = HardSearch(top_k, name="hard_search")
        else:
            self.general_search = SoftSearch(top_k, soft_search_dim, name="soft_search")
            self.gsu_tower = MLP(hidden_units, output_units=1, name="gsu_tower")
        self.time_interval = TimeIntervalEmbedding(time_buckets, time_embedding_dim, time_unit_seconds,
                                                   name="time_interval")
        self.exact_search = ExactSearchUnit(num_heads, head_dim, name="exact_search")
        self.bottom = MLP(hidden_units, dropout=dropout, name="bottom")
        # float32 heads: under mixed precision the logit, the sigmoid and the loss stay in float32.
        self.heads = {t.name: tf.keras.layers.Dense(1, name=f"{t.name}_logit", dtype="float32") for t in served_tasks}

    def _embed_lifelong(self, ids_by_feature) -> tf.Tensor:
        """``[batch, n, d]``: the lifelong features' raw ids ``[batch, n]`` embedded and concatenated."""
        return tf.concat([self.embeddings.embed(self.schema[name].table, ids) for name, ids in ids_by_feature.items()],
                         axis=-1)

    def _interests(self, features, training):
        """``(hidden [batch, h], soft-search GSU logit [batch] or None)``."""
        embedded = self.embedding(features)
        target = self.recent.query(embedded)
        recent_interest = self.recent_attention(self.recent.keys(embedded), self.recent.mask(embedded), target,
                                                training=training)

        lifelong = {name: _padded(features[name], self.schema[name].max_len) for name in self.lifelong.sequences}
        mask = _mask(features, self.schema[self.lifelong.sequences[0]])
        gsu_logit = None
        if self.search == "hard":
            history_category, target_category = self.hard_search_on
            indices, selected_mask = self.general_search(lifelong[history_category], mask,
                                                         features[target_category])
            selected = self._embed_lifelong({name: gather_selected(ids, indices) for name, ids in lifelong.items()})
        else:
            history = self._embed_lifelong(lifelong)
            indices, selected_mask, relevance = self.general_search(history, mask, target)
            selected = gather_selected(history, indices)
            gsu_input = tf.concat([relevance_pooling(history, mask, relevance), target], axis=-1)
            gsu_logit = tf.squeeze(self.gsu_tower(gsu_input, training=training), axis=-1)
        stamps = gather_selected(_padded(features[self.timestamps], self.schema[self.timestamps].max_len), indices)
        intervals = self.time_interval(stamps, features[self.request_time])
        long_interest = self.exact_search(tf.concat([selected, tf.cast(intervals, selected.dtype)], axis=-1),
                                          selected_mask, target)

        parts = [target, recent_interest, long_interest]
        if self.other_features:
            parts.append(concat_pooled(embedded, self.schema, self.other_features))
        return self.bottom(tf.concat(parts, axis=-1), training=training), gsu_logit

    def _served(self, hidden) -> dict:
        return {name: tf.sigmoid(tf.squeeze(head(hidden), axis=-1)) for name, head in self.heads.items()}

    def call(self, features, training=None):
        return self._served(self._interests(features, training)[0])

    def training_outputs(self, features, training: bool) -> dict:
        """``call``'s outputs plus, with soft search, the GSU's auxiliary CTR ``{gsu_task: p_gsu}``."""
        hidden, gsu_logit = self._interests(features, training)
        outputs = self._served(hidden)
        if gsu_logit is not None:
            outputs[self.gsu_task] = tf.sigmoid(gsu_logit)
        return outputs


@register("sim")
def build_sim(config, schema: FeatureSchema, tables=None) -> SIMRanker:
    model = config.model
    return SIMRanker(
        schema, tasks_from_config(config.tasks, schema), recent_history=tuple(model.recent_history),
        lifelong_history=tuple(model.lifelong_history),
        lifelong_timestamps=model.lifelong_timestamps, request_time=model.request_time,
        search=model.search, hard_search=tuple(model.hard_search), top_k=model.top_k,
        soft_search_dim=model.soft_search_dim, gsu_task=model.gsu_task, num_heads=model.num_heads,
        head_dim=model.head_dim, time_buckets=model.time_buckets, time_embedding_dim=model.time_embedding_dim,
        time_unit_seconds=model.time_unit_seconds, attention_hidden_units=tuple(model.attention_hidden_units),
        attention_activation=model.attention_activation, hidden_units=tuple(model.hidden_units),
        dropout=model.dropout, name="sim")
