"""tfrecsys-serve against hostile or careless clients and operators (issue 16).

Each test reproduces a failure seen in a hostile-client trial: REST bodies that exhausted memory, stalled
connections that held every REST thread, a version copied in file by file that never loaded, and answers
that differ from TF Serving's where clients match on them.
"""

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from tests.conftest import free_port, start_server, stop_server, wait_until_serving
from tests.contract_models import HISTORY_LEN, example_rows, export_contract_model, to_serving_inputs
from tfrecsys.serving.client import ServingClient
from tfrecsys.serving.server import ModelServer

MODEL = "contract"
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def contract_base(tmp_path_factory) -> str:
    base = str(tmp_path_factory.mktemp("hardening") / MODEL)
    export_contract_model(base, version=1)
    return base


def rest_call(port: int, path: str, body: bytes | None = None, timeout: float = TIMEOUT_S) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


# --- Slow clients --------------------------------------------------------------------------------------------


def test_stalled_rest_connections_neither_delay_a_status_get_nor_stay_open(contract_base):
    """16 connections that send half a head and stop (twice the default REST threads here) must not hold
    the threads that answer other clients, and are cut off after the head timeout."""
    with ModelServer(MODEL, contract_base, port=0, host="127.0.0.1", rest_api_port=free_port(),
                     file_system_poll_wait_seconds=0, rest_api_num_threads=2,
                     rest_api_header_timeout_in_ms=5000) as server:
        # One answered GET first: what a server's first request costs (its threads' start, the handler's first
        # run) is not what the stalled heads do to the next one. It took 1.03 s once in CI at load.
        assert rest_call(server.rest_api_port, f"/v1/models/{MODEL}")[0] == 200
        stalled = []
        for _ in range(16):
            connection = socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=TIMEOUT_S)
            connection.sendall(b"GET /v1/models/contract HTTP/1.1\r\nHost: x\r\n")
            stalled.append(connection)
        started = time.monotonic()
        status, answer = rest_call(server.rest_api_port, f"/v1/models/{MODEL}")
        waited = time.monotonic() - started
        assert status == 200 and answer["model_version_status"][0]["state"] == "AVAILABLE"
        # The issue's bound is 1 s. Queued behind the stalled heads, the GET would wait for their 5 s head
        # timeout, far beyond it; answered beside them it takes 4-9 ms (measured at load 6). A 1 s head timeout
        # made the two cases indistinguishable on a loaded machine (one CI run failed at 1.02 s).
        assert waited < 1.0, f"a status GET waited {waited:.2f} s behind stalled connections"
        for connection in stalled:  # the server closes them: recv sees the end of the stream
            connection.settimeout(TIMEOUT_S)
            assert connection.recv(1024) == b""
            connection.close()
        assert time.monotonic() - started < 15


# --- Memory per REST request -----------------------------------------------------------------------------


def columnar_body(target_bytes: int, seed: int, bad_last_user_id: bool) -> bytes:
    """A columnar :predict body of about ``target_bytes`` for the contract model (about 60 bytes a row)."""
    rng = np.random.default_rng(seed)
    rows = target_bytes // 60
    columns = {"user_id": rng.integers(0, 100_000, rows).tolist(),
               "item_id": rng.integers(0, 100_000, rows).tolist(),
               "price": rng.random(rows, dtype=np.float32).tolist(),
               "hist_item_id": rng.integers(0, 50, (rows, HISTORY_LEN)).tolist(),
               "hist_item_id_length": rng.integers(0, HISTORY_LEN + 1, rows).tolist()}
    if bad_last_user_id:
        columns["user_id"][-1] = 1.5  # the whole body is parsed before this fails the request
    return json.dumps({"inputs": columns}).encode()


def vm_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class PeakRss:
    """Samples a process's resident memory every 10 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, vm_rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, vm_rss_bytes(self.pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def concurrent_bodies_peak_rss(tmp_path, contract_base: str, body_bytes: int, extra_flags: list[str]) -> tuple:
    """Sends 4 bodies of ``body_bytes`` at once (two valid, two failing at their last value) to a fresh
    tfrecsys-serve with the default limits; returns (idle RSS, peak RSS, [(HTTP status, answer)])."""
    port, rest_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    process = start_server([f"--port={port}", f"--rest_api_port={rest_port}", f"--model_name={MODEL}",
                            f"--model_base_path={contract_base}", *extra_flags], log_path)
    bodies = [columnar_body(body_bytes, seed, bad_last_user_id=seed % 2 == 1) for seed in range(4)]
    answers = [None] * len(bodies)

    def send(index):
        answers[index] = rest_call(rest_port, f"/v1/models/{MODEL}:predict", bodies[index], timeout=300)

    try:
        wait_until_serving(process, f"127.0.0.1:{port}", MODEL, log_path)
        assert rest_call(rest_port, f"/v1/models/{MODEL}")[0] == 200
        time.sleep(0.5)  # let the freshly started server settle before its idle memory is read
        idle = vm_rss_bytes(process.pid)
        with PeakRss(process.pid) as rss:
            threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
        assert process.poll() is None
    finally:
        stop_server(process)
    return idle, rss.peak, answers


def check_answers(answers: list) -> None:
    for index, (status, answer) in enumerate(answers):
        if index % 2:
            assert status == 400, answer
            assert "user_id" in answer["error"] and "int64" in answer["error"]
        else:
            assert status == 200, answer
            assert np.isfinite(answer["outputs"]).all()


def test_four_concurrent_rest_bodies_are_decoded_one_budget_at_a_time(contract_base):
    """The fast form of the 60 MB acceptance test, in this process: 4 × 8 MB bodies at once against an
    in-flight budget of one body. Measured while this was written: +165 MiB before the fix (all four decoded
    at once, each at about 9× its size), +90 MiB after."""
    bodies = [columnar_body(8_000_000, seed, bad_last_user_id=seed % 2 == 1) for seed in range(4)]
    answers = [None] * len(bodies)
    with ModelServer(MODEL, contract_base, port=0, host="127.0.0.1", rest_api_port=free_port(),
                     file_system_poll_wait_seconds=0, max_request_bytes=10_000_000,
                     rest_api_max_in_flight_bytes=10_000_000) as server:

        def send(index):
            answers[index] = rest_call(server.rest_api_port, f"/v1/models/{MODEL}:predict", bodies[index])

        assert rest_call(server.rest_api_port, f"/v1/models/{MODEL}")[0] == 200
        idle = vm_rss_bytes(os.getpid())
        with PeakRss(os.getpid()) as rss:
            threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(TIMEOUT_S)
    check_answers(answers)
    grown = (rss.peak - idle) / 2**20
    print(f"RSS +{grown:.0f} MiB for 4 x 8 MB bodies")
    assert grown < 125, f"RSS grew by {grown:.0f} MiB for 4 x 8 MB bodies"


def test_a_body_that_cannot_get_into_the_budget_in_time_gets_429(contract_base):
    """Two clients hold the in-flight budget in turn by sending their bodies slowly; a third body waits
    unread behind them, then is read, thrown away and answered 429 in TF Serving's error format when the REST
    timeout passes."""
    with ModelServer(MODEL, contract_base, port=0, host="127.0.0.1", rest_api_port=free_port(),
                     file_system_poll_wait_seconds=0, max_request_bytes=1000, rest_api_max_in_flight_bytes=1000,
                     rest_api_timeout_in_ms=1000) as server:
        holders = []
        for _ in range(2):  # the first holds the budget for 1 s, then the second for 1 s more
            holder = socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=TIMEOUT_S)
            holder.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{{".encode())
            holders.append(holder)
            time.sleep(0.2)
        started = time.monotonic()
        status, answer = rest_call(server.rest_api_port, f"/v1/models/{MODEL}:predict", b" " * 600 + b"{}")
        assert status == 429, answer
        assert answer["error"].startswith("Request body of 602 bytes refused: the server holds its limit of 1000 "
                                          "bytes of REST requests in flight")
        assert 0.5 < time.monotonic() - started < 5
        for holder in holders:
            holder.close()
        assert rest_call(server.rest_api_port, f"/v1/models/{MODEL}")[0] == 200


@pytest.mark.slow
def test_four_concurrent_60mb_rest_bodies_add_under_1gb(tmp_path, contract_base):
    """The acceptance test, with the default limits: 4 × 60 MB bodies at once."""
    # Decoded one at a time, four 60 MB requests take longer than the default 30 s REST timeout here.
    idle, peak, answers = concurrent_bodies_peak_rss(tmp_path, contract_base, 60_000_000,
                                                     ["--rest_api_timeout_in_ms=600000"])
    check_answers(answers)
    grown = (peak - idle) / 2**20
    print(f"RSS idle {idle / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB (+{grown:.0f} MiB) for 4 x 60 MB bodies")
    assert grown < 1024, f"RSS grew by {grown:.0f} MiB for 4 x 60 MB bodies"


# --- Load retries -----------------------------------------------------------------------------------------


def copy_in_file_by_file(source: str, target: str, duration_s: float) -> None:
    """Copies a SavedModel directory in place as `cp -r` or rsync do: ``target`` appears first, then each file
    is written in two halves, the whole copy spread over ``duration_s``."""
    files = sorted(os.path.relpath(os.path.join(root, name), source)
                   for root, _, names in os.walk(source) for name in names)
    pause = duration_s / (2 * len(files))
    os.makedirs(target)
    for relative in files:
        destination = os.path.join(target, relative)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        with open(os.path.join(source, relative), "rb") as source_file:
            data = source_file.read()
        with open(destination, "wb") as destination_file:
            destination_file.write(data[:len(data) // 2])
            destination_file.flush()
            time.sleep(pause)
            destination_file.write(data[len(data) // 2:])
        time.sleep(pause)


def predict_request(rows, model: str = MODEL) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, value in to_serving_inputs(rows).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def serve_a_version_copied_in_file_by_file(tmp_path, copy_s: float, poll_s: float, retry_s: float,
                                           clients: int, **server_options) -> dict:
    """Serves version 1 to ``clients`` gRPC clients while version 2 is copied in file by file over ``copy_s``;
    returns what the clients and a status watcher saw."""
    base = str(tmp_path / MODEL)
    export_contract_model(base, version=1)
    staged = export_contract_model(str(tmp_path / "staging"), version=2, offset=0.5)
    request = predict_request(example_rows(4, seed=1))
    seen = {"failures": [], "first_v2": None, "states": set(), "errors": set()}
    lock = threading.Lock()
    stop = threading.Event()

    def client(port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    version = stub.Predict(request, timeout=TIMEOUT_S).model_spec.version.value
                except grpc.RpcError as error:
                    with lock:
                        seen["failures"].append(f"{error.code().name}: {error.details()}")
                    continue
                with lock:
                    if version == 2 and seen["first_v2"] is None:
                        seen["first_v2"] = time.monotonic()

    def status_watcher(port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            status_request = get_model_status_pb2.GetModelStatusRequest()
            status_request.model_spec.name = MODEL
            while not stop.is_set():
                for status in stub.GetModelStatus(status_request, timeout=TIMEOUT_S).model_version_status:
                    if status.version == 2:
                        name = get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
                        with lock:
                            seen["states"].add(name)
                            if status.status.error_message:
                                seen["errors"].add(status.status.error_message)
                time.sleep(0.05)

    with ModelServer(MODEL, base, port=0, host="127.0.0.1", file_system_poll_wait_seconds=poll_s,
                     load_retry_interval_micros=int(retry_s * 1e6), enable_model_warmup=False,
                     **server_options) as server:
        threads = [threading.Thread(target=client, args=(server.port,)) for _ in range(clients)]
        threads.append(threading.Thread(target=status_watcher, args=(server.port,)))
        for thread in threads:
            thread.start()
        try:
            copy_in_file_by_file(staged, os.path.join(base, "2"), copy_s)
            seen["copied"] = time.monotonic()
            deadline = seen["copied"] + 2 * poll_s + retry_s + 30
            while seen["first_v2"] is None and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            stop.set()
            for thread in threads:
                thread.join(TIMEOUT_S)
        seen["final"] = ServingClient(f"127.0.0.1:{server.port}").status(MODEL)
        seen["metrics"] = server.metrics.registry.prometheus_page()
    return seen


def check_copied_version_served(seen: dict, bound_s: float) -> float:
    assert seen["failures"] == []
    assert seen["first_v2"] is not None, f"version 2 never served; GetModelStatus saw {seen['states']}"
    delay = seen["first_v2"] - seen["copied"]
    assert delay < bound_s, f"version 2 served {delay:.2f} s after its copy ended (bound {bound_s:.2f} s)"
    assert seen["final"] == {2: "AVAILABLE", 1: "END"}
    # The retries were visible while they ran: LOADING with the last error and the retry count.
    assert "LOADING" in seen["states"] and any("retry 1 of" in error for error in seen["errors"]), seen["errors"]
    assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="' in seen["metrics"]
    assert 'status="fail"} ' in seen["metrics"]
    return delay


def test_a_version_copied_in_file_by_file_over_5s_is_served_within_two_polls_and_a_retry(tmp_path):
    """A 5 s copy under 16 clients, polls every 1 s, retries 1 s apart (10 retries cover the copy)."""
    poll_s, retry_s = 1.0, 1.0
    seen = serve_a_version_copied_in_file_by_file(tmp_path, copy_s=5.0, poll_s=poll_s, retry_s=retry_s,
                                                  clients=16, max_num_load_retries=10)
    delay = check_copied_version_served(seen, 2 * poll_s + retry_s)
    print(f"version 2 served {delay:.2f} s after the copy ended")


# --- TF Serving's answers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(contract_base):
    with ModelServer(MODEL, contract_base, port=0, host="127.0.0.1", rest_api_port=free_port(),
                     file_system_poll_wait_seconds=0, allow_config_reload_requests=False) as model_server:
        channel = grpc.insecure_channel(f"127.0.0.1:{model_server.port}")
        model_server.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        model_server.model_stub = model_service_pb2_grpc.ModelServiceStub(channel)
        yield model_server
        channel.close()


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT_S)
    return caught.value


def test_empty_model_name_is_invalid_argument_before_any_lookup(server):
    for call, request in (
            (server.predict_stub.Predict, predict_request(example_rows(2), model="")),
            (server.predict_stub.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec={"name": ""}, metadata_field=["signature_def"]))):
        error = rpc_error(call, request)
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")


def test_grpc_dtype_errors_use_tensorflow_dtype_names(server):
    request = predict_request(example_rows(2))
    request.inputs["price"].CopyFrom(tf.make_tensor_proto(np.array([0.5, 0.25], dtype=np.float64)))
    error = rpc_error(server.predict_stub.Predict, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Expects input price to be float but double is provided")


def test_inputs_of_different_batch_sizes_are_named(server):
    """The model fails deep inside on them (here ``Incompatible shapes``, in DIN a ConcatOp at some node);
    the answer says which inputs hold how many examples, over gRPC and REST alike."""
    request = predict_request(example_rows(2))
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(np.array([1, 2, 3], dtype=np.int64)))
    error = rpc_error(server.predict_stub.Predict, request)
    named = ("the inputs' first dimensions (batch sizes) differ (2: hist_item_id, hist_item_id_length, item_id, "
             "price; 3: user_id), one entry per example each. ")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(named), error.details()
    columns = {name: value.tolist() for name, value in to_serving_inputs(example_rows(2)).items()}
    status, answer = rest_call(server.rest_api_port, f"/v1/models/{MODEL}:predict",
                               json.dumps({"inputs": {**columns, "user_id": [1, 2, 3]}}).encode())
    assert status == 400 and answer["error"].startswith(named), answer


def test_rest_json_errors_use_tf_serving_wording(server):
    rows = example_rows(2, seed=4)
    columns = {name: value.tolist() for name, value in to_serving_inputs(rows).items()}
    instances = [{name: column[i] for name, column in columns.items()} for i in range(2)]

    def predict(payload) -> str:
        status, answer = rest_call(server.rest_api_port, f"/v1/models/{MODEL}:predict", json.dumps(payload).encode())
        assert status == 400, answer
        return answer["error"]

    assert predict({"inputs": {**columns, "price": ["cheap", "dear"]}}) == (
        'JSON Value: "cheap" Type: String is not of expected type: float (input: price)')
    assert predict({"inputs": {**columns, "user_id": [1, 2.5]}}) == (
        "JSON Value: 2.5 Type: Number is not of expected type: int64 (input: user_id)")
    assert predict({"inputs": {**columns, "price": [1, 16777217]}}) == (
        "Cannot convert JSON value: 16777217 to float without loss of precision. (input: price)")
    missing = {name: value for name, value in columns.items() if name != "item_id"}
    assert predict({"inputs": missing}) == "Missing named input: item_id in 'inputs' object."
    assert predict({"instances": [instances[0], {**instances[1], "user_id": 1.5}]}) == (
        "Failed to process element: 1 key: user_id of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1.5 "
        "Type: Number is not of expected type: int64")
    assert predict({"instances": [{**instances[0], "userid": 3}]}) == (
        "Failed to process element: 0 key: userid of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does "
        "not have named input: userid")
    both = predict({"instances": instances, "inputs": columns})
    assert both.startswith("JSON Value: {") and both.endswith(
        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
    assert predict({"instances": {}}).endswith("Excepting 'instances' to be an list/array")
    assert predict({"signature_name": 3, "inputs": columns}).endswith(
        "not formatted correctly. 'signature_name' key must be a string value.")


def test_config_reload_requests_can_be_refused(server):
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name="other", base_path="/", model_platform="tensorflow")
    error = rpc_error(server.model_stub.HandleReloadConfigRequest, request)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--allow_config_reload_requests=false" in error.details()
    assert ServingClient(f"127.0.0.1:{server.port}").status(MODEL) == {1: "AVAILABLE"}


def test_listening_beyond_loopback_logs_a_warning(contract_base, monkeypatch, caplog):
    from tfrecsys.serving import server as server_module

    with ModelServer(MODEL, contract_base, port=0, host="127.0.0.1", file_system_poll_wait_seconds=0):
        pass
    assert not [r for r in caplog.records if "beyond this machine" in r.getMessage()]
    # The test itself must not listen beyond loopback: the address is taken for a public one.
    monkeypatch.setattr(server_module, "_is_loopback", lambda host: False)
    with ModelServer(MODEL, contract_base, port=0, host="127.0.0.1", file_system_poll_wait_seconds=0):
        pass
    warnings = [r for r in caplog.records if "beyond this machine" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "HandleReloadConfigRequest can load any path" in warnings[0].getMessage()


def test_help_explains_the_hardening_flags_with_tf_serving_defaults(binary_help):
    result = binary_help["tfrecsys-serve"]
    assert result.returncode == 0, result.stderr
    for flag in ("rest_api_header_timeout_in_ms", "rest_api_max_in_flight_bytes", "max_num_load_retries",
                 "load_retry_interval_micros", "allow_config_reload_requests"):
        assert re.search(rf"^  --(\[no\])?{flag}: \w", result.stdout, re.MULTILINE), flag
    help_text = " ".join(result.stdout.split())
    assert "--max_num_load_retries: Maximum number" in help_text and "(default: '5')" in help_text
    assert "(default: '60000000')" in help_text
