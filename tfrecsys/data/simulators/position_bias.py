"""Ranked lists with position bias, a known examination curve and correlated click and conversion labels
over the whole impression space: the one simulator of position-bias towers and multi-task ranking together.

The world, all drawn from ``seed``:

* users and items have latent vectors (items around their category's centre), items a quality ``b_i`` and
  a power-law exposure; users a power-law activity;
* a request (user, device) gets ``candidates_per_request`` candidates, which the logging ranker orders by
  the true relevance logit plus Gaussian noise (``logging_noise``) plus an item boost that has nothing to do
  with relevance (``logging_boost_std``: a business rule promoting some items; it sends those items to the
  top positions, so a model without a position tower credits them with the clicks θ gave them), and shows
  the top ``list_size`` at
  positions 1..list_size; in a ``randomized_fraction`` of requests the shown list is shuffled (result
  randomization, the intervention that identifies the curve);
* the shown item at position ``k`` on device ``d`` is examined with probability
  ``θ[d, k] = k^-device_exponents[d]`` and clicked when examined with probability
  ``r = sigmoid(affinity_scale · u·v / sqrt(dim) + b_i + bias)`` (the examination hypothesis:
  ``P(click) = θ[d, k] · r``), ``bias`` set so the mean click rate is ``target_ctr``;
* every impression has a conversion probability ``pCVR = sigmoid(affinity_scale · u·v' / sqrt(dim) + b'_i +
  bias')`` whose item vector ``v' = ρ v + sqrt(1 − ρ²) v_⊥`` (``ρ = task_correlation``) and quality
  ``b' = ρ b + sqrt(1 − ρ²) b_⊥`` correlate with the click side's; a conversion happens only after a click,
  so ``P(conversion) = θ·r·pCVR`` (ESMM's pCTCVR = pCTR × pCVR over the entire space, with the clicked rows
  a biased sample for CVR when ρ > 0); ``bias'`` sets the mean pCVR over clicks to ``target_cvr``;
* with ``action_rate > 0`` a clicked impression also takes an intermediate action (cart, wish; ESM²'s
  click → action → purchase path), label ``action``: with probability ``purchase_action_rate`` when it
  converts, ``action_rate`` when it does not.

Because the ranker puts relevant items first, the click rate by position falls faster than ``θ`` on
logged traffic: position and relevance are confounded, which is what a position-bias tower must untangle.
``position`` and ``device`` are training-only features (serving does not know the position yet). Labels:
``click`` and ``conversion`` (click and convert), and ``action`` with ``action_rate > 0``. The ground truth
holds ``θ`` and, per row, ``r``, ``θ[d, k]``, ``pcvr``, ``pctcvr`` and whether the request was randomized.
The boost, the conversions and the actions draw from their own random streams, so they leave the click log
(and the conversions) of a seed as it was without them.

This is the one simulator of the multi-task families too (shared-bottom, MMoE, PLE, ESMM, ESM²): a model
without a position tower reads only the served features and learns the logged clicks, position effect and
all.
"""

import dataclasses

import numpy as np

from tfrecsys.data.simulators.common import (SECONDS_PER_DAY, START_TIMESTAMP, auc, eval_start_index, item_world,
                                             power_law, settings_from_config, sigmoid, solve_bias,
                                             write_simulation)


@dataclasses.dataclass(frozen=True)
class PositionBiasConfig:
    num_users: int = 2000
    num_items: int = 1000
    num_categories: int = 20
    latent_dim: int = 8
    num_requests: int = 20_000
    list_size: int = 10
    candidates_per_request: int = 40
    device_exponents: tuple = (0.7, 1.3)
    device_shares: tuple = (0.6, 0.4)
    logging_noise: float = 1.0
    randomized_fraction: float = 0.1
    affinity_scale: float = 2.0
    item_quality_std: float = 0.6
    category_spread: float = 0.5
    popularity_exponent: float = 1.0
    target_ctr: float = 0.08
    logging_boost_std: float = 0.0
    task_correlation: float = 0.5
    target_cvr: float = 0.1
    action_rate: float = 0.0
    purchase_action_rate: float = 0.8
    eval_fraction: float = 0.1
    num_shards: int = 4
    seed: int = 0

    def __post_init__(self):
        if len(self.device_exponents) != len(self.device_shares):
            raise ValueError("device_exponents and device_shares need one entry per device")
        if self.list_size > self.candidates_per_request:
            raise ValueError("list_size cannot exceed candidates_per_request")
        if not -1.0 <= self.task_correlation <= 1.0:
            raise ValueError(f"task_correlation must lie in [-1, 1], got {self.task_correlation}")

    @classmethod
    def from_config(cls, config) -> "PositionBiasConfig":
        return settings_from_config(cls, config)

    def examination_curve(self) -> np.ndarray:
        """``θ[device, position - 1] = position^-exponent[device]``."""
        positions = np.arange(1, self.list_size + 1, dtype=np.float64)
        return positions[None, :] ** -np.asarray(self.device_exponents, np.float64)[:, None]


def simulate_position_bias(config: PositionBiasConfig) -> tuple[dict, dict]:
    """Returns ``(columns, truth)``: one row per shown (request, position), requests in time order."""
    rng = np.random.default_rng(config.seed)
    d = config.latent_dim
    item_category, item_latent = item_world(rng, config.num_items, config.num_categories, d, config.category_spread)
    item_quality = config.item_quality_std * rng.normal(size=config.num_items)
    exposure = power_law(config.num_items, config.popularity_exponent, rng)
    user_latent = rng.normal(size=(config.num_users, d))
    activity = power_law(config.num_users, 0.8, rng)

    requests, size = config.num_requests, config.list_size
    users = rng.choice(config.num_users, size=requests, p=activity)
    shares = np.asarray(config.device_shares, np.float64)
    devices = rng.choice(len(shares), size=requests, p=shares / shares.sum())
    candidates = rng.choice(config.num_items, size=(requests, config.candidates_per_request), p=exposure)
    relevance_logit = (config.affinity_scale * np.einsum("rd,rmd->rm", user_latent[users], item_latent[candidates])
                       / np.sqrt(d) + item_quality[candidates])
    logged_score = relevance_logit + config.logging_noise * rng.normal(size=relevance_logit.shape)
    # Own streams (seed, 1) and (seed, 2): the click log of a seed stays the same whatever these settings are.
    boost_rng, conversion_rng = np.random.default_rng([config.seed, 1]), np.random.default_rng([config.seed, 2])
    item_boost = config.logging_boost_std * boost_rng.normal(size=config.num_items)
    logged_score = logged_score + item_boost[candidates]
    shown = np.argsort(-logged_score, axis=1, kind="stable")[:, :size]
    randomized = rng.random(requests) < config.randomized_fraction
    shuffled = np.take_along_axis(shown, np.argsort(rng.random((requests, size)), axis=1), axis=1)
    shown = np.where(randomized[:, None], shuffled, shown)

    items = np.take_along_axis(candidates, shown, axis=1).reshape(-1)
    logits = np.take_along_axis(relevance_logit, shown, axis=1).reshape(-1)
    positions = np.tile(np.arange(1, size + 1), requests)
    row_devices = np.repeat(devices, size)
    curve = config.examination_curve()
    examination = curve[row_devices, positions - 1]
    bias = solve_bias(logits, config.target_ctr, examination)
    relevance = sigmoid(logits + bias)
    clicks = (rng.random(len(items)) < examination * relevance).astype(np.float32)
    timestamps = START_TIMESTAMP + np.sort(rng.choice(30 * SECONDS_PER_DAY, size=requests, replace=False))

    rho = config.task_correlation
    other = np.sqrt(max(0.0, 1.0 - rho ** 2))
    cvr_latent = rho * item_latent + other * conversion_rng.normal(size=item_latent.shape)
    cvr_quality = rho * item_quality + other * config.item_quality_std * conversion_rng.normal(size=config.num_items)
    row_users = np.repeat(users, size)
    cvr_logit = (config.affinity_scale * np.einsum("rd,rd->r", user_latent[row_users], cvr_latent[items]) / np.sqrt(d)
                 + cvr_quality[items])
    click_probability = examination * relevance
    # The mean pCVR over clicks: E[P(click)·pCVR] / E[P(click)].
    pcvr = sigmoid(cvr_logit + solve_bias(cvr_logit, config.target_cvr, click_probability / click_probability.mean()))
    conversions = (clicks == 1) & (conversion_rng.random(len(items)) < pcvr)

    columns = {"example_id": np.arange(len(items), dtype=np.int64),
               "request_id": np.repeat(np.arange(requests, dtype=np.int64), size),
               "timestamp": np.repeat(timestamps, size).astype(np.int64),
               "user_id": np.repeat(users, size).astype(np.int64), "item_id": items.astype(np.int64),
               "item_category": item_category[items].astype(np.int64), "position": positions.astype(np.int64),
               "device": row_devices.astype(np.int64), "click": clicks, "conversion": conversions.astype(np.float32)}
    if config.action_rate > 0:
        action_draws = np.random.default_rng([config.seed, 3]).random(len(items))
        rate = np.where(conversions, config.purchase_action_rate, config.action_rate)
        columns["action"] = ((clicks == 1) & (action_draws < rate)).astype(np.float32)
    truth = {"relevance": relevance, "examination": examination, "probability": click_probability,
             "pcvr": pcvr, "pctcvr": click_probability * pcvr, "item_boost": item_boost,
             "randomized": np.repeat(randomized, size), "examination_curve": curve,
             "item_quality": item_quality, "item_category": item_category, "bias": np.float64(bias)}
    return columns, truth


def examination_by_position(columns: dict, truth: dict, list_size: int, device: int) -> np.ndarray:
    """θ̂[k] = clicks at position k / Σ true relevance at position k on ``device`` (an estimate of θ that
    the ground truth makes possible: relevance is known, so the confounding is removed exactly)."""
    on_device = columns["device"] == device
    return np.array([columns["click"][on_device & (columns["position"] == k)].sum()
                     / truth["relevance"][on_device & (columns["position"] == k)].sum()
                     for k in range(1, list_size + 1)])


def write_position_bias(config: PositionBiasConfig, output_dir: str) -> dict:
    """Simulates and writes train/eval shards (eval: the last ``eval_fraction`` of requests in time)."""
    columns, truth = simulate_position_bias(config)
    eval_start = eval_start_index(config.num_requests, config.eval_fraction) * config.list_size
    clicks = columns["click"]
    by_position = [float(clicks[columns["position"] == k].mean()) for k in range(1, config.list_size + 1)]
    statistics = {
        "click_rate": float(clicks.mean()),
        "oracle_auc": auc(clicks[eval_start:], truth["probability"][eval_start:]),
        "relevance_auc": auc(clicks[eval_start:], truth["relevance"][eval_start:]),
        "examination_curve": truth["examination_curve"].tolist(),
        "conversion_rate_of_clicks": float(columns["conversion"][clicks == 1].mean()),
        "mean_pcvr_all_impressions": float(truth["pcvr"].mean()),
        "mean_pcvr_clicked": float(truth["pcvr"][clicks == 1].mean()),
        "click_rate_by_position": by_position,
        "bias": float(truth["bias"]),
    }
    return write_simulation(output_dir, "position_bias", config, columns, truth, eval_start, config.num_shards,
                            statistics)
