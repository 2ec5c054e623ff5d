"""The batch-scoring Beam pipeline: TFRecord of tf.train.Example in, keyed JSON lines out.

    ReadFromTFRecord(input_pattern) -> (key, serialized example) -> RunInference(SavedModel signature)
        -> {"<key_feature>": key, "<output>": value, ...} per line -> WriteToText(<prefix>-SSSSS-of-NNNNN.jsonl)

The records go to the model's ``serving_examples`` signature as they are, so scoring needs no feature schema
and no tfrecsys model code: the SavedModel parses its own inputs, exactly as it does behind TF Serving.
It runs on any Beam runner; ``pipeline_args`` are ordinary Beam pipeline options (``--runner=...``).
"""

import dataclasses
import json
from typing import Any, Iterable, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

from tfrecsys.scoring.model_handler import (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MIN_BATCH_SIZE,
                                            DEFAULT_SIGNATURE_NAME, ExamplesSignature,
                                            SavedModelExamplesHandler)

DEFAULT_KEY_FEATURE = "example_id"
OUTPUT_SUFFIX = ".jsonl"
METRICS_NAMESPACE = "tfrecsys.scoring"
ROWS_SCORED = "rows_scored"
OUTPUT_FILES = "output_files"

Key = Union[int, str]


@dataclasses.dataclass(frozen=True)
class ScoringSummary:
    """What a finished scoring run did: rows written, the files holding them, the model version used."""
    rows_scored: int
    output_files: list[str]
    model_dir: str


def score(input_pattern: str, model_path: str, output_prefix: str, key_feature: str = DEFAULT_KEY_FEATURE,
          signature_name: str = DEFAULT_SIGNATURE_NAME, model_version: Optional[int] = None,
          min_batch_size: int = DEFAULT_MIN_BATCH_SIZE, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
          pipeline_args: Optional[Sequence[str]] = None) -> ScoringSummary:
    """Scores every record matching ``input_pattern`` and writes ``<output_prefix>-*-of-*.jsonl``.

    Args:
      input_pattern: TFRecord file pattern of serialized tf.train.Example (any Beam filesystem).
      model_path: a SavedModel directory, or a base path with integer versions (the highest is used).
      output_prefix: path prefix of the sharded JSON-lines output.
      key_feature: the feature (one int64 or bytes value) copied to each output row to identify it.
      signature_name: the SavedModel signature taking serialized examples.
      model_version: a version under ``model_path``; the highest when None.
      min_batch_size, max_batch_size: bounds of the batches each signature call gets.
      pipeline_args: Beam pipeline options, e.g. ``["--runner=DataflowRunner", "--project=..."]``;
        DirectRunner when no runner is given.

    Returns:
      The rows scored and the output files, read from the pipeline's metrics once it has finished.

    Raises:
      FileNotFoundError: the input pattern matches no file, or the model path holds no SavedModel.
      ValueError: the signature is missing or does not take serialized examples, or an output has the
        key feature's name.
      RuntimeError: the pipeline did not finish successfully.
    """
    _check_input_exists(input_pattern)
    handler = SavedModelExamplesHandler(model_path, signature_name, model_version, min_batch_size, max_batch_size)
    _check_key_is_not_an_output(key_feature, handler.signature)
    pipeline = beam.Pipeline(options=PipelineOptions(list(pipeline_args or [])))
    add_scoring(pipeline, input_pattern, handler, output_prefix, key_feature)
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise RuntimeError(f"Scoring pipeline for {input_pattern} ended in state {state}")
    return ScoringSummary(rows_scored=_rows_scored(result), output_files=_output_files(result, output_prefix),
                          model_dir=handler.model_dir)


def add_scoring(pipeline: beam.Pipeline, input_pattern: str, handler: SavedModelExamplesHandler,
                output_prefix: str, key_feature: str = DEFAULT_KEY_FEATURE) -> beam.PCollection:
    """Adds the read-score-write transforms to ``pipeline``; returns the PCollection of written file names."""
    return (pipeline
            | "ReadExamples" >> beam.io.ReadFromTFRecord(input_pattern)
            | "KeyByFeature" >> beam.Map(key_example, key_feature, input_pattern)
            | "RunInference" >> RunInference(KeyedModelHandler(handler))
            | "ToJsonLines" >> beam.ParDo(_ToJsonLine(key_feature))
            | "WriteJsonLines" >> beam.io.WriteToText(output_prefix, file_name_suffix=OUTPUT_SUFFIX)
            | "RecordOutputFiles" >> beam.ParDo(_RecordOutputFile()))


def key_example(serialized: bytes, key_feature: str, input_pattern: str) -> tuple[Key, bytes]:
    """Pairs a serialized tf.train.Example with its key: the single int64 or UTF-8 bytes value of ``key_feature``.

    A row without a usable key cannot be matched back to its source, so it fails the job with a message
    naming the feature and the input pattern.
    """
    features = tf.train.Example.FromString(serialized).features.feature
    if key_feature not in features:
        raise ValueError(f"A row in {input_pattern} has no key feature {key_feature!r}; every row needs one to be "
                         "scored (key_feature / --key_feature names it)")
    kind = features[key_feature].WhichOneof("kind")
    values = getattr(features[key_feature], kind).value if kind else []
    if kind not in ("int64_list", "bytes_list") or len(values) != 1:
        raise ValueError(f"Key feature {key_feature!r} of a row in {input_pattern} must hold exactly one int64 or "
                         f"bytes value, got {len(values)} value(s) in {kind or 'an empty feature'}")
    return _json_key(values[0], key_feature, input_pattern), serialized


def _json_key(key: Union[int, bytes], key_feature: str, input_pattern: str) -> Key:
    """The key as JSON can hold it: int64 as is, bytes as UTF-8 text."""
    if not isinstance(key, bytes):
        return key
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Key feature {key_feature!r} of a row in {input_pattern} is not UTF-8 text: {key!r}") from error


def to_json_line(key_feature: str, key: Key, inference: dict[str, Any]) -> str:
    """One output row: the key, then each output by name (sorted), as plain JSON values.

    Floats are the exact float32 values as Python floats, whose repr round-trips, so nothing is lost.
    """
    row = {key_feature: key}
    row.update((name, _json_value(inference[name])) for name in sorted(inference))
    return json.dumps(row)


def _json_value(value: Union[np.ndarray, np.generic]) -> Any:
    """A numpy scalar or array as JSON-ready Python: float32 -> float (exact), arrays -> lists, bytes -> str."""
    return _bytes_to_str(value.tolist())


def _bytes_to_str(value: Any) -> Any:
    """Decodes bytes (string outputs such as retrieval item ids) as UTF-8, inside nested lists too."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_bytes_to_str(item) for item in value]
    return value


class _ToJsonLine(beam.DoFn):
    """Formats keyed predictions as JSON lines and counts them, so the launcher can report rows scored."""

    def __init__(self, key_feature: str):
        self._key_feature = key_feature
        self._rows_scored = Metrics.counter(METRICS_NAMESPACE, ROWS_SCORED)

    def process(self, keyed_prediction: tuple[Key, PredictionResult]) -> Iterable[str]:
        key, prediction = keyed_prediction
        self._rows_scored.inc()
        yield to_json_line(self._key_feature, key, prediction.inference)


class _RecordOutputFile(beam.DoFn):
    """Reports each file WriteToText wrote as a metric: the exact files of this run, whatever else shares the prefix."""

    def __init__(self):
        self._output_files = Metrics.string_set(METRICS_NAMESPACE, OUTPUT_FILES)

    def process(self, file_name: str) -> Iterable[str]:
        self._output_files.add(file_name)
        yield file_name


def _check_input_exists(input_pattern: str) -> None:
    """Fails before the job starts when the pattern matches nothing (a typo would otherwise score zero rows)."""
    if not FileSystems.match([input_pattern])[0].metadata_list:
        raise FileNotFoundError(f"No input files match {input_pattern!r}")


def _check_key_is_not_an_output(key_feature: str, signature: ExamplesSignature) -> None:
    """An output named like the key would overwrite the key in every row."""
    if key_feature in signature.output_names:
        raise ValueError(f"Key feature {key_feature!r} is also an output of signature {signature.name!r} "
                         f"({list(signature.output_names)}); pick another key feature name")


def _rows_scored(result: PipelineResult) -> int:
    counters = _query_metrics(result, ROWS_SCORED)["counters"]
    return sum(_metric_value(counter) or 0 for counter in counters)


def _output_files(result: PipelineResult, output_prefix: str) -> list[str]:
    """The files this run wrote, from the metric; by the shard pattern where a runner reports no string sets."""
    string_sets = _query_metrics(result, OUTPUT_FILES)["string_sets"]
    if string_sets:
        return sorted(set().union(*(_metric_value(files) or set() for files in string_sets)))
    pattern = f"{output_prefix}-*-of-*{OUTPUT_SUFFIX}"
    return sorted(metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)


def _query_metrics(result: PipelineResult, name: str) -> dict[str, list]:
    return result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))


def _metric_value(metric: Any) -> Any:
    """Committed value where the runner has one (retried bundles counted once), else the attempted one."""
    return metric.committed if metric.committed is not None else metric.attempted
