"""DIEN's recurrent layers: gate convention, attention 0 keeps the state, padding, auxiliary loss, order."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.layers.augru import AttentionGRUCell, InterestEvolution, InterestExtractor, auxiliary_loss
from tfrecsys.layers.auxiliary_net import AuxiliaryNet
from tfrecsys.layers.regularization import mini_batch_aware_l2

UNITS, DIM = 4, 3


def _cell(variant):
    cell = AttentionGRUCell(UNITS, variant)
    cell.build([None, DIM + 1])
    rng = np.random.default_rng(0)
    for weight in cell.weights:
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    return cell


@pytest.mark.parametrize("variant", ["agru", "augru"])
def test_attention_zero_keeps_the_hidden_state_exactly(variant):
    cell = _cell(variant)
    rng = np.random.default_rng(1)
    x, state = rng.normal(size=(5, DIM)).astype(np.float32), rng.normal(size=(5, UNITS)).astype(np.float32)
    attention = np.array([[0.0], [0.0], [0.5], [1.0], [0.0]], np.float32)
    new_state, _ = cell(np.concatenate([x, attention], axis=1), [state])
    keep = attention[:, 0] == 0
    np.testing.assert_array_equal(new_state.numpy()[keep], state[keep])
    assert not np.allclose(new_state.numpy()[~keep], state[~keep])


def test_augru_with_attention_one_is_the_keras_gru_with_the_update_gate_flipped():
    """Keras' GRU keeps ``z`` of the old state, DIEN's ``u = 1 − z``: σ(−x) = 1 − σ(x), so negating the update
    gate's weights maps one onto the other."""
    cell = _cell("augru")
    keras_cell = tf.keras.layers.GRUCell(UNITS, reset_after=True)
    keras_cell.build([None, DIM])
    flip = np.concatenate([-np.ones(UNITS), np.ones(2 * UNITS)]).astype(np.float32)
    keras_cell.kernel.assign(cell.kernel.numpy() * flip)
    keras_cell.recurrent_kernel.assign(cell.recurrent_kernel.numpy() * flip)
    keras_cell.bias.assign(cell.bias.numpy() * flip)
    rng = np.random.default_rng(2)
    x, state = rng.normal(size=(5, DIM)).astype(np.float32), rng.normal(size=(5, UNITS)).astype(np.float32)
    ours, _ = cell(np.concatenate([x, np.ones((5, 1), np.float32)], axis=1), [state])
    theirs, _ = keras_cell(tf.constant(x), [tf.constant(state)])
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


def _sequences(batch=3, length=5, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(batch, length, UNITS)).astype(np.float32)
    mask = np.arange(length)[None, :] < np.array([length, 3, 0][:batch])[:, None]
    target = rng.normal(size=(batch, UNITS)).astype(np.float32)
    return values, mask, target


@pytest.mark.parametrize("variant", ["aigru", "agru", "augru"])
def test_evolution_ignores_padding_and_depends_on_order(variant):
    values, mask, target = _sequences()
    tf.keras.utils.set_random_seed(0)
    evolution = InterestEvolution(UNITS, variant, attention_units=(8,), attention_activation="sigmoid")
    final = evolution(values, mask, target).numpy()
    garbage = np.where(mask[..., None], values, 50.0).astype(np.float32)
    np.testing.assert_allclose(evolution(garbage, mask, target).numpy(), final, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(evolution(values[1:2, :3], mask[1:2, :3], target[1:2]).numpy(), final[1:2],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(final[2], 0.0)  # empty history: the initial state
    reversed_values = values.copy()
    reversed_values[0] = values[0, ::-1]
    assert np.abs(evolution(reversed_values, mask, target).numpy()[0] - final[0]).max() > 1e-3


def test_extractor_states_follow_the_valid_steps_only():
    values, mask, _ = _sequences()
    extractor = InterestExtractor(UNITS)
    states = extractor(values, mask).numpy()
    alone = extractor(values[1:2, :3], mask[1:2, :3]).numpy()
    np.testing.assert_allclose(states[1, :3], alone[0], rtol=1e-5, atol=1e-6)


def test_auxiliary_loss_is_the_papers_mean_over_valid_next_step_pairs():
    rng = np.random.default_rng(3)
    states, positives, negatives = (rng.normal(size=(2, 4, 3)).astype(np.float32) for _ in range(3))
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    terms = [-np.log(sigmoid(states[b, t] @ positives[b, t + 1])) - np.log(1 - sigmoid(states[b, t] @ negatives[b, t + 1]))
             for b, t in [(0, 0), (0, 1), (1, 0)]]
    loss = auxiliary_loss(states, positives, negatives, mask).numpy()
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)
    garbage = np.where(mask[..., None], positives, 9.0).astype(np.float32)
    np.testing.assert_allclose(auxiliary_loss(states, garbage, negatives, mask).numpy(), loss, rtol=1e-6)
    assert auxiliary_loss(states, positives, negatives, np.zeros_like(mask)).numpy() == 0.0


def test_auxiliary_loss_scores_each_pair_with_the_auxiliary_net():
    rng = np.random.default_rng(4)
    states, positives, negatives = (rng.normal(size=(2, 4, 3)).astype(np.float32) for _ in range(3))
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    tf.keras.utils.set_random_seed(0)
    net = AuxiliaryNet((5,))
    loss = auxiliary_loss(states, positives, negatives, mask, scorer=net).numpy()
    positive_logits = net(states[:, :-1], positives[:, 1:]).numpy()
    negative_logits = net(states[:, :-1], negatives[:, 1:]).numpy()
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    terms = [softplus(-positive_logits[b, t]) + softplus(negative_logits[b, t]) for b, t in [(0, 0), (0, 1), (1, 0)]]
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)
    # The net reads the state and the behaviour together: a state of another scale changes the logits.
    assert not np.allclose(net(2 * states[:, :-1], positives[:, 1:]).numpy(), positive_logits)
    assert net(states, positives).shape == (2, 4)


def test_mini_batch_aware_l2_counts_each_used_row_once():
    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))
    rows = tf.constant([[1, 3, 3], [1, 0, 0]])
    expected = 0.1 * sum(np.sum(table.numpy()[j] ** 2) for j in (0, 1, 3))
    np.testing.assert_allclose(mini_batch_aware_l2(table, rows, 0.1).numpy(), expected, rtol=1e-6)
    with tf.GradientTape() as tape:
        penalty = mini_batch_aware_l2(table, rows, 0.1)
    gradient = tf.convert_to_tensor(tape.gradient(penalty, table)).numpy()
    assert (gradient[[2, 4, 5]] == 0).all() and (gradient[[0, 1, 3]] != 0).any()
