"""The batch-scoring Beam pipeline: one read of the input, one RunInference per model, keyed rows out.

    Read TFRecord | Parquet  ->  RowBatch (rows of one file)               --unreadable-->  dead letters
      -> KeyRows: each row's key                                            --no key------>  dead letters
      -> per model: RunInference(SavedModelBatchHandler)     --rows the model cannot parse-->  dead letters
      -> per model: rows in the job's mode (score | retrieve), tagged with model name and version
      -> Flatten -> Write JSON lines | Parquet | TFRecord        dead letters -> Write JSON lines

Rows go to the models' examples signature (``serving_examples``) as serialized tf.train.Example, so scoring
needs no tfrecsys model code: each SavedModel parses its own inputs, exactly as it does behind TF Serving.
It runs on any Beam runner; ``pipeline_args`` are ordinary Beam pipeline options (``--runner=...``).
"""

import dataclasses
from typing import Any, Iterable, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.runners.runner import PipelineResult, PipelineState

from tfrecsys.contract import SERVING_EXAMPLES
from tfrecsys.beam_runner import pipeline_options, temp_dir_removed
from tfrecsys.scoring import inputs, outputs
from tfrecsys.scoring.inputs import DEAD_LETTER, METRICS_NAMESPACE, ROWS_READ
from tfrecsys.scoring.model_handler import DEFAULT_BATCH_SIZE, SavedModelBatchHandler
from tfrecsys.scoring.rows import DeadLetter, ParquetRows, RowBatch, key_batch, merged_needs, parquet_key_dtype
from tfrecsys.scoring.saved_models import ModelSpec, ScoringModel, check_distinct, load_scoring_model

DEFAULT_KEY_FEATURE = {"score": "example_id", "retrieve": "user_id"}
DEAD_LETTER_SUFFIX = "_dead_letter"
ROWS_REJECTED = "rows_rejected"
ROWS_WRITTEN = "rows_written"
ROWS_SCORED_PREFIX = "rows_scored:"
OUTPUT_FILES = "output_files"
DEAD_LETTER_FILES = "dead_letter_files"


@dataclasses.dataclass(frozen=True)
class ScoringSummary:
    """What a finished scoring run did, from the pipeline's metrics.

    Attributes:
      rows_read: input rows read.
      scored_by_model: rows each model scored, by ``name/version`` tag.
      rows_rejected: dead letters written (rows no model, or one model, could score; unreadable file tails).
      rows_written: output rows (``retrieve`` mode writes one per candidate).
      output_files, dead_letter_files: the files this run wrote.
      models: the resolved models, in the order given.
    """
    rows_read: int
    scored_by_model: dict[str, int]
    rows_rejected: int
    rows_written: int
    output_files: list[str]
    dead_letter_files: list[str]
    models: tuple[ScoringModel, ...]

    @property
    def rows_scored(self) -> int:
        """Rows scored, summed over models."""
        return sum(self.scored_by_model.values())


def score(input_pattern: str, models: Union[str, ModelSpec, Sequence[ModelSpec]], output_prefix: str, *,
          input_format: str = "tfrecord", output_format: str = "jsonl", mode: str = "score",
          key_feature: Optional[str] = None, top_k: int = 0, signature_name: str = SERVING_EXAMPLES,
          batch_size: int = DEFAULT_BATCH_SIZE, dead_letter_prefix: Optional[str] = None,
          num_output_shards: int = 0, pipeline_args: Optional[Sequence[str]] = None) -> ScoringSummary:
    """Scores every row matching ``input_pattern`` with every model, in one pass over the input.

    Args:
      input_pattern: file pattern (any Beam filesystem) of TFRecord files of serialized tf.train.Example, or
        of Parquet files whose columns are the models' features.
      models: a SavedModel directory or model base path (its highest version), or ``ModelSpec``s — several
        to score champion and challenger in one pass.
      output_prefix: path prefix of the sharded output ``<prefix>-SSSSS-of-NNNNN.<jsonl|parquet|tfrecord>``.
      input_format: "tfrecord" or "parquet".
      output_format: "jsonl", "parquet" or "tfrecord".
      mode: "score" (one output row per input row and model, every output of the signature) or "retrieve"
        (one output row per input row, model and candidate of a retrieval model: key, item_id, score, rank).
      key_feature: the feature (Parquet column) holding each row's key, one int64 or string value, copied
        to its output rows; "example_id" in score mode and "user_id" in retrieve mode when None.
      top_k: retrieve mode: keep the best ``top_k`` of the model's candidates (0: all it returns).
      signature_name: the signature taking serialized examples.
      batch_size: rows per signature call (the last rows of each file may make a smaller batch).
      dead_letter_prefix: where rows that could not be scored go, as JSON lines with the reason;
        ``<output_prefix>_dead_letter`` when None.
      num_output_shards: output files; 0 lets the runner decide.
      pipeline_args: Beam pipeline options, e.g. ``["--runner=DataflowRunner", "--project=..."]``;
        DirectRunner when no runner is given.

    Raises:
      FileNotFoundError: the input pattern matches no file, or a model path holds no SavedModel.
      ValueError: a signature is missing or does not take serialized examples; a Parquet column cannot feed
        the feature of its name; the key feature is missing from the first rows or clashes with an output;
        two models share a name and version.
      RuntimeError: the pipeline did not finish successfully.
    """
    for name, value, allowed in (("input_format", input_format, inputs.INPUT_FORMATS),
                                 ("output_format", output_format, outputs.OUTPUT_FORMATS),
                                 ("mode", mode, outputs.MODES)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if batch_size < 1 or num_output_shards < 0:
        raise ValueError(f"Need batch_size >= 1 and num_output_shards >= 0, got {batch_size} and {num_output_shards}")
    options = pipeline_options(pipeline_args)
    # File systems that need options (HDFS hosts, S3 regions) must have them before the input is matched.
    FileSystems.set_options(options)
    files = inputs.match_files(input_pattern)
    scoring_models = tuple(load_scoring_model(spec, signature_name) for spec in _model_specs(models))
    check_distinct(scoring_models)
    key_feature = key_feature or DEFAULT_KEY_FEATURE[mode]
    formatters = [outputs.RowFormatter(mode, key_feature, model, top_k) for model in scoring_models]
    columns = outputs.output_columns(formatters)

    with temp_dir_removed(beam.Pipeline(options=options)) as pipeline:
        read, key_dtype = _read(pipeline, input_format, input_pattern, files, key_feature, scoring_models, batch_size)
        output_writer = outputs.make_output_format(output_format, key_feature, key_dtype, columns)

        keyed = read.batches | "KeyRows" >> beam.ParDo(_KeyRows(key_feature, key_dtype)).with_outputs(
            DEAD_LETTER, main="batches")
        rows, dead_letters = [], [read[DEAD_LETTER], keyed[DEAD_LETTER]]
        for model, formatter in zip(scoring_models, formatters):
            formatted = (keyed.batches
                         | f"Score[{model.label}]" >> RunInference(SavedModelBatchHandler(model))
                         | f"Format[{model.label}]" >> beam.ParDo(
                             _FormatRows(formatter, output_writer)).with_outputs(DEAD_LETTER, main="rows"))
            rows.append(formatted.rows)
            dead_letters.append(formatted[DEAD_LETTER])
        _ = (tuple(rows) | "AllModels" >> beam.Flatten()
             | "WriteRows" >> output_writer.write(output_prefix, num_output_shards)
             | "RecordOutputFiles" >> beam.ParDo(_RecordFile(OUTPUT_FILES)))
        dead_letter_prefix = dead_letter_prefix or output_prefix + DEAD_LETTER_SUFFIX
        _ = (tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten()
             | "DeadLetterLines" >> beam.ParDo(_DeadLetterLine())
             | "WriteDeadLetters" >> beam.io.WriteToText(dead_letter_prefix, file_name_suffix=".jsonl")
             | "RecordDeadLetterFiles" >> beam.ParDo(_RecordFile(DEAD_LETTER_FILES)))

        result = pipeline.run()
        state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise RuntimeError(f"Scoring pipeline for {input_pattern} ended in state {state}")
    counters = _counters(result)
    return ScoringSummary(
        rows_read=counters.get(ROWS_READ, 0),
        scored_by_model={model.tag: counters.get(ROWS_SCORED_PREFIX + model.label, 0) for model in scoring_models},
        rows_rejected=counters.get(ROWS_REJECTED, 0), rows_written=counters.get(ROWS_WRITTEN, 0),
        output_files=_files(result, OUTPUT_FILES, output_prefix, outputs.FILE_SUFFIXES[output_format]),
        dead_letter_files=_files(result, DEAD_LETTER_FILES, dead_letter_prefix, ".jsonl"),
        models=scoring_models)


def _read(pipeline: beam.Pipeline, input_format: str, input_pattern: str, files: list[str], key_feature: str,
          models: Sequence[ScoringModel], batch_size: int) -> tuple[Any, str]:
    """The read step's outputs (``batches`` and ``DEAD_LETTER``) and the key's dtype.

    For Parquet, the first file's columns are checked against what the models parse, so that a column that
    cannot feed its feature fails here, named, before the job starts.
    """
    if input_format == "tfrecord":
        probe = inputs.first_records(files)
        key_dtype = inputs.tfrecord_key_dtype(files, probe, key_feature)
        inputs.check_tfrecord_features(files, probe, models)
        return pipeline | "ReadTFRecord" >> inputs.ReadTFRecord(input_pattern, batch_size), key_dtype
    schema = inputs.parquet_schema(files[0])
    key_dtype = parquet_key_dtype(schema, key_feature, files[0])
    parquet_rows = ParquetRows(merged_needs(models), key_feature, key_dtype)
    parquet_rows.plan(schema, files[0])
    return pipeline | "ReadParquet" >> inputs.ReadParquet(input_pattern, parquet_rows, batch_size), key_dtype


def _model_specs(models: Union[str, ModelSpec, Sequence[ModelSpec]]) -> list[ModelSpec]:
    if isinstance(models, str):
        return [ModelSpec(models)]
    if isinstance(models, ModelSpec):
        return [models]
    if not models:
        raise ValueError("No model to score with: give a model path or at least one ModelSpec")
    return list(models)


class _KeyRows(beam.DoFn):
    """Pairs rows with their keys (``rows.key_batch``); the rows without one become dead letters."""

    def __init__(self, key_feature: str, key_dtype: str):
        self._key_feature, self._key_dtype = key_feature, key_dtype

    def process(self, batch: RowBatch) -> Iterable:
        keyed, rejected = key_batch(batch, self._key_feature, self._key_dtype)
        for dead_letter in rejected:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter)
        if keyed.records:
            yield keyed


class _FormatRows(beam.DoFn):
    """One model's scored batches as output elements; the rows it rejected as dead letters."""

    def __init__(self, formatter: outputs.RowFormatter, output_writer):
        self._formatter, self._output_writer = formatter, output_writer
        model = formatter.model
        self._rows_scored = Metrics.counter(METRICS_NAMESPACE, ROWS_SCORED_PREFIX + model.label)
        self._rows_written = Metrics.counter(METRICS_NAMESPACE, ROWS_WRITTEN)

    def process(self, prediction: PredictionResult) -> Iterable:
        batch, scores = prediction.example, prediction.inference
        model = self._formatter.model
        for row, reason in scores.rejected:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(batch.source, reason, batch.keys[row], model.name,
                                                                   model.version, batch.records[row]))
        self._rows_scored.inc(len(scores.rows))
        rows = self._formatter.format(batch, scores)
        self._rows_written.inc(len(rows))
        yield from self._output_writer.encode(rows)


class _DeadLetterLine(beam.DoFn):
    """Dead letters as JSON lines, counted: the rejected rows the launcher reports."""

    def __init__(self):
        self._rows_rejected = Metrics.counter(METRICS_NAMESPACE, ROWS_REJECTED)

    def process(self, dead_letter: DeadLetter) -> Iterable[str]:
        self._rows_rejected.inc()
        yield dead_letter.to_json()


class _RecordFile(beam.DoFn):
    """Reports each file a sink wrote as a metric: the exact files of this run, whatever else shares the prefix."""

    def __init__(self, metric_name: str):
        self._files = Metrics.string_set(METRICS_NAMESPACE, metric_name)

    def process(self, file_name: str) -> Iterable[str]:
        self._files.add(file_name)
        yield file_name


def _counters(result: PipelineResult) -> dict[str, int]:
    counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    totals: dict[str, int] = {}
    for counter in counters:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (_metric_value(counter) or 0)
    return totals


def _files(result: PipelineResult, metric_name: str, prefix: str, suffix: str) -> list[str]:
    """The files this run wrote, from the metric; by the shard pattern where a runner reports no string sets."""
    string_sets = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(metric_name))["string_sets"]
    if string_sets:
        return sorted(set().union(*(_metric_value(files) or set() for files in string_sets)))
    return sorted(metadata.path for metadata in FileSystems.match([f"{prefix}-*-of-*{suffix}"])[0].metadata_list)


def _metric_value(metric: Any) -> Any:
    """Committed value where the runner has one (retried bundles counted once), else the attempted one."""
    return metric.committed if metric.committed is not None else metric.attempted
