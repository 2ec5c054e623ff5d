"""Retrieval datasets on disk: positive (query, item) interactions, the candidate corpus and item frequencies.

Two writers produce this layout: ``tfrecsys-preprocess`` for a source dataset (its ``candidate_columns``
setting, ``tfrecsys.data.preprocess``) and the ``retrieval`` simulator of ``tfrecsys-simulate``
(``write_retrieval_dataset`` here). A retrieval dataset directory holds:

* ``train-*.tfrecord`` / ``eval-*.tfrecord``: one tf.train.Example per interaction — the user's features, the
  user's earlier items (``hist_item_id``, oldest first, only events strictly before this one), the item's
  features and a ``reward`` (the weight of the row in the loss);
* ``candidates.tfrecord``: one Example per corpus item with the candidate tower's features — what full-corpus
  evaluation ranks, what mixed negative sampling draws from and what the exported index holds;
* ``item_frequency.tsv``: how often each item is a training positive (``tfrecsys.data.item_frequency``), for
  the logQ correction, frequency-based negative sampling and the popularity baseline;
* ``metadata.json``: row counts, the split, and the metrics of the popularity ranking (every user gets the
  items by training count), the floor a learned model has to beat.

``popularity_baseline`` gives the metrics of the popularity ranking for any such directory's counts.
"""

import json
import os

import numpy as np
import tensorflow as tf

from tfrecsys.data import tfrecord
from tfrecsys.data.input import resolve_files
from tfrecsys.data.item_frequency import read_item_frequency, write_item_frequency
from tfrecsys.metrics.retrieval import summarize_ranks

CANDIDATES_FILE = "candidates.tfrecord"
ITEM_FREQUENCY_FILE = "item_frequency.tsv"
METADATA_FILE = "metadata.json"
HISTORY_FEATURE = "hist_item_id"


def _take(columns: dict, rows: np.ndarray) -> dict:
    out = {}
    for name, values in columns.items():
        if isinstance(values, list):
            out[name] = [values[r] for r in rows]
        else:
            out[name] = np.asarray(values)[rows]
    return out


def write_retrieval_dataset(output_dir: str, interactions: dict, split: dict, candidates: dict,
                            item_feature: str = "item_id", num_shards: int = 2, extra_metadata=None,
                            item_counts=None) -> dict:
    """Writes a retrieval dataset directory (see the module docstring) and returns its metadata.

    ``interactions``: columns of every interaction (arrays, or lists of arrays for variable-length features);
    ``split``: ``{"train": rows, "eval": rows}`` (e.g. the simulator's leave-one-out); ``candidates``: columns
    of the corpus, one row per item, including ``item_feature``. The item frequency table counts
    ``item_feature`` over the training rows, with every corpus item listed (count 0 for items no training row
    has); ``item_counts`` ``{item: count}`` replaces those counts where the training rows are not the events
    (``tfrecsys.data.next_item``: one row per user stands for all of the user's training events).
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
    if item_counts is None:
        ids, row_counts = np.unique(train_items, return_counts=True)
        item_counts = dict(zip(ids.tolist(), row_counts.tolist()))
    counts.update(item_counts)
    write_item_frequency(os.path.join(output_dir, ITEM_FREQUENCY_FILE), counts)
    metadata = {
        "train_files": [os.path.basename(f) for f in train_files],
        "eval_files": [os.path.basename(f) for f in eval_files],
        "candidates_file": CANDIDATES_FILE,
        "item_frequency_file": ITEM_FREQUENCY_FILE,
        "train_rows": int(len(split["train"])),
        "eval_rows": int(len(split["eval"])),
        "num_candidates": int(len(corpus_ids)),
        "split": "leave-one-out by time: each user's last interaction is evaluated",
        "popularity": popularity_baseline(counts, corpus_ids,
                                          np.asarray(interactions[item_feature])[split["eval"]]),
        **(extra_metadata or {}),
    }
    with open(os.path.join(output_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    return metadata


def popularity_baseline(counts: dict, corpus_ids, eval_items) -> dict:
    """Recall@K, NDCG@K and MRR of ranking the corpus by training count for every evaluated interaction (the
    floor a learned model has to beat). ``counts``: ``{item: training count}`` (items it lacks count 0);
    ``corpus_ids`` ``[N]``; ``eval_items`` ``[E]``, each in the corpus."""
    keys = [item.item() if isinstance(item, np.generic) else item for item in np.asarray(corpus_ids).tolist()]
    popularity = np.asarray([counts.get(key, 0) for key in keys], np.float64)
    row_of = {item: row for row, item in enumerate(keys)}
    eval_rows = np.asarray([row_of[item] for item in np.asarray(eval_items).tolist()], np.int64)
    # target_ranks' rule (items scoring at least the target's count, ties against it) from one sorted copy: the
    # one score row every query shares, not an [eval rows, items] matrix (22k x 12k on Amazon Beauty).
    at_least = len(popularity) - np.searchsorted(np.sort(popularity), popularity[eval_rows], side="left")
    return summarize_ranks(at_least - 1)


def popularity_of_directory(data_dir: str, eval_files: str = "eval-*.tfrecord", item_feature: str = "item_id") -> dict:
    """``popularity_baseline`` of a retrieval directory as either writer leaves it: the counts of
    ``item_frequency.tsv``, the corpus of ``candidates.tfrecord`` and the evaluated items of ``eval_files``."""
    counts = read_item_frequency(os.path.join(data_dir, ITEM_FREQUENCY_FILE))
    spec = {item_feature: tf.io.FixedLenFeature([], tf.int64)}

    def items(files):
        batches = tf.data.TFRecordDataset(files).batch(1 << 16).map(lambda s: tf.io.parse_example(s, spec))
        return np.concatenate([batch[item_feature].numpy() for batch in batches])
    return popularity_baseline(counts, items([os.path.join(data_dir, CANDIDATES_FILE)]),
                               items(resolve_files(eval_files, data_dir)))
