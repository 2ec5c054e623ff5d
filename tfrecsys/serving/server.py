"""A model server speaking TF Serving's gRPC API (and optionally its REST API) over SavedModel directories.

There is no ``tensorflow_model_server`` binary for this platform, so tfrecsys serves the same API from
Python: the official ``tensorflow_serving.apis`` stubs, the same ``<model_base_path>/<integer version>/``
layout and version policy (the highest version by default), the same status codes and messages. A client
written against this server works unchanged against the real one, and the other way round.

    server = ModelServer("dnn", "/exports/dnn", port=0, host="127.0.0.1").start()
    ...
    server.stop()
"""

import concurrent.futures
import os
import threading

import grpc
from absl import logging
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tfrecsys.serving import servables
from tfrecsys.serving.rest import RestServer
from tfrecsys.serving.servables import ModelLoadError, ModelRegistry, ServingError, single_model_config

__all__ = ["ModelLoadError", "ModelServer", "ModelServiceServicer", "PredictionServiceServicer",
           "ServingError"]

# TF Serving accepts messages up to kint32max bytes; gRPC's 4 MB default would reject big batches.
_MAX_MESSAGE_BYTES = 2**31 - 1
DEFAULT_GRPC_MAX_THREADS = 4 * (os.cpu_count() or 1)


class PredictionServiceServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference answer UNIMPLEMENTED."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def Predict(self, request, context):  # noqa: N802  (gRPC method names)
        return _answer(context, "Predict", servables.predict, self._registry, request)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(context, "GetModelMetadata", servables.get_model_metadata, self._registry, request)


class ModelServiceServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest answers UNIMPLEMENTED."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def GetModelStatus(self, request, context):  # noqa: N802
        return _answer(context, "GetModelStatus", servables.get_model_status, self._registry, request)


def _answer(context: grpc.ServicerContext, api: str, call, registry: ModelRegistry, request):
    """Runs one API call; every failure becomes a status on this RPC, never a crash of the server."""
    try:
        return call(registry, request)
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
    ``file_system_poll_wait_seconds`` (0: never) and new versions replace old ones without downtime.
    ``port=0`` picks a free port; ``.port`` tells which.
    """

    def __init__(self, model_name: str = "default", model_base_path: str | None = None, port: int = 8500, *,
                 model_config: model_server_config_pb2.ModelServerConfig | None = None,
                 host: str = "0.0.0.0", rest_api_port: int = 0, file_system_poll_wait_seconds: float = 1.0,
                 grpc_max_threads: int = DEFAULT_GRPC_MAX_THREADS, saved_model_tags=("serve",),
                 enable_model_warmup: bool = True):
        if model_config is None:
            if not model_base_path:
                raise ValueError("Give model_base_path (with model_name) or model_config")
            model_config = single_model_config(model_name, model_base_path)
        self.registry = ModelRegistry(model_config, saved_model_tags, enable_model_warmup)
        self._host = host
        self._requested_port = port
        self._requested_rest_api_port = rest_api_port
        self._poll_seconds = file_system_poll_wait_seconds
        self._grpc_max_threads = grpc_max_threads
        self._grpc_server: grpc.Server | None = None
        self._rest_server: RestServer | None = None
        self._port = 0
        self._stop_polling = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        """The gRPC port bound by ``start``."""
        return self._port

    @property
    def rest_api_port(self) -> int:
        """The REST port bound by ``start``; 0 when REST is off."""
        return self._rest_server.port if self._rest_server else 0

    def start(self) -> "ModelServer":
        """Loads every model, then listens. Raises ModelLoadError, or OSError when a port cannot be bound."""
        loaded = self.registry.refresh(strict=True)
        self._grpc_server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self._grpc_max_threads, thread_name_prefix="grpc"),
            options=[("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                     ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                     # Without this, a second server on a busy port shares it silently instead of failing.
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServiceServicer(self.registry), self._grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServiceServicer(self.registry),
                                                                   self._grpc_server)
        address = _address(self._host, self._requested_port)
        try:
            self._port = self._grpc_server.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(f"Could not listen for gRPC on {address}: {error}") from error
        if self._requested_rest_api_port:
            self._rest_server = RestServer(self.registry, self._host, self._requested_rest_api_port)
        self._grpc_server.start()
        grpc_address = _address(self._host, self._port)
        for servable in loaded:
            logging.info("Serving model %s version %d from %s on %s", servable.name, servable.version,
                         servable.path, grpc_address)
        logging.info("Running gRPC ModelServer at %s ...", grpc_address)
        if self._rest_server:
            self._rest_server.start()
            logging.info("Exporting HTTP/REST API at:%s ...", _address(self._host, self.rest_api_port))
        if self._poll_seconds > 0:
            self._poll_thread = threading.Thread(target=self._poll, name="version-poller", daemon=True)
            self._poll_thread.start()
        return self

    def _poll(self) -> None:
        """Picks up new versions (and drops old ones) as TF Serving's file system source does."""
        while not self._stop_polling.wait(self._poll_seconds):
            try:
                for servable in self.registry.refresh():
                    logging.info("Serving model %s version %d from %s", servable.name, servable.version,
                                 servable.path)
            # A file system hiccup must not end polling; the next poll tries again.
            except Exception:  # noqa: BLE001
                logging.exception("Polling the model base paths failed")

    def stop(self, grace: float | None = 5.0) -> None:
        """Stops listening; requests in flight get ``grace`` seconds to finish. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stop_polling.set()
        if self._rest_server:
            self._rest_server.stop()
        if self._grpc_server:
            self._grpc_server.stop(grace).wait()
        if self._poll_thread:
            self._poll_thread.join()
        logging.info("Model server stopped")
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until ``stop`` has finished (True) or ``timeout`` seconds passed (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

