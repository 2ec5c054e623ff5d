"""What changes while tfrecsys-serve runs: new and broken versions under a base path, config reloads by RPC
and by file, as TF Serving handles them. The servers run in this process (ModelServer) with short polls."""

import os
import shutil
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.contract_models import example_rows, export_contract_model, to_serving_inputs
from tfrecsys.serving.client import ServingClient
from tfrecsys.serving.errors import ModelLoadError
from tfrecsys.serving.server import ModelServer

TIMEOUT_S = 60


def config_text(*models: tuple, policy: str = "latest { num_versions: 1 }"):
    """A ModelServerConfig text of (name, base path) or (name, base path, {label: version}) entries."""
    entries = []
    for name, base, *labels in models:
        labels = labels[0] if labels else {}
        label_text = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items())
        entries.append(f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" '
                       f"model_version_policy {{ {policy} }} {label_text} }}")
    return "model_config_list { " + " ".join(entries) + " }"


def parse_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def wait_for(condition, what: str, timeout_s: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def scores(client: ServingClient, model: str, inputs, **kwargs) -> np.ndarray:
    return client.predict(model, inputs, **kwargs)["score"]


def in_process(version_dir: str, inputs) -> np.ndarray:
    """The scores of the SavedModel in ``version_dir`` called in this process: what the server must answer."""
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    return signature(**{name: tf.constant(value) for name, value in inputs.items()})["score"].numpy()


@pytest.fixture
def inputs():
    return to_serving_inputs(example_rows(4, seed=5))


def test_broken_and_partial_versions_are_refused_and_the_last_good_one_keeps_serving(tmp_path, inputs):
    base = str(tmp_path / "m")
    export_contract_model(base, version=1)
    with ModelServer("m", base, port=0, host="127.0.0.1", file_system_poll_wait_seconds=0.05,
                     max_num_load_retries=0) as server, \
            ServingClient(f"127.0.0.1:{server.port}") as client:
        before = scores(client, "m", inputs)
        os.makedirs(os.path.join(base, "2"))  # partial: a directory without its SavedModel yet
        corrupt = export_contract_model(str(tmp_path / "staging"), version=3, offset=0.5)
        with open(os.path.join(corrupt, "saved_model.pb"), "wb") as f:
            f.write(b"not a SavedModel")
        os.rename(corrupt, os.path.join(base, "3"))
        wait_for(lambda: client.status("m").get(3) == "END", "version 3 refused")
        states = client.status("m")
        assert states[1] == "AVAILABLE" and states[3] == "END"
        np.testing.assert_array_equal(scores(client, "m", inputs), before)
        shutil.rmtree(os.path.join(base, "3"))
        export_contract_model(str(tmp_path / "good"), version=4, offset=0.5)
        os.rename(str(tmp_path / "good" / "4"), os.path.join(base, "4"))
        assert client.wait_until_available("m", timeout_s=TIMEOUT_S, version=4) == 4
        after = scores(client, "m", inputs)
    np.testing.assert_array_equal(before, in_process(os.path.join(base, "1"), inputs))
    np.testing.assert_array_equal(after, in_process(os.path.join(base, "4"), inputs))
    assert np.min(np.abs(after - before)) > 1e-3


def test_handle_reload_config_request_adds_removes_and_relabels_models(tmp_path, inputs):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    export_contract_model(a, version=1)
    export_contract_model(b, version=1, offset=0.25)
    export_contract_model(b, version=2, offset=0.5)
    with ModelServer(model_config=parse_config(config_text(("a", a))), port=0, host="127.0.0.1",
                     file_system_poll_wait_seconds=0) as server, \
            ServingClient(f"127.0.0.1:{server.port}") as client:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_management_pb2.ReloadConfigRequest(config=parse_config(
            config_text(("a", a), ("b", b, {"stable": 1, "canary": 2}), policy="all {}")))
        response = stub.HandleReloadConfigRequest(request, timeout=TIMEOUT_S)
        assert response.status.error_code == 0
        assert client.status("b") == {2: "AVAILABLE", 1: "AVAILABLE"}
        by_version = {version: client.predict("b", inputs, version=version)["score"] for version in (1, 2)}
        for version, served in by_version.items():
            np.testing.assert_array_equal(served, in_process(os.path.join(b, str(version)), inputs))
        assert np.min(np.abs(by_version[1] - by_version[2])) > 1e-3
        assert client.health("b") == "SERVING"

        bad_label = model_management_pb2.ReloadConfigRequest(config=parse_config(
            config_text(("b", b, {"stable": 7}), policy="all {}")))
        with pytest.raises(grpc.RpcError) as caught:
            stub.HandleReloadConfigRequest(bad_label, timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == ("Request to assign label to version 7 of model b, which is not currently "
                                          "available for inference")

        client.reload_config(parse_config(config_text(("b", b))))
        assert client.status("a") == {1: "END"}
        assert client.health("a") == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as caught:
            client.predict("a", inputs)
        assert caught.value.details() == "Servable not found for request: Latest(a)"
        assert client.status("b") == {2: "AVAILABLE", 1: "END"}

        missing = model_management_pb2.ReloadConfigRequest(config=parse_config(
            config_text(("b", b), ("c", str(tmp_path / "nowhere")))))
        with pytest.raises(grpc.RpcError) as caught:
            stub.HandleReloadConfigRequest(missing, timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNKNOWN
        assert "Some models did not become available: {c}" in caught.value.details()
        channel.close()


def test_model_config_file_is_polled_and_applied_when_it_changes(tmp_path, inputs):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    export_contract_model(a, version=1)
    export_contract_model(b, version=1, offset=0.5)
    config_path = tmp_path / "models.config"
    config_path.write_text(config_text(("a", a)))
    with ModelServer(model_config_file=str(config_path), model_config_file_poll_wait_seconds=0.05, port=0,
                     host="127.0.0.1", file_system_poll_wait_seconds=0) as server, \
            ServingClient(f"127.0.0.1:{server.port}") as client:
        config_path.write_text(config_text(("b", b)))
        assert client.wait_until_available("b", timeout_s=TIMEOUT_S) == 1
        wait_for(lambda: client.status("a") == {1: "END"}, "model a unloaded")
        config_path.write_text("model_config_list { config { name: ")  # a broken edit changes nothing
        with pytest.raises(ModelLoadError, match=f"Invalid model config file '{config_path}'"):
            server.reload_config_file()
        assert client.status("b") == {1: "AVAILABLE"}
        np.testing.assert_array_equal(scores(client, "b", inputs), in_process(os.path.join(b, "1"), inputs))
