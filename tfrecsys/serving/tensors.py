"""Signature tensor specs, and JSON values ↔ arrays typed by a signature.

A signature input is described as ``(tf.DType, shape)`` with ``None`` for an unknown dimension and a shape
of ``None`` for an unknown rank. JSON values are converted the way TF Serving's REST API converts them
(tensorflow_serving/util/json_tensor.cc): the signature decides the dtype, a value that does not fit it is
an error rather than a silent cast, and binary strings travel as ``{"b64": "..."}``.
"""

import base64

import numpy as np
import tensorflow as tf

TensorSpec = tuple[tf.DType, tuple | None]


def tensor_spec(tensor_info) -> TensorSpec:
    """``(dtype, shape)`` of a SignatureDef TensorInfo."""
    shape_proto = tensor_info.tensor_shape
    shape = None if shape_proto.unknown_rank else tuple(None if dim.size < 0 else dim.size
                                                        for dim in shape_proto.dim)
    return tf.as_dtype(tensor_info.dtype), shape


def shape_fits(shape: tuple, spec_shape: tuple | None) -> bool:
    """Whether an array of ``shape`` may be fed where the signature declares ``spec_shape``."""
    if spec_shape is None:
        return True
    return len(shape) == len(spec_shape) and all(want is None or want == got
                                                 for want, got in zip(spec_shape, shape, strict=True))


def shape_text(shape: tuple | None) -> str:
    """``[?,4]`` style, as TensorFlow prints shapes in its error messages."""
    if shape is None:
        return "<unknown>"
    return "[" + ",".join("?" if size is None else str(size) for size in shape) + "]"


def json_to_ndarray(name: str, value, dtype: tf.DType, shape: tuple | None) -> np.ndarray:
    """The JSON ``value`` of input ``name`` as an array of the signature's dtype and a shape it accepts.

    Raises ValueError naming the input when a value does not fit: a float for an int64 input, an int
    outside the dtype's range, a bool for a number, ragged nesting, or a shape the signature rejects.
    """
    array = _string_array(name, value) if dtype == tf.string else _numeric_array(name, value, dtype)
    if not shape_fits(array.shape, shape):
        raise ValueError(f"Input {name} has shape {shape_text(array.shape)}, which the signature's shape "
                         f"{shape_text(shape)} does not accept")
    return array


def _string_array(name: str, value) -> np.ndarray:
    array = np.array(_encode_strings(name, value), dtype=object)
    if not all(isinstance(item, bytes) for item in array.flat):
        raise ValueError(f"Input {name}: nested lists must be rectangular (every row the same length)")
    return array


def _encode_strings(name: str, value):
    if isinstance(value, list):
        return [_encode_strings(name, item) for item in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value):
        return base64.b64decode(value["b64"])
    raise ValueError(f"Input {name}: JSON Value: {_short(value)} not of expected type: string")


def _numeric_array(name: str, value, dtype: tf.DType) -> np.ndarray:
    try:
        raw = np.array(value)
    except ValueError as error:
        raise ValueError(f"Input {name}: nested lists must be rectangular (every row the same length)") from error
    accepted = "b" if dtype.is_bool else "iu" if dtype.is_integer else "iuf"
    if raw.size and raw.dtype.kind not in accepted:
        raise ValueError(f"Input {name}: JSON Value: {_short(value)} not of expected type: {dtype.name}")
    if raw.size and not dtype.is_bool and _out_of_range(raw, dtype):
        raise ValueError(f"Input {name}: JSON Value: {_short(value)} is out of range for {dtype.name}")
    return raw.astype(dtype.as_numpy_dtype)


def _out_of_range(raw: np.ndarray, dtype: tf.DType) -> bool:
    """Whether a cast would wrap an int or turn a finite number into inf, rather than keep the value."""
    finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
    return finite.size > 0 and bool(finite.min() < dtype.min or finite.max() > dtype.max)


def ndarray_to_json(name: str, array: np.ndarray):
    """An output array as JSON: numbers as they are, strings as UTF-8 text.

    Like TF Serving, outputs whose name ends in ``_bytes`` (and strings that are not UTF-8) are sent as
    ``{"b64": ...}`` so binary data survives JSON.
    """
    if array.dtype != object:
        return array.tolist()
    return _decode_strings(name, array.tolist())


def _decode_strings(name: str, value):
    if isinstance(value, list):
        return [_decode_strings(name, item) for item in value]
    if not name.endswith("_bytes"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
