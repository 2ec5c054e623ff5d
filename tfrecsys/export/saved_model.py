"""SavedModel export under the contract that serving and scoring rely on (../shared/DESIGN.md).

Layout: ``<export_base>/<model_name>/<version>/`` with integer versions, as TF Serving expects. The
SavedModel is written to a hidden temporary directory beside its final place and renamed, so a poller (TF
Serving, tfrecsys-serve) never sees a half-written version.

Signatures of a ranking model (``saved_model_cli show --all`` lists them so):

* ``serving_default`` (``tensorflow/serving/predict``): raw named features with explicit dtypes — ids as
  int64 or strings, dense floats, sequences as padded ``[batch, max_len]`` matrices plus ``<name>_length``;
  a stored column that several features read is one input (``FeatureSchema.serving_aliases``).
  Vocabulary lookup and hashing are inside the model, training-only features are not inputs. Outputs: the
  model's outputs, named by task (``score``; ``ctr``/``cvr``/``ctcvr``).
* ``serving_examples`` (``tensorflow/serving/predict``): ``inputs``, a ``[batch]`` string tensor of
  serialized tf.train.Example, parsed with the training schema; the same outputs (batch scoring uses it).
* per output ``o`` of shape ``[batch]``, over the same ``inputs`` — what TF Serving's Classify, Regress and
  MultiInference call:
  ``classify_<o>`` (``tensorflow/serving/classify``): ``scores`` float32 ``[batch, 1]``, the output as the
  score of one unlabelled class (valid for a probability and for a regression output alike);
  ``regress_<o>`` (``tensorflow/serving/regress``): ``outputs`` float32 ``[batch]``.
  ``tf.saved_model.save`` writes every SignatureDef as ``tensorflow/serving/predict`` and gives every
  signature its own input placeholder; TF Serving's classifier and regressor refuse a signature whose
  method_name is not theirs, and MultiInference needs one input tensor shared by all its signatures. So the
  SignatureDefs are rewritten after saving: method names set, and the Example signatures all read the
  ``serving_examples`` placeholder (the loaders TF Serving uses see one graph; ``tf.saved_model.load``
  restores signatures from the function library and is unaffected).

No function a serving signature reaches may be XLA-compiled (``jit_compile=True``): TF Serving runs XLA only
behind an experimental flag. ``write_version`` refuses such an export for every exporter. Serving functions
are traced in ``tfrecsys.layers.xla.serving_mode()``, so layers with an XLA path export their plain one.

Warmup requests (TF Serving's ``assets.extra/tf_serving_warmup_requests``) are written when examples are
given, and ``assets.extra/tfrecsys.json`` records the schema, outputs and training metrics.
"""

import json
import os
import re
import shutil
import uuid
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfrecsys.contract import (ASSETS_EXTRA_DIR, CLASSIFY_METHOD, CLASSIFY_PREFIX, CLASSIFY_SCORES, EXAMPLES_INPUT,
                               METADATA_FILE, PREDICT_METHOD, REGRESS_METHOD, REGRESS_OUTPUTS, REGRESS_PREFIX,
                               SAVED_MODEL_FILE, SERVING_DEFAULT, SERVING_EXAMPLES, WARMUP_FILE)
from tfrecsys.export.fusion import FUSED_OUTPUT, ScoreFusion
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.xla import serving_mode

_VERSION = re.compile(r"^\d+$")
# Node and function attributes that make TensorFlow compile a function with XLA.
_XLA_ATTRS = ("_XlaMustCompile", "_XlaCompile")
_XLA_OPS = ("XlaLaunch", "_XlaCompile", "_XlaRun", "XlaClusterOutput")


def classify_signature(output: str) -> str:
    """The Classify signature of model output ``output``."""
    return CLASSIFY_PREFIX + output


def regress_signature(output: str) -> str:
    """The Regress signature of model output ``output``."""
    return REGRESS_PREFIX + output


class ServingModule(tf.Module):
    """Holds the Keras model and traces its serving functions; outputs named in ``drop_outputs`` (a model's
    training heads) are left out of every signature; an output named in ``calibrators`` is served through
    its calibration layers, in order (tfrecsys/calibration.py), under its own name; ``fusion``
    (``tfrecsys.export.fusion``) adds the ``fused`` output, a formula of the served (calibrated) ones."""

    def __init__(self, model: tf.keras.Model, schema: FeatureSchema, drop_outputs: Sequence[str] = (),
                 fusion: Optional[ScoreFusion] = None,
                 calibrators: Optional[Mapping[str, Sequence[tf.keras.layers.Layer]]] = None):
        super().__init__()
        self.model = model
        self._schema = schema
        self._drop_outputs = frozenset(drop_outputs)
        self._fusion = fusion
        self.calibrators = {name: list(layers) for name, layers in (calibrators or {}).items() if layers}
        self.serve = tf.function(self._serve, input_signature=[schema.input_signature(serving=True)])
        self.serve_examples = tf.function(
            self._serve_examples, input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])

    def _outputs(self, features):
        # Traced in serving_mode(): layers with an XLA path (tfrecsys.layers.xla) take their plain one here.
        with serving_mode():
            outputs = dict(self.model(features, training=False))
        missing = sorted(set(self.calibrators) - set(outputs))
        if missing:
            raise ValueError(f"calibration maps for outputs {missing}, which the model does not have "
                             f"({sorted(outputs)})")
        for name, layers in self.calibrators.items():
            for layer in layers:
                outputs[name] = layer(outputs[name])
        served = {name: value for name, value in outputs.items() if name not in self._drop_outputs}
        if self._fusion is not None:
            self._fusion.check_outputs(list(served))
            served[FUSED_OUTPUT] = self._fusion(served)
        return served

    def _serve(self, features):
        # A column that several features read is one signature input (a money amount and its bucket).
        with tf.control_dependencies(self._length_checks(features)):
            return self._outputs(self._schema.with_serving_aliases(features))

    def _length_checks(self, features) -> list:
        """Asserts that every ``<name>_length`` input lies in ``[0, max_len]``. A length outside it is a client's
        bug (an unpadded count, a length for another width) that the model would hide: its masks would read
        every slot, or none, and score without a word. Failing, the request gets INVALID_ARGUMENT naming the
        input, from TF Serving and tfrecsys-serve alike."""
        checks = []
        for feature in self._schema.serving_inputs:
            if not (feature.is_sequence and feature.has_own_length) or feature.length_name not in features:
                continue
            length = features[feature.length_name]
            # The message as the assert's only data: a loaded SavedModel prints its data, not its name.
            checks.append(tf.debugging.Assert(
                tf.reduce_all((length >= 0) & (length <= feature.max_len)),
                [f"serving input {feature.length_name} must hold values in [0, {feature.max_len}]: the count "
                 f"of valid leading entries of {feature.name}, [batch, {feature.max_len}]"]))
        return checks

    def _serve_examples(self, serialized):
        return self._outputs(self._schema.parse_examples(serialized, with_labels=False, serving=True))

    def signatures(self) -> dict:
        """Signature key → concrete function, for ``tf.saved_model.save``.

        ``classify_<o>`` and ``regress_<o>`` call ``serve_examples``, so the model is traced once for all of
        them; outputs that are not one value per row (``[batch, k]``) get neither.
        """
        examples = self.serve_examples.get_concrete_function()
        signatures = {SERVING_DEFAULT: self.serve.get_concrete_function(), SERVING_EXAMPLES: examples}
        for output, tensor in sorted(examples.structured_outputs.items()):
            shape = tensor.shape
            if shape.rank == 1 or (shape.rank == 2 and shape[1] == 1):
                signatures[classify_signature(output)] = self._classify(output).get_concrete_function()
                signatures[regress_signature(output)] = self._regress(output).get_concrete_function()
            else:
                logging.info("output %s has shape %s: no Classify/Regress signature for it", output, shape)
        return signatures

    def _classify(self, output: str):
        def classify(serialized):
            value = tf.cast(self.serve_examples(serialized)[output], tf.float32)
            return {CLASSIFY_SCORES: tf.reshape(value, [-1, 1])}

        return tf.function(classify, input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])

    def _regress(self, output: str):
        def regress(serialized):
            value = tf.cast(self.serve_examples(serialized)[output], tf.float32)
            return {REGRESS_OUTPUTS: tf.reshape(value, [-1])}

        return tf.function(regress, input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])


def signature_methods(signature_names) -> dict[str, str]:
    """SignatureDef method_name of each signature key, by the naming rule of this contract."""
    methods = {}
    for name in signature_names:
        if name.startswith(CLASSIFY_PREFIX):
            methods[name] = CLASSIFY_METHOD
        elif name.startswith(REGRESS_PREFIX):
            methods[name] = REGRESS_METHOD
        else:
            methods[name] = PREDICT_METHOD
    return methods


def read_saved_model_proto(saved_model_path: str) -> saved_model_pb2.SavedModel:
    with tf.io.gfile.GFile(os.path.join(saved_model_path, SAVED_MODEL_FILE), "rb") as f:
        return saved_model_pb2.SavedModel.FromString(f.read())


def write_saved_model_proto(saved_model_path: str, saved_model: saved_model_pb2.SavedModel) -> None:
    with tf.io.gfile.GFile(os.path.join(saved_model_path, SAVED_MODEL_FILE), "wb") as f:
        f.write(saved_model.SerializeToString())


def set_serving_methods(saved_model_path: str, methods: dict[str, str],
                        shared_examples_signature: Optional[str] = SERVING_EXAMPLES) -> None:
    """Rewrites the SignatureDefs of a just-saved SavedModel for TF Serving's Example APIs.

    Sets each signature's ``method_name`` from ``methods``, and points the ``inputs`` of every classify and
    regress signature at ``shared_examples_signature``'s placeholder (removing their own), so that
    MultiInference can run several of them on one input tensor.
    """
    saved_model = read_saved_model_proto(saved_model_path)
    for meta_graph in saved_model.meta_graphs:
        signature_defs = meta_graph.signature_def
        unknown = sorted(set(methods) - set(signature_defs))
        if unknown:
            raise ValueError(f"{saved_model_path}: no signatures {unknown} to set the method of; it has "
                             f"{sorted(signature_defs)}")
        for name, method in methods.items():
            signature_defs[name].method_name = method
        if shared_examples_signature is None:
            continue
        shared = signature_defs[shared_examples_signature].inputs[EXAMPLES_INPUT]
        for name, method in methods.items():
            if method in (CLASSIFY_METHOD, REGRESS_METHOD) and name != shared_examples_signature:
                _redirect_input(meta_graph, signature_defs[name].inputs[EXAMPLES_INPUT], shared)
    write_saved_model_proto(saved_model_path, saved_model)


def _redirect_input(meta_graph: meta_graph_pb2.MetaGraphDef, tensor_info, shared) -> None:
    """Feeds what read ``tensor_info``'s placeholder from ``shared``'s instead, and drops the placeholder."""
    if (tensor_info.dtype, tensor_info.tensor_shape) != (shared.dtype, shared.tensor_shape):
        raise ValueError(f"input {tensor_info.name} does not match {shared.name}: cannot share it")
    old_node, new_node = tensor_info.name.split(":")[0], shared.name.split(":")[0]
    graph_def = meta_graph.graph_def
    for node in graph_def.node:
        for index, name in enumerate(node.input):
            if name in (old_node, old_node + ":0"):
                node.input[index] = shared.name
            elif name == "^" + old_node:
                node.input[index] = "^" + new_node
    kept = [node for node in graph_def.node if node.name != old_node]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    tensor_info.name = shared.name


def xla_compiled_functions(saved_model_path: str) -> dict[str, list[str]]:
    """Serving signature → the functions it reaches that are XLA-compiled (``jit_compile=True``).

    Walks the graph TF Serving runs: from each signature's output tensors back through the nodes of the
    MetaGraph, into every function those nodes call and the functions those call.
    """
    found = {}
    for meta_graph in read_saved_model_proto(saved_model_path).meta_graphs:
        functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        nodes = {node.name: node for node in meta_graph.graph_def.node}
        for name, signature_def in meta_graph.signature_def.items():
            compiled = _xla_reached(signature_def, nodes, functions)
            if compiled:
                found[name] = compiled
    return found


def _xla_reached(signature_def, nodes: dict, functions: dict) -> list[str]:
    pending = [info.name.split(":")[0].lstrip("^") for info in signature_def.outputs.values()]
    seen_nodes, seen_functions, compiled = set(), set(), []

    def visit_node(node, where: str) -> None:
        if node.op in _XLA_OPS or any(node.attr[a].b for a in _XLA_ATTRS if a in node.attr):
            compiled.append(f"{where}/{node.name} ({node.op})")
        for attr in node.attr.values():
            for called in ([attr.func.name] if attr.HasField("func") else []) + [f.name for f in attr.list.func]:
                if called in functions and called not in seen_functions:
                    seen_functions.add(called)
                    function = functions[called]
                    if any(function.attr[a].b for a in _XLA_ATTRS if a in function.attr):
                        compiled.append(called)
                    for inner in function.node_def:
                        visit_node(inner, called)
        if node.op in functions and node.op not in seen_functions:  # a function called by its name as an op
            seen_functions.add(node.op)
            for inner in functions[node.op].node_def:
                visit_node(inner, node.op)

    while pending:
        name = pending.pop()
        if name in seen_nodes or name not in nodes:
            continue
        seen_nodes.add(name)
        visit_node(nodes[name], "graph")
        pending.extend(i.split(":")[0].lstrip("^") for i in nodes[name].input)
    return compiled


def check_serving_without_xla(saved_model_path: str, shown_path: Optional[str] = None) -> None:
    """Raises ValueError naming the signature and function when serving would need XLA; the message names
    ``shown_path`` (default: ``saved_model_path``)."""
    compiled = xla_compiled_functions(saved_model_path)
    if compiled:
        details = "; ".join(f"{signature}: {', '.join(functions)}" for signature, functions in sorted(compiled.items()))
        raise ValueError(
            f"SavedModel {shown_path or saved_model_path} needs XLA to serve ({details}). TF Serving runs XLA-compiled "
            "functions only behind its experimental --xla_cpu_compilation_enabled flag: export the serving "
            "path without jit_compile=True.")


def existing_versions(model_path: str) -> list[int]:
    if not tf.io.gfile.isdir(model_path):
        return []
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_path)
                  if _VERSION.match(name.rstrip("/")))


def write_version(export_base: str, model_name: str, write, version: Optional[int] = None) -> str:
    """Creates ``<export_base>/<model_name>/<version>`` atomically and returns its path.

    ``write(staging_path, version)`` fills a hidden staging directory beside the final one, which is then
    checked (a SavedModel whose serving signatures need XLA is refused) and renamed into place; on any failure
    the staging directory is removed and no version appears. ``version`` defaults to one more than the
    highest existing version (1 for the first export); an existing version is never overwritten. Every
    exporter (ranking, retrieval, ...) goes through here.
    """
    model_path = os.path.join(export_base, model_name)
    versions = existing_versions(model_path)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    if version in versions:
        raise FileExistsError(f"{model_path}/{version} exists already; versions are never overwritten")
    final_path = os.path.join(model_path, str(version))
    staging_path = os.path.join(model_path, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    tf.io.gfile.makedirs(model_path)
    try:
        write(staging_path, version)
        if tf.io.gfile.exists(os.path.join(staging_path, SAVED_MODEL_FILE)):
            check_serving_without_xla(staging_path, final_path)
        tf.io.gfile.rename(staging_path, final_path)
    except BaseException:
        if tf.io.gfile.exists(staging_path):
            shutil.rmtree(staging_path, ignore_errors=True)
        raise
    logging.info("exported %s version %d to %s", model_name, version, final_path)
    return final_path


def write_extra_metadata(saved_model_path: str, content: dict) -> None:
    """``assets.extra/tfrecsys.json``: what the export holds, for people and tools (TF Serving ignores it)."""
    tf.io.gfile.makedirs(os.path.join(saved_model_path, ASSETS_EXTRA_DIR))
    with tf.io.gfile.GFile(os.path.join(saved_model_path, METADATA_FILE), "w") as f:
        json.dump(content, f, indent=2, sort_keys=True)


def export_saved_model(model: tf.keras.Model, schema: FeatureSchema, export_base: str, model_name: str,
                       version: Optional[int] = None, warmup_examples: Sequence[bytes] = (),
                       metadata: Optional[dict] = None, drop_outputs: Sequence[str] = (),
                       fusion: Optional[ScoreFusion] = None,
                       calibrators: Optional[Mapping[str, Sequence[tf.keras.layers.Layer]]] = None) -> str:
    """Writes a ranking ``model`` as ``<export_base>/<model_name>/<version>`` and returns that path.

    ``drop_outputs``: outputs of ``model`` that no signature returns (training heads).
    ``calibrators``: ``{output: [layers]}`` served on that output (``tfrecsys.calibration.fit_for_export``).
    ``fusion``: adds the served ``fused`` output (``tfrecsys.export.fusion``) over the calibrated outputs,
    with its Classify/Regress signatures like every output.
    ``warmup_examples``: serialized tf.train.Example rows that become TF Serving warmup requests: one
    ``serving_default`` Predict per row, and one Classify and one Regress of all rows per such signature.
    """
    module = ServingModule(model, schema, drop_outputs, fusion, calibrators)
    signatures = module.signatures()
    methods = signature_methods(signatures)

    def write(path, version):
        # Saving traces the Keras layers' own call functions too: in serving mode they keep the plain path.
        with serving_mode():
            tf.saved_model.save(module, path, signatures=signatures)
        set_serving_methods(path, methods)
        if warmup_examples:
            tf.io.gfile.makedirs(os.path.join(path, ASSETS_EXTRA_DIR))
            _write_warmup_requests(os.path.join(path, ASSETS_EXTRA_DIR, WARMUP_FILE), schema, model_name,
                                   list(warmup_examples), methods)
        write_extra_metadata(path, {"model_name": model_name, "version": version,
                                    "outputs": sorted(signatures[SERVING_DEFAULT].structured_outputs),
                                    "signatures": methods, "schema": schema.to_json(),
                                    **({"fusion": fusion.formula} if fusion else {}), **(metadata or {})})

    return write_version(export_base, model_name, write, version)


def _write_warmup_requests(path: str, schema: FeatureSchema, model_name: str, examples: list,
                           methods: dict[str, str]) -> None:
    """TF Serving's warmup format (TFRecord of PredictionLog): a PredictRequest per example, then a
    ClassificationRequest / RegressionRequest of all examples for each classify / regress signature."""
    from tensorflow_serving.apis import (classification_pb2, input_pb2, model_pb2, predict_pb2,
                                         prediction_log_pb2, regression_pb2)

    parsed = schema.parse_examples(tf.constant(examples), with_labels=False, serving=True)
    features = {name: parsed[name] for name in schema.input_signature(serving=True)}
    example_input = input_pb2.Input(example_list=input_pb2.ExampleList(
        examples=[tf.train.Example.FromString(example) for example in examples]))
    with tf.io.TFRecordWriter(path) as writer:
        for row in range(len(examples)):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_DEFAULT))
            for name, value in features.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value[row:row + 1])))
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
        for name, method in sorted(methods.items()):
            spec = model_pb2.ModelSpec(name=model_name, signature_name=name)
            if method == CLASSIFY_METHOD:
                log = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(
                    request=classification_pb2.ClassificationRequest(model_spec=spec, input=example_input)))
            elif method == REGRESS_METHOD:
                log = prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(
                    request=regression_pb2.RegressionRequest(model_spec=spec, input=example_input)))
            else:
                continue
            writer.write(log.SerializeToString())
