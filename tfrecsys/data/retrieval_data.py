"""Retrieval datasets on disk: positive (query, item) interactions, the candidate corpus and item frequencies.

A retrieval dataset directory holds:

* ``train-*.tfrecord`` / ``eval-*.tfrecord``: one tf.train.Example per interaction — the user's features, the
  user's earlier items (``hist_item_id``, oldest first, only events strictly before this one), the item's
  features and a ``reward`` (the weight of the row in the loss);
* ``candidates.tfrecord``: one Example per corpus item with the candidate tower's features — what full-corpus
  evaluation ranks, what mixed negative sampling draws from and what the exported index holds;
* ``item_frequency.tsv``: how often each item is a training positive (``tfrecsys.data.item_frequency``), for
  the logQ correction, frequency-based negative sampling and the popularity baseline;
* ``metadata.json``: row counts, the split, and the metrics of the popularity ranking (every user gets the
  items by training count), the floor a learned model has to beat.

The split is leave-one-out by time: each user's last interaction is the evaluation target, the earlier ones
train (users with a single interaction only train).
"""

import json
import os

import numpy as np
import tensorflow as tf

from tfrecsys.data import tfrecord
from tfrecsys.data.item_frequency import write_item_frequency
from tfrecsys.metrics.retrieval import summarize_ranks, target_ranks

CANDIDATES_FILE = "candidates.tfrecord"
ITEM_FREQUENCY_FILE = "item_frequency.tsv"
METADATA_FILE = "metadata.json"
HISTORY_FEATURE = "hist_item_id"


def leave_one_out(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, history_len: int) -> dict:
    """Splits an interaction log by user and time.

    Events are ordered by (user, timestamp, item). Returns ``{"train": rows, "eval": rows}`` (indices into the
    inputs, each in global time order) and ``histories``: per input row the items of the same user with a
    strictly earlier timestamp, oldest first, at most ``history_len`` of them (events in the same second are
    not each other's history, so no history ever holds an event at or after its target's time).
    """
    users, items, timestamps = (np.asarray(a) for a in (users, items, timestamps))
    if not len(users) == len(items) == len(timestamps):
        raise ValueError(f"users, items and timestamps have different lengths: {len(users)}, {len(items)}, "
                         f"{len(timestamps)}")
    if history_len < 1:
        raise ValueError(f"history_len must be positive, got {history_len}")
    order = np.lexsort((items, timestamps, users))
    histories = [None] * len(users)
    train, evaluation = [], []
    boundaries = np.flatnonzero(np.diff(users[order])) + 1
    for block in np.split(order, boundaries):
        block_times = timestamps[block]
        # For each event, how many of the user's events happened strictly before it.
        earlier = np.searchsorted(block_times, block_times, side="left")
        for position, row in enumerate(block):
            start = max(0, earlier[position] - history_len)
            histories[row] = items[block[start:earlier[position]]].astype(np.int64)
        if len(block) > 1:
            train.extend(block[:-1].tolist())
            evaluation.append(int(block[-1]))
        else:
            train.extend(block.tolist())
    by_time = lambda rows: np.asarray(sorted(rows, key=lambda r: (timestamps[r], users[r], items[r])), np.int64)
    return {"train": by_time(train), "eval": by_time(evaluation), "histories": histories}


def _take(columns: dict, rows: np.ndarray) -> dict:
    out = {}
    for name, values in columns.items():
        if isinstance(values, list):
            out[name] = [values[r] for r in rows]
        else:
            out[name] = np.asarray(values)[rows]
    return out


def write_retrieval_dataset(output_dir: str, interactions: dict, split: dict, candidates: dict,
                            item_feature: str = "item_id", num_shards: int = 2, extra_metadata=None) -> dict:
    """Writes a retrieval dataset directory (see the module docstring) and returns its metadata.

    ``interactions``: columns of every interaction (arrays, or lists of arrays for variable-length features);
    ``split``: ``{"train": rows, "eval": rows}`` as from ``leave_one_out``; ``candidates``: columns of the corpus,
    one row per item, including ``item_feature``. The item frequency table counts ``item_feature`` over the
    training rows, with every corpus item listed (count 0 for items no training row has).
    """
    corpus_ids = np.asarray(candidates[item_feature])
    if len(np.unique(corpus_ids)) != len(corpus_ids):
        raise ValueError(f"candidate corpus lists some {item_feature} twice")
    train_items = np.asarray(interactions[item_feature])[split["train"]]
    unknown = np.setdiff1d(np.unique(np.asarray(interactions[item_feature])), corpus_ids)
    if unknown.size:
        raise ValueError(f"{unknown.size} interacted items are not in the candidate corpus, e.g. "
                         f"{unknown[:5].tolist()}")
    os.makedirs(output_dir, exist_ok=True)
    train_files = tfrecord.write_sharded(_take(interactions, split["train"]), output_dir, "train", num_shards)
    eval_files = tfrecord.write_sharded(_take(interactions, split["eval"]), output_dir, "eval", 1)
    with tf.io.TFRecordWriter(os.path.join(output_dir, CANDIDATES_FILE)) as writer:
        for record in tfrecord.to_examples(candidates):
            writer.write(record)
    counts = {item.item() if isinstance(item, np.generic) else item: 0 for item in corpus_ids}
    ids, item_counts = np.unique(train_items, return_counts=True)
    for item, count in zip(ids.tolist(), item_counts.tolist()):
        counts[item] = count
    write_item_frequency(os.path.join(output_dir, ITEM_FREQUENCY_FILE), counts)
    popularity = np.asarray([counts[item.item() if isinstance(item, np.generic) else item] for item in corpus_ids],
                            np.float64)
    row_of = {item: row for row, item in enumerate(corpus_ids.tolist())}
    eval_rows = [row_of[item] for item in np.asarray(interactions[item_feature])[split["eval"]].tolist()]
    popularity_ranks = target_ranks(np.tile(popularity, (len(eval_rows), 1)), np.asarray(eval_rows, np.int64))
    metadata = {
        "train_files": [os.path.basename(f) for f in train_files],
        "eval_files": [os.path.basename(f) for f in eval_files],
        "candidates_file": CANDIDATES_FILE,
        "item_frequency_file": ITEM_FREQUENCY_FILE,
        "train_rows": int(len(split["train"])),
        "eval_rows": int(len(split["eval"])),
        "num_candidates": int(len(corpus_ids)),
        "split": "leave-one-out by time: each user's last interaction is evaluated",
        "popularity": summarize_ranks(popularity_ranks.numpy()),
        **(extra_metadata or {}),
    }
    with open(os.path.join(output_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    return metadata


def prepare_movielens_100k(dataset_dir: str, output_dir: str, history_len: int = 50, num_shards: int = 2) -> dict:
    """MovieLens-100K as a retrieval dataset: every rating is a positive interaction (reward 1), each user's
    last rating by time is the evaluation target.

    Query features: ``user_id`` and ``hist_item_id``; candidate features: ``item_id`` and ``item_genres`` (the
    movie's genre names). Reads GroupLens' original files from ``dataset_dir``; their license forbids
    redistribution, so the output belongs in a run directory, not in a repository.
    """
    from tfrecsys.data.readers.movielens import read_movielens_100k

    data = read_movielens_100k(dataset_dir)
    if data.bad_rows:
        raise ValueError(f"{dataset_dir}: {len(data.bad_rows)} malformed MovieLens rows, first: "
                         f"{data.bad_rows[0].path}:{data.bad_rows[0].line}: {data.bad_rows[0].reason}")
    ratings = data.ratings
    genres_by_item = dict(zip(data.items["item_id"].tolist(), data.items["genres"].tolist()))
    split = leave_one_out(ratings["user_id"], ratings["item_id"], ratings["timestamp"], history_len)
    item_ids = ratings["item_id"].astype(np.int64)
    interactions = {
        "user_id": ratings["user_id"].astype(np.int64),
        "timestamp": ratings["timestamp"].astype(np.int64),
        HISTORY_FEATURE: split["histories"],
        "item_id": item_ids,
        "item_genres": [np.asarray(genres_by_item[i], dtype=object) for i in item_ids.tolist()],
        "reward": np.ones(len(item_ids), np.float32),
    }
    corpus_ids = np.asarray(sorted(genres_by_item), np.int64)
    candidates = {"item_id": corpus_ids,
                  "item_genres": [np.asarray(genres_by_item[i], dtype=object) for i in corpus_ids.tolist()]}
    return write_retrieval_dataset(output_dir, interactions, split, candidates, num_shards=num_shards,
                                   extra_metadata={"source": "movielens-100k", "history_len": history_len,
                                                   "num_users": int(data.num_users)})
