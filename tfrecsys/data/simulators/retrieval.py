"""A seeded retrieval world with known item popularity, for tests that check what a two-tower model learned.

The world (all drawn from ``seed``; two runs give identical files):

* items have a category, a latent vector ``v_i = c_category(i) + category_spread · noise`` and a popularity
  ``π_i ∝ r_i^(−popularity_exponent)`` for a random popularity rank ``r_i``;
* users have a latent taste ``u`` and ``1 + Poisson(events_per_user − 1)`` interactions at random times;
* each interaction of user ``u`` is item ``i`` with probability
  ``P(i | u) = π_i · exp(affinity · ⟨u, v_i⟩ / √d) / Z_u``.

So the data's item distribution is dominated by popularity, while users differ by taste. A model trained with
in-batch negatives and no correction learns ``log P(i | u) − log p(i)`` (popularity divided out) and ranks tail
items too high; the logQ correction restores ``log P(i | u)``. ``ground_truth.npz`` holds ``π``, the true item
marginal of the interactions, the latents and ``P(i | u)``; ``metadata.json`` records the Recall@K of ranking by
the true ``P(i | u)`` (the ceiling) and by training popularity (the floor to beat).
"""

import dataclasses
import os

import numpy as np

from tfrecsys.data.histories import history_rows
from tfrecsys.data.retrieval_data import HISTORY_FEATURE, write_retrieval_dataset
from tfrecsys.data.simulators.common import item_world, settings_from_config
from tfrecsys.metrics.retrieval import summarize_ranks, target_ranks


@dataclasses.dataclass(frozen=True)
class RetrievalWorldConfig:
    num_users: int = 1000
    num_items: int = 1000
    num_categories: int = 20
    latent_dim: int = 8
    events_per_user: float = 40.0
    popularity_exponent: float = 1.2
    affinity: float = 3.0
    category_spread: float = 0.5
    history_len: int = 20
    num_shards: int = 2
    seed: int = 0

    @classmethod
    def from_config(cls, config) -> "RetrievalWorldConfig":
        config = settings_from_config(cls, config)
        if config.events_per_user < 1:
            raise ValueError(f"events_per_user must be at least 1, got {config.events_per_user}")
        return config


def simulate_interactions(config: RetrievalWorldConfig) -> tuple[dict, dict]:
    """Returns ``(columns, truth)``: one entry per interaction (user_id, timestamp, item_id, item_category) and
    the hidden world."""
    rng = np.random.default_rng(config.seed)
    d = config.latent_dim
    item_category, item_latent = item_world(rng, config.num_items, config.num_categories, d, config.category_spread)
    rank = rng.permutation(config.num_items) + 1
    popularity = rank.astype(np.float64) ** -config.popularity_exponent
    popularity /= popularity.sum()
    user_latent = rng.normal(size=(config.num_users, d))

    logits = np.log(popularity)[np.newaxis, :] + config.affinity * user_latent @ item_latent.T / np.sqrt(d)
    logits -= logits.max(axis=1, keepdims=True)
    conditional = np.exp(logits)
    conditional /= conditional.sum(axis=1, keepdims=True)

    events = 1 + rng.poisson(config.events_per_user - 1, size=config.num_users)
    users = np.repeat(np.arange(config.num_users), events)
    items = np.concatenate([rng.choice(config.num_items, size=n, p=conditional[u]) for u, n in enumerate(events)])
    # Distinct times over 30 days, so every user's events have a strict order.
    timestamps = rng.choice(30 * 86_400, size=len(users), replace=False).astype(np.int64) + 1_700_000_000
    columns = {"user_id": users.astype(np.int64), "timestamp": timestamps, "item_id": items.astype(np.int64),
               "item_category": item_category[items].astype(np.int64)}
    item_marginal = np.bincount(users, minlength=config.num_users) @ conditional / len(users)
    truth = {"popularity": popularity, "item_marginal": item_marginal, "conditional": conditional,
             "user_latent": user_latent, "item_latent": item_latent, "item_category": item_category}
    return columns, truth


def leave_one_out(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> dict:
    """``{"train": rows, "eval": rows}``, each in global time order: each user's last event by (timestamp,
    item) is evaluated, the earlier ones train (a user with a single event only trains)."""
    order = np.lexsort((items, timestamps, users))
    train, evaluation = [], []
    for block in np.split(order, np.flatnonzero(np.diff(users[order])) + 1):
        if len(block) > 1:
            train.extend(block[:-1].tolist())
            evaluation.append(int(block[-1]))
        else:
            train.extend(block.tolist())
    by_time = lambda rows: np.asarray(sorted(rows, key=lambda r: (timestamps[r], users[r], items[r])), np.int64)
    return {"train": by_time(train), "eval": by_time(evaluation)}


def write_retrieval_world(config: RetrievalWorldConfig, output_dir: str) -> dict:
    """Simulates and writes a retrieval dataset directory (``tfrecsys.data.retrieval_data``) plus
    ``ground_truth.npz``; returns the metadata."""
    columns, truth = simulate_interactions(config)
    users, items, timestamps = columns["user_id"], columns["item_id"], columns["timestamp"]
    split = leave_one_out(users, items, timestamps)
    histories = [items[rows] for rows in history_rows(users, timestamps, config.history_len, tiebreak=items)]
    interactions = {**columns, HISTORY_FEATURE: histories,
                    "reward": np.ones(len(columns["item_id"]), np.float32)}
    corpus = np.arange(config.num_items, dtype=np.int64)
    candidates = {"item_id": corpus, "item_category": truth["item_category"].astype(np.int64)}

    eval_rows = split["eval"]
    eval_users, eval_items = columns["user_id"][eval_rows], columns["item_id"][eval_rows]
    train_counts = np.bincount(columns["item_id"][split["train"]], minlength=config.num_items)
    oracle = summarize_ranks(target_ranks(truth["conditional"][eval_users], eval_items).numpy())
    top_decile = np.sort(train_counts)[::-1][: max(1, config.num_items // 10)].sum() / train_counts.sum()
    metadata = write_retrieval_dataset(
        output_dir, interactions, split, candidates, num_shards=config.num_shards,
        extra_metadata={"simulator": "retrieval", "config": dataclasses.asdict(config), "oracle": oracle,
                        "top_decile_interaction_share": float(top_decile)})
    np.savez(os.path.join(output_dir, "ground_truth.npz"), **truth)
    return metadata
