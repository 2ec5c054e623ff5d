"""A local multi-worker cluster: N copies of a training command on 127.0.0.1, each with its own TF_CONFIG.

What a cluster manager (Kubernetes, a batch scheduler) does for a MultiWorkerMirroredStrategy job, on one
machine:

* picks a free port per worker and gives worker ``i`` ``TF_CONFIG={"cluster": {"worker": [...]}, "task":
  {"type": "worker", "index": i}}`` (worker 0 is the chief);
* relays every worker's output line by line, prefixed with ``[worker i]``;
* when a worker fails, stops all the others (under MultiWorkerMirroredStrategy they could only error out
  or wait in a collective) and, while ``max_restarts`` allows, starts the whole cluster again: training
  resumes from the last BackupAndRestore backup in the model directory;
* stops everything when ``timeout_s`` runs out, or when the launcher itself is interrupted.

Exit status of ``launch``: 0 when every worker finished with 0; the failed worker's status (128 + signal
number for a worker killed by a signal) when restarts ran out; 124 on timeout.
"""

import dataclasses
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Mapping, Optional, Sequence, TextIO

TIMEOUT_EXIT_STATUS = 124  # what coreutils' timeout returns


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now (all are held open
    together while picking, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(addresses: Sequence[str], index: int) -> str:
    """The TF_CONFIG of worker ``index`` of a cluster of ``addresses`` (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


def exit_status(returncode: int) -> int:
    """A shell-style exit status: ``Popen``'s ``-N`` (killed by signal N) becomes ``128 + N``."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


@dataclasses.dataclass
class Outcome:
    """How one run of the cluster ended: ``done`` (every worker exited 0), ``failed`` (``worker`` exited
    with ``returncode``) or ``timeout``."""
    status: str
    worker: Optional[int] = None
    returncode: int = 0


class LocalCluster:
    """One start of ``num_workers`` copies of ``command``; ``stop`` ends the ones still running."""

    def __init__(self, command: Sequence[str], num_workers: int, output: TextIO, *,
                 env: Optional[Mapping[str, str]] = None, gpus_per_worker: int = 0):
        self.command = list(command)
        self.num_workers = num_workers
        self.output = output
        self.env = dict(os.environ if env is None else env)
        self.gpus_per_worker = gpus_per_worker
        self.processes: list[subprocess.Popen] = []
        self.addresses: list[str] = []
        self._exits: "queue.Queue[tuple[int, int]]" = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def say(self, message: str) -> None:
        self._write(f"tfrecsys-launch: {message}\n")

    def _write(self, text: str) -> None:
        with self._lock:
            self.output.write(text)
            self.output.flush()

    def start(self) -> None:
        self.addresses = [f"127.0.0.1:{port}" for port in free_ports(self.num_workers)]
        for index in range(self.num_workers):
            env = dict(self.env, TF_CONFIG=tf_config(self.addresses, index), PYTHONUNBUFFERED="1")
            if self.gpus_per_worker:
                first = index * self.gpus_per_worker
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + g) for g in range(self.gpus_per_worker))
            # A session of its own: stopping a worker stops whatever it started, and a Ctrl-C in the
            # terminal reaches the launcher only, which then stops the workers itself.
            process = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            self.processes.append(process)
            self.say(f"worker {index} of {self.num_workers} started: pid {process.pid}, {self.addresses[index]}")
            for target in (self._relay, self._await_exit):
                thread = threading.Thread(target=target, args=(index, process), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _relay(self, index: int, process: subprocess.Popen) -> None:
        for raw in iter(process.stdout.readline, b""):
            self._write(f"[worker {index}] {raw.decode('utf-8', 'replace').rstrip()}\n")
        process.stdout.close()

    def _await_exit(self, index: int, process: subprocess.Popen) -> None:
        self._exits.put((index, process.wait()))

    def wait(self, deadline: float) -> Outcome:
        """Returns when every worker has exited 0, when the first one fails, or at ``deadline``
        (``time.monotonic()``)."""
        running = set(range(self.num_workers))
        while running:
            try:
                index, returncode = self._exits.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return Outcome("timeout")
            running.discard(index)
            if returncode != 0:
                return Outcome("failed", index, returncode)
            self.say(f"worker {index} finished")
        return Outcome("done")

    def stop(self, grace_s: float) -> None:
        """SIGTERM to every running worker, SIGKILL to those still running after ``grace_s`` (a worker
        blocked in a collective does not react to SIGTERM), then waits for all and for their output."""
        running = [p for p in self.processes if p.poll() is None]
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for thread in self._threads:
            thread.join()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def launch(command: Sequence[str], num_workers: int, *, timeout_s: float, max_restarts: int = 0,
           grace_s: float = 5.0, gpus_per_worker: int = 0, env: Optional[Mapping[str, str]] = None,
           output: TextIO = sys.stdout) -> int:
    """Runs ``command`` as a local cluster of ``num_workers`` workers, restarting the whole cluster after a
    worker failure up to ``max_restarts`` times, within ``timeout_s`` in all; returns the exit status
    (module docstring)."""
    if num_workers < 1:
        raise ValueError(f"the number of workers must be at least 1, got {num_workers}")
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be at least 0, got {max_restarts}")
    deadline = time.monotonic() + timeout_s
    restarts = 0
    while True:
        cluster = LocalCluster(command, num_workers, output, env=env, gpus_per_worker=gpus_per_worker)
        try:
            cluster.start()
            outcome = cluster.wait(deadline)
        finally:
            cluster.stop(grace_s)
        if outcome.status == "done":
            cluster.say(f"all {num_workers} workers finished")
            return 0
        if outcome.status == "timeout":
            cluster.say(f"timed out after {timeout_s:g} s; stopped every worker")
            return TIMEOUT_EXIT_STATUS
        failure = f"worker {outcome.worker} {describe_exit(outcome.returncode)}"
        if restarts == max_restarts:
            cluster.say(f"{failure}; stopped every worker"
                        + (f" (no restarts left of {max_restarts})" if max_restarts else ""))
            return exit_status(outcome.returncode)
        restarts += 1
        cluster.say(f"{failure}; stopped every worker, restarting the cluster (restart {restarts} of "
                    f"{max_restarts}): training resumes from the last backup")


def train_command(train_flags: Sequence[str]) -> list[str]:
    """``tfrecsys-train <train_flags>`` with this interpreter's installation of tfrecsys."""
    script = os.path.join(os.path.dirname(sys.executable), "tfrecsys-train")
    if os.path.isfile(script):
        return [script, *train_flags]
    return [sys.executable, "-m", "tfrecsys.cli.train", *train_flags]
