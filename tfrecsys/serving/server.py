"""A model server speaking TF Serving's gRPC API (and optionally its REST API) over SavedModel directories.

There is no ``tensorflow_model_server`` binary for this platform, so tfrecsys serves the same API from
Python: the official ``tensorflow_serving.apis`` stubs, the same ``<model_base_path>/<integer version>/``
layout and version policy (the highest version by default), the same status codes and messages, the same
batching parameters and monitoring config files. A client written against this server works unchanged
against the real one, and the other way round.

    server = ModelServer("dnn", "/exports/dnn", port=0, host="127.0.0.1").start()
    ...
    server.stop()

Beyond TF Serving it answers the standard gRPC health service (grpc.health.v1.Health): ``""`` and the two
TF Serving service names are SERVING while the server runs, and each model name is SERVING while it has an
available version.
"""

import concurrent.futures
import ipaddress
import os
import threading
import time

import grpc
from absl import logging
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tfrecsys.serving import servables
from tfrecsys.serving.batching import BatchScheduler
from tfrecsys.serving.config_files import BatchingOptions
from tfrecsys.serving.errors import ModelLoadError, ServingError
from tfrecsys.serving.inference import DEFAULT_MAX_TENSOR_BYTES
from tfrecsys.serving.monitoring import ServingMetrics
from tfrecsys.serving.rest import RestServer
from tfrecsys.serving.servables import ModelRegistry, single_model_config

__all__ = ["ModelLoadError", "ModelServer", "ModelServiceServicer", "PredictionServiceServicer",
           "ServingError"]

DEFAULT_GRPC_MAX_THREADS = 4 * (os.cpu_count() or 1)
DEFAULT_REST_API_NUM_THREADS = 4 * (os.cpu_count() or 1)
DEFAULT_REST_API_TIMEOUT_MS = 30_000
DEFAULT_REST_API_HEADER_TIMEOUT_MS = 5_000
# TF Serving's --max_num_load_retries and --load_retry_interval_micros defaults (model_servers/main.cc).
DEFAULT_MAX_NUM_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_MICROS = 60_000_000
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"


class PredictionServiceServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata; request counts and latencies go to
    ``metrics`` as prediction_service_impl.cc records them (Predict, Classify, Regress)."""

    def __init__(self, registry: ModelRegistry, metrics: ServingMetrics | None = None):
        self._registry = registry
        self._metrics = metrics

    def Predict(self, request, context):  # noqa: N802  (gRPC method names)
        return self._inference("Predict", servables.predict, request, context)

    def Classify(self, request, context):  # noqa: N802
        return self._inference("Classify", servables.classify, request, context)

    def Regress(self, request, context):  # noqa: N802
        return self._inference("Regress", servables.regress, request, context)

    def MultiInference(self, request, context):  # noqa: N802
        return _answer(context, "MultiInference",
                       lambda: servables.multi_inference(self._registry, request, context.time_remaining()))

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(context, "GetModelMetadata", lambda: servables.get_model_metadata(self._registry, request))

    def _inference(self, api: str, call, request, context):
        started = time.perf_counter()
        status = "OK"
        try:
            return _answer(context, api, lambda: call(self._registry, request, context.time_remaining()))
        except BaseException:
            status = context.code().name if context.code() is not None else "UNKNOWN"
            raise
        finally:
            if self._metrics is not None:
                self._metrics.record_request(request.model_spec.name, api, "GRPC", status,
                                             (time.perf_counter() - started) * 1e6)


class ModelServiceServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest; the latter refused with PERMISSION_DENIED unless
    ``allow_config_reload`` (it is unauthenticated, and can load any path or unload every model)."""

    def __init__(self, registry: ModelRegistry, allow_config_reload: bool = True):
        self._registry = registry
        self._allow_config_reload = allow_config_reload

    def GetModelStatus(self, request, context):  # noqa: N802
        return _answer(context, "GetModelStatus", lambda: servables.get_model_status(self._registry, request))

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        if not self._allow_config_reload:
            logging.warning("Refused a HandleReloadConfigRequest from %s (--allow_config_reload_requests=false)",
                            context.peer())
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "HandleReloadConfigRequest is disabled on this server (--allow_config_reload_requests=false)")
        return _answer(context, "HandleReloadConfigRequest", lambda: servables.reload_config(self._registry, request))


def _answer(context: grpc.ServicerContext, api: str, call):
    """Runs one API call; every failure becomes a status on this RPC, never a crash of the server."""
    try:
        return call()
    except ServingError as error:
        logging.info("%s failed: %s", api, error)
        context.abort(error.code, error.message)
    # A bug or an unforeseen TensorFlow failure fails this request only.
    except Exception as error:  # noqa: BLE001
        logging.exception("%s failed with an internal error", api)
        context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


class ModelServer:
    """Serves the models of a ModelServerConfig over gRPC (and REST when ``rest_api_port`` is not 0).

    Give either ``model_name`` and ``model_base_path`` (one model, like tensorflow_model_server's flags) or
    ``model_config`` (a ModelServerConfig, like ``--model_config_file``). ``start`` loads the versions to
    serve and fails with ModelLoadError when a model has none; after that the base paths are polled every
    ``file_system_poll_wait_seconds`` (0: never) and new versions replace old ones without downtime, and
    ``model_config_file`` (when given) is re-read every ``model_config_file_poll_wait_seconds`` (0: never).
    ``batching`` turns on server-side batching; ``monitoring_path`` serves Prometheus metrics on the REST
    port. ``max_request_bytes`` bounds a request (gRPC message, REST body, decoded tensors) and
    ``rest_api_max_in_flight_bytes`` (default: ``max_request_bytes``) the REST bodies held at once; a REST
    client has ``rest_api_header_timeout_in_ms`` to send its request head. A version that fails to load while
    polling is retried ``max_num_load_retries`` times, ``load_retry_interval_micros`` apart, as TF Serving
    does. ``allow_config_reload_requests=False`` refuses HandleReloadConfigRequest.
    ``port=0`` picks a free port; ``.port`` tells which.
    """

    def __init__(self, model_name: str = "default", model_base_path: str | None = None, port: int = 8500, *,
                 model_config: model_server_config_pb2.ModelServerConfig | None = None,
                 host: str = "0.0.0.0", rest_api_port: int = 0, file_system_poll_wait_seconds: float = 1.0,
                 model_config_file: str | None = None, model_config_file_poll_wait_seconds: float = 0,
                 grpc_max_threads: int = DEFAULT_GRPC_MAX_THREADS, saved_model_tags=("serve",),
                 enable_model_warmup: bool = True, batching: BatchingOptions | None = None,
                 monitoring_path: str | None = None, max_request_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
                 grpc_channel_arguments: list[tuple[str, object]] = (),
                 rest_api_num_threads: int = DEFAULT_REST_API_NUM_THREADS,
                 rest_api_timeout_in_ms: int = DEFAULT_REST_API_TIMEOUT_MS,
                 rest_api_header_timeout_in_ms: int = DEFAULT_REST_API_HEADER_TIMEOUT_MS,
                 rest_api_max_in_flight_bytes: int | None = None,
                 max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES,
                 load_retry_interval_micros: int = DEFAULT_LOAD_RETRY_INTERVAL_MICROS,
                 allow_config_reload_requests: bool = True):
        if model_config is None and model_config_file:
            model_config = servables.read_model_server_config(model_config_file)
        if model_config is None:
            if not model_base_path:
                raise ValueError("Give model_base_path (with model_name), model_config or model_config_file")
            model_config = single_model_config(model_name, model_base_path)
        if monitoring_path and not rest_api_port:
            raise ValueError("Prometheus metrics are served on the REST port: set rest_api_port too")
        if rest_api_max_in_flight_bytes is not None and rest_api_max_in_flight_bytes < max_request_bytes:
            raise ValueError(f"rest_api_max_in_flight_bytes ({rest_api_max_in_flight_bytes}) must be at least "
                             f"max_request_bytes ({max_request_bytes}), or the largest REST requests could never run")
        self.metrics = ServingMetrics()
        self.batch_scheduler = BatchScheduler(batching, self.metrics) if batching else None
        self.registry = ModelRegistry(model_config, saved_model_tags, enable_model_warmup, self.batch_scheduler,
                                      self.metrics, max_request_bytes, max_num_load_retries,
                                      load_retry_interval_micros / 1e6)
        self.health = health.HealthServicer()
        self.registry.add_availability_listener(self._set_model_health)
        self._host = host
        self._requested_port = port
        self._requested_rest_api_port = rest_api_port
        self._poll_seconds = file_system_poll_wait_seconds
        self._model_config_file = model_config_file
        self._config_poll_seconds = model_config_file_poll_wait_seconds if model_config_file else 0
        self._last_config = model_config
        self._grpc_max_threads = grpc_max_threads
        self._monitoring_path = monitoring_path
        self._max_request_bytes = max_request_bytes
        self._grpc_channel_arguments = list(grpc_channel_arguments)
        self._rest_api_num_threads = rest_api_num_threads
        self._rest_api_timeout_s = rest_api_timeout_in_ms / 1000 if rest_api_timeout_in_ms > 0 else None
        self._rest_api_header_timeout_s = rest_api_header_timeout_in_ms / 1000
        self._rest_api_max_in_flight_bytes = rest_api_max_in_flight_bytes
        self._allow_config_reload_requests = allow_config_reload_requests
        self._grpc_server: grpc.Server | None = None
        self._rest_server: RestServer | None = None
        self._port = 0
        self._stop_polling = threading.Event()
        self._poll_threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        """The gRPC port bound by ``start``."""
        return self._port

    @property
    def rest_api_port(self) -> int:
        """The REST port bound by ``start``; 0 when REST is off."""
        return self._rest_server.port if self._rest_server else 0

    def _grpc_options(self) -> list[tuple[str, object]]:
        options = {"grpc.max_send_message_length": -1,
                   "grpc.max_receive_message_length": self._max_request_bytes,
                   # Without this, a second server on a busy port shares it silently instead of failing.
                   "grpc.so_reuseport": 0}
        options.update(dict(self._grpc_channel_arguments))
        return list(options.items())

    def start(self) -> "ModelServer":
        """Loads every model, then listens. Raises ModelLoadError, or OSError when a port cannot be bound."""
        try:
            loaded = self.registry.refresh(strict=True)
        except BaseException:
            self._stop_batching()
            raise
        for name in self.registry.model_names():
            self._set_model_health(name, bool(self.registry.loaded(name)))
        self._grpc_server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self._grpc_max_threads, thread_name_prefix="grpc"),
            options=self._grpc_options())
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServiceServicer(self.registry, self.metrics), self._grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServiceServicer(self.registry, self._allow_config_reload_requests), self._grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc_server)
        address = _address(self._host, self._requested_port)
        try:
            self._port = self._grpc_server.add_insecure_port(address)
            if self._requested_rest_api_port:
                self._rest_server = RestServer(
                    self.registry, self._host, self._requested_rest_api_port, metrics=self.metrics,
                    monitoring_path=self._monitoring_path, max_request_bytes=self._max_request_bytes,
                    num_threads=self._rest_api_num_threads, timeout_s=self._rest_api_timeout_s,
                    max_in_flight_bytes=self._rest_api_max_in_flight_bytes,
                    header_timeout_s=self._rest_api_header_timeout_s)
        except (RuntimeError, OSError) as error:
            self._stop_batching()
            raise OSError(f"Could not listen for gRPC on {address}: {error}") from error
        self._grpc_server.start()
        for service in ("", PREDICTION_SERVICE, MODEL_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        grpc_address = _address(self._host, self._port)
        for servable in loaded:
            logging.info("Serving model %s version %d from %s on %s", servable.name, servable.version,
                         servable.path, grpc_address)
        logging.info("Running gRPC ModelServer at %s ...", grpc_address)
        if not _is_loopback(self._host):
            logging.warning(
                "Listening on %s, beyond this machine: the gRPC and REST APIs have no authentication%s. "
                "--bind_address=127.0.0.1 accepts local clients only.", self._host,
                ", and HandleReloadConfigRequest can load any path or unload every model "
                "(--allow_config_reload_requests=false refuses it)" if self._allow_config_reload_requests else
                " (HandleReloadConfigRequest is refused: --allow_config_reload_requests=false)")
        if self._rest_server:
            self._rest_server.start()
            logging.info("Exporting HTTP/REST API at:%s ...", _address(self._host, self.rest_api_port))
        if self._poll_seconds > 0:
            self._start_poller("version-poller", self._poll_seconds, self._poll_versions)
        if self._config_poll_seconds > 0:
            self._start_poller("config-poller", self._config_poll_seconds, self.reload_config_file)
        return self

    def _set_model_health(self, name: str, available: bool) -> None:
        self.health.set(name, health_pb2.HealthCheckResponse.SERVING if available
                        else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _start_poller(self, name: str, period_s: float, poll) -> None:
        def loop():
            while not self._stop_polling.wait(period_s):
                # A file system hiccup or a bad file must not end polling; the next poll tries again.
                try:
                    poll()
                except ModelLoadError as error:  # e.g. a config file saved half-edited
                    logging.error("%s: %s", name, error)
                except Exception:  # noqa: BLE001
                    logging.exception("%s failed", name)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._poll_threads.append(thread)

    def _poll_versions(self) -> None:
        """Picks up new versions (and drops old ones) as TF Serving's file system source does."""
        for servable in self.registry.refresh():
            logging.info("Serving model %s version %d from %s", servable.name, servable.version, servable.path)

    def reload_config_file(self) -> bool:
        """Applies ``model_config_file`` again if its content changed, as the real server's config poller does
        (the poller calls this every ``model_config_file_poll_wait_seconds``). Returns whether it was applied;
        raises ModelLoadError, changing nothing, when the file cannot be read or parsed."""
        if not self._model_config_file:
            raise ValueError("The server was not started from a model_config_file")
        config = servables.read_model_server_config(self._model_config_file)
        if config == self._last_config:
            return False
        logging.info("Reloading the model config from %s", self._model_config_file)
        self._last_config = config
        try:
            for servable in self.registry.reload_config(config):
                logging.info("Serving model %s version %d from %s", servable.name, servable.version, servable.path)
        except ServingError as error:
            logging.error("Reloading %s failed: %s", self._model_config_file, error.message)
        return True

    def stop(self, grace: float | None = 5.0) -> None:
        """Stops listening; requests in flight get ``grace`` seconds to finish. Safe to call twice."""
        if self._stopped.is_set():
            return
        self.health.enter_graceful_shutdown()
        self._stop_polling.set()
        if self._rest_server:
            self._rest_server.stop()
        if self._grpc_server:
            self._grpc_server.stop(grace).wait()
        for thread in self._poll_threads:
            thread.join()
        self._stop_batching()
        logging.info("Model server stopped")
        self._stopped.set()

    def _stop_batching(self) -> None:
        if self.batch_scheduler is not None:
            self.batch_scheduler.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until ``stop`` has finished (True) or ``timeout`` seconds passed (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
