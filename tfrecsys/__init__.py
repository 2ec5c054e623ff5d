"""tfrecsys: recommender-systems training on TensorFlow/Keras 2, served over the TF Serving API.

Importing the package pins the Keras flavour before TensorFlow loads: tensorflow-recommenders 0.7.7 and
MultiWorkerMirroredStrategy only work with tf-keras (Keras 2), so ``TF_USE_LEGACY_KERAS=1`` is set here and
a process that already runs Keras 3 fails at once with the fix spelled out, instead of deep inside fit.
"""

import os
import sys

__version__ = "0.1.0"

if "tensorflow" not in sys.modules:
    if os.environ.get("TF_USE_LEGACY_KERAS", "1") not in ("1", "true", "True"):
        raise ImportError(
            "tfrecsys needs Keras 2 (tf-keras) but TF_USE_LEGACY_KERAS="
            f"{os.environ['TF_USE_LEGACY_KERAS']!r} is set. Unset it or set TF_USE_LEGACY_KERAS=1.")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # TF 2.16 prints three harmless cuFFT/cuDNN/cuBLAS registration lines even at level 2.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402  (must follow the environment set-up above)

if not tf.keras.__name__.startswith("tf_keras"):
    raise ImportError(
        f"tfrecsys needs Keras 2 (tf-keras) but tf.keras is Keras {getattr(tf.keras, '__version__', '3')}: TensorFlow was "
        "imported before tfrecsys without TF_USE_LEGACY_KERAS=1. Set TF_USE_LEGACY_KERAS=1 in the environment "
        "or import tfrecsys before tensorflow.")


def _skip_autograph_of_tf_keras_and_tfrecsys():
    """Skip AutoGraph conversion of tf_keras internals and of tfrecsys' own code.

    On TF 2.16.2 + tf-keras 2.16.0 the first ``fit`` of every process spends 5-10 s converting tf_keras' own
    train-step code with AutoGraph (measured, see stack-pins-and-gotchas.md). That code is already graph-safe,
    so converting it buys nothing; losses and weights are identical with the rule in place. The same holds for
    tfrecsys: its layers, steps and input functions write graph control flow explicitly (``tf.where``,
    ``tf.cond``, vectorised ops), and converting them cost 1.3 of two_tower's 3 CPU-seconds to its first train
    step on MovieLens (docs/retrieval.md). A function that needs Python control flow over tensors converted
    is decorated with its own ``tf.function``: AutoGraph converts what a ``tf.function`` wraps whatever the
    rules say.
    """
    from tensorflow.python.autograph.core import config as autograph_config

    present = {getattr(r, "module_prefix", None) for r in autograph_config.CONVERSION_RULES}
    rules = tuple(autograph_config.DoNotConvert(prefix) for prefix in ("tf_keras", "tfrecsys")
                  if prefix not in present)
    autograph_config.CONVERSION_RULES = rules + tuple(autograph_config.CONVERSION_RULES)


_skip_autograph_of_tf_keras_and_tfrecsys()


def _freeze_objects_of_the_imports():
    """Moves every object alive now (TensorFlow's and tf_keras' modules, ~250,000 objects) out of the cyclic
    garbage collector's reach (``gc.freeze``).

    They live as long as the process, yet each full collection walked them all again: the two such collections
    that tracing a train step triggers cost 0.17-0.36 CPU-seconds of the first step (MMoE, DIEN + aux;
    bench/RESULTS.md, "The garbage collector and the first step"). Frozen objects are still freed by reference
    counting; only a reference cycle among them would never be. ``TFRECSYS_GC_FREEZE=0`` leaves the collector
    as it was.
    """
    if os.environ.get("TFRECSYS_GC_FREEZE", "1") != "0":
        import gc

        gc.freeze()


_freeze_objects_of_the_imports()
