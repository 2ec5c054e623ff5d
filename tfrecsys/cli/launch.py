"""tfrecsys-launch: run tfrecsys-train as a local cluster of N workers under MultiWorkerMirroredStrategy.

    tfrecsys-launch --workers=2 -- --config=configs/dnn_simulator.py --model_dir=runs/dnn2

Everything after `--` goes to every worker's tfrecsys-train. Each worker gets a free port on 127.0.0.1 and
its TF_CONFIG (worker 0 is the chief); their output is relayed with a `[worker i]` prefix. When a worker
fails, every other worker is stopped; with --max_restarts the whole cluster is started again and resumes
from the last backup in <model_dir>/backup, as a cluster manager would restart it. Exit status: 0 when all
workers finished, the failed worker's status otherwise, 124 after --timeout_s.
"""

import signal
import sys

from absl import app, flags

from tfrecsys.cli.common import run_binary

_WORKERS = flags.DEFINE_integer("workers", 2, "Number of worker processes (worker 0 is the chief).",
                                lower_bound=1)
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 3600.0, "Seconds the whole job (restarts included) may take; "
                                "then every worker is stopped and the exit status is 124.", lower_bound=1.0)
_MAX_RESTARTS = flags.DEFINE_integer("max_restarts", 0, "How many times the cluster is restarted after a worker "
                                     "fails (0: fail at once). Training resumes from the last backup.",
                                     lower_bound=0)
_GRACE_S = flags.DEFINE_float("grace_s", 5.0, "Seconds between SIGTERM and SIGKILL when workers are stopped.",
                              lower_bound=0.0)
_GPUS_PER_WORKER = flags.DEFINE_integer(
    "gpus_per_worker", 0, "On a machine with several GPUs: give worker i the GPUs [i*K, (i+1)*K) through "
    "CUDA_VISIBLE_DEVICES. 0 leaves CUDA_VISIBLE_DEVICES as it is.", lower_bound=0)


class _Terminated(Exception):
    """SIGTERM to the launcher: unwinds so that the workers are stopped too."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def main(argv):
    train_flags = argv[1:]
    if not train_flags:
        raise app.UsageError("give tfrecsys-train's flags after --, e.g. tfrecsys-launch --workers=2 -- "
                             "--config=configs/dnn_simulator.py --model_dir=runs/dnn")
    from tfrecsys.train.launch import launch, train_command

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        status = launch(train_command(train_flags), _WORKERS.value, timeout_s=_TIMEOUT_S.value,
                        max_restarts=_MAX_RESTARTS.value, grace_s=_GRACE_S.value,
                        gpus_per_worker=_GPUS_PER_WORKER.value)
    except (KeyboardInterrupt, _Terminated):
        print("tfrecsys-launch: interrupted; stopped every worker", file=sys.stderr)
        status = 130
    sys.exit(status)


def run():
    run_binary("tfrecsys-launch", __name__, __doc__, main)


if __name__ == "__main__":
    run()
