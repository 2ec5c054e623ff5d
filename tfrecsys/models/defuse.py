"""defuse: a streaming CVR ranker for delayed feedback, trained by DEFUSE or one of its baselines.

Chen et al., "Asymptotically Unbiased Estimation for Delayed Feedback Modeling via Label Correction" (WWW
2022); the equations and the baselines are in tfrecsys/losses/delayed_feedback.py, the stream each method
reads in tfrecsys/data/delayed_feedback_stream.py. ``config.model.method`` picks both:

============  ======================  ==========================================================================
method        loss                    served CVR
============  ======================  ==========================================================================
vanilla       ``logit_cross_entropy``  ``f_θ``
oracle        ``logit_cross_entropy``  ``f_θ``
fnw           ``fnw``                  ``f_θ``
fnc           ``logit_cross_entropy``  ``f_θ / (1 − f_θ)`` (the model learns ``p/(1 + p)``), clipped to [0, 1]
es_dfm        ``es_dfm``               ``f_θ``
defer         ``defer``                ``f_θ``
defuse        ``defuse``/``defuse_z2``  ``f_θ``
bi_defuse     ``bi_defuse``            ``F_IP + F_DP`` (Eq. 18), clipped to [0, 1]
============  ======================  ==========================================================================

The CVR network: ``x = [e_1 ; … ; dense]``, ``h = MLP(x)``, ``f_θ = sigmoid(w·h + b)``; Bi-DEFUSE puts
``BiDistributionHeads`` on ``h``. Methods with auxiliary models (es_dfm, defer, defuse) also hold the
auxiliary network: its own embedding tables and MLP, two logits ``f_dp(x) = p(y=1, d > w_o | x)`` and
``f_rn(x) = P(real negative | observed negative, x)``. It trains on its own task (loss
``delayed_feedback_auxiliary``, the stream's rows of clicks older than ``w_a``), and the CVR loss reads its
outputs under ``tf.stop_gradient``: no CVR gradient reaches it, and with its own tables the CVR updates do
not move it either. Only the served CVR is exported.
"""

import tensorflow as tf

from tfrecsys.features.embedding import EmbeddingTables
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.bi_distribution import BiDistributionHeads
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.losses import delayed_feedback
from tfrecsys.models.base import RecModel
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import tasks_from_config

METHOD_LOSSES = {"vanilla": ("logit_cross_entropy",), "oracle": ("logit_cross_entropy",), "fnw": ("fnw",),
                 "fnc": ("logit_cross_entropy",), "es_dfm": ("es_dfm",), "defer": ("defer",),
                 "defuse": ("defuse", "defuse_z2"), "bi_defuse": ("bi_defuse",)}
AUXILIARY_METHODS = ("es_dfm", "defer", "defuse")
AUXILIARY_LOSS = "delayed_feedback_auxiliary"


class DelayedFeedbackRanker(RecModel):
    """One CVR output (the task whose loss is the method's), and for methods with auxiliary models one
    training-only auxiliary task. Outputs: ``call`` → ``{cvr: [batch]}``, the served CVR;
    ``training_outputs`` → ``{cvr: {"logit" | "inw_logit", "outw_logit", "probability", "f_dp", "f_rn"},
    auxiliary: {"f_dp_logit", "f_rn_logit"}}`` ``[batch]`` each."""

    def __init__(self, schema: FeatureSchema, tasks, method: str, hidden_units=(128, 64),
                 auxiliary_hidden_units=(64,), expert_units=32, **kwargs):
        super().__init__(schema, tasks, **kwargs)
        if method not in METHOD_LOSSES:
            raise ValueError(f"config.model.method {method!r} is not one of {sorted(METHOD_LOSSES)}")
        self.method = method
        cvr = [t for t in self.tasks if t.loss != AUXILIARY_LOSS]
        auxiliary = [t for t in self.tasks if t.loss == AUXILIARY_LOSS]
        if len(cvr) != 1 or cvr[0].loss not in METHOD_LOSSES[method]:
            raise ValueError(f"method {method!r} trains one CVR task with loss {' or '.join(METHOD_LOSSES[method])}; "
                             f"config.tasks has {[(t.name, t.loss) for t in cvr]}")
        if bool(auxiliary) != (method in AUXILIARY_METHODS) or len(auxiliary) > 1:
            needs = "needs one" if method in AUXILIARY_METHODS else "has no"
            raise ValueError(f"method {method!r} {needs} auxiliary task (loss {AUXILIARY_LOSS!r}); config.tasks has "
                             f"{[t.name for t in auxiliary]}")
        self.cvr_name = cvr[0].name
        self.auxiliary_name = auxiliary[0].name if auxiliary else None
        # The auxiliary task's output is for training only: no exported signature holds it.
        self.training_heads = (self.auxiliary_name,) if auxiliary else ()
        self.embedding = self.embedding_view(self.serving_features, name="features")
        self.bottom = MLP(hidden_units)
        if method == "bi_defuse":
            self.heads = BiDistributionHeads(expert_units, name="bi_distribution")
        else:
            self.head = tf.keras.layers.Dense(1, dtype="float32", name="cvr_logit")
        if self.auxiliary_name:
            # Tables of its own: CVR updates of shared tables would move the auxiliary outputs.
            self.auxiliary_tables = EmbeddingTables(schema, name="auxiliary_embeddings")
            self.auxiliary_embedding = self.auxiliary_tables.view(self.serving_features, name="auxiliary_features")
            self.auxiliary_tower = MLP(auxiliary_hidden_units, output_units=2, name="auxiliary_tower")

    def _cvr_parts(self, features, training):
        hidden = self.bottom(concat_pooled(self.embedding(features), self.schema, self.serving_features),
                             training=training)
        if self.method == "bi_defuse":
            parts = self.heads(hidden)
            served = tf.sigmoid(parts["inw_logit"]) + tf.sigmoid(parts["outw_logit"])
            return {**parts, "probability": tf.clip_by_value(served, 0.0, 1.0)}
        logit = tf.squeeze(self.head(hidden), axis=-1)
        probability = tf.sigmoid(logit)
        if self.method == "fnc":
            probability = delayed_feedback.fnc_prediction(probability)
        return {"logit": logit, "probability": probability}

    def _auxiliary_logits(self, features, training) -> dict:
        auxiliary = self.auxiliary_tower(
            concat_pooled(self.auxiliary_embedding(features), self.schema, self.serving_features), training=training)
        auxiliary = tf.cast(auxiliary, tf.float32)  # logits and the losses' weights stay float32 (mixed precision)
        return {"f_dp_logit": auxiliary[:, 0], "f_rn_logit": auxiliary[:, 1]}

    def call(self, features, training=None):
        if self.auxiliary_name and not self.auxiliary_tower.built:
            # The first call creates the auxiliary variables too: the train loop builds the optimizer from the
            # variables a call creates. Later calls (and the exported signatures) leave the auxiliary out.
            self._auxiliary_logits(features, training)
        return {self.cvr_name: self._cvr_parts(features, training)["probability"]}

    def training_outputs(self, features, training: bool) -> dict:
        cvr = self._cvr_parts(features, training)
        if not self.auxiliary_name:
            return {self.cvr_name: cvr}
        logits = self._auxiliary_logits(features, training)
        cvr["f_dp"] = tf.stop_gradient(tf.sigmoid(logits["f_dp_logit"]))
        cvr["f_rn"] = tf.stop_gradient(tf.sigmoid(logits["f_rn_logit"]))
        return {self.cvr_name: cvr, self.auxiliary_name: logits}


@register("defuse")
def build_defuse(config, schema: FeatureSchema, tables=None) -> DelayedFeedbackRanker:
    model = config.model
    return DelayedFeedbackRanker(schema, tasks_from_config(config.tasks, schema), method=model.method,
                                 hidden_units=tuple(model.hidden_units),
                                 auxiliary_hidden_units=tuple(model.auxiliary_hidden_units),
                                 expert_units=model.expert_units, name="defuse")
