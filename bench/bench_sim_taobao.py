"""SIM, DIN and mean-pooling on Taobao UserBehavior: AUC, GAUC and logloss, every model on the same rows.

    python -m bench.run_all sim_taobao            # or: python -m bench.bench_sim_taobao --steps=1200

Protocol (issue 12): each user's events in time order; every event after the user's first is a positive row
(the item acted on, any behaviour type) and a negative row (an item drawn uniformly from the log's distinct
items, with its category, never the positive) at the event's time; each user's last event is the test split,
the others train. Each user's events are stored once (``user_histories.parquet``) and every row's histories
are cut from the store strictly before its time (configs/sim_taobao.py). ``--prepare_only`` writes the layout
and stops. Input: ``../shared/datasets/taobao-user-behavior`` (the first 84,474 rows of the release here: 815
users, about 100 events each, so the "lifelong" history is at most a few hundred events).
"""

import argparse
import glob
import os
import tempfile
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data import tfrecord
from tfrecsys.data.readers.taobao import read_user_behavior
from tfrecsys.data.user_histories import write_user_histories
from tfrecsys.train.loop import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "sim_taobao.py")
DATASET = os.path.join(REPO, os.pardir, "shared", "datasets", "taobao-user-behavior")
MODELS = ("mean_pooling", "din", "sim")
RECENT = ("recent_item_id", "recent_category_id")
LIFELONG = ("long_item_id", "long_category_id", "long_timestamp")


def prepare(input_dir: str, data_dir: str, seed: int = 0) -> dict:
    """Writes the layout of configs/sim_taobao.py from ``UserBehavior*.csv``; returns row counts."""
    files = sorted(glob.glob(os.path.join(input_dir, "UserBehavior*.csv")))
    if not files:
        raise FileNotFoundError(f"no UserBehavior*.csv under {input_dir} (data/taobao-user-behavior.md)")
    parts = [read_user_behavior(path).events for path in files]
    events = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    order = np.lexsort((events["item_id"], events["timestamp"], events["user_id"]))
    events = {name: values[order] for name, values in events.items()}
    users, times, items, categories = (events[n] for n in ("user_id", "timestamp", "item_id", "category_id"))
    catalogue, first = np.unique(items, return_index=True)
    catalogue_category = categories[first]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    rng = np.random.default_rng(seed)
    splits = {"train": [], "eval": []}
    for start, end in zip(starts, ends):
        for index in range(start + 1, end):
            splits["eval" if index == end - 1 else "train"].append(index)
    os.makedirs(data_dir, exist_ok=True)
    counts = {}
    for split, indices in splits.items():
        indices = np.array(indices, np.int64)
        negatives = rng.integers(0, len(catalogue), len(indices))
        clash = catalogue[negatives] == items[indices]
        while clash.any():  # redraw a negative that is the positive item
            negatives[clash] = rng.integers(0, len(catalogue), int(clash.sum()))
            clash = catalogue[negatives] == items[indices]
        columns = {"user_id": np.repeat(users[indices], 2), "timestamp": np.repeat(times[indices], 2),
                   "item_id": np.stack([items[indices], catalogue[negatives]], 1).reshape(-1),
                   "category_id": np.stack([categories[indices], catalogue_category[negatives]], 1).reshape(-1),
                   "click": np.tile(np.array([1.0, 0.0], np.float32), len(indices))}
        if split == "train":  # the row order the shuffle starts from: not user by user
            permutation = rng.permutation(len(columns["click"]))
            columns = {name: values[permutation] for name, values in columns.items()}
        tfrecord.write_sharded(columns, data_dir, split, 4 if split == "train" else 1)
        counts[split] = len(columns["click"])
    write_user_histories(os.path.join(data_dir, "user_histories.parquet"), users, times,
                         {"item_id": items, "category_id": categories})
    counts["users"], counts["events"] = len(starts), len(users)
    return counts


def variant(name: str, data_dir: str, steps: int, seed: int):
    """configs/sim_taobao.py as ``name``: the same rows, store, steps and seed."""
    config = load_config(CONFIG, {"data.dir": data_dir, "train.steps": steps, "train.steps_per_loop": steps,
                                  "train.seed": seed})
    if name == "sim":
        return config
    for feature in LIFELONG:
        del config.features[feature]
        del config.data.user_histories.sequences[feature]
    config.features.timestamp = dict(kind="dense", dtype="int64", training_only=True)
    config.model = {"name": "dnn", "hidden_units": (128, 64), "dropout": 0.0}
    if name == "din":
        config.model = {"name": "din", "history": RECENT, "attention_units": (80, 40),
                        "attention_activation": "dice", "hidden_units": (128, 64), "dropout": 0.0, "mba_l2": 0.0}
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1200, help="training steps of every model (batch 256)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    parser.add_argument("--input", default=DATASET, help="directory holding UserBehavior*.csv")
    parser.add_argument("--data_dir", default="", help="where the prepared layout goes (a temporary dir if empty)")
    parser.add_argument("--prepare_only", action="store_true", help="write the layout and stop")
    args = parser.parse_args()
    data_dir = args.data_dir or os.path.join(tempfile.mkdtemp(prefix="bench_sim_taobao_"), "data")
    if not os.path.exists(os.path.join(data_dir, "user_histories.parquet")):
        print(f"prepared {prepare(args.input, data_dir)} in {data_dir}", flush=True)
    if args.prepare_only:
        return
    results = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.models.split(","):
            started = time.perf_counter()
            tf.keras.utils.set_random_seed(seed)
            config = variant(name, data_dir, args.steps, seed)
            metrics = train_and_evaluate(config, os.path.join(os.path.dirname(data_dir), f"{name}_{seed}"),
                                         verbose=0)["score"]
            results.setdefault(name, []).append((metrics["auc"], metrics["gauc"], metrics["logloss"]))
            print(f"seed {seed} {name:14s} AUC {metrics['auc']:.4f} GAUC {metrics['gauc']:.4f} logloss "
                  f"{metrics['logloss']:.4f} ({time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.1f})",
                  flush=True)
    print("\nmean over seeds: model, AUC, GAUC, logloss")
    for name, rows in results.items():
        print(f"{name:14s} " + " ".join(f"{v:.4f}" for v in np.mean(rows, axis=0)))


if __name__ == "__main__":
    main()
