"""Conformance of tfrecsys-serve with what users rely on in TF Serving, through the official
tensorflow-serving-api stubs and plain HTTP only.

One tfrecsys-serve process, launched the way tensorflow_model_server is launched in serving/ (same flags, the
shipped batching_parameters.txt and monitoring.config), serves a model config with three models and three
version policies:

    dnn              policy all {}        versions 1, 2   labels stable → 1, canary → 2   (export contract)
    contract         policy latest 1      versions 1, 2 on disk, 2 served                 (hand-written)
    contract_pinned  policy specific {1}  the same base path, 1 served
    multi_task       default policy       version 1, outputs ctr, cvr, ctcvr              (hand-written)

Answers must equal the SavedModel called in this process; errors must carry TF Serving's status codes and
messages; no request may stop the server from answering the next. Reload and version polling are in
test_serving_lifecycle.py, the load test in test_serving_load.py.
"""

import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, input_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from tests.conftest import BIN, free_port, start_server, stop_server, wait_until_serving
from tests.contract_models import example_rows, export_contract_model, to_example
from tests.serving_dnn import dnn_schema, export_dnn, synthetic_examples

SERVING_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving")
METRICS_PATH = "/monitoring/prometheus/metrics"  # serving/monitoring.config
MAX_BATCH_SIZE = 1024  # serving/batching_parameters.txt
MAX_REQUEST_BYTES = 4 * 2**20
ROWS = 6
TIMEOUT_S = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory, multi_task_base):
    root = tmp_path_factory.mktemp("conformance")
    dnn_base, contract_base = str(root / "dnn"), str(root / "contract")
    dnn_v1, dnn_v2 = export_dnn(str(root), "dnn", 1, seed=1), export_dnn(str(root), "dnn", 2, seed=2)
    contract_v1 = export_contract_model(contract_base, version=1, offset=0.0)
    contract_v2 = export_contract_model(contract_base, version=2, offset=0.5)
    config_path = root / "models.config"
    config_path.write_text(f"""
        model_config_list {{
          config {{ name: "dnn" base_path: "{dnn_base}" model_platform: "tensorflow"
                   model_version_policy {{ all {{}} }}
                   version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }}
          config {{ name: "contract" base_path: "{contract_base}" model_platform: "tensorflow"
                   model_version_policy {{ latest {{ num_versions: 1 }} }} }}
          config {{ name: "contract_pinned" base_path: "{contract_base}" model_platform: "tensorflow"
                   model_version_policy {{ specific {{ versions: 1 }} }} }}
          config {{ name: "multi_task" base_path: "{multi_task_base}" model_platform: "tensorflow" }}
        }}""")
    port, rest_port = free_port(), free_port()
    log_path = root / "serve.log"
    process = start_server([
        f"--port={port}", f"--rest_api_port={rest_port}", f"--model_config_file={config_path}",
        "--file_system_poll_wait_seconds=1", "--enable_batching",
        f"--batching_parameters_file={os.path.join(SERVING_DIR, 'batching_parameters.txt')}",
        f"--monitoring_config_file={os.path.join(SERVING_DIR, 'monitoring.config')}",
        f"--max_request_bytes={MAX_REQUEST_BYTES}"], log_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)])
    try:
        for model in ("dnn", "contract", "contract_pinned", "multi_task"):
            wait_until_serving(process, f"127.0.0.1:{port}", model, log_path)
        yield SimpleNamespace(
            process=process, port=port, rest_port=rest_port, root=root, log_path=log_path, channel=channel,
            multi_task_base=multi_task_base,
            predict=prediction_service_pb2_grpc.PredictionServiceStub(channel),
            models=model_service_pb2_grpc.ModelServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            dnn={1: tf.saved_model.load(dnn_v1), 2: tf.saved_model.load(dnn_v2)},
            contract={1: tf.saved_model.load(contract_v1), 2: tf.saved_model.load(contract_v2)})
    finally:
        channel.close()
        stop_server(process)


@pytest.fixture(scope="module")
def rows():
    """Serialized examples for the dnn (training rows, labels included, as a TFRecord would hold them)."""
    return synthetic_examples(dnn_schema(), ROWS, seed=11)


def dnn_features(rows) -> dict:
    return {name: value.numpy() for name, value in
            dnn_schema().parse_examples(tf.constant(rows), with_labels=False, serving=True).items()}


def in_process(model, rows) -> np.ndarray:
    return model.signatures["serving_examples"](inputs=tf.constant(rows))["score"].numpy()


def spec(request, model="dnn", signature=None, version=None, label=None):
    request.model_spec.name = model
    if signature is not None:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return request


def predict_request(inputs: dict, **model_spec) -> predict_pb2.PredictRequest:
    request = spec(predict_pb2.PredictRequest(), **model_spec)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def example_input(rows, context: bytes | None = None) -> input_pb2.Input:
    examples = [tf.train.Example.FromString(row) for row in rows]
    if context is None:
        return input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples))
    return input_pb2.Input(example_list_with_context=input_pb2.ExampleListWithContext(
        examples=examples, context=tf.train.Example.FromString(context)))


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT_S)
    return caught.value


def rest(server, path: str, payload=None, data: bytes | None = None) -> tuple[int, dict | str]:
    body = data if data is not None else (None if payload is None else json.dumps(payload).encode())
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=body)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if response.headers["Content-Type"] == "application/json" else text
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


# --- Predict, Classify, Regress, MultiInference -------------------------------------------------------------


@pytest.mark.parametrize("route, version", [({}, 2), ({"version": 1}, 1), ({"label": "stable"}, 1),
                                            ({"label": "canary"}, 2)])
def test_predict_by_latest_version_and_label(server, rows, route, version):
    response = server.predict.Predict(predict_request(dnn_features(rows), **route), timeout=TIMEOUT_S)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["score"]), in_process(server.dnn[version], rows),
                               atol=1e-6)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("dnn", version, "serving_default")


def test_predict_examples_signature_and_output_filter(server, rows):
    request = predict_request({"inputs": np.array(rows, dtype=object)}, signature="serving_examples")
    request.output_filter.append("score")
    response = server.predict.Predict(request, timeout=TIMEOUT_S)
    assert list(response.outputs) == ["score"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["score"]), in_process(server.dnn[2], rows), atol=1e-6)
    # A model with several outputs, through the batching queue: only the filtered ones come back.
    examples = np.array([to_example(row) for row in example_rows(ROWS, seed=4)], dtype=object)
    expected = tf.saved_model.load(os.path.join(server.multi_task_base, "1")).signatures["serving_examples"](
        inputs=tf.constant(examples))
    for output_filter in (["cvr"], ["ctcvr", "ctr"]):
        request = predict_request({"inputs": examples}, model="multi_task", signature="serving_examples")
        request.output_filter.extend(output_filter)
        response = server.predict.Predict(request, timeout=TIMEOUT_S)
        assert sorted(response.outputs) == sorted(output_filter)
        for name in output_filter:
            np.testing.assert_array_equal(tf.make_ndarray(response.outputs[name]), expected[name].numpy())


def test_classify_answers_one_class_per_row_scored_by_the_model(server, rows):
    request = spec(classification_pb2.ClassificationRequest(input=example_input(rows)), signature="classify_score")
    response = server.predict.Classify(request, timeout=TIMEOUT_S)
    scores = [[one.score for one in row.classes] for row in response.result.classifications]
    np.testing.assert_allclose(np.array(scores)[:, 0], in_process(server.dnn[2], rows), atol=1e-6)
    assert all(len(row.classes) == 1 and row.classes[0].label == "" for row in response.result.classifications)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("dnn", 2, "classify_score")


def test_regress_by_label_and_with_a_context_example(server, rows):
    """ExampleListWithContext: the context's features are merged into every example (the example wins)."""
    request = spec(regression_pb2.RegressionRequest(input=example_input(rows)), signature="regress_score",
                   label="stable")
    response = server.predict.Regress(request, timeout=TIMEOUT_S)
    expected = in_process(server.dnn[1], rows)
    np.testing.assert_allclose([r.value for r in response.result.regressions], expected, atol=1e-6)
    assert response.model_spec.version.value == 1
    user_features = {"user_id", "user_activity", "hist_item_id", "hist_category"}
    context = tf.train.Example.FromString(rows[0])
    items_only = []
    for row in rows:
        example = tf.train.Example.FromString(row)
        for name in user_features:
            del example.features.feature[name]
        items_only.append(example.SerializeToString())
    for name in list(context.features.feature):
        if name not in user_features:
            del context.features.feature[name]
    request = spec(regression_pb2.RegressionRequest(input=example_input(items_only, context.SerializeToString())),
                   signature="regress_score")
    merged = [context.SerializeToString() + row for row in items_only]
    values = [r.value for r in server.predict.Regress(request, timeout=TIMEOUT_S).result.regressions]
    np.testing.assert_allclose(values, in_process(server.dnn[2], merged), atol=1e-6)


def test_multi_inference_runs_classify_and_regress_on_one_input(server, rows):
    request = inference_pb2.MultiInferenceRequest(input=example_input(rows))
    for signature, method in (("classify_score", "tensorflow/serving/classify"),
                              ("regress_score", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        spec(task, signature=signature)
    response = server.predict.MultiInference(request, timeout=TIMEOUT_S)
    expected = in_process(server.dnn[2], rows)
    classified, regressed = response.results
    np.testing.assert_allclose([row.classes[0].score for row in classified.classification_result.classifications],
                               expected, atol=1e-6)
    np.testing.assert_allclose([r.value for r in regressed.regression_result.regressions], expected, atol=1e-6)
    assert [(r.model_spec.signature_name, r.model_spec.version.value) for r in response.results] == [
        ("classify_score", 2), ("regress_score", 2)]


def test_metadata_lists_every_signature_with_its_method(server):
    request = spec(get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]))
    response = server.predict.GetModelMetadata(request, timeout=TIMEOUT_S)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    methods = {name: d.method_name for name, d in signature_defs.signature_def.items() if not name.startswith("__")}
    assert methods == {"serving_default": "tensorflow/serving/predict",
                       "serving_examples": "tensorflow/serving/predict",
                       "classify_score": "tensorflow/serving/classify",
                       "regress_score": "tensorflow/serving/regress"}


@pytest.mark.parametrize("model, states", [("dnn", {2: "AVAILABLE", 1: "AVAILABLE"}), ("contract", {2: "AVAILABLE"}),
                                           ("contract_pinned", {1: "AVAILABLE"})])
def test_status_follows_each_version_policy(server, model, states):
    request = spec(get_model_status_pb2.GetModelStatusRequest(), model)
    response = server.models.GetModelStatus(request, timeout=TIMEOUT_S)
    assert {s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
            for s in response.model_version_status} == states


# --- TF Serving's status codes and messages -----------------------------------------------------------------


def bad_predict_cases(rows):
    features = dnn_features(rows)
    missing = dict(features)
    del missing["item_price"]
    extra = dict(features, user_age=np.ones(ROWS, np.int64))
    wrong_dtype = dict(features, user_id=features["user_id"].astype(np.float32))
    wrong_shape = dict(features, hist_item_id=features["hist_item_id"][:, :3])
    return [
        ("unknown model", predict_request(features, model="nope"), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(nope)"),
        ("unknown version", predict_request(features, version=7), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Specific(dnn, 7)"),
        ("unknown label", predict_request(features, label="beta"), grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: beta"),
        ("unknown signature", predict_request(features, signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "nope" not found.'),
        ("missing input", predict_request(missing), grpc.StatusCode.INVALID_ARGUMENT,
         "Missing but required: {item_price}."),
        ("unknown input", predict_request(extra), grpc.StatusCode.INVALID_ARGUMENT, "Sent extra: {user_age}."),
        ("wrong dtype", predict_request(wrong_dtype), grpc.StatusCode.INVALID_ARGUMENT,
         "Expects input user_id to be int64 but float is provided"),
        ("wrong shape", predict_request(wrong_shape), grpc.StatusCode.INVALID_ARGUMENT,
         f"Input hist_item_id has shape [{ROWS},3], which the signature's shape [?,20] does not accept"),
    ]


def test_bad_predict_requests_get_tf_serving_codes_and_messages(server, rows):
    for case, request, code, message in bad_predict_cases(rows):
        error = rpc_error(server.predict.Predict, request)
        assert (error.code(), message in error.details()) == (code, True), (case, error.details())


def test_bad_classify_regress_and_multi_inference_requests(server, rows):
    def classify(**model_spec):
        return spec(classification_pb2.ClassificationRequest(input=example_input(rows)), **model_spec)

    cases = [
        (server.predict.Classify, classify(signature="serving_default"), grpc.StatusCode.INVALID_ARGUMENT,
         "Expected classification signature method_name to be tensorflow/serving/classify. "
         "Was: tensorflow/serving/predict"),
        (server.predict.Classify, classify(signature="nope"), grpc.StatusCode.INVALID_ARGUMENT,
         "No signature was found with the name: nope"),
        (server.predict.Classify, classify(), grpc.StatusCode.INVALID_ARGUMENT,
         "Expected classification signature method_name"),
        (server.predict.Regress, spec(regression_pb2.RegressionRequest(input=example_input(rows)),
                                      signature="classify_score"), grpc.StatusCode.INVALID_ARGUMENT,
         "Expected regression signature method_name to be tensorflow/serving/regress. Was: "
         "tensorflow/serving/classify"),
        (server.predict.Regress, spec(regression_pb2.RegressionRequest(), signature="regress_score"),
         grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."),
        (server.predict.Classify, classify(model="contract", signature="serving_examples"),
         grpc.StatusCode.INVALID_ARGUMENT, "Was: tensorflow/serving/predict"),
    ]
    duplicate = inference_pb2.MultiInferenceRequest(input=example_input(rows))
    for _ in range(2):
        spec(duplicate.tasks.add(method_name="tensorflow/serving/regress"), signature="regress_score")
    cases.append((server.predict.MultiInference, duplicate, grpc.StatusCode.INVALID_ARGUMENT,
                  "Duplicate evaluation of signature: regress_score"))
    unsupported = inference_pb2.MultiInferenceRequest(input=example_input(rows))
    spec(unsupported.tasks.add(method_name="tensorflow/serving/predict"), signature="serving_examples")
    cases.append((server.predict.MultiInference, unsupported, grpc.StatusCode.UNIMPLEMENTED,
                  "Unsupported signature method_name: tensorflow/serving/predict"))
    two_models = inference_pb2.MultiInferenceRequest(input=example_input(rows))
    spec(two_models.tasks.add(method_name="tensorflow/serving/regress"), signature="regress_score")
    spec(two_models.tasks.add(method_name="tensorflow/serving/regress"), model="contract", signature="x")
    cases.append((server.predict.MultiInference, two_models, grpc.StatusCode.INVALID_ARGUMENT,
                  "All ModelSpecs in a MultiInferenceRequest must access the same model name."))
    for call, request, code, message in cases:
        error = rpc_error(call, request)
        assert (error.code(), message in error.details()) == (code, True), error.details()


def test_request_size_limits(server, rows):
    huge = predict_request(dnn_features(rows))
    huge.inputs["item_price"].tensor_shape.dim[0].size = 10**12  # 4 TB declared by a few bytes of proto
    error = rpc_error(server.predict.Predict, huge)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "item_price" in error.details()
    too_big = predict_request({"inputs": np.array([b"x" * (MAX_REQUEST_BYTES + 1)], dtype=object)},
                              signature="serving_examples")
    assert rpc_error(server.predict.Predict, too_big).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    too_many_rows = predict_request({"inputs": np.array(rows * (MAX_BATCH_SIZE // ROWS + 1), dtype=object)},
                                    signature="serving_examples")
    error = rpc_error(server.predict.Predict, too_many_rows)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (f"Task size {ROWS * (MAX_BATCH_SIZE // ROWS + 1)} is larger than maximum input "
                               f"batch size {MAX_BATCH_SIZE}")
    # Refused from the Content-Length header alone, before the body is read.
    reply = raw_http(server, f"POST /v1/models/dnn:predict HTTP/1.1\r\nContent-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n")
    assert reply.startswith("HTTP/1.0 413") and "--max_request_bytes" in reply


def raw_http(server, request: str) -> str:
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=TIMEOUT_S) as connection:
        connection.sendall(request.encode())
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return reply.decode()


def test_no_request_crashes_the_server(server, rows):
    """Garbage bytes on every RPC, mangled tensors, hostile JSON and HTTP: each fails alone."""
    rng = np.random.default_rng(0)
    for method in ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata"):
        call = server.channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}")
        for _ in range(40):
            try:
                call(rng.bytes(int(rng.integers(1, 300))), timeout=TIMEOUT_S)
            except grpc.RpcError as error:
                assert error.code() != grpc.StatusCode.UNAVAILABLE, error.details()
    valid = predict_request(dnn_features(rows)).SerializeToString()
    predict = server.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    for _ in range(200):
        mangled = bytearray(valid)
        for position in rng.integers(0, len(mangled), 4):
            mangled[position] = int(rng.integers(0, 256))
        try:
            predict(bytes(mangled), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            assert error.code() != grpc.StatusCode.UNAVAILABLE, error.details()
    for body in (b"{" * 100_000, b"\xff\xfe", b'{"instances": [[[[' + b"1" * 10 + b"]]]]}", b"[]",
                 json.dumps({"inputs": {"user_id": [1e400]}}).encode(), b'{"examples": [{"a": {"b64": "!"}}]}'):
        for path in ("/v1/models/dnn:predict", "/v1/models/dnn:classify", "/v1/models/dnn:regress"):
            status, answer = rest(server, path, data=body)
            assert 400 <= status < 500 and "error" in answer, (path, body[:20], status, answer)
    assert raw_http(server, "POST /v1/models/dnn:predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n").startswith(
        "HTTP/1.0 400")
    assert "400 - Bad request syntax" in raw_http(server, "GARBAGE\r\n\r\n")
    assert server.process.poll() is None
    response = server.predict.Predict(predict_request(dnn_features(rows)), timeout=TIMEOUT_S)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["score"]), in_process(server.dnn[2], rows), atol=1e-6)


# --- REST ---------------------------------------------------------------------------------------------------


def test_rest_routes_and_formats(server, rows):
    features = dnn_features(rows)
    expected = {1: in_process(server.dnn[1], rows), 2: in_process(server.dnn[2], rows)}
    instances = [{name: value[i].tolist() for name, value in features.items()} for i in range(ROWS)]
    columns = {name: value.tolist() for name, value in features.items()}
    for path, version in (("/v1/models/dnn", 2), ("/v1/models/dnn/versions/1", 1),
                          ("/v1/models/dnn/labels/canary", 2)):
        status, answer = rest(server, f"{path}:predict", {"instances": instances})
        assert status == 200
        np.testing.assert_allclose(answer["predictions"], expected[version], atol=1e-6)
        status, answer = rest(server, f"{path}:predict", {"inputs": columns})
        assert status == 200
        np.testing.assert_allclose(answer["outputs"], expected[version], atol=1e-6)
    json_examples = []
    for row in rows:
        example = tf.train.Example.FromString(row)
        json_examples.append({name: list(getattr(f, f.WhichOneof("kind")).value)
                              for name, f in example.features.feature.items()})
    status, answer = rest(server, "/v1/models/dnn/labels/stable:regress",
                          {"signature_name": "regress_score", "examples": json_examples})
    assert status == 200
    np.testing.assert_allclose(answer["result"], expected[1], atol=1e-6)
    status, answer = rest(server, "/v1/models/dnn:classify", {"signature_name": "classify_score",
                                                              "examples": json_examples})
    assert status == 200
    np.testing.assert_allclose([row[0][1] for row in answer["result"]], expected[2], atol=1e-6)
    assert rest(server, "/v1/models/contract_pinned")[1]["model_version_status"][0]["version"] == "1"
    status, metadata = rest(server, "/v1/models/dnn/versions/1/metadata")
    assert status == 200 and metadata["model_spec"]["version"] == "1"
    assert set(metadata["metadata"]["signature_def"]["signature_def"]) >= {"classify_score", "regress_score"}


def test_rest_errors_carry_tf_serving_http_codes(server, rows):
    assert rest(server, "/v1/models/nope") == (404, {"error": "Could not find any versions of model nope"})
    assert rest(server, "/v1/models/dnn/versions/9:predict", {"instances": [1]})[0] == 404
    status, answer = rest(server, "/v1/models/dnn/labels/beta:predict", {"instances": [1]})
    assert (status, answer["error"]) == (400, "Unrecognized servable version label: beta")
    status, answer = rest(server, "/v1/models/dnn:classify", {"examples": [{"user_id": 1}]})
    assert status == 400 and "Expected classification signature method_name" in answer["error"]
    assert rest(server, "/v1/models/dnn:regress", {"signature_name": "regress_score", "examples": []}) == (
        400, {"error": "Input is empty."})


# --- Batching, health, metrics ------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_answered_correctly(server):
    before = metric_values(server)
    batches = [synthetic_examples(dnn_schema(), ROWS, seed=100 + i) for i in range(32)]
    # All 32 in flight at once (asynchronous calls from one thread): the server must merge some of them.
    in_flight = [server.predict.Predict.future(predict_request({"inputs": np.array(examples, dtype=object)},
                                                               signature="serving_examples"), timeout=TIMEOUT_S)
                 for examples in batches]
    answers = [tf.make_ndarray(call.result().outputs["score"]) for call in in_flight]
    for examples, scores in zip(batches, answers, strict=True):
        np.testing.assert_allclose(scores, in_process(server.dnn[2], examples), atol=1e-6)
    after = metric_values(server)
    runs = after[":tensorflow:serving:batching_session:wrapped_run_count{}"] - before.get(
        ":tensorflow:serving:batching_session:wrapped_run_count{}", 0)
    assert 1 <= runs < len(batches), f"{len(batches)} concurrent requests took {runs} model calls"
    processed = after[":tensorflow:serving:batching_session:processed_batch_size_sum{}"] - before.get(
        ":tensorflow:serving:batching_session:processed_batch_size_sum{}", 0)
    assert processed == ROWS * len(batches)


def test_grpc_health_checking(server):
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService", "dnn",
                    "contract_pinned"):
        response = server.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    error = rpc_error(server.health.Check, health_pb2.HealthCheckRequest(service="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*)\} '
                     r'(?P<value>\S+)$')


def metric_values(server) -> dict[str, float]:
    """The Prometheus page as {'name{labels}': value}; fails on any line Prometheus could not parse."""
    status, page = rest(server, METRICS_PATH)
    assert status == 200
    values = {}
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            assert line.split()[3] in ("counter", "histogram", "gauge", "untyped"), line
            continue
        match = _SAMPLE.match(line)
        assert match, f"not Prometheus text format: {line!r}"
        values[f"{match['name']}{{{match['labels']}}}"] = float(match["value"])
    return values


def test_prometheus_metrics_at_the_monitoring_config_path(server, rows):
    before = metric_values(server)
    request = predict_request(dnn_features(rows))
    for _ in range(3):
        server.predict.Predict(request, timeout=TIMEOUT_S)
    rpc_error(server.predict.Predict, predict_request(dnn_features(rows), signature="nope"))
    rest(server, "/v1/models/dnn:predict", {"inputs": {k: v.tolist() for k, v in dnn_features(rows).items()}})
    after = metric_values(server)
    ok = ':tensorflow:serving:request_count{model_name="dnn",status="OK"}'
    failed = ':tensorflow:serving:request_count{model_name="dnn",status="FAILED_PRECONDITION"}'
    assert after[ok] - before.get(ok, 0) == 4
    assert after[failed] - before.get(failed, 0) == 1
    grpc_latency = ':tensorflow:serving:request_latency_count{model_name="dnn",API="Predict",entrypoint="GRPC"}'
    rest_latency = ':tensorflow:serving:request_latency_count{model_name="dnn",API="Predict",entrypoint="REST"}'
    assert after[grpc_latency] - before.get(grpc_latency, 0) == 3
    assert after[rest_latency] - before.get(rest_latency, 0) == 1
    prefix = ':tensorflow:serving:request_latency_bucket{model_name="dnn",API="Predict",entrypoint="GRPC"'
    buckets = [(key, value) for key, value in after.items() if key.startswith(prefix)
               and 'model_name="dnn"' in key]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and buckets[-1][0].endswith('le="+Inf"}') and counts[-1] == after[grpc_latency]
    assert after[':tensorflow:serving:request_example_count_total{model="dnn"}'] > 0
    assert ":tensorflow:serving:batching_session:processed_batch_size_count{}" in after
    assert rest(server, "/monitoring/other")[0] == 404


def test_query_binary_calls_regress_with_tfrecord_rows(server, rows):
    path = server.root / "rows.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            writer.write(row)
    result = subprocess.run([os.path.join(BIN, "tfrecsys-query"), f"--server=127.0.0.1:{server.port}",
                             "--model_name=dnn", f"--tfrecord={path}", "--api=regress",
                             "--signature_name=regress_score"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(json.loads(result.stdout)["outputs"], in_process(server.dnn[2], rows), atol=1e-6)
