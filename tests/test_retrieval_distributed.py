"""Retrieval under a distribution strategy: the streaming estimator and two-tower training with mixed
negatives and streaming logQ, on MirroredStrategy over two logical CPUs.

Logical devices must be configured before TensorFlow starts, so the checks run in a fresh process
(``python -m tests.test_retrieval_distributed <dir>``) that writes its findings as JSON.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

TIMEOUT_S = 300


def _two_replicas():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _estimator_checks(strategy) -> dict:
    """The same global stream through one estimator per device count: the mirrored estimator sees each
    global batch split across replicas and must end in the single-device estimator's state."""
    import tensorflow as tf

    from tfrecsys.layers.retrieval import StreamingFrequencyEstimator

    rng = np.random.default_rng(0)
    truth = 1.0 / np.arange(1, 31)
    truth /= truth.sum()
    stream = rng.choice(30, size=(400, 64), p=truth).astype(np.int64)
    settings = dict(num_buckets=256, num_hashes=3, alpha=0.01)

    single = StreamingFrequencyEstimator(**settings)

    @tf.function
    def run_single(batches):
        for batch in batches:
            single(batch, training=True)

    run_single(tf.constant(stream))
    with strategy.scope():
        mirrored = StreamingFrequencyEstimator(**settings)
    data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(stream.reshape(-1)).batch(64))

    @tf.function
    def run_mirrored(batches):
        for batch in batches:
            strategy.run(lambda ids: mirrored(ids, training=True), args=(batch,))

    run_mirrored(data)
    ids = tf.range(30, dtype=tf.int64)
    replicas = [v.numpy() for v in strategy.experimental_local_results(mirrored.mean_gap)]
    return {
        "single": single.probability(ids).numpy().tolist(),
        "mirrored": mirrored.probability(ids).numpy().tolist(),
        "truth": truth.tolist(),
        "replicas_identical": bool(all(np.array_equal(replicas[0], r) for r in replicas[1:])),
        "steps": int(mirrored.step.numpy()),
    }


def _training_checks(strategy, data_dir: str, model_dir: str) -> dict:
    from tfrecsys.config import load_config
    from tfrecsys.train.loop import train_and_evaluate

    config = load_config(os.path.join(os.path.dirname(__file__), os.pardir, "configs", "two_tower_simulator.py"),
                         {"data.dir": data_dir, "model.negatives": "mixed", "model.logq": "streaming",
                          "model.num_sampled": 64, "train.steps": 60, "train.steps_per_loop": 60,
                          "train.steps_per_execution": 20, "train.batch_size": 256})
    metrics = train_and_evaluate(config, model_dir, strategy=strategy, verbose=0)
    return {"metrics": metrics}


def main(argv):
    output, data_dir, model_dir = argv[1:4]
    import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow loads; no op runs before the devices are set)

    strategy = _two_replicas()
    from tfrecsys.data.simulators.retrieval import RetrievalWorldConfig, write_retrieval_world

    world = write_retrieval_world(
        RetrievalWorldConfig(num_users=300, num_items=300, events_per_user=20, history_len=20), data_dir)
    result = {"replicas": strategy.num_replicas_in_sync, "estimator": _estimator_checks(strategy),
              "popularity": world["popularity"], **_training_checks(strategy, data_dir, model_dir)}
    with open(output, "w") as f:
        json.dump(result, f)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirrored")
    output = root / "result.json"
    process = subprocess.run([sys.executable, "-m", "tests.test_retrieval_distributed", str(output),
                              str(root / "data"), str(root / "model")],
                             cwd=os.path.join(os.path.dirname(__file__), os.pardir), capture_output=True,
                             text=True, timeout=TIMEOUT_S)
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads(output.read_text())


@pytest.mark.slow  # multi-process or end-to-end: make test-all
def test_estimator_state_is_the_same_on_every_replica_and_as_on_one_device(mirrored):
    estimator = mirrored["estimator"]
    assert mirrored["replicas"] == 2
    assert estimator["replicas_identical"] and estimator["steps"] == 400
    np.testing.assert_allclose(estimator["mirrored"], estimator["single"], rtol=1e-6)
    # ...and that state is right: every item's estimated share of the stream is within 25% of its true
    # Zipf probability (the largest error over these 400 steps is 17%; the head item is 1/(30·H_30)·30 times
    # as frequent as the tail one, so a biased or capped estimate misses by far more).
    np.testing.assert_allclose(estimator["mirrored"], estimator["truth"], rtol=0.25)


@pytest.mark.slow  # multi-process or end-to-end: make test-all
def test_two_tower_trains_with_mixed_negatives_and_streaming_logq_on_two_replicas(mirrored):
    metrics = mirrored["metrics"]
    assert np.isfinite(metrics["loss"])
    # Beating the popularity ranking means it learned the users' tastes, not only which items are popular.
    assert metrics["retrieval"]["recall_at_10"] > mirrored["popularity"]["recall_at_10"] + 0.05


if __name__ == "__main__":
    main(sys.argv)
