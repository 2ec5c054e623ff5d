"""A seeded click-log simulator with known ground truth, the project's default data.

The world (all of it drawn from ``seed``, so two runs give identical data):

* items have a category, a latent vector ``v_i = c_category(i) + noise`` and a quality ``b_i``; their exposure
  follows a power law, ``P(show item of popularity rank r) ∝ r^(-popularity_exponent)``;
* users have a latent taste ``u`` (``latent_dim``), a price sensitivity ``s_u`` and a power-law activity;
* an impression of item ``i`` to user ``u`` at time ``t`` is clicked with probability
  ``p = sigmoid(affinity_scale · u·v_i / sqrt(d) + b_i − s_u · price_i + bias)``, ``bias`` set so the mean
  click rate is ``target_ctr``;
* each impression carries the user's clicked items (and their categories) strictly before ``t``, oldest
  first, at most ``history_len`` of them.

Because ``p`` is known for every row, ``oracle_auc`` (the AUC of the true probabilities on the eval split) is
the ceiling a model can reach, and tests check that a trained model gets close to it.
"""

import dataclasses
import json
import os

import numpy as np

from tfrecsys.data import tfrecord
from tfrecsys.data.histories import history_rows
from tfrecsys.data.simulators.common import auc, item_world, power_law, settings_from_config, sigmoid, solve_bias


@dataclasses.dataclass(frozen=True)
class ClickLogConfig:
    num_users: int = 2000
    num_items: int = 1000
    num_categories: int = 20
    latent_dim: int = 8
    num_events: int = 120_000
    history_len: int = 50
    popularity_exponent: float = 1.1
    user_activity_sigma: float = 0.8
    affinity_scale: float = 2.0
    item_quality_std: float = 0.6
    category_spread: float = 0.5
    target_ctr: float = 0.15
    eval_fraction: float = 0.1
    num_shards: int = 4
    seed: int = 0

    @classmethod
    def from_config(cls, config) -> "ClickLogConfig":
        return settings_from_config(cls, config)


def simulate_click_log(config: ClickLogConfig) -> tuple[dict, dict]:
    """Returns ``(columns, truth)``: columns hold one entry per impression in time order; truth holds the
    hidden parameters and the true click probability of every row."""
    rng = np.random.default_rng(config.seed)
    d = config.latent_dim
    item_category, item_latent = item_world(rng, config.num_items, config.num_categories, d, config.category_spread)
    item_quality = config.item_quality_std * rng.normal(size=config.num_items)
    item_price = rng.lognormal(mean=0.0, sigma=0.5, size=config.num_items)
    exposure = power_law(config.num_items, config.popularity_exponent, rng)

    user_latent = rng.normal(size=(config.num_users, d))
    price_sensitivity = np.abs(rng.normal(0.5, 0.3, size=config.num_users))
    activity = rng.lognormal(0.0, config.user_activity_sigma, size=config.num_users)
    activity /= activity.sum()

    n = config.num_events
    users = rng.choice(config.num_users, size=n, p=activity)
    items = rng.choice(config.num_items, size=n, p=exposure)
    # Distinct, increasing timestamps over 30 days: rows are generated in time order.
    timestamps = np.sort(rng.choice(30 * 86_400, size=n, replace=False)).astype(np.int64) + 1_700_000_000
    standardized_price = (np.log(item_price) - np.log(item_price).mean()) / np.log(item_price).std()
    logits = (config.affinity_scale * np.einsum("nd,nd->n", user_latent[users], item_latent[items]) / np.sqrt(d)
              + item_quality[items] - price_sensitivity[users] * standardized_price[items])
    bias = solve_bias(logits, config.target_ctr)
    probability = sigmoid(logits + bias)
    clicks = (rng.random(n) < probability).astype(np.int64)

    history = history_rows(users, timestamps, config.history_len, eligible=clicks == 1)
    histories = [items[rows].astype(np.int64) for rows in history]
    seen_count = _earlier_impressions(users, config.num_users)
    columns = {
        "example_id": np.arange(n, dtype=np.int64),
        "timestamp": timestamps,
        "user_id": users.astype(np.int64),
        "item_id": items.astype(np.int64),
        "item_category": item_category[items].astype(np.int64),
        "item_price": item_price[items].astype(np.float32),
        "user_activity": np.log1p(seen_count).astype(np.float32),
        "hist_item_id": histories,
        "hist_category": [item_category[h].astype(np.int64) for h in histories],
        "click": clicks.astype(np.float32),
    }
    truth = {"probability": probability, "bias": bias, "item_exposure": exposure, "item_quality": item_quality,
             "item_latent": item_latent, "user_latent": user_latent, "item_category": item_category}
    return columns, truth


def _earlier_impressions(users, num_users):
    """Per row, how many impressions the user had before it (rows are in time order)."""
    seen = np.zeros(num_users, np.int64)
    seen_count = np.empty(len(users), np.int64)
    for row, user in enumerate(users.tolist()):
        seen_count[row] = seen[user]
        seen[user] += 1
    return seen_count


def _slice(columns: dict, start: int, stop: int) -> dict:
    return {name: values[start:stop] for name, values in columns.items()}


def write_click_log(config: ClickLogConfig, output_dir: str) -> dict:
    """Simulates and writes ``train-*.tfrecord``, ``eval-*.tfrecord`` and ``metadata.json``.

    The split is chronological: the last ``eval_fraction`` of impressions is the eval set. Returns the
    metadata (row counts, click rate, oracle AUC, popularity statistics).
    """
    columns, truth = simulate_click_log(config)
    n = len(columns["example_id"])
    split = int(round(n * (1.0 - config.eval_fraction)))
    os.makedirs(output_dir, exist_ok=True)
    train_files = tfrecord.write_sharded(_slice(columns, 0, split), output_dir, "train", config.num_shards)
    eval_files = tfrecord.write_sharded(_slice(columns, split, n), output_dir, "eval", 1)

    impressions_per_item = np.bincount(columns["item_id"], minlength=config.num_items)
    top_decile = np.sort(impressions_per_item)[::-1][: max(1, config.num_items // 10)].sum() / n
    metadata = {
        "simulator": "click_log",
        "config": dataclasses.asdict(config),
        "train_files": [os.path.basename(f) for f in train_files],
        "eval_files": [os.path.basename(f) for f in eval_files],
        "train_rows": split,
        "eval_rows": n - split,
        "click_rate": float(columns["click"].mean()),
        "oracle_auc": auc(columns["click"][split:], truth["probability"][split:]),
        "top_decile_impression_share": float(top_decile),
        "bias": float(truth["bias"]),
    }
    with open(os.path.join(output_dir, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    np.savez(os.path.join(output_dir, "ground_truth.npz"),
             **{k: v for k, v in truth.items() if isinstance(v, np.ndarray)})
    return metadata
