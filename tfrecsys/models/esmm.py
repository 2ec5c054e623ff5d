"""ESMM and ESM²: conversion modelled over the entire impression space through the click (and action) path.

* ``esmm`` (Ma et al., SIGIR 2018): CTR and CVR towers over shared embeddings; ``pCTCVR = pCTR · pCVR``.
  Outputs ``ctr``, ``cvr``, ``ctcvr``. The config trains ``ctr`` (label click) and ``ctcvr`` (label
  click-and-convert) over all impressions and gives ``cvr`` no loss (``loss=None``), only metrics over the
  clicked rows (``mask="click == 1"``): the CVR tower learns only through ``pCTCVR``, so it is defined on
  every impression, not only on clicked ones (no sample selection bias).
* ``esm2`` (Wen et al., SIGIR 2020): impression → click → action (cart, wish) → purchase, four towers
  ``Y1 = P(click)``, ``Y2 = P(action | click)``, ``Y3 = P(buy | action)``, ``Y4 = P(buy | click, no action)``;
  outputs ``ctr = Y1``, ``ctavr = Y1·Y2``, ``cvr = (1−Y2)·Y4 + Y2·Y3`` and ``ctcvr = Y1·cvr``; the config
  trains ``ctr``, ``ctavr`` and ``ctcvr`` (labels click, click-and-action, click-and-buy).

``config.model.backbone`` puts the towers on any multi-task backbone (``none``: directly on the shared
embeddings, as in the papers; ``shared_bottom``, ``mmoe``, ``ple`` with their keys, see ``multitask.py``):
ESMM on MMoE/PLE is this project's design, the papers leave it open. ``pCVR`` is served from its own tower,
never as ``pCTCVR / pCTR``.
"""

import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models.multitask import MultiTaskRanker
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import tasks_from_config


class EntireSpaceMultiTask(MultiTaskRanker):
    """ESMM: heads ``ctr``, ``cvr`` ``[batch]``; outputs ``ctr``, ``cvr`` and ``ctcvr = ctr · cvr``."""

    HEADS = ("ctr", "cvr")

    def __init__(self, schema, tasks, backbone_kind, model_config, **kwargs):
        super().__init__(schema, tasks, backbone_kind, model_config, heads=self.HEADS, **kwargs)

    @property
    def output_names_served(self) -> list[str]:
        return ["ctr", "cvr", "ctcvr"]

    def outputs_from_logits(self, logits: dict) -> dict:
        ctr, cvr = tf.sigmoid(logits["ctr"]), tf.sigmoid(logits["cvr"])
        return {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}


class EntireSpaceMultiTaskWithActions(MultiTaskRanker):
    """ESM²: heads ``ctr`` (Y1), ``action`` (Y2), ``purchase_after_action`` (Y3), ``purchase_without_action``
    (Y4) ``[batch]``; outputs ``ctr``, ``ctavr = Y1·Y2``, ``cvr = (1−Y2)·Y4 + Y2·Y3``, ``ctcvr = Y1·cvr``."""

    HEADS = ("ctr", "action", "purchase_after_action", "purchase_without_action")

    def __init__(self, schema, tasks, backbone_kind, model_config, **kwargs):
        super().__init__(schema, tasks, backbone_kind, model_config, heads=self.HEADS, **kwargs)

    @property
    def output_names_served(self) -> list[str]:
        return ["ctr", "ctavr", "cvr", "ctcvr"]

    def outputs_from_logits(self, logits: dict) -> dict:
        click, action = tf.sigmoid(logits["ctr"]), tf.sigmoid(logits["action"])
        after_action = tf.sigmoid(logits["purchase_after_action"])
        without_action = tf.sigmoid(logits["purchase_without_action"])
        cvr = (1.0 - action) * without_action + action * after_action
        return {"ctr": click, "ctavr": click * action, "cvr": cvr, "ctcvr": click * cvr}


@register("esmm")
def build_esmm(config, schema: FeatureSchema, tables=None) -> EntireSpaceMultiTask:
    return EntireSpaceMultiTask(schema, tasks_from_config(config.tasks, schema), config.model.backbone,
                                config.model, name="esmm")


@register("esm2")
def build_esm2(config, schema: FeatureSchema, tables=None) -> EntireSpaceMultiTaskWithActions:
    return EntireSpaceMultiTaskWithActions(schema, tasks_from_config(config.tasks, schema),
                                           config.model.backbone, config.model, name="esm2")
