"""TF Serving's REST API over a ModelRegistry (``--rest_api_port``).

Routes and JSON as tensorflow_model_server answers them (model_servers/http_rest_api_handler.cc,
http_server.cc, util/json_tensor.cc):

    GET  /v1/models/NAME[/versions/N | /labels/L]             GetModelStatus as JSON
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata    GetModelMetadata as JSON
    POST /v1/models/NAME[/versions/N | /labels/L]:predict     {"signature_name": ..., "instances": [...]}
                                                              → {"predictions": [...]}, or "inputs"
                                                              (columnar) → {"outputs": ...}
    POST ...:classify / ...:regress                           {"signature_name": ..., "context": {...},
                                                               "examples": [{feature: value}, ...]}
                                                              → {"result": [[[label, score], ...], ...]} /
                                                                {"result": [value, ...]}
    GET  <prometheus_config.path>                             the Prometheus metrics page (text/plain)

Errors answer ``{"error": message}`` with the HTTP status TF Serving maps the gRPC code to. A body larger
than the server's request limit is refused with 413 before it is read; requests are served by a bounded pool
of ``num_threads`` threads (``--rest_api_num_threads``), and a client that stalls mid-request is cut off after
``timeout_s`` (``--rest_api_timeout_in_ms``), which also bounds the wait in a batching queue.
"""

import base64
import binascii
import concurrent.futures
import json
import math
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, input_pb2,
                                     model_pb2, predict_pb2, regression_pb2)

from tfrecsys.serving import inference, servables
from tfrecsys.serving.errors import ServingError
from tfrecsys.serving.inference import DEFAULT_MAX_TENSOR_BYTES
from tfrecsys.serving.monitoring import ServingMetrics
from tfrecsys.serving.tensors import json_to_ndarray, ndarray_to_json, tensor_spec

# Version labels are word characters only (serving_config.md), as the real server's path regex has it.
_MODEL_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)"
                         r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>\w+))?"
                         r"(?::(?P<method>classify|regress|predict)|/(?P<metadata>metadata))?")
_API_BY_METHOD = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}

# http_server.cc ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}


class _PooledHTTPServer(HTTPServer):
    """An HTTPServer whose connections are handled by a fixed pool of threads."""

    daemon_threads = True

    def __init__(self, address, handler, num_threads: int):
        super().__init__(address, handler)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="rest")

    def process_request(self, request, client_address):
        self._pool.submit(self._handle, request, client_address)

    def _handle(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001  (a broken connection ends that connection only)
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request, client_address):
        logging.vlog(1, "REST connection from %s failed", client_address, exc_info=True)

    def server_close(self):
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class RestServer:
    """An HTTP server answering TF Serving's REST API from ``registry``, on a thread of its own."""

    def __init__(self, registry: servables.ModelRegistry, host: str, port: int, *,
                 metrics: ServingMetrics | None = None, monitoring_path: str | None = None,
                 max_request_bytes: int = DEFAULT_MAX_TENSOR_BYTES, num_threads: int = 16,
                 timeout_s: float | None = 30.0):
        handler = type("RestApiHandler", (_RestApiHandler,), {
            "registry": registry, "metrics": metrics, "monitoring_path": monitoring_path,
            "max_request_bytes": max_request_bytes, "timeout": timeout_s})
        self._httpd = _PooledHTTPServer((host, port), handler, num_threads)
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
    metrics: ServingMetrics | None
    monitoring_path: str | None
    max_request_bytes: int
    # HTTP/1.0: a connection per request, so an idle keep-alive client cannot hold one of the pool's threads.
    server_version = "tfrecsys-serve"

    def do_GET(self):  # noqa: N802  (http.server's naming)
        path = urllib.parse.urlsplit(self.path).path
        if self.monitoring_path and path == self.monitoring_path and self.metrics is not None:
            self._reply_bytes(200, self.metrics.registry.prometheus_page().encode("utf-8"), "text/plain")
            return
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path
        started = time.perf_counter()
        api, model_name, status = None, "", grpc.StatusCode.OK
        try:
            length = self._content_length()
            if length > self.max_request_bytes:
                self.close_connection = True
                self._reply(413, {"error": f"Request body of {length} bytes is larger than the server's limit of "
                                           f"{self.max_request_bytes} bytes (tfrecsys-serve --max_request_bytes)"})
                return
            body = self.rfile.read(length)
            match = _MODEL_PATH.fullmatch(path)
            if match and method == "POST" and match["method"]:
                api, model_name = _API_BY_METHOD[match["method"]], match["name"]
            self._reply(200, handle(self.registry, method, path, body, self.timeout))
        except ServingError as error:
            status = error.code
            logging.info("REST %s %s failed: %s", method, path, error)
            self._reply(_HTTP_STATUS.get(error.code, 500), {"error": error.message})
        # Whatever goes wrong in one request must not stop the server answering the next.
        except Exception as error:  # noqa: BLE001
            status = grpc.StatusCode.INTERNAL
            logging.exception("REST %s %s failed", method, path)
            self._reply(500, {"error": f"{type(error).__name__}: {error}"})
        finally:
            if api and self.metrics is not None:
                self.metrics.record_request(model_name, api, "REST", status.name,
                                            (time.perf_counter() - started) * 1e6)

    def _content_length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Invalid Content-Length header") from error
        if length < 0:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Invalid Content-Length header")
        return length

    def _reply(self, status: int, payload: dict) -> None:
        self._reply_bytes(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _reply_bytes(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002  (http.server's signature)
        # http.server writes every request to stderr; keep that out of the server log unless asked for.
        logging.vlog(1, "REST %s", format % args)


def handle(registry: servables.ModelRegistry, method: str, path: str, body: bytes,
           timeout_s: float | None = None) -> dict:
    """The JSON answer to one REST request; raises ServingError for the error answers."""
    match = _MODEL_PATH.fullmatch(path)
    if match is None:
        code = grpc.StatusCode.INVALID_ARGUMENT if path.startswith("/v1/") else grpc.StatusCode.NOT_FOUND
        raise ServingError(code, f"Malformed request: {method} {path}")
    spec = model_pb2.ModelSpec(name=match["name"])
    if match["version"]:
        spec.version.value = int(match["version"])
    elif match["label"]:
        spec.version_label = match["label"]
    if method == "POST" and match["method"] == "predict":
        return _predict(registry, spec, body, timeout_s)
    if method == "POST" and match["method"] in ("classify", "regress"):
        return _classify_or_regress(registry, spec, match["method"], body, timeout_s)
    if method == "GET" and match["metadata"]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[servables.SIGNATURE_DEF_FIELD])
        return _to_json(servables.get_model_metadata(registry, request))
    if method == "GET" and not match["method"]:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        return _to_json(servables.get_model_status(registry, request))
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {path}")


def _to_json(message) -> dict:
    # TF Serving prints default values and proto field names ("model_version_status", "error_code": "OK").
    return json_format.MessageToDict(message, including_default_value_fields=True,
                                     preserving_proto_field_name=True)


def _parse_body(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise _invalid(f"JSON Parse error: {error}") from error
    if not isinstance(payload, dict):
        raise _invalid("JSON Parse error: the request body must be a JSON object")
    signature_name = payload.get("signature_name", servables.DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str):
        raise _invalid("'signature_name' key must be a string value.")
    return payload


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


def _predict(registry: servables.ModelRegistry, spec: model_pb2.ModelSpec, body: bytes,
             timeout_s: float | None) -> dict:
    """A :predict request: JSON to tensors typed by the signature, Predict, tensors back to JSON."""
    payload = _parse_body(body)
    signature_name = payload.get("signature_name", servables.DEFAULT_SIGNATURE)
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
    response = inference.run_predict(servable, request, registry.execute, _deadline(timeout_s),
                                     registry.max_request_bytes)
    outputs = {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}
    return _rows_json(outputs) if row_format else _columns_json(outputs)


def _input_array(alias: str, value, signature_def) -> np.ndarray:
    if alias not in signature_def.inputs:
        raise _invalid(f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set "
                       f"{{{','.join(sorted(signature_def.inputs))}}}.")
    try:
        return json_to_ndarray(alias, value, *tensor_spec(signature_def.inputs[alias]))
    except (ValueError, RecursionError) as error:
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


# --- :classify and :regress --------------------------------------------------------------------------------


def _classify_or_regress(registry: servables.ModelRegistry, spec: model_pb2.ModelSpec, method: str,
                         body: bytes, timeout_s: float | None) -> dict:
    """{"signature_name", "context", "examples"} → Classify/Regress → {"result": ...} (json_tensor.cc)."""
    payload = _parse_body(body)
    spec.signature_name = payload.get("signature_name", servables.DEFAULT_SIGNATURE)
    examples = payload.get("examples")
    if not isinstance(examples, list):
        raise _invalid("Expected 'examples' key to be a JSON array of objects (one tf.train.Example each)")
    request_input = input_pb2.Input()
    if "context" in payload:
        target = request_input.example_list_with_context
        target.context.CopyFrom(_example_from_json(payload["context"], "context"))
    else:
        target = request_input.example_list
    for index, example in enumerate(examples):
        target.examples.append(_example_from_json(example, f"examples[{index}]"))
    if method == "classify":
        request = classification_pb2.ClassificationRequest(model_spec=spec, input=request_input)
        result = servables.classify(registry, request, timeout_s).result
        return {"result": [[[one.label, _json_float(one.score)] for one in row.classes]
                           for row in result.classifications]}
    request = regression_pb2.RegressionRequest(model_spec=spec, input=request_input)
    result = servables.regress(registry, request, timeout_s).result
    return {"result": [_json_float(regression.value) for regression in result.regressions]}


def _json_float(value: float):
    # float32 → the shortest decimal that reads back to the same float32, as TF Serving prints it.
    return float(np.format_float_positional(np.float32(value), unique=True)) if math.isfinite(value) else str(value)


def _example_from_json(value, where: str) -> tf.train.Example:
    """A JSON object of feature → value or list of values as a tf.train.Example.

    Integers become int64_list, numbers with a fraction or exponent float_list, strings and {"b64": ...}
    bytes_list; one feature's values must share one of these kinds.
    """
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a JSON object of feature name to value(s)")
    example = tf.train.Example()
    for name, values in value.items():
        values = values if isinstance(values, list) else [values]
        kinds = {_value_kind(item) for item in values}
        if None in kinds:
            raise _invalid(f"{where}: feature {name} has a value that is not a number, string or b64 object")
        if len(kinds) > 1:
            if kinds != {"int", "float"}:
                raise _invalid(f"{where}: feature {name} mixes values of types {sorted(kinds)}")
            kinds = {"float"}
        feature = example.features.feature[name]
        kind = kinds.pop() if kinds else "float"
        if kind == "int":
            if any(not -2**63 <= item < 2**63 for item in values):
                raise _invalid(f"{where}: feature {name} has an integer outside int64")
            feature.int64_list.value.extend(values)
        elif kind == "float":
            feature.float_list.value.extend(values)
        else:
            try:
                feature.bytes_list.value.extend(base64.b64decode(item["b64"], validate=True) if isinstance(item, dict)
                                                else item.encode("utf-8") for item in values)
            except binascii.Error as error:
                raise _invalid(f"{where}: feature {name} has an invalid b64 value: {error}") from error
    return example


def _value_kind(item):
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return "int"
    if isinstance(item, float):
        return "float"
    if isinstance(item, str) or (isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str)):
        return "bytes"
    return None


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)
