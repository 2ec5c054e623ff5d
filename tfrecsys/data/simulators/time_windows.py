"""A simulated log cut into time windows: the input of streaming training (docs/streaming-training.md).

Window ``w`` holds the rows whose timestamp lies in ``[t_0 + w·window_seconds, t_0 + (w+1)·window_seconds)``,
where ``t_0`` is the first timestamp rounded down to a multiple of ``window_seconds`` (so daily windows start
at midnight UTC, hourly ones on the hour). Its rows are written, in time order, as
``window-<w:05d>-<shard:05d>-of-<n:05d>.tfrecord`` (``shards_per_window`` files per window); windows without
rows are not written. ``metadata.json`` lists each window's first and last timestamp, rows and files.

``click_log_stream`` (``data.simulator.kind``) is the click-log world of ``click_log.py`` written this way:
every ``ClickLogConfig`` setting except its train/eval split, plus ``window_seconds`` and
``shards_per_window``. Its histories hold only clicks before each row, so no window sees the future.
"""

import dataclasses
import json
import os

import numpy as np

from tfrecsys.data import tfrecord
from tfrecsys.data.simulators.click_log import ClickLogConfig, simulate_click_log
from tfrecsys.data.simulators.common import auc

WINDOW_PREFIX = "window"
# What streaming configs put in config.data: every window file, and the regex whose group is the window key.
WINDOW_FILES = "window-*.tfrecord"
WINDOW_KEY = r"window-(\d+)-"
# ClickLogConfig settings of the train/eval split, which a stream does not have.
_SPLIT_SETTINGS = ("eval_fraction", "num_shards")


@dataclasses.dataclass(frozen=True)
class ClickLogStreamConfig:
    window_seconds: int = 86_400
    shards_per_window: int = 1
    world: ClickLogConfig = ClickLogConfig()

    def __post_init__(self):
        if self.window_seconds <= 0 or self.shards_per_window <= 0:
            raise ValueError(f"window_seconds ({self.window_seconds}) and shards_per_window "
                             f"({self.shards_per_window}) must be positive")

    @classmethod
    def from_config(cls, config) -> "ClickLogStreamConfig":
        """``window_seconds`` and ``shards_per_window``; every other key is a ``ClickLogConfig`` setting."""
        values = {k: v for k, v in dict(config).items() if k != "kind"}
        split = sorted(set(values) & set(_SPLIT_SETTINGS))
        if split:
            raise ValueError(f"click_log_stream settings {split} belong to the train/eval split of click_log; a "
                             "stream is cut into time windows by window_seconds instead")
        own = {name: values.pop(name) for name in ("window_seconds", "shards_per_window") if name in values}
        return cls(world=ClickLogConfig.from_config(values), **own)


def window_index(timestamps: np.ndarray, window_seconds: int) -> np.ndarray:
    """Per row, the index of its window: ``(t − t_0) // window_seconds`` with ``t_0`` the first timestamp
    rounded down to a multiple of ``window_seconds``."""
    timestamps = np.asarray(timestamps, np.int64)
    origin = timestamps.min() // window_seconds * window_seconds
    return (timestamps - origin) // window_seconds


def write_windows(columns: dict, timestamp_column: str, window_seconds: int, output_dir: str,
                  shards_per_window: int = 1) -> list[dict]:
    """Writes the rows of ``columns`` (in time order) as window files; returns per window ``{"window",
    "first_timestamp", "last_timestamp", "rows", "files"}`` in time order."""
    timestamps = np.asarray(columns[timestamp_column], np.int64)
    if np.any(np.diff(timestamps) < 0):
        raise ValueError(f"column {timestamp_column!r} is not in time order: window files must be")
    windows = window_index(timestamps, window_seconds)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for window in np.unique(windows).tolist():
        rows = np.flatnonzero(windows == window)
        part = {name: ([values[i] for i in rows] if isinstance(values, list) else values[rows])
                for name, values in columns.items()}
        files = tfrecord.write_sharded(part, output_dir, f"{WINDOW_PREFIX}-{window:05d}", shards_per_window)
        written.append({"window": window, "first_timestamp": int(timestamps[rows[0]]),
                        "last_timestamp": int(timestamps[rows[-1]]), "rows": int(len(rows)),
                        "files": [os.path.basename(f) for f in files]})
    return written


def write_click_log_stream(config: ClickLogStreamConfig, output_dir: str) -> dict:
    """Simulates the click log and writes it as window files with ``metadata.json`` and ``ground_truth.npz``;
    returns the metadata."""
    columns, truth = simulate_click_log(config.world)
    windows = write_windows(columns, "timestamp", config.window_seconds, output_dir, config.shards_per_window)
    metadata = {"simulator": "click_log_stream", "config": dataclasses.asdict(config),
                "window_files": WINDOW_FILES, "window_key": WINDOW_KEY, "windows": windows,
                "rows": int(len(columns["timestamp"])), "click_rate": float(columns["click"].mean()),
                "oracle_auc": auc(columns["click"], truth["probability"])}
    with open(os.path.join(output_dir, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    np.savez(os.path.join(output_dir, "ground_truth.npz"),
             **{k: v for k, v in truth.items() if isinstance(v, np.ndarray)})
    return metadata
