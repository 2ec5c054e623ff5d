"""Multi-task rankers: shared-bottom, MMoE and PLE, one tower per task over a shared backbone.

``config.model``:

* ``shared_bottom``: ``bottom_units`` (the shared MLP), ``tower_units``, ``dropout``;
* ``mmoe``: ``num_experts``, ``expert_units``, ``tower_units``, ``dropout``;
* ``ple``: ``num_levels``, ``shared_experts``, ``task_experts`` (per task and level), ``expert_units``,
  ``tower_units``, ``dropout``;
* every family: ``dense_batch_norm`` (default False) standardises the dense inputs with a BatchNormalization
  layer (batch statistics in training, moving averages when serving): for raw, unscaled columns such as
  Census-Income's capital gains (0 to 99,999), which would otherwise dominate the input of the first layer.

Every task of ``config.tasks`` gets a tower and an output of its name (``p_k = sigmoid(tower_k(f^k(x)))``),
so a two-task config on Census-Income serves ``income`` and ``never_married``. ESMM and ESM² (``esmm.py``)
put their towers on the same backbones (``build_backbone``).
"""

from typing import Sequence

import tensorflow as tf

from tfrecsys.features.schema import DenseFeature, FeatureSchema
from tfrecsys.layers.experts import (IdentityBackbone, MixtureOfExpertsBackbone, ProgressiveLayeredExtraction,
                                     SharedBottomBackbone)
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.models.base import RecModel
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import tasks_from_config

BACKBONES = ("none", "shared_bottom", "mmoe", "ple")
# The model keys each backbone reads (besides tower_units and dropout, which every family has).
BACKBONE_KEYS = {"none": (), "shared_bottom": ("bottom_units",), "mmoe": ("num_experts", "expert_units"),
                 "ple": ("num_levels", "shared_experts", "task_experts", "expert_units")}


def build_backbone(kind: str, num_tasks: int, model_config) -> tf.keras.layers.Layer:
    """The backbone ``kind`` (one of ``BACKBONES``) for ``num_tasks`` towers, sized by ``config.model``."""
    if kind not in BACKBONES:
        raise ValueError(f"config.model.backbone {kind!r} is not one of {list(BACKBONES)}")
    missing = [key for key in BACKBONE_KEYS[kind] if model_config.get(key) is None]
    if missing:
        raise ValueError(f"config.model: backbone {kind!r} needs {missing} (it reads {list(BACKBONE_KEYS[kind])})")
    dropout = model_config.dropout
    if kind == "none":
        return IdentityBackbone(num_tasks, name="backbone")
    if kind == "shared_bottom":
        return SharedBottomBackbone(num_tasks, tuple(model_config.bottom_units), dropout=dropout, name="backbone")
    if kind == "mmoe":
        return MixtureOfExpertsBackbone(num_tasks, model_config.num_experts, tuple(model_config.expert_units),
                                        dropout=dropout, name="backbone")
    return ProgressiveLayeredExtraction(num_tasks, model_config.num_levels, model_config.shared_experts,
                                        model_config.task_experts, tuple(model_config.expert_units),
                                        dropout=dropout, name="backbone")


class MultiTaskRanker(RecModel):
    """Towers over a multi-task backbone: ``x = [e_1 ; … ; mean_t e_seq,t ; … ; dense]`` ``[batch, Σ d_f]``
    (``dense`` batch-normalised with ``dense_batch_norm``),
    ``[f^1(x), …, f^K(x)] = backbone(x)``, ``logit_k = w_k · MLP_k(f^k(x)) + b_k`` ``[batch]``.

    ``heads`` names the towers (default: the tasks); ``call`` returns ``{head: sigmoid(logit_head)}``.
    Families whose outputs combine heads (ESMM's ``ctcvr = ctr · cvr``) override ``outputs_from_logits``.
    """

    def __init__(self, schema: FeatureSchema, tasks, backbone_kind: str, model_config,
                 heads: Sequence[str] = (), **kwargs):
        super().__init__(schema, tasks, **kwargs)
        self.head_names = list(heads) or [task.name for task in self.tasks]
        self.tower_units = tuple(model_config.tower_units)
        self.embedding = self.embedding_view(self.serving_features, name="features")
        dense = {f.name for f in schema.of_kind(DenseFeature)}
        self.dense_normalization = (tf.keras.layers.BatchNormalization(name="dense_normalization")
                                    if model_config.dense_batch_norm and dense else None)
        self.normalized_features = [name for name in self.serving_features if name in dense]
        self.embedded_features = [name for name in self.serving_features
                                  if not (self.dense_normalization and name in dense)]
        self.backbone = build_backbone(backbone_kind, len(self.head_names), model_config)
        dropout = model_config.dropout
        self.towers = {name: MLP(self.tower_units, dropout=dropout, name=f"{name}_tower") for name in self.head_names}
        # float32 logits: under mixed precision the logit, the sigmoid and the loss stay in float32.
        self.logit_layers = {name: tf.keras.layers.Dense(1, dtype="float32", name=f"{name}_logit")
                             for name in self.head_names}
        served = set(self.output_names_served)
        unknown = [task.name for task in self.tasks if task.name not in served]
        if unknown:
            raise ValueError(f"{type(self).__name__}: tasks {unknown} of config.tasks name no output; its outputs "
                             f"are {sorted(served)}")

    @property
    def output_names_served(self) -> list[str]:
        return list(self.head_names)

    def logits(self, features, training=None) -> dict:
        """``{head: logit [batch]}``."""
        embedded = self.embedding(features)
        x = concat_pooled(embedded, self.schema, self.embedded_features)
        if self.dense_normalization is not None:
            dense = concat_pooled(embedded, self.schema, self.normalized_features)
            x = tf.concat([x, self.dense_normalization(dense, training=training)], axis=-1)
        hidden = self.backbone(x, training=training)
        return {name: tf.squeeze(self.logit_layers[name](self.towers[name](h, training=training)), axis=-1)
                for name, h in zip(self.head_names, hidden)}

    def outputs_from_logits(self, logits: dict) -> dict:
        return {name: tf.sigmoid(logit) for name, logit in logits.items()}

    def call(self, features, training=None):
        return self.outputs_from_logits(self.logits(features, training=training))


def _ranker(config, schema, backbone: str, name: str) -> MultiTaskRanker:
    return MultiTaskRanker(schema, tasks_from_config(config.tasks, schema), backbone, config.model, name=name)


@register("shared_bottom")
def build_shared_bottom(config, schema: FeatureSchema, tables=None) -> MultiTaskRanker:
    return _ranker(config, schema, "shared_bottom", "shared_bottom")


@register("mmoe")
def build_mmoe(config, schema: FeatureSchema, tables=None) -> MultiTaskRanker:
    return _ranker(config, schema, "mmoe", "mmoe")


@register("ple")
def build_ple(config, schema: FeatureSchema, tables=None) -> MultiTaskRanker:
    return _ranker(config, schema, "ple", "ple")
