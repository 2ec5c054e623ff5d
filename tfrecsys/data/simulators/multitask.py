"""Impressions with correlated click and conversion labels over the whole impression space (ESMM, MMoE, PLE).

The world, all drawn from ``seed``:

* users and items have standard normal latent vectors; an impression's interaction is ``h = u ⊙ v / |u ⊙ v|``
  (``dim`` values, isotropic, so projections on two unit vectors correlate exactly as the vectors' cosine);
  items have a category, whose effect is part of the item's quality ``b_i = b_category + noise``;
* the two tasks read ``h`` through unit vectors ``w_ctr`` and ``w_cvr`` with cosine ``task_correlation``
  (the MMoE paper's synthetic construction: ``w_cvr = ρ·w_ctr + sqrt(1-ρ²)·w_⊥``), plus a non-linear part
  ``Σ_j sin(α_j·w·h + β_j)`` so the tasks are not linear in the features:
  ``logit_ctr = s·(w_ctr·h + sines(w_ctr·h)) + b^ctr_i + bias_ctr`` and likewise for CVR with ``b^cvr_i``;
* a click happens with ``pCTR = sigmoid(logit_ctr)``; a conversion only after a click, with
  ``pCVR = sigmoid(logit_cvr)``, so ``P(conversion) = pCTCVR = pCTR · pCVR`` (the ESMM decomposition);
  ``bias_ctr`` and ``bias_cvr`` set the mean click rate to ``target_ctr`` and the mean pCVR over clicked
  impressions to ``target_cvr``.

pCVR is defined for every impression (the entire space), but conversions are only observed after clicks:
with ``task_correlation > 0`` clicked impressions have a higher pCVR than average, the sample selection
bias ESMM removes. Labels: ``click`` and ``conversion`` (click and convert, i.e. the CTCVR label).

With ``action_rate > 0`` a clicked impression also takes an intermediate action (cart, wish; ESM²'s
click → action → purchase path), label ``action``: with probability ``purchase_action_rate`` when it
converts, ``action_rate`` when it does not. The actions are drawn from their own generator, after
everything else, so the rest of the world is the same with or without them.
"""

import dataclasses

import numpy as np

from tfrecsys.data.simulators.common import (SECONDS_PER_DAY, START_TIMESTAMP, auc, eval_start_index, power_law,
                                             settings_from_config, sigmoid, solve_bias, write_simulation)


@dataclasses.dataclass(frozen=True)
class MultitaskConfig:
    num_users: int = 2000
    num_items: int = 1000
    num_categories: int = 20
    latent_dim: int = 8
    num_impressions: int = 100_000
    task_correlation: float = 0.5
    signal_scale: float = 2.5
    num_sines: int = 2
    item_quality_std: float = 0.5
    popularity_exponent: float = 1.0
    target_ctr: float = 0.1
    target_cvr: float = 0.1
    action_rate: float = 0.0
    purchase_action_rate: float = 0.8
    eval_fraction: float = 0.1
    num_shards: int = 4
    seed: int = 0

    def __post_init__(self):
        if not -1.0 <= self.task_correlation <= 1.0:
            raise ValueError(f"task_correlation must lie in [-1, 1], got {self.task_correlation}")

    @classmethod
    def from_config(cls, config) -> "MultitaskConfig":
        return settings_from_config(cls, config)


def task_directions(dim: int, correlation: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors ``w_ctr``, ``w_cvr`` with ``w_ctr · w_cvr = correlation`` exactly."""
    w_ctr = rng.normal(size=dim)
    w_ctr /= np.linalg.norm(w_ctr)
    other = rng.normal(size=dim)
    other -= (other @ w_ctr) * w_ctr
    other /= np.linalg.norm(other)
    return w_ctr, correlation * w_ctr + np.sqrt(max(0.0, 1.0 - correlation ** 2)) * other


def simulate_multitask(config: MultitaskConfig) -> tuple[dict, dict]:
    """Returns ``(columns, truth)``: one row per impression in time order, with pCTR, pCVR and pCTCVR of
    every impression in the truth."""
    rng = np.random.default_rng(config.seed)
    d = config.latent_dim
    item_category = rng.integers(0, config.num_categories, size=config.num_items)
    item_latent = rng.normal(size=(config.num_items, d))
    user_latent = rng.normal(size=(config.num_users, d))
    spread = config.item_quality_std / np.sqrt(2)
    quality_ctr = spread * (rng.normal(size=config.num_categories)[item_category] + rng.normal(size=config.num_items))
    quality_cvr = spread * (rng.normal(size=config.num_categories)[item_category] + rng.normal(size=config.num_items))
    w_ctr, w_cvr = task_directions(d, config.task_correlation, rng)
    alphas, betas = rng.normal(size=config.num_sines), rng.normal(size=config.num_sines)

    n = config.num_impressions
    users = rng.choice(config.num_users, size=n, p=power_law(config.num_users, 0.8, rng))
    items = rng.choice(config.num_items, size=n, p=power_law(config.num_items, config.popularity_exponent, rng))
    interaction = user_latent[users] * item_latent[items]
    interaction /= np.linalg.norm(interaction, axis=1, keepdims=True) + 1e-12

    def signal(projection):
        return projection + np.sin(np.outer(projection, alphas) + betas).sum(axis=1) / config.num_sines

    ctr_projection, cvr_projection = interaction @ w_ctr, interaction @ w_cvr
    ctr_signal, cvr_signal = signal(ctr_projection), signal(cvr_projection)
    ctr_logit = config.signal_scale * ctr_signal + quality_ctr[items]
    cvr_logit = config.signal_scale * cvr_signal + quality_cvr[items]
    bias_ctr = solve_bias(ctr_logit, config.target_ctr)
    pctr = sigmoid(ctr_logit + bias_ctr)
    bias_cvr = solve_bias(cvr_logit, config.target_cvr, pctr / pctr.mean())  # mean pCVR over clicks = E[pCTR·pCVR]/E[pCTR]
    pcvr = sigmoid(cvr_logit + bias_cvr)
    clicks = rng.random(n) < pctr
    conversions = clicks & (rng.random(n) < pcvr)
    timestamps = START_TIMESTAMP + np.sort(rng.choice(30 * SECONDS_PER_DAY, size=n, replace=False))

    columns = {"example_id": np.arange(n, dtype=np.int64), "timestamp": timestamps.astype(np.int64),
               "user_id": users.astype(np.int64), "item_id": items.astype(np.int64),
               "item_category": item_category[items].astype(np.int64),
               "click": clicks.astype(np.float32), "conversion": conversions.astype(np.float32)}
    if config.action_rate > 0:
        action_draws = np.random.default_rng([config.seed, 1]).random(n)
        rate = np.where(conversions, config.purchase_action_rate, config.action_rate)
        columns["action"] = (clicks & (action_draws < rate)).astype(np.float32)
    truth = {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr, "ctr_projection": ctr_projection,
             "cvr_projection": cvr_projection,
             "w_ctr": w_ctr, "w_cvr": w_cvr, "bias_ctr": np.float64(bias_ctr), "bias_cvr": np.float64(bias_cvr),
             "item_category": item_category}
    return columns, truth


def write_multitask(config: MultitaskConfig, output_dir: str) -> dict:
    """Simulates and writes train/eval shards (eval: the last ``eval_fraction`` of impressions in time)."""
    columns, truth = simulate_multitask(config)
    eval_start = eval_start_index(config.num_impressions, config.eval_fraction)
    clicks, conversions = columns["click"], columns["conversion"]
    clicked = clicks == 1
    eval_clicked = clicked[eval_start:]
    statistics = {
        "click_rate": float(clicks.mean()),
        "conversion_rate_of_clicks": float(conversions[clicked].mean()),
        "ctcvr_rate": float(conversions.mean()),
        "mean_pcvr_all_impressions": float(truth["pcvr"].mean()),
        "mean_pcvr_clicked": float(truth["pcvr"][clicked].mean()),
        "task_correlation": float(truth["w_ctr"] @ truth["w_cvr"]),
        "projection_correlation": float(np.corrcoef(truth["ctr_projection"], truth["cvr_projection"])[0, 1]),
        "oracle_auc_ctr": auc(clicks[eval_start:], truth["pctr"][eval_start:]),
        "oracle_auc_ctcvr": auc(conversions[eval_start:], truth["pctcvr"][eval_start:]),
        "oracle_auc_cvr_on_clicks": auc(conversions[eval_start:][eval_clicked],
                                        truth["pcvr"][eval_start:][eval_clicked]),
    }
    return write_simulation(output_dir, "multitask", config, columns, truth, eval_start, config.num_shards,
                            statistics)
