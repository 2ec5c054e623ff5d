"""tfrecsys-quickstart: the main job, end to end, with the same binaries a user runs by hand.

    simulate → train → export → start tfrecsys-serve → query it over gRPC → Beam batch score → summary

Each step's command line is printed before it runs; the server is stopped however the job ends.

    tfrecsys-quickstart --workdir=runs/quickstart
"""

import glob
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

from absl import flags

from tfrecsys.cli.common import run_binary

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Directory for everything the job writes (data/, "
                               "model/, export/, scores/); the model, export and scores of an earlier run "
                               "there are replaced.")
_CONFIG = flags.DEFINE_string("config", "configs/dnn_simulator.py", "Experiment config file to run.")
_PORT = flags.DEFINE_integer("port", 0, "gRPC port for the server (0: a free port on 127.0.0.1).",
                             lower_bound=0)
_STEP_TIMEOUT = flags.DEFINE_integer("step_timeout", 600, "Seconds any one step may take before the job "
                                     "stops with an error.", lower_bound=1)

MODEL_NAME = "dnn"


def _binary(name: str) -> list[str]:
    """The console script installed beside this interpreter, else ``python -m`` of its module."""
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "tfrecsys.cli." + name.removeprefix("tfrecsys-")]


def _run(name: str, *args: str, capture: bool = False) -> str:
    """Runs one binary; its output goes straight to the terminal (progress bars stay live) unless
    ``capture``, which returns it."""
    print(f"\n$ {name} {shlex.join(args)}", flush=True)
    result = subprocess.run(_binary(name) + list(args), stdout=subprocess.PIPE if capture else None, text=True,
                            timeout=_STEP_TIMEOUT.value)
    if capture:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"tfrecsys-quickstart: {name} failed with exit status {result.returncode}")
    return result.stdout or ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv):
    del argv
    started = time.perf_counter()
    workdir = _WORKDIR.value
    data_dir, model_dir = os.path.join(workdir, "data"), os.path.join(workdir, "model")
    export_base, scores = os.path.join(workdir, "export"), os.path.join(workdir, "scores")
    for path in (model_dir, export_base, scores):
        shutil.rmtree(path, ignore_errors=True)
    config = [f"--config={_CONFIG.value}", f"--config.data.dir={data_dir}"]

    _run("tfrecsys-simulate", *config)
    _run("tfrecsys-train", *config, f"--model_dir={model_dir}")
    _run("tfrecsys-export", *config, f"--model_dir={model_dir}", f"--export_base={export_base}")

    port = _PORT.value or _free_port()
    model_base_path = os.path.join(export_base, MODEL_NAME)
    eval_file = sorted(glob.glob(os.path.join(data_dir, "eval-*.tfrecord")))[0]
    server_args = ["--bind_address=127.0.0.1", f"--port={port}", f"--model_name={MODEL_NAME}",
                   f"--model_base_path={model_base_path}", "--file_system_poll_wait_seconds=0"]
    print(f"\n$ tfrecsys-serve {shlex.join(server_args)} &", flush=True)
    server = subprocess.Popen(_binary("tfrecsys-serve") + server_args)
    try:
        from tfrecsys.serving.client import ServingClient

        with ServingClient(f"127.0.0.1:{port}") as client:
            client.wait_until_available(MODEL_NAME, timeout_s=_STEP_TIMEOUT.value)
        served = json.loads(_run("tfrecsys-query", f"--server=127.0.0.1:{port}", f"--model_name={MODEL_NAME}",
                                 f"--tfrecord={eval_file}", "--num_rows=3", capture=True).strip().splitlines()[-1])
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    _run("tfrecsys-score", f"--input={os.path.join(data_dir, 'eval-*.tfrecord')}",
         f"--model_base_path={model_base_path}", f"--output={os.path.join(scores, MODEL_NAME)}")
    scored_rows = sum(1 for path in glob.glob(os.path.join(scores, f"{MODEL_NAME}-*-of-*.jsonl")) for _ in open(path))
    with open(os.path.join(model_dir, "eval_metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(data_dir, "metadata.json")) as f:
        oracle_auc = json.load(f)["oracle_auc"]

    print("\n== tfrecsys quickstart summary ==")
    print(f"eval AUC        {metrics['score']['auc']:.4f}  (oracle {oracle_auc:.4f}, logloss "
          f"{metrics['score']['logloss']:.4f}, step {metrics['step']})")
    print(f"served scores   {served['score']}  (gRPC Predict, 3 eval rows)")
    print(f"scored rows     {scored_rows}  (Beam DirectRunner → {scores})")
    print(f"export          {model_base_path}")
    print(f"report          {os.path.join(model_dir, 'report', 'index.html')}  (curves, metrics, calibration)")
    print(f"total time      {time.perf_counter() - started:.0f} s")


def run():
    run_binary("tfrecsys-quickstart", __name__, __doc__, main)


if __name__ == "__main__":
    run()
