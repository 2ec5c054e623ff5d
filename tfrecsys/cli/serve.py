"""tfrecsys-serve: serve SavedModels over TF Serving's gRPC (and REST) API.

A stand-in for tensorflow_model_server, which has no build for this platform: the same flags, the same
<model_base_path>/<integer version>/ layout, the same API and status codes. The highest version is served
and new versions exported under the base path are picked up while running. SIGTERM or SIGINT stops it.

  tfrecsys-serve --model_name=dnn --model_base_path=exports/dnn --port=8500 --rest_api_port=8501
  tfrecsys-serve --model_config_file=serving/models.config   # several models, version policies, labels
"""

import signal
import threading

from absl import app, flags, logging

from tfrecsys.cli.common import run_binary
from tfrecsys.serving import server
from tfrecsys.serving.servables import read_model_server_config

FLAGS = flags.FLAGS

flags.DEFINE_integer("port", 8500, "TCP port to listen on for the gRPC API (PredictionService.Predict and "
                     "GetModelMetadata, ModelService.GetModelStatus). Unlike tensorflow_model_server, where 0 "
                     "turns gRPC off, 0 picks a free port; the port is logged at start.", lower_bound=0)
flags.DEFINE_integer("rest_api_port", 0, "Port to listen on for the HTTP/REST API (GET /v1/models/NAME, "
                     "GET /v1/models/NAME/metadata, POST /v1/models/NAME:predict). 0 turns REST off. It must "
                     "differ from --port.", lower_bound=0)
flags.DEFINE_string("model_name", "default", "Name clients use for the model in requests (ignored if "
                    "--model_config_file is set).")
flags.DEFINE_string("model_base_path", None, "Directory holding one SavedModel per integer-named version "
                    "directory, <model_base_path>/<version>/saved_model.pb; the highest version is served "
                    "(ignored if --model_config_file is set, otherwise required).")
flags.DEFINE_string("model_config_file", None, "A ModelServerConfig text proto listing the models to serve "
                    "(name, base_path, model_version_policy, version_labels): the file tensorflow_model_server "
                    "reads, e.g. serving/models.config. If set, --model_name and --model_base_path are ignored.")
flags.DEFINE_string("bind_address", "0.0.0.0", "Address the gRPC and REST ports listen on. tfrecsys-only (the "
                    "real server always listens on all interfaces, 0.0.0.0): use 127.0.0.1 to accept local "
                    "clients only, as the tests do.")
flags.DEFINE_integer("file_system_poll_wait_seconds", 1, "Interval in seconds between polls of the base paths "
                     "for new model versions; a new version is loaded, then the old one unloaded. 0 polls "
                     "once, at start.", lower_bound=0)
flags.DEFINE_integer("grpc_max_threads", server.DEFAULT_GRPC_MAX_THREADS, "Max gRPC server threads handling "
                     "requests at once.", lower_bound=1)
flags.DEFINE_string("saved_model_tags", "serve", "Comma-separated set of tags of the MetaGraphDef to load "
                    "from each SavedModel.")
flags.DEFINE_bool("enable_model_warmup", True, "Replay the PredictionLog records in a version's "
                  "assets.extra/tf_serving_warmup_requests before serving it; a failing record fails the load.")


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
        model_server = server.ModelServer(
            FLAGS.model_name, FLAGS.model_base_path, FLAGS.port,
            model_config=read_model_server_config(FLAGS.model_config_file) if FLAGS.model_config_file else None,
            host=FLAGS.bind_address, rest_api_port=FLAGS.rest_api_port,
            file_system_poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
            grpc_max_threads=FLAGS.grpc_max_threads, saved_model_tags=saved_model_tags,
            enable_model_warmup=FLAGS.enable_model_warmup).start()
    except (server.ModelLoadError, OSError) as error:
        logging.error("tfrecsys-serve cannot start: %s", error)
        return 1
    stop_requested.wait()
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
