"""Distribution strategy from the environment, and which worker writes what."""

import json
import os

import tensorflow as tf
from absl import logging

COLLECTIVES = {
    "RING": tf.distribute.experimental.CommunicationImplementation.RING,
    "NCCL": tf.distribute.experimental.CommunicationImplementation.NCCL,
    "AUTO": tf.distribute.experimental.CommunicationImplementation.AUTO,
}


def cluster_spec() -> dict:
    """The parsed ``TF_CONFIG`` (empty when unset); a malformed one is an error that says so."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {raw!r}") from None
    if not isinstance(spec, dict) or "cluster" not in spec or "task" not in spec:
        raise ValueError(f"TF_CONFIG needs 'cluster' and 'task' keys: {raw!r}")
    return spec


def strategy_from_environment(collective: str = "RING") -> tf.distribute.Strategy:
    """TF_CONFIG with several workers → MultiWorkerMirroredStrategy; one machine with several GPUs →
    MirroredStrategy; otherwise the default (one device) strategy."""
    spec = cluster_spec()
    cluster = spec.get("cluster", {})
    tasks = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if tasks > 1:
        if collective not in COLLECTIVES:
            raise ValueError(f"collective must be one of {sorted(COLLECTIVES)}, got {collective!r}")
        options = tf.distribute.experimental.CommunicationOptions(implementation=COLLECTIVES[collective])
        logging.info("MultiWorkerMirroredStrategy over %d workers (%s collectives)", tasks, collective)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        logging.info("MirroredStrategy over %d GPUs", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


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
