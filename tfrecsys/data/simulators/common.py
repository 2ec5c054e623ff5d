"""What the ground-truth simulators share: settings from a config block, and writing a simulated log as
chronologically split TFRecord shards with ``metadata.json`` and ``ground_truth.npz``."""

import dataclasses
import json
import os

import numpy as np

from tfrecsys.data import tfrecord

SECONDS_PER_DAY = 86_400
START_TIMESTAMP = 1_700_000_000


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def solve_bias(logits: np.ndarray, target_rate: float, weights: np.ndarray | None = None) -> float:
    """The bias ``c`` with ``mean(w · sigmoid(logits + c)) = target_rate`` (``w`` = 1 when ``weights`` is None),
    by bisection: the left side is monotone in ``c``. Weights carry an examination probability, an attribution
    share or, normalised to mean 1, a conditioning probability (mean pCVR over clicks)."""
    weights = np.ones_like(logits) if weights is None else weights
    low, high = -30.0, 30.0
    for _ in range(80):
        mid = (low + high) / 2
        if (weights * sigmoid(logits + mid)).mean() < target_rate:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def item_world(rng: np.random.Generator, num_items: int, num_categories: int, latent_dim: int,
               category_spread: float) -> tuple[np.ndarray, np.ndarray]:
    """``(item_category [items], item_latent [items, latent_dim])``: category centres ~ N(0, I) and
    ``v_i = c_category(i) + category_spread · N(0, I)``, so items of one category are alike."""
    centers = rng.normal(size=(num_categories, latent_dim))
    item_category = rng.integers(0, num_categories, size=num_items)
    item_latent = centers[item_category] + category_spread * rng.normal(size=(num_items, latent_dim))
    return item_category, item_latent


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    labels = np.asarray(labels, bool)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    # Average ranks over ties so a constant score gives exactly 0.5.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    ranks = np.empty(len(scores), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    positives = labels.sum()
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def settings_from_config(cls, config):
    """``cls(**config)`` for a settings dataclass, naming unknown keys instead of a TypeError."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dict(config).items() if k != "kind"}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {unknown}; known: {sorted(fields)}")
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)


def power_law(size: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ∝ rank^-exponent over ``size`` entries, ranks in a random order."""
    weights = (rng.permutation(size) + 1.0) ** -exponent
    return weights / weights.sum()


def write_simulation(output_dir: str, name: str, config, columns: dict, truth: dict, eval_start: int,
                     num_shards: int, statistics: dict) -> dict:
    """Writes rows ``[0, eval_start)`` as ``train-*`` shards and the rest as ``eval-00000-of-00001``, with
    ``metadata.json`` (simulator, settings, row counts, ``statistics``) and ``ground_truth.npz`` (every
    array of ``truth``; per-row arrays are aligned with the rows, train then eval). Returns the metadata."""
    rows = len(next(iter(columns.values())))
    os.makedirs(output_dir, exist_ok=True)
    train = {k: v[:eval_start] for k, v in columns.items()}
    evaluation = {k: v[eval_start:] for k, v in columns.items()}
    train_files = tfrecord.write_sharded(train, output_dir, "train", num_shards)
    eval_files = tfrecord.write_sharded(evaluation, output_dir, "eval", 1)
    metadata = {"simulator": name, "config": dataclasses.asdict(config),
                "train_files": [os.path.basename(f) for f in train_files],
                "eval_files": [os.path.basename(f) for f in eval_files],
                "train_rows": eval_start, "eval_rows": rows - eval_start, **statistics}
    with open(os.path.join(output_dir, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    np.savez(os.path.join(output_dir, "ground_truth.npz"), **truth)
    return metadata


def eval_start_index(num_rows: int, eval_fraction: float) -> int:
    return int(round(num_rows * (1.0 - eval_fraction)))
