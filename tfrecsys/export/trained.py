"""Export of a trained run: rebuild the config's model, restore its newest checkpoint, write the SavedModel."""

import json
import os
from typing import Optional

import tensorflow as tf
from absl import logging

from tfrecsys.data.input import resolve_files
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.train.callbacks import BEST_CHECKPOINT_SUBDIR
from tfrecsys.train.loop import EVAL_METRICS_FILE, restore_latest
from tfrecsys.train.strategy import is_chief, precision_policy


CHECKPOINT_CHOICES = ("last", "best")


def first_records(files, count: int) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(list(files)).take(count)]


def load_trained_model(config, model_dir: str, checkpoint: str = "last"):
    """The model of ``config`` with a checkpoint of ``model_dir``, built on sample data: ``last``, the newest
    one, or ``best``, the one kept by eval ``config.train.best_metric`` (``<model_dir>/best/``).

    Returns ``(model, schema, checkpoint_path)``; fails naming ``model_dir`` when it has no such checkpoint.
    """
    if checkpoint not in CHECKPOINT_CHOICES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_CHOICES}, got {checkpoint!r}")
    schema = FeatureSchema.from_config(config.features)
    # Always float32, whatever precision training used (mixed-precision variables are float32, so the
    # checkpoint restores as is): serving signatures compute and return float32.
    with precision_policy("none"):
        model = build_model(config, schema)
        sample = first_records(resolve_files(config.data.eval_files, config.data.dir), 2)
        model(schema.parse_examples(tf.constant(sample), with_labels=False, serving=True), training=False)
    if checkpoint == "best":
        path = tf.train.latest_checkpoint(os.path.join(model_dir, BEST_CHECKPOINT_SUBDIR))
        if path is None:
            raise FileNotFoundError(f"no best checkpoint under {os.path.join(model_dir, BEST_CHECKPOINT_SUBDIR)}: "
                                    "train with config.train.best_metric set (and eval_every_loop > 0), or "
                                    "export the last checkpoint")
        tf.train.Checkpoint(model=model).restore(path).expect_partial()
        return model, schema, path
    path = restore_latest(model, model_dir, expect_partial=True)
    if path is None:
        raise FileNotFoundError(f"no checkpoint under {os.path.join(model_dir, 'checkpoints')}: "
                                "train with tfrecsys-train --model_dir first")
    return model, schema, path


def export_trained(config, model_dir: str, export_base: str, version=None, checkpoint: str = "last") -> Optional[str]:
    """Writes ``<export_base>/<config.export.model_name>/<version>`` from the ``last`` or ``best`` checkpoint of
    ``model_dir``; returns the path.

    Safe to call from every worker of a multi-worker run (TF_CONFIG): only the chief exports, the others
    return None (the model rebuilt here is not distributed, so no collective needs them).
    """
    if not is_chief():
        logging.info("not the chief: the export of %s is left to it", model_dir)
        return None
    model, schema, checkpoint_path = load_trained_model(config, model_dir, checkpoint)
    warmup = first_records(resolve_files(config.data.eval_files, config.data.dir),
                           config.export.warmup_requests)
    metadata = {"experiment": config.get("experiment", ""), "checkpoint": checkpoint_path,
                "model_family": config.model.name}
    metrics_path = os.path.join(model_dir, EVAL_METRICS_FILE)
    if tf.io.gfile.exists(metrics_path):
        with tf.io.gfile.GFile(metrics_path) as f:
            metadata["eval_metrics"] = json.load(f)
    if hasattr(model, "export_saved_models"):
        # Families whose export is not one scoring SavedModel (retrieval: a top-K query model and a candidate
        # embedding model) write their own, through the same atomic, versioned write; the hook returns the
        # path of the main one.
        return model.export_saved_models(export_base, config.export.model_name, version=version,
                                         warmup_examples=warmup, metadata=metadata)
    return export_saved_model(model, schema, export_base, config.export.model_name, version=version,
                              warmup_examples=warmup, metadata=metadata)
