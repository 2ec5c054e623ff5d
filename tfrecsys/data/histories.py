"""Per-user histories: the one place that decides which earlier events a row sees.

The rule, the same for preprocessing and every simulator: a row's history holds only events of the same user
with a timestamp strictly earlier than the row's, oldest first, the most recent ``max_len`` of them. Events in
the same second are not each other's history, so no history ever holds an event at or after its target's time
(a same-second event would be a leak: in production the model scores the row before that event is logged).

``history_rows`` returns row indices, so a caller gathers whatever columns it writes (items, categories,
timestamps, actions) from one decision; ``gather_histories`` does that gathering.
"""

from typing import Mapping, Optional

import numpy as np


def history_rows(users, timestamps, max_len: int, eligible=None, tiebreak=None) -> list:
    """Per row, the indices of the rows that form its history.

    ``users`` and ``timestamps`` ``[rows]`` (any order); ``eligible`` ``[rows]`` bool, which rows may enter a
    history (e.g. clicks only; default all); ``tiebreak`` ``[rows]``, the order of same-second events inside a
    history (default: their row order). Returns a list of ``[<= max_len]`` int64 arrays, the history of row
    ``r`` at position ``r``: rows of the same user with ``timestamp < timestamps[r]``, oldest first, the most
    recent ``max_len``.
    """
    users, timestamps = np.asarray(users), np.asarray(timestamps)
    if users.shape != timestamps.shape or users.ndim != 1:
        raise ValueError(f"users {users.shape} and timestamps {timestamps.shape} must be 1-d and of one length")
    if max_len < 1:
        raise ValueError(f"history length must be positive, got {max_len}")
    rows = len(users)
    eligible = np.ones(rows, bool) if eligible is None else np.asarray(eligible, bool)
    tiebreak = np.arange(rows) if tiebreak is None else np.asarray(tiebreak)
    if eligible.shape != users.shape or tiebreak.shape != users.shape:
        raise ValueError(f"eligible {eligible.shape} and tiebreak {tiebreak.shape} must have the users' shape "
                         f"{users.shape}")
    # lexsort is stable and its last key is the primary one: user, then time, then tiebreak, then row.
    order = np.lexsort((np.arange(rows), tiebreak, timestamps, users))
    histories = [None] * rows
    boundaries = np.flatnonzero(users[order][1:] != users[order][:-1]) + 1
    for block in np.split(order, boundaries) if rows else ():
        candidates = block[eligible[block]]
        candidate_times = timestamps[candidates]
        # How many of the user's eligible events happened strictly before each event.
        earlier = np.searchsorted(candidate_times, timestamps[block], side="left")
        for row, stop in zip(block.tolist(), earlier.tolist()):
            histories[row] = candidates[max(0, stop - max_len):stop].astype(np.int64)
    return histories


def gather_histories(rows: list, columns: Mapping[str, np.ndarray],
                     dtypes: Optional[Mapping[str, object]] = None) -> dict:
    """``{name: [history values of each row]}`` for every column of ``columns`` (arrays ``[rows]``), taking the
    rows ``history_rows`` chose; ``dtypes`` casts a column's histories (e.g. clicks to int64 actions)."""
    out = {}
    for name, values in columns.items():
        values = np.asarray(values)
        dtype = (dtypes or {}).get(name, values.dtype)
        out[name] = [values[history].astype(dtype) for history in rows]
    return out
