"""What a user sees at the command line: one ``error:`` line with exit status 2 for usage and config
mistakes, errors and log lines never glued to a progress bar, quiet library logs with ``--verbosity`` to get
them back, Ctrl-C during training ending in exit status 130 after a checkpoint the rerun resumes from, and
``tfrecsys-score`` failing when rows went to the dead letters."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests.contract_models import example_rows, export_contract_model, to_example
from tfrecsys.data.simulators.click_log import ClickLogConfig, write_click_log

BIN = os.path.dirname(sys.executable)
REPO = os.path.join(os.path.dirname(__file__), os.pardir)
CONFIG = os.path.join(REPO, "configs", "dnn_simulator.py")


def run(binary: str, *args: str, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, binary), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def assert_one_error_line(result: subprocess.CompletedProcess, program: str, exit_code: int, *phrases: str):
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


@pytest.mark.parametrize("args, phrases", [
    (["--config.train.batchsize=5"], ["--config.train.batchsize=5", "no field 'batchsize'", '"batch_size"']),
    (["--config.train.steps=many", "leftover"], ["--config.train.steps=many", "invalid literal"]),
    # Every model option is a field (tests/test_model_options.py sets ones the file leaves out): an unknown
    # one is named with the closest option and where the options are listed.
    (["--config.model.embedding_l3=1e-6"], ["--config.model.embedding_l3=1e-6: the config has no field "
                                            "'embedding_l3'", '"embedding_l2"', "docs/model-options.md"]),
])
def test_command_line_mistakes_end_in_one_error_line_with_status_2(tmp_path, args, phrases):
    result = run("tfrecsys-train", f"--config={CONFIG}", f"--model_dir={tmp_path / 'model'}", *args)
    assert_one_error_line(result, "tfrecsys-train", 2, *phrases)


def test_a_config_file_that_does_not_exist_is_named_with_the_ones_that_do(tmp_path):
    result = run("tfrecsys-train", "--config=configs/nope.py", f"--model_dir={tmp_path / 'model'}", cwd=REPO)
    assert_one_error_line(result, "tfrecsys-train", 2, "--config=configs/nope.py", "no such config file",
                          "configs/dnn_simulator.py")


@pytest.mark.parametrize("config, phrases", [
    ("configs/din_simulator.py:unknown", ["--config=configs/din_simulator.py:unknown: configs/din_simulator.py takes "
                                          "no argument after ':' (got 'unknown'); use --config=configs/din_simulator.py"]),
    ("configs/mmoe.py:unknown", ["--config=configs/mmoe.py:unknown: configs/mmoe.py: dataset 'unknown' is not one of "
                                 "['ali_ccp', 'aliexpress', 'census', 'simulator']"]),
])
def test_a_config_file_that_raises_on_its_argument_is_one_error_line(config, phrases, tmp_path):
    """ml_collections puts the config file's whole traceback into absl's flag error: it was the error line."""
    result = run("tfrecsys-train", f"--config={config}", f"--model_dir={tmp_path / 'model'}", cwd=REPO)
    assert_one_error_line(result, "tfrecsys-train", 2, *phrases)


def test_a_missing_required_flag_is_a_usage_error():
    result = run("tfrecsys-export", f"--config={CONFIG}", "--export_base=/tmp/nowhere")
    assert_one_error_line(result, "tfrecsys-export", 2, "--model_dir")


def test_an_error_after_an_open_progress_line_starts_its_own_line():
    """Keras' progress bar leaves its line open; the error (stderr) and a log line must not be glued to it
    when both streams go to one terminal."""
    script = (
        "import sys\n"
        "from absl import logging\n"
        "from tfrecsys.cli.common import run_binary\n"
        "from tfrecsys.data.input import DataError\n"
        "def main(argv):\n"
        "    sys.stdout.write('100/100 [====] - loss: 0.3890'); sys.stdout.flush()\n"
        "    logging.info('step 100: checkpoint')\n"
        "    sys.stdout.write('\\r100/100 [====] - loss: 0.3890'); sys.stdout.flush()\n"
        "    raise DataError('cannot read input data: x.tfrecord')\n"
        "run_binary('tfrecsys-x', __name__, 'doc', main)\n")
    result = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "tfrecsys-x: error: cannot read input data: x.tfrecord" in lines, result.stdout
    assert any(line.endswith("step 100: checkpoint") and line.startswith("I") for line in lines), result.stdout


@pytest.fixture(scope="module")
def click_log(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("click_log"))
    write_click_log(ClickLogConfig(num_events=6_000, num_shards=1), data_dir)
    return data_dir


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_exits_130_and_the_same_command_resumes(click_log, tmp_path):
    command = [os.path.join(BIN, "tfrecsys-train"), f"--config={CONFIG}", f"--config.data.dir={click_log}",
               f"--model_dir={tmp_path / 'model'}", "--config.train.steps=4000", "--config.train.steps_per_loop=2000",
               "--config.train.batch_size=32", "--config.train.eval_every_loop=0", "--config.train.best_metric="]
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Interrupt once the progress bar shows training steps.
        deadline = time.monotonic() + 240
        while "ETA" not in log_path.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130, log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    interrupted = [line for line in output.splitlines() if line.startswith("tfrecsys-train: interrupted at step ")]
    assert len(interrupted) == 1 and interrupted[0].endswith("; rerun the same command to resume"), output[-3000:]
    step = int(interrupted[0].split("step ")[1].split(";")[0])
    assert 0 < step < 4000
    assert tf.train.latest_checkpoint(str(tmp_path / "model" / "checkpoints")).endswith(f"ckpt-{step}")

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"training from step {step} to step 4000" in rerun.stderr
    assert json.load(open(tmp_path / "model" / "eval_metrics.json"))["step"] == 4000


@pytest.fixture(scope="module")
def damaged_rows(tmp_path_factory):
    """20 good rows and one that is not a tf.train.Example, and a contract model to score them with."""
    root = tmp_path_factory.mktemp("damaged")
    export_contract_model(str(root / "model"), version=1)
    with tf.io.TFRecordWriter(str(root / "rows.tfrecord")) as writer:
        for row in example_rows(20, seed=1):
            writer.write(to_example(row))
        writer.write(b"not an example")
    return root


def test_score_fails_when_rows_went_to_the_dead_letters_and_logs_stay_quiet(damaged_rows):
    args = [f"--input={damaged_rows / 'rows.tfrecord'}", f"--model_base_path={damaged_rows / 'model'}"]
    strict = run("tfrecsys-score", *args, f"--output={damaged_rows / 'strict' / 'scores'}")
    assert_one_error_line(strict, "tfrecsys-score", 1, "1 of 21 rows", "--max_rejected_fraction=0",
                          "dead_letter")
    assert "Scored 20 of 21 rows" in strict.stdout and "Rejected 1 rows" in strict.stdout
    # No Prism download attempt, no Beam or TensorFlow chatter: the summary and the error are the output.
    for noise in ("prism", "Falling back", "apitools", "Resource module", "WriteImpl"):
        assert noise.lower() not in (strict.stdout + strict.stderr).lower(), noise
    assert len(strict.stderr.strip().splitlines()) == 1, strict.stderr


@pytest.mark.slow  # a second Beam run of the binary: make test-all
def test_score_passes_when_the_rejected_fraction_is_within_the_limit(damaged_rows):
    args = [f"--input={damaged_rows / 'rows.tfrecord'}", f"--model_base_path={damaged_rows / 'model'}"]
    tolerant = run("tfrecsys-score", *args, f"--output={damaged_rows / 'tolerant' / 'scores'}",
                   "--max_rejected_fraction=0.05")
    assert tolerant.returncode == 0, tolerant.stderr[-3000:]
    assert len(glob.glob(str(damaged_rows / "tolerant" / "scores_dead_letter-*.jsonl"))) == 1


@pytest.mark.slow
def test_verbosity_gives_the_library_logs_back(damaged_rows):
    verbose = run("tfrecsys-score", f"--input={damaged_rows / 'rows.tfrecord'}",
                  f"--model_base_path={damaged_rows / 'model'}", f"--output={damaged_rows / 'verbose' / 'scores'}",
                  "--max_rejected_fraction=1", "--verbosity=0")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "apitools not found" in verbose.stderr and "WriteImpl" in verbose.stderr
    assert "prism" not in verbose.stderr.lower(), "DirectRunner must be resolved to its local runner explicitly"
