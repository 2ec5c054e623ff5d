"""Sequential interests that drift, for behaviour-sequence models (DIN, DIEN, SIM, HSTU).

The world, all drawn from ``seed``:

* items belong to one of ``num_categories`` categories, with a quality ``b_i`` and a power-law popularity
  inside their category;
* every user has ``long_term_interests`` categories with weights (SIM's long-range interests) and, at each
  event, one *current* interest. Between two consecutive events the current interest changes with
  probability ``drift_rate`` (DIEN's interest evolution): the new one is another long-term interest, or with
  probability ``explore_rate`` a category outside the long-term set;
* an impression shows an item of the current interest with probability ``relevant_exposure``, else an item
  of a uniformly drawn category, and is clicked with probability
  ``p = sigmoid(current_boost·[c_i = current] + long_term_boost·[c_i ∈ long-term, c_i ≠ current] + b_i + bias)``,
  ``bias`` set so the mean click rate is ``target_ctr``.

Each row carries the user's history strictly before it (timestamps of a user are strictly increasing):
with ``history="clicks"`` the clicked items with their categories and timestamps (DIN/DIEN/SIM), with
``history="impressions"`` every earlier impression with its action (1 = click) as well (HSTU's interleaved
stream). With ``lifelong_store`` the histories are instead written once per user to
``user_histories.parquet`` (``tfrecsys.data.user_histories``: columns ``item_id``, ``category``, and
``action`` for impressions), and the rows hold only the user and the time, from which the input pipeline cuts
histories of any length (SIM's lifelong history beside DIN's recent one). ``warmup_events`` (the first events
of each user only build history) and ``row_fraction`` (the share of the other events kept as rows) keep the
rows few while the histories stay long. The ground truth holds, per row, the true click probability, the
current interest, whether it just changed, and whether the candidate is in the current or a long-term
interest.
"""

import dataclasses
import os

import numpy as np

from tfrecsys.data.histories import gather_histories, history_rows
from tfrecsys.data.next_item import write_next_item_dataset
from tfrecsys.data.user_histories import write_user_histories
from tfrecsys.data.simulators.common import (SECONDS_PER_DAY, START_TIMESTAMP, auc, eval_start_index, power_law,
                                             settings_from_config, sigmoid, solve_bias, write_simulation)

HISTORY_KINDS = ("clicks", "impressions")
USER_HISTORIES_FILE = "user_histories.parquet"


@dataclasses.dataclass(frozen=True)
class SequentialConfig:
    num_users: int = 1000
    num_items: int = 2000
    num_categories: int = 40
    events_per_user: int = 120  # mean; each user gets between half and 1.5 times as many
    long_term_interests: int = 3
    drift_rate: float = 0.05
    explore_rate: float = 0.2
    relevant_exposure: float = 0.5
    current_boost: float = 2.5
    long_term_boost: float = 1.2
    item_quality_std: float = 0.5
    popularity_exponent: float = 1.0
    target_ctr: float = 0.1
    history: str = "clicks"
    history_len: int = 100
    mean_gap_seconds: float = 3600.0
    eval_fraction: float = 0.1
    num_shards: int = 4
    lifelong_store: bool = False
    warmup_events: int = 0
    row_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.history not in HISTORY_KINDS:
            raise ValueError(f"history must be one of {HISTORY_KINDS}, got {self.history!r}")
        if not 1 <= self.long_term_interests < self.num_categories:
            raise ValueError("long_term_interests must be between 1 and num_categories - 1")
        if self.num_items < self.num_categories:
            raise ValueError("num_items must be at least num_categories (every category needs an item)")
        if not 0.0 < self.row_fraction <= 1.0 or self.warmup_events < 0:
            raise ValueError("row_fraction must be in (0, 1] and warmup_events non-negative, got "
                             f"{self.row_fraction} and {self.warmup_events}")

    @classmethod
    def from_config(cls, config) -> "SequentialConfig":
        return settings_from_config(cls, config)


class _World:
    def __init__(self, config: SequentialConfig, rng: np.random.Generator):
        c = config.num_categories
        self.item_category = rng.permutation(np.arange(config.num_items) % c)
        self.item_quality = config.item_quality_std * rng.normal(size=config.num_items)
        self.category_items = [np.flatnonzero(self.item_category == k) for k in range(c)]
        self.category_cdf = [np.cumsum(power_law(len(items), config.popularity_exponent, rng))
                             for items in self.category_items]
        self.long_term = np.stack([rng.choice(c, config.long_term_interests, replace=False)
                                   for _ in range(config.num_users)])
        self.long_term_weights = rng.dirichlet(np.ones(config.long_term_interests), size=config.num_users)

    def items_of(self, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        items = np.empty(len(categories), np.int64)
        uniforms = rng.random(len(categories))
        for category in np.unique(categories):
            rows = np.flatnonzero(categories == category)
            picks = np.searchsorted(self.category_cdf[category], uniforms[rows], side="right")
            items[rows] = self.category_items[category][np.minimum(picks, len(self.category_items[category]) - 1)]
        return items


def _next_interest(current: int, user: int, world: _World, config: SequentialConfig, rng) -> int:
    """A different category: another long-term interest, or (explore_rate) one outside the long-term set."""
    long_term = world.long_term[user]
    others = [k for k in range(len(long_term)) if long_term[k] != current]
    if others and rng.random() >= config.explore_rate:
        weights = world.long_term_weights[user][others]
        return int(long_term[others[rng.choice(len(others), p=weights / weights.sum())]])
    outside = np.setdiff1d(np.arange(config.num_categories), long_term)
    outside = outside[outside != current]
    return int(rng.choice(outside))


def _user_events(user: int, world: _World, config: SequentialConfig, rng) -> dict:
    n = int(rng.integers(config.events_per_user // 2, config.events_per_user * 3 // 2 + 1))
    gaps = 1 + rng.exponential(config.mean_gap_seconds, n).astype(np.int64)
    timestamps = START_TIMESTAMP + int(rng.integers(0, 5 * SECONDS_PER_DAY)) + np.cumsum(gaps)
    first = int(world.long_term[user][rng.choice(config.long_term_interests, p=world.long_term_weights[user])])
    switched = rng.random(n) < config.drift_rate
    switched[0] = False
    current = np.empty(n, np.int64)
    interest, start = first, 0
    for position in np.flatnonzero(switched):
        current[start:position] = interest
        interest = _next_interest(interest, user, world, config, rng)
        start = position
    current[start:] = interest
    relevant = rng.random(n) < config.relevant_exposure
    categories = np.where(relevant, current, rng.integers(0, config.num_categories, n))
    items = world.items_of(categories, rng)
    is_current = categories == current
    in_long_term = np.isin(categories, world.long_term[user])
    logits = (config.current_boost * is_current + config.long_term_boost * (in_long_term & ~is_current)
              + world.item_quality[items])
    return {"user_id": np.full(n, user, np.int64), "timestamp": timestamps, "item_id": items,
            "item_category": categories, "logit": logits, "current_interest": current, "switched": switched,
            "is_current": is_current, "in_long_term": in_long_term}


def _histories(events: dict, clicks: np.ndarray, config: SequentialConfig) -> dict:
    """Per row, the user's clicks (or impressions) strictly before it, oldest first, the most recent
    ``history_len``."""
    eligible = clicks == 1 if config.history == "clicks" else None
    rows = history_rows(events["user_id"], events["timestamp"], config.history_len, eligible=eligible)
    columns = {"hist_item_id": events["item_id"], "hist_category": events["item_category"],
               "hist_timestamp": events["timestamp"]}
    if config.history == "impressions":
        columns["hist_action"] = clicks
    return gather_histories(rows, columns, dtypes={"hist_action": np.int64})


def simulate_sequential(config: SequentialConfig) -> tuple[dict, dict]:
    """Returns ``(columns, truth)``: one row per impression in time order; truth per row and of the world."""
    columns, truth, _ = _simulate(config)
    return columns, truth


def _simulate(config: SequentialConfig) -> tuple[dict, dict, dict]:
    """``simulate_sequential``'s ``(columns, truth)`` and, with ``lifelong_store``, the history event log."""
    rng = np.random.default_rng(config.seed)
    world = _World(config, rng)
    per_user = [_user_events(user, world, config, rng) for user in range(config.num_users)]
    logits = np.concatenate([events["logit"] for events in per_user])
    bias = solve_bias(logits, config.target_ctr)
    rows, store_events = [], []
    for events in per_user:
        probability = sigmoid(events["logit"] + bias)
        clicks = (rng.random(len(probability)) < probability).astype(np.int64)
        if config.lifelong_store:
            store_events.append(_store_events(events, clicks, config))
            histories = {}
        else:
            histories = _histories(events, clicks, config)
        kept = np.arange(len(clicks)) >= config.warmup_events
        if config.row_fraction < 1.0:  # no draw otherwise: the default world stays what it always was
            kept &= rng.random(len(clicks)) < config.row_fraction
        rows.append({name: values[kept] if isinstance(values, np.ndarray) else [values[i] for i in np.flatnonzero(kept)]
                     for name, values in {**events, **histories, "probability": probability, "click": clicks}.items()})
    merged = {name: (np.concatenate([r[name] for r in rows]) if not name.startswith("hist_")
                     else [h for r in rows for h in r[name]]) for name in rows[0]}
    order = np.lexsort((merged["user_id"], merged["timestamp"]))
    merged = {name: ([values[i] for i in order] if isinstance(values, list) else values[order])
              for name, values in merged.items()}
    history_names = [n for n in ("hist_item_id", "hist_category", "hist_timestamp", "hist_action") if n in merged]
    columns = {"example_id": np.arange(len(order), dtype=np.int64), "timestamp": merged["timestamp"],
               "user_id": merged["user_id"], "item_id": merged["item_id"], "item_category": merged["item_category"],
               **{n: merged[n] for n in history_names}, "click": merged["click"].astype(np.float32)}
    truth = {"probability": merged["probability"], "current_interest": merged["current_interest"],
             "switched": merged["switched"], "is_current": merged["is_current"],
             "in_long_term": merged["in_long_term"], "long_term_interests": world.long_term,
             "long_term_weights": world.long_term_weights, "item_category": world.item_category,
             "item_quality": world.item_quality, "bias": np.float64(bias)}
    log = {name: np.concatenate([e[name] for e in store_events]) for name in store_events[0]} if store_events else {}
    return columns, truth, log


def _store_events(events: dict, clicks: np.ndarray, config: SequentialConfig) -> dict:
    """The user's history events (clicks, or every impression with its action) for the per-user store."""
    keep = clicks == 1 if config.history == "clicks" else np.ones(len(clicks), bool)
    out = {"user_id": events["user_id"][keep], "timestamp": events["timestamp"][keep],
           "item_id": events["item_id"][keep], "category": events["item_category"][keep]}
    if config.history == "impressions":
        out["action"] = clicks[keep]
    return out


def write_sequential(config: SequentialConfig, output_dir: str) -> dict:
    """Simulates and writes train/eval shards (the last ``eval_fraction`` of impressions in time is eval), and
    with ``lifelong_store`` the per-user history store ``user_histories.parquet`` beside them."""
    columns, truth, log = _simulate(config)
    statistics = {}
    if config.lifelong_store:
        os.makedirs(output_dir, exist_ok=True)
        stored = write_user_histories(os.path.join(output_dir, USER_HISTORIES_FILE), log["user_id"], log["timestamp"],
                                      {name: values for name, values in log.items()
                                       if name not in ("user_id", "timestamp")})
        statistics["history_events_per_user"] = stored["events"] / max(stored["users"], 1)
    rows = len(columns["example_id"])
    eval_start = eval_start_index(rows, config.eval_fraction)
    clicks = columns["click"]
    statistics.update({
        "click_rate": float(clicks.mean()),
        "oracle_auc": auc(clicks[eval_start:], truth["probability"][eval_start:]),
        "switch_rate": float(truth["switched"].mean()),
        "ctr_current_interest": float(clicks[truth["is_current"]].mean()),
        "ctr_long_term_not_current": float(clicks[truth["in_long_term"] & ~truth["is_current"]].mean()),
        "ctr_other": float(clicks[~truth["in_long_term"] & ~truth["is_current"]].mean()),
        "bias": float(truth["bias"]),
    })
    return write_simulation(output_dir, "sequential", config, columns, truth, eval_start, config.num_shards,
                            statistics)


def write_sequential_next_item(config: SequentialConfig, output_dir: str) -> dict:
    """The same world as a next-item dataset (``tfrecsys.data.next_item``): each user's clicked items in time
    order, leave-one-out, with ``history_len`` items of history. The next click mostly follows the current
    interest, so a sequence model can beat the popularity ranking the metadata records."""
    columns, _ = simulate_sequential(config)
    clicked = columns["click"] == 1
    return write_next_item_dataset(
        output_dir, columns["user_id"][clicked], columns["item_id"][clicked], columns["timestamp"][clicked],
        config.history_len, np.arange(config.num_items, dtype=np.int64), num_shards=config.num_shards,
        extra_metadata={"simulator": "sequential_next_item", "clicks": int(clicked.sum())})
