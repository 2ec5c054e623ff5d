"""Importing tfrecsys pins Keras 2, refuses a process that already runs Keras 3, and freezes the imports' objects
out of the garbage collector's full collections."""

import os
import subprocess
import sys

import tensorflow as tf


def test_tf_keras_is_keras_2():
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert tf.keras.__name__.startswith("tf_keras")


def test_keras_3_process_gets_a_clear_error():
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "0"}
    result = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.keras.Model; import tfrecsys"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "tfrecsys needs Keras 2 (tf-keras)" in result.stderr
    assert "TF_USE_LEGACY_KERAS=1" in result.stderr


_COLLECTION = """
import gc, sys, time
import tfrecsys, tensorflow as tf
frozen = gc.get_freeze_count()
started = time.process_time()
gc.collect()
print(frozen, len(gc.get_objects()), time.process_time() - started)
"""


def _after_import(freeze: str):
    """(objects frozen by the import, objects a full collection then walks, its CPU seconds) in a fresh process."""
    env = {**os.environ, "TFRECSYS_GC_FREEZE": freeze}
    result = subprocess.run([sys.executable, "-c", _COLLECTION], env=env, capture_output=True, text=True,
                            timeout=300, check=True)
    frozen, walked, seconds = result.stdout.split()
    return int(frozen), int(walked), float(seconds)


def test_import_freezes_its_objects_so_a_full_collection_walks_a_fraction_and_it_can_be_turned_off():
    frozen, walked, _ = _after_import("1")
    not_frozen, walked_without, _ = _after_import("0")
    assert not_frozen == 0
    assert frozen > 100_000, "TensorFlow's import alone leaves ~250,000 objects"
    assert walked < walked_without / 10
