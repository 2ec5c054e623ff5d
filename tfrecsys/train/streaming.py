"""Streaming training (``config.train.mode = "streaming"``): time windows in order, each evaluated before it
is trained on.

The protocol of online learning and of DEFUSE's experiments (../shared/reference/digest-defuse-and-practice.md,
C.4): the training files fall into time windows (hours, days), and for ``t = 0, 1, …``

* window ``t > 0`` is evaluated with the model trained on windows ``0 … t−1``, before any of its rows is
  trained on (the next hour's traffic meets the model of the hours before, as in production);
* then the model takes one pass over window ``t``;
* a checkpoint records the weights, the optimizer and ``windows_done = t + 1``.

Windows are never mixed: rows are read window by window in file order (within a window, chunks of its files
in turn), never shuffled, so the model sees the stream in the order it happened. Metrics per evaluated window
and their averages (plain and row-weighted) go to ``<model_dir>/streaming_metrics.json`` after every window
and to the log. A rerun of the same command restores the newest checkpoint and continues with window
``windows_done``; a window is trained at most once in the saved state, and new window files that sort after
the old ones are picked up (a daily job trains on the new day only).

Windows come from ``config.data.train_files`` (globs under ``config.data.dir``) and
``config.data.window_key``, a regular expression whose one group, searched in each file's path, is the
file's window: ``r"window-(\\d+)-"`` for ``window-00003-00000-of-00001.tfrecord``, ``r"hour=(\\d{10})/"`` for
``hour=2026120613/part-0.tfrecord``. Windows are ordered by their keys, as integers when every key is one,
else as strings (zero-padded numbers and ISO timestamps sort in time order either way).

Two settings serve delayed-feedback streams (docs/delayed-feedback.md), where the rows a window trains on are
not the rows it should be judged on: ``config.data.window_eval_files`` (globs; the same ``window_key``) gives
each window its own evaluation files (the window's clicks with their final labels), evaluated before the
window's training rows are trained on; a window without evaluation files is trained only. And
``config.train.pretrain_windows`` (default 0) windows at the start are trained on, never evaluated (a
pretraining period of old data).
Online-learning options (``config.train.online``, ``tfrecsys.train.online``): freeze all but the embedding
tables, replay window ``t − R``'s rows mixed into window ``t``, distil from an offline teacher.

Under MultiWorkerMirroredStrategy every worker runs the same windows: every worker reads all files of a
window in the same order and keeps its own slice of each global batch (data sharding; by-file sharding could
give workers different step counts within a window), and only the chief writes to ``model_dir``.
"""

import dataclasses
import json
import os
import re
import time

import tensorflow as tf
from absl import logging

from tfrecsys.data.input import DataError, check_schema, count_records, make_dataset, resolve_files
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models.tasks import tasks_from_config
from tfrecsys.train import online
from tfrecsys.train.loop import (CHECKPOINT_SUBDIR, EVAL_METRICS_FILE, build_and_compile, metrics_by_task,
                                 naming_bad_files, worker_slice)
from tfrecsys.train.strategy import is_chief, naming_lost_peers, task_name, worker_dir

STREAMING_METRICS_FILE = "streaming_metrics.json"
# Entry fields that describe a window rather than measure the model; averages leave them out.
_WINDOW_FIELDS = ("window", "key", "rows", "trained_through", "step")


@dataclasses.dataclass(frozen=True)
class TimeWindow:
    index: int             # position in time order, from 0
    key: str               # the window_key group of its files
    files: tuple[str, ...]


def time_windows(config, files=None) -> list[TimeWindow]:
    """The windows of ``files`` (default ``config.data.train_files``) by ``config.data.window_key``, in time
    order."""
    pattern = config.data.get("window_key", "")
    if not pattern:
        raise ValueError("config.train.mode is 'streaming' but config.data.window_key is not set: give a regular "
                         r"expression whose one group is a file's window, e.g. r'window-(\d+)-' "
                         "(docs/streaming-training.md)")
    try:
        key_regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"config.data.window_key {pattern!r} is not a regular expression: {error}") from None
    if key_regex.groups != 1:
        raise ValueError(f"config.data.window_key {pattern!r} must have exactly one group (the window), "
                         f"it has {key_regex.groups}")
    by_key: dict[str, list[str]] = {}
    for path in resolve_files(files or config.data.train_files, config.data.dir):
        match = key_regex.search(path)
        if match is None:
            raise DataError(f"{path}: config.data.window_key {pattern!r} does not match this training file, so "
                            "it belongs to no window; narrow config.data.train_files or fix the key")
        by_key.setdefault(match.group(1), []).append(path)
    numeric = all(key.isdigit() for key in by_key)
    keys = sorted(by_key, key=int if numeric else str)
    return [TimeWindow(index, key, tuple(sorted(by_key[key]))) for index, key in enumerate(keys)]


def _window_data(strategy, window: TimeWindow, schema, global_batch: int, replay=None, teacher=None):
    """One pass over ``window`` in file order as global batches of ``global_batch`` rows (the last one
    smaller), each worker keeping its own slice of every batch.

    ``replay``: ``(window, its rows, rows of the window to replay)``: that window's rows interleaved evenly
    (``online.mix_replay``). ``teacher``: an ``online.Teacher`` that adds its columns to every batch."""

    def dataset_fn(context: tf.distribute.InputContext):
        dataset = make_dataset(list(window.files), schema, global_batch, training=False)
        if replay is not None:
            replayed, rows, replayed_rows = replay
            dataset = online.mix_replay(dataset, make_dataset(list(replayed.files), schema, global_batch,
                                                              training=False), rows, replayed_rows, global_batch)
        if teacher is not None:
            dataset = dataset.map(teacher.add_columns)
        if context.num_input_pipelines > 1:
            def own_slice(*batch):
                return worker_slice(batch, context.input_pipeline_id, context.num_input_pipelines)

            dataset = dataset.map(own_slice)
        return dataset.rebatch(context.get_per_replica_batch_size(global_batch))

    return strategy.distribute_datasets_from_function(dataset_fn)


def _average(entries: list[dict], weights: list[float]) -> dict:
    """Weighted mean of every metric of ``entries`` (nested by task), skipping NaN values (an AUC of a
    window with one class)."""
    out = {}
    for name in entries[0]:
        if name in _WINDOW_FIELDS:
            continue
        if isinstance(entries[0][name], dict):
            out[name] = _average([entry[name] for entry in entries], weights)
            continue
        pairs = [(entry[name], weight) for entry, weight in zip(entries, weights) if entry[name] == entry[name]]
        total = sum(weight for _, weight in pairs)
        out[name] = sum(value * weight for value, weight in pairs) / total if total else float("nan")
    return out


def summarize(entries: list[dict], windows_done: int, step: int) -> dict:
    """What streaming_metrics.json holds: the windows trained, the step, the per-window entries in time
    order and their ``average`` and ``row_weighted_average``."""
    summary = {"windows_trained": windows_done, "step": step, "windows": entries}
    if entries:
        summary["average"] = _average(entries, [1.0] * len(entries))
        summary["row_weighted_average"] = _average(entries, [float(entry["rows"]) for entry in entries])
    return summary


def _read_entries(path: str, windows: list[TimeWindow], windows_done: int) -> list[dict]:
    """The per-window entries of an earlier run for windows the checkpoint has trained on or evaluated
    before it, after checking that those windows are still the same ones."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        entries = json.load(f)["windows"]
    kept = []
    for entry in entries:
        index = entry["window"]
        if index >= windows_done:
            continue  # evaluated by a run stopped before it trained on that window: evaluated again
        if windows[index].key != entry["key"]:
            raise DataError(f"{path}: window {index} of this run was {entry['key']!r}, but config.data now gives "
                            f"{windows[index].key!r} at that place; the windows before the checkpoint changed "
                            "(files removed or added before them, or another window_key)")
        kept.append(entry)
    return kept


def train_streaming(config, model_dir: str, strategy, verbose: int, jit_compile: bool, callbacks) -> dict:
    """Runs the windows of ``config`` not yet trained in ``model_dir``; returns the average metrics over every
    evaluated window, ``{"loss": …, "<task>": {"auc": …, "logloss": …}}`` (empty before the second window).

    ``callbacks``: Keras callbacks for every window's ``fit`` and ``evaluate``.
    """
    tf.keras.utils.set_random_seed(config.train.seed)
    schema = FeatureSchema.from_config(config.features)
    tasks = tasks_from_config(config.tasks, schema)
    settings = online.OnlineSettings.from_config(config)
    windows = time_windows(config)
    check_schema(windows[0].files[0], schema)
    eval_files = config.data.get("window_eval_files", "")
    eval_windows = {window.key: window for window in time_windows(config, eval_files)} if eval_files else {}
    pretrain_windows = config.train.get("pretrain_windows", 0)
    replicas = strategy.num_replicas_in_sync
    for field in ("batch_size", "eval_batch_size"):
        if config.train[field] % replicas:
            raise ValueError(f"config.train.{field} ({config.train[field]}) is the global batch and must be a "
                             f"multiple of the {replicas} replicas in sync (workers × devices per worker)")

    if replicas > 1 and config.train.steps_per_execution > 1:
        # Measured with 2 CPU workers on TF 2.16: the second window's fit (a new input iterator for the same
        # train function) fails with "Shape mismatch in the collective instance" in the step loop that
        # steps_per_execution > 1 compiles; with one step per call every window trains.
        logging.info("streaming over %d replicas: steps_per_execution %d → 1", replicas,
                     config.train.steps_per_execution)
        config = config.copy_and_resolve_references()
        config.train.steps_per_execution = 1
    checkpoint_dir = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    with strategy.scope():
        model = build_and_compile(config, schema, jit_compile=jit_compile,
                                  before_compile=lambda built: online.freeze(built, settings))
        teacher = online.prepare_distillation(config, model, schema, settings)
        windows_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="windows_done")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, windows_done=windows_done)
        manager = tf.train.CheckpointManager(checkpoint, worker_dir(checkpoint_dir),
                                             max_to_keep=config.train.max_checkpoints)
        # Every worker restores the chief's newest checkpoint (the others' scratch copies are removed).
        latest = tf.train.latest_checkpoint(checkpoint_dir)
        if latest:
            checkpoint.restore(latest)
    done = int(windows_done.numpy())
    if done > len(windows):
        raise DataError(f"{latest} has trained {done} windows but config.data gives only {len(windows)} "
                        f"({config.data.train_files!r} by {config.data.window_key!r})")
    metrics_path = os.path.join(model_dir, STREAMING_METRICS_FILE)
    entries = _read_entries(metrics_path, windows, done)
    logging.info("%s: streaming over %d windows (%s … %s), %d already trained%s", task_name(), len(windows),
                 windows[0].key, windows[-1].key, done, f" (resuming from {latest})" if latest else "")

    for window in windows[done:]:
        rows = count_records(window.files)
        with naming_lost_peers(), naming_bad_files(list(window.files), schema):
            evaluated = window
            if eval_files:
                own = eval_windows.get(window.key)
                evaluated = dataclasses.replace(own, index=window.index) if own else None
            if window.index >= max(1, pretrain_windows) and evaluated is not None:
                entries.append(_evaluate(model, strategy, evaluated, windows[window.index - 1],
                                         count_records(evaluated.files), schema, config,
                                         [task.name for task in tasks], callbacks))
                # Written before training too: a run stopped between the checkpoint and the next write
                # keeps this window's evaluation.
                if is_chief():
                    _write_json(metrics_path, summarize(entries, window.index, entries[-1]["step"]))
            replayed = online.replayed_window(windows, window, settings)
            replay = (replayed, rows, count_records(replayed.files)) if replayed else None
            trained_rows = rows + (replay[2] if replay else 0)
            steps = -(-trained_rows // config.train.batch_size)
            start = time.perf_counter()
            model.fit(_window_data(strategy, window, schema, config.train.batch_size, replay, teacher), epochs=1,
                      steps_per_epoch=steps, callbacks=list(callbacks), verbose=verbose)
        step = int(model.optimizer.iterations.numpy())
        windows_done.assign(window.index + 1)
        path = manager.save(checkpoint_number=step)
        if not is_chief():
            tf.io.gfile.rmtree(manager.directory)
        logging.info("window %d (%s): trained on %d rows%s in %d steps (%.0f rows/s), step %d, checkpoint %s",
                     window.index, window.key, trained_rows,
                     f" ({replay[2]} replayed from window {replayed.index})" if replay else "", steps,
                     trained_rows / max(time.perf_counter() - start, 1e-9), step, path)
        if is_chief():
            _write_json(metrics_path, summarize(entries, window.index + 1, step))

    summary = summarize(entries, int(windows_done.numpy()), int(model.optimizer.iterations.numpy()))
    if is_chief():
        _write_json(metrics_path, summary)
        # The average over windows is the run's eval result, where the report and the export look for it.
        _write_json(os.path.join(model_dir, EVAL_METRICS_FILE), {"step": summary["step"],
                                                                 **summary.get("average", {})})
    logging.info("streaming: %d windows trained, %d evaluated; average %s", summary["windows_trained"],
                 len(entries), summary.get("average", {}))
    return summary.get("average", {})


def _evaluate(model, strategy, window: TimeWindow, previous: TimeWindow, rows: int, schema, config,
              task_names, callbacks) -> dict:
    """Metrics of the model trained through ``previous`` on ``window`` (the training window's files or its
    evaluation files)."""
    steps = -(-rows // config.train.eval_batch_size)
    data = _window_data(strategy, window, schema, config.train.eval_batch_size)
    raw = model.evaluate(data, steps=steps, return_dict=True, verbose=0, callbacks=list(callbacks))
    metrics = metrics_by_task(raw, task_names)
    logging.info("window %d (%s), evaluated after training through window %d (%s) on %d rows: %s", window.index,
                 window.key, previous.index, previous.key, rows, metrics)
    return {"window": window.index, "key": window.key, "trained_through": previous.key, "rows": rows,
            "step": int(model.optimizer.iterations.numpy()), **metrics}


def _write_json(path: str, content: dict) -> None:
    """Writes ``content`` to a temporary file and renames it, so a reader never sees half a file."""
    staging = f"{path}.tmp"
    with tf.io.gfile.GFile(staging, "w") as f:
        json.dump(content, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(staging, path, overwrite=True)
