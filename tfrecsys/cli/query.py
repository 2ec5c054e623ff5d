"""tfrecsys-query: send one Predict (or Classify, Regress) request to a TF Serving gRPC API; print JSON.

Works against tfrecsys-serve and tensorflow_model_server alike. Either give the raw features as JSON
(their dtypes and shapes are read from the model's GetModelMetadata, so a JSON int becomes int64, a number
becomes float32 where the signature says so, and a value that does not fit is an error naming the input),
or let it send the first rows of a TFRecord file of tf.train.Example to the examples signature:

  tfrecsys-query --server=127.0.0.1:8500 --model_name=dnn \\
      --inputs='{"user_id": [1, 2], "item_id": [7, 9], "price": [0.5, 1.5], ...}'
  tfrecsys-query --server=127.0.0.1:8500 --model_name=dnn --tfrecord=data/eval.tfrecord --num_rows=5
  tfrecsys-query --server=127.0.0.1:8500 --model_name=dnn --tfrecord=data/eval.tfrecord --api=regress \\
      --signature_name=regress_score

With --tfrecord, a sequence input of the model that none of the rows holds is named in a warning on stderr: the
model would read it as an empty history (rows whose histories a per-user store holds, as SIM's do).

Prints {"<output>": [...], ...} on stdout (Classify: {"classes": [[[label, score], ...], ...]}, Regress:
{"outputs": [...]}); exits 1 with the server's status and message on failure.
"""

import json
import sys

import grpc
import numpy as np
import tensorflow as tf
from absl import app, flags
from google.protobuf.message import DecodeError

from tfrecsys.cli.common import run_binary
from tfrecsys.contract import EXAMPLES_INPUT, LENGTH_SUFFIX, SERVING_EXAMPLES
from tfrecsys.serving.client import DEFAULT_SIGNATURE, ServingClient
from tfrecsys.serving.tensors import json_to_ndarray, ndarray_to_json

FLAGS = flags.FLAGS

flags.DEFINE_string("server", "127.0.0.1:8500", "host:port of the gRPC API (tfrecsys-serve --port, or "
                    "tensorflow_model_server --port).")
flags.DEFINE_string("model_name", "default", "Name of the model to query, as the server knows it "
                    "(tfrecsys-serve --model_name, or a name in --model_config_file).")
flags.DEFINE_integer("model_version", None, "Version to query; default: the latest version the server serves.",
                     lower_bound=0)
flags.DEFINE_string("signature_name", None, f"Signature to call; default: {DEFAULT_SIGNATURE} with --inputs, "
                    f"{SERVING_EXAMPLES} with --tfrecord.")
flags.DEFINE_string("inputs", None, "JSON object of input name → value (nested lists for batches), e.g. "
                    "'{\"user_id\": [1, 2], \"price\": [0.5, 1.5]}'; binary strings as {\"b64\": \"...\"}. "
                    "Exactly one of --inputs and --tfrecord.")
flags.DEFINE_string("tfrecord", None, f"TFRecord file of serialized tf.train.Example (GZIP if it ends in .gz); "
                    f"its first --num_rows records are sent as the '{EXAMPLES_INPUT}' input of the examples "
                    "signature. Exactly one of --inputs and --tfrecord.")
flags.DEFINE_integer("num_rows", 10, "How many records of --tfrecord to send in the one request.", lower_bound=1)
flags.DEFINE_list("output_filter", [], "Comma-separated outputs to return; default: every output.")
flags.DEFINE_enum("api", "predict", ["predict", "classify", "regress"], "PredictionService API to call. Classify "
                  "and Regress send the --tfrecord rows to a classify_<output> / regress_<output> signature, "
                  "named by --signature_name.")
flags.DEFINE_float("timeout", 10.0, "Deadline in seconds for each gRPC call.", lower_bound=0.001)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if (FLAGS.inputs is None) == (FLAGS.tfrecord is None):
        raise app.UsageError("Give exactly one of --inputs and --tfrecord")
    if FLAGS.api != "predict" and (FLAGS.tfrecord is None or not FLAGS.signature_name):
        raise app.UsageError(f"--api={FLAGS.api} needs --tfrecord and --signature_name (e.g. "
                             f"{FLAGS.api}_score)")
    try:
        with ServingClient(FLAGS.server, timeout=FLAGS.timeout) as client:
            if FLAGS.api == "classify":
                print(json.dumps({"classes": client.classify(FLAGS.model_name, _records(), FLAGS.signature_name,
                                                             FLAGS.model_version)}))
                return 0
            if FLAGS.api == "regress":
                outputs = {"outputs": client.regress(FLAGS.model_name, _records(), FLAGS.signature_name,
                                                     FLAGS.model_version)}
            else:
                outputs = _query_inputs(client) if FLAGS.inputs is not None else _query_tfrecord(client)
    except grpc.RpcError as error:
        return _fail(f"{error.code().name}: {error.details()}")
    except tf.errors.OpError as error:  # e.g. a corrupt --tfrecord
        return _fail(error.message)
    print(json.dumps({name: ndarray_to_json(name, array) for name, array in outputs.items()}))
    return 0


def _query_inputs(client: ServingClient) -> dict[str, np.ndarray]:
    signature_name = FLAGS.signature_name or DEFAULT_SIGNATURE
    try:
        values = json.loads(FLAGS.inputs)
    except json.JSONDecodeError as error:
        raise ValueError(f"--inputs is not valid JSON: {error}") from error
    if not isinstance(values, dict):
        raise ValueError("--inputs must be a JSON object of input name → value")
    signatures = client.metadata(FLAGS.model_name, FLAGS.model_version)
    if signature_name not in signatures:
        raise ValueError(f"Model {FLAGS.model_name} has no signature {signature_name!r}; it has "
                         f"{sorted(signatures)}")
    specs = signatures[signature_name]
    arrays = {}
    for name, value in values.items():
        if name not in specs:
            raise ValueError(f"Input {name!r} is not an input of signature {signature_name!r}; its inputs are "
                             f"{sorted(specs)}")
        arrays[name] = json_to_ndarray(name, value, *specs[name])
    return client.predict(FLAGS.model_name, arrays, signature_name, FLAGS.model_version, FLAGS.output_filter)


def _records() -> list[bytes]:
    """The first --num_rows records of --tfrecord."""
    if not tf.io.gfile.exists(FLAGS.tfrecord):
        raise ValueError(f"--tfrecord {FLAGS.tfrecord} does not exist")
    compression = "GZIP" if FLAGS.tfrecord.endswith(".gz") else ""
    dataset = tf.data.TFRecordDataset(FLAGS.tfrecord, compression_type=compression).take(FLAGS.num_rows)
    records = list(dataset.as_numpy_iterator())
    if not records:
        raise ValueError(f"No records in {FLAGS.tfrecord}")
    return records


def _query_tfrecord(client: ServingClient) -> dict[str, np.ndarray]:
    records = _records()
    _warn_of_absent_sequences(client, records)
    return client.predict(FLAGS.model_name, {EXAMPLES_INPUT: np.array(records, dtype=object)},
                          FLAGS.signature_name or SERVING_EXAMPLES, FLAGS.model_version, FLAGS.output_filter)


def _warn_of_absent_sequences(client: ServingClient, records: list[bytes]) -> None:
    """Warns on stderr of each sequence input of ``serving_default`` (a ``[batch, n]`` input with its
    ``<name>_length``) that none of ``records`` holds: the examples signature parses an absent list as an empty
    one, so such rows are scored as empty histories without a word. Rows of a config whose histories a
    per-user store holds (SIM's lifelong ones) are such rows. A warning, not an error: a sequence may be read
    from a column of another name (a feature's ``source``), which the server's metadata does not show."""
    try:
        inputs = client.metadata(FLAGS.model_name, FLAGS.model_version).get(DEFAULT_SIGNATURE, {})
    except grpc.RpcError:
        return  # the request itself will report what is wrong with the server or the model
    sequences = sorted(name for name, (_, shape) in inputs.items()
                       if shape is not None and len(shape) == 2 and name + LENGTH_SUFFIX in inputs)
    present: set[str] = set()
    for record in records:
        try:
            present.update(tf.train.Example.FromString(record).features.feature.keys())
        except DecodeError:
            continue  # the server names a row that is no tf.train.Example
    absent = [name for name in sequences if name not in present]
    if absent:
        print(f"tfrecsys-query: warning: none of the {len(records)} rows of {FLAGS.tfrecord} has "
              f"{', '.join(repr(name) for name in absent)}, sequence input(s) of model {FLAGS.model_name}: the "
              "model reads an absent sequence as an empty one. Histories a per-user store holds "
              "(config.data.user_histories) must be joined into the rows before serving.", file=sys.stderr)


def _fail(message: str) -> int:
    print(f"tfrecsys-query: error: {message}", file=sys.stderr)
    return 1


def run() -> None:
    run_binary("tfrecsys-query", __name__, __doc__, main)


if __name__ == "__main__":
    run()
