"""DIN's target attention and activations: the paper's equations against numpy, order and padding invariance."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.layers.activations import Dice, PReLU, activation_layer
from tfrecsys.layers.target_attention import ActivationUnit, TargetAttention, dice_as_batch_norm


def _history(batch=3, length=5, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(batch, length, dim)).astype(np.float32)
    query = rng.normal(size=(batch, dim)).astype(np.float32)
    lengths = np.array([length, 3, 0][:batch])
    mask = np.arange(length)[None, :] < lengths[:, None]
    return keys, mask, query


def test_target_attention_is_the_unnormalised_weighted_sum_of_the_activation_unit():
    keys, mask, query = _history()
    attention = TargetAttention(hidden_units=(8,), activation="sigmoid")
    pooled = attention(keys, mask, query).numpy()
    scores = attention.unit(keys, query).numpy()
    expected = np.einsum("bl,bld->bd", scores * mask, keys)
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)
    weights = attention.weights_for(keys, mask, query).numpy()
    assert not np.allclose(weights[:2].sum(axis=1), 1.0)  # not softmax-normalised
    np.testing.assert_array_equal(pooled[2], 0.0)  # an empty history pools to zeros


def test_activation_unit_input_is_key_query_difference_and_product():
    """Its first layer is a Dense layer on ``[e_j ; v_A ; e_j − v_A ; e_j ⊙ v_A]``, computed without the concat."""
    keys, _, query = _history(batch=2)
    unit = ActivationUnit(hidden_units=(), activation="relu")
    scores = unit(keys, query).numpy()
    kernel, bias = unit._first.kernel.numpy(), unit._first.bias.numpy()
    q = np.broadcast_to(query[:, None, :], keys.shape)
    features = np.concatenate([keys, q, keys - q, keys * q], axis=-1)
    np.testing.assert_allclose(scores, (features @ kernel)[..., 0] + bias, rtol=1e-5, atol=1e-5)


def _unpacked_scores(unit, keys, query, mask, training):
    """The activation unit over every ``[batch, len]`` slot with Dice's moments masked (its form before packing),
    from the unit's own weights: ``W [e ; q ; e − q ; e ⊙ q] + b``, then the hidden layers, padding zeroed."""
    q = tf.broadcast_to(query[:, tf.newaxis, :], tf.shape(keys))
    hidden = tf.tensordot(tf.concat([keys, q, keys - q, keys * q], -1), unit._first.kernel, axes=1) + unit._first.bias
    for index, activation in enumerate(unit._activations):
        if index:
            hidden = unit._dense[index - 1](hidden)
        hidden = activation(hidden, training=training, mask=mask)
    return tf.squeeze(unit._score(hidden), -1) * tf.cast(mask, hidden.dtype)


@pytest.mark.parametrize("training", [True, False])
def test_activation_unit_over_packed_valid_behaviours_equals_it_over_every_slot_in_values_and_gradients(training):
    """Only the valid behaviours go through the MLP; scores, and gradients to keys, query and every weight,
    equal the unit run over all slots with masked Dice moments (padding holds garbage that must not matter)."""
    keys, mask, query = _history(batch=3, length=6, dim=4)
    keys[~mask] = 50.0
    keys, query, mask = tf.constant(keys), tf.constant(query), tf.constant(mask)
    unit = ActivationUnit(hidden_units=(8, 4), activation="dice")
    unit(keys, query, key_mask=mask)
    for dice in unit._activations:  # inference moments away from the batch's, so both branches are checked
        dice.moving_mean.assign(tf.fill(dice.moving_mean.shape, 0.3))
        dice.moving_variance.assign(tf.fill(dice.moving_variance.shape, 2.0))
    results = []
    for function in (lambda k, q: unit(k, q, key_mask=mask, training=training),
                     lambda k, q: _unpacked_scores(unit, k, q, mask, training)):
        with tf.GradientTape() as tape:
            tape.watch([keys, query])
            scores = function(keys, query)
            loss = tf.reduce_sum(tf.sin(3.0 * scores))
        results.append((scores.numpy(), tape.gradient(loss, [keys, query] + unit.trainable_variables)))
    (packed, packed_gradients), (unpacked, unpacked_gradients) = results
    np.testing.assert_allclose(packed, unpacked, rtol=1e-5, atol=1e-6)
    assert (packed[~mask.numpy()] == 0).all() and np.abs(packed).sum() > 0
    for ours, reference in zip(packed_gradients, unpacked_gradients):
        np.testing.assert_allclose(tf.convert_to_tensor(ours).numpy(), tf.convert_to_tensor(reference).numpy(),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # an XLA compilation: about 1 s
def test_target_attention_compiles_under_xla_and_equals_the_packed_path_in_values_and_gradients():
    """XLA cannot pad packing's data-dependent row count through softmax weights and their gradient: an
    XLA-compiled step (``--jit_compile``) runs the unit over every slot, with the same results."""
    keys, mask, query = (tf.constant(x) for x in _history(batch=3, length=6, dim=4))
    attention = TargetAttention(hidden_units=(4,), activation="dice", normalization="softmax")
    attention(keys, mask, query)

    def pooled_and_gradients(keys, query):
        with tf.GradientTape() as tape:
            tape.watch([keys, query])
            pooled = attention(keys, mask, query, training=True)
            loss = tf.reduce_sum(tf.sin(3.0 * pooled))
        return pooled, tape.gradient(loss, [keys, query] + attention.trainable_variables)

    compiled, compiled_gradients = tf.function(pooled_and_gradients, jit_compile=True)(keys, query)
    packed, packed_gradients = pooled_and_gradients(keys, query)
    np.testing.assert_allclose(compiled.numpy(), packed.numpy(), rtol=1e-5, atol=1e-6)
    for xla, plain in zip(compiled_gradients, packed_gradients):
        np.testing.assert_allclose(tf.convert_to_tensor(xla).numpy(), tf.convert_to_tensor(plain).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_an_all_padding_batch_scores_zero_and_leaves_dice_moments_finite():
    unit = ActivationUnit(hidden_units=(8,), activation="dice")
    scores = unit(tf.ones([2, 3, 4]), tf.ones([2, 4]), key_mask=tf.zeros([2, 3], tf.bool), training=True)
    np.testing.assert_array_equal(scores.numpy(), np.zeros((2, 3)))
    assert np.isfinite(unit._activations[0].moving_mean.numpy()).all()
    assert np.isfinite(unit._activations[0].moving_variance.numpy()).all()


@pytest.mark.parametrize("normalization", ["none", "softmax"])
def test_target_attention_ignores_history_order_and_padding(normalization):
    keys, mask, query = _history(length=6)
    attention = TargetAttention(hidden_units=(8, 4), activation="dice", normalization=normalization)
    for training in (True, False):
        pooled = attention(keys, mask, query, training=training).numpy()
        permuted = np.random.default_rng(1).permutation(6)
        # Rows 0 and 1 permuted inside their valid prefix only; padded keys replaced by garbage.
        shuffled = keys.copy()
        shuffled[0] = keys[0, permuted]
        shuffled[1, :3] = keys[1, [2, 0, 1]]
        shuffled[~mask] = 1e3
        np.testing.assert_allclose(attention(shuffled, mask, query, training=training).numpy(), pooled,
                                   rtol=1e-4, atol=1e-5)
        # Extra padding columns change nothing either.
        padded = np.concatenate([keys, np.full((3, 2, 4), 7.0, np.float32)], axis=1)
        padded_mask = np.concatenate([mask, np.zeros((3, 2), bool)], axis=1)
        np.testing.assert_allclose(attention(padded, padded_mask, query, training=training).numpy(), pooled,
                                   rtol=1e-4, atol=1e-5)


def test_duplicating_a_behaviour_doubles_its_contribution():
    keys, _, query = _history(batch=1, length=2)
    attention = TargetAttention(hidden_units=(8,), activation="prelu")
    one = attention(keys[:, :1], np.ones((1, 1), bool), query).numpy()
    two = attention(np.repeat(keys[:, :1], 2, axis=1), np.ones((1, 2), bool), query).numpy()
    np.testing.assert_allclose(two, 2 * one, rtol=1e-5)


def test_softmax_normalised_weights_sum_to_one_over_valid_behaviours():
    keys, mask, query = _history()
    weights = TargetAttention(hidden_units=(8,), normalization="softmax").weights_for(keys, mask, query).numpy()
    np.testing.assert_allclose(weights.sum(axis=1), [1.0, 1.0, 0.0], atol=1e-6)
    assert (weights[~mask] == 0).all()


def test_mismatched_key_and_query_dimensions_are_named():
    with pytest.raises(ValueError, match="keys have dimension 4 but the query has 3"):
        TargetAttention(name="din_attention")(np.zeros((1, 2, 4), np.float32), np.ones((1, 2), bool),
                                              np.zeros((1, 3), np.float32))


def test_dice_is_data_adaptive_prelu():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 5)).astype(np.float32)
    dice = Dice(epsilon=1e-8, momentum=0.0)
    dice(x, training=True)
    dice.alpha.assign(np.full(5, 0.25, np.float32))
    out = dice(x, training=True).numpy()
    p = 1 / (1 + np.exp(-(x - x.mean(0)) / np.sqrt(x.var(0) + 1e-8)))
    np.testing.assert_allclose(out, p * x + (1 - p) * 0.25 * x, rtol=1e-4, atol=1e-5)
    # momentum 0: the moving moments are the last batch's, so inference reproduces training on that batch.
    np.testing.assert_allclose(dice(x, training=False).numpy(), out, rtol=1e-4, atol=1e-5)


def test_dice_moments_skip_masked_positions():
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    mask = np.array([[True, True, False, False], [True, True, True, False]])
    dice = Dice(momentum=0.0)
    dice(x, training=True, mask=mask)
    np.testing.assert_allclose(dice.moving_mean.numpy(), x[mask].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dice.moving_variance.numpy(), x[mask].var(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("masked", [True, False])
def test_masked_dice_and_its_gradients_equal_the_papers_formula_over_valid_positions(masked):
    """The factored, matmul-moment implementation with its hand-written gradient against eq. 4 written out
    with weighted sums (the layer's earlier form) and differentiated by TensorFlow, values and gradients
    through the batch moments alike; without a mask every position counts."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(1.0, 2.0, size=(4, 6, 5)).astype(np.float32))
    valid = np.arange(6)[None, :] < np.array([6, 2, 0, 4])[:, None]
    mask = tf.constant(valid if masked else np.ones_like(valid))
    dice = Dice()
    dice.build(x.shape)
    dice.alpha.assign(rng.normal(size=5).astype(np.float32))

    def paper(s):
        weights = tf.cast(mask, s.dtype)[..., tf.newaxis]
        count = tf.reduce_sum(weights, axis=[0, 1])
        mean = tf.reduce_sum(s * weights, axis=[0, 1]) / count
        variance = tf.reduce_sum(tf.square(s - mean) * weights, axis=[0, 1]) / count
        p = tf.sigmoid((s - mean) / tf.sqrt(variance + dice.epsilon))
        return p * s + (1.0 - p) * dice.alpha * s

    outputs, gradients = [], []
    for function in (lambda s: dice(s, training=True, mask=mask if masked else None), paper):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = function(x)
            loss = tf.reduce_sum(tf.sin(out) * tf.cast(mask, out.dtype)[..., tf.newaxis])
        outputs.append(out.numpy())
        gradients.append(tape.gradient(loss, [x, dice.alpha]))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for ours, reference in zip(*gradients):
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [37, 1, 0])
def test_dice_as_batch_norm_equals_dice_in_values_gradients_and_moving_moments(rows):
    """The activation unit's fused form of Dice over all-valid rows against the layer itself: outputs, the
    gradients to the rows and to α, and the moving moments after the update (Bessel's correction undone);
    one row (variance 0) and no rows (zeros, not NaN) included."""
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(1.5, 3.0, size=(rows, 6)).astype(np.float32))
    results = []
    for fused in (True, False):
        dice = Dice(momentum=0.9)
        dice.build(tf.TensorShape([None, 6]))
        dice.alpha.assign(np.linspace(-0.5, 0.8, 6).astype(np.float32))
        dice.moving_mean.assign(np.full(6, 0.3, np.float32))
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = dice_as_batch_norm(dice, x) if fused else dice(x, training=True)
            loss = tf.reduce_sum(tf.sin(2.0 * out) * tf.range(1.0, 7.0))
        gradients = tape.gradient(loss, [x, dice.alpha])
        results.append([out.numpy()] + [g.numpy() for g in gradients]
                       + [dice.moving_mean.numpy(), dice.moving_variance.numpy()])
    # One row: x̂ ≡ 0, and its zero gradient is a difference of terms scaled by 1/sqrt(ε) = 1e4 in both forms,
    # so their rounding differs at 1e-4 relative there.
    tolerance = 1e-3 if rows == 1 else 2e-5
    for fused, layer in zip(*results):
        assert np.isfinite(fused).all()
        np.testing.assert_allclose(fused, layer, rtol=tolerance, atol=tolerance)
    if rows:
        np.testing.assert_allclose(results[0][3], 0.9 * 0.3 + 0.1 * x.numpy().mean(0), rtol=1e-5)
        np.testing.assert_allclose(results[0][4], 0.9 + 0.1 * x.numpy().var(0), rtol=1e-5)


def test_packed_activation_unit_runs_dice_as_one_batch_norm_op_in_training_only():
    """The training trace of the packed unit holds a FusedBatchNormV3 per Dice and no Dice layer call; an
    inference trace (moving moments) and a masked XLA-free call over every slot use the layer."""
    keys, mask, query = (tf.constant(x) for x in _history(batch=3, length=6, dim=4))
    unit = ActivationUnit(hidden_units=(8, 4), activation="dice")
    unit(keys, query, key_mask=mask)

    def op_types(training):
        graph = tf.function(lambda k, q: unit(k, q, key_mask=mask, training=training)).get_concrete_function(
            keys, query).graph
        return [op.type for op in graph.get_operations()]

    assert op_types(True).count("FusedBatchNormV3") == 2
    assert "FusedBatchNormV3" not in op_types(False)


def test_dice_under_mixed_bfloat16_keeps_its_moving_moments_in_float32():
    """bfloat16 compute, float32 running moments updated in float32: with momentum 0.999 a 16-bit update
    ``0.999 · 1 + 0.001 · 2`` would round to 1.0 (bfloat16 has 8 bits of mantissa)."""
    x = tf.fill([4, 3, 2], 2.0)  # batch mean 2, variance 0
    mask = tf.constant([[True, True, False]] * 4)
    dice = Dice(momentum=0.999, dtype="mixed_bfloat16")
    dice.build(x.shape)
    dice.moving_mean.assign(tf.ones([2]))
    out = dice(x, training=True, mask=mask)
    assert out.dtype == tf.bfloat16 and dice.moving_mean.dtype == tf.float32
    np.testing.assert_allclose(dice.moving_mean.numpy(), 1.001, rtol=1e-6)
    np.testing.assert_allclose(dice.moving_variance.numpy(), 0.999, rtol=1e-6)
    assert dice(x, training=False).dtype == tf.bfloat16


def test_prelu_and_activation_names():
    prelu = PReLU()
    x = np.array([[-2.0, 3.0]], np.float32)
    prelu(x)
    prelu.alpha.assign([0.5, 0.5])
    np.testing.assert_allclose(prelu(x).numpy(), [[-1.0, 3.0]])
    assert isinstance(activation_layer("dice"), Dice)
    np.testing.assert_allclose(activation_layer("relu")(x).numpy(), [[0.0, 3.0]])
