"""Sampled negatives of an event log: catalogue items a user did not act on, drawn against the ones they did.

Taobao's DIN/DIEN protocol (and DIEN's auxiliary loss) pairs every real behaviour with an item drawn uniformly
from the catalogue, never the real item itself: the target of a sampled row, and the negative behaviour
``ê_b[t]`` aligned with each history position ``t``. ``sample_other_items`` is that one rule, used by
preprocessing (``tfrecsys.data.preprocess``) for both.
"""

import numpy as np


def sample_other_items(catalogue, positives, rng: np.random.Generator, per_positive: int = 1) -> np.ndarray:
    """``[len(positives), per_positive]`` int64 indices into ``catalogue``: for each positive item, items drawn
    uniformly from the catalogue's other items (never the positive itself; draws are independent, so one
    row may repeat an item).

    ``catalogue`` ``[items]``: distinct item ids (int64 or strings); ``positives`` ``[n]``: the real items, of
    the catalogue's dtype. Rejection sampling: a draw equal to its positive is drawn again, which is uniform
    over the other items.
    """
    catalogue, positives = np.asarray(catalogue), np.asarray(positives)
    if len(catalogue) < 2:
        raise ValueError(f"sampled negatives need a catalogue of at least 2 distinct items, got {len(catalogue)}")
    draws = rng.integers(0, len(catalogue), (len(positives), per_positive))
    clash = catalogue[draws] == positives[:, np.newaxis]
    while clash.any():
        draws[clash] = rng.integers(0, len(catalogue), int(clash.sum()))
        clash = catalogue[draws] == positives[:, np.newaxis]
    return draws.astype(np.int64)
