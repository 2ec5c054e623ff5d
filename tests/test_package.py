"""Importing tfrecsys pins Keras 2 and refuses a process that already runs Keras 3."""

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
