"""Clicks whose conversions arrive with a known delay distribution, for delayed-feedback models (DEFUSE).

The world, all drawn from ``seed``:

* users and items have latent vectors (items around their category's centre) and items a quality ``b_i``;
* a click of user ``u`` on item ``i`` converts eventually with probability
  ``q = sigmoid(affinity_scale · u·v / sqrt(dim) + b_i + bias)``;
* optionally the world drifts (``drift_amplitude``, ``global_drift_amplitude``, ``drift_period_days``; 0 by
  default: stationary): at click time ``t`` the conversion logit gains
  ``A_item · sin(2πt/P + φ_i) + A_global · sin(2πt/P)`` with a phase ``φ_i`` per item, so each item's CVR rises
  and falls at its own time (fresh rows tell a model which items are converting now) and the mean CVR swings
  with the global term; ``bias`` is solved over the whole period, so ``target_cvr`` is the period's mean;
* the delay from click to conversion has the known CDF of a two-component exponential mixture:
  ``F_c(t) = fast_share·(1 - exp(-t/fast_mean)) + (1 - fast_share)·(1 - exp(-t/slow_mean_c))`` where the slow
  mean depends on the item's category (log-normal around ``slow_mean_days``), so the delay depends on ``x``;
* a conversion counts only inside the attribution window ``w_a`` (``attribution_window_days``): the label is
  ``converted = eventual ∧ delay ≤ w_a``, the true CVR ``p(x) = q·F_c(w_a)``; ``bias`` is set so the mean
  ``p`` is ``target_cvr``;
* a stream trainer sees each click after the observation window ``w_o`` (``observation_window_seconds``):
  conversions by then are immediate positives (IP), later ones inside ``w_a`` are fake negatives at that
  time (FN), the rest real negatives (RN).

Rows are clicks in time order with ``click_timestamp`` and ``conversion_timestamp`` (-1 when the click did
not convert within ``w_a``), as in the Criteo Conversion Logs; labels are final (as read ``w_a`` after the
last click) plus ``converted_in_window`` (the label seen at click + ``w_o``). The ground truth holds per row
``p(x)``, ``p(y=1, d ≤ w_o | x)`` and DEFUSE's ``f_dp(x) = p(y=1, w_o < d ≤ w_a | x)`` (all at the click's
time), the sample type, the delay (also for conversions after ``w_a``) and the drift's logit term, and the
delay distribution's parameters and the items' drift phases.
"""

import dataclasses

import numpy as np

from tfrecsys.data.simulators.common import (SECONDS_PER_DAY, START_TIMESTAMP, auc, eval_start_index, item_world,
                                             power_law, settings_from_config, sigmoid, solve_bias,
                                             write_simulation)

SAMPLE_TYPES = ("IP", "FN", "RN")  # codes 0, 1, 2 of truth["sample_type"]
NO_CONVERSION = -1


@dataclasses.dataclass(frozen=True)
class DelayedFeedbackConfig:
    num_users: int = 2000
    num_items: int = 1000
    num_categories: int = 20
    latent_dim: int = 8
    num_clicks: int = 100_000
    days: int = 14
    target_cvr: float = 0.1
    affinity_scale: float = 2.0
    item_quality_std: float = 0.6
    popularity_exponent: float = 1.0
    fast_share: float = 0.4
    fast_mean_seconds: float = 1800.0
    slow_mean_days: float = 2.0
    slow_mean_spread: float = 0.5
    observation_window_seconds: int = 3600
    attribution_window_days: int = 7
    drift_amplitude: float = 0.0
    global_drift_amplitude: float = 0.0
    drift_period_days: float = 7.0
    eval_fraction: float = 0.1
    num_shards: int = 4
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.observation_window_seconds < self.attribution_window_days * SECONDS_PER_DAY:
            raise ValueError("observation_window_seconds must be positive and shorter than the attribution window")
        if not 0.0 <= self.fast_share <= 1.0:
            raise ValueError(f"fast_share must lie in [0, 1], got {self.fast_share}")
        if self.drift_period_days <= 0:
            raise ValueError(f"drift_period_days must be positive, got {self.drift_period_days}")

    @classmethod
    def from_config(cls, config) -> "DelayedFeedbackConfig":
        return settings_from_config(cls, config)

    @property
    def attribution_window_seconds(self) -> int:
        return self.attribution_window_days * SECONDS_PER_DAY


def delay_cdf(t, fast_share: float, fast_mean: float, slow_mean) -> np.ndarray:
    """``F(t)`` of the delay mixture (``slow_mean`` may be per row)."""
    t = np.asarray(t, np.float64)
    return fast_share * (1 - np.exp(-t / fast_mean)) + (1 - fast_share) * (1 - np.exp(-t / slow_mean))


def drift_logit(offsets, items, item_phase, config: DelayedFeedbackConfig) -> np.ndarray:
    """``A_item · sin(2πt/P + φ_i) + A_global · sin(2πt/P)`` per click ``[n]``: ``t`` the click's seconds from the
    start, ``i`` its item; zeros in a stationary world."""
    angle = 2 * np.pi * np.asarray(offsets, np.float64) / (config.drift_period_days * SECONDS_PER_DAY)
    return (config.drift_amplitude * np.sin(angle + item_phase[items])
            + config.global_drift_amplitude * np.sin(angle))


def simulate_delayed_feedback(config: DelayedFeedbackConfig) -> tuple[dict, dict]:
    """Returns ``(columns, truth)``: one row per click in time order."""
    rng = np.random.default_rng(config.seed)
    d = config.latent_dim
    item_category, item_latent = item_world(rng, config.num_items, config.num_categories, d, 0.5)
    item_quality = config.item_quality_std * rng.normal(size=config.num_items)
    user_latent = rng.normal(size=(config.num_users, d))
    slow_mean_by_category = (config.slow_mean_days * SECONDS_PER_DAY
                             * np.exp(config.slow_mean_spread * rng.normal(size=config.num_categories)))

    n = config.num_clicks
    users = rng.choice(config.num_users, size=n, p=power_law(config.num_users, 0.8, rng))
    items = rng.choice(config.num_items, size=n, p=power_law(config.num_items, config.popularity_exponent, rng))
    categories = item_category[items]
    slow_mean = slow_mean_by_category[categories]
    logits = (config.affinity_scale * np.einsum("nd,nd->n", user_latent[users], item_latent[items]) / np.sqrt(d)
              + item_quality[items])
    w_o, w_a = config.observation_window_seconds, config.attribution_window_seconds
    cdf_o = delay_cdf(w_o, config.fast_share, config.fast_mean_seconds, slow_mean)
    cdf_a = delay_cdf(w_a, config.fast_share, config.fast_mean_seconds, slow_mean)

    # Draws in the order of the stationary world's first version, so a seed gives the same clicks with or
    # without drift (the conversion draw is a uniform compared with the click's probability afterwards).
    conversion_draw = rng.random(n)
    fast = rng.random(n) < config.fast_share
    delay = np.where(fast, rng.exponential(config.fast_mean_seconds, n), rng.exponential(slow_mean))
    offsets = np.sort(rng.integers(0, config.days * SECONDS_PER_DAY, n))
    click_timestamps = START_TIMESTAMP + offsets
    item_phase = 2 * np.pi * np.random.default_rng([config.seed, 1]).random(config.num_items)
    drift = drift_logit(offsets, items, item_phase, config)
    logits = logits + drift
    bias = solve_bias(logits, config.target_cvr, cdf_a)
    eventual = sigmoid(logits + bias)
    converts = conversion_draw < eventual
    delay = np.where(converts, np.floor(delay), np.inf)
    converted = delay <= w_a
    conversion_timestamps = np.where(converted, click_timestamps + np.where(converted, delay, 0), NO_CONVERSION)
    sample_type = np.where(delay <= w_o, 0, np.where(converted, 1, 2))

    columns = {"example_id": np.arange(n, dtype=np.int64), "click_timestamp": click_timestamps.astype(np.int64),
               "conversion_timestamp": conversion_timestamps.astype(np.int64),
               "user_id": users.astype(np.int64), "item_id": items.astype(np.int64),
               "item_category": categories.astype(np.int64), "converted": converted.astype(np.float32),
               "converted_in_window": (delay <= w_o).astype(np.float32)}
    truth = {"p_convert": eventual * cdf_a, "p_immediate": eventual * cdf_o,
             "p_delayed": eventual * (cdf_a - cdf_o), "eventual_conversion_probability": eventual,
             "delay": delay, "sample_type": sample_type, "slow_mean_by_category": slow_mean_by_category,
             "fast_share": np.float64(config.fast_share), "fast_mean_seconds": np.float64(config.fast_mean_seconds),
             "item_category": item_category, "bias": np.float64(bias), "drift_logit": drift,
             "item_drift_phase": item_phase}
    return columns, truth


def write_delayed_feedback(config: DelayedFeedbackConfig, output_dir: str) -> dict:
    """Simulates and writes train/eval shards (eval: the last ``eval_fraction`` of clicks in time)."""
    columns, truth = simulate_delayed_feedback(config)
    eval_start = eval_start_index(config.num_clicks, config.eval_fraction)
    converted = columns["converted"]
    types = truth["sample_type"]
    statistics = {
        "conversion_rate": float(converted.mean()),
        "conversion_rate_in_window": float(columns["converted_in_window"].mean()),
        "sample_type_shares": {name: float((types == code).mean()) for code, name in enumerate(SAMPLE_TYPES)},
        "immediate_share_of_conversions": float((types == 0).sum() / max(1, converted.sum())),
        "oracle_auc": auc(converted[eval_start:], truth["p_convert"][eval_start:]),
        "bias": float(truth["bias"]),
    }
    return write_simulation(output_dir, "delayed_feedback", config, columns, truth, eval_start, config.num_shards,
                            statistics)
