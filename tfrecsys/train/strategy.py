"""Distribution strategy from the environment, which worker writes what, and the training precision.

``TF_CONFIG`` (the JSON every TensorFlow cluster manager sets: ``{"cluster": {"worker": ["host:port", …]},
"task": {"type": "worker", "index": i}}``) with several tasks selects MultiWorkerMirroredStrategy; one machine
with several GPUs selects MirroredStrategy; anything else trains on the default (one-device) strategy.

A multi-worker strategy never waits forever: workers that cannot form the cluster within
``connect_timeout_s`` exit with a message naming the addresses, and once training runs, a worker that stops
sending heartbeats for ``heartbeat_timeout_s`` makes the others fail instead of blocking in a collective.
"""

import contextlib
import json
import os
import subprocess
import sys

import tensorflow as tf
from absl import logging

COLLECTIVES = {
    "RING": tf.distribute.experimental.CommunicationImplementation.RING,
    "NCCL": tf.distribute.experimental.CommunicationImplementation.NCCL,
    "AUTO": tf.distribute.experimental.CommunicationImplementation.AUTO,
}
# Keras dtype policies by --mixed_precision value: compute in float16/bfloat16, keep variables in float32.
PRECISION_POLICIES = {"none": "float32", "mixed_float16": "mixed_float16", "mixed_bfloat16": "mixed_bfloat16"}
# The task types tfrecsys trains with; parameter servers and side-car evaluators are not supported.
TRAINING_JOBS = ("chief", "worker")


class ClusterError(ValueError):
    """TF_CONFIG describes a cluster that cannot form (a bad address, a peer that never connects).

    A ValueError so that binaries report it in one line, like any other wrong setting."""


def _check_address(address, where: str, raw: str) -> None:
    host, sep, port = str(address).rpartition(":")
    if not (isinstance(address, str) and sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ClusterError(f"TF_CONFIG {where} is {address!r}, not a 'host:port' address: {raw}")


def cluster_spec() -> dict:
    """The parsed and checked ``TF_CONFIG`` (empty when unset); a malformed one is an error that names the
    field at fault."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({error}): {raw}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict) or not isinstance(
            spec.get("task"), dict):
        raise ClusterError(f"TF_CONFIG needs a 'cluster' object and a 'task' object: {raw}")
    cluster, task = spec["cluster"], spec["task"]
    unsupported = sorted(set(cluster) - set(TRAINING_JOBS))
    if unsupported or not cluster:
        raise ClusterError(f"TF_CONFIG cluster jobs must be {' and/or '.join(TRAINING_JOBS)} "
                           f"(MultiWorkerMirroredStrategy), got {sorted(cluster)}: {raw}")
    seen = set()
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ClusterError(f"TF_CONFIG cluster.{job} must be a non-empty list of 'host:port': {raw}")
        for index, address in enumerate(addresses):
            _check_address(address, f"cluster.{job}[{index}]", raw)
            if address in seen:
                raise ClusterError(f"TF_CONFIG lists {address} twice: {raw}")
            seen.add(address)
    if len(cluster.get("chief", [])) > 1:
        raise ClusterError(f"TF_CONFIG has {len(cluster['chief'])} chief tasks; there can be one: {raw}")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise ClusterError(f"TF_CONFIG task.type {task_type!r} is not a job of the cluster "
                           f"{sorted(cluster)}: {raw}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ClusterError(f"TF_CONFIG task.index {index!r} is not in [0, {len(cluster[task_type])}) for "
                           f"job {task_type!r}: {raw}")
    return spec


def num_workers() -> int:
    """Training processes in the cluster (chief and workers); 1 without TF_CONFIG."""
    cluster = cluster_spec().get("cluster", {})
    return max(1, sum(len(cluster.get(job, [])) for job in TRAINING_JOBS))


def task_name() -> str:
    """``worker 1 of 2 (127.0.0.1:2223)`` for logs and errors; ``single worker`` without TF_CONFIG."""
    spec = cluster_spec()
    if not spec:
        return "single worker"
    task_type, index = spec["task"]["type"], spec["task"].get("index", 0)
    return f"{task_type} {index} of {num_workers()} ({spec['cluster'][task_type][index]})"


def strategy_from_environment(collective: str = "RING", connect_timeout_s: float = 300.0,
                              heartbeat_timeout_s: float = 30.0) -> tf.distribute.Strategy:
    """TF_CONFIG with several workers → MultiWorkerMirroredStrategy; one machine with several GPUs →
    MirroredStrategy; otherwise the default (one device) strategy.

    Must run before any other TensorFlow op in the process (MultiWorkerMirroredStrategy starts the
    process's gRPC server and collective runtime).
    """
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {sorted(COLLECTIVES)}, got {collective!r}")
    spec = cluster_spec()
    if num_workers() > 1:
        return _multi_worker_strategy(spec, collective, connect_timeout_s, heartbeat_timeout_s)
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        logging.info("MirroredStrategy over %d GPUs", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _multi_worker_strategy(spec, collective, connect_timeout_s, heartbeat_timeout_s):
    # The coordination service is configured here rather than left to the strategy, whose defaults never
    # time out: cluster_register_timeout bounds how long a worker waits for the leader, heartbeat_timeout
    # how long the others keep waiting in a collective after a worker died.
    from tensorflow.python.eager import context
    from tensorflow.tsl.protobuf import coordination_config_pb2

    cluster = spec["cluster"]
    leader_job = "chief" if "chief" in cluster else "worker"
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader_job}/replica:0/task:0",
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
                          for job in TRAINING_JOBS if job in cluster],
        cluster_register_timeout_in_ms=int(connect_timeout_s * 1000),
        heartbeat_timeout_in_ms=int(heartbeat_timeout_s * 1000))
    peers = ", ".join(f"{job} {i} at {address}" for job in TRAINING_JOBS
                      for i, address in enumerate(cluster.get(job, [])))
    me = task_name()
    options = tf.distribute.experimental.CommunicationOptions(implementation=COLLECTIVES[collective])
    logging.info("%s: joining MultiWorkerMirroredStrategy (%s collectives) with %s; waiting up to %g s for "
                 "every worker to connect", me, collective, peers, connect_timeout_s)
    cannot_form = (f"{me} could not form the cluster within {connect_timeout_s:g} s ({peers}): start every "
                   "worker of TF_CONFIG, check that the addresses are right and their ports reachable, or "
                   "raise --connect_timeout_s")
    # Non-leaders get DeadlineExceeded from TensorFlow after cluster_register_timeout; the leader waits for
    # the others with no deadline of its own, so a watchdog ends it a little later. The watchdog also ends a
    # non-leader whose registration call hangs past TensorFlow's deadline, as it sometimes does on a busy
    # machine (tests/test_distributed.py, the worker without its peer).
    with _exit_unless_done_within(connect_timeout_s + 5, f"error: {cannot_form}"):
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
            raise ClusterError(f"{cannot_form} (TensorFlow: {error.message.splitlines()[0]})") from None
        except tf.errors.OpError as error:
            raise ClusterError(f"{me} could not start its collective runtime: "
                               f"{error.message.splitlines()[0]}") from None
    logging.info("%s: cluster formed, %d replicas in sync", me, strategy.num_replicas_in_sync)
    return strategy


_WATCHDOG = """
import os, select, signal, sys
pid, timeout_s, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], timeout_s)[0]:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
"""


@contextlib.contextmanager
def _exit_unless_done_within(timeout_s: float, message: str):
    """Kills this process, with ``message`` on stderr, unless the block ends within ``timeout_s``.

    MultiWorkerMirroredStrategy waits for its peers inside C++ while holding the GIL, so no Python thread or
    signal handler of this process could run meanwhile (and TensorFlow's own SIGTERM handler keeps the
    process alive): the watchdog is a separate small process. It exits quietly when its stdin closes, that
    is when the block ends or this process dies.
    """
    watchdog = subprocess.Popen([sys.executable, "-I", "-c", _WATCHDOG, str(os.getpid()), str(timeout_s), message],
                                stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def worker_devices(strategy: tf.distribute.Strategy) -> tuple:
    """The devices this process drives: a MirroredStrategy's, or this worker's under
    MultiWorkerMirroredStrategy; none named for the default strategy (one device)."""
    try:
        return tuple(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no worker devices
        return ()


def check_ragged_input(strategy: tf.distribute.Strategy, config) -> None:
    """Refuses ``config.data.ragged`` on several replicas with ``train.steps_per_execution`` > 1, at once and
    naming the way out. With ragged sequences the replicas' sparse embedding gradients differ in length, and
    TF 2.16's all-gather of them (a cond between a plain and a padded CollectiveGatherV2) fails inside a
    multi-step loop: "Shape mismatch in the collective instance ... expected shape [378,4] but another member
    in the group expected shape [426,4]" (DIN and DIEN, measured; one step per call trains,
    tests/test_ragged_distributed.py)."""
    if not config.data.get("ragged", False) or strategy.num_replicas_in_sync < 2:
        return
    if config.train.steps_per_execution > 1:
        raise ValueError(
            f"config.data.ragged with {strategy.num_replicas_in_sync} replicas needs "
            f"config.train.steps_per_execution=1 (it is {config.train.steps_per_execution}): TensorFlow's "
            "all-gather of the replicas' sparse embedding gradients, of different lengths with ragged sequences, "
            "fails inside a multi-step call. Or keep steps_per_execution and train on padded sequences (the "
            "default, config.data.ragged=False)")


def check_jit_compile(strategy: tf.distribute.Strategy, jit_compile: bool) -> None:
    """Refuses ``--jit_compile`` where TF 2.16 cannot run a whole XLA-compiled step (measured,
    tests/test_families_distributed.py), at once and naming the way out:

    * several devices in one process: the step run by each local replica reads the other replicas' variables
      from the first one's device (``Trying to access resource …/replica_1 located in device …:1 from device
      …:0``; Keras' own train function as ours);
    * several CPU workers: the sparse embedding gradients' all-gather (``CollectiveGatherV2``) has no XLA CPU
      kernel.

    One GPU per worker under MultiWorkerMirroredStrategy is not refused (not tested here: no GPU).
    """
    if not jit_compile:
        return
    devices = worker_devices(strategy)
    if len(devices) > 1:
        raise ValueError(f"--jit_compile cannot run with {len(devices)} devices in one process (MirroredStrategy "
                         "over local devices): XLA's compiled step cannot read the other devices' variables. Run "
                         "one worker per device (tfrecsys-launch --gpus_per_worker=1, or one GPU per worker of "
                         "TF_CONFIG), or train without --jit_compile; the layers' own XLA paths "
                         "(recurrence_xla, attention_path='xla') run under any strategy")
    if strategy.num_replicas_in_sync > 1 and all("CPU" in device.upper() for device in devices):
        raise ValueError(f"--jit_compile cannot run on {strategy.num_replicas_in_sync} CPU workers: XLA has no CPU "
                         "kernel for the all-gather of the embedding gradients (CollectiveGatherV2). Train "
                         "without --jit_compile; the layers' own XLA paths (recurrence_xla, "
                         "attention_path='xla') run under any strategy")


def is_chief() -> bool:
    """The worker that writes checkpoints, logs and exports: the ``chief`` task, else worker 0."""
    spec = cluster_spec()
    if not spec:
        return True
    task = spec["task"]
    if "chief" in spec["cluster"]:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def worker_dir(path: str) -> str:
    """``path`` for the chief; a private scratch directory beside it for other workers, which must still
    write (collective saves need every worker) but must not overwrite the chief's files."""
    if is_chief():
        return path
    index = cluster_spec()["task"].get("index", 0)
    return os.path.join(path, f".worker-{index}-scratch")


@contextlib.contextmanager
def precision_policy(mixed_precision: str):
    """Keras' global dtype policy for the block (``none``: float32; ``mixed_float16``; ``mixed_bfloat16``),
    restored afterwards so that a later model in the same process (an export) is unaffected.

    Models built inside compute in the low precision and keep float32 variables; under mixed_float16 Keras'
    ``compile`` wraps the optimizer in a LossScaleOptimizer (dynamic loss scaling).
    """
    if mixed_precision not in PRECISION_POLICIES:
        raise ValueError(f"mixed_precision must be one of {sorted(PRECISION_POLICIES)}, got {mixed_precision!r}")
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(PRECISION_POLICIES[mixed_precision])
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


# What a worker sees when a peer died or was cut off in the middle of a collective.
_LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                     tf.errors.DeadlineExceededError)


@contextlib.contextmanager
def naming_lost_peers():
    """Under several workers, turns the error of a collective whose peer died into a ClusterError that
    says so and what to do (TensorFlow's own names an RPC and a device)."""
    try:
        yield
    except _LOST_PEER_ERRORS as error:
        if num_workers() <= 1:
            raise
        raise ClusterError(
            f"{task_name()} lost a peer during training ({type(error).__name__}: "
            f"{error.message.splitlines()[0][:300]}): restart every worker (tfrecsys-launch --max_restarts, or "
            "the cluster manager's restart policy) and training resumes from the last backup") from error
