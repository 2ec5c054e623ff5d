"""The preprocessing pipeline behind ``tfrecsys-preprocess``: a source dataset → sharded TFRecord (or Parquet)
examples for an experiment's feature schema, as an Apache Beam pipeline (DirectRunner here; Flink, Spark or
Dataflow by pipeline options).

    source files ─ parse + join side tables ─┬─ bad rows ──────────────────────────────▶ dead_letter.jsonl
                                             └─ records
        event logs:    group by user, sort by time → one example per event, history = the user's events
                       strictly before it (most recent ``history_len``, ``tfrecsys.data.histories``)
                       → leave-one-out or chronological split
                       ├─ per user, all events once, oldest first (sequence_columns) ▶ sequences-*.tfrecord
                       ├─ per user, all events once (user_history_columns) ─────────▶ user_histories-*.parquet
                       └─ one example per item (candidate_columns) ─────────────────▶ candidates.tfrecord
        sample tables: one example per row → the release's files, a seeded random or a chronological split
    examples ─┬─ vocabularies of the train split (minimum counts) ───▶ vocabularies/<feature>.txt
              ├─ hashed features: distinct values and collisions ───▶ metadata.json
              ├─ item frequencies of the train split (logQ) ────────▶ item_frequency.tsv
              └─ stable shard by key, sorted inside the shard ───────▶ <split>-SSSSS-of-NNNNN.tfrecord
                                                                       metadata.json (schema, sizes, rows)

So one run writes what each model family trains on: examples with histories (rankers, DIN/DIEN), the
per-user store their lifelong histories are cut from at input time (SIM), the candidate corpus and item
frequencies (retrieval), per-user sequences (SASRec, HSTU).

Every output is deterministic: shards are assigned by a stable hash of each example's key and sorted
within the shard, examples serialize deterministically, vocabularies are sorted by count then value, so
preprocessing the same input twice gives byte-identical files on any runner.

The config block (``config.preprocess``) names the source (``tfrecsys.data.readers.SOURCES``), the input
path and the split; the ``features`` block says what to write. A feature comes from a source column of the
same name, from ``hist_<column>`` (a history of an event column), or from a label rule such as
``"like": "rating >= 4"`` or ``"converted_1d": "0 <= conversion_timestamp - click_timestamp <= 86400"``
(``tfrecsys.data.label_rules``). An id or sequence feature whose ``vocabulary`` is a file under
``<output_dir>/vocabularies/`` gets that file built from the train split; ``hash_buckets`` features stay raw
(the model hashes them) and get collision statistics. A number feature whose ``boundaries`` is a file there
gets the cut points of at most ``max_buckets[feature]`` equal-frequency buckets of its train values
(``tfrecsys.features.buckets``). A feature that reads another column (``source=``, e.g. an age band of
the dense ``age``) adds no column of its own: the source column is written once.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import uuid
from typing import Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.runners.runner import PipelineState

from tfrecsys.beam_runner import pipeline_options, temp_dir_removed
from tfrecsys.data import parquet
from tfrecsys.data.histories import history_rows
from tfrecsys.data.item_frequency import write_item_frequency
from tfrecsys.data.label_rules import parse_label_rule
from tfrecsys.data.negatives import sample_other_items
from tfrecsys.data.readers import RowError, Source, get_source
from tfrecsys.data.user_histories import write_user_histories
from tfrecsys.features.buckets import equal_frequency_boundaries
from tfrecsys.features.schema import (DenseFeature, FeatureSchema, IdFeature, LabelFeature, SchemaError,
                                      SequenceFeature)

METADATA_FILE = "metadata.json"
DEAD_LETTER_FILE = "dead_letter.jsonl"
ITEM_FREQUENCY_FILE = "item_frequency.tsv"
CANDIDATES_FILE = "candidates.tfrecord"
SEQUENCES_PREFIX = "sequences"
SEQUENCE_EVAL_MARK = "in_eval"
USER_HISTORIES_PREFIX = "user_histories"
# What config.data.user_histories.file names to read the store preprocessing writes (relative to data.dir).
USER_HISTORIES_FILES = f"{USER_HISTORIES_PREFIX}-*.parquet"
_INT64_RANGE = (-2 ** 63, 2 ** 63 - 1)
VOCABULARY_DIR = "vocabularies"
HISTORY_PREFIX = "hist_"
NEGATIVE_HISTORY_PREFIX = "neg_hist_"
NEXT_PREFIX = "next_"
EXAMPLES_PER_USER = ("every_event", "last")
EVENT_SPLITS = ("leave_one_out", "chronological")
SAMPLE_SPLITS = ("files", "random", "chronological")
FORMATS = {"tfrecord": ".tfrecord", "parquet": ".parquet"}
TRAIN, EVAL = "train", "eval"
TRAIN_ORDERS = ("shuffled", "key")
DEFAULT_MAX_BUCKETS = 32


def vocabulary_path(output_dir: str, feature: str) -> str:
    """Where preprocessing writes ``feature``'s vocabulary (what a config's ``vocabulary=`` should name)."""
    return os.path.join(output_dir, VOCABULARY_DIR, f"{feature}.txt")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """The ``preprocess`` block of an experiment config.

    ``split``: event logs ``leave_one_out`` (each user's last event is eval) or ``chronological`` (the last
    ``eval_fraction`` of events in time is eval); sample tables ``files`` (the release's own files),
    ``random`` (a seeded, stable ``eval_fraction`` of rows) or ``chronological`` (by the source's time column).
    ``history_columns``: event columns whose earlier values form ``hist_<column>`` (default: the item and
    the time column; int64, string or float32, e.g. MovieLens ratings as the actions of a history).
    ``labels``: ``{name: rule}``, a rule such as ``"rating >= 4"`` or
    ``"0 <= conversion_timestamp - click_timestamp <= 86400"`` (``tfrecsys.data.label_rules``).
    ``min_counts``: ``{feature: n}``, values seen fewer than n times in the train split (the feature's own and
    those of the negative histories sharing its table) stay out of the vocabulary (default 1).
    ``max_buckets``: ``{feature: n}``, for a feature whose ``boundaries`` file preprocessing writes: at most n
    buckets of about equal train rows, each distinct value whole (default ``DEFAULT_MAX_BUCKETS``; a column
    with at most n distinct values, such as an age in years, gets one bucket per value).
    ``examples_per_user``: ``every_event`` (default: one example per event) or
    ``last`` (leave-one-out only: per user, the last training event and the eval event; next-item models
    learn every position of one history, ``tfrecsys.data.next_item``). Vocabularies and item frequencies
    still count every training event.

    What else an event log's output holds, for other model families:
    ``candidate_columns``: item columns of the candidate corpus (retrieval); when set, ``candidates.tfrecord``
    holds one example per item of the log with the item column and these, and ``item_frequency.tsv`` lists
    every corpus item (count 0 for items without a counted training row). ``frequency_label``: a label of
    ``labels`` whose training rows with label 1 are the ones ``item_frequency.tsv`` counts (default: every
    training row, each a positive interaction). ``sequence_columns``: event columns of the per-user sequences
    (sequential models); when set, ``sequences-*.tfrecord`` holds one example per user: the user column, the
    time column, these columns and ``in_eval`` (1 for events of the eval split), every event once, oldest first.
    ``user_history_columns``: event columns of the per-user store lifelong histories are cut from at input
    time (SIM; ``tfrecsys.data.user_histories``); when set, ``user_histories-SSSSS-of-NNNNN.parquet``
    (``num_shards`` files, each user in one; a shard without users is not written) hold one row per user: the
    user column, the time column and these, every kept event once (eval events too: the input pipeline cuts
    each example's history strictly before its time, so an example never sees its own event or a later one),
    the same events the examples and their ``hist_*`` come from. A config reads it with
    ``config.data.user_histories = dict(file="user_histories-*.parquet", user_feature=<user column>,
    time_feature=<time column>, sequences={feature: column})``; the features it fills are not written per row.
    The time column must be int64 (exact times decide what is history); a row whose user, time or stored
    values the store cannot hold (missing, a list, an integer outside int64) is a dead letter with the reason.

    Sampled negatives (event logs; the Taobao DIN/DIEN protocol): ``keep_rows``, a rule in the labels' syntax
    (e.g. ``"behavior == 'pv'"``): only the source rows it holds for are read (the others are no events at
    all: not in histories, vocabularies or the catalogue). ``negatives_per_event`` ``k``: each event's example
    (label ``negative_label`` = 1) is followed by ``k`` sampled ones (label 0), the same row with the item
    and its ``sampled_item_columns`` (e.g. its category) replaced by those of an item drawn uniformly from the
    catalogue (every distinct item of the kept rows; an item seen with several categories keeps one), never
    the real one (``tfrecsys.data.negatives``); the sampled rows share the event's history and split, so each
    user's held-out event comes with its sampled ones.
    ``negative_label`` is then the only label (label rules would describe the real event, not the sampled
    item). A feature ``neg_hist_<column>`` (``<column>`` the item column or a sampled item column) is the
    negative history DIEN's auxiliary loss needs: aligned with ``hist_*``, at each position the column of an
    item drawn for that example, never the item of the event at that position (per example, as the DeepCTR
    protocol of peer-baselines §1 draws them, so an event's negative is not repeated in the ~50 rows whose
    history shows it). Draws are seeded by ``seed`` and the user, so they are the same on any runner. The
    vocabulary of the table a negative history shares (``item_id``'s) counts its items too: drawn from the
    whole log, some exist only in eval events, and the OOV row must not learn "a sampled behaviour".

    ``train_order``: the order of rows inside each training shard, ``shuffled`` (default: a seeded
    pseudo-random order, so a small shuffle window mixes many users and times) or ``key`` (by user and time,
    as eval shards always are: for data read as a stream in the order it happened).
    """

    source: str
    input: str
    split: str = "leave_one_out"
    eval_fraction: float = 0.1
    history_len: int = 50
    history_columns: tuple = ()
    labels: dict = dataclasses.field(default_factory=dict)
    min_counts: dict = dataclasses.field(default_factory=dict)
    max_buckets: dict = dataclasses.field(default_factory=dict)
    candidate_columns: tuple = ()
    frequency_label: str = ""
    sequence_columns: tuple = ()
    user_history_columns: tuple = ()
    examples_per_user: str = "every_event"
    num_shards: int = 4
    eval_shards: int = 1
    output_format: str = "tfrecord"
    train_order: str = "shuffled"
    keep_rows: str = ""
    negatives_per_event: int = 0
    sampled_item_columns: tuple = ()
    negative_label: str = ""
    seed: int = 0

    def __post_init__(self):
        if self.train_order not in TRAIN_ORDERS:
            raise ValueError(f"preprocess.train_order is {self.train_order!r}; choose from {TRAIN_ORDERS}")

    @classmethod
    def from_config(cls, block) -> "PreprocessConfig":
        values = dict(block)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown preprocess settings {unknown}; known: {sorted(fields)}")
        for name in ("labels", "min_counts", "max_buckets"):
            values[name] = dict(values.get(name) or {})
        for name in ("history_columns", "candidate_columns", "sequence_columns", "sampled_item_columns",
                     "user_history_columns"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class Output:
    """One column of the written examples: its name, dtype (int64, float32, string), whether it is a list,
    where its value comes from (``column``, ``history`` or ``label``) and the value for a missing float."""

    name: str
    dtype: str
    is_list: bool
    origin: str
    key: object
    default: float = 0.0


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the pipeline needs, checked before it starts (picklable: it travels to the workers)."""

    config: PreprocessConfig
    source_name: str
    is_event_log: bool
    user_column: Optional[str]
    item_column: Optional[str]
    time_column: Optional[str]
    outputs: tuple
    vocabularies: dict  # feature → minimum count (a bucketized feature's values are counted the same way)
    hashed: dict  # feature → hash buckets
    splits: tuple
    features_json: dict
    candidate_outputs: tuple = ()  # the item column first; empty: no candidates file
    sequence_outputs: tuple = ()  # the user column, the time column, the sequence columns; empty: no sequences
    keep_rows: object = None  # the parsed preprocess.keep_rows rule; None: every row
    item_columns: tuple = ()  # the item column and the sampled item columns, when negatives are sampled; else empty
    # feature → the written features whose values its vocabulary counts: itself and the negative histories that
    # share its table (their items are drawn from the whole log, eval-only items included); empty: itself only
    vocabulary_sources: dict = dataclasses.field(default_factory=dict)
    # the user column, the time column, the store's event columns (preprocess.user_history_columns); empty: no store
    user_history_outputs: tuple = ()
    # feature → at most this many buckets: its values' counts are written as bucket boundaries, not a vocabulary
    bucketized: dict = dataclasses.field(default_factory=dict)

    def shards(self, split: str) -> int:
        return self.config.num_shards if split == TRAIN else self.config.eval_shards


def _schema_for_planning(features_config, output_dir: str) -> tuple[FeatureSchema, dict, set]:
    """The features block as a schema, with vocabulary (or boundaries) files that preprocessing will write
    (under ``<output_dir>/vocabularies/``) standing in as placeholders; ``{feature: path}`` of those, and the
    names of the features whose file holds bucket boundaries."""
    to_build, adjusted, bucketized = {}, {}, set()
    for name, spec in dict(features_config).items():
        spec = dict(spec)
        for kind, placeholder in (("vocabulary", ()), ("boundaries", (0.0,))):
            path = spec.get(kind)
            if not isinstance(path, str):
                continue
            if os.path.abspath(path) == os.path.abspath(vocabulary_path(output_dir, name)):
                to_build[name] = path
                spec[kind] = placeholder
                if kind == "boundaries":
                    bucketized.add(name)
            elif os.path.dirname(os.path.abspath(path)) == os.path.abspath(os.path.join(output_dir, VOCABULARY_DIR)):
                raise ValueError(f"feature {name!r}: {kind} {path} is in the preprocessing output but named after "
                                 f"another feature; preprocessing writes {vocabulary_path(output_dir, name)}")
        adjusted[name] = spec
    return FeatureSchema.from_config(adjusted), to_build, bucketized


def _output_for(feature, source: Source, columns: dict, config: PreprocessConfig, rules: dict) -> Output:
    """Where ``feature`` comes from, checking its dtype against the source's (the error names both)."""
    name = feature.name
    is_sequence = isinstance(feature, SequenceFeature)
    default = feature.default if isinstance(feature, DenseFeature) else 0.0
    if isinstance(feature, DenseFeature) and feature.dim != 1:
        raise SchemaError(f"feature {name!r}: preprocessing writes scalar dense features; dim={feature.dim} has "
                          "no source column")
    if name in rules:
        if not isinstance(feature, (LabelFeature, DenseFeature)) or feature.dtype != "float32":
            raise SchemaError(f"feature {name!r} is a label rule (float32 0/1) but the schema says "
                              f"{type(feature).__name__} {feature.dtype}")
        return Output(name, "float32", False, "label", rules[name])
    if config.negative_label and name == config.negative_label:
        if not isinstance(feature, LabelFeature) or feature.dtype != "float32":
            raise SchemaError(f"feature {name!r} is preprocess.negative_label (float32 1 for events, 0 for sampled "
                              f"items) but the schema says {type(feature).__name__} {feature.dtype}")
        return Output(name, "float32", False, "sampled_label", None)
    if name in columns:
        found = columns[name]
        found_list = found.endswith("_list")
        found_scalar = found[:-len("_list")] if found_list else found
        compatible = (found_list == is_sequence and (found_scalar == feature.dtype or (
            isinstance(feature, (DenseFeature, LabelFeature)) and found == "int64" and feature.dtype == "float32")))
        if not compatible:
            wanted = f"list of {feature.dtype}" if is_sequence else feature.dtype
            raise SchemaError(f"feature {name!r} is {found} in the source {source.name} but the schema says "
                              f"{type(feature).__name__} {wanted}")
        return Output(name, feature.dtype, is_sequence, "column", name, default)
    if name.startswith(HISTORY_PREFIX) and source.is_event_log:
        column = name[len(HISTORY_PREFIX):]
        if column in _history_columns(config, source):
            found = columns[column]
            if not is_sequence or found != feature.dtype:
                raise SchemaError(f"feature {name!r} is a history of {found} values in the source {source.name} but "
                                  f"the schema says {type(feature).__name__} {feature.dtype}")
            return Output(name, feature.dtype, True, "history", column)
    if name.startswith(NEGATIVE_HISTORY_PREFIX) and source.is_event_log:
        column = name[len(NEGATIVE_HISTORY_PREFIX):]
        if column in (source.item_column, *config.sampled_item_columns) and column in columns:
            if not is_sequence or columns[column] != feature.dtype:
                raise SchemaError(f"feature {name!r} is a negative history of {columns[column]} values in the source "
                                  f"{source.name} but the schema says {type(feature).__name__} {feature.dtype}")
            return Output(name, feature.dtype, True, "negative_history", column)
        raise SchemaError(f"feature {name!r}: a negative history takes the item column {source.item_column!r} or a "
                          f"column of preprocess.sampled_item_columns {list(config.sampled_item_columns)}, not "
                          f"{column!r}")
    if name.startswith(NEXT_PREFIX) and source.is_event_log:
        column = name[len(NEXT_PREFIX):]
        if column in _history_columns(config, source):
            found = columns[column]
            if not feature.is_sequence or found != feature.dtype:
                raise SchemaError(f"feature {name!r} is the next {found} value after each history event of the source "
                                  f"{source.name}, but the schema says {type(feature).__name__} {feature.dtype} "
                                  f"{'list' if feature.is_sequence else 'scalar'}")
            return Output(name, feature.dtype, True, "next", column)
    history_columns = _history_columns(config, source) if source.is_event_log else ()
    options = (sorted(columns) + [HISTORY_PREFIX + c for c in history_columns]
               + [NEXT_PREFIX + c for c in history_columns] + sorted(rules))
    raise SchemaError(f"feature {name!r}: the source {source.name} has no such column; available: {options} "
                      "(histories and next_<column> label sequences come from preprocess.history_columns, labels "
                      "from preprocess.labels)")


def _history_columns(config: PreprocessConfig, source: Source) -> tuple:
    return config.history_columns or (source.item_column, source.time_column)


def plan_preprocessing(config: PreprocessConfig, features_config, output_dir: str,
                       user_histories=None) -> tuple[Plan, list]:
    """Checks the config against the source and the schema before anything runs; returns the plan and the
    source files. Every error names the setting, feature or column at fault. ``user_histories``: the
    config's ``data.user_histories`` block, whose sequence features the input pipeline cuts from the store
    (``preprocess.user_history_columns``) instead of reading them from the rows."""
    source = get_source(config.source)
    if config.output_format not in FORMATS:
        raise ValueError(f"preprocess.output_format {config.output_format!r} is not one of {sorted(FORMATS)}")
    if not 0.0 <= config.eval_fraction < 1.0:
        raise ValueError(f"preprocess.eval_fraction must lie in [0, 1), got {config.eval_fraction}")
    if config.num_shards < 1 or config.eval_shards < 1 or config.history_len < 1:
        raise ValueError("preprocess.num_shards, eval_shards and history_len must be positive")
    allowed = EVENT_SPLITS if source.is_event_log else SAMPLE_SPLITS
    if config.split not in allowed:
        kind = "an event log" if source.is_event_log else "a sample table"
        raise ValueError(f"preprocess.split {config.split!r}: {source.name} is {kind}; use one of {list(allowed)}")
    if config.split == "chronological" and not source.time_column:
        raise ValueError(f"preprocess.split 'chronological': {source.name} has no time column")
    if config.examples_per_user not in EXAMPLES_PER_USER:
        raise ValueError(f"preprocess.examples_per_user {config.examples_per_user!r} is not one of "
                         f"{list(EXAMPLES_PER_USER)}")
    if config.examples_per_user == "last" and (config.split != "leave_one_out" or not source.is_event_log):
        raise ValueError("preprocess.examples_per_user 'last' needs an event log with split 'leave_one_out' (the "
                         f"last training event and the held-out one of each user); got {source.name} with split "
                         f"{config.split!r}")
    files = source.files(config.input)
    columns = source.columns_for(files)
    if source.is_event_log:
        for column in _history_columns(config, source):
            if columns.get(column) not in ("int64", "string", "float32"):
                raise ValueError(f"preprocess.history_columns: {column!r} is not an int64, float32 or string column of "
                                 f"{source.name} (columns: {columns})")
    rules = {name: parse_label_rule(name, rule, columns) for name, rule in config.labels.items()}
    keep_rows = _keep_rows_rule(config, columns) if config.keep_rows else None
    clashes = sorted(set(rules) & set(columns))
    if clashes:
        raise ValueError(f"preprocess.labels {clashes} would hide source columns of the same name")
    schema, to_build, bucketized = _schema_for_planning(features_config, output_dir)
    user_history_outputs, filled = _user_history_outputs(config, source, columns, schema, user_histories)
    own_vocabulary = sorted(set(filled) & set(to_build))
    if own_vocabulary:
        raise ValueError(f"features {own_vocabulary} are cut from the per-user store at input time, so no written "
                         "rows hold their values to build a vocabulary from; let them share the table of a written "
                         "feature (shares=...)")
    outputs = [_output_for(f, source, columns, config, rules) for f in schema.inputs + schema.labels
               if f.name not in filled and f.source == f.name]
    written = {o.name for o in outputs}
    # A feature reading another column (an age band of the dense age) writes that column once, as it reads it.
    for feature in schema.inputs + schema.labels:
        if feature.name not in filled and feature.source not in written:
            outputs.append(_output_for(dataclasses.replace(feature, name=feature.source), source, columns, config,
                                       rules))
            written.add(feature.source)
    # The user and time of an event go with it whether or not a feature reads them: the user column is each
    # row's key for batch scoring (tfrecsys-score --key_feature; a next-item row is one user's history).
    for column in (source.user_column, source.time_column):
        if column and column not in written:
            outputs.append(Output(column, columns[column], False, "column", column))
            written.add(column)
    if source.is_event_log:
        for column in _history_columns(config, source):
            if HISTORY_PREFIX + column not in written:
                outputs.append(Output(HISTORY_PREFIX + column, columns[column], True, "history", column))
    unknown = sorted(set(config.max_buckets) - bucketized)
    if unknown:
        raise ValueError(f"preprocess.max_buckets {unknown}: only features whose boundaries file preprocessing "
                         f"writes (boundaries under {os.path.join(output_dir, VOCABULARY_DIR)}) take a bucket count; "
                         f"those are {sorted(bucketized)}")
    too_few = {name: n for name, n in config.max_buckets.items() if int(n) < 2}
    if too_few:
        raise ValueError(f"preprocess.max_buckets {too_few}: a feature needs at least 2 buckets")
    unknown = sorted(set(config.min_counts) - (set(to_build) - bucketized))
    if unknown:
        raise ValueError(f"preprocess.min_counts {unknown}: only features whose vocabulary preprocessing builds "
                         f"(vocabulary under {os.path.join(output_dir, VOCABULARY_DIR)}) take a min count; those are "
                         f"{sorted(to_build)}")
    vocabularies = {name: int(config.min_counts.get(name, 1)) for name in to_build}
    # A negative history draws its items from every item of the log, so some exist only in eval events. Left out
    # of the vocabulary they would all share the OOV row, which training then sees only as a sampled negative
    # behaviour: every unseen item at eval (14% of Taobao's held-out positives) scored as one (bench/RESULTS.md).
    vocabulary_sources = {name: (schema[name].source, *(o.name for o in outputs if o.origin == "negative_history"
                                                        and schema[o.name].table == name)) for name in to_build}
    hashed = {f.name: f.vocab.hash_buckets for f in schema.of_kind(IdFeature) + schema.of_kind(SequenceFeature)
              if f.vocab is not None and f.vocab.hash_buckets is not None and f.name not in filled}
    if config.split == "files":
        splits = tuple(sorted({f.split for f in files if f.split}))
        if not splits or any(f.split is None for f in files):
            raise ValueError(f"preprocess.split 'files': {source.name}'s files at {config.input} do not all carry a "
                             "split; use split='random' or 'chronological'")
    else:
        splits = (TRAIN, EVAL)
    features_json = schema.to_json()
    for name in to_build:
        features_json[name]["boundaries" if name in bucketized else "vocabulary"] = os.path.join(VOCABULARY_DIR,
                                                                                                  f"{name}.txt")
    candidate_outputs, sequence_outputs = _corpus_and_sequence_outputs(config, source, columns, outputs)
    item_columns = _check_negatives(config, source, columns, outputs, rules)
    plan = Plan(config, source.name, source.is_event_log, source.user_column, source.item_column, source.time_column,
                tuple(outputs), vocabularies, hashed, splits, features_json, candidate_outputs, sequence_outputs,
                keep_rows, item_columns, vocabulary_sources, user_history_outputs,
                {name: int(config.max_buckets.get(name, DEFAULT_MAX_BUCKETS)) for name in sorted(bucketized)})
    return plan, files


def _user_history_outputs(config: PreprocessConfig, source: Source, columns: dict, schema: FeatureSchema,
                          user_histories) -> tuple:
    """``(outputs of the per-user store: user, time, preprocess.user_history_columns; {feature: column} the
    input pipeline cuts from it)``, checked against the source and against ``config.data.user_histories``
    (``user_histories``, None when the config reads no store); errors name the setting at fault."""
    store_columns = config.user_history_columns
    block = dict(user_histories or {})
    if block and not store_columns:
        raise ValueError("config.data.user_histories reads a per-user store; set preprocess.user_history_columns "
                         "(the event columns it holds, e.g. ('item_id', 'category_id')) so that preprocessing "
                         "writes it")
    if not store_columns:
        return (), {}
    if not source.is_event_log:
        raise ValueError(f"preprocess.user_history_columns: {source.name} is a sample table; a per-user store "
                         "holds the events of an event log (a user, an item and a time per row)")
    user, time = source.user_column, source.time_column
    if columns.get(time) != "int64":
        raise ValueError(f"preprocess.user_history_columns: the time column {time!r} of {source.name} is "
                         f"{columns.get(time)}; the store needs int64 times (exact times decide what is history)")
    for column in store_columns:
        if column in (user, time):
            role = "user" if column == user else "time"
            raise ValueError(f"preprocess.user_history_columns: {column!r} is the {role} column, which every store "
                             "holds; name only event columns")
        if columns.get(column) not in ("int64", "float32", "string"):
            raise ValueError(f"preprocess.user_history_columns: {column!r} is not an int64, float32 or string column "
                             f"of {source.name} (columns: {columns})")
    outputs = tuple(Output(name, columns[name], False, "column", name) for name in (user, time, *store_columns))
    if not block:
        return outputs, {}
    setting = "config.data.user_histories"
    if block.get("file") != USER_HISTORIES_FILES:
        raise ValueError(f"{setting}.file is {block.get('file')!r}; preprocessing writes the store as "
                         f"{USER_HISTORIES_PREFIX}-SSSSS-of-NNNNN.parquet: set it to {USER_HISTORIES_FILES!r}")
    if (block.get("user_feature"), block.get("time_feature")) != (user, time):
        raise ValueError(f"{setting}: user_feature {block.get('user_feature')!r} and time_feature "
                         f"{block.get('time_feature')!r} must be the source's user and time columns {user!r} and "
                         f"{time!r}, by which preprocessing keys and orders the store")
    filled = dict(block.get("sequences") or {})
    for feature, column in filled.items():
        if column not in (time, *store_columns):
            raise ValueError(f"{setting}.sequences: feature {feature!r} is cut from column {column!r}, which the "
                             f"store does not hold; preprocess.user_history_columns is {list(store_columns)} (and "
                             f"the time column {time!r})")
        if not any(f.name == feature and isinstance(f, SequenceFeature) for f in schema.features):
            raise ValueError(f"{setting}.sequences: {feature!r} is not a sequence feature of config.features")
    return outputs, filled


def _keep_rows_rule(config: PreprocessConfig, columns: dict):
    try:
        return parse_label_rule("keep_rows", config.keep_rows, columns)
    except ValueError as error:
        reason = str(error).split(": ", 1)[-1]
        raise ValueError(f"preprocess.keep_rows = {config.keep_rows!r}: {reason}") from None


def _check_negatives(config: PreprocessConfig, source: Source, columns: dict, outputs: list, rules: dict) -> tuple:
    """The item columns sampled negatives replace (empty when nothing is sampled); errors name the setting."""
    negative_histories = [o.name for o in outputs if o.origin == "negative_history"]
    if config.negatives_per_event < 0:
        raise ValueError(f"preprocess.negatives_per_event must be 0 or more, got {config.negatives_per_event}")
    if not config.negatives_per_event and not negative_histories:
        if config.negative_label:
            raise ValueError(f"preprocess.negative_label {config.negative_label!r} is set but nothing is sampled; "
                             "set preprocess.negatives_per_event")
        return ()
    if not source.is_event_log:
        raise ValueError(f"preprocess.negatives_per_event: {source.name} is a sample table; negatives are sampled "
                         "for the events of an event log")
    if config.negatives_per_event:
        if not any(o.origin == "sampled_label" for o in outputs):
            raise ValueError(f"preprocess.negative_label {config.negative_label!r} is not a label feature of the "
                             "config: name the label that is 1 for events and 0 for sampled items (e.g. "
                             "negative_label='click' and config.features.click = dict(kind='label'))")
        if rules:
            raise ValueError(f"preprocess.labels {sorted(rules)} cannot be written with sampled negatives: a rule "
                             "describes the real event, not the sampled item; negative_label is the label")
    unknown = sorted(set(config.sampled_item_columns) - set(columns))
    if unknown:
        raise ValueError(f"preprocess.sampled_item_columns: the source {source.name} has no columns {unknown}; it has "
                         f"{sorted(columns)}")
    return (source.item_column, *dict.fromkeys(c for c in config.sampled_item_columns if c != source.item_column))


def _corpus_and_sequence_outputs(config: PreprocessConfig, source: Source, columns: dict, outputs: list) -> tuple:
    """The columns of the candidates file and of the per-user sequences (see PreprocessConfig), each taking
    the written dtype where the column is also a feature; errors name the setting and the column."""
    settings = {"candidate_columns": config.candidate_columns, "sequence_columns": config.sequence_columns,
                "frequency_label": config.frequency_label}
    asked = sorted(name for name, value in settings.items() if value)
    if asked and not source.is_event_log:
        raise ValueError(f"preprocess.{asked[0]}: {source.name} is a sample table; candidates, item frequencies "
                         "and per-user sequences come from event logs (a user, an item and a time per row)")
    labels = {o.name for o in outputs if o.origin == "label"}
    if config.frequency_label and config.frequency_label not in labels:
        raise ValueError(f"preprocess.frequency_label {config.frequency_label!r} is not a written label rule; "
                         f"the written label rules (preprocess.labels that are features) are {sorted(labels)}")
    written = {o.name: o for o in outputs if o.origin == "column"}

    def column_output(setting: str, column: str, scalar: bool) -> Output:
        if column in written:
            output = written[column]
        elif column in columns:
            dtype = columns[column]
            is_list = dtype.endswith("_list")
            output = Output(column, dtype[:-len("_list")] if is_list else dtype, is_list, "column", column)
        else:
            raise ValueError(f"preprocess.{setting}: the source {source.name} has no column {column!r}; it has "
                             f"{sorted(columns)}")
        if scalar and output.is_list:
            raise ValueError(f"preprocess.{setting}: column {column!r} is a list; a sequence holds one value per "
                             "event")
        return output

    candidates = ()
    if config.candidate_columns:
        names = dict.fromkeys([source.item_column, *config.candidate_columns])
        candidates = tuple(column_output("candidate_columns", name, scalar=False) for name in names)
    sequences = ()
    if config.sequence_columns:
        if SEQUENCE_EVAL_MARK in config.sequence_columns:
            raise ValueError(f"preprocess.sequence_columns: {SEQUENCE_EVAL_MARK!r} is the eval mark "
                             "preprocessing adds; rename that column")
        names = dict.fromkeys([source.user_column, source.time_column, *config.sequence_columns])
        sequences = tuple(column_output("sequence_columns", name, scalar=True) for name in names)
    return candidates, sequences


# Per-record steps (run on the workers) ------------------------------------------------------------------------


class ParseRows(beam.DoFn):
    """Parses and joins a file's lines; bad rows go to the ``dead_letter`` output with the reason. ``check``:
    a record → why an output cannot hold it (None when it can), e.g. ``user_history_problem``."""

    def __init__(self, source_file, make_joiner, input_path: str, split: Optional[str], check=None):
        self.source_file, self.make_joiner, self.input_path, self.split = source_file, make_joiner, input_path, split
        self.check = check
        self.joiner = None
        self.bad_rows = beam.metrics.Metrics.counter("tfrecsys.preprocess", "dead_letter_rows")

    def setup(self):
        if self.make_joiner is not None:
            self.joiner = self.make_joiner(self.input_path)

    def process(self, line: bytes):
        try:
            text = line.rstrip(b"\r").decode(self.source_file.encoding)
        except UnicodeDecodeError as error:
            self.bad_rows.inc()
            yield beam.pvalue.TaggedOutput("dead_letter", {"path": self.source_file.path, "text": repr(line),
                                                           "reason": f"not valid {self.source_file.encoding}: {error}"})
            return
        if not text.strip():
            return
        try:
            records = self.source_file.parse(text)
            if self.joiner is not None:
                records = [self.joiner(record) for record in records]
            problem = next(filter(None, map(self.check, records)), None) if self.check is not None else None
            if problem is not None:
                raise RowError(problem)
        except RowError as error:
            self.bad_rows.inc()
            yield beam.pvalue.TaggedOutput("dead_letter", {"path": self.source_file.path, "reason": str(error),
                                                           "text": text})
            return
        for record in records:
            yield self.split, record, text


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, default=list, ensure_ascii=False)


def _value(output: Output, record: dict, history: Sequence[dict], negative_history: Sequence[dict] = (),
           sampled: bool = False):
    if output.origin == "label":
        return output.key(record)
    if output.origin == "history":
        return [event[output.key] for event in history]
    if output.origin == "negative_history":
        return [event[output.key] for event in negative_history]
    if output.origin == "sampled_label":
        return 0.0 if sampled else 1.0
    if output.origin == "next":
        # The value that follows each history event: the next history event's, the example's own for the last.
        return [event[output.key] for event in history[1:]] + [record[output.key]] if history else []
    value = record[output.key]
    if output.dtype == "float32" and not output.is_list:
        value = float(value)
        if math.isnan(value):
            value = output.default
    return value


def make_example(plan: Plan, record: dict, history: Sequence[dict] = (), negative_history: Sequence[dict] = (),
                 sampled: bool = False) -> dict:
    """The written columns of one example; ``sampled``: ``record`` is a sampled negative of an event."""
    return {output.name: _value(output, record, history, negative_history, sampled) for output in plan.outputs}


def _time_ordered(plan: Plan, events) -> list:
    """A user's events by (time, canonical record): the same order for histories and sequences on any runner."""
    return sorted(events, key=lambda r: (r[plan.time_column], _canonical(r)))


def _event_split(plan: Plan, index: int, count: int, time, cutoff) -> Optional[str]:
    """The split of a user's ``index``-th of ``count`` events; None for a chronological split without its
    cutoff yet (set once the global cutoff is known)."""
    if plan.config.split == "leave_one_out":
        return EVAL if index == count - 1 and count > 1 else TRAIN
    if cutoff is None:
        return None
    return EVAL if time >= cutoff else TRAIN


def user_examples(plan: Plan, user_events, last_only: bool = False, catalogue=None) -> Iterable:
    """One (split, sort key, example) per event of a user, with its history (``tfrecsys.data.histories``:
    the user's events strictly before it, oldest first, the most recent ``history_len``); with ``last_only``
    (leave-one-out) only for the last training event and the held-out one, each when it has a history.
    With ``catalogue`` (``item_catalogue``), each event's example is followed by its sampled negatives and
    every example carries the negative history (see PreprocessConfig)."""
    user, events = user_events
    time_column = plan.time_column
    events = _time_ordered(plan, events)
    times = np.asarray([event[time_column] for event in events])
    histories = history_rows(np.zeros(len(events), np.int64), times, plan.config.history_len)
    if catalogue is not None:
        sampled, negative_histories = sampled_negatives(plan, user, events, histories, catalogue)
    for index, event in enumerate(events):
        if last_only and (index < len(events) - 2 or len(histories[index]) == 0):
            continue
        history = [events[row] for row in histories[index]]
        split = _event_split(plan, index, len(events), event[time_column], None)
        if catalogue is None:
            yield split, (event[time_column], str(user), index), make_example(plan, event, history)
            continue
        negative_history = negative_histories[index]
        yield split, (event[time_column], str(user), index, 0), make_example(plan, event, history, negative_history)
        for draw, row in enumerate(sampled[index], start=1):
            yield split, (event[time_column], str(user), index, draw), make_example(
                plan, row, history, negative_history, sampled=True)


def item_catalogue(plan: Plan, item_values) -> tuple:
    """``(items [n], rows)``: every distinct item of the kept rows, sorted, and per item ``{column: value}``
    of ``plan.item_columns`` (an item whose columns differ between events keeps its first value set in sorted
    order, so the catalogue is the same on any runner). ``item_values``: ``(item, JSON of the other columns)``
    pairs."""
    rows = {}
    for item, values in sorted(item_values):
        rows.setdefault(item, dict(zip(plan.item_columns, [item, *json.loads(values)])))
    return np.asarray(list(rows)), list(rows.values())


def _item_values(plan: Plan, record: dict) -> tuple:
    return record[plan.item_column], json.dumps([record[c] for c in plan.item_columns[1:]], ensure_ascii=False)


def sampled_negatives(plan: Plan, user, events: Sequence[dict], histories: Sequence, catalogue: tuple) -> tuple:
    """``(sampled rows, negative histories)`` of a user's time-ordered ``events``: per event, its
    ``negatives_per_event`` copies whose item columns are those of catalogue items other than the event's
    item; and per event, for each position of its history (``histories``, rows of ``events``), the item
    columns of a catalogue item other than the item there. ``sample_other_items``, seeded by ``seed`` and the
    user."""
    items, rows = catalogue
    rng = np.random.default_rng([plan.config.seed, _stable_hash(repr(user))])
    item = plan.item_column
    draws = sample_other_items(items, [event[item] for event in events], rng, plan.config.negatives_per_event)
    sampled = [[{**event, **rows[draw]} for draw in event_draws] for event, event_draws in zip(events, draws.tolist())]
    negative_histories = [[rows[draw] for draw in sample_other_items(items, [events[row][item] for row in history],
                                                                      rng)[:, 0].tolist()] for history in histories]
    return sampled, negative_histories


def user_history_problem(plan: Plan, record: dict) -> Optional[str]:
    """Why the per-user store cannot hold ``record``'s event (its user, time and stored columns), or None."""
    for output in plan.user_history_outputs:
        value = record.get(output.name)
        kind = {"int64": "an int64", "float32": "a number", "string": "a string"}[output.dtype]
        if output.dtype == "int64":
            fits = (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                    and _INT64_RANGE[0] <= value <= _INT64_RANGE[1])
        elif output.dtype == "float32":
            fits = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        else:
            fits = isinstance(value, str)
        if not fits:
            return (f"column {output.name!r} is {value!r}, not {kind}: the per-user history store "
                    "(preprocess.user_history_columns) cannot hold this event")
    return None


def user_history_events(plan: Plan, user_events) -> tuple:
    """``(shard, (user, {column: [values]}))``: every event of a user once, the columns of the per-user store
    but the user's (``write_user_histories`` orders them by time)."""
    user, events = user_events
    events = list(events)
    values = {output.name: [event[output.name] for event in events] for output in plan.user_history_outputs[1:]}
    return _stable_hash(repr(user)) % plan.config.num_shards, (user, values)


def user_sequence(plan: Plan, user_events, cutoff=None) -> tuple:
    """``(shard, (user, serialized example))``: all of a user's events once, oldest first, with the
    ``in_eval`` mark of the split their examples are in."""
    user, events = user_events
    events = _time_ordered(plan, events)
    user_output, *event_outputs = plan.sequence_outputs
    features = {user_output.name: _feature(_value(user_output, events[0], ()), user_output.dtype, False)}
    for output in event_outputs:
        features[output.name] = _feature([_value(output, event, ()) for event in events], output.dtype, True)
    marks = [int(_event_split(plan, index, len(events), event[plan.time_column], cutoff) == EVAL)
             for index, event in enumerate(events)]
    features[SEQUENCE_EVAL_MARK] = _feature(marks, "int64", True)
    example = tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)
    return _stable_hash(repr(user)) % plan.config.num_shards, (user, example)


def sample_example(plan: Plan, element) -> tuple:
    """(split, sort key, example) of a sample-table row; a random split uses a seeded hash of the row."""
    split, record, text = element
    if plan.config.split == "random":
        share = _stable_hash(f"{plan.config.seed}:{text}") / 2.0 ** 64
        split = EVAL if share < plan.config.eval_fraction else TRAIN
    elif plan.config.split == "chronological":
        split = None
    time = record[plan.time_column] if plan.time_column else 0
    return split, (time, _stable_hash(text), text), make_example(plan, record)


class TimeCutoff(beam.CombineFn):
    """The earliest time T with at most ``eval_fraction`` of all events at or after T (events sharing a
    second stay in one split); exact, from a count per distinct time."""

    def __init__(self, eval_fraction: float):
        self.eval_fraction = eval_fraction

    def create_accumulator(self):
        return {}

    def add_input(self, counts, time):
        counts[time] = counts.get(time, 0) + 1
        return counts

    def merge_accumulators(self, accumulators):
        merged = {}
        for counts in accumulators:
            for time, count in counts.items():
                merged[time] = merged.get(time, 0) + count
        return merged

    def extract_output(self, counts):
        if not counts:
            return 0
        allowed = self.eval_fraction * sum(counts.values())
        cutoff, at_or_after = max(counts) + 1, 0
        for time in sorted(counts, reverse=True):
            at_or_after += counts[time]
            if at_or_after > allowed:
                break
            cutoff = time
        return cutoff


def _assign_time_split(element, cutoff):
    split, key, example = element
    return (EVAL if key[0] >= cutoff else TRAIN), key, example


# Deterministic writing ---------------------------------------------------------------------------------------


def _feature(value, dtype: str, is_list: bool) -> tf.train.Feature:
    values = value if is_list else [value]
    if dtype == "int64":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    if dtype == "float32":
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode("utf-8") for v in values]))


def serialize(plan: Plan, example: dict) -> bytes:
    features = {o.name: _feature(example[o.name], o.dtype, o.is_list) for o in plan.outputs}
    # deterministic=True orders the feature map, so equal examples give equal bytes in every process.
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)


def shard_path(output_dir: str, split: str, index: int, count: int, output_format: str) -> str:
    return os.path.join(output_dir, f"{split}-{index:05d}-of-{count:05d}{FORMATS[output_format]}")


def _atomic_write(path: str, write) -> None:
    """``write(staging_path)`` then rename: a reader never sees half a file, and a retried bundle rewrites
    the same bytes."""
    staging = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        write(staging)
        tf.io.gfile.rename(staging, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.remove(staging)


def _columns_of(plan: Plan, examples: list) -> dict:
    columns = {}
    for output in plan.outputs:
        values = [example[output.name] for example in examples]
        if output.is_list:
            dtype = np.int64 if output.dtype == "int64" else object
            columns[output.name] = [np.asarray(v, dtype) for v in values]
        elif output.dtype == "string":
            columns[output.name] = [str(v) for v in values]
        else:
            columns[output.name] = np.asarray(values, np.int64 if output.dtype == "int64" else np.float32)
    return columns


class WriteShard(beam.DoFn):
    """Writes one shard in a fixed order, so the file is the same whatever order its examples came in: sorted
    by key (user, time), or for training shards with ``train_order="shuffled"`` in a seeded pseudo-random order
    of the keys. A training file that holds each user's rows together would make every small shuffle window
    (the first, small windows of ``make_dataset``; a small ``shuffle_buffer``) a batch of few users."""

    def __init__(self, plan: Plan, output_dir: str):
        self.plan, self.output_dir = plan, output_dir

    def process(self, element):
        (split, index), keyed = element
        if split == TRAIN and self.plan.config.train_order == "shuffled":
            seed = self.plan.config.seed
            rows = sorted(keyed, key=lambda pair: (_stable_hash(f"{seed}:{pair[0]!r}"), pair[0]))
        else:
            rows = sorted(keyed, key=lambda pair: pair[0])
        path = shard_path(self.output_dir, split, index, self.plan.shards(split), self.plan.config.output_format)
        if self.plan.config.output_format == "parquet":
            columns = _columns_of(self.plan, [example for _, example in rows])
            types = {o.name: parquet.arrow_type(o.dtype, o.is_list) for o in self.plan.outputs}
            _atomic_write(path, lambda staging: parquet.write_parquet(columns, staging, types))
        else:
            def write(staging):
                with tf.io.TFRecordWriter(staging) as writer:
                    for _, example in rows:
                        writer.write(serialize(self.plan, example))
            _atomic_write(path, write)
        yield split, len(rows)


def _write_lines(path: str, lines: Iterable[str]) -> None:
    def write(staging):
        with tf.io.gfile.GFile(staging, "w") as f:
            f.write("".join(lines))
    _atomic_write(path, write)


def _write_vocabulary(element, output_dir: str, bucketized: dict):
    """``(feature, [(value, count), ...])`` → the vocabulary file, most frequent first, ties by value; for a
    ``bucketized`` feature the file of its bucket boundaries instead. Returns the feature and its row count."""
    feature, entries = element
    if feature in bucketized:
        boundaries = equal_frequency_boundaries([value for value, _ in entries], bucketized[feature],
                                                counts=[count for _, count in entries])
        _write_lines(vocabulary_path(output_dir, feature), (f"{b!r}\n" for b in boundaries))
        return feature, len(boundaries) + 1
    entries = sorted(entries, key=lambda e: (-e[1], str(e[0])))
    _write_lines(vocabulary_path(output_dir, feature), (f"{value}\n" for value, _ in entries))
    return feature, len(entries)


def sequence_path(output_dir: str, index: int, count: int) -> str:
    return os.path.join(output_dir, f"{SEQUENCES_PREFIX}-{index:05d}-of-{count:05d}.tfrecord")


def _write_sequence_shard(element, output_dir: str, num_shards: int) -> int:
    """One shard of per-user sequences, sorted by user; returns how many users it holds."""
    index, users = element
    users = sorted(users, key=lambda pair: pair[0])

    def write(staging):
        with tf.io.TFRecordWriter(staging) as writer:
            for _, example in users:
                writer.write(example)
    _atomic_write(sequence_path(output_dir, index, num_shards), write)
    return len(users)


def user_history_path(output_dir: str, index: int, count: int) -> str:
    return os.path.join(output_dir, f"{USER_HISTORIES_PREFIX}-{index:05d}-of-{count:05d}.parquet")


_NUMPY_DTYPES = {"int64": np.int64, "float32": np.float32, "string": object}


def _write_user_history_shard(element, plan: Plan, output_dir: str) -> dict:
    """One shard of the per-user store (``write_user_histories``); returns its file name and
    ``{users, events, longest}``, or ``{}`` for a shard without users, which is not written (a store file
    holds at least one event)."""
    index, users = element
    if not users:
        return {}
    users = sorted(users, key=lambda pair: pair[0])
    user_output, time_output, *event_outputs = plan.user_history_outputs
    counts = [len(values[time_output.name]) for _, values in users]
    user_ids = np.repeat(np.asarray([user for user, _ in users], _NUMPY_DTYPES[user_output.dtype]), counts)
    times = np.asarray([t for _, values in users for t in values[time_output.name]], np.int64)
    columns = {o.name: np.asarray([v for _, values in users for v in values[o.name]], _NUMPY_DTYPES[o.dtype])
               for o in event_outputs}
    path = user_history_path(output_dir, index, plan.config.num_shards)
    summary = {}
    _atomic_write(path, lambda staging: summary.update(write_user_histories(
        staging, user_ids, times, columns, user_column=user_output.name, time_column=time_output.name)))
    return {"file": os.path.basename(path), **summary}


def _candidate_values(plan: Plan, record: dict) -> tuple:
    """``(item, JSON of the item's other candidate columns)``, hashable for Distinct."""
    values = [_value(output, record, ()) for output in plan.candidate_outputs[1:]]
    return record[plan.item_column], json.dumps(values, sort_keys=True, ensure_ascii=False)


def _write_candidates(element, plan: Plan, output_dir: str) -> int:
    """The corpus file, one example per item sorted by item; an item whose candidate columns differ between
    its events is an error naming the item and the column (a candidate tower needs one value per item)."""
    _, pairs = element
    corpus = {}
    for item, values in sorted(pairs):
        values = json.loads(values)
        if item in corpus:
            column = next(o.name for o, a, b in zip(plan.candidate_outputs[1:], corpus[item], values)
                          if json.dumps(a) != json.dumps(b))  # as text: NaN equals NaN
            raise ValueError(f"preprocess.candidate_columns: column {column!r} is not an item column: item "
                             f"{item!r} has more than one value ({corpus[item]} and {values})")
        corpus[item] = values
    item_output = plan.candidate_outputs[0]

    def write(staging):
        with tf.io.TFRecordWriter(staging) as writer:
            for item, values in sorted(corpus.items()):
                features = {item_output.name: _feature(item, item_output.dtype, False)}
                for output, value in zip(plan.candidate_outputs[1:], values):
                    features[output.name] = _feature(value, output.dtype, output.is_list)
                writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(
                    deterministic=True))
    _atomic_write(os.path.join(output_dir, CANDIDATES_FILE), write)
    return len(corpus)


def _hash_buckets(batch: list, hashed: dict) -> list:
    """``[(feature, value)]`` → ``[(feature, bucket)]`` with the model's own hashing (Keras ``Hashing``)."""
    out = []
    by_feature = {}
    for feature, value in batch:
        by_feature.setdefault(feature, []).append(value)
    for feature, values in by_feature.items():
        layer = tf.keras.layers.Hashing(num_bins=hashed[feature])
        buckets = layer(tf.constant(values)).numpy().reshape(-1)
        out.extend((feature, int(b)) for b in buckets)
    return out


class LostElementsError(RuntimeError):
    """The runner handed a step fewer (or more) elements than went into it: the output is incomplete, so no
    metadata.json is written and nothing downstream reads it as finished."""


def check_nothing_lost(counts: Sequence[tuple]) -> None:
    """Raises LostElementsError naming every ``(what, went_in, came_out)`` whose counts differ.

    Why: a GroupByKey on a faulty runner can drop elements without any error (apache-beam 2.77's
    multi-threaded DirectRunner lost 223 of 12,000 events once here); every count below is of the same
    elements on either side of a grouping, so they must be equal."""
    lost = [f"{what}: {came_out:,} came out of {went_in:,} that went in" for what, went_in, came_out in counts
            if went_in != came_out]
    if lost:
        raise LostElementsError(
            "the Beam runner lost elements, so the output is incomplete and metadata.json was not written: "
            + "; ".join(lost) + ". Rerun; on the DirectRunner use the default in-process mode or "
            "--direct_running_mode=multi_processing, not multi_threading.")


def _write_metadata(_, plan: Plan, output_dir: str, rows: dict, dead_letter_rows: int, records: int,
                    vocabulary_sizes: dict, distinct: dict, occupied: dict, cutoff: Optional[int],
                    examples: int, grouped_events: Optional[int] = None, num_candidates: Optional[int] = None,
                    sequence_users: Optional[list] = None, grouped_users: Optional[int] = None,
                    user_history_shards: Optional[list] = None):
    counts = [("examples written to the split shards", examples, sum(rows.values()))]
    if grouped_events is not None:
        counts.append(("events grouped by user", records, grouped_events))
    if sequence_users is not None:
        counts.append(("users written to the per-user sequences", grouped_users, sum(sequence_users)))
    if user_history_shards is not None:
        counts.append(("events written to the per-user store", records,
                       sum(shard.get("events", 0) for shard in user_history_shards)))
    check_nothing_lost(counts)
    split_info = {split: {"rows": int(rows.get(split, 0)),
                          "files": [os.path.basename(shard_path(output_dir, split, i, plan.shards(split),
                                                                 plan.config.output_format))
                                    for i in range(plan.shards(split))]}
                  for split in plan.splits}
    metadata = {
        "source": plan.source_name,
        "preprocess": plan.config.to_json(),
        "format": plan.config.output_format,
        "features": plan.features_json,
        "columns": {o.name: (f"{o.dtype}_list" if o.is_list else o.dtype) for o in plan.outputs},
        "splits": split_info,
        "source_rows": int(records),
        "dead_letter_rows": int(dead_letter_rows),
        "dead_letter_file": DEAD_LETTER_FILE,
        "vocabularies": {name: {"file": os.path.join(VOCABULARY_DIR, f"{name}.txt"),
                                "size": int(vocabulary_sizes.get(name, 0)), "min_count": plan.vocabularies[name],
                                **({"max_buckets": plan.bucketized[name]} if name in plan.bucketized else {})}
                         for name in plan.vocabularies},
        "hashing": {name: {"hash_buckets": buckets, "distinct_train_values": int(distinct.get(name, 0)),
                           "occupied_buckets": int(occupied.get(name, 0)),
                           "colliding_values": int(distinct.get(name, 0) - occupied.get(name, 0))}
                    for name, buckets in plan.hashed.items()},
    }
    if plan.is_event_log:
        metadata["item_frequency_file"] = ITEM_FREQUENCY_FILE
        metadata["history"] = {"length": plan.config.history_len,
                               "columns": list(_history_columns_of(plan)),
                               "rule": "the user's events strictly before the example's time, oldest first"}
    if plan.candidate_outputs:
        metadata["candidates_file"] = CANDIDATES_FILE
        metadata["num_candidates"] = int(num_candidates)
        metadata["candidate_columns"] = {o.name: (f"{o.dtype}_list" if o.is_list else o.dtype)
                                         for o in plan.candidate_outputs}
    if plan.config.frequency_label:
        metadata["item_frequency_counts"] = f"training rows with {plan.config.frequency_label} = 1"
    if plan.sequence_outputs:
        user_output, *event_outputs = plan.sequence_outputs
        metadata["sequences"] = {
            "files": [os.path.basename(sequence_path(output_dir, i, plan.config.num_shards))
                      for i in range(plan.config.num_shards)],
            "users": int(sum(sequence_users)),
            "columns": {user_output.name: user_output.dtype,
                        **{o.name: f"{o.dtype}_list" for o in event_outputs}, SEQUENCE_EVAL_MARK: "int64_list"},
            "rule": "every event of the user once, oldest first; in_eval = 1 for the events of the eval split"}
    if plan.user_history_outputs:
        written = sorted((shard for shard in user_history_shards if shard), key=lambda shard: shard["file"])
        user_output, time_output, *event_outputs = plan.user_history_outputs
        metadata["user_histories"] = {
            "files": [shard["file"] for shard in written], "pattern": USER_HISTORIES_FILES,
            "users": sum(shard["users"] for shard in written), "events": sum(shard["events"] for shard in written),
            "longest": max((shard["longest"] for shard in written), default=0),
            "columns": {user_output.name: user_output.dtype,
                        **{o.name: f"{o.dtype}_list" for o in (time_output, *event_outputs)}},
            "rule": "every event of the user once (eval events too), by time; the input pipeline cuts each "
                    "example's histories strictly before its time"}
    if cutoff is not None:
        metadata["eval_from_time"] = int(cutoff)
    _write_lines(os.path.join(output_dir, METADATA_FILE), [json.dumps(metadata, indent=2, sort_keys=True) + "\n"])


def _history_columns_of(plan: Plan) -> tuple:
    return tuple(o.key for o in plan.outputs if o.origin == "history")


def _counts_to_table(element, output_dir: str):
    _, item_counts = element
    write_item_frequency(os.path.join(output_dir, ITEM_FREQUENCY_FILE), dict(item_counts))


def _group_with_every_key(pipeline: beam.Pipeline, pairs, keys: Sequence, label: str):
    """GroupByKey that also yields each of ``keys`` that has no element (with an empty list), so an empty
    shard, vocabulary or dead-letter file is still written. None marks the placeholders."""
    placeholders = pipeline | f"{label}Keys" >> beam.Create([(key, None) for key in keys])
    return ((pairs, placeholders)
            | f"{label}WithEveryKey" >> beam.Flatten()
            | f"{label}Group" >> beam.GroupByKey()
            | f"{label}Values" >> beam.MapTuple(lambda key, values: (key, [v for v in values if v is not None])))


def build_pipeline(pipeline: beam.Pipeline, plan: Plan, files: list, output_dir: str, make_joiner) -> None:
    """Adds the preprocessing transforms to ``pipeline`` (see the module docstring)."""
    config = plan.config
    parsed, dead = [], []
    for index, source_file in enumerate(files):
        # Bytes, decoded by ParseRows with the file's encoding: an undecodable line is a dead letter, not a crash.
        lines = pipeline | f"Read{index}" >> beam.io.ReadFromText(
            source_file.path, skip_header_lines=source_file.skip_header_lines, coder=beam.coders.BytesCoder())
        # A row the per-user store cannot hold is a dead letter, no event of any output.
        check = functools.partial(user_history_problem, plan) if plan.user_history_outputs else None
        parse = ParseRows(source_file, make_joiner, config.input, source_file.split, check)
        results = lines | f"Parse{index}" >> beam.ParDo(parse).with_outputs("dead_letter", main="rows")
        parsed.append(results.rows)
        dead.append(results.dead_letter)
    records = tuple(parsed) | "AllRows" >> beam.Flatten()
    if plan.keep_rows is not None:
        records = records | "KeepRows" >> beam.Filter(lambda element: plan.keep_rows(element[1]) == 1.0)
    dead_letters = tuple(dead) | "AllDeadLetters" >> beam.Flatten()

    catalogue = None
    if plan.item_columns:
        item_values = (records
                       | "ItemAndColumns" >> beam.Map(lambda element: ("catalogue", _item_values(plan, element[1])))
                       | "DistinctItemAndColumns" >> beam.Distinct())
        catalogue = beam.pvalue.AsSingleton(
            _group_with_every_key(pipeline, item_values, ["catalogue"], "Catalogue")
            | "ItemCatalogue" >> beam.MapTuple(lambda _, values: item_catalogue(plan, values)))
    grouped_events = grouped_users = None
    if plan.is_event_log:
        by_user = (records
                   | "ByUser" >> beam.Map(lambda element: (element[1][plan.user_column], element[1]))
                   | "GroupByUser" >> beam.GroupByKey()
                   # A list per user for every consumer below, not the runner's lazy grouped iterable. The
                   # events and users counted on both sides of each grouping are checked before metadata.json
                   # is written (check_nothing_lost): multi-threaded DirectRunner runs lost events here.
                   | "UserEvents" >> beam.MapTuple(lambda user, events: (user, list(events))))
        grouped_events = (by_user | "GroupedEvents" >> beam.Map(lambda user_events: len(user_events[1]))
                          | "SumGroupedEvents" >> beam.CombineGlobally(sum))
        grouped_users = by_user | "CountGroupedUsers" >> beam.combiners.Count.Globally()
        keyed = by_user | "Histories" >> beam.FlatMap(
            lambda user_events, catalogue: user_examples(plan, user_events, catalogue=catalogue), catalogue=catalogue)
    else:
        keyed = records | "Examples" >> beam.Map(lambda element: sample_example(plan, element))
    cutoff = None
    if config.split == "chronological":
        cutoff = (keyed | "Times" >> beam.Map(lambda element: element[1][0])
                  | "Cutoff" >> beam.CombineGlobally(TimeCutoff(config.eval_fraction)))
        keyed = keyed | "TimeSplit" >> beam.Map(_assign_time_split, cutoff=beam.pvalue.AsSingleton(cutoff))

    train = keyed | "Train" >> beam.Filter(lambda element: element[0] == TRAIN)
    vocabulary_sizes = _vocabularies(pipeline, plan, train, output_dir)
    distinct, occupied = _hash_statistics(plan, train)
    num_candidates = sequence_users = None
    if plan.candidate_outputs:
        corpus = (records
                  | "CandidateValues" >> beam.Map(lambda element: _candidate_values(plan, element[1]))
                  | "DistinctCandidates" >> beam.Distinct()
                  | "OneCorpus" >> beam.Map(lambda pair: ("candidates", pair)))
        num_candidates = (_group_with_every_key(pipeline, corpus, ["candidates"], "Candidates")
                          | "WriteCandidates" >> beam.Map(_write_candidates, plan=plan, output_dir=output_dir))
    if plan.sequence_outputs:
        shards = plan.config.num_shards
        sequences = by_user | "UserSequences" >> beam.Map(
            lambda user_events, cutoff: user_sequence(plan, user_events, cutoff),
            cutoff=beam.pvalue.AsSingleton(cutoff) if cutoff is not None else None)
        sequence_users = (_group_with_every_key(pipeline, sequences, list(range(shards)), "Sequences")
                          | "WriteSequences" >> beam.Map(_write_sequence_shard, output_dir=output_dir,
                                                         num_shards=shards))
    user_history_shards = None
    if plan.user_history_outputs:
        stored_users = by_user | "UserHistoryEvents" >> beam.Map(lambda user_events: user_history_events(
            plan, user_events))
        user_history_shards = (
            _group_with_every_key(pipeline, stored_users, list(range(plan.config.num_shards)), "UserHistories")
            | "WriteUserHistories" >> beam.Map(_write_user_history_shard, plan=plan, output_dir=output_dir))
    if plan.is_event_log:
        positives = train
        # Sampled negatives are no interactions: only real events count (unless frequency_label says otherwise).
        frequency_label = plan.config.frequency_label or (plan.config.negatives_per_event and
                                                          plan.config.negative_label)
        if frequency_label:
            positives = train | "Positives" >> beam.Filter(lambda element: element[2][frequency_label] == 1.0)
        counted = positives | "Items" >> beam.Map(lambda element: (element[2][plan.item_column], 1))
        if plan.candidate_outputs:
            # Every corpus item gets a line, 0 when no counted training row has it.
            corpus_items = records | "CorpusItems" >> beam.Map(lambda element: (element[1][plan.item_column], 0))
            counted = (counted, corpus_items) | "CountedAndCorpus" >> beam.Flatten()
        item_counts = (counted
                       | "CountItems" >> beam.CombinePerKey(sum)
                       | "OneTable" >> beam.Map(lambda item_count: ("items", item_count)))
        (_group_with_every_key(pipeline, item_counts, ["items"], "ItemFrequency")
         | "WriteItemFrequency" >> beam.Map(_counts_to_table, output_dir=output_dir))

    if config.examples_per_user == "last":
        keyed = by_user | "LastExamples" >> beam.FlatMap(
            lambda user_events, catalogue: user_examples(plan, user_events, last_only=True, catalogue=catalogue),
            catalogue=catalogue)
    shard_keys = [(split, index) for split in plan.splits for index in range(plan.shards(split))]
    sharded = keyed | "ShardKey" >> beam.Map(lambda element: (
        (element[0], _stable_hash(repr(element[1])) % plan.shards(element[0])), (element[1], element[2])))
    examples = sharded | "CountExamples" >> beam.combiners.Count.Globally()
    written = (_group_with_every_key(pipeline, sharded, shard_keys, "Shards")
               | "WriteShards" >> beam.ParDo(WriteShard(plan, output_dir)))
    rows = written | "RowsPerSplit" >> beam.CombinePerKey(sum)

    dead_lines = dead_letters | "DeadLetterLines" >> beam.Map(
        lambda row: ("dead_letter", json.dumps(row, sort_keys=True, ensure_ascii=False)))
    (_group_with_every_key(pipeline, dead_lines, ["dead_letter"], "DeadLetters")
     | "WriteDeadLetters" >> beam.MapTuple(lambda _, lines: _write_lines(
         os.path.join(output_dir, DEAD_LETTER_FILE), (line + "\n" for line in sorted(lines)))))
    (pipeline | "Once" >> beam.Create([None]) | "WriteMetadata" >> beam.Map(
        _write_metadata, plan=plan, output_dir=output_dir,
        rows=beam.pvalue.AsDict(rows),
        dead_letter_rows=beam.pvalue.AsSingleton(dead_letters | "CountDeadRows" >> beam.combiners.Count.Globally()),
        records=beam.pvalue.AsSingleton(records | "CountRecords" >> beam.combiners.Count.Globally()),
        vocabulary_sizes=beam.pvalue.AsDict(vocabulary_sizes), distinct=beam.pvalue.AsDict(distinct),
        occupied=beam.pvalue.AsDict(occupied),
        cutoff=beam.pvalue.AsSingleton(cutoff) if cutoff is not None else None,
        examples=beam.pvalue.AsSingleton(examples),
        grouped_events=beam.pvalue.AsSingleton(grouped_events) if grouped_events is not None else None,
        grouped_users=beam.pvalue.AsSingleton(grouped_users) if grouped_users is not None else None,
        num_candidates=beam.pvalue.AsSingleton(num_candidates) if num_candidates is not None else None,
        sequence_users=beam.pvalue.AsList(sequence_users) if sequence_users is not None else None,
        user_history_shards=(beam.pvalue.AsList(user_history_shards) if user_history_shards is not None
                             else None)))


def _feature_values(plan: Plan, element, names: Iterable[str]):
    _, _, example = element
    for name in names:
        value = example[name]
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            yield name, item


def _vocabulary_values(plan: Plan, element, names: Iterable[str]):
    """``((feature, value), 1)`` for every value a vocabulary counts: the feature's own and those of the
    features it takes values from (``Plan.vocabulary_sources``)."""
    for name in names:
        for source in plan.vocabulary_sources.get(name, (name,)):
            for _, value in _feature_values(plan, element, (source,)):
                yield (name, value), 1


def _vocabularies(pipeline: beam.Pipeline, plan: Plan, train, output_dir: str):
    names = sorted(plan.vocabularies)
    kept = (train
            | "VocabularyValues" >> beam.FlatMap(lambda element: _vocabulary_values(plan, element, names))
            | "CountValues" >> beam.CombinePerKey(sum)
            | "MinCount" >> beam.Filter(lambda entry: entry[1] >= plan.vocabularies[entry[0][0]])
            | "ByFeature" >> beam.Map(lambda entry: (entry[0][0], (entry[0][1], entry[1]))))
    return (_group_with_every_key(pipeline, kept, names, "Vocabularies")
            | "WriteVocabularies" >> beam.Map(_write_vocabulary, output_dir=output_dir, bucketized=plan.bucketized))


def _hash_statistics(plan: Plan, train):
    names = sorted(plan.hashed)
    distinct_values = (train
                       | "HashedValues" >> beam.FlatMap(lambda element: _feature_values(plan, element, names))
                       | "DistinctValues" >> beam.Distinct())
    distinct = distinct_values | "CountDistinct" >> beam.combiners.Count.PerKey()
    occupied = (distinct_values
                | "BatchForHashing" >> beam.BatchElements(min_batch_size=256, max_batch_size=8192)
                | "Hash" >> beam.FlatMap(_hash_buckets, hashed=plan.hashed)
                | "DistinctBuckets" >> beam.Distinct()
                | "CountBuckets" >> beam.combiners.Count.PerKey())
    return distinct, occupied


# Running ------------------------------------------------------------------------------------------------------


def _clear_previous_output(output_dir: str, overwrite: bool) -> None:
    metadata = os.path.join(output_dir, METADATA_FILE)
    if not tf.io.gfile.exists(metadata):
        return
    if not overwrite:
        raise FileExistsError(f"{output_dir} already holds preprocessed data ({METADATA_FILE}); pass --overwrite "
                              "to replace it")
    with tf.io.gfile.GFile(metadata) as f:
        previous = json.load(f)
    stale = [os.path.join(output_dir, name) for split in previous.get("splits", {}).values() for name in split["files"]]
    stale += [os.path.join(output_dir, name) for name in previous.get("sequences", {}).get("files", [])]
    stale += [os.path.join(output_dir, name) for name in previous.get("user_histories", {}).get("files", [])]
    stale += [os.path.join(output_dir, name) for name in (DEAD_LETTER_FILE, ITEM_FREQUENCY_FILE, CANDIDATES_FILE,
                                                          METADATA_FILE)]
    for path in stale:
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    vocabularies = os.path.join(output_dir, VOCABULARY_DIR)
    if tf.io.gfile.exists(vocabularies):
        tf.io.gfile.rmtree(vocabularies)


def preprocess(config: PreprocessConfig, features_config, output_dir: str,
               pipeline_args: Optional[Sequence[str]] = None, overwrite: bool = False,
               user_histories=None) -> dict:
    """Runs the pipeline and returns the written metadata.

    ``user_histories``: the config's ``data.user_histories`` block, when its sequence features are cut from
    the per-user store this run writes (``preprocess.user_history_columns``) rather than read from the rows.

    ``pipeline_args`` are Beam pipeline options (``["--runner=FlinkRunner", ...]``); DirectRunner when
    none is given. Raises ValueError / SchemaError naming the setting or feature before anything runs,
    FileExistsError when ``output_dir`` already holds output and ``overwrite`` is False, and (wrapped by
    the runner) LostElementsError when the runner dropped elements in a grouping.
    """
    plan, files = plan_preprocessing(config, features_config, output_dir, user_histories)
    options = pipeline_options(pipeline_args)  # refuses a bad runner setting before the old output goes
    _clear_previous_output(output_dir, overwrite)
    tf.io.gfile.makedirs(os.path.join(output_dir, VOCABULARY_DIR))
    source = get_source(config.source)
    with temp_dir_removed(beam.Pipeline(options=options)) as pipeline:
        build_pipeline(pipeline, plan, files, output_dir, source.make_joiner)
        state = pipeline.run().wait_until_finish()
    if state != PipelineState.DONE:
        raise RuntimeError(f"preprocessing pipeline for {config.source} ended in state {state}")
    return read_metadata(output_dir)


def read_metadata(data_dir: str) -> dict:
    """The ``metadata.json`` preprocessing wrote in ``data_dir``."""
    path = os.path.join(data_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} does not exist; run tfrecsys-preprocess first")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def features_from_metadata(data_dir: str) -> dict:
    """The features block preprocessing wrote for, with vocabulary and boundaries files resolved under
    ``data_dir``: what training passes to ``FeatureSchema.from_config``."""
    features = read_metadata(data_dir)["features"]
    for spec in features.values():
        for kind in ("vocabulary", "boundaries"):
            if isinstance(spec.get(kind), str) and not os.path.isabs(spec[kind]):
                spec[kind] = os.path.join(data_dir, spec[kind])
    return features
