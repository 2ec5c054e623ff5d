"""Signature tensor specs, and JSON values ↔ arrays typed by a signature.

A signature input is described as ``(tf.DType, shape)`` with ``None`` for an unknown dimension and a shape
of ``None`` for an unknown rank. JSON values are converted the way TF Serving's REST API converts them
(tensorflow_serving/util/json_tensor.cc): the signature decides the dtype, a value that does not fit it is
an error rather than a silent cast, and binary strings travel as ``{"b64": "..."}``.
"""

import base64
import json
import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

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


def data_type_string(dtype) -> str:
    """TensorFlow's DataTypeString, the name TF Serving's messages give a dtype: float, double, int64, string."""
    return types_pb2.DataType.Name(tf.as_dtype(dtype).as_datatype_enum)[len("DT_"):].lower()


class JsonValueError(ValueError):
    """A JSON value that does not fit signature input ``input_name``; ``message`` is worded as TF Serving's
    json_tensor.cc words it, and the error's text adds the input's name (TF Serving's omits it)."""

    def __init__(self, message: str, input_name: str = ""):
        super().__init__(f"{message} (input: {input_name})" if input_name else message)
        self.message, self.input_name = message, input_name


def json_to_ndarray(name: str, value, dtype: tf.DType, shape: tuple | None) -> np.ndarray:
    """The JSON ``value`` of input ``name`` as an array of the signature's dtype and a shape it accepts.

    Raises JsonValueError when a value does not fit, with TF Serving's message for the first value at fault:
    a float for an int64 input, an int outside the dtype's range, an int a float cannot hold exactly, a bool
    for a number; or for ragged nesting, or a shape the signature rejects.
    """
    try:
        array = _string_array(value) if dtype == tf.string else _numeric_array(value, dtype)
    except JsonValueError as error:
        raise JsonValueError(error.message, name) from None
    if not shape_fits(array.shape, shape):
        raise JsonValueError(f"Input {name} has shape {shape_text(array.shape)}, which the signature's shape "
                             f"{shape_text(shape)} does not accept")
    return array


def _string_array(value) -> np.ndarray:
    array = np.array(_encode_strings(value), dtype=object)
    if not all(isinstance(item, bytes) for item in array.flat):
        raise JsonValueError("nested lists must be rectangular (every row the same length)")
    return array


def _encode_strings(value):
    if isinstance(value, list):
        return [_encode_strings(item) for item in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value):
        return base64.b64decode(value["b64"])
    raise JsonValueError(_type_error(value, tf.string))


def _numeric_array(value, dtype: tf.DType) -> np.ndarray:
    try:
        raw = np.array(value)
    except ValueError as error:
        raise JsonValueError("nested lists must be rectangular (every row the same length)") from error
    accepted = "b" if dtype.is_bool else "iu" if dtype.is_integer else "iuf"
    if raw.size and (raw.dtype.kind not in accepted or (not dtype.is_bool and not _fits(raw, dtype))):
        raise JsonValueError(_first_unfit_value(value, dtype))
    return raw.astype(dtype.as_numpy_dtype)


def _fits(raw: np.ndarray, dtype: tf.DType) -> bool:
    """Whether every value keeps its value in ``dtype``: ints in range, floats finite or in range, and ints
    fed to a float no larger than its mantissa holds exactly (json_tensor.cc IsLosslessDecimal)."""
    if dtype.is_integer:
        return bool(raw.min() >= dtype.min and raw.max() <= dtype.max)
    if raw.dtype.kind in "iu":
        return bool(np.abs(raw.astype(np.float64)).max() <= _max_exact_int(dtype))
    finite = raw[np.isfinite(raw)]
    return finite.size == 0 or bool(finite.min() >= dtype.min and finite.max() <= dtype.max)


def _max_exact_int(dtype: tf.DType) -> int:
    return 2 ** (np.finfo(dtype.as_numpy_dtype).nmant + 1) - 1


def _first_unfit_value(value, dtype: tf.DType) -> str:
    """TF Serving's error for the first scalar of ``value`` that ``dtype`` cannot hold (json_tensor.cc)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            if not (dtype.is_bool and isinstance(item, bool)):
                return _type_error(item, dtype)
        elif dtype.is_integer:
            if isinstance(item, float) or not dtype.min <= item <= dtype.max:
                return _type_error(item, dtype)
        elif dtype.is_bool:
            return _type_error(item, dtype)
        elif (isinstance(item, int) and abs(item) > _max_exact_int(dtype)) or (
                isinstance(item, float) and math.isfinite(item) and not dtype.min <= item <= dtype.max):
            return (f"Cannot convert JSON value: {json_text(item)} to {data_type_string(dtype)} without loss of "
                    "precision.")
    return "nested lists must be rectangular (every row the same length)"


def _type_error(value, dtype: tf.DType) -> str:
    return (f"JSON Value: {json_text(value)} Type: {json_type(value)} is not of expected type: "
            f"{data_type_string(dtype)}")


def json_type(value) -> str:
    """The JSON type name of a decoded value, as TF Serving's messages give it (rapidjson's types)."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "String"
    return "Array" if isinstance(value, list) else "Object"


_JSON_TEXT_LIMIT = 200
_PRETTY_JSON = json.JSONEncoder(indent=4, ensure_ascii=False)


def json_text(value, limit: int = _JSON_TEXT_LIMIT) -> str:
    """A decoded JSON value written back as TF Serving writes one into a message (pretty-printed, floats
    with float precision), cut at ``limit`` characters: a message must not echo a 60 MB request."""
    if isinstance(value, float) and not isinstance(value, bool):
        return _decimal_text(value)
    pieces, size = [], 0
    for piece in _PRETTY_JSON.iterencode(value):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return "".join(pieces)[:limit] + "..."
    return "".join(pieces)


def _decimal_text(value: float) -> str:
    # rapidjson writes a double that fits a float as that float, in absl::StrCat's shortest six digits
    # unless they do not read back (then nine), with ".0" on whole numbers (json_tensor.cc WriteDecimal).
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    narrow = abs(value) <= float(np.finfo(np.float32).max)
    number = np.float32(value) if narrow else value
    text = f"{number:.6g}"
    if (np.float32(text) if narrow else float(text)) != number:
        text = f"{number:.9g}" if narrow else f"{number:.17g}"
    return text if "." in text or "e" in text else text + ".0"


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
