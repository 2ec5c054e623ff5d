"""logistic_regression: a linear ranker, and the worked example of docs/adding-a-model.md."""

import tensorflow as tf

from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.models.base import RecModel
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import tasks_from_config


class LogisticRegression(RecModel):
    """``p_task = sigmoid(w_task · x + b_task)``, ``x = [e_id_1 ; … ; mean_t e_seq,t ; … ; dense]``.

    Shapes: ``x`` ``[batch, Σ d_f]``; outputs ``{task: [batch]}``. The embeddings are learned, the rest linear.
    """

    def __init__(self, schema, tasks, **kwargs):
        super().__init__(schema, tasks, **kwargs)
        self.embedding = self.embedding_view(self.serving_features)
        self.heads = {t.name: tf.keras.layers.Dense(1, dtype="float32", name=t.name) for t in self.tasks}

    def call(self, features, training=None):
        x = concat_pooled(self.embedding(features), self.schema, self.serving_features)
        return {name: tf.sigmoid(head(x)[:, 0]) for name, head in self.heads.items()}


@register("logistic_regression")
def build_logistic_regression(config, schema, tables=None):
    return LogisticRegression(schema, tasks_from_config(config.tasks, schema), name="logistic_regression")
