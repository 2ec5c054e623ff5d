"""Shared pytest set-up: tfrecsys is imported first so TensorFlow always loads with Keras 2."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import tfrecsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any test imports tensorflow)

BIN = os.path.dirname(sys.executable)
SERVER_START_TIMEOUT_S = 300  # generous: two test processes and other work may share the 2 cores
# Set to 1 by .ci/run when ../shared/datasets exists beside the clone: a dataset test that skips there means
# a test lost its data (a renamed file, a wrong path), so the skip fails the run instead.
REQUIRE_DATASETS_ENV = "TFRECSYS_REQUIRE_DATASETS"
# Every dataset test's skip reason names the missing path, which lies under ../shared/datasets.
DATASET_SKIP_MARKER = os.path.join("shared", "datasets")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under TFRECSYS_REQUIRE_DATASETS=1, a skip for an absent dataset becomes a failure naming the path."""
    report = (yield).get_result()
    if not report.skipped or os.environ.get(REQUIRE_DATASETS_ENV) != "1" or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if DATASET_SKIP_MARKER in reason:
        report.outcome = "failed"
        report.longrepr = (f"{REQUIRE_DATASETS_ENV}=1 (the datasets are expected beside the clone) but this "
                           f"dataset test skipped: {reason}")


# Every binary whose --help a test reads (tests/test_walking_skeleton.py, test_serving*.py, test_scoring_docs.py).
HELP_BINARIES = ("tfrecsys-simulate", "tfrecsys-train", "tfrecsys-export", "tfrecsys-report", "tfrecsys-quickstart",
                 "tfrecsys-serve", "tfrecsys-query", "tfrecsys-score")


@pytest.fixture(scope="session")
def binary_help() -> dict:
    """``<binary> --help`` of every binary in HELP_BINARIES as a CompletedProcess, run once per session and side
    by side: each process spends its ~6 s importing TensorFlow, so one after another they cost the suite a
    minute, side by side about the time of one per core."""
    processes = {binary: subprocess.Popen([os.path.join(BIN, binary), "--help"], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True) for binary in HELP_BINARIES}
    completed = {}
    try:
        for binary, process in processes.items():
            stdout, stderr = process.communicate(timeout=600)
            completed[binary] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return completed


@pytest.fixture(scope="session")
def multi_task_base(tmp_path_factory) -> str:
    """Model base path holding version 1 of the three-output contract model (ctr, cvr, ctcvr), exported once
    per session for the output_filter tests."""
    from tests.contract_models import export_contract_model

    base = str(tmp_path_factory.mktemp("multi_task") / "multi_task")
    export_contract_model(base, version=1, multi_task=True)
    return base


@pytest.fixture
def beam_temp_dirs(tmp_path, monkeypatch):
    """Gives the test an empty temporary directory of its own (``tempfile.tempdir``, where ``beam.Pipeline``
    makes its ``beam-pipeline-temp*`` directory) and returns a function listing the Beam directories left in
    it: a pipeline that failed while it was built must not leave one behind."""
    scratch = tmp_path / "tempdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return lambda: sorted(path.name for path in scratch.glob("beam-pipeline-temp*"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    return free_port()


def start_server(args: list[str], log_path) -> subprocess.Popen:
    """``tfrecsys-serve`` on 127.0.0.1 with ``args``; its output goes to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([os.path.join(BIN, "tfrecsys-serve"), "--bind_address=127.0.0.1", *args],
                                stdout=log, stderr=subprocess.STDOUT)


def stop_server(process: subprocess.Popen) -> int:
    """SIGTERM, as docker and Kubernetes stop a server; kill only if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_until_serving(process: subprocess.Popen, target: str, model_name: str, log_path,
                       timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
    """Returns once ``model_name`` is AVAILABLE at ``target``; fails at once, with the server's log, if the
    process exits first."""
    from tfrecsys.serving.client import ServingClient

    deadline = time.monotonic() + timeout_s
    with ServingClient(target) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tfrecsys-serve exited with {process.returncode}:\n{open(log_path).read()}")
            try:
                client.wait_until_available(model_name, timeout_s=2)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise


@contextlib.contextmanager
def served_model(model_base_path: str, model_name: str, log_dir, *extra_args: str):
    """Serves one model base path for the ``with`` block and yields the gRPC target ``127.0.0.1:<port>``."""
    port = free_port()
    log_path = os.path.join(log_dir, f"tfrecsys-serve-{port}.log")
    process = start_server([f"--port={port}", f"--model_name={model_name}", f"--model_base_path={model_base_path}",
                            *extra_args], log_path)
    try:
        wait_until_serving(process, f"127.0.0.1:{port}", model_name, log_path)
        yield f"127.0.0.1:{port}"
    finally:
        stop_server(process)
