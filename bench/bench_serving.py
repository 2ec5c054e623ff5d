"""Serving latency and batching throughput of tfrecsys-serve, against the SavedModel called in process.

A dnn is trained on the click-log simulator and exported with ``tfrecsys-export``'s code path. Then, in one
run:

* latency of one ranking request of 100 candidates (``serving_default``, raw features), p50 and p99 over
  sequential requests: the SavedModel's signature called in this process (numpy in, numpy out) is the
  baseline; over gRPC (official stubs) and over REST (columnar JSON) against tfrecsys-serve;
* throughput of 16 concurrent gRPC clients sending such requests for a fixed time, against tfrecsys-serve
  with batching off and with ``--batching_parameters_file=serving/batching_parameters.txt``.

Clients send pre-serialized requests and do not decode answers (one sanity check per client aside), so the
client side costs little of the shared CPU. The machine is shared and noisy: compare the ratios, which are
measured in the same run.

    python -m bench.run_all serving
    python -m bench.bench_serving --requests=500 --throughput_seconds=15
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tfrecsys.config import load_config
from tfrecsys.data.simulators.click_log import ClickLogConfig, write_click_log
from tfrecsys.export.trained import export_trained, first_records
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.serving.client import ServingClient
from tfrecsys.train.loop import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "dnn_simulator.py")
BATCHING_FILE = os.path.join(REPO, "serving", "batching_parameters.txt")
SERVE = os.path.join(os.path.dirname(sys.executable), "tfrecsys-serve")
CANDIDATES = 100
CLIENTS = 16
PREDICT = "/tensorflow.serving.PredictionService/Predict"


def train_and_export(workdir: str, steps: int) -> tuple[str, object]:
    """A dnn trained for ``steps`` on 60k simulated impressions; returns (model base path, its config)."""
    data_dir, model_dir, export_base = (os.path.join(workdir, d) for d in ("data", "model", "export"))
    write_click_log(ClickLogConfig(num_events=60_000, num_shards=2), data_dir)
    config = load_config(CONFIG, {"data.dir": data_dir, "train.steps": steps, "train.steps_per_loop": steps,
                                  "train.batch_size": 256})
    train_and_evaluate(config, model_dir, verbose=0)
    export_trained(config, model_dir, export_base)
    return os.path.join(export_base, "dnn"), config


def candidate_features(config) -> dict[str, np.ndarray]:
    """100 eval rows as the raw features a ranking request carries."""
    schema = FeatureSchema.from_config(config.features)
    records = first_records([os.path.join(config.data.dir, "eval-00000-of-00001.tfrecord")], CANDIDATES)
    return {k: v.numpy() for k, v in schema.parse_examples(tf.constant(records), with_labels=False,
                                                           serving=True).items()}


def percentiles(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50) * 1e3), float(np.percentile(seconds, 99) * 1e3)


def time_calls(call, count: int) -> list[float]:
    for _ in range(min(20, count)):  # warm caches and connections
        call()
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return timings


class Server:
    """tfrecsys-serve on loopback for the ``with`` block."""

    def __init__(self, base_path: str, workdir: str, *extra: str):
        self.port, self.rest_port = _free_port(), _free_port()
        self.log = open(os.path.join(workdir, f"serve-{self.port}.log"), "wb")
        self.process = subprocess.Popen(
            [SERVE, "--bind_address=127.0.0.1", f"--port={self.port}", f"--rest_api_port={self.rest_port}",
             "--model_name=dnn", f"--model_base_path={base_path}", "--file_system_poll_wait_seconds=0",
             f"--grpc_max_threads={2 * CLIENTS}", f"--rest_api_num_threads={CLIENTS}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Server":
        with ServingClient(f"127.0.0.1:{self.port}") as client:
            client.wait_until_available("dnn", timeout_s=120)
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def throughput(port: int, payload: bytes, expected: np.ndarray, seconds: float) -> tuple[float, float]:
    """Requests per second of CLIENTS concurrent gRPC clients over ``seconds``; and their p99 in ms."""
    stop = threading.Event()
    counts, latencies, failures = [0] * CLIENTS, [[] for _ in range(CLIENTS)], []

    def client(index: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        call = channel.unary_unary(PREDICT)
        answer = predict_pb2.PredictResponse.FromString(call(payload, timeout=60))
        if np.max(np.abs(tf.make_ndarray(answer.outputs["score"]) - expected)) > 1e-5:
            failures.append(f"client {index}: wrong scores")
        while not stop.is_set():
            started = time.perf_counter()
            try:
                call(payload, timeout=60)
            except grpc.RpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
                continue
            latencies[index].append(time.perf_counter() - started)
            counts[index] += 1
        channel.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # every client connected and past its first request before the clock starts
    start_counts, started = sum(counts), time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counts), time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests, e.g. {failures[:3]}")
    return (done - start_counts) / elapsed, percentiles([t for per in latencies for t in per])[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per latency measurement")
    parser.add_argument("--throughput_seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--train_steps", type=int, default=300, help="training steps of the served dnn")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="bench_serving_")
    try:
        base_path, config = train_and_export(workdir, args.train_steps)
        features = candidate_features(config)
        saved_model = tf.saved_model.load(os.path.join(base_path, "1"))
        signature = saved_model.signatures["serving_default"]
        expected = signature(**{k: tf.constant(v) for k, v in features.items()})["score"].numpy()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "dnn"
        for name, value in features.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        payload = request.SerializeToString()
        rest_body = json.dumps({"inputs": {k: v.tolist() for k, v in features.items()}}).encode()

        results = {"in_process": percentiles(time_calls(
            lambda: signature(**{k: tf.constant(v) for k, v in features.items()})["score"].numpy(), args.requests))}
        with Server(base_path, workdir) as server:
            channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
            call = channel.unary_unary(PREDICT)
            results["grpc"] = percentiles(time_calls(lambda: call(payload, timeout=60), args.requests))
            url = f"http://127.0.0.1:{server.rest_port}/v1/models/dnn:predict"
            rest_answer = json.load(urllib.request.urlopen(urllib.request.Request(url, data=rest_body), timeout=60))
            assert np.max(np.abs(np.float32(rest_answer["outputs"]) - expected)) < 1e-5
            results["rest"] = percentiles(time_calls(
                lambda: urllib.request.urlopen(urllib.request.Request(url, data=rest_body), timeout=60).read(),
                args.requests))
            channel.close()
            unbatched = throughput(server.port, payload, expected, args.throughput_seconds)
        with Server(base_path, workdir, "--enable_batching", f"--batching_parameters_file={BATCHING_FILE}") as server:
            batched = throughput(server.port, payload, expected, args.throughput_seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    base_p50, base_p99 = results["in_process"]
    print(f"\n{CANDIDATES}-candidate ranking request, {args.requests} sequential requests each")
    print(f"{'path':<22}{'p50 ms':>10}{'p99 ms':>10}{'p50 / in-process':>20}{'p99 / in-process':>20}")
    for name, label in (("in_process", "SavedModel in process"), ("grpc", "gRPC tfrecsys-serve"),
                        ("rest", "REST tfrecsys-serve")):
        p50, p99 = results[name]
        print(f"{label:<22}{p50:>10.2f}{p99:>10.2f}{p50 / base_p50:>20.2f}{p99 / base_p99:>20.2f}")
    print(f"\n{CLIENTS} concurrent gRPC clients, {args.throughput_seconds:.0f} s each")
    print(f"{'batching':<22}{'requests/s':>12}{'candidates/s':>14}{'p99 ms':>10}")
    for label, (rate, p99) in (("off", unbatched), ("on (serving/ file)", batched)):
        print(f"{label:<22}{rate:>12.1f}{rate * CANDIDATES:>14.0f}{p99:>10.1f}")
    print(f"throughput ratio, batching on / off: {batched[0] / unbatched[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
