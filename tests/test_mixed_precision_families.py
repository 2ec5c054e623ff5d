"""Mixed precision (``--mixed_precision=mixed_float16`` / ``mixed_bfloat16``, docs/distributed-training.md,
"Mixed precision and XLA on GPUs"): the layers whose float32 constants do not survive 16 bits.

Each test builds the layer under the policy a GPU user trains with and feeds it the rows that broke it:
a constant that is finite in float32 and bfloat16 (8 exponent bits) can be ``inf`` in float16 (5 bits, largest
finite 65504)."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.layers.search import ExactSearchUnit, SoftSearch, relevance_pooling
from tfrecsys.train.strategy import precision_policy

POLICIES = ["mixed_float16", "mixed_bfloat16"]


@pytest.mark.parametrize("policy", POLICIES)
def test_sim_search_units_give_zeros_not_nan_for_a_row_with_nothing_selected(policy):
    """SIM's ESU and soft-search pooling masked padding with −1e9, which is −inf in float16: a row with no
    behaviour selected (an empty history, or no match of the target's category) softmaxed to NaN, and under
    mixed_float16 SIM's first step failed in GAUC's update on NaN scores."""
    rng = np.random.default_rng(0)
    selected = tf.constant(rng.normal(size=(3, 4, 6)), tf.float32)
    mask = tf.constant([[True, True, False, False], [False] * 4, [True] * 4])
    target = tf.constant(rng.normal(size=(3, 5)), tf.float32)
    with precision_policy(policy):
        unit = ExactSearchUnit(num_heads=2, head_dim=4)
        search = SoftSearch(top_k=2, projection_dim=4)
        compute = tf.as_dtype(unit.compute_dtype)
        heads = unit(tf.cast(selected, compute), mask, tf.cast(target, compute))
        _, _, relevance = search(tf.cast(selected, compute), mask, tf.cast(target, compute))
        pooled = relevance_pooling(tf.cast(selected, compute), mask, relevance)
    assert heads.dtype == compute and relevance.dtype == compute
    for name, value in (("ESU heads", heads), ("relevance pooling", pooled)):
        value = tf.cast(value, tf.float32).numpy()
        assert np.all(np.isfinite(value)), (name, value)
        np.testing.assert_array_equal(value[1], 0.0)  # nothing selected: zeros
        assert np.abs(value[0]).max() > 0 and np.abs(value[2]).max() > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_dice_trains_on_channels_of_small_or_zero_variance(policy):
    """DIN/DIEN's Dice under the policy, on a batch with a channel constant over the batch and on activations
    of small variance: finite outputs and gradients, the float32 layer's within 16-bit rounding. In float16
    ε = 1e-8 rounded to 0 (``0 · rsqrt(0) = NaN``) and the gradient's ``(Var + ε)^(−3/2)`` overflowed."""
    from tfrecsys.layers.activations import Dice

    rng = np.random.default_rng(0)
    constant_channel = rng.normal(size=(6, 3)).astype(np.float32)
    constant_channel[:, 1] = 0.5
    weights = tf.range(6.0)[:, tf.newaxis]

    def step(layer, rows):
        rows = tf.cast(rows, layer.compute_dtype)
        with tf.GradientTape() as tape:
            tape.watch(rows)
            trained = layer(rows, training=True)
            loss = tf.reduce_sum(tf.cast(trained, tf.float32) * weights)
        served = layer(rows, training=False)
        return [tf.cast(t, tf.float32).numpy() for t in (trained, tape.gradient(loss, rows), served)]

    for rows in (constant_channel, rng.normal(size=(6, 3)).astype(np.float32) * 1e-2):
        with precision_policy(policy):
            layer = Dice()
            got = step(layer, rows)
        assert layer.compute_dtype != "float32"
        # The float32 layer on the same rows rounded to 16 bits: what is left is the layer's own rounding.
        expected = step(Dice(), tf.cast(tf.cast(rows, layer.compute_dtype), tf.float32))
        for value, reference in zip(got, expected):
            assert np.all(np.isfinite(value)), (policy, value)
            np.testing.assert_allclose(value, reference, rtol=0.02, atol=0.02 * np.abs(reference).max())
