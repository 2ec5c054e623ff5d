"""Loaded model versions, and the TF Serving API calls that resolve a request's ModelSpec to one of them.

``ModelRegistry`` maps model name → integer version → ``Servable`` (a SavedModel loaded with
``tf.saved_model.load``), kept in step with each model's base path as TF Serving keeps it: the versions the
model's version policy aspires to are loaded, the others unloaded, and a version is never unloaded before its
successor is available. ``reload_config`` replaces the served models, as ModelService.HandleReloadConfigRequest
and ``--model_config_file_poll_wait_seconds`` do. ``predict``, ``classify``, ``regress``, ``multi_inference``,
``get_model_metadata``, ``get_model_status`` and ``reload_config`` take and return the tensorflow_serving.apis
protos, so the gRPC and REST front ends share one behaviour, and raise ``ServingError`` with the status code
and message ``tensorflow_model_server`` gives for the same request (core/manager.h, model_servers/server_core.cc,
get_model_status_impl.cc, get_model_metadata_impl.cc, model_service_impl.cc; the per-version work is in
``tfrecsys.serving.inference``).

Only the SavedModel on disk is used: signature inputs and outputs come from the SignatureDefs in
``saved_model.pb``, never from tfrecsys model code.
"""

import os
import threading
import time

import grpc
import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_pb2, predict_pb2,
                                     prediction_log_pb2, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from tfrecsys.serving import inference
from tfrecsys.serving.batching import BatchScheduler
from tfrecsys.serving.errors import ModelLoadError, ServingError
from tfrecsys.serving.inference import DEFAULT_MAX_TENSOR_BYTES, Servable, call_signature
from tfrecsys.serving.monitoring import ServingMetrics

__all__ = ["DEFAULT_SIGNATURE", "ModelLoadError", "ModelRegistry", "Servable", "ServingError", "State"]

DEFAULT_SIGNATURE = inference.DEFAULT_SIGNATURE
SIGNATURE_DEF_FIELD = "signature_def"
WARMUP_REQUESTS_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# TF Serving refuses warmup files with more records than this (saved_model_warmup_util.h).
MAX_WARMUP_RECORDS = 1000

State = get_model_status_pb2.ModelVersionStatus.State


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
    try:
        module = tf.saved_model.load(path, tags=list(saved_model_tags))
    except (tf.errors.OpError, ValueError, OSError) as error:
        raise ModelLoadError(f"Could not load the SavedModel at {path}: {error}") from error
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
    try:
        with tf.io.gfile.GFile(saved_model_file, "rb") as model_file:
            saved_model = saved_model_pb2.SavedModel.FromString(model_file.read())
    except Exception as error:  # noqa: BLE001  (a truncated or foreign file fails this load only)
        raise ModelLoadError(f"Could not parse {saved_model_file}: {error}") from error
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(saved_model_tags):
            return meta_graph
    found = [sorted(meta_graph.meta_info_def.tags) for meta_graph in saved_model.meta_graphs]
    raise ModelLoadError(f"SavedModel at {path} has no MetaGraphDef with tags {sorted(saved_model_tags)}; "
                         f"it has {found}")


def replay_warmup_requests(servable: Servable) -> int:
    """Runs the PredictionLog records of ``assets.extra/tf_serving_warmup_requests`` against ``servable``.

    Same file, format, log types (predict, classify, regress, multi_inference) and failure rule as TF Serving
    (saved_model_warmup_util.cc): a failing warmup request fails the load, so a broken export is caught here
    instead of by the real server in production. Returns the number of records replayed.
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
            if log_type == "predict_log":
                inference.run_predict(servable, log.predict_log.request)
            elif log_type == "classify_log":
                inference.run_classify(servable, log.classify_log.request)
            elif log_type == "regress_log":
                inference.run_regress(servable, log.regress_log.request)
            elif log_type == "multi_inference_log":
                inference.run_multi_inference(servable, log.multi_inference_log.request)
            else:
                raise ModelLoadError(f"Unsupported log_type for warmup: {log_type} in {warmup_path}")
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
    old or the new set of versions. Signatures run through ``execute`` (a direct call, or the batch
    scheduler when ``batch_scheduler`` is given); ``metrics`` counts examples of Classify and Regress.
    """

    def __init__(self, config: model_server_config_pb2.ModelServerConfig, saved_model_tags=("serve",),
                 enable_model_warmup: bool = True, batch_scheduler: BatchScheduler | None = None,
                 metrics: ServingMetrics | None = None, max_request_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
                 max_num_load_retries: int = 5, load_retry_interval_s: float = 60.0):
        self._configs = _model_configs(config)
        self._max_num_load_retries = max_num_load_retries
        self._load_retry_interval_s = max(load_retry_interval_s, 0.0)
        self._saved_model_tags = tuple(saved_model_tags)
        self._enable_model_warmup = enable_model_warmup
        self._batch_scheduler = batch_scheduler
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._loaded: dict[str, dict[int, Servable]] = {name: {} for name in self._configs}
        # version → (state, error message) per model, as GetModelStatus reports it.
        self._states: dict[str, dict[int, tuple[int, str]]] = {name: {} for name in self._configs}
        # (model, version) → (failed tries so far, monotonic time of the next try) for loads awaiting a retry.
        self._retries: dict[tuple[str, int], tuple[int, float]] = {}
        self._availability_listeners = []

    def add_availability_listener(self, listener) -> None:
        """``listener(model_name, available: bool)`` is called after every change of the served versions."""
        self._availability_listeners.append(listener)

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._configs)

    def loaded(self, name: str) -> dict[int, Servable]:
        """The loaded versions of model ``name`` (a snapshot)."""
        with self._lock:
            return dict(self._loaded.get(name, {}))

    def execute(self, servable: Servable, signature_name: str, inputs, deadline: float | None = None):
        """Runs a signature of ``servable``, batched with concurrent requests when batching is on."""
        if self._batch_scheduler is None:
            return call_signature(servable, signature_name, inputs)
        return self._batch_scheduler.run(self._batch_key(servable, signature_name),
                                         lambda arrays: call_signature(servable, signature_name, arrays),
                                         inputs, deadline)

    def refresh(self, strict: bool = False) -> list[Servable]:
        """Loads the aspired versions not yet loaded, then unloads the versions no longer aspired.

        With ``strict`` (server start) a missing base path, a model without versions, a failed load or a
        version label on a version that is not available raises ModelLoadError. Otherwise (polling) failures
        are logged, the versions already serving keep serving, and a failed load is retried
        ``max_num_load_retries`` times, ``load_retry_interval_s`` apart (a version copied in file by file
        fails until the copy is complete); the version is LOADING meanwhile, then END with the last error.
        Returns the newly loaded servables.
        """
        with self._refresh_lock:
            with self._lock:
                configs = dict(self._configs)
            newly_loaded = []
            for name, model_config in configs.items():
                newly_loaded += self._refresh_model(name, model_config, strict)
            if strict:
                try:
                    self._check_labels(configs)
                except ServingError as error:
                    raise ModelLoadError(error.message) from error
            return newly_loaded

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> list[Servable]:
        """Serves exactly the models of ``config``: new models load, removed models unload, changed policies
        and labels apply. Like ServerCore::ReloadConfig it returns once the new models are available, and
        fails (the config still in force) when one cannot load or a label names a version not available."""
        try:
            configs = _model_configs(config)
        except ModelLoadError as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        with self._refresh_lock:
            with self._lock:
                removed = set(self._configs) - set(configs)
                self._configs = configs
                for name in configs:
                    self._loaded.setdefault(name, {})
                    self._states.setdefault(name, {})
                unloaded = {name: self._loaded.pop(name) for name in removed}
                for name, versions in unloaded.items():
                    self._states[name] = {version: (State.END, "") for version in versions}
            for name in sorted(removed):
                for version, servable in sorted(unloaded[name].items()):
                    self._forget_batches(servable)
                    logging.info("Unloaded servable version {name: %s version: %d}", name, version)
                self._notify(name)
            newly_loaded, failures = [], []
            for name, model_config in configs.items():
                before = self.loaded(name)
                newly_loaded += self._refresh_model(name, model_config, strict=False)
                if not self.loaded(name) and not before:
                    failures.append(name)
            if failures:
                details = "; ".join(self._last_error(name) for name in failures)
                raise ServingError(grpc.StatusCode.UNKNOWN,
                                   f"Some models did not become available: {{{', '.join(failures)}}}. {details}")
            self._check_labels(configs)
            return newly_loaded

    def _last_error(self, name: str) -> str:
        with self._lock:
            errors = [error for _, error in self._states.get(name, {}).values() if error]
        return errors[-1] if errors else f"No version of {name} was found under {self._configs[name].base_path}"

    def _check_labels(self, configs: dict) -> None:
        """Version labels may only name available versions (server_core.cc UpdateModelVersionLabelMap)."""
        for name, model_config in configs.items():
            loaded = self.loaded(name)
            for label, version in sorted(model_config.version_labels.items()):
                if version not in loaded:
                    raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, (
                        f"Request to assign label to version {version} of model {name}, which is not currently "
                        "available for inference"))

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
        self._forget_retries(name, set(aspired))
        newly_loaded, failed = [], False
        for version in aspired:
            if version in serving or self._failed_before(name, version):
                continue
            tries, next_try = self._retries.get((name, version), (0, 0.0))
            if time.monotonic() < next_try:
                failed = True  # waiting for its retry: what serves now keeps serving
                continue
            path = os.path.join(model_config.base_path, str(version))
            if not tries:
                self._set_state(name, version, State.LOADING)
            try:
                servable = load_servable(name, version, path, self._saved_model_tags, self._enable_model_warmup)
            # A bad export must not take down a running server, whatever load_servable raises.
            except Exception as error:  # noqa: BLE001
                self._count_load(path, "fail")
                message = f"Loading servable: {{name: {name} version: {version}}} from {path} failed: {error}"
                if strict:
                    raise ModelLoadError(message) from error
                self._load_failed(name, version, tries + 1, message)
                failed = True
                continue
            self._count_load(path, "success")
            self._retries.pop((name, version), None)
            serving[version] = servable
            newly_loaded.append(servable)
        if failed or not serving:
            # Availability preserving: keep what serves now until its successors have loaded.
            serving = {**current, **serving}
        self._swap(name, current, serving)
        return newly_loaded

    def _load_failed(self, name: str, version: int, tries: int, message: str) -> None:
        """Schedules a retry of a failed load (LOADING, with the error in its status), or gives up (END)."""
        if tries > self._max_num_load_retries:
            self._retries.pop((name, version), None)
            logging.error("%s (retried %d times; giving up)", message, self._max_num_load_retries)
            self._set_state(name, version, State.END, message)
            return
        self._retries[(name, version)] = (tries, time.monotonic() + self._load_retry_interval_s)
        retry = (f"retry {tries} of {self._max_num_load_retries} in {self._load_retry_interval_s:g} s "
                 "(--max_num_load_retries, --load_retry_interval_micros)")
        logging.warning("%s; %s", message, retry)
        self._set_state(name, version, State.LOADING, f"{message}; {retry}")

    def _forget_retries(self, name: str, aspired: set[int]) -> None:
        """Versions gone from disk (or from the policy) while awaiting a retry are not loaded after all."""
        for key in [key for key in self._retries if key[0] == name and key[1] not in aspired]:
            del self._retries[key]
            with self._lock:
                state, error = self._states[name].get(key[1], (None, ""))
            if state == State.LOADING:
                self._set_state(name, key[1], State.END, error)

    def _count_load(self, path: str, status: str) -> None:
        if self.metrics is not None:
            self.metrics.load_attempt_count.increment(path, status)

    def _failed_before(self, name: str, version: int) -> bool:
        with self._lock:
            state, error = self._states[name].get(version, (None, ""))
        return state == State.END and bool(error)

    def _set_state(self, name: str, version: int, state: int, error: str = "") -> None:
        with self._lock:
            self._states[name][version] = (state, error)

    def _swap(self, name: str, current: dict[int, Servable], serving: dict[int, Servable]) -> None:
        with self._lock:
            if name not in self._configs:  # removed by a config reload meanwhile
                return
            self._loaded[name] = serving
            for version in serving:
                self._states[name][version] = (State.AVAILABLE, "")
            for version in current.keys() - serving.keys():
                self._states[name][version] = (State.END, "")
        for version in sorted(current.keys() - serving.keys()):
            self._forget_batches(current[version])
            logging.info("Unloaded servable version {name: %s version: %d}", name, version)
        if current.keys() != serving.keys():
            self._notify(name)

    def _batch_key(self, servable: Servable, signature_name: str) -> tuple:
        return (servable.name, servable.version, id(servable), signature_name)

    def _forget_batches(self, servable: Servable) -> None:
        if self._batch_scheduler is not None:
            for signature_name in servable.signature_defs:
                self._batch_scheduler.forget(self._batch_key(servable, signature_name))

    def _notify(self, name: str) -> None:
        available = bool(self.loaded(name))
        for listener in self._availability_listeners:
            listener(name, available)

    def servable(self, model_spec: model_pb2.ModelSpec) -> Servable:
        """The servable a request's ModelSpec names: its version, its version label, or the latest version."""
        name = model_spec.name
        if not name:  # checked before any lookup, as ServerCore::ServableRequestFromModelSpec does
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        versions = self.loaded(name)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            with self._lock:
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
        raise ModelLoadError("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                             "ModelConfigList is currently supported")
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


def _require_model_spec(request) -> None:
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


def predict(registry: ModelRegistry, request: predict_pb2.PredictRequest,
            timeout_s: float | None = None) -> predict_pb2.PredictResponse:
    """PredictionService.Predict: resolve the servable, then run the request against it."""
    _require_model_spec(request)
    return inference.run_predict(registry.servable(request.model_spec), request, registry.execute,
                                 _deadline(timeout_s), registry.max_request_bytes)


def classify(registry: ModelRegistry, request: classification_pb2.ClassificationRequest,
             timeout_s: float | None = None) -> classification_pb2.ClassificationResponse:
    """PredictionService.Classify over a ``tensorflow/serving/classify`` signature."""
    _require_model_spec(request)
    return _run_on_examples(registry, request.model_spec, inference.run_classify, request, timeout_s)


def regress(registry: ModelRegistry, request: regression_pb2.RegressionRequest,
            timeout_s: float | None = None) -> regression_pb2.RegressionResponse:
    """PredictionService.Regress over a ``tensorflow/serving/regress`` signature."""
    _require_model_spec(request)
    return _run_on_examples(registry, request.model_spec, inference.run_regress, request, timeout_s)


def multi_inference(registry: ModelRegistry, request: inference_pb2.MultiInferenceRequest,
                    timeout_s: float | None = None) -> inference_pb2.MultiInferenceResponse:
    """PredictionService.MultiInference: the servable is the first task's (multi_inference_helper.cc)."""
    model_spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
    return _run_on_examples(registry, model_spec, inference.run_multi_inference, request, timeout_s)


def _run_on_examples(registry: ModelRegistry, model_spec, run, request, timeout_s: float | None):
    """Runs an Example-based API (``run`` from ``inference``) on the servable of ``model_spec`` and counts
    the examples it scored for the metrics."""
    response, examples = run(registry.servable(model_spec), request, registry.execute, _deadline(timeout_s),
                             registry.max_request_bytes)
    if registry.metrics is not None:
        registry.metrics.record_examples(model_spec.name, examples)
    return response


def get_model_metadata(registry: ModelRegistry, request: get_model_metadata_pb2.GetModelMetadataRequest
                       ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """PredictionService.GetModelMetadata: the servable's SignatureDefs packed as a SignatureDefMap."""
    _require_model_spec(request)
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
    _require_model_spec(request)
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


def reload_config(registry: ModelRegistry, request: model_management_pb2.ReloadConfigRequest
                  ) -> model_management_pb2.ReloadConfigResponse:
    """ModelService.HandleReloadConfigRequest: serve exactly ``request.config``'s models. On failure the
    status is both the RPC's and the response's (model_service_impl.cc)."""
    for index, model_config in enumerate(request.config.model_config_list.config):
        logging.info("Config entry index : %d path : %s name : %s platform : %s", index, model_config.base_path,
                     model_config.name, model_config.model_platform)
    for servable in registry.reload_config(request.config):
        logging.info("Serving model %s version %d from %s", servable.name, servable.version, servable.path)
    response = model_management_pb2.ReloadConfigResponse()
    response.status.SetInParent()
    return response
