"""Calibration maps (tfrecsys/layers/calibration.py) and their fits (tfrecsys/calibration.py): Platt, isotonic
(PAV) and the negative-down-sampling correction. Numpy-sized cases, no training."""

import itertools

import numpy as np
import pytest

from tfrecsys.calibration import (CalibrationSettings, apply_calibration, expected_calibration_error, fit_calibration,
                                  fit_isotonic, fit_platt, pool_adjacent_violators)
from tfrecsys.layers.calibration import IsotonicCalibration, NegativeDownsamplingCorrection, PlattScaling


def brute_force_isotonic(values, weights):
    """The best non-decreasing fit by trying every cut of the sequence into consecutive blocks: the
    isotonic least-squares fit is one of them, each block at its weighted mean."""
    n, best, best_error = len(values), None, np.inf
    for cuts in itertools.product([False, True], repeat=n - 1):
        edges = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [n]
        fit = np.concatenate([np.full(stop - start, np.average(values[start:stop], weights=weights[start:stop]))
                              for start, stop in zip(edges[:-1], edges[1:])])
        error = float(np.sum(weights * (values - fit) ** 2))
        if np.all(np.diff(fit) >= -1e-12) and error < best_error - 1e-12:
            best, best_error = fit, error
    return best


def test_pav_equals_the_brute_force_isotonic_fit():
    rng = np.random.default_rng(0)
    for _ in range(3):
        values, weights = rng.normal(size=8), rng.uniform(0.2, 3.0, size=8)
        np.testing.assert_allclose(pool_adjacent_violators(values, weights), brute_force_isotonic(values, weights),
                                   atol=1e-12)


def test_isotonic_map_is_non_decreasing_and_exact_on_the_fitted_rows():
    rng = np.random.default_rng(1)
    probability = rng.uniform(size=1000).astype(np.float32)
    labels = (rng.uniform(size=1000) < np.sqrt(probability)).astype(np.float64)
    layer = fit_isotonic(probability, labels, np.ones(1000))
    grid = np.linspace(-0.1, 1.1, 2001, dtype=np.float32)
    mapped = layer(grid).numpy()
    assert np.all(np.diff(mapped) >= 0)
    # Linear between knots, clamped outside them: the end values, not an extrapolation.
    two_knots = IsotonicCalibration([0.2, 0.6], [0.1, 0.5])
    np.testing.assert_allclose(two_knots(np.float32([0.0, 0.2, 0.3, 0.6, 1.0])).numpy(), [0.1, 0.1, 0.2, 0.5, 0.5],
                               atol=1e-6)
    order = np.argsort(probability)
    fitted = pool_adjacent_violators(labels[order], np.ones(1000))
    np.testing.assert_allclose(layer(probability[order]).numpy(), fitted, atol=1e-6)


def test_isotonic_layer_refuses_decreasing_values():
    with pytest.raises(ValueError, match="must not decrease"):
        IsotonicCalibration([0.1, 0.5], [0.4, 0.2])


def test_downsampling_correction_is_the_identity_at_w_1_and_undoes_down_sampling():
    p = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    np.testing.assert_allclose(NegativeDownsamplingCorrection(1.0)(p).numpy(), p, atol=1e-7)
    # Keeping a share w of negatives turns a rate p into p' = p / (p + (1 − p) w); the correction maps p' to p.
    true_rate, w = 0.02, 0.1
    seen = true_rate / (true_rate + (1 - true_rate) * w)
    assert NegativeDownsamplingCorrection(w)(np.float32(seen)).numpy() == pytest.approx(true_rate, rel=1e-5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NegativeDownsamplingCorrection(0.0)


@pytest.mark.parametrize("centre,spread,slope,intercept", [(0.0, 2.0, 0.5, -1.0), (-5.0, 3.0, 0.3, 1.0)])
def test_platt_recovers_a_known_miscalibration(centre, spread, slope, intercept):
    # The second case is far from the identity (scores much lower and sharper than the rates): a full Newton
    # step from a = 1, b = 0 diverges there.
    rng = np.random.default_rng(2)
    logit = rng.normal(centre, spread, size=20_000)
    labels = (rng.uniform(size=logit.size) < 1 / (1 + np.exp(-(slope * logit + intercept)))).astype(np.float64)
    layer = fit_platt((1 / (1 + np.exp(-logit))).astype(np.float32), labels, np.ones(logit.size))
    assert layer.slope == pytest.approx(slope, abs=0.05) and layer.intercept == pytest.approx(intercept, abs=0.1)
    assert PlattScaling(1.0, 0.0)(np.float32([0.1, 0.7])).numpy() == pytest.approx([0.1, 0.7], abs=1e-6)


def test_calibration_lowers_the_expected_calibration_error_of_an_overconfident_score():
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.01, 0.3, size=20_000)
    labels = (rng.uniform(size=truth.size) < truth).astype(np.float64)
    served = np.clip(truth * 2.5, 0, 1).astype(np.float32)
    before = expected_calibration_error(served, labels)
    for method in ("platt", "isotonic"):
        layers = fit_calibration(CalibrationSettings(method=method), served, labels)
        assert expected_calibration_error(apply_calibration(layers, served).numpy(), labels) < before / 5


def test_settings_name_the_bad_field():
    with pytest.raises(ValueError, match="method must be one of"):
        CalibrationSettings(method="beta")
    with pytest.raises(ValueError, match="negative_sampling_rate"):
        CalibrationSettings(negative_sampling_rate=2.0)
    with pytest.raises(ValueError, match="only one class"):
        fit_calibration(CalibrationSettings(method="platt"), np.float32([0.2, 0.4]), np.zeros(2), output="ctr")
