"""Serving the SavedModel contract over TF Serving's API: what a client of tfrecsys-serve relies on.

One tfrecsys-serve process (the installed console script) serves versions 1 and 2 of the contract model to
the whole module. Answers must equal the SavedModel called in process, come from the highest version, and
every bad request must fail with TF Serving's status code and a message naming what was wrong, without
stopping the server from answering the next request.
"""

import concurrent.futures
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc)

from tests.conftest import BIN, free_port, start_server, stop_server, wait_until_serving
from tests.contract_models import example_rows, export_contract_model, to_example, to_serving_inputs
from tfrecsys.serving import servables
from tfrecsys.serving.client import ServingClient
from tfrecsys.serving.config_files import read_batching_parameters, read_monitoring_config
from tfrecsys.serving.server import ModelServer

MODEL = "contract"
ROWS = 8
SERVING_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving")
SERVE_FLAGS = ("--port", "--rest_api_port", "--model_name", "--model_base_path", "--model_config_file",
               "--model_config_file_poll_wait_seconds", "--bind_address", "--file_system_poll_wait_seconds",
               "--enable_batching", "--batching_parameters_file", "--monitoring_config_file", "--grpc_max_threads",
               "--grpc_channel_arguments", "--rest_api_num_threads", "--rest_api_timeout_in_ms",
               "--max_request_bytes", "--saved_model_tags", "--enable_model_warmup")
QUERY_FLAGS = ("--server", "--model_name", "--model_version", "--signature_name", "--inputs", "--tfrecord",
               "--num_rows", "--output_filter", "--timeout", "--api")
CLI_TIMEOUT_S = 60


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """tfrecsys-serve over versions 1 and 2 (whose offset moves every score), with REST on."""
    workdir = tmp_path_factory.mktemp("serving")
    base = str(workdir / MODEL)
    v1 = export_contract_model(base, version=1, offset=0.0)
    v2 = export_contract_model(base, version=2, offset=0.5)
    port, rest_port = free_port(), free_port()
    log_path = str(workdir / "serve.log")
    process = start_server([f"--port={port}", f"--rest_api_port={rest_port}", f"--model_name={MODEL}",
                            f"--model_base_path={base}"], log_path)
    client = ServingClient(f"127.0.0.1:{port}")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_until_serving(process, f"127.0.0.1:{port}", MODEL, log_path)
        yield SimpleNamespace(
            port=port, rest_port=rest_port, base=base, workdir=workdir, client=client,
            predict_stub=prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_stub=model_service_pb2_grpc.ModelServiceStub(channel),
            v1=tf.saved_model.load(v1), v2=tf.saved_model.load(v2))
    finally:
        client.close()
        channel.close()
        stop_server(process)


@pytest.fixture(scope="module")
def rows():
    return example_rows(ROWS, seed=3)


def in_process(model, signature: str, inputs: dict) -> np.ndarray:
    return model.signatures[signature](**{name: tf.constant(value) for name, value in inputs.items()})["score"].numpy()


def predict_request(inputs: dict, signature: str = "serving_default", model: str = MODEL,
                    **model_spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for field, value in model_spec.items():
        if field == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, field, value)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def examples_input(rows) -> dict:
    return {"inputs": np.array([to_example(row) for row in rows], dtype=object)}


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


# --- Predict answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("signature", ["serving_default", "serving_examples"])
def test_predict_over_official_stub_equals_in_process_call(served, rows, signature):
    inputs = to_serving_inputs(rows) if signature == "serving_default" else examples_input(rows)
    response = served.predict_stub.Predict(predict_request(inputs, signature), timeout=10)
    scores = tf.make_ndarray(response.outputs["score"])
    expected = in_process(served.v2, signature, inputs)
    assert scores.dtype == np.float32 and scores.shape == (ROWS,)
    assert np.max(np.abs(scores - expected)) < 1e-5
    np.testing.assert_array_equal(scores, expected)  # no rounding anywhere on the way
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == (MODEL, 2, signature)


def test_both_signatures_score_the_same_rows_alike(served, rows):
    by_features = served.client.predict(MODEL, to_serving_inputs(rows))["score"]
    by_examples = served.client.predict(MODEL, examples_input(rows), signature_name="serving_examples")["score"]
    np.testing.assert_allclose(by_features, by_examples, atol=1e-6)


def test_highest_version_is_served_and_older_versions_are_not_loaded(served, rows):
    inputs = to_serving_inputs(rows)
    assert served.client.status(MODEL) == {2: "AVAILABLE"}
    scores = served.client.predict(MODEL, inputs)["score"]
    np.testing.assert_array_equal(scores, in_process(served.v2, "serving_default", inputs))
    assert np.min(np.abs(scores - in_process(served.v1, "serving_default", inputs))) > 1e-3
    np.testing.assert_array_equal(served.client.predict(MODEL, inputs, version=2)["score"], scores)
    error = rpc_error(served.predict_stub.Predict, predict_request(inputs, version=1))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"Servable not found for request: Specific({MODEL}, 1)"


def test_output_filter_is_honoured(multi_task_base, rows):
    """gRPC answers only the filtered outputs, each equal to the SavedModel's; REST (whose predict request
    has no output_filter in TF Serving's API) answers every output, by row and by column."""
    inputs = to_serving_inputs(rows)
    loaded = tf.saved_model.load(os.path.join(multi_task_base, "1"))
    expected = {name: value.numpy() for name, value in loaded.signatures["serving_default"](
        **{name: tf.constant(value) for name, value in inputs.items()}).items()}
    assert sorted(expected) == ["ctcvr", "ctr", "cvr"]
    rest_port = free_port()
    with ModelServer("multi_task", multi_task_base, port=0, host="127.0.0.1", rest_api_port=rest_port,
                     file_system_poll_wait_seconds=0) as server, \
            ServingClient(f"127.0.0.1:{server.port}") as client:
        for output_filter in (["cvr"], ["ctcvr", "ctr"], []):
            outputs = client.predict("multi_task", inputs, output_filter=output_filter)
            assert sorted(outputs) == sorted(output_filter or expected), output_filter
            for name, value in outputs.items():
                np.testing.assert_array_equal(value, expected[name])
        by_rows = rest(SimpleNamespace(rest_port=rest_port), "/v1/models/multi_task:predict",
                       {"instances": [{name: value[i].tolist() for name, value in inputs.items()}
                                      for i in range(ROWS)]})
        by_columns = rest(SimpleNamespace(rest_port=rest_port), "/v1/models/multi_task:predict",
                          {"inputs": {name: value.tolist() for name, value in inputs.items()}})
    assert by_rows[0] == by_columns[0] == 200
    for name, value in expected.items():
        np.testing.assert_array_equal(np.float32([row[name] for row in by_rows[1]["predictions"]]), value)
        np.testing.assert_array_equal(np.float32(by_columns[1]["outputs"][name]), value)


def test_concurrent_requests_get_their_own_answers(served):
    batches = [to_serving_inputs(example_rows(ROWS, seed=seed)) for seed in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda inputs: served.client.predict(MODEL, inputs)["score"], batches))
    for inputs, scores in zip(batches, answers, strict=True):
        np.testing.assert_array_equal(scores, in_process(served.v2, "serving_default", inputs))


# --- Metadata and status ----------------------------------------------------------------------------------


def test_metadata_lists_signature_inputs_with_dtypes_and_shapes(served):
    assert served.client.metadata(MODEL) == {
        "serving_default": {"user_id": (tf.int64, (None,)), "item_id": (tf.int64, (None,)),
                            "price": (tf.float32, (None,)), "hist_item_id": (tf.int64, (None, 4)),
                            "hist_item_id_length": (tf.int64, (None,))},
        "serving_examples": {"inputs": (tf.string, (None,))}}
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = served.predict_stub.GetModelMetadata(request, timeout=10)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    assert (response.model_spec.name, response.model_spec.version.value) == (MODEL, 2)
    default = signature_defs.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.outputs["score"].dtype == tf.float32.as_datatype_enum


def test_metadata_rejects_fields_other_than_signature_def(served):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    request.model_spec.name = MODEL
    error = rpc_error(served.predict_stub.GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Metadata field graph is not supported"


def test_status_reports_available_version(served):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = served.model_stub.GetModelStatus(request, timeout=10)
    [status] = response.model_version_status
    assert (status.version, status.state) == (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    request.model_spec.version.value = 1
    error = rpc_error(served.model_stub.GetModelStatus, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, f"Could not find version 1 of model {MODEL}")


# --- Bad requests -----------------------------------------------------------------------------------------


def test_unknown_model_is_not_found_on_every_api(served, rows):
    error = rpc_error(served.predict_stub.Predict, predict_request(to_serving_inputs(rows), model="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(nope)"
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "nope"
    assert rpc_error(served.predict_stub.GetModelMetadata, metadata).code() == grpc.StatusCode.NOT_FOUND
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"
    error = rpc_error(served.model_stub.GetModelStatus, status)
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope")


def test_missing_input_is_invalid_argument_naming_it(served, rows):
    inputs = to_serving_inputs(rows)
    del inputs["price"]
    error = rpc_error(served.predict_stub.Predict, predict_request(inputs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Missing but required: {price}" in error.details()


def test_unexpected_input_is_invalid_argument_naming_it(served, rows):
    extra = dict(to_serving_inputs(rows), user_age=np.ones(ROWS, np.int64))
    error = rpc_error(served.predict_stub.Predict, predict_request(extra))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Sent extra: {user_age}" in error.details()
    renamed = to_serving_inputs(rows)
    renamed["user_age"] = renamed.pop("user_id")
    error = rpc_error(served.predict_stub.Predict, predict_request(renamed))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("input tensor alias not found in signature: user_age.")


def test_wrong_dtype_is_invalid_argument_naming_the_input(served, rows):
    inputs = dict(to_serving_inputs(rows), user_id=np.arange(ROWS, dtype=np.float32))
    error = rpc_error(served.predict_stub.Predict, predict_request(inputs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expects input user_id to be int64 but float is provided"


def test_wrong_shape_is_invalid_argument_naming_the_input(served, rows):
    inputs = to_serving_inputs(rows)
    inputs["hist_item_id"] = inputs["hist_item_id"][:, :3]
    error = rpc_error(served.predict_stub.Predict, predict_request(inputs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hist_item_id has shape [8,3]" in error.details() and "[?,4]" in error.details()


def test_tensorflow_error_during_the_call_is_invalid_argument(served, rows):
    inputs = to_serving_inputs(rows)
    inputs["user_id"] = inputs["user_id"][:3]  # batch sizes disagree: only the graph can tell
    error = rpc_error(served.predict_stub.Predict, predict_request(inputs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Incompatible shapes" in error.details()


def test_unknown_signature_is_failed_precondition(served, rows):
    error = rpc_error(served.predict_stub.Predict, predict_request(to_serving_inputs(rows), "serving_nope"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'Serving signature key "serving_nope" not found.'


def test_unknown_output_filter_is_invalid_argument(served, rows):
    request = predict_request(to_serving_inputs(rows))
    request.output_filter.append("ctr")
    error = rpc_error(served.predict_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("output tensor alias not found in signature: ctr Outputs expected to be in the set "
                               "{score}.")


def test_server_keeps_serving_after_bad_requests(served, rows):
    garbage = predict_request(to_serving_inputs(rows))
    garbage.inputs["price"].tensor_content = b"\x00\x01\x02"  # not a whole number of float32s
    error = rpc_error(served.predict_stub.Predict, garbage)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: price")
    no_model_spec = rpc_error(served.predict_stub.Predict, predict_pb2.PredictRequest())
    assert (no_model_spec.code(), no_model_spec.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    inputs = to_serving_inputs(rows)
    np.testing.assert_array_equal(served.client.predict(MODEL, inputs)["score"],
                                  in_process(served.v2, "serving_default", inputs))


# --- REST API ---------------------------------------------------------------------------------------------


def rest(served, path: str, payload: dict | None = None) -> tuple[int, dict]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{served.rest_port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_rest_status_and_predict_match_the_in_process_call(served, rows):
    assert rest(served, f"/v1/models/{MODEL}") == (200, {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    inputs = to_serving_inputs(rows)
    expected = in_process(served.v2, "serving_default", inputs)
    instances = [{name: value[i].tolist() for name, value in inputs.items()} for i in range(ROWS)]
    status, answer = rest(served, f"/v1/models/{MODEL}:predict", {"instances": instances})
    assert status == 200
    np.testing.assert_array_equal(np.float32(answer["predictions"]), expected)
    columns = {name: value.tolist() for name, value in inputs.items()}
    status, answer = rest(served, f"/v1/models/{MODEL}/versions/2:predict", {"inputs": columns})
    assert status == 200
    np.testing.assert_array_equal(np.float32(answer["outputs"]), expected)
    status, metadata = rest(served, f"/v1/models/{MODEL}/metadata")
    assert status == 200 and "serving_examples" in metadata["metadata"]["signature_def"]["signature_def"]


def test_rest_errors_carry_tf_serving_http_codes_and_messages(served, rows):
    assert rest(served, "/v1/models/nope") == (404, {"error": "Could not find any versions of model nope"})
    columns = {name: value.tolist() for name, value in to_serving_inputs(rows).items()}
    columns["user_id"][0] = 1.5
    status, answer = rest(served, f"/v1/models/{MODEL}:predict", {"inputs": columns})
    assert status == 400 and "user_id" in answer["error"] and "int64" in answer["error"]
    status, answer = rest(served, f"/v1/models/{MODEL}:predict", {"signature_name": "nope", "inputs": columns})
    assert status == 400 and "nope" in answer["error"]


# --- The binaries -----------------------------------------------------------------------------------------


def test_query_with_json_inputs_prints_the_scores(served, rows):
    inputs = to_serving_inputs(rows)
    # Plain JSON numbers: the binary must type them from the model's metadata (int64, float32).
    result = run_cli("tfrecsys-query", f"--server=127.0.0.1:{served.port}", f"--model_name={MODEL}",
                     f"--inputs={json.dumps({name: value.tolist() for name, value in inputs.items()})}")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.float32(json.loads(result.stdout)["score"]),
                                  in_process(served.v2, "serving_default", inputs))


def test_query_with_tfrecord_sends_the_first_rows_to_the_examples_signature(served, rows):
    path = str(served.workdir / "rows.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for row in rows:
            writer.write(to_example(row))
    result = run_cli("tfrecsys-query", f"--server=127.0.0.1:{served.port}", f"--model_name={MODEL}",
                     f"--tfrecord={path}", "--num_rows=5", "--model_version=2")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.float32(json.loads(result.stdout)["score"]),
                                  in_process(served.v2, "serving_examples", examples_input(rows[:5])))


def test_query_warns_when_no_row_holds_a_sequence_input(served, rows):
    """Rows without a history (a per-user store's, as SIM's rows are) would be scored as empty histories:
    the query still answers, and says so on stderr; rows that hold it (even empty) raise no warning."""
    path = str(served.workdir / "rows_without_history.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for row in rows[:3]:
            example = tf.train.Example.FromString(to_example(row))
            del example.features.feature["hist_item_id"]
            writer.write(example.SerializeToString())
    result = run_cli("tfrecsys-query", f"--server=127.0.0.1:{served.port}", f"--model_name={MODEL}",
                     f"--tfrecord={path}")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["score"]) == 3
    assert "warning: none of the 3 rows" in result.stderr and "'hist_item_id'" in result.stderr, result.stderr
    with_empty = str(served.workdir / "rows_with_empty_history.tfrecord")
    with tf.io.TFRecordWriter(with_empty) as writer:
        for row in rows[:3]:
            writer.write(to_example({**row, "hist_item_id": []}))
    result = run_cli("tfrecsys-query", f"--server=127.0.0.1:{served.port}", f"--model_name={MODEL}",
                     f"--tfrecord={with_empty}")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_query_names_the_input_whose_value_does_not_fit(served):
    result = run_cli("tfrecsys-query", f"--server=127.0.0.1:{served.port}", f"--model_name={MODEL}",
                     '--inputs={"user_id": [1.5]}')
    assert result.returncode == 1
    assert "user_id" in result.stderr and "int64" in result.stderr


@pytest.mark.parametrize("binary, expected_flags", [("tfrecsys-serve", SERVE_FLAGS),
                                                    ("tfrecsys-query", QUERY_FLAGS)])
def test_help_explains_every_flag(binary, expected_flags, binary_help):
    result = binary_help[binary]
    assert result.returncode == 0, result.stderr
    for flag in expected_flags:
        # absl lists a flag as "--name: help", "--[no]name: help" for a bool, "--name: <a|b>: help" for an enum.
        assert re.search(rf"^  --(\[no\])?{flag[2:]}: [\w<]", result.stdout, re.MULTILINE), flag


def test_serve_without_a_version_fails_naming_the_path(tmp_path):
    empty_base = tmp_path / "no_versions"
    (empty_base / "not_a_version").mkdir(parents=True)
    result = subprocess.run([os.path.join(BIN, "tfrecsys-serve"), "--bind_address=127.0.0.1",
                             f"--port={free_port()}", f"--model_base_path={empty_base}"],
                            capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 1
    assert f"No versions of servable default found under base path {empty_base}" in result.stderr


def test_sigterm_stops_the_server_cleanly(served, tmp_path):
    port = free_port()
    process = start_server([f"--port={port}", f"--model_name={MODEL}", f"--model_base_path={served.base}"],
                           tmp_path / "serve.log")
    try:
        wait_until_serving(process, f"127.0.0.1:{port}", MODEL, tmp_path / "serve.log")
        with ServingClient(f"127.0.0.1:{port}") as client:
            assert client.status(MODEL) == {2: "AVAILABLE"}
    finally:
        returncode = stop_server(process)
    log = (tmp_path / "serve.log").read_text()
    assert returncode == 0, log
    assert f"Serving model {MODEL} version 2 from {served.base}/2 on 127.0.0.1:{port}" in log
    assert "Model server stopped" in log


# --- The library: version polling, config files, warmup ------------------------------------------------------


def export_atomically(base: str, version: int, offset: float) -> None:
    """Exports beside the base path and renames into it, as tfrecsys export does, so no poll sees half a model."""
    staging = export_contract_model(base + ".staging", version, offset)
    os.rename(staging, os.path.join(base, str(version)))


def test_new_version_replaces_the_old_one_while_serving(tmp_path, rows):
    base = str(tmp_path / MODEL)
    export_contract_model(base, version=1)
    inputs = to_serving_inputs(rows)
    with ModelServer(MODEL, base, port=0, host="127.0.0.1", file_system_poll_wait_seconds=0.05) as server, \
            ServingClient(f"127.0.0.1:{server.port}") as client:
        before = client.predict(MODEL, inputs)["score"]
        export_atomically(base, version=3, offset=0.5)
        assert client.wait_until_available(MODEL, timeout_s=60, version=3) == 3
        assert client.status(MODEL) == {3: "AVAILABLE", 1: "END"}
        after = client.predict(MODEL, inputs)["score"]
    np.testing.assert_array_equal(before, in_process(tf.saved_model.load(os.path.join(base, "1")),
                                                     "serving_default", inputs))
    np.testing.assert_array_equal(after, in_process(tf.saved_model.load(os.path.join(base, "3")),
                                                    "serving_default", inputs))
    assert np.min(np.abs(after - before)) > 1e-3


def test_a_busy_port_fails_the_start_instead_of_being_shared(tmp_path):
    base = str(tmp_path / MODEL)
    export_contract_model(base, version=1)
    with ModelServer(MODEL, base, port=0, host="127.0.0.1", file_system_poll_wait_seconds=0) as first, \
            pytest.raises(OSError, match=f"Could not listen for gRPC on 127.0.0.1:{first.port}"):
        ModelServer(MODEL, base, port=first.port, host="127.0.0.1", file_system_poll_wait_seconds=0).start()


def test_model_config_file_serves_version_policy_and_labels(tmp_path, rows):
    base = str(tmp_path / MODEL)
    export_contract_model(base, version=1)
    export_contract_model(base, version=2, offset=0.5)
    config_path = tmp_path / "models.config"
    config_path.write_text(f"""
        model_config_list {{
          config {{
            name: "{MODEL}"
            base_path: "{base}"
            model_platform: "tensorflow"
            model_version_policy {{ all {{}} }}
            version_labels {{ key: "stable" value: 1 }}
            version_labels {{ key: "canary" value: 2 }}
          }}
        }}""")
    config = servables.read_model_server_config(str(config_path))
    inputs = to_serving_inputs(rows)
    with ModelServer(model_config=config, port=0, host="127.0.0.1", file_system_poll_wait_seconds=0) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        by_label = {label: stub.Predict(predict_request(inputs, version_label=label), timeout=10)
                    for label in ("stable", "canary")}
        error = rpc_error(stub.Predict, predict_request(inputs, version_label="beta"))
        channel.close()
        assert server.registry.version_states(MODEL) == [(2, servables.State.AVAILABLE, ""),
                                                         (1, servables.State.AVAILABLE, "")]
    assert {label: answer.model_spec.version.value for label, answer in by_label.items()} == {"stable": 1,
                                                                                              "canary": 2}
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Unrecognized servable version label: beta")


def test_shipped_models_config_is_a_valid_model_server_config():
    config = servables.read_model_server_config(os.path.join(SERVING_DIR, "models.config"))
    [model] = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("dnn", "/models/dnn", "tensorflow")


SHIPPED_CONFIG_FILES = ("models.config", "batching_parameters.txt", "monitoring.config")
REAL_SERVER_FLAGS = ("--model_config_file=/config/models.config", "--enable_batching=true",
                     "--batching_parameters_file=/config/batching_parameters.txt",
                     "--monitoring_config_file=/config/monitoring.config")


def test_deployment_manifests_give_the_real_server_the_shipped_config():
    """docker-compose and Kubernetes must mount the export where models.config says and pass the three shipped
    config files (the very files tfrecsys-serve reads in test_serving_conformance.py)."""
    shipped = {}
    for name in SHIPPED_CONFIG_FILES:
        with open(os.path.join(SERVING_DIR, name)) as config_file:
            shipped[name] = config_file.read()
    with open(os.path.join(SERVING_DIR, "docker-compose.yml")) as compose_file:
        [service] = yaml.safe_load(compose_file)["services"].values()
    assert set(REAL_SERVER_FLAGS) <= set(service["command"])
    assert {volume.split(":")[0] for volume in service["volumes"][1:]} == {f"./{n}" for n in SHIPPED_CONFIG_FILES}
    assert {volume.rsplit(":", 2)[1] for volume in service["volumes"]} == {
        "/models/dnn", *(f"/config/{name}" for name in SHIPPED_CONFIG_FILES)}
    with open(os.path.join(SERVING_DIR, "k8s", "tf-serving.yaml")) as manifest_file:
        manifests = {document["kind"]: document for document in yaml.safe_load_all(manifest_file)}
    assert manifests["ConfigMap"]["data"] == shipped
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert set(REAL_SERVER_FLAGS) <= set(container["args"])
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/config", "/models/dnn"}
    assert container["readinessProbe"]["httpGet"]["path"].startswith("/v1/models/dnn")
    annotations = manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == read_monitoring_config(os.path.join(SERVING_DIR, "monitoring.config"))


def test_shipped_batching_and_monitoring_files_parse_as_tf_serving_protos():
    batching = read_batching_parameters(os.path.join(SERVING_DIR, "batching_parameters.txt"))
    assert (batching.max_batch_size, batching.batch_timeout_micros, batching.max_enqueued_batches,
            batching.num_batch_threads) == (1024, 2000, 64, 2)
    assert read_monitoring_config(os.path.join(SERVING_DIR, "monitoring.config")) == "/monitoring/prometheus/metrics"


def write_warmup_requests(version_dir: str, requests: list[predict_pb2.PredictRequest]) -> None:
    os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(version_dir, servables.WARMUP_REQUESTS_FILE)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())


def test_warmup_requests_are_replayed_and_a_failing_one_fails_the_load(tmp_path, rows):
    good = export_contract_model(str(tmp_path / "good"), version=1)
    write_warmup_requests(good, [predict_request(to_serving_inputs(rows)),
                                 predict_request(examples_input(rows), "serving_examples")])
    assert servables.replay_warmup_requests(servables.load_servable(MODEL, 1, good, enable_model_warmup=False)) == 2
    bad = export_contract_model(str(tmp_path / "bad"), version=1)
    inputs = to_serving_inputs(rows)
    del inputs["price"]
    write_warmup_requests(bad, [predict_request(inputs)])
    with pytest.raises(servables.ModelLoadError,
                       match=r"Warmup request 1 of .* failed.*Missing but required: \{price\}"):
        servables.load_servable(MODEL, 1, bad)
