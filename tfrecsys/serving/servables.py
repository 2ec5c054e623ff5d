"""Loaded model versions and the transport-free TF Serving API calls over them.

``ModelRegistry`` maps model name → integer version → ``Servable`` (a SavedModel loaded with
``tf.saved_model.load``), kept in step with each model's base path as TF Serving keeps it: the versions the
model's version policy aspires to are loaded, the others unloaded, and a version is never unloaded before its
successor is available. ``predict``, ``get_model_metadata`` and ``get_model_status`` take and return the
tensorflow_serving.apis protos, so the gRPC and REST front ends share one behaviour, and raise
``ServingError`` with the status code and message ``tensorflow_model_server`` gives for the same request
(tensorflow_serving/servables/tensorflow/predict_util.cc, get_model_metadata_impl.cc,
model_servers/get_model_status_impl.cc, core/manager.h, model_servers/server_core.cc).

Only the SavedModel on disk is used: signature inputs and outputs come from the SignatureDefs in
``saved_model.pb``, never from tfrecsys model code.
"""

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2,
                                     prediction_log_pb2)
from tensorflow_serving.config import model_server_config_pb2

from tfrecsys.serving.tensors import shape_fits, shape_text, tensor_spec

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
SIGNATURE_DEF_FIELD = "signature_def"
WARMUP_REQUESTS_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# TF Serving refuses warmup files with more records than this (saved_model_warmup_util.h).
MAX_WARMUP_RECORDS = 1000

State = get_model_status_pb2.ModelVersionStatus.State
_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A failed request, with the gRPC status code TF Serving answers the same request with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class ModelLoadError(Exception):
    """A model cannot be served: bad config, missing base path, no version, or an unloadable SavedModel."""


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded version of a model.

    ``signature_defs`` are the SignatureDefs saved in ``saved_model.pb`` (what GetModelMetadata returns and
    what requests are checked against); ``signatures`` are the loaded functions that run them. ``module`` is
    the loaded object itself: the signature functions only hold weak references to its variables.
    """

    name: str
    version: int
    path: str
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    signatures: Mapping[str, Callable]
    module: object


def single_model_config(model_name: str, model_base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config ``--model_name``/``--model_base_path`` stand for, as tensorflow_model_server builds it."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = "tensorflow"
    return config


def read_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Parses a ``--model_config_file``: a ModelServerConfig text proto, the same file TF Serving reads."""
    try:
        with tf.io.gfile.GFile(path, "r") as config_file:
            return text_format.Parse(config_file.read(), model_server_config_pb2.ModelServerConfig())
    except (OSError, tf.errors.OpError, text_format.ParseError) as error:
        raise ModelLoadError(f"Invalid model config file {path!r}: {error}") from error


def versions_on_disk(base_path: str) -> list[int]:
    """The integer-named version directories under ``base_path``, ascending; other entries are ignored.

    Export writes a version under a temporary name and renames it, so a half-written version is never seen.
    """
    if not tf.io.gfile.isdir(base_path):
        raise ModelLoadError(f"Could not find base path {base_path}")
    versions = []
    for entry in tf.io.gfile.listdir(base_path):
        name = entry.rstrip("/")  # object stores list directories with a trailing slash
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(base_path, name)):
            versions.append(int(name))
    return sorted(versions)


def aspired_versions(model_config: model_server_config_pb2.ModelConfig, on_disk: list[int]) -> list[int]:
    """The versions the model's version policy wants served; TF Serving's default policy is ``latest 1``."""
    policy = model_config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(on_disk)
    if choice == "specific":
        return sorted(set(policy.specific.versions) & set(on_disk))
    num_versions = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return list(on_disk[-num_versions:])


def load_servable(name: str, version: int, path: str, saved_model_tags=("serve",),
                  enable_model_warmup: bool = True) -> Servable:
    """Loads one SavedModel version and, as TF Serving does by default, replays its warmup requests."""
    meta_graph = _read_meta_graph(path, saved_model_tags)
    module = tf.saved_model.load(path, tags=list(saved_model_tags))
    servable = Servable(name=name, version=version, path=path, signature_defs=dict(meta_graph.signature_def),
                        signatures=dict(module.signatures), module=module)
    if enable_model_warmup:
        replay_warmup_requests(servable)
    logging.info("Successfully loaded servable version {name: %s version: %d}", name, version)
    return servable


def _read_meta_graph(path: str, saved_model_tags) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef whose tag set is ``saved_model_tags``: its SignatureDefs define the served API."""
    saved_model_file = os.path.join(path, "saved_model.pb")
    if not tf.io.gfile.exists(saved_model_file):
        raise ModelLoadError(f"No saved_model.pb in {path}: a version directory must hold a SavedModel")
    with tf.io.gfile.GFile(saved_model_file, "rb") as model_file:
        saved_model = saved_model_pb2.SavedModel.FromString(model_file.read())
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(saved_model_tags):
            return meta_graph
    found = [sorted(meta_graph.meta_info_def.tags) for meta_graph in saved_model.meta_graphs]
    raise ModelLoadError(f"SavedModel at {path} has no MetaGraphDef with tags {sorted(saved_model_tags)}; "
                         f"it has {found}")


def replay_warmup_requests(servable: Servable) -> int:
    """Runs the PredictionLog records of ``assets.extra/tf_serving_warmup_requests`` against ``servable``.

    Same file, format and failure rule as TF Serving (saved_model_warmup_util.cc): a failing warmup request
    fails the load, so a broken export is caught here instead of by the real server in production. Returns
    the number of records replayed.
    """
    warmup_path = os.path.join(servable.path, WARMUP_REQUESTS_FILE)
    if not tf.io.gfile.exists(warmup_path):
        logging.info("No warmup data file found at %s", warmup_path)
        return 0
    count = 0
    try:
        for record in tf.data.TFRecordDataset(warmup_path).as_numpy_iterator():
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise ModelLoadError(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) "
                                     f"at {warmup_path}")
            log = prediction_log_pb2.PredictionLog.FromString(record)
            log_type = log.WhichOneof("log_type")
            if log_type != "predict_log":
                raise ModelLoadError(f"Unsupported log_type for warmup: {log_type} in {warmup_path} "
                                     "(tfrecsys-serve serves Predict only)")
            run_predict(servable, log.predict_log.request)
    except tf.errors.DataLossError as error:
        raise ModelLoadError(f"{error.message}. Please verify your warmup data is in TFRecord format: "
                             f"{warmup_path}") from error
    except ServingError as error:
        raise ModelLoadError(f"Warmup request {count} of {warmup_path} failed: {error}") from error
    logging.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.",
                 warmup_path, count)
    return count


class ModelRegistry:
    """Model name → version → Servable, for the models of a ModelServerConfig.

    ``refresh`` brings the loaded versions in line with the base paths and version policies; requests
    resolve a ModelSpec with ``servable`` from any thread while a refresh runs, and always see either the
    old or the new set of versions.
    """

    def __init__(self, config: model_server_config_pb2.ModelServerConfig, saved_model_tags=("serve",),
                 enable_model_warmup: bool = True):
        self._configs = _model_configs(config)
        self._saved_model_tags = tuple(saved_model_tags)
        self._enable_model_warmup = enable_model_warmup
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._loaded: dict[str, dict[int, Servable]] = {name: {} for name in self._configs}
        # version → (state, error message) per model, as GetModelStatus reports it.
        self._states: dict[str, dict[int, tuple[int, str]]] = {name: {} for name in self._configs}

    def loaded(self, name: str) -> dict[int, Servable]:
        """The loaded versions of model ``name`` (a snapshot)."""
        with self._lock:
            return dict(self._loaded.get(name, {}))

    def refresh(self, strict: bool = False) -> list[Servable]:
        """Loads the aspired versions not yet loaded, then unloads the versions no longer aspired.

        With ``strict`` (server start) a missing base path, a model without versions or a failed load raises
        ModelLoadError. Otherwise (polling) failures are logged, the versions already serving keep serving,
        and a version that failed to load is not retried. Returns the newly loaded servables.
        """
        with self._refresh_lock:
            newly_loaded = []
            for name, model_config in self._configs.items():
                newly_loaded += self._refresh_model(name, model_config, strict)
            return newly_loaded

    def _refresh_model(self, name: str, model_config, strict: bool) -> list[Servable]:
        try:
            on_disk = versions_on_disk(model_config.base_path)
        except ModelLoadError as error:
            if strict:
                raise ModelLoadError(f"{error} for servable {name}") from error
            logging.warning("%s for servable %s", error, name)
            return []
        aspired = aspired_versions(model_config, on_disk)
        if strict and not aspired:
            raise ModelLoadError(
                f"No versions of servable {name} found under base path {model_config.base_path}: expected "
                f"integer-named directories holding a SavedModel, e.g. {model_config.base_path}/1/saved_model.pb")
        current = self.loaded(name)
        serving = {version: current[version] for version in aspired if version in current}
        newly_loaded, failed = [], False
        for version in aspired:
            if version in serving or self._failed_before(name, version):
                continue
            path = os.path.join(model_config.base_path, str(version))
            self._set_state(name, version, State.LOADING)
            try:
                servable = load_servable(name, version, path, self._saved_model_tags, self._enable_model_warmup)
            # A bad export must not take down a running server, whatever load_servable raises.
            except Exception as error:  # noqa: BLE001
                message = f"Loading servable: {{name: {name} version: {version}}} from {path} failed: {error}"
                if strict:
                    raise ModelLoadError(message) from error
                logging.error("%s", message)
                self._set_state(name, version, State.END, message)
                failed = True
                continue
            serving[version] = servable
            newly_loaded.append(servable)
        if failed or not serving:
            # Availability preserving: keep what serves now until its successors have loaded.
            serving = {**current, **serving}
        self._swap(name, current, serving)
        return newly_loaded

    def _failed_before(self, name: str, version: int) -> bool:
        with self._lock:
            state, error = self._states[name].get(version, (None, ""))
        return state == State.END and bool(error)

    def _set_state(self, name: str, version: int, state: int, error: str = "") -> None:
        with self._lock:
            self._states[name][version] = (state, error)

    def _swap(self, name: str, current: dict[int, Servable], serving: dict[int, Servable]) -> None:
        with self._lock:
            self._loaded[name] = serving
            for version in serving:
                self._states[name][version] = (State.AVAILABLE, "")
            for version in current.keys() - serving.keys():
                self._states[name][version] = (State.END, "")
        for version in sorted(current.keys() - serving.keys()):
            logging.info("Unloaded servable version {name: %s version: %d}", name, version)

    def servable(self, model_spec: model_pb2.ModelSpec) -> Servable:
        """The servable a request's ModelSpec names: its version, its version label, or the latest version."""
        name = model_spec.name
        versions = self.loaded(name)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            model_config = self._configs.get(name)
            labels = model_config.version_labels if model_config is not None else {}
            if model_spec.version_label not in labels:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {model_spec.version_label}")
            version = labels[model_spec.version_label]
        elif choice == "version":
            version = model_spec.version.value
        else:
            if not versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
            return versions[max(versions)]
        if version not in versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version})")
        return versions[version]

    def version_states(self, name: str, version: int | None = None) -> list[tuple[int, int, str]]:
        """(version, state, error message) for GetModelStatus, highest version first as TF Serving lists them."""
        with self._lock:
            states = dict(self._states.get(name, {}))
        if version is not None:
            if version not in states:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        if not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        return [(v, state, error) for v, (state, error) in sorted(states.items(), reverse=True)]


def _model_configs(config: model_server_config_pb2.ModelServerConfig) -> dict:
    """name → ModelConfig, after the checks TF Serving makes when it reads a config."""
    if config.WhichOneof("config") != "model_config_list":
        raise ModelLoadError("The model server config must have a model_config_list (custom_model_config is "
                             "not supported)")
    models = {}
    for model_config in config.model_config_list.config:
        if not model_config.name:
            raise ModelLoadError(f"A model config has no name: {model_config}")
        if not model_config.base_path:
            raise ModelLoadError(f"Model {model_config.name} has no base_path")
        if model_config.model_platform not in ("", "tensorflow"):
            raise ModelLoadError(f"Model {model_config.name} has model_platform {model_config.model_platform!r}; "
                                 "only 'tensorflow' SavedModels are served")
        if model_config.name in models:
            raise ModelLoadError(f"Illegal to list model {model_config.name} multiple times in config list")
        models[model_config.name] = model_config
    if not models:
        raise ModelLoadError("The model server config lists no models")
    return models


def predict(registry: ModelRegistry, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """PredictionService.Predict: resolve the servable, then run the request against it."""
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    return run_predict(registry.servable(request.model_spec), request)


def run_predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """Checks the request against the signature in TF Serving's order, runs it, and returns the outputs."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature_def = servable.signature_defs.get(signature_name)
    function = servable.signatures.get(signature_name)
    if signature_def is None or function is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found.')
    _check_input_names(signature_def, request)
    inputs = {alias: _input_array(alias, proto, signature_def.inputs[alias])
              for alias, proto in request.inputs.items()}
    aliases = _output_aliases(signature_def, request.output_filter)
    outputs = _call_signature(function, inputs, signature_def)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    for alias in aliases:
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias].numpy()))
    return response


def _check_input_names(signature_def: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest) -> None:
    """Missing and unexpected inputs, with the names spelled out as predict_util.cc spells them."""
    sent, expected = set(request.inputs), set(signature_def.inputs)
    if len(sent) != len(expected):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{_join(sent)}}}) != "
            f"len({{{_join(expected)}}}). Sent extra: {{{_join(sent - expected)}}}. "
            f"Missing but required: {{{_join(expected - sent)}}}."))
    unknown = sorted(sent - expected)
    if unknown:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"input tensor alias not found in signature: {unknown[0]}. Inputs expected to be in the set "
            f"{{{_join(expected)}}}."))


def _input_array(alias: str, proto, tensor_info: meta_graph_pb2.TensorInfo) -> np.ndarray:
    """The request tensor as an array, checked against the signature's dtype and shape.

    The real server lets the session reject a wrong dtype ("Expects arg[0] to be int64 but float is
    provided"), which does not say which input was wrong; here the message names it.
    """
    try:
        array = tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from error
    if proto.dtype != tensor_info.dtype:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"Expects input {alias} to be {tf.as_dtype(tensor_info.dtype).name} but "
            f"{tf.as_dtype(proto.dtype).name} is provided"))
    _, signature_shape = tensor_spec(tensor_info)
    if not shape_fits(array.shape, signature_shape):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"Input {alias} has shape {shape_text(array.shape)}, which the signature's shape "
            f"{shape_text(signature_shape)} does not accept"))
    return array


def _output_aliases(signature_def: meta_graph_pb2.SignatureDef, output_filter) -> list[str]:
    """The outputs to return: ``output_filter`` if given (each known, none twice), else every output."""
    seen = []
    for alias in output_filter:
        if alias not in signature_def.outputs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{_join(signature_def.outputs)}}}."))
        if alias in seen:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen or list(signature_def.outputs)


def _call_signature(function: Callable, inputs: dict[str, np.ndarray],
                    signature_def: meta_graph_pb2.SignatureDef) -> dict:
    """Runs the signature; a TensorFlow error keeps its own status code, as the session's would in TF Serving."""
    tensors = {alias: tf.constant(array, dtype=tf.as_dtype(signature_def.inputs[alias].dtype))
               for alias, array in inputs.items()}
    try:
        return function(**tensors)
    except tf.errors.OpError as error:
        raise ServingError(_GRPC_CODE_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN),
                           error.message) from error
    except (TypeError, ValueError) as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error


def _join(names) -> str:
    return ",".join(sorted(names))


def get_model_metadata(registry: ModelRegistry, request: get_model_metadata_pb2.GetModelMetadataRequest
                       ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """PredictionService.GetModelMetadata: the servable's SignatureDefs packed as a SignatureDefMap."""
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    if not request.metadata_field:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
    servable = registry.servable(request.model_spec)
    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        signature_def_map.signature_def[name].CopyFrom(signature_def)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map)
    return response


def get_model_status(registry: ModelRegistry, request: get_model_status_pb2.GetModelStatusRequest
                     ) -> get_model_status_pb2.GetModelStatusResponse:
    """ModelService.GetModelStatus: the state of one version, or of every version the server has seen."""
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    response = get_model_status_pb2.GetModelStatusResponse()
    for number, state, error in registry.version_states(spec.name, version):
        # TF Serving always fills the health status: OK for a healthy version, UNKNOWN with why a load failed.
        version_status = response.model_version_status.add(version=number, state=state)
        version_status.status.SetInParent()
        if error:
            version_status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
            version_status.status.error_message = error
    return response
