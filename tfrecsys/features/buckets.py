"""Bucket cut points for a number column, chosen from training values: what an id feature's ``boundaries``
(``tfrecsys.features.schema``) holds when a continuous input is embedded by its range."""

import numpy as np


def equal_frequency_boundaries(values, max_buckets: int, counts=None) -> tuple:
    """Cut points for at most ``max_buckets`` buckets holding about equal numbers of ``values``.

    Each distinct value stays whole in one bucket, so a column with at most ``max_buckets`` distinct values
    (an age in years, weeks worked 0-52) gets one bucket per value, and a value heavier than its share (the
    zero of a capital-gains column, 96 % of rows) gets a bucket of its own while the buckets left share the
    rest equally. A cut point lies midway between two neighbouring distinct values, so an unseen value lands
    in the bucket of the nearer one. ``values``: any shape; ``counts``: how many rows hold each of ``values``
    (default: one each), as a value count gives them. Returns strictly increasing floats (empty when all
    values are equal).
    """
    if max_buckets < 2:
        raise ValueError(f"max_buckets must be at least 2, got {max_buckets}")
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    weights = np.ones(values.size, np.int64) if counts is None else np.asarray(counts, np.int64).reshape(-1)
    distinct, where = np.unique(values, return_inverse=True)
    counts = np.bincount(where.reshape(-1), weights=weights, minlength=distinct.size).astype(np.int64)
    if distinct.size and not np.isfinite(distinct).all():
        raise ValueError("bucket boundaries need finite values; the column holds NaN or infinity")
    boundaries = []
    rows_left, buckets_left, in_bucket = int(counts.sum()), max_buckets, 0
    for i, count in enumerate(counts[:-1]):
        in_bucket += int(count)
        # The share is recomputed after each bucket, so a heavy value does not starve the others of buckets.
        if buckets_left > 1 and in_bucket * buckets_left >= rows_left:
            boundaries.append(float((distinct[i] + distinct[i + 1]) / 2))
            rows_left -= in_bucket
            buckets_left -= 1
            in_bucket = 0
    return tuple(boundaries)
