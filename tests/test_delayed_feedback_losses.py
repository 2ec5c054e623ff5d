"""DEFUSE, Bi-DEFUSE and the baselines' losses against the paper's equations (tfrecsys/losses/delayed_feedback.py)."""

import numpy as np
import pytest
import tensorflow as tf

import tfrecsys.models  # noqa: F401  (the registry's losses)
from tfrecsys.losses import delayed_feedback as dfl
from tfrecsys.models.tasks import Task, tasks_from_config

RNG = np.random.default_rng(3)
N = 64
LOGIT = tf.constant(RNG.normal(size=N), tf.float32)
SAMPLE_TYPE = tf.constant(RNG.choice([0, 1, 2], size=N), tf.float32)
LABEL = tf.cast(SAMPLE_TYPE > 0, tf.float32)
F_DP = tf.constant(RNG.uniform(0.0, 0.3, size=N), tf.float32)
F_RN = tf.constant(RNG.uniform(0.5, 1.0, size=N), tf.float32)


def plain_bce(label, logit):
    p = tf.sigmoid(logit).numpy()
    return -(label.numpy() * np.log(p) + (1 - label.numpy()) * np.log(1 - p))


def test_defuse_is_plain_cross_entropy_when_there_are_no_delayed_positives():
    zero = tf.zeros([N])
    z1 = dfl.fake_negative_probability_z1(tf.ones([N]))  # f_rn ≡ 1: every observed negative is real
    z2 = dfl.fake_negative_probability_z2(zero, tf.sigmoid(LOGIT))
    for z in (z1, z2):
        loss = dfl.defuse_loss(LABEL, LOGIT, SAMPLE_TYPE, zero, z)
        np.testing.assert_allclose(loss.numpy(), plain_bce(LABEL, LOGIT), rtol=1e-5, atol=1e-6)


def test_defuse_weights_satisfy_the_papers_constraints_and_the_loss_uses_them():
    weights = {k: v.numpy() for k, v in dfl.defuse_weights(F_DP).items()}
    np.testing.assert_allclose(weights["IP"], 1 + F_DP.numpy(), rtol=1e-6)
    np.testing.assert_allclose(weights["RN"], weights["IP"], rtol=1e-6)
    np.testing.assert_allclose(weights["DP"] + weights["FN"], 1 + F_DP.numpy(), rtol=1e-6)
    # Per sample type, the loss carries exactly those weights (an observed positive IP or DP, never both).
    z = dfl.fake_negative_probability_z1(F_RN).numpy()
    loss = dfl.defuse_loss(LABEL, LOGIT, SAMPLE_TYPE, F_DP, z).numpy()
    neg_log_f, neg_log_1_f = plain_bce(tf.ones([N]), LOGIT), plain_bce(tf.zeros([N]), LOGIT)
    kind = SAMPLE_TYPE.numpy()
    expected = np.where(kind == 1, weights["IP"] * neg_log_f,
                        np.where(kind == 2, weights["DP"] * neg_log_f,
                                 z * weights["FN"] * neg_log_f + (1 - z) * weights["RN"] * neg_log_1_f))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_defuse_expected_loss_over_the_stream_is_minimised_at_the_true_cvr():
    """Per click with true CVR p and delayed rate f_dp, the stream holds IP p − f_dp, FN f_dp, RN 1 − p and DP
    f_dp; with oracle z (Eq. 17) the expected DEFUSE loss is (1 + f_dp)·BCE(p, f), minimal at f = p."""
    p, f_dp = 0.2, 0.08
    z = f_dp / (1 - p + f_dp)
    logits = tf.constant(np.linspace(-4, 2, 2001), tf.float32)
    n = logits.shape[0]

    def row_loss(label, kind):
        return dfl.defuse_loss(tf.fill([n], float(label)), logits, tf.fill([n], float(kind)),
                               tf.fill([n], f_dp), tf.fill([n], z)).numpy()

    expected = ((p - f_dp) * row_loss(1, 1) + f_dp * row_loss(1, 2) + (1 - p + f_dp) * row_loss(0, 0))
    best = tf.sigmoid(logits).numpy()[np.argmin(expected)]
    assert best == pytest.approx(p, abs=2e-3)
    np.testing.assert_allclose(expected, (1 + f_dp) * plain_bce(tf.fill([n], p), logits), rtol=1e-4)


def test_z2_is_eq_17_and_the_defuse_z2_loss_reads_the_models_own_prediction_not_f_rn():
    """z2 = f_dp/(f_dp + 1 − f_θ) is Eq. 17 when f_θ = p(y=1|x) and f_dp = p(y=1, d > w_o|x); ``defuse_z2`` puts
    the CVR model's stop-gradient prediction in it, so f_rn changes nothing and z adds no gradient path."""
    p, delayed = np.array([0.05, 0.2, 0.5, 0.9]), np.array([0.01, 0.08, 0.3, 0.1])
    z2 = dfl.fake_negative_probability_z2(tf.constant(delayed, tf.float32), tf.constant(p, tf.float32)).numpy()
    np.testing.assert_allclose(z2, delayed / ((1 - p) + delayed), rtol=1e-6)

    f = tf.sigmoid(LOGIT).numpy()
    z = F_DP.numpy() / (F_DP.numpy() + 1 - f)
    expected = dfl.defuse_loss(LABEL, LOGIT, SAMPLE_TYPE, F_DP, tf.constant(z, tf.float32))
    logit = tf.Variable(LOGIT)
    for f_rn in (F_RN, 1 - F_RN):
        with tf.GradientTape() as tape:
            loss = dfl._defuse_z2(LABEL, {"logit": logit, "f_dp": F_DP, "f_rn": f_rn}, SAMPLE_TYPE)
        np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-5)
        gradient = tape.gradient(loss, logit).numpy()
        # z held constant: d/ds of w_pos·softplus(−s) + w_neg·softplus(s) with the weights of this z.
        w_pos = np.where(SAMPLE_TYPE.numpy() == 1, 1 + F_DP.numpy(),
                         np.where(SAMPLE_TYPE.numpy() == 2, 1.0, z * F_DP.numpy()))
        w_neg = np.where(SAMPLE_TYPE.numpy() == 0, (1 - z) * (1 + F_DP.numpy()), 0.0)
        np.testing.assert_allclose(gradient, -w_pos * (1 - f) + w_neg * f, rtol=1e-4, atol=1e-6)


def test_no_gradient_reaches_the_auxiliary_parameters():
    auxiliary = tf.keras.layers.Dense(2)
    cvr = tf.keras.layers.Dense(1)
    x = tf.constant(RNG.normal(size=(N, 4)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        aux = tf.sigmoid(auxiliary(x))
        logit = cvr(x)[:, 0]
        prediction = {"logit": logit, "f_dp": aux[:, 0], "f_rn": aux[:, 1]}
        losses = {
            "defuse": dfl._defuse(LABEL, prediction, SAMPLE_TYPE),
            "defuse_z2": dfl._defuse_z2(LABEL, prediction, SAMPLE_TYPE),
            "es_dfm": dfl._es_dfm(LABEL, prediction, SAMPLE_TYPE),
            "defer": dfl._defer(LABEL, prediction, SAMPLE_TYPE),
        }
    for name, loss in losses.items():
        gradients = tape.gradient(loss, auxiliary.trainable_variables + cvr.trainable_variables)
        assert all(g is None or not np.any(g.numpy()) for g in gradients[:2]), name
        assert np.any(gradients[2].numpy()), f"{name}: the CVR model must get a gradient"


def test_bi_defuse_masks_duplicates_out_of_the_in_window_loss():
    inw, outw = LOGIT, tf.reverse(LOGIT, [0])
    loss = dfl.bi_defuse_loss(LABEL, inw, outw, SAMPLE_TYPE).numpy()
    f_out = tf.sigmoid(outw).numpy()
    kind = SAMPLE_TYPE.numpy()
    in_window = np.where(kind == 2, 0.0, plain_bce(LABEL, inw))
    out_window = np.where(kind == 2, plain_bce(tf.ones([N]), outw),
                          f_out * f_out * plain_bce(tf.ones([N]), outw)
                          + (1 - f_out) * (1 + f_out) * plain_bce(tf.zeros([N]), outw))
    np.testing.assert_allclose(loss, in_window + out_window, rtol=1e-5)



def test_es_dfm_and_defuse_have_the_same_expected_loss_given_the_same_auxiliaries():
    """Why the two tie on the simulator (bench/RESULTS.md): with f_rn = P(RN | observed negative) and DEFUSE's
    z1 = 1 − f_rn, both expect (1 + f_dp)·BCE(p, f) per click; they differ only in how rows share it."""
    p, f_dp = 0.2, 0.08
    f_rn = (1 - p) / (1 - p + f_dp)
    logits = tf.constant(np.linspace(-4, 2, 201), tf.float32)
    n = logits.shape[0]

    def expected(loss):
        def rows(label, kind):
            return loss(tf.fill([n], float(label)), tf.fill([n], float(kind))).numpy()
        return (p - f_dp) * rows(1, 1) + f_dp * rows(1, 2) + (1 - p + f_dp) * rows(0, 0)

    es_dfm = expected(lambda y, kind: dfl.es_dfm_loss(y, logits, kind, tf.fill([n], f_dp), tf.fill([n], f_rn)))
    defuse = expected(lambda y, kind: dfl.defuse_loss(y, logits, kind, tf.fill([n], f_dp),
                                                      dfl.fake_negative_probability_z1(tf.fill([n], f_rn))))
    np.testing.assert_allclose(es_dfm, (1 + f_dp) * plain_bce(tf.fill([n], p), logits), rtol=1e-4)
    np.testing.assert_allclose(defuse, es_dfm, rtol=1e-4)

def test_baseline_weights():
    p = tf.sigmoid(LOGIT).numpy()
    pos, neg = plain_bce(tf.ones([N]), LOGIT), plain_bce(tf.zeros([N]), LOGIT)
    y, f_dp, f_rn = LABEL.numpy(), F_DP.numpy(), F_RN.numpy()
    np.testing.assert_allclose(dfl.fnw_loss(LABEL, LOGIT, SAMPLE_TYPE).numpy(),
                               y * (1 + p) * pos + (1 - y) * (1 - p) * (1 + p) * neg, rtol=1e-5)
    np.testing.assert_allclose(dfl.es_dfm_loss(LABEL, LOGIT, SAMPLE_TYPE, F_DP, F_RN).numpy(),
                               y * (1 + f_dp) * pos + (1 - y) * (1 + f_dp) * f_rn * neg, rtol=1e-5)
    defer_pos = p / np.maximum(p - f_dp / 2, p / 2)
    np.testing.assert_allclose(dfl.defer_loss(LABEL, LOGIT, SAMPLE_TYPE, F_DP).numpy(),
                               y * defer_pos * pos + (1 - y) * (1 - p) / (1 - p + f_dp / 2) * neg, rtol=1e-5)
    final = tf.fill([N], float(dfl.FINAL_LABEL))  # rows with their true label: plain cross-entropy for every method
    for loss in (dfl.fnw_loss(LABEL, LOGIT, final), dfl.es_dfm_loss(LABEL, LOGIT, final, F_DP, F_RN),
                 dfl.defer_loss(LABEL, LOGIT, final, F_DP), dfl.defuse_loss(LABEL, LOGIT, final, F_DP, 1 - F_RN)):
        np.testing.assert_allclose(loss.numpy(), plain_bce(LABEL, LOGIT), rtol=1e-5)
    q = np.array([0.0, 0.2, 0.5, 0.9], np.float32)
    np.testing.assert_allclose(dfl.fnc_prediction(tf.constant(q)).numpy(), np.minimum(q / (1 - q), 1), rtol=1e-6)


def test_auxiliary_loss_trains_f_rn_on_observed_negatives_only():
    kinds = tf.constant([0, 1, 2, 5, 6, 7], tf.float32)
    f_dp_logit, f_rn_logit = tf.fill([6], 0.3), tf.fill([6], -0.2)
    loss = dfl.auxiliary_loss(f_dp_logit, f_rn_logit, kinds).numpy()
    assert np.all(loss[:3] == 0)  # stream rows train the CVR model, not the auxiliaries
    bce = lambda y, s: plain_bce(tf.constant([y], tf.float32), tf.constant([s]))[0]  # noqa: E731
    assert loss[3] == pytest.approx(bce(0, 0.3))  # an IP: f_dp label 0, no f_rn term
    assert loss[4] == pytest.approx(bce(1, 0.3) + bce(0, -0.2))
    assert loss[5] == pytest.approx(bce(0, 0.3) + bce(1, -0.2))


def test_a_task_hands_its_loss_the_columns_it_names():
    task, = tasks_from_config({"cvr": dict(label="label", loss="defuse", loss_columns=dict(sample_type="kind"))})
    assert task.columns() == ["label", "kind"]
    prediction = {"logit": LOGIT, "f_dp": F_DP, "f_rn": F_RN, "probability": tf.sigmoid(LOGIT)}
    losses = task.row_losses({"label": LABEL, "kind": SAMPLE_TYPE}, prediction)
    expected = dfl.defuse_loss(LABEL, LOGIT, SAMPLE_TYPE, F_DP, 1 - F_RN)
    np.testing.assert_allclose(losses.numpy(), expected.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="loss_columns names \\['kind'\\]"):
        tasks_from_config({"cvr": dict(label="label", loss="fnw", loss_columns=dict(kind="kind"))})
    assert Task("cvr", label="label", loss="defuse").columns() == ["label", "sample_type"]
