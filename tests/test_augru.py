"""DIEN's recurrent layers: gate convention, attention 0 keeps the state, padding, auxiliary loss, order."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.layers.augru import (GATES, AttentionGRUCell, InterestEvolution, InterestExtractor, _compiled_steps,
                                   _update, auxiliary_loss, gated_recurrence)
from tfrecsys.layers.auxiliary_net import AuxiliaryNet
from tfrecsys.layers.regularization import mini_batch_aware_l2
from tfrecsys.layers.xla import serving_mode

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


@pytest.mark.parametrize("variant,attention", [("augru", 1.0), ("augru_keep", 0.0)])
def test_augru_with_attention_one_is_the_keras_gru_with_the_update_gate_flipped(variant, attention):
    """Keras' GRU keeps ``z`` of the old state, DIEN's ``u = 1 − z``: σ(−x) = 1 − σ(x), so negating the update
    gate's weights maps one onto the other. DeepCTR's AUGRU (``augru_keep``) is that GRU at attention 0."""
    cell = _cell(variant)
    keras_cell = tf.keras.layers.GRUCell(UNITS, reset_after=True)
    keras_cell.build([None, DIM])
    flip = np.concatenate([-np.ones(UNITS), np.ones(2 * UNITS)]).astype(np.float32)
    keras_cell.kernel.assign(cell.kernel.numpy() * flip)
    keras_cell.recurrent_kernel.assign(cell.recurrent_kernel.numpy() * flip)
    keras_cell.bias.assign(cell.bias.numpy() * flip)
    rng = np.random.default_rng(2)
    x, state = rng.normal(size=(5, DIM)).astype(np.float32), rng.normal(size=(5, UNITS)).astype(np.float32)
    ours, _ = cell(np.concatenate([x, np.full((5, 1), attention, np.float32)], axis=1), [state])
    theirs, _ = keras_cell(tf.constant(x), [tf.constant(state)])
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


def _sequences(batch=3, length=5, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(batch, length, UNITS)).astype(np.float32)
    mask = np.arange(length)[None, :] < np.array([length, 3, 0][:batch])[:, None]
    target = rng.normal(size=(batch, UNITS)).astype(np.float32)
    return values, mask, target


@pytest.mark.parametrize("variant", ["aigru", "agru", "augru", "augru_keep"])
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


def test_auxiliary_loss_grid_normalization_divides_the_valid_pairs_sum_by_every_slot():
    """DeepCTR's mean: sum over the 3 valid pairs / (batch · (len − 1)) = /6, where the default divides by 3."""
    rng = np.random.default_rng(3)
    states, positives, negatives = (rng.normal(size=(2, 4, 3)).astype(np.float32) for _ in range(3))
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    valid_pairs_mean = auxiliary_loss(states, positives, negatives, mask).numpy()
    grid = auxiliary_loss(states, positives, negatives, mask, normalization="grid").numpy()
    np.testing.assert_allclose(grid, 3 * valid_pairs_mean / (2 * 3), rtol=1e-6)
    assert auxiliary_loss(states, positives, negatives, np.zeros_like(mask), normalization="grid").numpy() == 0.0
    with pytest.raises(ValueError, match="normalization must be one of"):
        auxiliary_loss(states, positives, negatives, mask, normalization="rows")


def test_gate_bias_starts_keep_and_reset_gates_like_tf_compat_v1_gru_cell():
    """gate_bias 1: Keras GRUCells' update (= keep) and reset biases 1, the paper-convention AUGRU cell's update
    bias −1 (its keep share 1 − u at σ(1)) and reset 1; candidate and recurrent biases 0."""
    units, dim = 2, 3
    extractor = InterestExtractor(units, gate_bias=1.0)
    extractor.build([None, 4, dim])
    evolutions = {variant: InterestEvolution(units, variant, attention_units=(4,), gate_bias=1.0)
                  for variant in ("aigru", "augru")}
    for evolution in evolutions.values():
        evolution.build([None, 4, dim])
    zeros = [0.0] * units
    keep_first = np.array([[1.0] * 2 * units + zeros, zeros * 3])
    np.testing.assert_array_equal(extractor.cell.bias.numpy(), keep_first)
    np.testing.assert_array_equal(evolutions["aigru"].cell.bias.numpy(), keep_first)
    np.testing.assert_array_equal(evolutions["augru"].cell.bias.numpy(),
                                  np.array([[-1.0] * units + [1.0] * units + zeros, zeros * 3]))
    default = InterestExtractor(units)
    default.build([None, 4, dim])
    assert not default.cell.bias.numpy().any()
    assert InterestEvolution.from_config(evolutions["augru"].get_config()).gate_bias == 1.0


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


def test_auxiliary_net_projects_a_shared_state_once_with_the_concatenation_kernel_in_values_and_gradients():
    """``W_h h + W_e e + b`` with one state broadcast against its positive and negative behaviour equals the
    MLP on ``[h ; e]`` per pair (the same kernel), values and gradients to states, behaviours and weights."""
    rng = np.random.default_rng(6)
    states = tf.constant(rng.normal(size=(7, 3)).astype(np.float32))
    behaviours = tf.constant(rng.normal(size=(2, 7, 4)).astype(np.float32))
    tf.keras.utils.set_random_seed(0)
    net = AuxiliaryNet((6, 5))
    results = []
    for score in (lambda: net(states, behaviours),
                  lambda: tf.squeeze(net.mlp(tf.concat([tf.stack([states, states]), behaviours], -1)), -1)):
        with tf.GradientTape() as tape:
            tape.watch([states, behaviours])
            logits = score()
            loss = tf.reduce_sum(tf.sin(3.0 * logits))
        results.append([logits] + tape.gradient(loss, [states, behaviours] + net.trainable_weights))
    assert results[0][0].shape == (2, 7) and len(net.trainable_weights) == 6
    assert net.trainable_weights[0].shape == (7, 6)  # one kernel over [h ; e], as before
    for split, concatenated in zip(*results):
        np.testing.assert_allclose(split.numpy(), concatenated.numpy(), rtol=1e-5, atol=1e-6)


def test_auxiliary_loss_over_packed_pairs_has_the_gradients_of_the_masked_mean():
    """The loss scores only the valid pairs; its gradients equal those of the masked mean over every step."""
    rng = np.random.default_rng(5)
    states, positives, negatives = (tf.constant(rng.normal(size=(3, 5, 4)).astype(np.float32)) for _ in range(3))
    mask = tf.constant(np.arange(5)[None, :] < np.array([5, 2, 0])[:, None])
    tf.keras.utils.set_random_seed(0)
    net = AuxiliaryNet((6,))

    def masked_mean():
        valid = tf.cast(tf.logical_and(mask[:, :-1], mask[:, 1:]), tf.float32)
        losses = (tf.nn.softplus(-net(states[:, :-1], positives[:, 1:]))
                  + tf.nn.softplus(net(states[:, :-1], negatives[:, 1:])))
        return tf.reduce_sum(losses * valid) / tf.reduce_sum(valid)

    def gradients(loss_fn):
        with tf.GradientTape() as tape:
            tape.watch([states, positives, negatives])
            loss = loss_fn()
        return [loss] + tape.gradient(loss, [states, positives, negatives] + net.trainable_weights)

    ours = gradients(lambda: auxiliary_loss(states, positives, negatives, mask, scorer=net))
    reference = gradients(masked_mean)
    for mine, theirs in zip(ours, reference):
        np.testing.assert_allclose(tf.convert_to_tensor(mine).numpy(), tf.convert_to_tensor(theirs).numpy(),
                                   rtol=0, atol=1e-6)


def test_mini_batch_aware_l2_counts_each_used_row_once():
    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))
    rows = tf.constant([[1, 3, 3], [1, 0, 0]])
    expected = 0.1 * sum(np.sum(table.numpy()[j] ** 2) for j in (0, 1, 3))
    np.testing.assert_allclose(mini_batch_aware_l2(table, rows, 0.1).numpy(), expected, rtol=1e-6)
    with tf.GradientTape() as tape:
        penalty = mini_batch_aware_l2(table, rows, 0.1)
    gradient = tf.convert_to_tensor(tape.gradient(penalty, table)).numpy()
    assert (gradient[[2, 4, 5]] == 0).all() and (gradient[[0, 1, 3]] != 0).any()

    # With the slots' validity (the fixed-length form several replicas need): the same penalty and gradient over
    # the valid slots' rows, a sparse gradient of one row per slot whatever the ids.
    padded = tf.constant([[1, 3, 3, 5], [1, 0, 0, 4]])
    valid = tf.constant([[True, True, True, False], [True, True, True, False]])
    with tf.GradientTape() as tape:
        fixed = mini_batch_aware_l2(table, padded, 0.1, valid=valid)
    np.testing.assert_allclose(fixed.numpy(), expected, rtol=1e-6)
    sparse = tape.gradient(fixed, table)
    assert isinstance(sparse, tf.IndexedSlices) and sparse.indices.shape[0] == 8
    np.testing.assert_allclose(tf.convert_to_tensor(sparse).numpy(), gradient, rtol=1e-6)


def _outputs_and_gradients(compute, inputs, watched, seed):
    """``compute()`` and the gradients of a fixed random projection of it (``seed``) to ``watched``, with the
    tensors ``inputs`` watched."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = compute()
        loss = tf.reduce_sum(outputs * np.random.default_rng(seed).normal(size=outputs.shape).astype(np.float32))
    return outputs, tape.gradient(loss, watched, unconnected_gradients="zero")


def _keras_rnn_reference(layer, values, mask, target=None):
    """What the layer computed before ``gated_recurrence``: Keras' masked ``RNN`` over the layer's own cell."""
    rnn = tf.keras.layers.RNN(layer.cell, return_sequences=target is None)
    if target is None:
        return rnn(values, mask=mask)
    scores = layer.attention.weights_for(values, mask, target)[..., tf.newaxis]
    if layer.variant == "aigru":
        return rnn(values * scores, mask=mask)
    return rnn(tf.concat([values, scores], axis=-1), mask=mask)


def _ragged_batch(rng):
    """``values`` ``[6, 7, UNITS]``, a mask of lengths 7, 4, 0, 1, 7, 2 (an empty row among them), ``target``."""
    lengths = np.array([7, 4, 0, 1, 7, 2])
    values = tf.constant(rng.normal(size=(6, 7, UNITS)).astype(np.float32))
    mask = tf.constant(np.arange(7)[None, :] < lengths[:, None])
    return values, mask, tf.constant(rng.normal(size=(6, UNITS)).astype(np.float32))


def _randomize_cell(layer, rng):
    """The cell's weights away from the initialisers' zeros and ±1 structure."""
    for weight in layer.cell.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype(np.float32))


@pytest.mark.parametrize("variant", ["extractor", "aigru", "agru", "augru", "augru_keep"])
def test_recurrences_equal_keras_masked_rnn_in_outputs_and_gradients(variant):
    rng = np.random.default_rng(3)
    values, mask, target = _ragged_batch(rng)
    tf.keras.utils.set_random_seed(0)
    if variant == "extractor":
        layer, arguments = InterestExtractor(UNITS), (values, mask)
    else:
        layer = InterestEvolution(UNITS, variant, attention_units=(8,), attention_activation="sigmoid")
        arguments = (values, mask, target)
    layer(*arguments)
    _randomize_cell(layer, rng)
    watched = [values, target] + layer.trainable_weights

    ours, our_gradients = _outputs_and_gradients(lambda: layer(*arguments), [values, target], watched, 4)
    keras, keras_gradients = _outputs_and_gradients(lambda: _keras_rnn_reference(layer, *arguments),
                                                    [values, target], watched, 4)
    np.testing.assert_allclose(ours.numpy(), keras.numpy(), rtol=0, atol=1e-5)
    assert len(our_gradients) == len(keras_gradients) >= 5
    for weight, mine, theirs in zip(watched, our_gradients, keras_gradients):
        assert np.abs(theirs.numpy()).max() > 0 or weight is target or variant == "extractor"
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-5,
                                   err_msg=getattr(weight, "name", "input"))


def _recurrence_inputs(gate, batch=5, length=6, dim=3, seed=5):
    rng = np.random.default_rng(seed)
    lengths = np.array([6, 3, 0, 1, 6][:batch])
    mask = np.arange(length)[None, :] < lengths[:, None]
    attention = rng.uniform(size=(batch, length)).astype(np.float32)
    scale = {"gru": mask.astype(np.float32), "augru_keep": (1.0 + attention) * mask}.get(gate, attention * mask)
    return [tf.constant(np.asarray(x, np.float32)) for x in (
        rng.normal(size=(batch, length, dim)), scale, rng.normal(scale=0.5, size=(dim, 3 * UNITS)),
        rng.normal(scale=0.5, size=(UNITS, 3 * UNITS)), rng.normal(scale=0.5, size=(2, 3 * UNITS)))]


def _states_and_gradients(arguments, gate, xla):
    with tf.GradientTape() as tape:
        tape.watch(arguments)
        states = gated_recurrence(*arguments, gate=gate, xla=xla)
        loss = tf.reduce_sum(tf.sin(3.0 * states))
    return states, tape.gradient(loss, arguments)


def _compiled_loop_calls(graph):
    """The calls of XLA-compiled functions in a traced graph: the recurrence loops' (forward and backward)."""
    return [op for op in graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall")
            and "_XlaMustCompile" in op.node_def.attr and op.node_def.attr["_XlaMustCompile"].b]


@pytest.mark.parametrize("gate", ["gru", "augru", "agru", "augru_keep"])
def test_xla_compiled_recurrence_loops_equal_the_plain_loops_in_values_and_gradients(gate):
    arguments = _recurrence_inputs(gate)
    compiled_function = tf.function(_states_and_gradients)
    compiled, compiled_gradients = compiled_function(arguments, gate, True)
    plain_function = tf.function(_states_and_gradients)
    plain, plain_gradients = plain_function(arguments, gate, False)
    # The compiled path ran (the forward and the backward loop, each one XLA-compiled call), and its results
    # are the plain path's to float rounding.
    assert len(_compiled_loop_calls(compiled_function.get_concrete_function(arguments, gate, True).graph)) == 2
    assert not _compiled_loop_calls(plain_function.get_concrete_function(arguments, gate, False).graph)
    np.testing.assert_allclose(compiled.numpy(), plain.numpy(), rtol=0, atol=1e-5)
    for name, xla, reference in zip(("inputs", "scale", "kernel", "recurrent_kernel", "bias"),
                                    compiled_gradients, plain_gradients):
        assert np.abs(reference.numpy()).max() > 0, name
        np.testing.assert_allclose(xla.numpy(), reference.numpy(), rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("gate", ["gru", "augru", "agru", "augru_keep"])
@pytest.mark.parametrize("compiled", [False, True])
def test_gate_picked_when_the_loop_runs_is_the_gate_picked_when_traced_bit_for_bit(gate, compiled):
    """The compiled loops take the gate as a value (its index in ``GATES``): the share ``g`` of the candidate and
    ``∂g/∂z`` they select are the named gate's, exactly (eagerly, and XLA-compiled against the named form
    compiled too)."""
    rng = np.random.default_rng(1)
    z = tf.constant(rng.uniform(size=(64, 4)).astype(np.float32))
    attention = rng.uniform(size=(64, 1)).astype(np.float32)
    valid = (rng.uniform(size=(64, 1)) < 0.7).astype(np.float32)
    scale = tf.constant({"gru": valid, "augru_keep": (1.0 + attention) * valid}.get(gate, attention * valid))
    by_name, by_index = (lambda z, scale: _update(gate, z, scale)), (lambda z, scale, index: _update(index, z, scale))
    if compiled:
        by_name, by_index = (tf.function(f, jit_compile=True) for f in (by_name, by_index))
    for name, value, expected in zip(("g", "dg/dz"), by_index(z, scale, tf.constant(GATES.index(gate))),
                                     by_name(z, scale)):
        np.testing.assert_array_equal(value.numpy(), np.broadcast_to(expected.numpy(), value.shape), err_msg=name)


@pytest.mark.parametrize("reset_after", [True, False])
def test_every_gate_runs_one_compiled_loop_pair_traced_once(reset_after):
    """DIEN's interest extractor (a GRU) and interest evolution (AUGRU, DeepCTR's AUGRU) of equal width run the
    same two compiled functions, traced once: XLA compiles each once per input shape, not once per gate. A
    width no other test uses, so the pair is this test's own."""
    units = 7
    forward, backward = _compiled_steps(units, reset_after)
    assert (forward.experimental_get_tracing_count(), backward.experimental_get_tracing_count()) == (0, 0)
    rng = np.random.default_rng(3)
    values, target = (tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in ([3, 5, units], [3, units]))
    mask = np.arange(5)[None, :] < np.array([5, 3, 0])[:, None]
    extractor = InterestExtractor(units, reset_after=reset_after)
    evolutions = [InterestEvolution(units, variant, attention_units=(4,), attention_activation="sigmoid",
                                    reset_after=reset_after) for variant in ("augru", "augru_keep", "agru")]

    @tf.function
    def losses_and_gradients():
        with tf.GradientTape() as tape:
            interests = extractor(values, tf.constant(mask), training=True)
            loss = sum(tf.reduce_sum(evolution(interests, tf.constant(mask), target, training=True))
                       for evolution in evolutions)
        weights = extractor.trainable_weights + [w for e in evolutions for w in e.trainable_weights]
        return loss, tape.gradient(loss, weights)

    graph = losses_and_gradients.get_concrete_function().graph
    calls = _compiled_loop_calls(graph)
    assert len(calls) == 2 * (1 + len(evolutions))  # a forward and a backward loop per recurrence
    assert len({op.node_def.attr["f"].func.name for op in calls}) == 2
    assert (forward.experimental_get_tracing_count(), backward.experimental_get_tracing_count()) == (1, 1)
    loss, gradients = losses_and_gradients()
    assert np.isfinite(loss.numpy()) and all(np.abs(g.numpy()).max() > 0 for g in gradients)


def test_compiled_loops_are_traced_without_autograph(monkeypatch):
    """The loops are ``tf.while_loop``s written out: their compiled functions skip AutoGraph's conversion
    (0.25-0.5 CPU-second of DIEN's first step). A width no other test uses, so their first trace is here."""
    from tensorflow.python.autograph.impl import api

    conversions = []
    convert = api.converted_call

    def recording_converted_call(function, *args, **kwargs):
        conversions.append(function)
        return convert(function, *args, **kwargs)

    monkeypatch.setattr(api, "converted_call", recording_converted_call)
    units, rng = 9, np.random.default_rng(2)
    arguments = _recurrence_inputs("augru")[:2] + [tf.constant(rng.normal(scale=0.3, size=shape).astype(np.float32))
                                                   for shape in ([DIM, 3 * units], [units, 3 * units], [2, 3 * units])]
    forward, backward = _compiled_steps(units)
    assert (forward.experimental_get_tracing_count(), backward.experimental_get_tracing_count()) == (0, 0)
    tf.function(_states_and_gradients, autograph=False)(arguments, "augru", True)
    assert (forward.experimental_get_tracing_count(), backward.experimental_get_tracing_count()) == (1, 1)
    assert not conversions


def test_recurrence_loops_run_plain_in_serving_mode_and_under_jit_compile():
    """TF Serving runs no XLA without its experimental flags: traced inside ``serving_mode()`` the recurrence
    holds no XLA-compiled function; inside a whole-step XLA function (``--jit_compile``) its loops are plain
    ops of that function (and still agree)."""
    arguments = _recurrence_inputs("augru")
    with serving_mode():
        graph = tf.function(lambda *args: gated_recurrence(*args, gate="augru", xla=True)).get_concrete_function(
            *arguments).graph
    assert not _compiled_loop_calls(graph)
    whole_function = tf.function(_states_and_gradients, jit_compile=True)
    whole, whole_gradients = whole_function(arguments, "augru", True)
    assert not _compiled_loop_calls(whole_function.get_concrete_function(arguments, "augru", True).graph)
    plain, plain_gradients = tf.function(_states_and_gradients)(arguments, "augru", False)
    np.testing.assert_allclose(whole.numpy(), plain.numpy(), rtol=0, atol=1e-5)
    for xla, reference in zip(whole_gradients, plain_gradients):
        np.testing.assert_allclose(xla.numpy(), reference.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("layer_type", ["extractor", "evolution"])
def test_layers_compile_their_loops_in_training_calls_only(layer_type):
    values, mask, target = (tf.constant(x) for x in _sequences())
    if layer_type == "extractor":
        layer, arguments = InterestExtractor(UNITS), (values, mask)
    else:
        layer = InterestEvolution(UNITS, "augru_keep", attention_units=(8,), attention_activation="sigmoid")
        arguments = (values, mask, target)
    inference_function = tf.function(lambda: layer(*arguments, training=False))
    training_function = tf.function(lambda: layer(*arguments, training=True))
    inference, training = inference_function(), training_function()
    assert not _compiled_loop_calls(inference_function.get_concrete_function().graph)
    assert len(_compiled_loop_calls(training_function.get_concrete_function().graph)) == 1  # no gradient taken
    np.testing.assert_allclose(training.numpy(), inference.numpy(), rtol=0, atol=1e-5)
    assert layer.get_config()["xla"] is True


def _reset_before_reference(inputs, scale, kernel, recurrent_kernel, bias, gate):
    """``tf.compat.v1``'s GRUCell written out step by step (the candidate reset before its matmul), with each
    gate's share of the candidate from its own definition; TensorFlow differentiates it."""
    units = recurrent_kernel.shape[0]
    u_update, u_reset, u_candidate = tf.split(recurrent_kernel, 3, axis=-1)
    b_update, b_reset, b_candidate = tf.split(bias[1], 3)
    state, states = tf.zeros([inputs.shape[0], units]), []
    for t in range(inputs.shape[1]):
        x_update, x_reset, x_candidate = tf.split(tf.matmul(inputs[:, t], kernel) + bias[0], 3, axis=-1)
        s = scale[:, t:t + 1]
        z = tf.sigmoid(x_update + tf.matmul(state, u_update) + b_update)
        r = tf.sigmoid(x_reset + tf.matmul(state, u_reset) + b_reset)
        candidate = tf.tanh(x_candidate + tf.matmul(r * state, u_candidate) + b_candidate)
        share = {"gru": s * (1.0 - z),  # Keras' keep gate z, s the mask
                 "augru": s * z,  # the paper's update gate scaled by the attention
                 "agru": s,
                 # DeepCTR's VecAttGRUCell: keep = (1 − a)(1 − u), s = 1 + a, padding s = 0 keeps the state
                 "augru_keep": tf.where(s > 0, 1.0 - (1.0 - (s - 1.0)) * (1.0 - z), 0.0)}[gate]
        state = (1.0 - share) * state + share * candidate
        states.append(state)
    return tf.stack(states, axis=1)


@pytest.mark.parametrize("xla", [False, True])
@pytest.mark.parametrize("gate", ["gru", "augru", "agru", "augru_keep"])
def test_reset_before_recurrence_equals_the_step_by_step_reference_in_values_and_gradients(gate, xla):
    arguments = _recurrence_inputs(gate)

    def states_and_gradients(compute):
        with tf.GradientTape() as tape:
            tape.watch(arguments)
            states = compute(*arguments)
            loss = tf.reduce_sum(tf.sin(3.0 * states))
        return states, tape.gradient(loss, arguments)

    ours, our_gradients = tf.function(lambda: states_and_gradients(
        lambda *args: gated_recurrence(*args, gate=gate, xla=xla, reset_after=False)))()
    reference, reference_gradients = states_and_gradients(
        lambda *args: _reset_before_reference(*args, gate=gate))
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=0, atol=1e-5)
    for name, mine, theirs in zip(("inputs", "scale", "kernel", "recurrent_kernel", "bias"), our_gradients,
                                  reference_gradients):
        assert np.abs(theirs.numpy()).max() > 0, name
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-5, err_msg=name)
    # The two forms are different functions of the same weights.
    reset_after = gated_recurrence(*arguments, gate=gate, xla=xla)
    assert np.abs(reset_after.numpy() - ours.numpy()).max() > 1e-2


def test_reset_before_cell_at_attention_zero_is_keras_reset_before_gru():
    """DeepCTR's AUGRU (``augru_keep``) at attention 0 is a plain GRU step; with ``reset_after=False`` it is
    Keras' ``GRUCell(reset_after=False)`` (``tanh(W^h x + b^h + U^h (r ∘ h))``, one bias: the sum of our two
    rows), the update gate flipped as in the test above."""
    cell = AttentionGRUCell(UNITS, "augru_keep", reset_after=False)
    cell.build([None, DIM + 1])
    rng = np.random.default_rng(6)
    for weight in cell.weights:
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    keras_cell = tf.keras.layers.GRUCell(UNITS, reset_after=False)
    keras_cell.build([None, DIM])
    flip = np.concatenate([-np.ones(UNITS), np.ones(2 * UNITS)]).astype(np.float32)
    keras_cell.kernel.assign(cell.kernel.numpy() * flip)
    keras_cell.recurrent_kernel.assign(cell.recurrent_kernel.numpy() * flip)
    keras_cell.bias.assign(cell.bias.numpy().sum(axis=0) * flip)
    x, state = rng.normal(size=(5, DIM)).astype(np.float32), rng.normal(size=(5, UNITS)).astype(np.float32)
    ours, _ = cell(np.concatenate([x, np.zeros((5, 1), np.float32)], axis=1), [state])
    theirs, _ = keras_cell(tf.constant(x), [tf.constant(state)])
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    cell.reset_after = True  # the reset_after form of the same weights is another function
    after, _ = cell(np.concatenate([x, np.zeros((5, 1), np.float32)], axis=1), [state])
    assert np.abs(after.numpy() - theirs.numpy()).max() > 1e-2


@pytest.mark.parametrize("variant", ["agru", "augru", "augru_keep"])
def test_reset_before_evolution_equals_keras_masked_rnn_over_its_cell(variant):
    rng = np.random.default_rng(7)
    values, mask, target = _ragged_batch(rng)
    layer = InterestEvolution(UNITS, variant, attention_units=(8,), attention_activation="sigmoid",
                              reset_after=False)
    layer(values, mask, target)
    _randomize_cell(layer, rng)
    watched = [values, target] + layer.trainable_weights

    ours, our_gradients = _outputs_and_gradients(lambda: layer(values, mask, target, training=True),
                                                 [values, target], watched, 8)
    keras, keras_gradients = _outputs_and_gradients(lambda: _keras_rnn_reference(layer, values, mask, target),
                                                    [values, target], watched, 8)
    np.testing.assert_allclose(ours.numpy(), keras.numpy(), rtol=0, atol=1e-5)
    for weight, mine, theirs in zip(watched, our_gradients, keras_gradients):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-5,
                                   err_msg=getattr(weight, "name", "input"))
    assert layer.get_config()["reset_after"] is False


def test_reset_before_layers_start_as_tf_compat_v1_gru_cell_joint_glorot_kernels():
    """``tf.compat.v1`` GRUCell's kernels act on ``[x ; h]``: gates glorot-uniform over ``[dim + units,
    2·units]``, candidate over ``[dim + units, units]``; Keras' ``W`` over ``[dim, 3·units]``, ``U`` orthogonal."""
    dim, units = 48, 32
    tf.keras.utils.set_random_seed(0)
    extractor = InterestExtractor(units, reset_after=False)
    extractor.build([None, 50, dim])
    evolution = InterestEvolution(units, "augru_keep", attention_units=(8,), reset_after=False)
    evolution.build([None, 50, dim])
    gate_limit, candidate_limit = (6.0 / (dim + 3 * units)) ** 0.5, (6.0 / (dim + 2 * units)) ** 0.5
    for cell in (extractor.cell, evolution.cell):
        for kernel in (cell.kernel.numpy(), cell.recurrent_kernel.numpy()):
            gates, candidate = np.abs(kernel[:, :2 * units]), np.abs(kernel[:, 2 * units:])
            assert 0.97 * gate_limit < gates.max() <= gate_limit
            assert 0.95 * candidate_limit < candidate.max() <= candidate_limit
    keras_extractor = InterestExtractor(units)
    keras_extractor.build([None, 50, dim])
    recurrent = keras_extractor.cell.recurrent_kernel.numpy()
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(units), atol=1e-5)  # orthogonal rows


def test_attention_moments_over_every_slot_count_padding_but_not_its_values():
    """``every_slot`` (DeepCTR's): in training Dice's batch moments span every ``[batch, len]`` slot, so more
    padding changes the result while the padded interests' values do not (they are zeroed, as DeepCTR's
    ``dynamic_rnn`` outputs); ``valid`` moments ignore padding altogether."""
    values, mask, target = _sequences(batch=3, length=5, seed=9)
    longer_values = np.concatenate([values, np.random.default_rng(10).normal(size=(3, 3, UNITS))], axis=1)
    longer_mask = np.concatenate([mask, np.zeros((3, 3), bool)], axis=1)
    garbage = np.where(mask[..., None], values, 7.0).astype(np.float32)
    outputs = {}
    for moments in ("valid", "every_slot"):
        tf.keras.utils.set_random_seed(0)
        layer = InterestEvolution(UNITS, "augru", attention_units=(8, 4), attention_activation="dice",
                                  attention_moments=moments)
        layer(tf.constant(values), tf.constant(mask), target)
        outputs[moments] = [layer(tf.constant(v, tf.float32), tf.constant(m), target,
                                  training=True).numpy()
                            for v, m in ((values, mask), (longer_values, longer_mask), (garbage, mask))]
        assert layer.get_config()["attention_moments"] == moments
    short, longer, with_garbage = outputs["valid"]
    np.testing.assert_allclose(longer, short, rtol=0, atol=1e-6)
    np.testing.assert_allclose(with_garbage, short, rtol=0, atol=1e-6)
    short, longer, with_garbage = outputs["every_slot"]
    assert np.abs(longer - short)[:2].max() > 1e-4  # the third row's empty history stays 0
    np.testing.assert_allclose(with_garbage, short, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="attention_moments"):
        InterestEvolution(UNITS, attention_moments="all")
