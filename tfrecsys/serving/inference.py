"""The TF Serving inference APIs on one loaded model version: Predict, Classify, Regress, MultiInference.

Each function takes a ``Servable`` and the tensorflow_serving.apis request proto and returns the response
proto, or raises ``ServingError`` with the status code and message ``tensorflow_model_server`` gives the same
request (servables/tensorflow/predict_util.cc, classifier.cc, regressor.cc, multi_inference.cc, util.cc).
Signature inputs and outputs are read from the SignatureDefs in ``saved_model.pb``, never from model code.

The signature itself runs through ``execute(servable, signature_name, inputs, deadline)``, which is a
direct call by default and the batch scheduler when batching is on.
"""

import dataclasses
from collections.abc import Callable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, predict_pb2, regression_pb2)

from tfrecsys.serving.errors import ServingError
from tfrecsys.serving.protos import SerializedInputProto
from tfrecsys.serving.tensors import data_type_string, shape_fits, shape_text, tensor_spec

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
EXAMPLES_INPUT = "inputs"
CLASSES_OUTPUT, SCORES_OUTPUT, REGRESS_OUTPUT = "classes", "scores", "outputs"
# A request tensor may not decode to more than this many bytes unless the server is told otherwise: a
# TensorProto can declare a huge shape with a single value that TensorFlow would repeat to fill it.
DEFAULT_MAX_TENSOR_BYTES = 64 * 2**20

Arrays = dict[str, np.ndarray]
_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded version of a model.

    ``signature_defs`` are the SignatureDefs saved in ``saved_model.pb`` (what GetModelMetadata returns and
    what requests are checked against); ``signatures`` are the loaded functions that run them. ``module`` is
    the loaded object itself: the signature functions only hold weak references to its variables.
    """

    name: str
    version: int
    path: str
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    signatures: Mapping[str, Callable]
    module: object


def call_signature(servable: Servable, signature_name: str, inputs: Arrays, deadline: float | None = None) -> Arrays:
    """Runs one signature on numpy inputs typed by its SignatureDef; a TensorFlow error keeps its own status
    code, as the session's would in TF Serving. ``deadline`` is for schedulers; a direct call ignores it."""
    signature_def = servable.signature_defs[signature_name]
    tensors = {alias: tf.constant(array, dtype=tf.as_dtype(signature_def.inputs[alias].dtype))
               for alias, array in inputs.items()}
    try:
        outputs = servable.signatures[signature_name](**tensors)
    except tf.errors.OpError as error:
        raise ServingError(_GRPC_CODE_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN),
                           error.message) from error
    except (TypeError, ValueError) as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
    return {alias: value.numpy() for alias, value in outputs.items()}


Execute = Callable[[Servable, str, Arrays, "float | None"], Arrays]


def _join(names) -> str:
    return ",".join(sorted(names))


def _dtype_name(dtype_enum: int) -> str:
    return types_pb2.DataType.Name(dtype_enum)


# --- Predict -----------------------------------------------------------------------------------------------


def run_predict(servable: Servable, request: predict_pb2.PredictRequest, execute: Execute = call_signature,
                deadline: float | None = None, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
                ) -> predict_pb2.PredictResponse:
    """Checks the request against the signature in TF Serving's order, runs it, and returns the outputs."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature_def = servable.signature_defs.get(signature_name)
    if signature_def is None or signature_name not in servable.signatures:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')
    _check_input_names(signature_def, request)
    _check_request_size(request.inputs, max_tensor_bytes)
    inputs = {alias: _input_array(alias, proto, signature_def.inputs[alias]) for alias, proto in request.inputs.items()}
    outputs = predict_arrays(servable, signature_name, inputs, request.output_filter, execute, deadline)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(array))
    return response


def predict_arrays(servable: Servable, signature_name: str, inputs: Arrays, output_filter=(),
                   execute: Execute = call_signature, deadline: float | None = None) -> Arrays:
    """Runs a signature on inputs already checked against it (named, typed and shaped as it says) and
    returns the outputs ``output_filter`` names, all of them by default. REST calls this directly, without
    the copy a TensorProto round trip would make of every tensor."""
    aliases = _output_aliases(servable.signature_defs[signature_name], output_filter)
    try:
        outputs = execute(servable, signature_name, inputs, deadline)
    except ServingError as error:
        raise _with_batch_sizes(error, inputs) from error
    return {alias: outputs[alias] for alias in aliases}


def _with_batch_sizes(error: ServingError, inputs: Arrays) -> ServingError:
    """``error``, naming the inputs' first dimensions when they differ: the model then fails deep inside
    (``ConcatOp : Dimension 0 in both shapes must be equal`` at some node) without saying which input is
    short. Only added to a failure: a SavedModel may take inputs whose first dimensions differ on purpose."""
    sizes = {alias: array.shape[0] for alias, array in inputs.items() if array.ndim}
    if error.code != grpc.StatusCode.INVALID_ARGUMENT or len(set(sizes.values())) < 2:
        return error
    by_size: dict[int, list[str]] = {}
    for alias, size in sorted(sizes.items()):
        by_size.setdefault(size, []).append(alias)
    described = "; ".join(f"{size}: {', '.join(aliases)}" for size, aliases in sorted(by_size.items()))
    return ServingError(error.code, f"the inputs' first dimensions (batch sizes) differ ({described}), one "
                                    f"entry per example each. {error.message}")


def _check_input_names(signature_def: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest) -> None:
    """Missing and unexpected inputs, with the names spelled out as predict_util.cc spells them."""
    sent, expected = set(request.inputs), set(signature_def.inputs)
    if len(sent) != len(expected):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{_join(sent)}}}) != "
            f"len({{{_join(expected)}}}). Sent extra: {{{_join(sent - expected)}}}. "
            f"Missing but required: {{{_join(expected - sent)}}}."))
    unknown = sorted(sent - expected)
    if unknown:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"input tensor alias not found in signature: {unknown[0]}. Inputs expected to be in the set "
            f"{{{_join(expected)}}}."))


def _declared_bytes(proto) -> int:
    """Bytes the TensorProto decodes to, from its declared shape (strings: the bytes they carry)."""
    if proto.dtype == types_pb2.DT_STRING:
        return sum(len(value) for value in proto.string_val)
    elements = 1
    for dim in proto.tensor_shape.dim:
        elements *= max(dim.size, 0)
    try:
        itemsize = tf.as_dtype(proto.dtype).size
    except TypeError:
        itemsize = 1
    return elements * itemsize


def _check_request_size(inputs, max_tensor_bytes: int) -> None:
    for alias, proto in inputs.items():
        if any(dim.size < 0 for dim in proto.tensor_shape.dim):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"tensor parsing error: {alias} has a negative dimension size")
    total = sum(_declared_bytes(proto) for proto in inputs.values())
    if total > max_tensor_bytes:
        sizes = ", ".join(f"{alias}: {_declared_bytes(proto)}" for alias, proto in sorted(inputs.items()))
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"Request tensors would take {total} bytes ({sizes}), more than the server's limit of "
            f"{max_tensor_bytes} bytes (tfrecsys-serve --max_request_bytes)"))


def _input_array(alias: str, proto, tensor_info: meta_graph_pb2.TensorInfo) -> np.ndarray:
    """The request tensor as an array, checked against the signature's dtype and shape.

    The real server lets the session reject a wrong dtype ("Expects arg[0] to be int64 but float is
    provided"), which does not say which input was wrong; here the message names it, with the same dtype
    names (TensorFlow's DataTypeString: float, double, int64, string).
    """
    try:
        array = tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from error
    if proto.dtype != tensor_info.dtype:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"Expects input {alias} to be {data_type_string(tensor_info.dtype)} but "
            f"{_dtype_text(proto.dtype)} is provided"))
    _, signature_shape = tensor_spec(tensor_info)
    if not shape_fits(array.shape, signature_shape):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"Input {alias} has shape {shape_text(array.shape)}, which the signature's shape "
            f"{shape_text(signature_shape)} does not accept"))
    return array


def _dtype_text(dtype_enum: int) -> str:
    try:
        return data_type_string(dtype_enum)
    except (TypeError, ValueError):
        return f"invalid dtype {dtype_enum}"


def _output_aliases(signature_def: meta_graph_pb2.SignatureDef, output_filter) -> list[str]:
    """The outputs to return: ``output_filter`` if given (each known, none twice), else every output."""
    seen = []
    for alias in output_filter:
        if alias not in signature_def.outputs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{_join(signature_def.outputs)}}}."))
        if alias in seen:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen or list(signature_def.outputs)


# --- Classify, Regress, MultiInference ---------------------------------------------------------------------


def serialized_examples(request_input, max_request_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> np.ndarray:
    """A request's ``Input`` as the ``[batch]`` string tensor of serialized tf.train.Example TF Serving feeds.

    ``ExampleListWithContext`` rows are the context's serialization followed by the example's, which parses
    as the two merged (the example's features win), exactly as util.cc builds them.
    """
    serialized = SerializedInputProto.FromString(request_input.SerializeToString())
    kind = serialized.WhichOneof("kind")
    if kind == "example_list":
        rows = list(serialized.example_list.examples)
    elif kind == "example_list_with_context":
        context = serialized.example_list_with_context.context
        rows = [context + example for example in serialized.example_list_with_context.examples]
    else:
        rows = []
    if not rows:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    total = sum(len(row) for row in rows)
    if total > max_request_bytes:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"Request examples would take {total} bytes, more than the server's limit of {max_request_bytes} "
            "bytes (tfrecsys-serve --max_request_bytes)"))
    return np.array(rows, dtype=object)


def _signature_for(servable: Servable, model_spec, method: str, kind: str) -> tuple[str, meta_graph_pb2.SignatureDef]:
    """The named signature, checked to be a ``method`` signature (GetClassificationSignatureDef & co.)."""
    signature_name = model_spec.signature_name or DEFAULT_SIGNATURE
    signature_def = servable.signature_defs.get(signature_name)
    if signature_def is None or signature_name not in servable.signatures:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"No signature was found with the name: {signature_name}")
    if signature_def.method_name != method:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"Expected {kind} signature method_name to be {method}. Was: {signature_def.method_name}"))
    return signature_name, signature_def


def _check_classification_signature(signature_def: meta_graph_pb2.SignatureDef) -> list[str]:
    """PreProcessClassification: one ``inputs`` input, ``classes`` and/or ``scores`` outputs."""
    if len(signature_def.inputs) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature_def.outputs) not in (1, 2):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected one or two output Tensors, found {len(signature_def.outputs)}")
    if EXAMPLES_INPUT not in signature_def.inputs:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"No classification inputs found in SignatureDef: {signature_def}")
    outputs = [alias for alias in (CLASSES_OUTPUT, SCORES_OUTPUT) if alias in signature_def.outputs]
    if not outputs:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, (
            f'Expected classification signature outputs to contain at least one of "{CLASSES_OUTPUT}" or '
            f'"{SCORES_OUTPUT}". Signature was: {signature_def}'))
    return outputs


def _check_regression_signature(signature_def: meta_graph_pb2.SignatureDef) -> list[str]:
    """PreProcessRegression: one ``inputs`` input, one ``outputs`` output."""
    if len(signature_def.inputs) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature_def.outputs) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Expected one output Tensor.")
    if EXAMPLES_INPUT not in signature_def.inputs:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"No regression inputs found in SignatureDef: {signature_def}")
    if REGRESS_OUTPUT not in signature_def.outputs:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"No regression outputs found in SignatureDef: {signature_def}")
    return [REGRESS_OUTPUT]


def _shape_debug(array: np.ndarray) -> str:
    return "[" + ",".join(str(size) for size in array.shape) + "]"


def _classification_result(outputs: Arrays, num_examples: int) -> classification_pb2.ClassificationResult:
    """PostProcessClassificationResult: ``[batch, num_classes]`` classes (strings) and/or scores (floats)."""
    classes, scores = outputs.get(CLASSES_OUTPUT), outputs.get(SCORES_OUTPUT)
    for alias, array, dtype in ((CLASSES_OUTPUT, classes, types_pb2.DT_STRING),
                                (SCORES_OUTPUT, scores, types_pb2.DT_FLOAT)):
        if array is None:
            continue
        if array.ndim != 2:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expected Tensor shape: [batch_size num_classes] but got {_shape_debug(array)}")
        got = tf.as_dtype(array.dtype).as_datatype_enum if array.dtype != object else types_pb2.DT_STRING
        if got != dtype:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expected {alias} Tensor of {_dtype_name(dtype)}. Got: {_dtype_name(got)}")
        if array.shape[0] != num_examples:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expected {alias} output batch size of {num_examples}. Got: {array.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"))
    num_classes = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for row in range(num_examples):
        classifications = result.classifications.add()
        for column in range(num_classes):
            one = classifications.classes.add()
            if classes is not None:
                label = classes[row, column]
                one.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                one.score = scores[row, column]
    return result


def _regression_result(outputs: Arrays, num_examples: int) -> regression_pb2.RegressionResult:
    """PostProcessRegressionResult: float ``[batch]`` or ``[batch, 1]``."""
    values = outputs[REGRESS_OUTPUT]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{_shape_debug(values)}"))
    if values.shape[0] != num_examples:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Input batch size did not match output batch size: {num_examples} vs. {values.shape[0]}")
    if values.dtype != np.float32:
        got = _dtype_name(tf.as_dtype(values.dtype).as_datatype_enum) if values.dtype != object else "DT_STRING"
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Expected output Tensor of DT_FLOAT.  Got: {got}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add(value=value)
    return result


def _set_model_spec(target, model_spec, version: int) -> None:
    target.name = model_spec.name
    target.signature_name = model_spec.signature_name or DEFAULT_SIGNATURE
    target.version.value = version


def run_classify(servable: Servable, request: classification_pb2.ClassificationRequest,
                 execute: Execute = call_signature, deadline: float | None = None,
                 max_request_bytes: int = DEFAULT_MAX_TENSOR_BYTES
                 ) -> tuple[classification_pb2.ClassificationResponse, int]:
    """Classify; returns the response and the number of examples classified."""
    signature_name, signature_def = _signature_for(servable, request.model_spec, CLASSIFY_METHOD, "classification")
    aliases = _check_classification_signature(signature_def)
    examples = serialized_examples(request.input, max_request_bytes)
    outputs = execute(servable, signature_name, {EXAMPLES_INPUT: examples}, deadline)
    response = classification_pb2.ClassificationResponse()
    response.result.CopyFrom(_classification_result({a: outputs[a] for a in aliases}, len(examples)))
    _set_model_spec(response.model_spec, request.model_spec, servable.version)
    return response, len(examples)


def run_regress(servable: Servable, request: regression_pb2.RegressionRequest, execute: Execute = call_signature,
                deadline: float | None = None, max_request_bytes: int = DEFAULT_MAX_TENSOR_BYTES
                ) -> tuple[regression_pb2.RegressionResponse, int]:
    """Regress; returns the response and the number of examples regressed."""
    signature_name, signature_def = _signature_for(servable, request.model_spec, REGRESS_METHOD, "regression")
    _check_regression_signature(signature_def)
    examples = serialized_examples(request.input, max_request_bytes)
    outputs = execute(servable, signature_name, {EXAMPLES_INPUT: examples}, deadline)
    response = regression_pb2.RegressionResponse()
    response.result.CopyFrom(_regression_result(outputs, len(examples)))
    _set_model_spec(response.model_spec, request.model_spec, servable.version)
    return response, len(examples)


def run_multi_inference(servable: Servable, request: inference_pb2.MultiInferenceRequest,
                        execute: Execute = call_signature, deadline: float | None = None,
                        max_request_bytes: int = DEFAULT_MAX_TENSOR_BYTES
                        ) -> tuple[inference_pb2.MultiInferenceResponse, int]:
    """MultiInference: several classify/regress signatures of one model over one input.

    Checked as multi_inference.cc checks it: one model name, no signature twice, every signature reading
    the same input tensor (which is why the export contract makes its Example signatures share one).
    """
    model_name, input_tensor, signature_names = "", "", set()
    plans = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Found ModelSpec with an empty model name.")
        if model_name and task.model_spec.name != model_name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        model_name = task.model_spec.name
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name in signature_names:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {signature_name}")
        signature_names.add(signature_name)
        signature_def = servable.signature_defs.get(signature_name)
        if signature_def is None or signature_name not in servable.signatures:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Requested signature not found in model graph: {signature_name}")
        if task.method_name == CLASSIFY_METHOD:
            aliases = _check_classification_signature(signature_def)
        elif task.method_name == REGRESS_METHOD:
            aliases = _check_regression_signature(signature_def)
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
        tensor_name = signature_def.inputs[EXAMPLES_INPUT].name
        if input_tensor and tensor_name != input_tensor:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Input tensor must be the same for all Signatures.")
        input_tensor = tensor_name
        plans.append((task, signature_name, aliases))
    examples = serialized_examples(request.input, max_request_bytes)
    response = inference_pb2.MultiInferenceResponse()
    for task, signature_name, aliases in plans:
        outputs = execute(servable, signature_name, {EXAMPLES_INPUT: examples}, deadline)
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(
                _classification_result({a: outputs[a] for a in aliases}, len(examples)))
        else:
            result.regression_result.CopyFrom(_regression_result(outputs, len(examples)))
        _set_model_spec(result.model_spec, task.model_spec, servable.version)
    return response, len(examples)
