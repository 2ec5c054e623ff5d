"""The auxiliaries' quality in bench/bench_delayed_feedback_protocol.py: each estimate against its target and
the simulator's truth."""

import argparse

import numpy as np
import pytest

from bench.bench_delayed_feedback_protocol import DAY, auxiliary_quality, fixed_point_excess_nll
from tfrecsys.data.simulators.delayed_feedback import DelayedFeedbackConfig

HOUR = 3600


def test_auxiliary_quality_has_no_excess_for_the_true_probabilities_and_some_for_stale_ones():
    rng = np.random.default_rng(0)
    n = 20_000
    world = DelayedFeedbackConfig(observation_window_seconds=HOUR, attribution_window_days=3)
    args = argparse.Namespace(window_seconds=HOUR, pretrain_days=1)
    p_convert = rng.uniform(0.05, 0.4, n)
    p_immediate = p_convert * rng.uniform(0.3, 0.7, n)
    outcome = rng.uniform(size=n)  # immediate below p_immediate, delayed up to p_convert, else never
    t0 = np.sort(rng.integers(0, 2 * DAY, n))
    delay = np.where(outcome < p_immediate, HOUR // 2, DAY)
    columns = {"click_timestamp": t0, "conversion_timestamp": np.where(outcome < p_convert, t0 + delay, -1)}
    truth = {"p_convert": p_convert, "p_immediate": p_immediate, "p_delayed": p_convert - p_immediate}
    streamed = np.flatnonzero(t0 >= DAY)
    position = np.arange(len(streamed))
    oracle = {"position": position, "prediction": p_convert[streamed], "f_dp": truth["p_delayed"][streamed],
              "f_rn": ((1 - p_convert) / (1 - p_immediate))[streamed]}
    quality = auxiliary_quality(oracle, columns, truth, world, args)
    for name in ("f_dp", "f_rn", "z1", "z2"):
        assert quality[name]["excess_nll"] == pytest.approx(0.0, abs=1e-9), name
        assert quality[name]["calibration"] == pytest.approx(1.0, abs=0.05), name
    assert max(quality["fixed_point_excess_nll"].values()) < 1e-12
    stale = {**oracle, "f_dp": 0.5 * oracle["f_dp"], "f_rn": 1 - 0.5 * (1 - oracle["f_rn"])}
    quality = auxiliary_quality(stale, columns, truth, world, args)
    for name in ("f_dp", "z1", "z2"):
        assert quality[name]["excess_nll"] > 0.005, name
        assert quality[name]["calibration"] == pytest.approx(0.5, abs=0.1), name


def test_z1_methods_pay_for_a_wrong_f_rn_and_z2_methods_for_a_wrong_f_dp():
    """The hypothesis the bench tests: at the fixed point of the expected loss, ES-DFM and DEFUSE(z1) depend on
    f_rn, DEFUSE(z2) and DEFER on f_dp; with both right, no method pays anything."""
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.4, 500)
    delayed = p * rng.uniform(0.3, 0.7, 500)
    true_f_rn = (1 - p) / (1 - p + delayed)
    stale_f_rn = 1 - 0.8 * (1 - true_f_rn)
    z1_methods, z2_methods = ("es_dfm", "defuse"), ("defuse_z2", "defer")
    assert max(fixed_point_excess_nll(p, delayed, delayed, true_f_rn).values()) < 1e-12
    wrong_f_dp = fixed_point_excess_nll(p, delayed, 0.8 * delayed, true_f_rn)
    wrong_f_rn = fixed_point_excess_nll(p, delayed, delayed, stale_f_rn)
    for method in z1_methods:
        assert wrong_f_dp[method] < 1e-12 and wrong_f_rn[method] > 1e-5, method
    for method in z2_methods:
        assert wrong_f_rn[method] < 1e-12 and wrong_f_dp[method] > 1e-5, method


def tiny_protocol_runs(method: str, flag: str, values) -> dict:
    """``method`` run by the protocol bench on a tiny 3-day world, once per value of ``--<flag>``: {value: run}."""
    from bench.bench_delayed_feedback_protocol import arguments, run_method
    from tfrecsys.data.simulators.delayed_feedback import simulate_delayed_feedback

    world = DelayedFeedbackConfig(num_users=40, num_items=30, num_categories=4, num_clicks=1200, days=3,
                                  attribution_window_days=1, seed=0)
    columns, _ = simulate_delayed_feedback(world)
    runs = {}
    for value in values:
        args = arguments(["--pretrain_days=1", "--pretrain_epochs=1", "--window_seconds=21600", "--batch_size=256",
                          f"--{flag}={value}"])
        runs[value] = run_method(method, columns, world, args, seed=0)
    return runs


@pytest.mark.slow  # two tiny streaming runs: ~40 s on the shared machine, mostly tracing the steps
def test_stream_auxiliary_updates_move_the_auxiliaries_and_leave_the_cvr_steps_alone():
    """--auxiliary_updates=stream: the auxiliary models learn during the stream (their outputs on the evaluated
    clicks move off the frozen ones), on their own optimizer (the CVR model takes the same steps)."""
    runs = tiny_protocol_runs("defuse", "auxiliary_updates", ("frozen", "stream"))
    frozen, stream = runs["frozen"], runs["stream"]
    assert frozen["auxiliary_steps"] == 0 and stream["auxiliary_steps"] > 0
    assert stream["stream_steps"] == frozen["stream_steps"]
    first_window = frozen["hour"] == frozen["hour"].min()
    # Before the first refresh both runs read the same pretrained auxiliaries; later the refreshed ones differ.
    np.testing.assert_allclose(stream["f_dp"][first_window], frozen["f_dp"][first_window], rtol=1e-5)
    assert np.abs(stream["f_dp"][~first_window] - frozen["f_dp"][~first_window]).max() > 1e-3
    assert np.abs(stream["f_rn"][~first_window] - frozen["f_rn"][~first_window]).max() > 1e-3


@pytest.mark.slow  # two tiny streaming runs: ~40 s on the shared machine, mostly tracing the steps
def test_bi_defuse_pretraining_on_final_labels_changes_the_start_and_keeps_old_clicks_out_of_the_stream():
    runs = tiny_protocol_runs("bi_defuse", "bi_defuse_pretraining", ("stream", "final_labels"))
    own, final = runs["stream"], runs["final_labels"]
    # The pretraining clicks' DP rows that arrive during the stream were already learnt with their final label.
    assert final["stream_rows"] < own["stream_rows"]
    first_window = own["hour"] == own["hour"].min()
    assert np.abs(final["prediction"][first_window] - own["prediction"][first_window]).max() > 1e-3
