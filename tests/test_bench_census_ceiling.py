"""bench/bench_census_ceiling.py: the inputs the trees and the logistic regression get (nominal codes of the
training rows, unseen values missing, crossed columns), the AUCs it reports, and that the boosted trees find an
interaction that a linear model on the same one-hot inputs cannot (scikit-learn and LightGBM live in
.venv-peers only: those tests skip elsewhere)."""

import numpy as np
import pytest

from bench.bench_census_ceiling import Inputs, keras_auc, main


def rows(a, b, x, y):
    return {"a": np.array(a), "b": np.array(b), "x": np.array(x, dtype=np.float32), "y": np.array(y, np.float32)}


def test_nominal_codes_come_from_the_training_rows_and_unseen_values_are_missing():
    train = rows(["u", "v", "u"], ["p", "p", "q"], [1.0, 2.0, 3.0], [0, 1, 0])
    inputs = Inputs(train, ["a", "b"], ["x"], [])
    scored = rows(["v", "w"], ["q", "p"], [5.0, 6.0], [1, 0])
    matrix = inputs.matrix(scored)
    assert matrix.shape == (2, 3)
    np.testing.assert_array_equal(matrix[0], [1.0, 1.0, 5.0])   # v → 1, q → 1, x as it is
    assert np.isnan(matrix[1, 0]) and matrix[1, 1] == 0.0       # w was never seen in training


def test_a_cross_is_a_nominal_column_of_the_pair_of_values():
    train = rows(["u", "v", "u", "v"], ["p", "p", "q", "q"], [0.0] * 4, [0] * 4)
    inputs = Inputs(train, ["a", "b"], ["x"], [("a", "b")])
    assert inputs.nominal == ["a", "b", "a*b"]
    assert inputs.cardinalities() == [2, 2, 4]
    codes = inputs.codes_of(rows(["v", "u"], ["q", "q"], [0.0, 0.0], [0, 0]))[:, 2]
    assert codes[0] != codes[1] and set(codes) <= set(range(4))


def test_keras_auc_is_close_to_the_rank_auc():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.3
    scores = np.clip(labels * 0.2 + rng.random(5000) * 0.8, 0, 1)
    exact = sklearn_metrics.roc_auc_score(labels, scores)
    assert 0.6 < exact < 0.9
    assert keras_auc(labels.astype(np.float32), scores) == pytest.approx(exact, abs=1e-3)


def xor_rows(n, seed):
    """The label is a XOR b (two binary nominal columns) with 10 % of labels flipped: no main effect at all."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    label = (a ^ b) ^ (rng.random(n) < 0.1)
    return rows(a.astype(str), b.astype(str), rng.normal(size=n), label)


@pytest.mark.parametrize("model", ["hgb", "lightgbm"])
def test_boosted_trees_find_an_interaction_the_logistic_regression_needs_the_cross_for(model):
    pytest.importorskip("sklearn")
    if model == "lightgbm":
        pytest.importorskip("lightgbm")
    from bench.bench_census_ceiling import FITS, rank_auc
    train, scored = xor_rows(2000, 0), xor_rows(1000, 1)
    plain = Inputs(train, ["a", "b"], ["x"], [])
    crossed = Inputs(train, ["a", "b"], ["x"], [("a", "b")])
    setting = {"hgb": dict(learning_rate=0.1, max_leaf_nodes=4, min_samples_leaf=20, l2_regularization=0.0),
               "lightgbm": dict(learning_rate=0.1, num_leaves=4, min_data_in_leaf=20, lambda_l2=0.0,
                                feature_fraction=1.0, bagging_fraction=1.0, bagging_freq=0, cat_smooth=1.0)}[model]
    trees, _ = FITS[model](plain, train, train["y"], setting, 0, rounds=50)
    linear, _ = FITS["logistic"](plain, train, train["y"], dict(C=1.0), 0)
    linear_crossed, _ = FITS["logistic"](crossed, train, train["y"], dict(C=1.0), 0)
    assert rank_auc(scored["y"], trees(scored)) > 0.85        # 0.9 is the noise's ceiling
    assert rank_auc(scored["y"], linear(scored)) < 0.6        # a XOR b has no main effect
    assert rank_auc(scored["y"], linear_crossed(scored)) > 0.85
    staged = trees(scored, [10, 50])
    assert sorted(staged) == [10, 50]
    np.testing.assert_allclose(staged[50], trees(scored), atol=1e-9)  # probabilities, as Keras' AUC needs


def test_skips_with_the_reason_when_neither_preprocessed_rows_nor_the_dataset_are_there(tmp_path, monkeypatch,
                                                                                       capsys):
    monkeypatch.chdir(tmp_path)  # the configs' ../shared/datasets is then absent
    assert main(["--data_dir", str(tmp_path / "census")]) == 0
    assert "skipped: no preprocessed census rows" in capsys.readouterr().out


def test_lost_auc_by_group_sums_to_one_minus_the_auc_and_sits_where_the_mistakes_are():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from bench.bench_census_ceiling import lost_auc_by
    rng = np.random.default_rng(1)
    groups = np.array(["clear"] * 600 + ["mixed"] * 400)
    labels = np.concatenate([np.repeat([0, 1], 300), rng.integers(0, 2, 400)]).astype(np.float32)
    scores = np.where(groups == "clear", labels, 0.5) + 0.01 * rng.random(1000)  # "mixed" scores carry no signal
    lost = lost_auc_by(labels, scores, groups)
    assert sum(part for _, _, part in lost.values()) == pytest.approx(1 - sklearn_metrics.roc_auc_score(labels, scores))
    assert lost["clear"][:2] == (600, 300)
    assert lost["clear"][2] < 0.1 * lost["mixed"][2]
