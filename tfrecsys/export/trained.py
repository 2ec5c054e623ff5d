"""Export of a trained run: rebuild the config's model, restore its newest checkpoint, write the SavedModel."""

import json
import os

import tensorflow as tf

from tfrecsys.data.input import resolve_files
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.train.loop import EVAL_METRICS_FILE, restore_latest


def first_records(files, count: int) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(list(files)).take(count)]


def load_trained_model(config, model_dir: str):
    """The model of ``config`` with the newest checkpoint of ``model_dir``, built on sample data.

    Returns ``(model, schema, checkpoint_path)``; fails naming ``model_dir`` when it has no checkpoint.
    """
    schema = FeatureSchema.from_config(config.features)
    model = build_model(config, schema)
    sample = first_records(resolve_files(config.data.eval_files, config.data.dir), 2)
    model(schema.parse_examples(tf.constant(sample), with_labels=False, serving=True), training=False)
    path = restore_latest(model, model_dir, expect_partial=True)
    if path is None:
        raise FileNotFoundError(f"no checkpoint under {os.path.join(model_dir, 'checkpoints')}: "
                                "train with tfrecsys-train --model_dir first")
    return model, schema, path


def export_trained(config, model_dir: str, export_base: str, version=None) -> str:
    """Writes ``<export_base>/<config.export.model_name>/<version>`` from ``model_dir``; returns the path."""
    model, schema, checkpoint = load_trained_model(config, model_dir)
    warmup = first_records(resolve_files(config.data.eval_files, config.data.dir),
                           config.export.warmup_requests)
    metadata = {"experiment": config.get("experiment", ""), "checkpoint": checkpoint,
                "model_family": config.model.name}
    metrics_path = os.path.join(model_dir, EVAL_METRICS_FILE)
    if tf.io.gfile.exists(metrics_path):
        with tf.io.gfile.GFile(metrics_path) as f:
            metadata["eval_metrics"] = json.load(f)
    return export_saved_model(model, schema, export_base, config.export.model_name, version=version,
                              warmup_examples=warmup, metadata=metadata)
