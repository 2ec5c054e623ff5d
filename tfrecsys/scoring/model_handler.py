"""A Beam RunInference model handler for the SavedModel contract's serialized-example signature.

Beam's own ``TFModelHandlerTensor`` loads models with ``tf.keras.models.load_model``, which rejects plain
``tf.saved_model.save`` exports (see stack-pins-and-gotchas.md, Q3), and it feeds positional tensors rather
than a named signature. This handler loads with ``tf.saved_model.load`` and calls one named signature per
batch, so it scores any export that follows the contract, with nothing from tfrecsys' model code needed.

The model directory and the signature are checked when the handler is built, from ``saved_model.pb`` alone
(no variables are read), so a wrong path or signature fails at pipeline construction with a clear message
instead of on a worker after the job has started.
"""

import dataclasses
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

# TF Serving loads the meta graph with this tag; reading the same one keeps scoring and serving in step.
SERVING_TAG = "serve"
DEFAULT_SIGNATURE_NAME = "serving_examples"
DEFAULT_MIN_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_SIZE = 1024
_SAVED_MODEL_FILE = "saved_model.pb"


@dataclasses.dataclass(frozen=True)
class ExamplesSignature:
    """What scoring needs to know about a signature: its one string input and its output names."""
    name: str
    input_name: str
    output_names: tuple[str, ...]


def resolve_model_dir(model_path: str, version: Optional[int] = None) -> str:
    """Returns the SavedModel directory to score with.

    ``model_path`` is either a SavedModel directory itself or a base path in TF Serving's layout
    (``<model_path>/<integer version>/``). For a base path the highest version is used unless ``version``
    names one; non-integer entries (e.g. an export's temporary directory) are ignored, as TF Serving does.
    """
    if version is None and tf.io.gfile.exists(os.path.join(model_path, _SAVED_MODEL_FILE)):
        return model_path
    if version is not None:
        version_dir = os.path.join(model_path, str(version))
        if not tf.io.gfile.exists(os.path.join(version_dir, _SAVED_MODEL_FILE)):
            raise FileNotFoundError(f"Model version {version} not found: no {_SAVED_MODEL_FILE} in {version_dir}")
        return version_dir
    versions = _integer_versions(model_path)
    if not versions:
        raise FileNotFoundError(
            f"No SavedModel under {model_path}: expected {_SAVED_MODEL_FILE} there or integer version "
            f"directories <{model_path}>/<version>/ (TF Serving's layout)")
    return os.path.join(model_path, str(max(versions)))


def _integer_versions(model_base_path: str) -> list[int]:
    """The integer-named subdirectories of a model base path; none when the path does not exist."""
    if not tf.io.gfile.isdir(model_base_path):
        return []
    # gfile.listdir marks directories with a trailing slash on some filesystems (GCS).
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(model_base_path))
    return [int(name) for name in names
            if name.isdigit() and tf.io.gfile.isdir(os.path.join(model_base_path, name))]


def read_examples_signature(model_dir: str, signature_name: str = DEFAULT_SIGNATURE_NAME) -> ExamplesSignature:
    """Reads a signature of serialized examples from ``saved_model.pb``, without loading the model.

    Raises ValueError naming the signature (and listing the available ones) when it is missing, and when it
    does not take exactly one string input, since batches of serialized tf.train.Example are all it is fed.
    """
    signatures = _serving_meta_graph(model_dir).signature_def
    # Names starting with "__" (e.g. __saved_model_init_op) are TF internals, not callable signatures.
    available = sorted(name for name in signatures if not name.startswith("__"))
    if signature_name not in available:
        raise ValueError(f"SavedModel {model_dir} has no signature {signature_name!r}; available: {available}")
    signature = signatures[signature_name]
    inputs = dict(signature.inputs)
    if len(inputs) != 1 or next(iter(inputs.values())).dtype != types_pb2.DT_STRING:
        described = {name: tf.dtypes.as_dtype(info.dtype).name for name, info in inputs.items()}
        raise ValueError(
            f"Signature {signature_name!r} of {model_dir} takes {described}; scoring needs a signature with "
            "one string input of serialized tf.train.Example (the contract's 'serving_examples')")
    return ExamplesSignature(name=signature_name, input_name=next(iter(inputs)),
                             output_names=tuple(sorted(signature.outputs)))


def _serving_meta_graph(model_dir: str) -> Any:
    """The MetaGraphDef tagged ``serve`` from ``<model_dir>/saved_model.pb``."""
    path = os.path.join(model_dir, _SAVED_MODEL_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"Not a SavedModel directory: {path} does not exist")
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if SERVING_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"SavedModel {model_dir} has no meta graph tagged {SERVING_TAG!r}")


class SavedModelExamplesHandler(ModelHandler[bytes, PredictionResult, Any]):
    """Scores batches of serialized tf.train.Example with one signature of a SavedModel.

    Each batch becomes one call of the signature, with the batch as a ``[batch]`` string tensor; each row
    gets a ``PredictionResult`` whose ``inference`` maps every output name to that row's slice as numpy
    (a scalar for ``[batch]`` outputs, an array for ``[batch, k]`` ones) and whose ``model_id`` is the
    SavedModel directory, so every score says which version produced it.

    Args:
      model_path: a SavedModel directory, or a base path with integer version subdirectories.
      signature_name: the signature to call; it must take one string input.
      model_version: the version to use under a base path; the highest one when None.
      min_batch_size, max_batch_size: bounds for Beam's adaptive batching (``beam.BatchElements``).
    """

    def __init__(self, model_path: str, signature_name: str = DEFAULT_SIGNATURE_NAME,
                 model_version: Optional[int] = None, min_batch_size: int = DEFAULT_MIN_BATCH_SIZE,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE):
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(f"Need 1 <= min_batch_size <= max_batch_size, got {min_batch_size} and {max_batch_size}")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        # Resolved once here, so every worker scores with the same version even if a newer one lands mid-job.
        self.model_dir = resolve_model_dir(model_path, model_version)
        self.signature = read_examples_signature(self.model_dir, signature_name)

    def load_model(self) -> Any:
        """Loads the SavedModel on a worker (once per process, as RunInference shares it)."""
        return tf.saved_model.load(self.model_dir, tags=[SERVING_TAG])

    def run_inference(self, batch: Sequence[bytes], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        """Calls the signature once on the whole batch and splits its outputs into per-row results."""
        serialized = tf.constant(list(batch), dtype=tf.string)
        outputs = model.signatures[self.signature.name](**{self.signature.input_name: serialized})
        arrays = {name: self._batch_major(name, tensor.numpy(), len(batch)) for name, tensor in outputs.items()}
        return [PredictionResult(example, {name: array[row] for name, array in arrays.items()}, self.model_dir)
                for row, example in enumerate(batch)]

    def _batch_major(self, output_name: str, array: np.ndarray, batch_size: int) -> np.ndarray:
        """Checks that an output has one entry per input row, since rows are sliced along axis 0."""
        if array.ndim == 0 or array.shape[0] != batch_size:
            raise ValueError(
                f"Output {output_name!r} of signature {self.signature.name!r} has shape {array.shape} for a batch "
                f"of {batch_size}; scoring needs outputs shaped [batch, ...]")
        return array

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        """The batch's size in bytes, for Beam's metrics; cheaper than the default pickling."""
        return sum(len(example) for example in batch)

    def validate_inference_args(self, inference_args: Optional[Mapping[str, Any]]):
        """Rejects inference args: the signature takes only the serialized examples."""
        if inference_args:
            raise ValueError(f"SavedModelExamplesHandler takes no inference_args, got {sorted(inference_args)}")
