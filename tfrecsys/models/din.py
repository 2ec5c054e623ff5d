"""din: Deep Interest Network (Zhou et al., KDD 2018): target attention over the behaviour history."""

import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.layers.regularization import mini_batch_aware_l2
from tfrecsys.layers.target_attention import TargetAttention
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
    """

    def __init__(self, schema: FeatureSchema, tasks, history, attention_units=(80, 40),
                 attention_activation="dice", hidden_units=(200, 80), dropout=0.0, mba_l2=0.0,
                 attention_normalization="none", **kwargs):
        super().__init__(schema, tasks, **kwargs)
        self.behaviours = behaviour_history(schema, history)
        self.other_features = [name for name in self.serving_features if name not in self.behaviours.sequences]
        self.mba_l2 = mba_l2
        self.embedding = self.embedding_view(self.serving_features, name="features")
        self.attention = TargetAttention(attention_units, attention_activation, attention_normalization,
                                         name="target_attention")
        self.tower = MLP(hidden_units, dropout=dropout, name="tower")
        self.heads = {task.name: tf.keras.layers.Dense(1, name=f"{task.name}_logit", dtype="float32")
                      for task in self.tasks}

    def call(self, features, training=None):
        embedded = self.embedding(features)
        interest = self.attention(self.behaviours.keys(embedded), self.behaviours.mask(embedded),
                                  self.behaviours.query(embedded), training=training)
        if training and self.mba_l2:
            self.add_loss(self.mini_batch_regularization(features, embedded))
        hidden = self.tower(tf.concat([concat_pooled(embedded, self.schema, self.other_features), interest], -1),
                            training=training)
        return {name: tf.sigmoid(tf.squeeze(head(hidden), axis=-1)) for name, head in self.heads.items()}

    def mini_batch_regularization(self, features, embedded) -> tf.Tensor:
        """``λ Σ_tables Σ_{j ∈ batch} ‖w_j‖²`` over the rows the batch's embedded features use (padding
        excluded)."""
        rows = {}
        for feature in self.schema.serving_inputs:
            if not feature.embedded:
                continue
            ids = features[feature.name]
            if isinstance(ids, tf.RaggedTensor):
                ids = ids.flat_values
            elif feature.is_sequence:
                ids = tf.boolean_mask(ids, embedded[feature.name + "_mask"])
            rows.setdefault(feature.table, []).append(tf.reshape(self.embeddings.rows(feature.table, ids), [-1]))
        return tf.add_n([mini_batch_aware_l2(self.embeddings.table(table).embeddings, tf.concat(ids, 0), self.mba_l2)
                         for table, ids in rows.items()])


@register("din")
def build_din(config, schema: FeatureSchema, tables=None) -> DIN:
    model = config.model
    return DIN(schema, tasks_from_config(config.tasks, schema), history=tuple(model.history),
               attention_units=tuple(model.get("attention_units", (80, 40))),
               attention_activation=model.get("attention_activation", "dice"),
               hidden_units=tuple(model.get("hidden_units", (200, 80))), dropout=model.get("dropout", 0.0),
               mba_l2=model.get("mba_l2", 0.0),
               attention_normalization=model.get("attention_normalization", "none"), name="din")
