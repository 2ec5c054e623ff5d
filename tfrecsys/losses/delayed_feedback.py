"""Delayed-feedback CVR losses: DEFUSE (Chen et al., WWW 2022), Bi-DEFUSE and the baselines FNW/FNC (Ktena et
al. 2019), ES-DFM (Yang et al. 2021) and DEFER (Gu et al. 2021).

Every loss here is importance-weighted cross-entropy over the rows of a delayed-feedback stream
(``tfrecsys.data.delayed_feedback_stream``), written from the CVR logit ``s`` (``f_θ = sigmoid(s)``) so it is
stable for any logit:

    ℓ(row) = w_pos(row) · softplus(−s) + w_neg(row) · softplus(s)  =  w_pos·[−log f] + w_neg·[−log(1 − f)]

The methods differ in the stream they read and in ``(w_pos, w_neg)``; ``p`` is the model's own prediction,
``f_dp(x) = p(y=1, d > w_o | x)`` and ``f_rn(x) = P(real negative | observed negative, x)`` come from the
auxiliary models. All three enter the weights under ``tf.stop_gradient``: a weight is a constant of the step,
and no gradient reaches the auxiliary models' parameters through this loss.

A row's ``sample_type`` (a column of the stream) says how it entered the stream:

=====  ========================  ===============================================================================
code   name                      row
=====  ========================  ===============================================================================
0      ``OBSERVED_NEGATIVE``     first emission, no conversion seen yet (a fake or a real negative in truth)
1      ``IMMEDIATE_POSITIVE``    first emission, converted within the observation window ``w_o`` (IP)
2      ``DELAYED_POSITIVE``      duplicate emitted at conversion time, label 1 (DP)
3      ``ATTRIBUTED_DUPLICATE``  DEFER's duplicate of an IP or real-negative click after ``w_a``, real label
4      ``FINAL_LABEL``           a click with its final label (Oracle; the pretraining period; evaluation): plain
                                 cross-entropy under every method
5–7    ``AUXILIARY_*``           a click after ``w_a`` with its final label (IP / DP / RN), training rows of the
                                 auxiliary models only
=====  ========================  ===============================================================================

A CVR task masks the auxiliary rows out (``mask="sample_type < 5"``), the auxiliary task everything else.
"""

import tensorflow as tf

from tfrecsys.models.tasks import register_loss

OBSERVED_NEGATIVE, IMMEDIATE_POSITIVE, DELAYED_POSITIVE, ATTRIBUTED_DUPLICATE, FINAL_LABEL = 0, 1, 2, 3, 4
AUXILIARY_IMMEDIATE, AUXILIARY_DELAYED, AUXILIARY_REAL_NEGATIVE = 5, 6, 7
SAMPLE_TYPES = ("observed_negative", "immediate_positive", "delayed_positive", "attributed_duplicate",
                "final_label", "auxiliary_immediate", "auxiliary_delayed", "auxiliary_real_negative")
FIRST_AUXILIARY = AUXILIARY_IMMEDIATE
# The stop-gradient model prediction ``p`` and auxiliary outputs stay inside (ε, 1 − ε) in denominators.
_EPSILON = 1e-6


def weighted_cross_entropy(logit, positive_weight, negative_weight):
    """``w_pos · softplus(−s) + w_neg · softplus(s)`` ``[batch]``; the weights are taken as constants."""
    positive_weight, negative_weight = tf.stop_gradient(positive_weight), tf.stop_gradient(negative_weight)
    return positive_weight * tf.nn.softplus(-logit) + negative_weight * tf.nn.softplus(logit)


def stream_cross_entropy(label, logit, sample_type, positive_weight, negative_weight):
    """A method's weighted cross-entropy on its stream rows, plain cross-entropy on ``FINAL_LABEL`` rows (whose
    label is the truth, so no importance weight applies)."""
    final = tf.equal(sample_type, FINAL_LABEL)
    return weighted_cross_entropy(logit, tf.where(final, label, positive_weight),
                                  tf.where(final, 1.0 - label, negative_weight))


def defuse_weights(f_dp):
    """The weights of DEFUSE's Eq. 15 with the paper's choice ``w_DP = 1``, ``w_FN = f_dp``:
    ``w_IP = w_RN = 1 + f_dp`` and ``w_DP + w_FN = 1 + f_dp`` ``[batch]`` each."""
    f_dp = tf.stop_gradient(f_dp)
    return {"IP": 1.0 + f_dp, "RN": 1.0 + f_dp, "DP": tf.ones_like(f_dp), "FN": f_dp}


def fake_negative_probability_z1(f_rn):
    """``z1(x) = 1 − f_rn(x)``: the probability that an observed negative is a fake negative."""
    return 1.0 - tf.stop_gradient(f_rn)


def fake_negative_probability_z2(f_dp, probability):
    """``z2(x) = f_dp / (f_dp + 1 − f_θ)`` (Eq. 17 when ``f_θ = p(y=1|x)`` and ``f_dp = p(y=1, d > w_o|x)``)."""
    f_dp, probability = tf.stop_gradient(f_dp), tf.stop_gradient(probability)
    return tf.clip_by_value(f_dp / tf.maximum(f_dp + 1.0 - probability, _EPSILON), 0.0, 1.0)


def defuse_loss(label, logit, sample_type, f_dp, z):
    """DEFUSE, Eq. 15 negated, per row ``[batch]``:

    * IP (``v = 1``, ``I_IP = 1``): ``w_IP · [−log f]``; DP (``v = 1``, ``I_IP = 0``): ``w_DP · [−log f]`` — an
      observed positive carries the IP weight or the DP weight, never both;
    * observed negative (``v = 0``): ``z · w_FN · [−log f] + (1 − z) · w_RN · [−log(1 − f)]``.

    ``label`` is the observed label ``v``; ``z`` the fake-negative probability (``z1`` or ``z2``).
    """
    weights = defuse_weights(f_dp)
    z = tf.stop_gradient(z)
    immediate = tf.cast(tf.equal(sample_type, IMMEDIATE_POSITIVE), tf.float32)
    positive_weight = label * (immediate * weights["IP"] + (1.0 - immediate) * weights["DP"])
    positive_weight += (1.0 - label) * z * weights["FN"]
    negative_weight = (1.0 - label) * (1.0 - z) * weights["RN"]
    return stream_cross_entropy(label, logit, sample_type, positive_weight, negative_weight)


def fnw_loss(label, logit, sample_type):
    """Fake Negative Weighted: ``w_pos = 1 + p``, ``w_neg = (1 − p)(1 + p)`` on the ``w_o = 0`` stream."""
    p = tf.stop_gradient(tf.sigmoid(logit))
    return stream_cross_entropy(label, logit, sample_type, label * (1.0 + p), (1.0 - label) * (1.0 - p) * (1.0 + p))


def fnc_prediction(probability):
    """Fake Negative Calibration's inference: the model learns ``q = p/(1 + p)`` on the ``w_o = 0`` stream, so
    ``p = q / (1 − q)``, clipped to [0, 1]."""
    return tf.clip_by_value(probability / tf.maximum(1.0 - probability, _EPSILON), 0.0, 1.0)


def es_dfm_loss(label, logit, sample_type, f_dp, f_rn):
    """ES-DFM: ``w_pos = 1 + f_dp``, ``w_neg = (1 + f_dp) · f_rn`` on the ES-DFM stream."""
    f_dp, f_rn = tf.stop_gradient(f_dp), tf.stop_gradient(f_rn)
    return stream_cross_entropy(label, logit, sample_type, label * (1.0 + f_dp), (1.0 - label) * (1.0 + f_dp) * f_rn)


def defer_loss(label, logit, sample_type, f_dp):
    """DEFER: ``w_pos = p / (p − f_dp/2)``, ``w_neg = (1 − p) / (1 − p + f_dp/2)``, from
    ``q(y=0|x) = p(y=0|x) + f_dp(x)/2`` of its stream (every click ingested twice; the digest's Eq. 11 as printed
    is garbled). ``p − f_dp/2`` is kept at least ``p/2``: the auxiliary model can overshoot the CVR model."""
    p = tf.stop_gradient(tf.sigmoid(logit))
    f_dp = tf.stop_gradient(f_dp)
    positive_weight = p / tf.maximum(p - 0.5 * f_dp, tf.maximum(0.5 * p, _EPSILON))
    negative_weight = (1.0 - p) / (1.0 - p + 0.5 * f_dp)
    return stream_cross_entropy(label, logit, sample_type, label * positive_weight, (1.0 - label) * negative_weight)


def bi_defuse_loss(label, inw_logit, outw_logit, sample_type):
    """Bi-DEFUSE, Eq. 21: ``L_IP + L_DP`` per row ``[batch]``.

    * ``L_IP`` (Eq. 19): plain cross-entropy of the in-window head on the non-duplicated rows, label ``v``
      (1 only for an IP); a DP duplicate adds nothing to it.
    * ``L_DP`` (Eq. 20): the out-window head on the FNW-style view (``w'_o = 0``): DP duplicates are positives
      (``w'_DP = 1``), every original row a negative with ``z' = F_DP``, ``w'_FN = F_DP`` on ``[−log F_DP]`` and
      ``w'_RN = 1 + F_DP`` on ``[−log(1 − F_DP)]`` (``F_DP`` the head's own stop-gradient prediction).
    """
    duplicate = tf.cast(tf.equal(sample_type, DELAYED_POSITIVE), tf.float32)
    original = 1.0 - duplicate
    in_window = original * weighted_cross_entropy(inw_logit, label, 1.0 - label)
    f_out = tf.stop_gradient(tf.sigmoid(outw_logit))
    z = f_out
    out_window = weighted_cross_entropy(outw_logit, duplicate + original * z * f_out,
                                        original * (1.0 - z) * (1.0 + f_out))
    return in_window + out_window


def auxiliary_loss(f_dp_logit, f_rn_logit, sample_type):
    """The auxiliary models' loss on the rows of clicks older than ``w_a`` (``AUXILIARY_*``; 0 elsewhere, and
    the task's mask ``sample_type >= 5`` leaves those rows out of its mean):

    * ``f_dp``: delayed positive (``w_o < d ≤ w_a``) 1, immediate positive and real negative 0, on every row;
    * ``f_rn``: real negative 1, delayed positive 0, on the observed negatives only (IPs are left out).
    """
    auxiliary = tf.cast(sample_type >= FIRST_AUXILIARY, tf.float32)
    delayed = tf.cast(tf.equal(sample_type, AUXILIARY_DELAYED), tf.float32)
    real_negative = tf.cast(tf.equal(sample_type, AUXILIARY_REAL_NEGATIVE), tf.float32)
    f_dp_loss = weighted_cross_entropy(f_dp_logit, delayed, auxiliary - delayed)
    f_rn_loss = weighted_cross_entropy(f_rn_logit, real_negative, delayed)
    return f_dp_loss + f_rn_loss


# The registry's losses read the model's dict prediction: the CVR ``logit`` (Bi-DEFUSE: ``inw_logit`` and
# ``outw_logit``), the auxiliary outputs ``f_dp`` and ``f_rn`` [batch], and for the auxiliary task
# ``f_dp_logit`` and ``f_rn_logit``. ``probability`` is what the task's metrics compare with the label.
_BINARY = ("auc", "logloss")


@register_loss("logit_cross_entropy", default_metrics=_BINARY, binary=True)
def _logit_cross_entropy(label, prediction):
    """Plain cross-entropy from the logit: Vanilla, Oracle and FNC (whose correction is at inference)."""
    return weighted_cross_entropy(prediction["logit"], label, 1.0 - label)


@register_loss("fnw", default_metrics=_BINARY, binary=True, columns=("sample_type",))
def _fnw(label, prediction, sample_type):
    return fnw_loss(label, prediction["logit"], sample_type)


@register_loss("es_dfm", default_metrics=_BINARY, binary=True, columns=("sample_type",))
def _es_dfm(label, prediction, sample_type):
    return es_dfm_loss(label, prediction["logit"], sample_type, prediction["f_dp"], prediction["f_rn"])


@register_loss("defer", default_metrics=_BINARY, binary=True, columns=("sample_type",))
def _defer(label, prediction, sample_type):
    return defer_loss(label, prediction["logit"], sample_type, prediction["f_dp"])


@register_loss("defuse", default_metrics=_BINARY, binary=True, columns=("sample_type",))
def _defuse(label, prediction, sample_type):
    """DEFUSE with ``z1 = 1 − f_rn`` (the paper's and the reference code's default)."""
    return defuse_loss(label, prediction["logit"], sample_type, prediction["f_dp"],
                       fake_negative_probability_z1(prediction["f_rn"]))


@register_loss("defuse_z2", default_metrics=_BINARY, binary=True, columns=("sample_type",))
def _defuse_z2(label, prediction, sample_type):
    """DEFUSE with ``z2 = f_dp / (f_dp + 1 − f_θ)``."""
    return defuse_loss(label, prediction["logit"], sample_type, prediction["f_dp"],
                       fake_negative_probability_z2(prediction["f_dp"], tf.sigmoid(prediction["logit"])))


@register_loss("bi_defuse", default_metrics=_BINARY, binary=True, columns=("sample_type",))
def _bi_defuse(label, prediction, sample_type):
    return bi_defuse_loss(label, prediction["inw_logit"], prediction["outw_logit"], sample_type)


@register_loss("delayed_feedback_auxiliary", needs_label=False, columns=("sample_type",))
def _auxiliary(_, prediction, sample_type):
    return auxiliary_loss(prediction["f_dp_logit"], prediction["f_rn_logit"], sample_type)
