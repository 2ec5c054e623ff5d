"""Next-item datasets for generative retrieval (SASRec, HSTU): one training row and one eval row per user.

A retrieval dataset directory (``tfrecsys.data.retrieval_data``: the same candidates file, item frequencies and
popularity floor) whose rows carry a user's whole recent history with its label sequence, leave-one-out:

* ``train-*``: per user, the last training event (the second-to-last event) with ``hist_item_id`` /
  ``hist_timestamp``, the user's events strictly before it (``tfrecsys.data.histories``, the most recent
  ``history_len``, oldest first), ``next_item_id`` ``= hist_item_id[1:] + [item_id]``, the item that follows
  each history position, and the event's own ``item_id`` and ``timestamp``. One row teaches every position;
* ``eval-*``: per user, the last event with the same columns: the last label is the held-out item;
* ``item_frequency.tsv`` counts every training event (not only one per user), the popularity ranking too.

``tfrecsys-preprocess`` writes the same layout from a source dataset with ``examples_per_user="last"`` and a
``next_item_id`` feature (``tfrecsys.data.preprocess``); the ``sequential_next_item`` simulator through
``write_next_item_dataset``.
"""

import numpy as np

from tfrecsys.data.histories import history_rows
from tfrecsys.data.retrieval_data import write_retrieval_dataset

NEXT_PREFIX = "next_"


def next_items(history: np.ndarray, item) -> np.ndarray:
    """The label sequence of a history: ``history[1:] + [item]`` (empty for an empty history)."""
    history = np.asarray(history)
    return np.concatenate([history[1:], np.asarray([item], history.dtype)]) if len(history) else history[:0]


def next_item_rows(user_ids, item_ids, timestamps, history_len: int) -> tuple[dict, dict, np.ndarray]:
    """``(columns, split, train_events)`` of the layout above from events ``[n]`` in any order:
    ``columns`` of the written rows (a row without history teaches nothing and is left out, so a user
    with one event only counts as a training event), ``split`` ``{"train": rows, "eval": rows}`` into
    ``columns`` and ``train_events`` the item ids of every training event."""
    users, items, times = (np.asarray(a) for a in (user_ids, item_ids, timestamps))
    histories = history_rows(users, times, history_len)
    order = np.lexsort((np.arange(len(users)), times, users))
    boundaries = np.flatnonzero(users[order][1:] != users[order][:-1]) + 1
    picked, is_eval, train_events = [], [], []
    for block in np.split(order, boundaries) if len(order) else ():
        train_events.extend(items[block[:-1] if len(block) > 1 else block].tolist())
        if len(block) < 2:
            continue
        for row, evaluated in ((block[-2], False), (block[-1], True)):
            if len(histories[row]):
                picked.append(row)
                is_eval.append(evaluated)
    picked = np.asarray(picked, np.int64)
    columns = {"user_id": users[picked], "item_id": items[picked], "timestamp": times[picked],
               "hist_item_id": [items[histories[r]] for r in picked],
               "hist_timestamp": [times[histories[r]] for r in picked],
               NEXT_PREFIX + "item_id": [next_items(items[histories[r]], items[r]) for r in picked]}
    is_eval = np.asarray(is_eval, bool)
    split = {"train": np.flatnonzero(~is_eval), "eval": np.flatnonzero(is_eval)}
    return columns, split, np.asarray(train_events, items.dtype)


def write_next_item_dataset(output_dir: str, user_ids, item_ids, timestamps, history_len: int, corpus_ids,
                            num_shards: int = 2, extra_metadata=None) -> dict:
    """Writes the layout above for events ``[n]`` and the item corpus ``corpus_ids``; returns the metadata."""
    columns, split, train_events = next_item_rows(user_ids, item_ids, timestamps, history_len)
    ids, counts = np.unique(train_events, return_counts=True)
    return write_retrieval_dataset(
        output_dir, columns, split, {"item_id": np.asarray(corpus_ids)}, num_shards=num_shards,
        item_counts=dict(zip(ids.tolist(), counts.tolist())),
        extra_metadata={"layout": "next_item: one training and one eval row per user, label sequence "
                                  "next_item_id", "history_len": history_len, **(extra_metadata or {})})
