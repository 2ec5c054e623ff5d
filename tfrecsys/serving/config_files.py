"""TF Serving's batching parameters file and monitoring config file, read as tensorflow_model_server reads them.

``--batching_parameters_file`` holds a ``tensorflow.serving.BatchingParameters`` text proto
(tensorflow_serving/servables/tensorflow/session_bundle_config.proto) and ``--monitoring_config_file`` a
``tensorflow.serving.MonitoringConfig`` (tensorflow_serving/config/monitoring_config.proto)::

    max_batch_size { value: 64 }                 prometheus_config {
    batch_timeout_micros { value: 2000 }           enable: true,
    max_enqueued_batches { value: 100 }            path: "/monitoring/prometheus/metrics"
    num_batch_threads { value: 2 }               }

The tensorflow-serving-api wheel ships neither message; ``tfrecsys.serving.protos`` declares both with TF
Serving's field names, numbers and types, so the very files the real server reads parse here, and a misspelt
field is an error naming it.
"""

import dataclasses
import os

import tensorflow as tf
from google.protobuf import text_format

from tfrecsys.serving.protos import BatchingParametersProto, MonitoringConfigProto

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
# SharedBatchScheduler / BasicBatchScheduler defaults that apply to a field the file leaves out.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "batch_threads"


class ConfigFileError(ValueError):
    """A batching parameters or monitoring config file that cannot be used; the message names the file."""




@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Batching parameters with TF Serving's defaults filled in, checked as batching_session.cc checks them.

    ``max_batch_size``: rows in one batch, and the most one request may carry. ``batch_timeout_micros``: how
    long the oldest request of an unfilled batch waits for more. ``max_enqueued_batches``: batches waiting
    per signature before requests are refused (UNAVAILABLE). ``num_batch_threads``: batches run at once.
    ``allowed_batch_sizes``: batches are padded up to the next of these. ``pad_variable_length_inputs``:
    inputs whose non-batch dimensions differ are padded to the largest with their first element.
    """

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = DEFAULT_THREAD_POOL_NAME
    allowed_batch_sizes: tuple = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ConfigFileError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ConfigFileError(f"batch_timeout_micros must not be negative, got {self.batch_timeout_micros}")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise ConfigFileError(f"allowed_batch_sizes entries must be positive and monotonically "
                                      f"increasing; got {sizes}")
            if sizes[-1] != self.max_batch_size:
                raise ConfigFileError(f"Last entry in allowed_batch_sizes must match max_batch_size; last entry "
                                      f"was {sizes[-1]}; expected {self.max_batch_size}")

    def padded_size(self, batch_size: int) -> int:
        """The smallest allowed batch size holding ``batch_size`` rows (``batch_size`` if none are set)."""
        return next((size for size in self.allowed_batch_sizes if size >= batch_size), batch_size)


def _parse(path: str, message_class, flag: str):
    try:
        with tf.io.gfile.GFile(path, "r") as config_file:
            return text_format.Parse(config_file.read(), message_class())
    except (OSError, tf.errors.OpError) as error:
        raise ConfigFileError(f"Cannot read {flag} {path}: {error}") from error
    except text_format.ParseError as error:
        raise ConfigFileError(f"Invalid {flag} {path}: {error}") from error


def read_batching_parameters(path: str) -> BatchingOptions:
    """``--batching_parameters_file``: a BatchingParameters text proto; omitted fields take TF Serving's
    defaults. Raises ConfigFileError naming the file and the field."""
    proto = _parse(path, BatchingParametersProto, "--batching_parameters_file")
    values = {name: getattr(proto, name).value for name in ("max_batch_size", "batch_timeout_micros",
                                                            "max_enqueued_batches", "num_batch_threads",
                                                            "thread_pool_name") if proto.HasField(name)}
    try:
        return BatchingOptions(**values, allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
                               pad_variable_length_inputs=proto.pad_variable_length_inputs)
    except ConfigFileError as error:
        raise ConfigFileError(f"Invalid --batching_parameters_file {path}: {error}") from error


def read_monitoring_config(path: str) -> str | None:
    """``--monitoring_config_file``: the path Prometheus metrics are served at on the REST port, or None when
    ``prometheus_config.enable`` is false. An empty path means TF Serving's default."""
    proto = _parse(path, MonitoringConfigProto, "--monitoring_config_file")
    prometheus = proto.prometheus_config
    if not prometheus.enable:
        return None
    metrics_path = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if not metrics_path.startswith("/"):
        raise ConfigFileError(f"Invalid --monitoring_config_file {path}: prometheus_config.path must start "
                              f"with '/', got {metrics_path!r}")
    return metrics_path
