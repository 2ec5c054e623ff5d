"""dnn: embeddings + MLP, the baseline ranker every ranking model here is measured against."""

import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.models.base import RecModel
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import tasks_from_config


class DNNRanker(RecModel):
    """Deep ranking model over the serving features of a schema (the "deep" part of Wide & Deep).

    ``x = [e_id_1 ; … ; e_id_k ; mean_t e_seq_1,t ; … ; dense]``, ``h = MLP(x)``,
    ``score_task = sigmoid(w_task · h + b_task)`` — one shared bottom, one logistic head per task.

    Shapes: id embeddings ``[batch, d_f]``; sequences ``[batch, max_len, d]`` pooled under their mask to
    ``[batch, d]``; dense ``[batch, dim]``; outputs ``{task: [batch]}``.
    """

    def __init__(self, schema: FeatureSchema, tasks, hidden_units=(128, 64), dropout=0.0, **kwargs):
        super().__init__(schema, tasks, **kwargs)
        self.hidden_units = tuple(hidden_units)
        self.dropout = dropout
        self.embedding = self.embedding_view(self.serving_features, name="features")
        self.bottom = MLP(hidden_units, dropout=dropout)
        # float32 heads: under mixed precision the logit, the sigmoid and the loss stay in float32.
        self.heads = {task.name: tf.keras.layers.Dense(1, name=f"{task.name}_logit", dtype="float32")
                      for task in self.tasks}

    def call(self, features, training=None):
        hidden = self.bottom(concat_pooled(self.embedding(features), self.schema, self.serving_features),
                             training=training)
        return {name: tf.sigmoid(tf.squeeze(head(hidden), axis=-1)) for name, head in self.heads.items()}


@register("dnn")
def build_dnn(config, schema: FeatureSchema, tables=None) -> DNNRanker:
    return DNNRanker(schema, tasks_from_config(config.tasks, schema), hidden_units=tuple(config.model.hidden_units),
                     dropout=config.model.dropout, name="dnn")
