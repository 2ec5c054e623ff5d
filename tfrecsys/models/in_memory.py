"""In-memory numpy inputs of ``fit``, ``evaluate`` and ``predict`` as tensors, each array copied once.

Keras puts in-memory arrays into eager tensors before the first step (its ``TensorLikeDataAdapter``), and on
TensorFlow 2.16 each array is copied twice on the way: ``convert_to_eager_tensor`` copies it with numpy first (so
that the tensor cannot share the caller's memory), then, as numpy's buffer is not 64-byte aligned as TensorFlow's
kernels require, the tensor's own buffer is allocated and filled by a second copy. Both copies write fresh memory,
and the first goes to numpy's allocator, which asks the kernel for transparent huge pages: on the benchmark VM those
page faults were the slowest and the most variable part of DIEN's time to first step (Taobao's 240 MB of int64
histories: 0.5-1.7 CPU-seconds in Keras' conversion; bench/RESULTS.md, issue 12, branch dienfirst).

Here each numeric array is copied once, into page-aligned anonymous memory, and that memory becomes the tensor's
buffer through DLPack (no further copy: the alignment is what TensorFlow needs). The tensors are what Keras' own
conversion gives: the same values, shapes and dtypes (floating arrays in Keras' ``floatx``, as Keras converts
them), and each owns its copy, so changing an array afterwards changes nothing in training. Anything else (a
``tf.data.Dataset``, tensors, strings, pandas or scipy objects) is left to Keras.
"""

import mmap

import numpy as np
import tensorflow as tf

# Booleans, signed and unsigned integers, floats, complex numbers: the kinds DLPack carries.
_NUMERIC_KINDS = "biufc"


def _copied_once(array: np.ndarray) -> tf.Tensor:
    """``array`` as an eager tensor owning a copy of it (Keras' dtype: ``floatx`` for floating arrays)."""
    dtype = np.dtype(tf.keras.backend.floatx()) if array.dtype.kind == "f" else array.dtype
    # Page-aligned private memory, not numpy's allocator: its huge-page advice made the copy slower here.
    memory = mmap.mmap(-1, max(array.size * dtype.itemsize, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    copy = np.frombuffer(memory, dtype, array.size).reshape(array.shape)
    np.copyto(copy, array, casting="same_kind")
    return tf.experimental.dlpack.from_dlpack(copy.__dlpack__())


def _is_copied(value) -> bool:
    return isinstance(value, np.ndarray) and value.ndim > 0 and value.dtype.kind in _NUMERIC_KINDS


def as_tensors(structure):
    """``structure`` (an array, or a dict, list or tuple of them, as Keras takes) with its numeric numpy arrays
    replaced by tensors that own a copy of each, made once; every other leaf unchanged."""
    if not hasattr(mmap, "MAP_ANONYMOUS"):  # not a POSIX system: Keras converts, as it would
        return structure
    return tf.nest.map_structure(lambda value: _copied_once(value) if _is_copied(value) else value, structure)


def keywords_as_tensors(kwargs: dict, names) -> dict:
    """Keyword arguments with those under ``names`` (e.g. ``sample_weight``) put through ``as_tensors``."""
    return {key: as_tensors(value) if key in names else value for key, value in kwargs.items()}
