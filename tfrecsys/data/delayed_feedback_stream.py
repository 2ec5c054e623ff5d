"""The delayed-feedback training stream: click logs → the rows a streaming CVR trainer sees, in time order, for
each method of ../shared/reference/digest-defuse-and-practice.md (A.2, C.1). An Apache Beam transform.

Input: clicks with ``click_timestamp`` ``t0``, ``conversion_timestamp`` (-1 when none; a conversion after the
attribution window ``w_a`` counts as none, so its delay ``d`` is ∞) and feature columns. Each click emits rows
(``emit_timestamp``, ``label``, ``sample_type``; codes in ``tfrecsys.losses.delayed_feedback``):

=============================  ====================================================================================
method                         rows of a click of the streaming period
=============================  ====================================================================================
``vanilla``                    at ``t0 + w_o``: label ``1{d ≤ w_o}`` (IP or observed negative), nothing later
``oracle``                     at ``t0 + w_o``: the final label ``1{d ≤ w_a}`` (``FINAL_LABEL``)
``fnw``, ``fnc``               at ``t0``: a negative (``w_o = 0``); at ``t0 + d``, ``d ≤ w_a``: a DP duplicate
``es_dfm``, ``defuse``,        at ``t0 + w_o``: IP or observed negative; at ``t0 + d``, ``w_o < d ≤ w_a``: a DP
``bi_defuse``                  duplicate (the fake negative's positive)
``defer``                      the ES-DFM rows, and at ``t0 + w_a`` a duplicate of every IP and real negative with
                               its real label (``ATTRIBUTED_DUPLICATE``)
=============================  ====================================================================================

Methods with auxiliary models (``es_dfm``, ``defer``, ``defuse``) also emit each click at ``t0 + w_a`` as an
``AUXILIARY_*`` row (IP, DP or RN by its final label and delay): the auxiliary models train on data older than
``w_a``, the only data whose labels are final.

Clicks before ``stream_start_timestamp`` are the pretraining period, old data whose labels are final: each is
emitted at ``t0`` as a ``FINAL_LABEL`` row (plain cross-entropy under every method) and, for methods with
auxiliary models, as an ``AUXILIARY_*`` row. Bi-DEFUSE pretrains on its own stream: both its heads learn from
unbiased views. Rows emitted after ``end_timestamp`` have not happened yet and are dropped.

Output (``output_dir``): rows in windows of ``window_seconds`` by emission time (window ``k`` holds
``origin + [k, k+1)·window_seconds``), sorted by ``(emit_timestamp, example_id, sample_type)``, as
``window-<k:05d>-00000-of-00001.tfrecord``; the streaming period's clicks with their final labels, by click
time, as ``clicks-<k:05d>-00000-of-00001.tfrecord`` (what streaming evaluation scores window ``k`` on);
``metadata.json`` with rows per window and per sample type. Training rows never carry the conversion time.

From a click-log file (``tfrecsys-preprocess`` with a ``delayed_feedback_stream`` block, ``SourceStream``): the
Criteo Conversion Logs (``tfrecsys.data.readers.criteo``); missing integer features become 0 and every click
gets ``example_id``, its line order.
"""

import dataclasses
import glob
import json
import os
from typing import Optional

import apache_beam as beam
import numpy as np
import tensorflow as tf

from tfrecsys.beam_runner import pipeline_options, temp_dir_removed
from tfrecsys.data import tfrecord
from tfrecsys.losses.delayed_feedback import (ATTRIBUTED_DUPLICATE, AUXILIARY_DELAYED, AUXILIARY_IMMEDIATE,
                                              AUXILIARY_REAL_NEGATIVE, DELAYED_POSITIVE, FINAL_LABEL,
                                              IMMEDIATE_POSITIVE, OBSERVED_NEGATIVE, SAMPLE_TYPES)

METHODS = ("vanilla", "oracle", "fnw", "fnc", "es_dfm", "defer", "defuse", "bi_defuse")
AUXILIARY_METHODS = ("es_dfm", "defer", "defuse")
STREAM_PREFIX, CLICKS_PREFIX = "window", "clicks"
# What streaming configs put in config.data: training rows, evaluation clicks, and the window of a file.
STREAM_FILES, CLICK_FILES, WINDOW_KEY = "window-*.tfrecord", "clicks-*.tfrecord", r"(?:window|clicks)-(\d+)-"
# Click columns that are future knowledge at emission time: never written to training rows.
FUTURE_COLUMNS = ("conversion_timestamp", "converted", "delay", "converted_in_window")
CHUNK_ROWS = 50_000


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    method: str
    observation_window_seconds: int
    attribution_window_seconds: int
    window_seconds: int
    origin_timestamp: int           # start of window 0
    stream_start_timestamp: int     # first click of the streaming period (earlier clicks: pretraining)
    end_timestamp: Optional[int]    # rows emitted later are dropped; None keeps every row

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"delayed-feedback stream method {self.method!r} is not one of {list(METHODS)}")
        if not 0 < self.observation_window_seconds < self.attribution_window_seconds:
            raise ValueError(f"the observation window ({self.observation_window_seconds} s) must be positive and "
                             f"shorter than the attribution window ({self.attribution_window_seconds} s)")
        if self.window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {self.window_seconds}")

    @property
    def pretrain_windows(self) -> int:
        """Windows before the streaming period starts: trained on, never evaluated."""
        return -(-(self.stream_start_timestamp - self.origin_timestamp) // self.window_seconds)


def settings_for(clicks: dict, method: str, observation_window_seconds: int, attribution_window_seconds: int,
                 window_seconds: int, pretrain_seconds: int, keep_future_rows: bool = False) -> StreamSettings:
    """Settings over a click log: windows from its first click (rounded down to a window), the streaming
    period from ``pretrain_seconds`` after that, the end at its last click (``keep_future_rows``: no end)."""
    timestamps = np.asarray(clicks["click_timestamp"], np.int64)
    origin = int(timestamps.min()) // window_seconds * window_seconds
    return StreamSettings(method, int(observation_window_seconds), int(attribution_window_seconds),
                          int(window_seconds), origin, origin + int(pretrain_seconds),
                          None if keep_future_rows else int(timestamps.max()))


def emit_rows(clicks: dict, settings: StreamSettings) -> dict:
    """The rows ``clicks`` (columns of equal length) emit, unordered: the feature columns plus
    ``emit_timestamp`` (int64), ``label`` (float32) and ``sample_type`` (int64)."""
    t0 = np.asarray(clicks["click_timestamp"], np.int64)
    conversion = np.asarray(clicks["conversion_timestamp"], np.int64)
    w_o, w_a = settings.observation_window_seconds, settings.attribution_window_seconds
    delay = np.where(conversion >= 0, conversion - t0, np.iinfo(np.int64).max)
    converted = delay <= w_a
    immediate = delay <= w_o
    delayed = converted & ~immediate
    pretraining = t0 < settings.stream_start_timestamp
    streaming = ~pretraining
    method = settings.method
    parts = []  # (row mask over clicks, emit timestamps, labels, sample types)

    def add(mask, when, label, kind):
        parts.append((mask, when, label, kind))

    observed_type = np.where(immediate, IMMEDIATE_POSITIVE, OBSERVED_NEGATIVE)
    if method == "bi_defuse":
        streaming = np.ones_like(streaming)
    else:
        add(pretraining, t0, converted, FINAL_LABEL)
    if method == "vanilla":
        add(streaming, t0 + w_o, immediate, observed_type)
    elif method == "oracle":
        add(streaming, t0 + w_o, converted, FINAL_LABEL)
    elif method in ("fnw", "fnc"):
        add(streaming, t0, np.zeros_like(converted), OBSERVED_NEGATIVE)
        add(streaming & converted, conversion, converted, DELAYED_POSITIVE)
    else:  # the ES-DFM pipeline: es_dfm, defer, defuse, bi_defuse
        add(streaming, t0 + w_o, immediate, observed_type)
        add(streaming & delayed, conversion, delayed, DELAYED_POSITIVE)
        if method == "defer":
            add(streaming & ~delayed, t0 + w_a, immediate, ATTRIBUTED_DUPLICATE)
    if method in AUXILIARY_METHODS:
        auxiliary_type = np.where(immediate, AUXILIARY_IMMEDIATE,
                                  np.where(delayed, AUXILIARY_DELAYED, AUXILIARY_REAL_NEGATIVE))
        add(pretraining, t0, converted, auxiliary_type)
        add(streaming, t0 + w_a, converted, auxiliary_type)

    features = {name: np.asarray(values) for name, values in clicks.items() if name not in FUTURE_COLUMNS}
    out = {name: [] for name in (*features, "emit_timestamp", "label", "sample_type")}
    for mask, when, label, kind in parts:
        when = np.broadcast_to(when, t0.shape)
        if settings.end_timestamp is not None:
            mask = mask & (when <= settings.end_timestamp)
        for name, values in features.items():
            out[name].append(values[mask])
        out["emit_timestamp"].append(when[mask])
        out["label"].append(np.broadcast_to(label, t0.shape)[mask].astype(np.float32))
        out["sample_type"].append(np.broadcast_to(kind, t0.shape)[mask].astype(np.int64))
    return {name: np.concatenate(values) for name, values in out.items()}


def evaluation_clicks(clicks: dict, settings: StreamSettings) -> dict:
    """The streaming period's clicks with their final labels (``FINAL_LABEL`` rows at click time)."""
    t0 = np.asarray(clicks["click_timestamp"], np.int64)
    conversion = np.asarray(clicks["conversion_timestamp"], np.int64)
    keep = t0 >= settings.stream_start_timestamp
    converted = (conversion >= 0) & (conversion - t0 <= settings.attribution_window_seconds)
    out = {name: np.asarray(values)[keep] for name, values in clicks.items() if name not in FUTURE_COLUMNS}
    out["emit_timestamp"] = t0[keep]
    out["label"] = converted[keep].astype(np.float32)
    out["sample_type"] = np.full(int(keep.sum()), FINAL_LABEL, np.int64)
    return out


def _by_window(rows: dict, settings: StreamSettings, prefix: str):
    """``((prefix, window), rows of that window)`` for every window ``rows`` touch."""
    windows = (rows["emit_timestamp"] - settings.origin_timestamp) // settings.window_seconds
    for window in np.unique(windows).tolist():
        keep = windows == window
        yield (prefix, int(window)), {name: values[keep] for name, values in rows.items()}


class DelayedFeedbackStream(beam.PTransform):
    """Chunks of clicks (dicts of column arrays) → ``((prefix, window), rows)`` chunks, ``prefix`` "window"
    for the training stream (by emission time) and "clicks" for the evaluation clicks (by click time)."""

    def __init__(self, settings: StreamSettings):
        super().__init__()
        self.settings = settings

    def expand(self, clicks):
        settings = self.settings
        stream = clicks | "Emit" >> beam.FlatMap(lambda c: _by_window(emit_rows(c, settings), settings,
                                                                      STREAM_PREFIX))
        evaluation = clicks | "FinalLabels" >> beam.FlatMap(
            lambda c: _by_window(evaluation_clicks(c, settings), settings, CLICKS_PREFIX))
        return (stream, evaluation) | beam.Flatten()


def _write_window(item, output_dir: str) -> dict:
    """Joins a window's chunks, sorts them in time order and writes the window's file; returns its summary."""
    (prefix, window), chunks = item
    chunks = list(chunks)
    rows = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
    order = np.lexsort((rows["sample_type"], rows["example_id"], rows["emit_timestamp"]))
    rows = {name: values[order] for name, values in rows.items()}
    path = tfrecord.write_sharded(rows, output_dir, f"{prefix}-{window:05d}", 1)[0]
    counts = np.bincount(rows["sample_type"], minlength=len(SAMPLE_TYPES))
    return {"prefix": prefix, "window": window, "rows": int(len(order)), "file": os.path.basename(path),
            "first_timestamp": int(rows["emit_timestamp"][0]), "last_timestamp": int(rows["emit_timestamp"][-1]),
            "sample_types": {name: int(count) for name, count in zip(SAMPLE_TYPES, counts) if count}}


def _write_metadata(summaries: list, settings: StreamSettings, output_dir: str) -> None:
    summaries = sorted(summaries, key=lambda s: (s["prefix"], s["window"]))
    stream = [s for s in summaries if s["prefix"] == STREAM_PREFIX]
    totals = {}
    for summary in stream:
        for name, count in summary["sample_types"].items():
            totals[name] = totals.get(name, 0) + count
    metadata = {"settings": dataclasses.asdict(settings), "pretrain_windows": settings.pretrain_windows,
                "stream_rows": sum(s["rows"] for s in stream), "sample_types": totals,
                "windows": stream, "evaluation_windows": [s for s in summaries if s["prefix"] == CLICKS_PREFIX]}
    with tf.io.gfile.GFile(os.path.join(output_dir, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)


def build_stream(clicks: dict, settings: StreamSettings, output_dir: str, pipeline_args=None) -> dict:
    """Runs the stream builder over ``clicks`` (columns of equal length) in a Beam pipeline and writes the
    window files of ``output_dir``; returns its metadata."""
    tf.io.gfile.makedirs(output_dir)
    rows = len(clicks["click_timestamp"])
    chunks = [{name: np.asarray(values)[start:start + CHUNK_ROWS] for name, values in clicks.items()}
              for start in range(0, rows, CHUNK_ROWS)]
    with temp_dir_removed(beam.Pipeline(options=pipeline_options(pipeline_args))) as pipeline, pipeline:
        _ = (pipeline
             | "Clicks" >> beam.Create(chunks, reshuffle=False)
             | "Stream" >> DelayedFeedbackStream(settings)
             | "ByWindow" >> beam.GroupByKey()
             | "Write" >> beam.Map(_write_window, output_dir)
             | "Summaries" >> beam.combiners.ToList()
             | "Metadata" >> beam.Map(_write_metadata, settings, output_dir))
    with tf.io.gfile.GFile(os.path.join(output_dir, "metadata.json")) as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class SourceStream:
    """The ``delayed_feedback_stream`` config block: a click-log source turned into a method's stream."""

    input: str
    method: str = "defuse"
    source: str = "criteo-conversion-logs"
    observation_window_seconds: int = 3600
    attribution_window_seconds: int = 7 * 86_400
    window_seconds: int = 86_400
    pretrain_seconds: int = 30 * 86_400

    @classmethod
    def from_config(cls, block) -> "SourceStream":
        values = dict(block)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown delayed_feedback_stream settings {unknown}; known: {sorted(fields)}")
        return cls(**values)


def read_clicks(block: SourceStream) -> dict:
    """The clicks of ``block.input`` (a file or a glob) as columns, with ``example_id`` in line order."""
    from tfrecsys.data.readers.criteo import CONVERSION_DATASET, CONVERSION_INTEGERS, read_criteo_conversion_logs

    if block.source != CONVERSION_DATASET:
        raise ValueError(f"delayed_feedback_stream.source {block.source!r}: the stream builder reads "
                         f"{CONVERSION_DATASET!r} files (click and conversion timestamps per line)")
    paths = sorted(glob.glob(block.input))
    if not paths:
        raise FileNotFoundError(f"delayed_feedback_stream.input {block.input}: no such file; see "
                                f"data/{CONVERSION_DATASET}.md for where to download it")
    parts = [read_criteo_conversion_logs(path).rows for path in paths]
    clicks = {name: np.concatenate([np.asarray(part[name]) for part in parts]) for name in parts[0]}
    for name in CONVERSION_INTEGERS:
        clicks[name] = np.nan_to_num(clicks[name].astype(np.float32), nan=0.0)
    clicks["example_id"] = np.arange(len(clicks["click_timestamp"]), dtype=np.int64)
    return clicks


def build_source_stream(block: SourceStream, output_dir: str, pipeline_args=None) -> dict:
    """Reads ``block``'s click log and writes its stream to ``output_dir``; returns the metadata."""
    clicks = read_clicks(block)
    settings = settings_for(clicks, block.method, block.observation_window_seconds,
                            block.attribution_window_seconds, block.window_seconds, block.pretrain_seconds)
    return build_stream(clicks, settings, output_dir, pipeline_args)
