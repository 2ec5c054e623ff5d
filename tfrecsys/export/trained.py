"""Export of a trained run: rebuild the config's model, restore its newest checkpoint, write the SavedModel."""

import json
import os
import re
from typing import Optional

import tensorflow as tf
from absl import logging

from tfrecsys.calibration import fit_for_export
from tfrecsys.data import tfrecord
from tfrecsys.data.input import resolve_files
from tfrecsys.data.model_tables import ModelTables
from tfrecsys.export.fusion import fusion_from_config
from tfrecsys.export.retrieval import export_retrieval
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.train.callbacks import BEST_CHECKPOINT_SUBDIR
from tfrecsys.train.loop import (CHECKPOINT_SUBDIR, EVAL_METRICS_FILE, create_variables, optimizer_from_config,
                                 user_histories)
from tfrecsys.train.strategy import is_chief, precision_policy


CHECKPOINT_CHOICES = ("last", "best")


def first_records(files, count: int) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(list(files)).take(count)]


def serving_rows(config, schema: FeatureSchema, count: int) -> list[bytes]:
    """The first ``count`` eval rows as serialized Examples holding every serving input: as stored, or with
    the sequences cut from the per-user store put in when ``config.data.user_histories`` fills them (the
    serving contract takes histories from the client, so warmup requests must carry them)."""
    records = first_records(resolve_files(config.data.eval_files, config.data.dir), count)
    histories = user_histories(config, schema)
    if histories is None or not records:
        return records
    stored = histories.row_features(schema.inputs + schema.labels)
    rows = histories.cut_histories(schema.features_from_columns(
        tf.io.parse_example(tf.constant(records), schema.parse_spec(stored)), stored))
    columns = {}
    # Shortest first: of two cuts of one stored column (a short and a lifelong history), the longest is kept.
    for feature in sorted(schema.serving_inputs, key=lambda f: getattr(f, "max_len", 0)):
        value = rows[feature.name].numpy()
        if feature.is_sequence:
            value = [row[:length] for row, length in zip(value, rows[feature.length_name].numpy())]
        columns[feature.source] = value
    return tfrecord.to_examples(columns)


def load_trained_model(config, model_dir: str, checkpoint: str = "last", sample_rows=None):
    """The model of ``config`` with a checkpoint of ``model_dir``, built on sample data: ``last``, the newest
    one, or ``best``, the one kept by eval ``config.train.best_metric`` (``<model_dir>/best/``).

    ``sample_rows``: serialized rows to build the model on (default: the first two of ``serving_rows``).
    Returns ``(model, schema, checkpoint_path)``; fails naming ``model_dir`` when it has no such checkpoint.
    """
    if checkpoint not in CHECKPOINT_CHOICES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_CHOICES}, got {checkpoint!r}")
    schema = FeatureSchema.from_config(config.features)
    # Always float32, whatever precision training used (mixed-precision variables are float32, so the
    # checkpoint restores as is): serving signatures compute and return float32.
    with precision_policy("none"):
        model = build_model(config, schema, ModelTables(config, schema))
        sample = list(sample_rows)[:2] if sample_rows else serving_rows(config, schema, 2)
        model(schema.parse_examples(tf.constant(sample), with_labels=False, serving=True), training=False)
    if checkpoint == "best":
        path = tf.train.latest_checkpoint(os.path.join(model_dir, BEST_CHECKPOINT_SUBDIR))
        if path is None:
            raise FileNotFoundError(f"no best checkpoint under {os.path.join(model_dir, BEST_CHECKPOINT_SUBDIR)}: "
                                    "train with config.train.best_metric set (and eval_every_loop > 0), or "
                                    "export the last checkpoint")
    else:
        path = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR))
        if path is None:
            raise FileNotFoundError(f"no checkpoint under {os.path.join(model_dir, CHECKPOINT_SUBDIR)}: "
                                    "train with tfrecsys-train --model_dir first")
    restore_weights(model, schema, config, path)
    return model, schema, path


def restore_weights(model, schema: FeatureSchema, config, path: str) -> None:
    """Restores ``model``'s weights from the checkpoint ``path``: under ``config.train.ema_momentum`` the
    optimizer's moving average of them, the weights training evaluated (tfrecsys.train.callbacks.averaged_weights)."""
    if not config.train.get("ema_momentum", 0.0):
        # read, not restore: restore would add the checkpoint's own save_counter to the objects that must match,
        # and a checkpoint written with Checkpoint.write (no counter) would fail the check.
        status = tf.train.Checkpoint(model=model).read(path)
        # Every weight of the model must come from the checkpoint: a run trained with another config (another
        # family, other features or sizes) would otherwise restore in part, or not at all, without a word.
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            missing = re.findall(r"<tf\.Variable '([^']+)'", str(error))
            count = re.search(r"Found (\d+) Python objects", str(error))
            raise ValueError(f"checkpoint {path} does not hold the weights of the model that config "
                             f"{config.get('experiment', '')!r} builds ({config.model.name}): "
                             f"{count.group(1) if count else 'some'} of its objects are not in it, e.g. "
                             f"{', '.join(missing[:3]) or 'a layer'}; was {os.path.dirname(os.path.dirname(path))} "
                             "trained with another config?") from error
        status.expect_partial()  # the optimizer's slots are in the checkpoint too
        return
    # The averages are optimizer variables, checkpointed in the order of the variables it was built on:
    # build it as training did, over every trainable variable (the training towers' too).
    optimizer = optimizer_from_config(config.train)
    create_variables(model, schema, optimizer)
    status = tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(f"checkpoint {path} holds no moving average of the weights of config.train.ema_momentum "
                         f"(trained without it, or with another optimizer or precision): {error}") from error
    status.expect_partial()
    optimizer.finalize_variable_values(model.trainable_variables)


def export_trained(config, model_dir: str, export_base: str, version=None, checkpoint: str = "last") -> Optional[str]:
    """Writes ``<export_base>/<config.export.model_name>/<version>`` from the ``last`` or ``best`` checkpoint of
    ``model_dir``; returns the path.

    Safe to call from every worker of a multi-worker run (TF_CONFIG): only the chief exports, the others
    return None (the model rebuilt here is not distributed, so no collective needs them).
    """
    if not is_chief():
        logging.info("not the chief: the export of %s is left to it", model_dir)
        return None
    fusion = fusion_from_config(config)  # a formula that does not parse fails before the model is restored
    # Read once: with config.data.user_histories every read cuts histories from the per-user store.
    rows = serving_rows(config, FeatureSchema.from_config(config.features), max(config.export.warmup_requests, 2))
    model, schema, checkpoint_path = load_trained_model(config, model_dir, checkpoint, sample_rows=rows)
    warmup = rows[:config.export.warmup_requests]
    calibrators, calibration = fit_for_export(config, model, schema)
    metadata = {"experiment": config.get("experiment", ""), "checkpoint": checkpoint_path,
                "model_family": config.model.name}
    if calibration:
        metadata["calibration"] = calibration
    metrics_path = os.path.join(model_dir, EVAL_METRICS_FILE)
    if tf.io.gfile.exists(metrics_path):
        with tf.io.gfile.GFile(metrics_path) as f:
            metadata["eval_metrics"] = json.load(f)
    return export_model(model, export_base, config.export.model_name, version=version, warmup_examples=warmup,
                        metadata=metadata, fusion=fusion, calibrators=calibrators)


def export_model(model, export_base: str, model_name: str, version=None, warmup_examples=(),
                 metadata=None, fusion=None, calibrators=None) -> str:
    """Writes what ``model`` declares (``RecModel.export_kinds``) and returns the path of the first export.

    ``ranking``: one SavedModel ``<model_name>`` of the serving outputs (``serve``: training heads and
    training-only inputs left out), the outputs named in ``calibrators`` (``{output: [layers]}``) served
    through their calibration maps; ``fusion``, a ``tfrecsys.export.fusion.ScoreFusion``, adds its ``fused``
    output. ``retrieval``: a top-K query model and a candidate-embedding model
    (``candidate_model_name``, default ``<model_name>_candidates``) with one version; the query model is
    ``<model_name>``, or ``<model_name>_retrieval`` when the family exports a ranking model too.
    """
    paths = []
    for kind in model.export_kinds:
        if kind == "ranking":
            paths.append(export_saved_model(model, model.schema, export_base, model_name, version=version,
                                            warmup_examples=warmup_examples, metadata=metadata,
                                            drop_outputs=model.training_heads, fusion=fusion,
                                            calibrators=calibrators))
            continue
        parts = model.retrieval_export()
        query_name = model_name if model.export_kinds == ("retrieval",) else f"{model_name}_retrieval"
        corpus_path = parts.pop("corpus_path")
        candidate_name = parts.pop("candidate_model_name") or f"{query_name}_candidates"
        query_path, _ = export_retrieval(
            **parts, export_base=export_base, model_name=query_name, candidate_model_name=candidate_name,
            version=version, query_warmup_examples=warmup_examples,
            candidate_warmup_examples=first_records([corpus_path], len(warmup_examples) or 8), metadata=metadata)
        paths.append(query_path)
    return paths[0]
