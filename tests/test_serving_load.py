"""Load test on loopback: 16 concurrent clients for 20 s while a new version is exported and picked up.

Every request must succeed, every answer must be exactly the answer of the one version it names (never a
mix, never a half-loaded model), and the switch must happen: early answers come from version 1, the last
ones from version 2, and version 1 is unloaded at the end.
"""

import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import free_port, start_server, stop_server, wait_until_serving
from tests.serving_dnn import dnn_schema, export_dnn, synthetic_examples
from tfrecsys.serving.client import ServingClient

CLIENTS = 16
DURATION_S = 20.0
EXPORT_AFTER_S = 5.0
CANDIDATES = 100


def test_sixteen_clients_see_the_version_switch_without_a_failed_request(tmp_path):
    base = str(tmp_path / "dnn")
    v1 = export_dnn(str(tmp_path), "dnn", 1, seed=1)
    examples = synthetic_examples(dnn_schema(), CANDIDATES, seed=3)
    features = {k: v.numpy() for k, v in dnn_schema().parse_examples(
        tf.constant(examples), with_labels=False, serving=True).items()}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dnn"
    for name, value in features.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    expected = {1: tf.saved_model.load(v1).signatures["serving_default"](**features)["score"].numpy()}

    port = free_port()
    log_path = tmp_path / "serve.log"
    process = start_server([f"--port={port}", "--model_name=dnn", f"--model_base_path={base}",
                            "--file_system_poll_wait_seconds=1"], log_path)
    answers, failures = [], []
    lock = threading.Lock()
    stop = threading.Event()

    def client():
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while not stop.is_set():
            try:
                response = stub.Predict(request, timeout=30)
                entry = (time.monotonic(), response.model_spec.version.value,
                         tf.make_ndarray(response.outputs["score"]))
                with lock:
                    answers.append(entry)
            except grpc.RpcError as error:
                with lock:
                    failures.append(f"{error.code().name}: {error.details()}")
        channel.close()

    try:
        wait_until_serving(process, f"127.0.0.1:{port}", "dnn", log_path)
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        stop.wait(EXPORT_AFTER_S)
        v2 = export_dnn(str(tmp_path), "dnn", 2, seed=2)  # atomic: staging directory, then rename
        exported = time.monotonic()
        stop.wait(max(0.0, DURATION_S - (exported - started)))
        stop.set()
        for thread in threads:
            thread.join(60)
        with ServingClient(f"127.0.0.1:{port}") as status_client:
            final_states = status_client.status("dnn")
    finally:
        stop.set()
        stop_server(process)
    expected[2] = tf.saved_model.load(v2).signatures["serving_default"](**features)["score"].numpy()

    assert failures == []
    assert len(answers) > CLIENTS
    for _, version, scores in answers:
        assert version in expected
        np.testing.assert_allclose(scores, expected[version], atol=1e-6)
    assert np.min(np.abs(expected[1] - expected[2])) > 1e-4  # the two versions are distinguishable
    answers.sort(key=lambda answer: answer[0])
    versions = [version for _, version, _ in answers]
    assert versions[0] == 1 and versions[-1] == 2
    switch = next(t for t, version, _ in answers if version == 2)
    assert all(version == 2 for t, version, _ in answers if t > switch + 2.0)  # old version gone soon after
    assert final_states == {2: "AVAILABLE", 1: "END"}
    print(f"{len(answers)} answers in {DURATION_S:.0f} s from {CLIENTS} clients, "
          f"{versions.count(1)} from v1, {versions.count(2)} from v2; v2 first served "
          f"{switch - exported:.1f} s after its export")
