"""TF Serving's REST API over a ModelRegistry (``--rest_api_port``).

Routes and JSON as tensorflow_model_server answers them (model_servers/http_rest_api_handler.cc,
http_server.cc, util/json_tensor.cc):

    GET  /v1/models/NAME[/versions/N | /labels/L]             GetModelStatus as JSON
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata    GetModelMetadata as JSON
    POST /v1/models/NAME[/versions/N | /labels/L]:predict     {"signature_name": ..., "instances": [...]}
                                                              → {"predictions": [...]}, or "inputs"
                                                              (columnar) → {"outputs": ...}

Errors answer ``{"error": message}`` with the HTTP status TF Serving maps the gRPC code to. Classify and
Regress are not served (501).
"""

import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from tfrecsys.serving import servables
from tfrecsys.serving.tensors import json_to_ndarray, ndarray_to_json, tensor_spec

_MODEL_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)"
                         r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                         r"(?::(?P<method>classify|regress|predict)|/(?P<metadata>metadata))?")

# http_server.cc ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}


class RestServer:
    """An HTTP server answering TF Serving's REST API from ``registry``, on a thread of its own."""

    def __init__(self, registry: servables.ModelRegistry, host: str, port: int):
        handler = type("RestApiHandler", (_RestApiHandler,), {"registry": registry})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest-api", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> "RestServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() waits for serve_forever to return, so it would block forever on a server never started.
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


class _RestApiHandler(BaseHTTPRequestHandler):
    registry: servables.ModelRegistry
    server_version = "tfrecsys-serve"

    def do_GET(self):  # noqa: N802  (http.server's naming)
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._reply(200, handle(self.registry, method, path, body))
        except servables.ServingError as error:
            logging.info("REST %s %s failed: %s", method, path, error)
            self._reply(_HTTP_STATUS.get(error.code, 500), {"error": error.message})
        # Whatever goes wrong in one request must not stop the server answering the next.
        except Exception as error:  # noqa: BLE001
            logging.exception("REST %s %s failed", method, path)
            self._reply(500, {"error": f"{type(error).__name__}: {error}"})

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002  (http.server's signature)
        # http.server writes every request to stderr; keep that out of the server log unless asked for.
        logging.vlog(1, "REST %s", format % args)


def handle(registry: servables.ModelRegistry, method: str, path: str, body: bytes) -> dict:
    """The JSON answer to one REST request; raises ServingError for the error answers."""
    match = _MODEL_PATH.fullmatch(path)
    if match is None:
        code = grpc.StatusCode.INVALID_ARGUMENT if path.startswith("/v1/") else grpc.StatusCode.NOT_FOUND
        raise servables.ServingError(code, f"Malformed request: {method} {path}")
    spec = model_pb2.ModelSpec(name=match["name"])
    if match["version"]:
        spec.version.value = int(match["version"])
    elif match["label"]:
        spec.version_label = match["label"]
    if method == "POST" and match["method"] == "predict":
        return _predict(registry, spec, body)
    if method == "POST" and match["method"]:
        raise servables.ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                     f"tfrecsys-serve does not serve :{match['method']}; use :predict")
    if method == "GET" and match["metadata"]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[servables.SIGNATURE_DEF_FIELD])
        return _to_json(servables.get_model_metadata(registry, request))
    if method == "GET" and not match["method"]:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        return _to_json(servables.get_model_status(registry, request))
    raise servables.ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {path}")


def _to_json(message) -> dict:
    # TF Serving prints default values and proto field names ("model_version_status", "error_code": "OK").
    return json_format.MessageToDict(message, including_default_value_fields=True,
                                     preserving_proto_field_name=True)


def _predict(registry: servables.ModelRegistry, spec: model_pb2.ModelSpec, body: bytes) -> dict:
    """A :predict request: JSON to tensors typed by the signature, Predict, tensors back to JSON."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _invalid(f"JSON Parse error: {error}") from error
    if not isinstance(payload, dict):
        raise _invalid("JSON Parse error: the request body must be a JSON object")
    signature_name = payload.get("signature_name", servables.DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str):
        raise _invalid("'signature_name' key must be a string value.")
    spec.signature_name = signature_name
    servable = registry.servable(spec)
    signature_def = servable.signature_defs.get(signature_name)
    if signature_def is None:
        raise _invalid(f'Serving signature name: "{signature_name}" not found in signature def')
    if ("instances" in payload) == ("inputs" in payload):
        raise _invalid("Missing 'inputs' or 'instances' key" if "inputs" not in payload else
                       "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists")
    row_format = "instances" in payload
    columns = (_columns_from_instances(payload["instances"], signature_def) if row_format
               else _columns_from_inputs(payload["inputs"], signature_def))
    request = predict_pb2.PredictRequest(model_spec=spec)
    for alias, value in columns.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(_input_array(alias, value, signature_def)))
    response = servables.run_predict(servable, request)
    outputs = {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}
    return _rows_json(outputs) if row_format else _columns_json(outputs)


def _input_array(alias: str, value, signature_def) -> np.ndarray:
    if alias not in signature_def.inputs:
        raise _invalid(f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set "
                       f"{{{','.join(sorted(signature_def.inputs))}}}.")
    try:
        return json_to_ndarray(alias, value, *tensor_spec(signature_def.inputs[alias]))
    except ValueError as error:
        raise _invalid(str(error)) from error


def _columns_from_instances(instances, signature_def) -> dict:
    """Row format: a list of {input: value} objects, or of bare values when the signature has one input."""
    if not isinstance(instances, list) or not instances:
        raise _invalid("'instances' must be a non-empty JSON array")
    if all(_is_named_row(row) for row in instances):
        names = set(instances[0])
        for index, row in enumerate(instances):
            if set(row) != names:
                raise _invalid(f"Failed to process element: {index} of 'instances' list. It names the inputs "
                               f"{{{','.join(sorted(row))}}}, the first element {{{','.join(sorted(names))}}}")
        return {name: [row[name] for row in instances] for name in names}
    if len(signature_def.inputs) != 1:
        raise _invalid("'instances' must be JSON objects naming the inputs, because the signature has "
                       f"{len(signature_def.inputs)} inputs")
    return {next(iter(signature_def.inputs)): instances}


def _columns_from_inputs(inputs, signature_def) -> dict:
    """Columnar format: {input: whole tensor}, or the bare tensor when the signature has one input."""
    if _is_named_row(inputs):
        return inputs
    if len(signature_def.inputs) != 1:
        raise _invalid("'inputs' must be a JSON object naming the inputs, because the signature has "
                       f"{len(signature_def.inputs)} inputs")
    return {next(iter(signature_def.inputs)): inputs}


def _is_named_row(value) -> bool:
    return isinstance(value, dict) and set(value) != {"b64"}


def _rows_json(outputs: dict[str, np.ndarray]) -> dict:
    batch_sizes = {alias: array.shape[0] if array.ndim else None for alias, array in outputs.items()}
    if None in batch_sizes.values() or len(set(batch_sizes.values())) != 1:
        raise _invalid(f"Row format ('instances') needs outputs with one batch size; got {batch_sizes}. "
                       "Use 'inputs' (columnar) instead")
    columns = {alias: ndarray_to_json(alias, array) for alias, array in outputs.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    size = next(iter(batch_sizes.values()))
    return {"predictions": [{alias: column[row] for alias, column in columns.items()} for row in range(size)]}


def _columns_json(outputs: dict[str, np.ndarray]) -> dict:
    columns = {alias: ndarray_to_json(alias, array) for alias, array in outputs.items()}
    return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}


def _invalid(message: str) -> servables.ServingError:
    return servables.ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)
