"""din: Deep Interest Network (Zhou et al., KDD 2018): target attention over the behaviour history."""

import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.layers.regularization import mini_batch_aware_l2
from tfrecsys.layers.target_attention import TargetAttention
from tfrecsys.layers.xla import tracing_inside_xla
from tfrecsys.models.base import RecModel
from tfrecsys.models.behaviours import behaviour_history
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import tasks_from_config


class DIN(RecModel):
    """``v_U(A) = Σ_j a(e_j, v_A) e_j`` (unnormalised, DIN eq. 3), then
    ``p_task = sigmoid(w_task · MLP([x_other ; v_U(A)]))``.

    ``history``: the behaviour sequences (``hist_item_id``, ``hist_category``), each sharing a candidate id
    feature; ``e_j`` ``[batch, len, d]`` and ``v_A`` ``[batch, d]`` concatenate them (``models.behaviours``).
    ``x_other`` ``[batch, Σ d_f]``: every other serving feature as the dnn family takes it (candidate and user
    embeddings, other sequences mean-pooled, dense values). ``mba_l2``: mini-batch aware L2 (DIN §4.2) on
    the embedding rows each training batch uses; 0 turns it off. ``attention_normalization``: ``"none"`` (the
    paper's raw weights, the default) or ``"softmax"`` over the valid behaviours (``TargetAttention``).
    Outputs ``{task: [batch]}``.

    The history's valid behaviours are packed before their embeddings are looked up (``packed_history``):
    the attention runs on ``[n_valid, d]`` rows, and no padded ``[batch, len, d]`` tensor or its gradient is
    built. Inside an XLA-compiled step (static shapes), and on several replicas, the padded history is
    embedded and masked instead: the replicas' sparse embedding gradients then have one length (the packed
    lookup's differ, and TF 2.16's all-gather of them fails inside a multi-step call).
    """

    def __init__(self, schema: FeatureSchema, tasks, history, attention_units=(80, 40),
                 attention_activation="dice", hidden_units=(200, 80), dropout=0.0, mba_l2=0.0,
                 attention_normalization="none", **kwargs):
        super().__init__(schema, tasks, **kwargs)
        self.behaviours = behaviour_history(schema, history)
        self.other_features = [name for name in self.serving_features if name not in self.behaviours.sequences]
        self.mba_l2 = mba_l2
        self.embedding = self.embedding_view(self.other_features, name="features")
        self.history_embedding = self.embedding_view(self.behaviours.sequences, name="history")
        self.attention = TargetAttention(attention_units, attention_activation, attention_normalization,
                                         name="target_attention")
        self.tower = MLP(hidden_units, dropout=dropout, name="tower")
        self.heads = {task.name: tf.keras.layers.Dense(1, name=f"{task.name}_logit", dtype="float32")
                      for task in self.tasks}

    def call(self, features, training=None):
        embedded = self.embedding(features)
        query = self.behaviours.query(embedded)
        several_replicas = tf.distribute.get_strategy().num_replicas_in_sync > 1
        if tracing_inside_xla() or several_replicas:
            # XLA compiles static shapes; replicas all-gather embedding gradients of one length: the padded
            # history, the padding masked (TargetAttention).
            history = self.history_embedding(features)
            interest = self.attention(self.behaviours.keys(history), self.behaviours.mask(history), query,
                                      training=training)
            embedded, history_ids = {**embedded, **history}, {}
        else:
            keys, rows, history_ids = self.packed_history(features)
            interest = self.attention(keys, None, query, rows=rows, training=training)
        if training and self.mba_l2:
            self.add_loss(self.mini_batch_regularization(features, embedded, history_ids,
                                                         fixed_length=several_replicas))
        hidden = self.tower(tf.concat([concat_pooled(embedded, self.schema, self.other_features), interest], -1),
                            training=training)
        return {name: tf.sigmoid(tf.squeeze(head(hidden), axis=-1)) for name, head in self.heads.items()}

    def packed_history(self, features):
        """The valid behaviours only, in row-major order: ``(e [n, d], rows [n] int64, {sequence: ids [n]})``,
        ``e_i`` the behaviour of row ``rows[i]``. The ids are gathered before the lookup, so neither the padding's
        embeddings nor their gradients (a scatter back into ``[batch, len, d]``) are ever built."""
        first = self.schema[self.behaviours.sequences[0]]
        padded = {}
        for name in self.behaviours.sequences:
            value = features[name]
            if isinstance(value, tf.RaggedTensor):  # as FeatureEmbedding pads a ragged batch
                lengths = value.row_lengths()
                value = value.to_tensor(shape=[None, first.max_len])
            padded[name] = value
        if not isinstance(features[first.name], tf.RaggedTensor):
            lengths = features[first.length_name]
        positions = tf.where(tf.sequence_mask(lengths, first.max_len))  # [n, 2]: (row, step)
        ids = {name: tf.gather_nd(value, positions) for name, value in padded.items()}
        keys = tf.concat([self.embeddings.embed(self.schema[name].table, ids[name])
                          for name in self.behaviours.sequences], axis=-1)
        return keys, positions[:, 0], ids

    def mini_batch_regularization(self, features, embedded, history_ids, fixed_length=False) -> tf.Tensor:
        """``λ Σ_tables Σ_{j ∈ batch} ‖w_j‖²`` over the rows the batch's embedded features use (padding
        excluded); ``history_ids``: the valid ids of the history sequences that ``embedded`` does not hold.
        ``fixed_length``: padded sequences keep every slot, the padding weighted 0 (``mini_batch_aware_l2``'s
        ``valid``), so the gradient's length does not depend on the ids (several replicas)."""
        rows = {}  # by variable: the tables packed into one variable are penalised with one gather
        for feature in self.schema.serving_inputs:
            if not feature.embedded:
                continue
            valid = None
            if feature.name in history_ids:
                ids = history_ids[feature.name]
            else:
                ids = features[feature.name]
                if isinstance(ids, tf.RaggedTensor):
                    ids = ids.flat_values
                elif feature.is_sequence and fixed_length:
                    valid = embedded[feature.name + "_mask"]
                elif feature.is_sequence:
                    ids = tf.boolean_mask(ids, embedded[feature.name + "_mask"])
            variable, in_variable = self.embeddings.variable_rows(feature.table, ids)
            entry = rows.setdefault(variable.ref(), (variable, [], []))
            entry[1].append(tf.reshape(in_variable, [-1]))
            entry[2].append(tf.reshape(tf.ones_like(ids, tf.bool) if valid is None else valid, [-1]))
        return tf.add_n([mini_batch_aware_l2(variable, tf.concat(ids, 0), self.mba_l2,
                                             valid=tf.concat(valid, 0) if fixed_length else None)
                         for variable, ids, valid in rows.values()])


@register("din")
def build_din(config, schema: FeatureSchema, tables=None) -> DIN:
    model = config.model
    return DIN(schema, tasks_from_config(config.tasks, schema), history=tuple(model.history),
               attention_units=tuple(model.attention_units), attention_activation=model.attention_activation,
               hidden_units=tuple(model.hidden_units), dropout=model.dropout, mba_l2=model.mba_l2,
               attention_normalization=model.attention_normalization, name="din")
