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

Errors answer ``{"error": message}`` with the HTTP status TF Serving maps the gRPC code to, and the JSON
errors are worded as json_tensor.cc words them.

Hostile or careless clients are bounded. One selector thread accepts connections and reads each request
whole; only complete requests reach the pool of ``num_threads`` workers (``--rest_api_num_threads``), so
slow or stalled clients cost a socket each, never a worker. A client has ``header_timeout_s`` to send its
request head and ``timeout_s`` (``--rest_api_timeout_in_ms``, which also bounds the wait in a batching queue)
to send its body. A body larger than the request limit is refused with 413 before it is read, and the bodies
held at once (being received or answered) are bounded by ``max_in_flight_bytes``: a body that does not fit
waits unread, and if it cannot start within ``timeout_s`` it is read, thrown away and answered 429.
"""

import base64
import binascii
import collections
import concurrent.futures
import contextlib
import io
import json
import math
import re
import selectors
import socket
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
                                     model_pb2, regression_pb2)

from tfrecsys.serving import inference, servables
from tfrecsys.serving.errors import ServingError
from tfrecsys.serving.inference import DEFAULT_MAX_TENSOR_BYTES
from tfrecsys.serving.monitoring import ServingMetrics
from tfrecsys.serving.tensors import (JsonValueError, json_text, json_to_ndarray, ndarray_to_json, shape_text,
                                      tensor_spec)

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


# A request's head (request line and headers) may not exceed this; http.server refuses longer lines anyway.
_MAX_HEAD_BYTES = 64 * 1024
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
# How often the connection loop wakes up to cut off clients past their deadline.
_LOOP_TICK_S = 0.1
DEFAULT_HEADER_TIMEOUT_S = 5.0
# Connections still sending their request beyond this are refused at accept: each holds a socket, and the
# process shares its file descriptors (1024 by default) with TensorFlow.
MAX_PENDING_CONNECTIONS = 512


class _InFlightBytes:
    """The request body bytes the REST server holds at once (being received or being answered), bounded."""

    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def try_acquire(self, size: int) -> bool:
        with self._lock:
            if self._used + size > self.limit:
                return False
            self._used += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._used -= size


class _PendingRequest:
    """One connection's request while it arrives: the head until the blank line, then Content-Length bytes.

    Only complete requests reach a worker thread, so a client that sends slowly or stops holds a socket,
    never one of the ``num_threads`` workers. A body is only read once its size fits in the in-flight budget;
    until then the connection is not read at all (TCP holds the client back) and waits its turn.
    """

    def __init__(self, sock, address, now: float, header_timeout_s: float, body_timeout_s: float | None,
                 max_request_bytes: int):
        self.sock, self.address = sock, address
        self.deadline = now + header_timeout_s
        self._body_timeout_s = body_timeout_s
        self._max_request_bytes = max_request_bytes
        self.head = bytearray()
        self.length = 0  # the body size, once the head is complete
        self.body: bytearray | None = None
        self.reserved: _InFlightBytes | None = None  # holds ``length`` bytes of it until the answer is sent
        self.over_budget = False
        self._early_body = b""
        self._filled = 0
        self._to_discard = 0

    def read(self, now: float) -> str:
        """Reads what has arrived; returns "wait" (more to come), "budget" (the body must wait for room in
        the in-flight budget), "ready" (dispatch) or "closed" (drop)."""
        while True:
            try:
                if self.over_budget:
                    state = self._discard()
                elif self.body is not None:
                    state = self._receive_body()
                else:
                    state = self._receive_head(now)
            except (BlockingIOError, InterruptedError):
                return "wait"
            except OSError:
                return "closed"
            if state != "more":
                return state

    def _receive_head(self, now: float) -> str:
        data = self.sock.recv(65536)
        if not data:
            return "closed"
        self.head += data
        end = _HEAD_END.search(self.head)
        if end is None:
            # An endless head is answered (400/431 by http.server) rather than buffered without bound.
            return "ready" if len(self.head) > _MAX_HEAD_BYTES else "more"
        self._early_body = bytes(self.head[end.end():])
        del self.head[end.end():]
        length = _declared_length(self.head[:end.start()])
        # No body to read: none declared, an invalid length (answered 400) or one over the limit (413).
        if not length or length > self._max_request_bytes:
            return "ready"
        self.length = length
        self._restart_clock(now)
        return "budget"

    def _receive_body(self) -> str:
        received = self.sock.recv_into(memoryview(self.body)[self._filled:])
        if not received:
            return "closed"
        self._filled += received
        return "ready" if self._filled == len(self.body) else "more"

    def _discard(self) -> str:
        data = self.sock.recv(min(self._to_discard, 65536))
        if not data:
            return "closed"
        self._to_discard -= len(data)
        return "more" if self._to_discard else "ready"

    def start_body(self, in_flight: "_InFlightBytes", now: float) -> bool:
        """Takes the body's bytes from ``in_flight`` and starts receiving it; False when there is no room."""
        if not in_flight.try_acquire(self.length):
            return False
        self.reserved = in_flight
        self.body = bytearray(self.length)
        self._filled = min(len(self._early_body), self.length)
        self.body[:self._filled] = self._early_body[:self.length]
        self._early_body = b""
        self._restart_clock(now)
        return True

    def discard_body(self, now: float) -> bool:
        """Gives up waiting for room in the budget: the body is read and thrown away, so that the client,
        which sends it all before it reads an answer, gets its 429. Returns whether it is already read."""
        self.over_budget = True
        self._to_discard = self.length - min(len(self._early_body), self.length)
        self._early_body = b""
        self._restart_clock(now)
        return not self._to_discard

    def take_body(self) -> bytearray:
        """The body, handed over: the request keeps no reference, so the reader can free it once parsed."""
        body, self.body = self.body, None
        return body if body is not None else bytearray()

    def body_complete(self) -> bool:
        return self.body is not None and self._filled == len(self.body)

    def _restart_clock(self, now: float) -> None:
        self.deadline = now + self._body_timeout_s if self._body_timeout_s is not None else math.inf

    def release(self) -> None:
        if self.reserved is not None:
            self.reserved.release(self.length)
            self.reserved = None
        self.body = None


def _declared_length(head: bytes) -> int | None:
    """Content-Length of a request head: 0 when absent, None when not a non-negative integer."""
    match = _CONTENT_LENGTH.search(head)
    if match is None:
        return 0
    text = match.group(1).strip()
    return int(text) if text.isdigit() else None


class _SocketWriter(io.RawIOBase):
    """An unbuffered file over a socket whose writes send everything (a raw socket file may write part)."""

    def __init__(self, sock):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._sock.sendall(data)
        return len(data)


class _EventLoopHTTPServer(HTTPServer):
    """An HTTPServer that receives requests on one selector thread and answers them on a pool of threads.

    The selector thread accepts connections and reads each request whole (head within ``header_timeout_s``,
    body within ``body_timeout_s``; a client past its deadline is disconnected), so slow or stalled clients
    cost a socket each and never a worker. Request bodies held at once are bounded by ``max_in_flight_bytes``:
    a body that does not fit waits unread, in arrival order, and if it cannot start within ``body_timeout_s``
    it is read and thrown away, then answered 429.
    """

    def __init__(self, address, handler, num_threads: int, *, max_request_bytes: int,
                 max_in_flight_bytes: int, header_timeout_s: float, body_timeout_s: float | None):
        super().__init__(address, handler)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="rest")
        self.in_flight = _InFlightBytes(max_in_flight_bytes)
        self._max_request_bytes = max_request_bytes
        self._header_timeout_s = header_timeout_s
        self._body_timeout_s = body_timeout_s
        self._selector = selectors.DefaultSelector()
        self._wakeup_reader, self._wakeup_writer = socket.socketpair()
        self._wakeup_reader.setblocking(False)
        self._wakeup_writer.setblocking(False)
        self._stop = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float = _LOOP_TICK_S) -> None:
        self.socket.setblocking(False)
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._selector.register(self._wakeup_reader, selectors.EVENT_READ, self._wakeup_reader)
        receiving: dict[int, _PendingRequest] = {}
        waiting: collections.deque[_PendingRequest] = collections.deque()  # for room in the budget, in order
        try:
            while not self._stop.is_set():
                events = self._selector.select(timeout=poll_interval)
                now = time.monotonic()
                for key, _ in events:
                    if key.data is None:
                        self._accept(receiving, len(waiting), now)
                    elif key.data is self._wakeup_reader:
                        self._wakeup_reader.recv(4096)
                    else:
                        self._advance(receiving, waiting, key.data, now)
                while waiting and waiting[0].start_body(self.in_flight, now):
                    request = waiting.popleft()
                    if request.body_complete():
                        self._dispatch(request)
                    else:
                        receiving[request.sock.fileno()] = request
                        self._selector.register(request.sock, selectors.EVENT_READ, request)
                for request in [r for r in receiving.values() if r.deadline < now]:
                    logging.vlog(1, "REST client %s too slow sending its request: disconnected", request.address)
                    self._selector.unregister(request.sock)
                    del receiving[request.sock.fileno()]
                    self._close(request)
                for request in [r for r in waiting if r.deadline < now]:
                    waiting.remove(request)  # to be answered 429, its body thrown away as it arrives
                    if request.discard_body(now):
                        self._dispatch(request)
                    else:
                        receiving[request.sock.fileno()] = request
                        self._selector.register(request.sock, selectors.EVENT_READ, request)
        finally:
            for request in [*receiving.values(), *waiting]:
                self._close(request)
            self._selector.close()
            self._stopped.set()

    def _accept(self, receiving: dict, num_waiting: int, now: float) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                logging.vlog(1, "REST accept failed", exc_info=True)
                return
            if len(receiving) + num_waiting >= MAX_PENDING_CONNECTIONS:
                logging.log_every_n_seconds(logging.WARNING, "REST: %d connections are still sending their "
                                            "requests; refusing new ones such as %s", 10, MAX_PENDING_CONNECTIONS,
                                            address)
                sock.close()
                continue
            sock.setblocking(False)
            request = _PendingRequest(sock, address, now, self._header_timeout_s, self._body_timeout_s,
                                      self._max_request_bytes)
            receiving[sock.fileno()] = request
            self._selector.register(sock, selectors.EVENT_READ, request)

    def _advance(self, receiving: dict, waiting: collections.deque, request: _PendingRequest, now: float) -> None:
        state = request.read(now)
        if state == "wait":
            return
        self._selector.unregister(request.sock)
        del receiving[request.sock.fileno()]
        if state == "closed":
            self._close(request)
        elif state == "budget":
            waiting.append(request)
        else:
            self._dispatch(request)

    def _dispatch(self, request: _PendingRequest) -> None:
        request.sock.setblocking(True)
        self._pool.submit(self._handle, request)

    def _close(self, request: _PendingRequest) -> None:
        self._release(request)
        request.sock.close()

    def _release(self, request: _PendingRequest) -> None:
        """Returns the request's bytes to the budget and wakes the loop, which may have requests waiting."""
        if request.reserved is not None:
            request.release()
            with contextlib.suppress(OSError):
                self._wakeup_writer.send(b"\0")
        request.body = None

    def _handle(self, request: _PendingRequest) -> None:
        try:
            self.finish_request(request, request.address)
        except Exception:  # noqa: BLE001  (a broken connection ends that connection only)
            self.handle_error(request.sock, request.address)
        finally:
            self._release(request)
            self.shutdown_request(request.sock)

    def handle_error(self, request, client_address):
        logging.vlog(1, "REST connection from %s failed", client_address, exc_info=True)

    def shutdown(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wakeup_writer.send(b"\0")
        self._stopped.wait()

    def server_close(self):
        super().server_close()
        self._wakeup_reader.close()
        self._wakeup_writer.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class RestServer:
    """An HTTP server answering TF Serving's REST API from ``registry``, on a thread of its own."""

    def __init__(self, registry: servables.ModelRegistry, host: str, port: int, *,
                 metrics: ServingMetrics | None = None, monitoring_path: str | None = None,
                 max_request_bytes: int = DEFAULT_MAX_TENSOR_BYTES, num_threads: int = 16,
                 timeout_s: float | None = 30.0, max_in_flight_bytes: int | None = None,
                 header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S):
        max_in_flight_bytes = max_request_bytes if max_in_flight_bytes is None else max_in_flight_bytes
        if max_in_flight_bytes < max_request_bytes:
            raise ValueError(f"The REST in-flight byte limit ({max_in_flight_bytes}) must be at least the request "
                             f"size limit ({max_request_bytes}), or the largest requests could never be answered")
        handler = type("RestApiHandler", (_RestApiHandler,), {
            "registry": registry, "metrics": metrics, "monitoring_path": monitoring_path,
            "max_request_bytes": max_request_bytes, "timeout": timeout_s})
        self._httpd = _EventLoopHTTPServer(
            (host, port), handler, num_threads, max_request_bytes=max_request_bytes,
            max_in_flight_bytes=max_in_flight_bytes, header_timeout_s=header_timeout_s,
            body_timeout_s=timeout_s)
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
    """Answers one request that the connection loop has received whole (``self.request``, a _PendingRequest)."""

    registry: servables.ModelRegistry
    metrics: ServingMetrics | None
    monitoring_path: str | None
    max_request_bytes: int
    # HTTP/1.0: a connection per request, so an idle keep-alive client cannot hold one of the pool's threads.
    server_version = "tfrecsys-serve"

    def setup(self):
        self.pending: _PendingRequest = self.request
        self.request = self.connection = self.pending.sock
        self.connection.settimeout(self.timeout)  # bounds the writing of the answer
        self.rfile = io.BytesIO(bytes(self.pending.head))
        self.wfile = _SocketWriter(self.connection)

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
                self._reply(413, {"error": f"Request body of {length} bytes is larger than the server's limit of "
                                           f"{self.max_request_bytes} bytes (tfrecsys-serve --max_request_bytes)"})
                return
            if self.pending.over_budget:
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                    f"Request body of {length} bytes refused: the server holds its limit of "
                    f"{self.server.in_flight.limit} bytes of REST requests in flight; retry later "
                    "(tfrecsys-serve --rest_api_max_in_flight_bytes)"))
            match = _MODEL_PATH.fullmatch(path)
            if match and method == "POST" and match["method"]:
                api, model_name = _API_BY_METHOD[match["method"]], match["name"]
            # Encoded here, so an answer JSON cannot encode is this request's 500, like any other failure.
            reply = 200, _json_body(handle(self.registry, method, path, self.pending.take_body(), self.timeout))
        except ServingError as error:
            status = error.code
            logging.info("REST %s %s failed: %s", method, path, error)
            reply = _HTTP_STATUS.get(error.code, 500), _json_body({"error": error.message})
        # Whatever goes wrong in one request must not stop the server answering the next.
        except Exception as error:  # noqa: BLE001
            status = grpc.StatusCode.INTERNAL
            logging.exception("REST %s %s failed", method, path)
            reply = 500, _json_body({"error": f"{type(error).__name__}: {error}"})
        # Counted before the answer is written, as the gRPC API counts before it returns: a client that has its
        # answer finds it in the metrics.
        if api and self.metrics is not None:
            self.metrics.record_request(model_name, api, "REST", status.name, (time.perf_counter() - started) * 1e6)
        self._reply_bytes(*reply, "application/json")

    def _content_length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Invalid Content-Length header") from error
        if length < 0:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Invalid Content-Length header")
        return length

    def _reply(self, status: int, payload: dict) -> None:
        self._reply_bytes(status, _json_body(payload), "application/json")

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


def _json_body(payload: dict) -> bytes:
    return json.dumps(payload).encode("utf-8")


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
        payload = _parse_body(body)
        del body  # the caller passed its only reference: free the raw bytes before the work starts
        return _predict(registry, spec, payload, timeout_s)
    if method == "POST" and match["method"] in ("classify", "regress"):
        return _classify_or_regress(registry, spec, match["method"], _parse_body(body), timeout_s)
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
    """The JSON object of a request body, with json_tensor.cc's ParseJson and FillSignature errors."""
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as error:
        raise _invalid(f"JSON Parse error: {error.msg} at offset: {error.pos}") from error
    except (UnicodeDecodeError, RecursionError) as error:
        raise _invalid(f"JSON Parse error: {error}") from error
    if not isinstance(payload, dict):
        raise _invalid(f"JSON Value: {json_text(payload)} Is not object")
    if not isinstance(payload.get("signature_name", servables.DEFAULT_SIGNATURE), str):
        raise _invalid(f"JSON Value: {json_text(payload)} not formatted correctly. 'signature_name' key must be "
                       "a string value.")
    return payload


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


def _predict(registry: servables.ModelRegistry, spec: model_pb2.ModelSpec, payload: dict,
             timeout_s: float | None) -> dict:
    """A :predict request: JSON to arrays typed by the signature, Predict, arrays back to JSON.

    ``payload`` is emptied as its inputs become arrays, so the decoded JSON (several times the size of the
    body) is freed before the model runs.
    """
    signature_name = payload.get("signature_name", servables.DEFAULT_SIGNATURE)
    spec.signature_name = signature_name
    servable = registry.servable(spec)
    signature_def = servable.signature_defs.get(signature_name)
    if signature_def is None or signature_name not in servable.signatures:
        raise _invalid(f'Serving signature name: "{signature_name}" not found in signature def')
    row_format = "instances" in payload
    if row_format and "inputs" in payload:
        raise _invalid(f"JSON Value: {json_text(payload)} Not formatted correctly expecting only one of 'inputs' "
                       "or 'instances' keys to exist ")
    if row_format:
        inputs = _arrays_from_instances(payload, signature_def)
    elif "inputs" in payload:
        inputs = _arrays_from_inputs(payload, signature_def)
    else:
        raise _invalid("Missing 'inputs' or 'instances' key")
    payload.clear()
    _check_array_bytes(inputs, registry.max_request_bytes)
    outputs = inference.predict_arrays(servable, signature_name, inputs, execute=registry.execute,
                                       deadline=_deadline(timeout_s))
    del inputs
    return _rows_json(outputs) if row_format else _columns_json(outputs)


def _check_array_bytes(inputs: dict[str, np.ndarray], max_request_bytes: int) -> None:
    total = sum(array.nbytes if array.dtype != object else sum(len(item) for item in array.flat)
                for array in inputs.values())
    if total > max_request_bytes:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"Request tensors would take {total} bytes, more than the server's limit of {max_request_bytes} "
            "bytes (tfrecsys-serve --max_request_bytes)"))


def _arrays_from_inputs(payload: dict, signature_def) -> dict[str, np.ndarray]:
    """Columnar format: {input: whole tensor}, or the bare tensor when the signature has one input
    (FillTensorMapFromInputsMap: keys the signature does not have are ignored)."""
    inputs = payload.pop("inputs")
    if not _is_named_row(inputs):
        if len(signature_def.inputs) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                           "required as per tensorinfo_map")
        inputs = {next(iter(signature_def.inputs)): inputs}
    arrays = {}
    for alias in sorted(signature_def.inputs):
        if alias not in inputs:
            raise _invalid(f"Missing named input: {alias} in 'inputs' object.")
        try:
            arrays[alias] = json_to_ndarray(alias, inputs.pop(alias), *tensor_spec(signature_def.inputs[alias]))
        except (ValueError, RecursionError) as error:
            raise _invalid(str(error)) from error
    return arrays


def _arrays_from_instances(payload: dict, signature_def) -> dict[str, np.ndarray]:
    """Row format: a list of {input: value} objects, or of bare values when the signature has one input,
    checked in FillTensorMapFromInstancesList's order and words."""
    instances = payload.pop("instances")
    if not isinstance(instances, list):
        raise _invalid(f"JSON Value: {json_text(payload | {'instances': instances})} Excepting 'instances' to be "
                       "an list/array")
    if not instances:
        raise _invalid(f"JSON Value: {json_text(payload | {'instances': instances})} No values in 'instances' array")
    names = set(signature_def.inputs)
    if not _is_named_row(instances[0]):
        if len(names) > 1:
            raise _invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                           "required as per tensorinfo_map")
        for index, row in enumerate(instances):
            if _is_named_row(row):
                raise _invalid(f"Expecting value/list but got object at item {index} of input list")
        alias = next(iter(names))
        return {alias: _instances_column(alias, instances, signature_def, named=False)}
    for index, row in enumerate(instances):
        if not _is_named_row(row):
            raise _invalid(f"Expecting object but got list at item {index} of input list")
        unknown = sorted(set(row) - names)
        if unknown:
            raise _invalid(f"Failed to process element: {index} key: {unknown[0]} of 'instances' list. Error: "
                           f"INVALID_ARGUMENT: JSON object: does not have named input: {unknown[0]}")
        if set(row) != names:
            raise _invalid(f"Failed to process element: {index} of 'instances' list. JSON object: {json_text(row)} "
                           f"keys must be equal to: {','.join(sorted(names))}")
    columns = {}
    for alias in sorted(names):
        column = [row.pop(alias) for row in instances]
        columns[alias] = _instances_column(alias, column, signature_def, named=True)
    return columns


def _instances_column(alias: str, values: list, signature_def, named: bool) -> np.ndarray:
    """One input's values from every instance, batched; a failure names the first instance at fault."""
    dtype, shape = tensor_spec(signature_def.inputs[alias])
    try:
        return json_to_ndarray(alias, values, dtype, shape)
    except (ValueError, RecursionError) as column_error:
        where = f"key: {alias} " if named else ""
        first_shape = None
        for index, value in enumerate(values):
            try:
                row_shape = json_to_ndarray(alias, value, dtype, None).shape
            except JsonValueError as error:
                raise _invalid(f"Failed to process element: {index} {where}of 'instances' list. Error: "
                               f"INVALID_ARGUMENT: {error.message}") from error
            first_shape = row_shape if first_shape is None else first_shape
            if row_shape != first_shape:
                raise _invalid(f"Failed to process element: {index} {where}of 'instances' list. Error: "
                               f"INVALID_ARGUMENT: Expecting shape {shape_text(first_shape)} but got: "
                               f"{shape_text(row_shape)}") from column_error
        raise _invalid(str(column_error)) from column_error


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
                         payload: dict, timeout_s: float | None) -> dict:
    """{"signature_name", "context", "examples"} → Classify/Regress → {"result": ...} (json_tensor.cc)."""
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
