"""tfrecsys-serve: serve SavedModels over TF Serving's gRPC (and REST) API.

A stand-in for tensorflow_model_server, which has no build for this platform: the same flags, the same
<model_base_path>/<integer version>/ layout, the same API and status codes, the same config files (model
config, batching parameters, monitoring config). The highest version is served and new versions exported
under the base path are picked up while running. SIGTERM or SIGINT stops it.

  tfrecsys-serve --model_name=dnn --model_base_path=exports/dnn --port=8500 --rest_api_port=8501
  tfrecsys-serve --model_config_file=serving/models.config --rest_api_port=8501 \\
      --enable_batching --batching_parameters_file=serving/batching_parameters.txt \\
      --monitoring_config_file=serving/monitoring.config
"""

import signal
import threading

from absl import app, flags, logging

from tfrecsys.cli.common import run_binary
from tfrecsys.serving import server
from tfrecsys.serving.config_files import (BatchingOptions, ConfigFileError, read_batching_parameters,
                                           read_monitoring_config)
from tfrecsys.serving.inference import DEFAULT_MAX_TENSOR_BYTES

FLAGS = flags.FLAGS

flags.DEFINE_integer("port", 8500, "TCP port to listen on for the gRPC API (PredictionService: Predict, Classify, "
                     "Regress, MultiInference, GetModelMetadata; ModelService: GetModelStatus, "
                     "HandleReloadConfigRequest; grpc.health.v1.Health). Unlike tensorflow_model_server, where 0 "
                     "turns gRPC off, 0 picks a free port; the port is logged at start.", lower_bound=0)
flags.DEFINE_integer("rest_api_port", 0, "Port to listen on for the HTTP/REST API (GET /v1/models/NAME, "
                     "GET /v1/models/NAME/metadata, POST /v1/models/NAME:predict|:classify|:regress, and the "
                     "Prometheus metrics path of --monitoring_config_file). 0 turns REST off. It must differ from "
                     "--port.", lower_bound=0)
flags.DEFINE_string("model_name", "default", "Name clients use for the model in requests (ignored if "
                    "--model_config_file is set).")
flags.DEFINE_string("model_base_path", None, "Directory holding one SavedModel per integer-named version "
                    "directory, <model_base_path>/<version>/saved_model.pb; the highest version is served "
                    "(ignored if --model_config_file is set, otherwise required).")
flags.DEFINE_string("model_config_file", None, "A ModelServerConfig text proto listing the models to serve "
                    "(name, base_path, model_version_policy, version_labels): the file tensorflow_model_server "
                    "reads, e.g. serving/models.config. If set, --model_name and --model_base_path are ignored.")
flags.DEFINE_integer("model_config_file_poll_wait_seconds", 0, "Interval in seconds between re-reads of "
                     "--model_config_file; a changed file is applied as HandleReloadConfigRequest applies a config "
                     "(models added, removed, policies and labels changed). 0 reads it once, at start.",
                     lower_bound=0)
flags.DEFINE_string("bind_address", "0.0.0.0", "Address the gRPC and REST ports listen on. tfrecsys-only (the "
                    "real server always listens on all interfaces, 0.0.0.0): use 127.0.0.1 to accept local "
                    "clients only, as the tests do. Listening beyond loopback logs a warning at start: nothing is authenticated.")
flags.DEFINE_integer("file_system_poll_wait_seconds", 1, "Interval in seconds between polls of the base paths "
                     "for new model versions; a new version is loaded, then the old one unloaded. 0 polls "
                     "once, at start.", lower_bound=0)
flags.DEFINE_bool("enable_batching", False, "Batch concurrent requests to the same signature into one call "
                  "(server-side batching). Parameters come from --batching_parameters_file, or TF Serving's "
                  "defaults without one.")
flags.DEFINE_string("batching_parameters_file", None, "A BatchingParameters text proto (max_batch_size, "
                    "batch_timeout_micros, max_enqueued_batches, num_batch_threads, thread_pool_name, "
                    "allowed_batch_sizes, pad_variable_length_inputs), e.g. serving/batching_parameters.txt. "
                    "Setting it turns batching on.")
flags.DEFINE_string("monitoring_config_file", None, "A MonitoringConfig text proto, e.g. serving/monitoring.config; "
                    "with prometheus_config { enable: true } the metrics are served in Prometheus format at its "
                    "path (default /monitoring/prometheus/metrics) on --rest_api_port.")
flags.DEFINE_integer("grpc_max_threads", server.DEFAULT_GRPC_MAX_THREADS, "Max gRPC server threads handling "
                     "requests at once.", lower_bound=1)
flags.DEFINE_string("grpc_channel_arguments", "", "Comma-separated gRPC server arguments key=value, as "
                    "tensorflow_model_server takes them, e.g. grpc.max_receive_message_length=4194304; integer "
                    "values are passed as integers.")
flags.DEFINE_integer("rest_api_num_threads", server.DEFAULT_REST_API_NUM_THREADS, "Threads serving HTTP/REST "
                     "requests; more connections wait their turn.", lower_bound=1)
flags.DEFINE_integer("rest_api_timeout_in_ms", server.DEFAULT_REST_API_TIMEOUT_MS, "Timeout for HTTP/REST API "
                     "calls: a request body must arrive within it (a client that stalls while sending is cut off; "
                     "a body waiting for room under --rest_api_max_in_flight_bytes gets 429 after it), and a "
                     "request waits at most this long in a batching queue. 0: no timeout.", lower_bound=0)
flags.DEFINE_integer("rest_api_header_timeout_in_ms", server.DEFAULT_REST_API_HEADER_TIMEOUT_MS, "tfrecsys-only: "
                     "time a REST client has to send its request line and headers before it is disconnected. "
                     "Requests are read by one event loop and only complete ones reach the "
                     "--rest_api_num_threads workers, so slow or stalled clients cannot hold them.", lower_bound=1)
flags.DEFINE_integer("rest_api_max_in_flight_bytes", None, "tfrecsys-only: the most REST request body bytes held "
                     "at once, being received or answered (default: --max_request_bytes). A body that does not fit "
                     "is not read until others finish, and gets 429 (RESOURCE_EXHAUSTED) if that takes longer "
                     "than --rest_api_timeout_in_ms. Decoding JSON costs several times the body's size, so this "
                     "bounds the REST API's memory.", lower_bound=1)
flags.DEFINE_integer("max_request_bytes", DEFAULT_MAX_TENSOR_BYTES, "tfrecsys-only: the largest request accepted, "
                     "checked on the gRPC message, the REST body (413 beyond it) and the tensors a request decodes "
                     "to (RESOURCE_EXHAUSTED beyond it), so no request can exhaust the server's memory.",
                     lower_bound=1)
flags.DEFINE_integer("max_num_load_retries", server.DEFAULT_MAX_NUM_LOAD_RETRIES, "Maximum number of times a "
                     "failed load of a new version is retried before giving up, as tensorflow_model_server's flag "
                     "(e.g. a version directory polled while it is still being copied in). 0: one try only. "
                     "Versions loaded at start are not retried (a failure exits 1).", lower_bound=0)
flags.DEFINE_integer("load_retry_interval_micros", server.DEFAULT_LOAD_RETRY_INTERVAL_MICROS, "Interval in "
                     "microseconds between load retries, as tensorflow_model_server's flag (default 1 minute); the "
                     "version shows LOADING, with the last error, meanwhile.")
flags.DEFINE_bool("allow_config_reload_requests", True, "tfrecsys-only: answer ModelService."
                  "HandleReloadConfigRequest. It is unauthenticated and can load any path or unload every model; "
                  "false refuses it with PERMISSION_DENIED (tensorflow_model_server has no such switch and always "
                  "answers it). --model_config_file polling is not affected.")
flags.DEFINE_string("saved_model_tags", "serve", "Comma-separated set of tags of the MetaGraphDef to load "
                    "from each SavedModel.")
flags.DEFINE_bool("enable_model_warmup", True, "Replay the PredictionLog records in a version's "
                  "assets.extra/tf_serving_warmup_requests before serving it; a failing record fails the load.")


def _channel_arguments(text: str) -> list[tuple[str, object]]:
    arguments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise app.UsageError(f"--grpc_channel_arguments: {item!r} is not key=value")
        arguments.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return arguments


# How often the main thread looks for a stop signal (see main).
_SIGNAL_POLL_S = 0.2

def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.rest_api_port and FLAGS.rest_api_port == FLAGS.port:
        raise app.UsageError("--rest_api_port must be different from --port")
    if not FLAGS.model_config_file and not FLAGS.model_base_path:
        raise app.UsageError("--model_base_path is required (or --model_config_file)")
    stop_requested = _stop_on_signals()
    saved_model_tags = [tag.strip() for tag in FLAGS.saved_model_tags.split(",")]
    try:
        batching = None
        if FLAGS.batching_parameters_file:
            batching = read_batching_parameters(FLAGS.batching_parameters_file)
        elif FLAGS.enable_batching:
            batching = BatchingOptions()
        monitoring_path = read_monitoring_config(FLAGS.monitoring_config_file) if FLAGS.monitoring_config_file else None
        if monitoring_path and not FLAGS.rest_api_port:
            raise ConfigFileError(f"--monitoring_config_file {FLAGS.monitoring_config_file} enables Prometheus "
                                  "metrics, which are served on the REST port: set --rest_api_port")
        model_server = server.ModelServer(
            FLAGS.model_name, FLAGS.model_base_path, FLAGS.port, model_config_file=FLAGS.model_config_file,
            model_config_file_poll_wait_seconds=FLAGS.model_config_file_poll_wait_seconds,
            host=FLAGS.bind_address, rest_api_port=FLAGS.rest_api_port,
            file_system_poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
            grpc_max_threads=FLAGS.grpc_max_threads, saved_model_tags=saved_model_tags,
            enable_model_warmup=FLAGS.enable_model_warmup, batching=batching, monitoring_path=monitoring_path,
            max_request_bytes=FLAGS.max_request_bytes,
            grpc_channel_arguments=_channel_arguments(FLAGS.grpc_channel_arguments),
            rest_api_num_threads=FLAGS.rest_api_num_threads,
            rest_api_timeout_in_ms=FLAGS.rest_api_timeout_in_ms,
            rest_api_header_timeout_in_ms=FLAGS.rest_api_header_timeout_in_ms,
            rest_api_max_in_flight_bytes=FLAGS.rest_api_max_in_flight_bytes,
            max_num_load_retries=FLAGS.max_num_load_retries,
            load_retry_interval_micros=FLAGS.load_retry_interval_micros,
            allow_config_reload_requests=FLAGS.allow_config_reload_requests).start()
    except (server.ModelLoadError, ConfigFileError, OSError, ValueError) as error:
        logging.error("tfrecsys-serve cannot start: %s", error)
        return 1
    if batching:
        logging.info("Batching is on: %s", batching)
    if monitoring_path:
        logging.info("Prometheus metrics at http://%s:%d%s", FLAGS.bind_address, model_server.rest_api_port,
                     monitoring_path)
    # Waits in short slices: a signal that the kernel hands to one of gRPC's or TensorFlow's threads does not
    # wake the main thread out of an untimed wait, and Python runs the handler only on the main thread, so
    # an untimed wait could miss SIGTERM for good (seen once in CI: the server ignored it until SIGKILL).
    while not stop_requested.wait(timeout=_SIGNAL_POLL_S):
        pass
    logging.info("Stop requested by signal, stopping")
    model_server.stop()
    return 0


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM (docker stop, Kubernetes) or SIGINT (Ctrl-C), instead of dying mid-request."""
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    return stop_requested


def run() -> None:
    run_binary("tfrecsys-serve", __name__, __doc__, main)


if __name__ == "__main__":
    run()
