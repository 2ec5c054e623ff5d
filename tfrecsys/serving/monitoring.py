"""The metrics tensorflow_model_server exports, in its Prometheus text format.

Names, labels and bucket limits are TF Serving's (tensorflow_serving/servables/tensorflow/util.cc,
batching/batching_session.cc, batching/batching_util.h), and the page is written as its
util/prometheus_exporter.cc writes it: ``/tensorflow/serving/request_count`` becomes
``:tensorflow:serving:request_count``, counters print as integers, histograms as cumulative
``_bucket{le=...}`` lines (the last one ``+Inf``) then ``_sum`` and ``_count``. So dashboards and alerts built
on the real server read tfrecsys-serve unchanged.

    metrics = ServingMetrics()
    metrics.request_count.increment("dnn", "OK")
    metrics.request_latency.observe(1830.0, "dnn", "Predict", "GRPC")   # microseconds
    page = metrics.registry.prometheus_page()
"""

import bisect
import re
import threading


def exponential_buckets(scale: float, growth_factor: float, bucket_count: int) -> list[float]:
    """TensorFlow's ``monitoring::Buckets::Exponential``: ``scale * growth_factor**i`` for ``i < bucket_count``."""
    return [scale * growth_factor ** i for i in range(bucket_count)]


def _prometheus_name(name: str) -> str:
    # prometheus_exporter.cc: every character outside [a-zA-Z0-9_] becomes ':'.
    name = re.sub(r"[^a-zA-Z0-9_]", ":", name)
    return "_" + name if name[:1].isdigit() else name


def _label_text(names: tuple, values: tuple) -> str:
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"') for value in values)
    return ",".join(f'{re.sub(r"[^a-zA-Z0-9]", "_", name)}="{value}"' for name, value in zip(names, escaped))


def _number(value: float) -> str:
    # absl::StrCat of a double: six significant digits, no trailing zeros.
    return f"{value:.6g}"


class Counter:
    """A cumulative count per combination of label values."""

    def __init__(self, name: str, description: str, *label_names: str):
        self.name, self.description, self.label_names = name, description, label_names
        self._lock = threading.Lock()
        self._values: dict[tuple, int] = {}

    def increment(self, *label_values: str, by: int = 1) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0) + by

    def value(self, *label_values: str) -> int:
        with self._lock:
            return self._values.get(label_values, 0)

    def prometheus_lines(self) -> list[str]:
        name = _prometheus_name(self.name)
        with self._lock:
            values = sorted(self._values.items())
        return [f"# TYPE {name} counter"] + [f"{name}{{{_label_text(self.label_names, labels)}}} {count}"
                                              for labels, count in values]


class Histogram:
    """A distribution per combination of label values (TensorFlow's ``monitoring::Sampler``).

    A value falls in the first bucket whose limit exceeds it; values at or above the last limit fall in a
    final bucket with no upper limit.
    """

    def __init__(self, name: str, description: str, bucket_limits: list[float], *label_names: str):
        self.name, self.description, self.label_names = name, description, label_names
        self.bucket_limits = list(bucket_limits)
        self._lock = threading.Lock()
        self._cells: dict[tuple, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *label_values: str) -> None:
        index = bisect.bisect_right(self.bucket_limits, value)
        with self._lock:
            buckets, total = self._cells.setdefault(label_values, ([0] * (len(self.bucket_limits) + 1), [0.0]))
            buckets[index] += 1
            total[0] += value

    def count(self, *label_values: str) -> int:
        with self._lock:
            cell = self._cells.get(label_values)
            return sum(cell[0]) if cell else 0

    def total(self, *label_values: str) -> float:
        with self._lock:
            cell = self._cells.get(label_values)
            return cell[1][0] if cell else 0.0

    def prometheus_lines(self) -> list[str]:
        name = _prometheus_name(self.name)
        lines = [f"# TYPE {name} histogram"]
        with self._lock:
            cells = sorted((labels, (list(buckets), total[0])) for labels, (buckets, total) in self._cells.items())
        for labels, (buckets, total) in cells:
            label_text = _label_text(self.label_names, labels)
            prefix = f"{name}_bucket{{{label_text}{',' if label_text else ''}"
            cumulative = 0
            limits = [_number(limit) for limit in self.bucket_limits] + ["+Inf"]
            for limit, count in zip(limits, buckets, strict=True):
                cumulative += count
                lines.append(f'{prefix}le="{limit}"}} {cumulative}')
            lines.append(f"{name}_sum{{{label_text}}} {_number(total)}")
            lines.append(f"{name}_count{{{label_text}}} {cumulative}")
        return lines


class MetricsRegistry:
    """The metrics of one server, in registration order."""

    def __init__(self):
        self._metrics: list[Counter | Histogram] = []

    def add(self, metric):
        self._metrics.append(metric)
        return metric

    def prometheus_page(self) -> str:
        """The whole page, as TF Serving serves it at its monitoring path (sorted by TF metric name)."""
        lines = []
        for metric in sorted(self._metrics, key=lambda m: m.name):
            lines += metric.prometheus_lines()
        return "\n".join(lines) + "\n"


class ServingMetrics:
    """The request, example and batching metrics tensorflow_model_server keeps, by their TF names."""

    def __init__(self):
        self.registry = registry = MetricsRegistry()
        self.request_count = registry.add(Counter(
            "/tensorflow/serving/request_count", "The total number of requests.", "model_name", "status"))
        # Microseconds; scale 10, power 1.8, 33 buckets (~20 minutes), as util.cc.
        self.request_latency = registry.add(Histogram(
            "/tensorflow/serving/request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            exponential_buckets(10, 1.8, 33), "model_name", "API", "entrypoint"))
        self.request_example_counts = registry.add(Histogram(
            "/tensorflow/serving/request_example_counts", "The number of tensorflow.Examples per request.",
            exponential_buckets(1, 2, 15), "model"))
        self.request_example_count_total = registry.add(Counter(
            "/tensorflow/serving/request_example_count_total", "The total number of tensorflow.Examples.",
            "model"))
        self.batch_queuing_latency = registry.add(Histogram(
            "/tensorflow/serving/batching_session/queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            exponential_buckets(100, 1.2, 52), "thread_pool_name"))
        self.batch_input_size = registry.add(Histogram(
            "/tensorflow/serving/batching_session/input_batch_size",
            "Tracks the batch size distribution on the inputs.", exponential_buckets(1, 2, 14)))
        self.batch_processed_size = registry.add(Histogram(
            "/tensorflow/serving/batching_session/processed_batch_size",
            "Tracks the batch size distribution on processing.", exponential_buckets(1, 2, 14)))
        self.batch_padding_size = registry.add(Histogram(
            "/tensorflow/serving/batching_session/padding_size",
            "Tracks the padding size distribution on batches.", exponential_buckets(1, 2, 14),
            "execution_batch_size"))
        # TensorFlow's SavedModel loader counts every load try, so failed tries and retries show here.
        self.load_attempt_count = registry.add(Counter(
            "/tensorflow/cc/saved_model/load_attempt_count",
            "The number of times a SavedModel was successfully loaded.", "model_path", "status"))
        self.batch_wrapped_run_count = registry.add(Counter(
            "/tensorflow/serving/batching_session/wrapped_run_count",
            "Total count of run calls on the wrapped session"))

    def record_request(self, model_name: str, api: str, entrypoint: str, status_name: str,
                       latency_micros: float) -> None:
        """A finished Predict/Classify/Regress: counted by status; its latency kept when it succeeded
        (prediction_service_impl.cc records latency only for OK answers)."""
        self.request_count.increment(model_name, status_name)
        if status_name == "OK":
            self.request_latency.observe(latency_micros, model_name, api, entrypoint)

    def record_examples(self, model_name: str, count: int) -> None:
        self.request_example_counts.observe(count, model_name)
        self.request_example_count_total.increment(model_name, by=count)
