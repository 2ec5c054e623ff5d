"""dnn: embeddings + MLP, the baseline ranker every ranking model here is measured against."""

import tensorflow as tf

from tfrecsys.features.embedding import FeatureEmbedding
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import tasks_from_config


class DNNRanker(tf.keras.Model):
    """Deep ranking model over the serving features of a schema (the "deep" part of Wide & Deep).

    ``x = [e_id_1 ; … ; e_id_k ; mean_t e_seq_1,t ; … ; dense]``, ``h = MLP(x)``,
    ``score_task = sigmoid(w_task · h + b_task)`` — one shared bottom, one logistic head per task.

    Shapes: id embeddings ``[batch, d_f]``; sequences ``[batch, max_len, d]`` pooled under their mask to
    ``[batch, d]``; dense ``[batch, dim]``; outputs ``{task: [batch]}``.
    """

    def __init__(self, schema: FeatureSchema, task_names, hidden_units=(128, 64), dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.schema = schema
        self.task_names = list(task_names)
        self.hidden_units = tuple(hidden_units)
        self.dropout = dropout
        self.feature_names = [f.name for f in schema.serving_inputs]
        self.embedding = FeatureEmbedding(schema, include=self.feature_names)
        self.bottom = MLP(hidden_units, dropout=dropout)
        # float32 heads: under mixed precision the logit, the sigmoid and the loss stay in float32.
        self.heads = {name: tf.keras.layers.Dense(1, name=f"{name}_logit", dtype="float32")
                      for name in self.task_names}

    def call(self, features, training=None):
        hidden = self.bottom(concat_pooled(self.embedding(features), self.schema, self.feature_names),
                             training=training)
        return {name: tf.sigmoid(tf.squeeze(head(hidden), axis=-1)) for name, head in self.heads.items()}

    def get_config(self):
        return {"schema": self.schema.to_json(), "task_names": self.task_names,
                "hidden_units": self.hidden_units, "dropout": self.dropout, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(FeatureSchema.from_config(config.pop("schema")), **config)


@register("dnn")
def build_dnn(config, schema: FeatureSchema) -> DNNRanker:
    tasks = tasks_from_config(config.tasks)
    return DNNRanker(schema, [t.name for t in tasks], hidden_units=tuple(config.model.hidden_units),
                     dropout=config.model.get("dropout", 0.0), name="dnn")
