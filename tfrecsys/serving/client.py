"""A small client for TF Serving's gRPC API, over the official stubs.

It talks to tfrecsys-serve and to the real tensorflow_model_server alike:

    with ServingClient("127.0.0.1:8500") as client:
        client.wait_until_available("dnn", timeout_s=30)
        scores = client.predict("dnn", {"user_id": np.array([1, 2], np.int64), ...})["score"]
        scores = client.regress("dnn", serialized_examples, signature_name="regress_score")

Arrays are sent with the dtype they have (the server rejects a dtype its signature does not take, naming
the input) and come back exactly as the server computed them. Failed calls raise ``grpc.RpcError`` with
the server's status code and message.
"""

import time

import grpc
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, input_pb2,
                                     model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from tfrecsys.serving.tensors import TensorSpec, tensor_spec

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
# Answers that mean "not serving yet" while a server starts or loads its model.
_NOT_READY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED)
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # gRPC's default reconnect backoff grows from 1 s to 120 s; a server that is still starting (importing
    # TensorFlow takes seconds) is found sooner with a shorter one.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class ServingClient:
    """PredictionService and ModelService calls on one channel; ``timeout`` is the default per-call deadline."""

    def __init__(self, target: str = "127.0.0.1:8500", timeout: float = 10.0):
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def predict(self, model_name: str, inputs: dict[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE,
                version: int | None = None, output_filter: list[str] | None = None,
                timeout: float | None = None) -> dict[str, np.ndarray]:
        """Runs ``signature_name`` of the model (its latest version unless ``version``); returns its outputs."""
        request = predict_pb2.PredictRequest()
        _set_model_spec(request.model_spec, model_name, version)
        request.model_spec.signature_name = signature_name
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        request.output_filter.extend(output_filter or [])
        response = self._prediction.Predict(request, timeout=timeout or self.timeout)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def classify(self, model_name: str, examples, signature_name: str, version: int | None = None,
                 context=None, timeout: float | None = None) -> list[list[tuple[str, float]]]:
        """Classify tf.train.Examples (messages or serialized bytes), with an optional context Example merged
        into each; returns per example its ``(label, score)`` classes."""
        request = classification_pb2.ClassificationRequest(input=_input(examples, context))
        _set_model_spec(request.model_spec, model_name, version)
        request.model_spec.signature_name = signature_name
        response = self._prediction.Classify(request, timeout=timeout or self.timeout)
        return [[(one.label, one.score) for one in row.classes] for row in response.result.classifications]

    def regress(self, model_name: str, examples, signature_name: str, version: int | None = None,
                context=None, timeout: float | None = None) -> np.ndarray:
        """Regress tf.train.Examples (messages or serialized bytes); returns one float32 per example."""
        request = regression_pb2.RegressionRequest(input=_input(examples, context))
        _set_model_spec(request.model_spec, model_name, version)
        request.model_spec.signature_name = signature_name
        response = self._prediction.Regress(request, timeout=timeout or self.timeout)
        return np.array([regression.value for regression in response.result.regressions], np.float32)

    def reload_config(self, config, timeout: float | None = None) -> None:
        """ModelService.HandleReloadConfigRequest: the server serves exactly ``config``'s models (a
        ModelServerConfig) once this returns; a failure raises grpc.RpcError with the server's status."""
        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(config)
        self._models.HandleReloadConfigRequest(request, timeout=timeout or self.timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """grpc.health.v1 status of ``service`` ("" for the server, or a model name): "SERVING", "NOT_SERVING"."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def metadata(self, model_name: str, version: int | None = None,
                 timeout: float | None = None) -> dict[str, dict[str, TensorSpec]]:
        """signature name → input name → ``(tf.DType, shape)``, shape with None for unknown dimensions.

        The SavedModel's ``__saved_model_init_op`` entry, which TF Serving lists too, is left out: it is not
        a signature a client can call.
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _set_model_spec(request.model_spec, model_name, version)
        response = self._prediction.GetModelMetadata(request, timeout=timeout or self.timeout)
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_def_map)
        return {name: {alias: tensor_spec(info) for alias, info in signature_def.inputs.items()}
                for name, signature_def in signature_def_map.signature_def.items() if not name.startswith("__")}

    def status(self, model_name: str, version: int | None = None, timeout: float | None = None) -> dict[int, str]:
        """version → state name ("AVAILABLE", "LOADING", "END", ...) as GetModelStatus reports it."""
        request = get_model_status_pb2.GetModelStatusRequest()
        _set_model_spec(request.model_spec, model_name, version)
        response = self._models.GetModelStatus(request, timeout=timeout or self.timeout)
        state_names = get_model_status_pb2.ModelVersionStatus.State.Name
        return {status.version: state_names(status.state) for status in response.model_version_status}

    def wait_until_available(self, model_name: str, timeout_s: float = 60.0, version: int | None = None,
                             poll_interval_s: float = 0.1) -> int:
        """Polls GetModelStatus until a version (``version``, if given) is AVAILABLE; returns that version.

        Meant for scripts and tests that start a server and must not guess how long it takes to come up.
        Raises TimeoutError, with the last answer, after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                states = self.status(model_name, version, timeout=max(0.1, min(self.timeout, timeout_s)))
                available = [number for number, state in states.items() if state == "AVAILABLE"]
                if available:
                    return max(available)
                last_answer = f"versions {states}"
            except grpc.RpcError as error:
                if error.code() not in _NOT_READY:
                    raise
                last_answer = f"{error.code().name}: {error.details()}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Model {model_name} was not AVAILABLE at {self.target} after {timeout_s} s; "
                                   f"last answer: {last_answer}")
            time.sleep(poll_interval_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _input(examples, context=None) -> input_pb2.Input:
    """Examples (messages or serialized bytes) as a Classify/Regress ``Input``, with ``context`` if given."""
    messages = [tf.train.Example.FromString(e) if isinstance(e, bytes) else e for e in examples]
    if context is None:
        return input_pb2.Input(example_list=input_pb2.ExampleList(examples=messages))
    context = tf.train.Example.FromString(context) if isinstance(context, bytes) else context
    return input_pb2.Input(example_list_with_context=input_pb2.ExampleListWithContext(
        examples=messages, context=context))


def _set_model_spec(model_spec, model_name: str, version: int | None) -> None:
    model_spec.name = model_name
    if version is not None:
        model_spec.version.value = version
