"""The ground-truth simulators: each seeded, and each one's data carries the statistics its truth says."""

import dataclasses
import filecmp
import json

import numpy as np
import pytest

from tfrecsys.data.input import make_dataset, resolve_files
from tfrecsys.data.simulators import (SIMULATORS, DelayedFeedbackConfig, PositionBiasConfig,
                                      SequentialConfig, simulate_delayed_feedback,
                                      simulate_position_bias, simulate_sequential, write_from_config)
from tfrecsys.data.simulators.common import START_TIMESTAMP
from tfrecsys.data.simulators.delayed_feedback import delay_cdf
from tfrecsys.data.simulators.position_bias import examination_by_position
from tfrecsys.features.schema import FeatureSchema

SEQUENTIAL = SequentialConfig(num_users=400, num_items=600, num_categories=20, events_per_user=100, seed=3)


def _binomial_z(observed: float, expected: float, n: int) -> float:
    """How many standard errors a share observed in ``n`` trials is from its expected probability."""
    return abs(observed - expected) / np.sqrt(max(expected * (1 - expected), 1e-12) / n)


# Sequential interests with drift ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sequential():
    return simulate_sequential(SEQUENTIAL)


def test_sequential_interest_drifts_at_the_configured_rate(sequential):
    columns, truth = sequential
    # Every event but a user's first may switch: count transitions per user in time order.
    users, switched = columns["user_id"], truth["switched"]
    first_events = len(np.unique(users))
    transitions = len(users) - first_events
    rate = switched.sum() / transitions
    assert _binomial_z(rate, SEQUENTIAL.drift_rate, transitions) < 4, rate
    # A switch really changes the interest, and between switches it stays put.
    order = np.lexsort((columns["timestamp"], users))
    same_user = users[order][1:] == users[order][:-1]
    changed = truth["current_interest"][order][1:] != truth["current_interest"][order][:-1]
    np.testing.assert_array_equal(changed[same_user], switched[order][1:][same_user])


def test_sequential_labels_follow_the_click_model(sequential):
    columns, truth = sequential
    clicks, probability = columns["click"], truth["probability"]
    assert abs(clicks.mean() - SEQUENTIAL.target_ctr) < 0.01
    current, long_term = truth["is_current"], truth["in_long_term"] & ~truth["is_current"]
    other = ~truth["in_long_term"] & ~truth["is_current"]
    for group in (current, long_term, other):
        assert _binomial_z(clicks[group].mean(), probability[group].mean(), group.sum()) < 4
    # Current interest > a long-term interest > anything else: the two signals DIEN and SIM model.
    assert clicks[current].mean() > 2 * clicks[long_term].mean() > 2 * clicks[other].mean()


def test_sequential_recent_behaviour_predicts_better_than_the_whole_history(sequential):
    """Interests drift, so the category of the latest click tells the current interest better than the
    user's most frequent category in the whole history: the reason DIEN models the sequence."""
    columns, truth = sequential
    last_hits, majority_hits, rows = 0, 0, 0
    for row, history in enumerate(columns["hist_category"]):
        if len(history) < 5:
            continue
        rows += 1
        last_hits += history[-1] == truth["current_interest"][row]
        majority_hits += np.bincount(history).argmax() == truth["current_interest"][row]
    assert rows > 1000
    assert last_hits / rows > majority_hits / rows + 0.1, (last_hits / rows, majority_hits / rows)


def test_sequential_histories_hold_only_earlier_events_of_the_user(sequential):
    columns, _ = sequential
    for row in range(0, len(columns["click"]), 7):
        history_times = columns["hist_timestamp"][row]
        assert np.all(history_times < columns["timestamp"][row])
        assert np.all(np.diff(history_times) > 0)
        assert len(history_times) == len(columns["hist_item_id"][row]) == len(columns["hist_category"][row])
        assert len(history_times) <= SEQUENTIAL.history_len
    assert np.all(np.diff(columns["timestamp"]) >= 0)


def test_sequential_impression_history_carries_actions():
    config = SequentialConfig(num_users=50, num_items=200, num_categories=10, events_per_user=40,
                              history="impressions", history_len=10)
    columns, _ = simulate_sequential(config)
    by_user = {}
    for row in np.argsort(columns["timestamp"], kind="stable"):
        user = columns["user_id"][row]
        earlier = by_user.setdefault(user, [])
        expected = earlier[-config.history_len:]
        np.testing.assert_array_equal(columns["hist_item_id"][row], [item for item, _ in expected])
        np.testing.assert_array_equal(columns["hist_action"][row], [click for _, click in expected])
        earlier.append((columns["item_id"][row], int(columns["click"][row])))


# Position bias ----------------------------------------------------------------------------------------------

POSITION = PositionBiasConfig(num_requests=8000, randomized_fraction=0.5, seed=5)


@pytest.fixture(scope="module")
def position_bias():
    return simulate_position_bias(POSITION)


def test_position_bias_recovers_the_examination_curve(position_bias):
    columns, truth = position_bias
    curve = POSITION.examination_curve()
    for device in range(len(POSITION.device_exponents)):
        estimate = examination_by_position(columns, truth, POSITION.list_size, device)
        np.testing.assert_allclose(estimate, curve[device], rtol=0.2, atol=0.02)
        # On randomized requests relevance does not depend on position: the click-rate ratio is θ_k/θ_1.
        randomized = truth["randomized"] & (columns["device"] == device)
        ctr = np.array([columns["click"][randomized & (columns["position"] == k)].mean()
                        for k in (1, 2, 3)])
        np.testing.assert_allclose(ctr[1:] / ctr[0], curve[device][1:3] / curve[device][0], rtol=0.25)
    # Devices have different curves, so position must be crossed with device.
    assert curve[1][4] < 0.5 * curve[0][4]


def test_position_bias_is_confounded_on_logged_traffic(position_bias):
    """The logging ranker shows relevant items first, so the logged click-rate curve falls faster than θ."""
    columns, truth = position_bias
    logged = ~truth["randomized"] & (columns["device"] == 0)
    ctr = np.array([columns["click"][logged & (columns["position"] == k)].mean() for k in range(1, 11)])
    relevance = np.array([truth["relevance"][logged & (columns["position"] == k)].mean() for k in range(1, 11)])
    assert relevance[0] > 1.5 * relevance[-1]
    assert ctr[-1] / ctr[0] < 0.6 * POSITION.examination_curve()[0][-1]
    assert abs(columns["click"].mean() - POSITION.target_ctr) < 0.005


# Multi-task ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("correlation", [0.8, 0.0, -0.5])
def test_multitask_tasks_correlate_as_configured(correlation):
    """The position-bias simulator is the multi-task one too: relevance and pCVR logits correlate as
    ``task_correlation`` says (within 0.1: item vectors are drawn around category centres, the CVR side's
    independent part is not), and conversions follow the click path."""
    config = PositionBiasConfig(num_requests=4000, task_correlation=correlation, seed=7)
    columns, truth = simulate_position_bias(config)
    measured = np.corrcoef(_logit(truth["relevance"]), _logit(truth["pcvr"]))[0, 1]
    assert abs(measured - correlation) < 0.1, measured
    clicks, conversions = columns["click"], columns["conversion"]
    assert np.all(conversions <= clicks)  # impression → click → conversion
    np.testing.assert_allclose(truth["pctcvr"], truth["probability"] * truth["pcvr"])
    clicked = clicks == 1
    assert _binomial_z(conversions[clicked].mean(), truth["pcvr"][clicked].mean(), clicked.sum()) < 4
    assert _binomial_z(conversions.mean(), truth["pctcvr"].mean(), len(clicks)) < 4


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


# Delayed feedback ----------------------------------------------------------------------------------------------

DELAYED = DelayedFeedbackConfig(num_clicks=60_000, seed=11)


@pytest.fixture(scope="module")
def delayed():
    return simulate_delayed_feedback(DELAYED)


def test_delayed_feedback_windows_split_conversions_as_the_delay_distribution_says(delayed):
    columns, truth = delayed
    converted = columns["converted"] == 1
    types = truth["sample_type"]
    assert abs(converted.mean() - DELAYED.target_cvr) < 0.006
    # Immediate positives (IP) and fake negatives (FN) in the numbers the known CDF predicts.
    for code, expected in ((0, truth["p_immediate"]), (1, truth["p_delayed"])):
        assert _binomial_z((types == code).mean(), expected.mean(), len(types)) < 4
    np.testing.assert_array_equal(columns["converted_in_window"] == 1, types == 0)
    np.testing.assert_array_equal(converted, types < 2)
    delay = columns["conversion_timestamp"][converted] - columns["click_timestamp"][converted]
    assert np.all((delay >= 0) & (delay <= DELAYED.attribution_window_seconds))
    assert np.all(columns["conversion_timestamp"][~converted] == -1)
    # Eventual conversions after the attribution window exist and are labelled negative.
    late = np.isfinite(truth["delay"]) & (truth["delay"] > DELAYED.attribution_window_seconds)
    assert late.sum() > 0 and np.all(columns["converted"][late] == 0)


def test_delayed_feedback_delays_follow_the_known_distribution(delayed):
    columns, truth = delayed
    categories = columns["item_category"]
    category = np.bincount(categories[columns["converted"] == 1]).argmax()
    rows = (categories == category) & (columns["converted"] == 1)
    delays = np.sort(truth["delay"][rows])
    slow_mean = truth["slow_mean_by_category"][category]
    window = DELAYED.attribution_window_seconds
    # Delays of attributed conversions follow F(t) / F(w_a) on [0, w_a]: Kolmogorov-Smirnov distance.
    expected = (delay_cdf(delays, DELAYED.fast_share, DELAYED.fast_mean_seconds, slow_mean)
                / delay_cdf(window, DELAYED.fast_share, DELAYED.fast_mean_seconds, slow_mean))
    empirical = np.arange(1, len(delays) + 1) / len(delays)
    assert np.max(np.abs(empirical - expected)) < 1.63 / np.sqrt(len(delays)) + 0.01  # 1% level



def test_delayed_feedback_drift_moves_each_items_cvr_with_its_phase_and_keeps_the_clicks():
    stationary = DelayedFeedbackConfig(num_clicks=20_000, days=14, seed=5)
    drifting = dataclasses.replace(stationary, drift_amplitude=1.5, global_drift_amplitude=0.5, drift_period_days=7)
    (still, still_truth), (moving, truth) = simulate_delayed_feedback(stationary), simulate_delayed_feedback(drifting)
    for name in ("user_id", "item_id", "click_timestamp"):  # the same clicks: only their probabilities move
        np.testing.assert_array_equal(still[name], moving[name])
    np.testing.assert_array_equal(still_truth["drift_logit"], 0.0)
    angle = 2 * np.pi * (moving["click_timestamp"] - START_TIMESTAMP) / (7 * 86_400)
    expected = 1.5 * np.sin(angle + truth["item_drift_phase"][moving["item_id"]]) + 0.5 * np.sin(angle)
    np.testing.assert_allclose(truth["drift_logit"], expected, atol=1e-9)
    logit = np.log(truth["eventual_conversion_probability"] / (1 - truth["eventual_conversion_probability"]))
    still_logit = np.log(still_truth["eventual_conversion_probability"]
                         / (1 - still_truth["eventual_conversion_probability"]))
    shift = logit - still_logit - expected  # what is left is the re-solved bias, one constant
    np.testing.assert_allclose(shift, shift[0], atol=1e-6)
    # The labels follow: clicks at an item's high phase convert far more often than at its low phase.
    high, low = truth["drift_logit"] > 1.0, truth["drift_logit"] < -1.0
    assert moving["converted"][high].mean() > 2 * moving["converted"][low].mean()
    assert abs(moving["converted"].mean() - drifting.target_cvr) < 0.01


# Every simulator: seeded, written, readable with a schema -----------------------------------------------------

_SMALL = {
    "sequential": dict(num_users=40, num_items=100, num_categories=8, events_per_user=30, history_len=10),
    "position_bias": dict(num_requests=300, num_users=100, num_items=200),
    "delayed_feedback": dict(num_clicks=3000, num_users=100, num_items=200),
}
_LABELS = {"sequential": "click", "position_bias": "click",
           "delayed_feedback": "converted"}


@pytest.mark.parametrize("kind", sorted(_SMALL))
def test_simulator_is_seeded_and_writes_readable_shards(kind, tmp_path):
    block = {"kind": kind, "num_shards": 2, **_SMALL[kind]}
    first = write_from_config(block, str(tmp_path / "a"))
    write_from_config(block, str(tmp_path / "b"))
    other = write_from_config({**block, "seed": 1}, str(tmp_path / "c"))
    names = first["train_files"] + first["eval_files"]
    assert all(filecmp.cmp(tmp_path / "a" / n, tmp_path / "b" / n, shallow=False) for n in names)
    assert not filecmp.cmp(tmp_path / "a" / names[0], tmp_path / "c" / other["train_files"][0], shallow=False)
    metadata = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert metadata["simulator"] == kind and metadata["train_rows"] > metadata["eval_rows"] > 0
    truth = np.load(tmp_path / "a" / "ground_truth.npz")
    assert len(truth.files) > 3

    label = _LABELS[kind]
    features = {"user_id": dict(kind="id", num_buckets=1000), "item_id": dict(kind="id", num_buckets=1000),
                label: dict(kind="label")}
    if kind == "sequential":
        features["hist_item_id"] = dict(kind="sequence", shares="item_id", max_len=10)
    if kind == "position_bias":
        features["position"] = dict(kind="dense", training_only=True, dtype="int64")
    schema = FeatureSchema.from_config({k: v for k, v in features.items() if k != "position"})
    files = resolve_files("eval-*.tfrecord", str(tmp_path / "a"))
    batches = list(make_dataset(files, schema, 64, targets={"out": label}, training=False))
    assert sum(len(labels["out"]) for _, labels in batches) == metadata["eval_rows"]


def test_unknown_simulator_and_setting_are_named():
    with pytest.raises(ValueError, match="kind 'nope' is not one of"):
        write_from_config({"kind": "nope"}, "unused")
    with pytest.raises(ValueError, match=r"unknown PositionBiasConfig settings \['num_clickz'\]"):
        write_from_config({"kind": "position_bias", "num_clickz": 3}, "unused")
    assert set(SIMULATORS) == {"click_log", "retrieval", "sequential", "position_bias", "delayed_feedback",
                               "click_log_stream", "delayed_feedback_stream", "sequential_next_item"}
