"""Layer-level XLA: a layer runs an XLA-compiled function in training and evaluation and its plain path in
the exported serving signatures.

Why per layer: ``--jit_compile`` compiles a whole train step, which fails as soon as one op has no XLA kernel
(string vocabularies, hashing) and compiles nothing in the export. Some layers gain much from XLA on their
own (attention over thousands of events: fused einsum, mask and activation), so such a layer compiles just
its own computation with ``tf.function(jit_compile=True)``. Measure before turning it on: on the 2-core CPU
of this project a training step of ``MLP([512, 256, 128], output_units=1)`` on ``[1024, 256]`` was 2 to 4 times
slower with ``xla=True`` (69 against 34 ms, 103 against 25 ms in two runs on the shared machine: XLA's CPU
matmuls are slower than oneDNN's); fusion-heavy layers and GPUs are where it pays.

Why a plain path: TF Serving runs XLA-compiled functions only behind its experimental
``--xla_cpu_compilation_enabled`` flag, and the export refuses a serving signature that reaches one
(``tfrecsys.export.saved_model.check_serving_without_xla``). The exporter traces its serving functions and
saves inside ``serving_mode()``; there an ``XlaLayer`` calls ``plain_call`` directly, so the SavedModel holds
the same computation without the XLA attribute (and no XLA-compiled function at all). Both paths run the same Python code on the same variables and
agree to float rounding (XLA may fuse and reorder float sums).

Writing such a layer::

    class GatedUnit(XlaLayer):
        def build(self, input_shape):
            self.kernel = self.add_weight("kernel", shape=(input_shape[-1], input_shape[-1]))

        def plain_call(self, inputs, training=None):
            return inputs * tf.sigmoid(inputs @ self.kernel)

    layer = GatedUnit(xla=True)   # compiled in fit/evaluate/predict, plain in exported signatures

``plain_call`` takes the layer's inputs and ``training`` (and ``mask`` if Keras passes one), like ``call``.
It must be XLA-compatible when ``xla=True``: no string ops, shapes that XLA can bound.

Variable lengths: XLA compiles once per concrete input shape, so a sequence layer whose padded length changes
from batch to batch would compile for every length. Such a layer pads its inputs to ``bucket_length(length)``
before the compiled call (lengths inside one bucket share one compilation) and sets the class attribute
``xla_reduce_retracing = False``: its compiled function is then traced once per bucket shape, so the trace
count is the compilation count and a test can count it (``HSTULayer`` in ``tfrecsys/layers/hstu.py``).
"""

import contextlib
import threading
from typing import Sequence, Union

import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # private, pinned with TF 2.16 (tf_keras' own XLA test)

DEFAULT_LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)

# Thread-local: a tf.function is traced in the thread that calls it, so an export in one thread never
# switches the path of a training step traced in another.
_mode = threading.local()


def tracing_inside_xla() -> bool:
    """Whether the op being traced will run XLA-compiled: inside a layer's own compiled function or a whole
    train step under ``--jit_compile``. Layers pick there the forms that compile (static shapes, no
    ``bincount``) or that XLA fuses well."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def in_serving_mode() -> bool:
    """Whether the current thread is inside ``serving_mode()``."""
    return getattr(_mode, "serving", False)


@contextlib.contextmanager
def serving_mode():
    """Within the block, every ``XlaLayer`` takes its plain path. Exporters trace serving signatures in it.

    The mode is read when a function is traced, not when it runs: a function traced inside the block keeps
    the plain path wherever it is called later, one traced outside keeps the XLA path.
    """
    previous = in_serving_mode()
    _mode.serving = True
    try:
        yield
    finally:
        _mode.serving = previous


def bucket_length(length: Union[int, tf.Tensor], buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS):
    """The smallest of ``buckets`` (ascending) that is >= ``length``; beyond the largest, the next multiple of
    the largest. A Python int for a Python int (static shapes stay static), else an int32 scalar tensor."""
    largest = buckets[-1]
    if isinstance(length, int):
        return next((bucket for bucket in buckets if bucket >= length), -(-length // largest) * largest)
    length = tf.cast(length, tf.int32)
    candidates = tf.concat([tf.constant(buckets, tf.int32), [(length + largest - 1) // largest * largest]], 0)
    return tf.reduce_min(tf.where(candidates >= length, candidates, candidates[-1]))


class _Untracked:
    def __init__(self, function):
        self.function = function


class XlaLayer(tf.keras.layers.Layer):
    """Base of layers with an XLA-compiled path (``xla=True``) in training and evaluation and a plain one in
    serving. Subclasses implement ``plain_call`` instead of ``call``.

    ``xla``: when True, ``call`` runs ``plain_call`` through ``tf.function(jit_compile=True)`` (gradients flow
    through it), except inside ``serving_mode()``; when False, ``call`` is ``plain_call``.
    """

    # See the module docstring: False for layers that pad their inputs to bucket shapes themselves.
    xla_reduce_retracing = True

    def __init__(self, xla: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not callable(getattr(type(self), "plain_call", None)):
            raise TypeError(f"{type(self).__name__} extends XlaLayer and must define plain_call (what call would be)")
        self.xla = bool(xla)
        # reduce_retracing: batches of every size (a last partial batch, serving-size calls) share one
        # trace with an unknown batch dimension; XLA still compiles per concrete shape, and caches it.
        # Held by a plain object, which object tracking does not follow: a tf.function attribute of a
        # layer would be written into every SavedModel with its XLA-compiled traces.
        self._compiled = _Untracked(tf.function(
            self.plain_call, jit_compile=True, reduce_retracing=type(self).xla_reduce_retracing))

    def call(self, inputs, training=None, **kwargs):
        if self.xla and not in_serving_mode():
            return self._compiled.function(inputs, training=training, **kwargs)
        return self.plain_call(inputs, training=training, **kwargs)

    def get_config(self):
        return {**super().get_config(), "xla": self.xla}
