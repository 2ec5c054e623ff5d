"""SavedModel export under the contract that serving and scoring rely on (../shared/DESIGN.md).

Layout: ``<export_base>/<model_name>/<version>/`` with integer versions, as TF Serving expects. The
SavedModel is written to a hidden temporary directory beside its final place and renamed, so a poller (TF
Serving, tfrecsys-serve) never sees a half-written version.

Signatures (the model's outputs, named by task, in both):

* ``serving_default``: raw named features with explicit dtypes — ids as int64 or strings, dense floats,
  sequences as padded ``[batch, max_len]`` matrices plus ``<name>_length``. Vocabulary lookup and hashing
  are inside the model, training-only features are not inputs.
* ``serving_examples``: ``inputs``, a ``[batch]`` string tensor of serialized tf.train.Example, parsed with
  the training schema (batch scoring and TF Serving's Example-based APIs use it).

Warmup requests (TF Serving's ``assets.extra/tf_serving_warmup_requests``) are written when examples are
given, and ``assets.extra/tfrecsys.json`` records the schema, outputs and training metrics.
"""

import json
import os
import re
import shutil
import uuid
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from tfrecsys.features.schema import FeatureSchema

SERVING_DEFAULT = "serving_default"
SERVING_EXAMPLES = "serving_examples"
EXAMPLES_INPUT = "inputs"
WARMUP_FILE = "tf_serving_warmup_requests"
_VERSION = re.compile(r"^\d+$")


class ServingModule(tf.Module):
    """Holds the Keras model and traces its two serving functions."""

    def __init__(self, model: tf.keras.Model, schema: FeatureSchema):
        super().__init__()
        self.model = model
        self._schema = schema
        self.serve = tf.function(self._serve, input_signature=[schema.input_signature(serving=True)])
        self.serve_examples = tf.function(
            self._serve_examples, input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])

    def _serve(self, features):
        return self.model(features, training=False)

    def _serve_examples(self, serialized):
        features = self._schema.parse_examples(serialized, with_labels=False, serving=True)
        return self.model(features, training=False)


def existing_versions(model_path: str) -> list[int]:
    if not tf.io.gfile.isdir(model_path):
        return []
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_path)
                  if _VERSION.match(name.rstrip("/")))


def write_version(export_base: str, model_name: str, write, version: Optional[int] = None) -> str:
    """Creates ``<export_base>/<model_name>/<version>`` atomically and returns its path.

    ``write(staging_path, version)`` fills a hidden staging directory beside the final one, which is then
    renamed into place; on any failure the staging directory is removed and no version appears. ``version``
    defaults to one more than the highest existing version (1 for the first export); an existing version is
    never overwritten. Every exporter (ranking, retrieval, ...) goes through here.
    """
    model_path = os.path.join(export_base, model_name)
    versions = existing_versions(model_path)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    if version in versions:
        raise FileExistsError(f"{model_path}/{version} exists already; versions are never overwritten")
    final_path = os.path.join(model_path, str(version))
    staging_path = os.path.join(model_path, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    tf.io.gfile.makedirs(model_path)
    try:
        write(staging_path, version)
        tf.io.gfile.rename(staging_path, final_path)
    except BaseException:
        if tf.io.gfile.exists(staging_path):
            shutil.rmtree(staging_path, ignore_errors=True)
        raise
    logging.info("exported %s version %d to %s", model_name, version, final_path)
    return final_path


def write_extra_metadata(saved_model_path: str, content: dict) -> None:
    """``assets.extra/tfrecsys.json``: what the export holds, for people and tools (TF Serving ignores it)."""
    extra = os.path.join(saved_model_path, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, "tfrecsys.json"), "w") as f:
        json.dump(content, f, indent=2, sort_keys=True)


def export_saved_model(model: tf.keras.Model, schema: FeatureSchema, export_base: str, model_name: str,
                       version: Optional[int] = None, warmup_examples: Sequence[bytes] = (),
                       metadata: Optional[dict] = None) -> str:
    """Writes a ranking ``model`` as ``<export_base>/<model_name>/<version>`` and returns that path.

    ``warmup_examples``: serialized tf.train.Example rows that become TF Serving warmup requests for
    ``serving_default``.
    """
    module = ServingModule(model, schema)
    signatures = {SERVING_DEFAULT: module.serve.get_concrete_function(),
                  SERVING_EXAMPLES: module.serve_examples.get_concrete_function()}

    def write(path, version):
        tf.saved_model.save(module, path, signatures=signatures)
        if warmup_examples:
            tf.io.gfile.makedirs(os.path.join(path, "assets.extra"))
            _write_warmup_requests(os.path.join(path, "assets.extra", WARMUP_FILE), schema, model_name,
                                   list(warmup_examples))
        write_extra_metadata(path, {"model_name": model_name, "version": version,
                                    "outputs": sorted(signatures[SERVING_DEFAULT].structured_outputs),
                                    "schema": schema.to_json(), **(metadata or {})})

    return write_version(export_base, model_name, write, version)


def _write_warmup_requests(path: str, schema: FeatureSchema, model_name: str, examples: list) -> None:
    """One PredictRequest per example, in TF Serving's warmup format (TFRecord of PredictionLog)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    features = schema.parse_examples(tf.constant(examples), with_labels=False, serving=True)
    with tf.io.TFRecordWriter(path) as writer:
        for row in range(len(examples)):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_DEFAULT))
            for name, value in features.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value[row:row + 1])))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
