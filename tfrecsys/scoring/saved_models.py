"""What batch scoring knows about a SavedModel before it loads one: directory, name, version, signatures.

Everything here is read from ``saved_model.pb`` and ``assets.extra/tfrecsys.json`` alone (no variables, no
TensorFlow graph), so a wrong path, version or signature fails when the pipeline is built, with a message
that names it, instead of on a worker after the job has started. Nothing here imports tfrecsys model code:
scoring depends only on the SavedModel contract (../shared/DESIGN.md): its names come from
``tfrecsys.contract``, and the feature schema the export records is decoded by ``FeatureSchema.from_json``,
the decoder training and export use too.
"""

import dataclasses
import json
import os
import re
from typing import Any, Optional, Sequence

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from tfrecsys.contract import (LENGTH_SUFFIX, METADATA_FILE, SAVED_MODEL_FILE, SERVING_DEFAULT, SERVING_EXAMPLES,
                               SERVING_TAG)
from tfrecsys.features.schema import DenseFeature, FeatureSchema, SchemaError

_MODEL_FLAG = re.compile(r"^(?P<name>[^=@\s]+)=(?P<path>[^@]+?)(@(?P<version>\d+))?$")
_DTYPE_NAMES = {tf.int64: "int64", tf.float32: "float32", tf.string: "string"}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to score with, as the user names it.

    Attributes:
      path: a SavedModel directory, or a base path in TF Serving's layout ``<path>/<integer version>/``.
      name: the name output rows are tagged with; the base path's directory name when None (TF Serving's
        model name).
      version: a version under a base path; the highest one when None.
    """
    path: str
    name: Optional[str] = None
    version: Optional[int] = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``NAME=PATH`` or ``NAME=PATH@VERSION`` (the ``--model`` flag), e.g. ``challenger=gs://b/dnn@7``."""
        match = _MODEL_FLAG.match(text.strip())
        if not match:
            raise ValueError(f"--model={text!r} is not NAME=PATH or NAME=PATH@VERSION, e.g. champion=models/dnn@3")
        version = match.group("version")
        return cls(path=match.group("path"), name=match.group("name"),
                   version=int(version) if version is not None else None)


def model_specs(model_base_path: Optional[str], model_version: Optional[int], model_name: Optional[str],
                models: Sequence[str]) -> list[ModelSpec]:
    """The models of tfrecsys-score's flags: one ``--model_base_path`` (with ``--model_version`` and
    ``--model_name``), or ``--model=NAME=PATH[@VERSION]`` repeated; a mix of the two is refused."""
    if bool(model_base_path) == bool(models):
        raise ValueError("Give either --model_base_path (one model) or one or more --model=NAME=PATH[@VERSION]")
    if models:
        if model_version is not None or model_name:
            raise ValueError("--model_version and --model_name go with --model_base_path; with --model write "
                             "NAME=PATH@VERSION")
        return [ModelSpec.parse(text) for text in models]
    return [ModelSpec(model_base_path, model_name, model_version)]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """dtype and shape of one signature input or output; ``shape`` is None when the rank is unknown and
    holds -1 for unknown dimensions (the batch dimension first)."""
    dtype: Optional[tf.dtypes.DType]
    shape: Optional[tuple[int, ...]]

    @property
    def rank(self) -> Optional[int]:
        return None if self.shape is None else len(self.shape)


@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


@dataclasses.dataclass(frozen=True)
class FeatureNeed:
    """What a model's example parsing needs of one feature of every row.

    Attributes:
      name: the tf.train.Example feature (and Parquet column) name.
      dtype: "int64", "float32" or "string".
      num_values: exactly this many values per row, or None for any number (sequences).
      is_list: whether a Parquet column feeding it holds lists (sequences, dense vectors) or scalars.
    """
    name: str
    dtype: str
    num_values: Optional[int]
    is_list: bool

    def describe(self) -> str:
        count = "a list of" if self.num_values is None else (
            "one" if self.num_values == 1 else f"{self.num_values} values of")
        return f"{count} {self.dtype}"


@dataclasses.dataclass(frozen=True)
class FeatureNeeds:
    """The features a model parses. ``exact`` when read from the export's feature schema (the one its
    ``serving_examples`` parses with), so rows can be checked against them before scoring; otherwise
    derived from ``serving_default``'s inputs, good for typing Parquet columns but not for rejecting rows."""
    features: tuple[FeatureNeed, ...]
    exact: bool


@dataclasses.dataclass(frozen=True)
class ScoringModel:
    """A resolved model: the exact directory scored with, its name and version, its signature and needs.

    ``needs`` is None when the SavedModel says nothing about its features (no tfrecsys schema and no
    ``serving_default``); it still scores, and rows its parsing rejects are found by scoring them.
    """
    name: str
    version: Optional[int]
    model_dir: str
    signature: Signature
    needs: Optional[FeatureNeeds]

    @property
    def input_name(self) -> str:
        return next(iter(self.signature.inputs))

    @property
    def tag(self) -> str:
        """``name/version`` (``name`` when the version is unknown): how summaries and messages name it."""
        return self.name if self.version is None else f"{self.name}/{self.version}"

    @property
    def label(self) -> str:
        """The tag as Beam step and metric names can hold it: "/" separates nested steps there."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.name) + ("" if self.version is None else f"-v{self.version}")


def ensure_tensorflow_filesystem(path: str) -> None:
    """Makes TensorFlow able to read ``path``: it reads local and gs:// paths itself, while s3://, hdfs://,
    az:// and http(s):// come with tensorflow-io's file systems, registered when it is imported.

    Raises ValueError naming the path when no file system handles its scheme.
    """
    scheme = path.split("://", 1)[0] if "://" in path else ""
    if scheme in tf.io.gfile.get_registered_schemes():
        return
    import tensorflow_io  # noqa: F401  (registers s3, hdfs, az, http(s), ... with TensorFlow)

    if scheme not in tf.io.gfile.get_registered_schemes():
        schemes = sorted(tf.io.gfile.get_registered_schemes())
        raise ValueError(f"TensorFlow has no file system for {scheme}:// to read {path}; TFRecord input and "
                         f"SavedModels are read with TensorFlow (schemes: {schemes})")


def resolve_model_dir(model_path: str, version: Optional[int] = None) -> str:
    """Returns the SavedModel directory to score with.

    ``model_path`` is either a SavedModel directory itself or a base path in TF Serving's layout
    (``<model_path>/<integer version>/``). For a base path the highest version is used unless ``version``
    names one; non-integer entries (e.g. an export's temporary directory) are ignored, as TF Serving does.
    """
    ensure_tensorflow_filesystem(model_path)
    if version is None and tf.io.gfile.exists(os.path.join(model_path, SAVED_MODEL_FILE)):
        return model_path
    if version is not None:
        version_dir = os.path.join(model_path, str(version))
        if not tf.io.gfile.exists(os.path.join(version_dir, SAVED_MODEL_FILE)):
            raise FileNotFoundError(f"Model version {version} not found: no {SAVED_MODEL_FILE} in {version_dir}")
        return version_dir
    versions = _integer_versions(model_path)
    if not versions:
        raise FileNotFoundError(
            f"No SavedModel under {model_path}: expected {SAVED_MODEL_FILE} there or integer version "
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


def load_scoring_model(spec: ModelSpec, signature_name: str = SERVING_EXAMPLES) -> ScoringModel:
    """Resolves ``spec`` and reads what scoring needs from the SavedModel, without loading it.

    Raises:
      FileNotFoundError: no SavedModel (or no such version) at the path.
      ValueError: the signature is missing (the available ones are listed) or does not take exactly one
        string input of serialized tf.train.Example.
    """
    model_dir = resolve_model_dir(spec.path, spec.version)
    signatures = _read_signatures(model_dir)
    available = sorted(signatures)
    if signature_name not in signatures:
        raise ValueError(f"SavedModel {model_dir} has no signature {signature_name!r}; available: {available}")
    signature = signatures[signature_name]
    if len(signature.inputs) != 1 or next(iter(signature.inputs.values())).dtype != tf.string:
        described = {name: getattr(spec.dtype, "name", "composite") for name, spec in signature.inputs.items()}
        raise ValueError(
            f"Signature {signature_name!r} of {model_dir} takes {described}; scoring needs a signature with "
            "one string input of serialized tf.train.Example (the contract's 'serving_examples')")
    metadata = _read_metadata(model_dir)
    try:
        needs = feature_needs(metadata.get("schema"), signatures.get(SERVING_DEFAULT))
    except SchemaError as error:
        raise ValueError(f"{os.path.join(model_dir, METADATA_FILE)}: the recorded feature schema is invalid: "
                         f"{error}") from None
    return ScoringModel(name=spec.name or _model_name(model_dir), version=_version(model_dir, metadata),
                        model_dir=model_dir, signature=signature, needs=needs)


def _model_name(model_dir: str) -> str:
    """TF Serving's convention: a model is named after its base path, the parent of the version directories."""
    path = model_dir.rstrip("/")
    leaf = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if leaf.isdigit() else leaf


def _version(model_dir: str, metadata: dict) -> Optional[int]:
    """The version directory's number, else the version the export recorded, else unknown."""
    leaf = os.path.basename(model_dir.rstrip("/"))
    if leaf.isdigit():
        return int(leaf)
    version = metadata.get("version")
    return version if isinstance(version, int) else None


def _read_signatures(model_dir: str) -> dict[str, Signature]:
    """Every callable signature of the ``serve`` meta graph in ``<model_dir>/saved_model.pb``."""
    path = os.path.join(model_dir, SAVED_MODEL_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"Not a SavedModel directory: {path} does not exist")
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    meta_graph = next((graph for graph in saved_model.meta_graphs if SERVING_TAG in graph.meta_info_def.tags), None)
    if meta_graph is None:
        raise ValueError(f"SavedModel {model_dir} has no meta graph tagged {SERVING_TAG!r}")
    # Names starting with "__" (e.g. __saved_model_init_op) are TF internals, not callable signatures.
    return {name: Signature(name, _tensor_specs(definition.inputs), _tensor_specs(definition.outputs))
            for name, definition in meta_graph.signature_def.items() if not name.startswith("__")}


def _tensor_specs(tensor_infos: Any) -> dict[str, TensorSpec]:
    specs = {}
    for name, info in sorted(tensor_infos.items()):
        shape = None if info.tensor_shape.unknown_rank else tuple(dim.size for dim in info.tensor_shape.dim)
        # Composite tensors (ragged, sparse) carry no single dtype.
        dtype = tf.dtypes.as_dtype(info.dtype) if info.dtype != types_pb2.DT_INVALID else None
        specs[name] = TensorSpec(dtype, shape)
    return specs


def _read_metadata(model_dir: str) -> dict:
    """``assets.extra/tfrecsys.json`` of a tfrecsys export; empty for any other SavedModel."""
    path = os.path.join(model_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        try:
            metadata = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    return metadata if isinstance(metadata, dict) else {}


def feature_needs(schema_json: Optional[dict], raw_signature: Optional[Signature]) -> Optional[FeatureNeeds]:
    """The features (stored columns) the examples signature parses.

    From the export's schema when there is one (decoded by ``FeatureSchema.from_json``, the one decoder of
    that JSON): the columns its serving features read (not labels, not training-only) that are also
    ``serving_default`` inputs — ``serving_examples`` parses exactly those, also for exports (such as a
    retrieval query model) whose schema describes more features than the signature takes; a column that
    several features cut (a short and a long history) is one need. Otherwise from ``serving_default``'s
    inputs alone, where a ``[batch, n]`` input may be a sequence or a dense vector, so only its dtype is
    known. None when the SavedModel has neither.

    Raises SchemaError when the recorded schema is invalid.
    """
    if raw_signature is None:
        return None
    inputs = raw_signature.inputs
    if schema_json:
        needs = {}
        for feature in FeatureSchema.from_json(schema_json).serving_inputs:
            if feature.name in inputs:
                needs.setdefault(feature.source, _need_of(feature))
        return FeatureNeeds(tuple(needs.values()), exact=True)
    matrices = {name for name, spec in inputs.items() if spec.rank == 2}
    needs = []
    for name, spec in inputs.items():
        if name.endswith(LENGTH_SUFFIX) and name[:-len(LENGTH_SUFFIX)] in matrices:
            continue  # derived from the sequence by the model's own parsing
        if spec.dtype not in _DTYPE_NAMES:
            continue
        is_list = spec.rank != 1
        needs.append(FeatureNeed(name, _DTYPE_NAMES[spec.dtype], None if is_list else 1, is_list))
    return FeatureNeeds(tuple(needs), exact=False)


def _need_of(feature) -> FeatureNeed:
    """What parsing one input feature of a schema needs of its stored column."""
    if feature.is_sequence:
        return FeatureNeed(feature.source, feature.dtype, None, True)
    dim = feature.dim if isinstance(feature, DenseFeature) else 1
    return FeatureNeed(feature.source, feature.dtype, dim, dim > 1)


def check_distinct(models: Sequence[ScoringModel]) -> None:
    """Two models with the same name and version would be indistinguishable in the output (and in the
    job's step names, which use ``label``)."""
    seen: dict[str, ScoringModel] = {}
    for model in models:
        if model.label in seen:
            other = seen[model.label]
            raise ValueError(f"Models {other.model_dir} and {model.model_dir} are tagged {other.tag!r} and "
                             f"{model.tag!r}; give them different names (--model=NAME=PATH)")
        seen[model.label] = model
