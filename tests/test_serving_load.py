"""Load test on loopback: 16 concurrent clients for 14 s while a new version appears and is picked up.

Every request must succeed, every answer must be exactly the answer of the one version it names (never a
mix, never a half-loaded model), and the switch must happen: early answers come from version 1, the last
ones from version 2, every client sees both, and version 1 is unloaded at the end. Version 2 is exported
beforehand and renamed into the base path mid-run, as ``write_version`` publishes every export, so the
switch comes at a known time and the run can stay short.
"""

import collections
import os
import threading
import time

import grpc
import pytest
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import free_port, start_server, stop_server, wait_until_serving
from tests.serving_dnn import dnn_schema, export_dnn, synthetic_examples
from tfrecsys.serving.client import ServingClient

CLIENTS = 16
DURATION_S = 14.0
PUBLISH_AFTER_S = 4.0
CANDIDATES = 100
# Answers each client must get from each version: a stalled or dead client, or a server that answers a
# handful of requests per second, falls short (this machine, 2 shared cores, does well over 100 each).
MIN_ANSWERS_PER_CLIENT_AND_VERSION = 5


@pytest.mark.slow  # multi-process or end-to-end: make test-all
def test_sixteen_clients_see_the_version_switch_without_a_failed_request(tmp_path):
    base = str(tmp_path / "dnn")
    v1 = export_dnn(str(tmp_path), "dnn", 1, seed=1)
    v2_staged = export_dnn(str(tmp_path / "staging"), "dnn", 2, seed=2)
    examples = synthetic_examples(dnn_schema(), CANDIDATES, seed=3)
    features = {k: v.numpy() for k, v in dnn_schema().parse_examples(
        tf.constant(examples), with_labels=False, serving=True).items()}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dnn"
    for name, value in features.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    expected = {version: tf.saved_model.load(path).signatures["serving_default"](**features)["score"].numpy()
                for version, path in ((1, v1), (2, v2_staged))}

    port = free_port()
    log_path = tmp_path / "serve.log"
    process = start_server([f"--port={port}", "--model_name=dnn", f"--model_base_path={base}",
                            "--file_system_poll_wait_seconds=1"], log_path)
    answers = {client: [] for client in range(CLIENTS)}  # each list is appended to by its own thread only
    failures = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while not stop.is_set():
            try:
                response = stub.Predict(request, timeout=30)
                answers[index].append((time.monotonic(), response.model_spec.version.value,
                                       tf.make_ndarray(response.outputs["score"])))
            except grpc.RpcError as error:
                with lock:
                    failures.append(f"client {index}: {error.code().name}: {error.details()}")
            except Exception as error:  # noqa: BLE001  (any other error must fail the test, not end the thread)
                with lock:
                    failures.append(f"client {index}: {type(error).__name__}: {error}")
        channel.close()

    try:
        wait_until_serving(process, f"127.0.0.1:{port}", "dnn", log_path)
        threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        stop.wait(PUBLISH_AFTER_S)
        os.rename(v2_staged, os.path.join(base, "2"))
        published = time.monotonic()
        stop.wait(max(0.0, DURATION_S - (published - started)))
        stop.set()
        for thread in threads:
            thread.join(60)
        still_running = [thread.name for thread in threads if thread.is_alive()]
        with ServingClient(f"127.0.0.1:{port}") as status_client:
            final_states = status_client.status("dnn")
    finally:
        stop.set()
        stop_server(process)

    assert failures == []
    assert still_running == []
    for client_answers in answers.values():
        for _, version, scores in client_answers:
            assert version in expected
            np.testing.assert_allclose(scores, expected[version], atol=1e-6)
    assert np.min(np.abs(expected[1] - expected[2])) > 1e-4  # the two versions are distinguishable
    per_client = {index: collections.Counter(version for _, version, _ in client_answers)
                  for index, client_answers in answers.items()}
    short = {index: dict(counts) for index, counts in per_client.items()
             if min(counts[1], counts[2]) < MIN_ANSWERS_PER_CLIENT_AND_VERSION}
    assert not short, f"clients with fewer than {MIN_ANSWERS_PER_CLIENT_AND_VERSION} answers from a version: {short}"
    ordered = sorted((answer for client_answers in answers.values() for answer in client_answers),
                     key=lambda answer: answer[0])
    versions = [version for _, version, _ in ordered]
    assert versions[0] == 1 and versions[-1] == 2
    switch = next(t for t, version, _ in ordered if version == 2)
    assert all(version == 2 for t, version, _ in ordered if t > switch + 2.0)  # old version gone soon after
    assert final_states == {2: "AVAILABLE", 1: "END"}
    print(f"{len(ordered)} answers in {DURATION_S:.0f} s from {CLIENTS} clients, "
          f"{versions.count(1)} from v1, {versions.count(2)} from v2; v2 first served "
          f"{switch - published:.1f} s after it appeared")
