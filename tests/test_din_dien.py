"""DIN and DIEN models: the paper's properties on tiny hand-made batches (order, padding, auxiliary loss, graph
mode), and GAUC's one-user case."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.augru import InterestEvolution
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.metrics.ranking import GroupAUC
from tfrecsys.models import build_model
from tfrecsys.models.dien import DIEN
from tfrecsys.models.din import DIN
from tfrecsys.models.tasks import tasks_from_config

MAX_LEN = 6
FEATURES = {
    "user_id": dict(kind="id", num_buckets=10, embedding_dim=4),
    "item_id": dict(kind="id", num_buckets=30, embedding_dim=4),
    "item_category": dict(kind="id", num_buckets=5, embedding_dim=2),
    "hist_item_id": dict(kind="sequence", shares="item_id", max_len=MAX_LEN),
    "hist_category": dict(kind="sequence", shares="item_category", max_len=MAX_LEN, aligned_with="hist_item_id"),
    "neg_item_id": dict(kind="sequence", shares="item_id", max_len=MAX_LEN, aligned_with="hist_item_id",
                        training_only=True),
    "neg_category": dict(kind="sequence", shares="item_category", max_len=MAX_LEN, aligned_with="hist_item_id",
                         training_only=True),
    "click": dict(kind="label"),
}
HISTORY = ("hist_item_id", "hist_category")
NEGATIVES = ("neg_item_id", "neg_category")
SCHEMA = FeatureSchema.from_config(FEATURES)
TASKS = tasks_from_config({"score": dict(label="click")}, SCHEMA)


def _batch(rows=8, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([MAX_LEN, 4, 1, 0, 5, 3, 2, MAX_LEN][:rows])
    valid = np.arange(MAX_LEN)[None, :] < lengths[:, None]

    def history(high):
        return tf.constant(np.where(valid, rng.integers(0, high, (rows, MAX_LEN)), 0), tf.int64)

    return {"user_id": tf.constant(rng.integers(0, 10, rows), tf.int64),
            "item_id": tf.constant(rng.integers(0, 30, rows), tf.int64),
            "item_category": tf.constant(rng.integers(0, 5, rows), tf.int64),
            "hist_item_id": history(30), "hist_category": history(5), "hist_item_id_length": tf.constant(lengths),
            "neg_item_id": history(30), "neg_category": history(5)}


def _reorder(batch, order_of_row):
    """The batch with each row's valid history permuted by ``order_of_row(row, length)`` and its padding ids
    replaced by other (garbage) ids."""
    out = dict(batch)
    lengths = batch["hist_item_id_length"].numpy()
    for name in HISTORY + NEGATIVES:
        values = batch[name].numpy().copy()
        for row, length in enumerate(lengths):
            values[row, :length] = values[row, order_of_row(row, length)]
            values[row, length:] = 3
        out[name] = tf.constant(values)
    return out


def _din(**kwargs):
    tf.keras.utils.set_random_seed(0)
    return DIN(SCHEMA, TASKS, history=HISTORY, attention_units=(8, 4), hidden_units=(8,), **kwargs)


def _dien(**kwargs):
    tf.keras.utils.set_random_seed(0)
    return DIEN(SCHEMA, TASKS, history=HISTORY, attention_units=(8,), hidden_units=(8,), **kwargs)


def _reverse(row, length):
    return np.arange(length)[::-1]


@pytest.mark.parametrize("training", [False, True])
def test_din_is_invariant_to_history_order_and_ignores_padding(training):
    model, batch = _din(), _batch()
    score = model(batch, training=training)["score"].numpy()
    shuffled = _reorder(batch, lambda row, length: np.random.default_rng(row).permutation(length))
    np.testing.assert_allclose(model(shuffled, training=training)["score"].numpy(), score, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalization", ["none", "softmax"])
def test_din_softmax_pools_a_repeated_behaviour_to_itself_and_raw_weights_grow_with_it(normalization):
    """``model.attention_normalization`` from a config: softmax weights sum to 1, so a history of one behaviour
    repeated k times pools to that behaviour whatever k; the paper's raw weights give k times one weight."""
    config = ml_collections.ConfigDict(dict(
        model=dict(name="din", history=HISTORY, attention_units=(8, 4), hidden_units=(8,),
                   attention_normalization=normalization),
        tasks=dict(score=dict(label="click"))))
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, SCHEMA)
    lengths = np.arange(1, MAX_LEN + 1)
    valid = np.arange(MAX_LEN)[None, :] < lengths[:, None]
    batch = {"user_id": tf.constant([1] * MAX_LEN, tf.int64), "item_id": tf.constant([9] * MAX_LEN, tf.int64),
             "item_category": tf.constant([2] * MAX_LEN, tf.int64),
             "hist_item_id": tf.constant(np.where(valid, 7, 0), tf.int64),
             "hist_category": tf.constant(np.where(valid, 3, 0), tf.int64),
             "hist_item_id_length": tf.constant(lengths, tf.int64)}
    history = model.history_embedding(batch)
    keys = model.behaviours.keys(history)
    interest = model.attention(keys, model.behaviours.mask(history), model.behaviours.query(model.embedding(batch)),
                               training=False).numpy()
    if normalization == "softmax":
        np.testing.assert_allclose(interest, keys[:, 0].numpy(), rtol=1e-5, atol=1e-7)
    else:
        np.testing.assert_allclose(interest, lengths[:, None] * interest[:1], rtol=1e-4, atol=1e-7)
        assert np.abs(interest[0]).max() > 1e-4


def _din_over_padded_history(model, batch, training):
    """DIN's outputs with the history embedded padded ``[batch, len, d]`` and the padding masked in the
    attention (its form before the packed lookup; still its form under XLA)."""
    embedded = model.embedding(batch)
    history = model.history_embedding(batch)
    interest = model.attention(model.behaviours.keys(history), model.behaviours.mask(history),
                               model.behaviours.query(embedded), training=training)
    hidden = model.tower(tf.concat([concat_pooled(embedded, model.schema, model.other_features), interest], -1))
    return tf.sigmoid(tf.squeeze(model.heads["score"](hidden), -1))


@pytest.mark.parametrize("normalization", ["none", "softmax"])
@pytest.mark.parametrize("training", [True, False])
def test_din_over_packed_valid_behaviours_equals_it_over_the_padded_history(normalization, training):
    """Only the valid behaviours' embeddings are looked up: scores and the gradients of every weight (the
    embedding tables included) equal the padded form's; ragged histories give the same scores."""
    model, batch = _din(attention_normalization=normalization, mba_l2=1e-3), _batch()
    model(batch)
    results = []
    for function in (lambda: model(batch, training=training)["score"],
                     lambda: _din_over_padded_history(model, batch, training)):
        with tf.GradientTape() as tape:
            scores = function()
            loss = tf.reduce_sum(tf.sin(5.0 * scores))
        results.append((scores.numpy(), tape.gradient(loss, model.trainable_variables)))
    (packed, packed_gradients), (padded, padded_gradients) = results
    np.testing.assert_allclose(packed, padded, rtol=1e-5, atol=1e-6)
    for ours, reference in zip(packed_gradients, padded_gradients):
        np.testing.assert_allclose(tf.convert_to_tensor(ours).numpy(), tf.convert_to_tensor(reference).numpy(),
                                   rtol=1e-4, atol=1e-6)
    ragged = dict(batch)
    for name in HISTORY:
        ragged[name] = tf.RaggedTensor.from_tensor(batch[name], lengths=batch["hist_item_id_length"])
    del ragged["hist_item_id_length"]
    np.testing.assert_allclose(model(ragged, training=False)["score"].numpy(),
                               model(batch, training=False)["score"].numpy(), rtol=1e-6)


def test_din_mini_batch_l2_counts_each_valid_history_id_once_per_use():
    """``mba_l2``: the penalty over the rows the batch uses, the history's valid ids read from the packed
    behaviours: the same value as from the padded history's mask."""
    model, batch = _din(mba_l2=1e-2), _batch()
    model(batch)
    valid = batch["hist_item_id"].numpy()[np.arange(MAX_LEN)[None, :] < batch["hist_item_id_length"].numpy()[:, None]]
    packed = model.mini_batch_regularization(batch, model.embedding(batch), model.packed_history(batch)[2]).numpy()
    padded = model.mini_batch_regularization(batch, {**model.embedding(batch), **model.history_embedding(batch)},
                                             {}).numpy()
    np.testing.assert_allclose(packed, padded, rtol=1e-6)
    assert len(model.packed_history(batch)[2]["hist_item_id"].numpy()) == len(valid)


def test_dien_depends_on_history_order_but_ignores_padding():
    model, batch = _dien(aux_weight=0.0), _batch()
    score = model(batch, training=False)["score"].numpy()
    padded_differently = _reorder(batch, lambda row, length: np.arange(length))
    np.testing.assert_allclose(model(padded_differently, training=False)["score"].numpy(), score, rtol=1e-5,
                               atol=1e-6)
    reversed_score = model(_reorder(batch, _reverse), training=False)["score"].numpy()
    lengths = batch["hist_item_id_length"].numpy()
    changed = np.abs(reversed_score - score) > 1e-6
    assert changed[lengths > 1].all() and not changed[lengths <= 1].any()


@pytest.mark.parametrize("negative_history, aux_net", [(NEGATIVES, "mlp"), ((), "inner_product")])
def test_dien_auxiliary_loss_has_zero_gradient_to_the_ranking_head(negative_history, aux_net):
    model, batch = _dien(aux_weight=1.0, negative_history=negative_history, aux_net=aux_net), _batch()
    with tf.GradientTape(persistent=True) as tape:
        score = model(batch, training=True)["score"]
        aux = tf.add_n(model.losses)
    head = model.tower.trainable_variables + [v for h in model.heads.values() for v in h.trainable_variables]
    assert all(g is None for g in tape.gradient(aux, head))
    extractor_gradients = tape.gradient(aux, model.extractor.trainable_variables)
    assert all(g is not None and np.abs(g.numpy()).max() > 0 for g in extractor_gradients)
    if aux_net == "mlp":  # the auxiliary MLP over [h_t ; e_b[t+1]] learns from the auxiliary loss alone
        aux_net_gradients = tape.gradient(aux, model.aux_net.trainable_variables)
        assert aux_net_gradients and all(g is not None and np.abs(g.numpy()).max() > 0 for g in aux_net_gradients)
        assert all(g is None for g in tape.gradient(score, model.aux_net.trainable_variables))
    assert all(g is not None for g in tape.gradient(score, head))
    # Serving (no negatives, not training) computes no auxiliary loss.
    model({k: v for k, v in batch.items() if k not in NEGATIVES}, training=False)
    assert model.losses == []


def test_dien_inner_product_auxiliary_loss_has_no_weights_and_unknown_nets_are_refused():
    assert _dien(negative_history=NEGATIVES).aux_net is None  # the default, the paper's inner product
    with pytest.raises(ValueError, match="model.aux_net must be one of"):
        _dien(aux_net="bilinear")


def test_dien_aux_weight_zero_adds_no_loss():
    model = _dien(aux_weight=0.0, negative_history=NEGATIVES)
    model(_batch(), training=True)
    assert model.losses == []


@pytest.mark.parametrize("variant", ["aigru", "agru", "augru"])
def test_dien_gives_the_same_scores_eagerly_and_in_graph_mode(variant):
    model, batch = _dien(gru_variant=variant, negative_history=NEGATIVES), _batch()
    eager = model(batch, training=False)["score"].numpy()
    graph = tf.function(lambda features: model(features, training=False))(batch)["score"].numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~25 s on the loaded 2-core machine, nearly all of it tracing the recurrent gradients
def test_dien_trains_eagerly_and_in_graph_mode():
    """Two Adam steps from the same weights, eagerly and as a traced train step: every trainable weight that
    the loss depends on moves, and graph mode takes exactly the eager steps (losses and final weights)."""
    batch = _batch()
    data = tf.data.Dataset.from_tensors((batch, {"click": tf.constant(np.arange(8) % 2, tf.float32)})).repeat(2)
    start, trained = None, {}
    for run_eagerly in (True, False):
        model = _dien(negative_history=NEGATIVES)
        model(batch, training=True)
        start = model.get_weights() if start is None else start
        model.set_weights(start)
        initial = [v.numpy() for v in model.trainable_variables]
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01), run_eagerly=run_eagerly)
        losses = model.fit(data, epochs=1, verbose=0).history["loss"]
        assert np.isfinite(losses).all()
        trained[run_eagerly] = (losses, [(v.name, v.numpy()) for v in model.trainable_variables])
        still = [v.name.split("/", 1)[1] for v, before in zip(model.trainable_variables, initial)
                 if np.abs(v.numpy() - before).max() < 1e-4]
        # The attention scores go through a softmax over the history, which a constant shift leaves as it is:
        # their bias alone gets no gradient.
        assert still == ["interest_evolution/activation_unit/score/bias:0"], (run_eagerly, still)
    (eager_losses, eager_weights), (graph_losses, graph_weights) = trained[True], trained[False]
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-5)
    for (name, eager), (_, graph) in zip(eager_weights, graph_weights, strict=True):
        np.testing.assert_allclose(graph, eager, rtol=1e-4, atol=1e-6, err_msg=name)


def test_din_mini_batch_aware_l2_is_a_training_loss_only():
    model, batch = _din(mba_l2=0.5), _batch()
    model(batch, training=False)
    assert model.losses == []
    model(batch, training=True)
    (penalty,) = model.losses
    used = {"item_id": set(batch["item_id"].numpy()), "item_category": set(batch["item_category"].numpy()),
            "user_id": set(batch["user_id"].numpy())}
    lengths = batch["hist_item_id_length"].numpy()
    for row, length in enumerate(lengths):
        used["item_id"] |= set(batch["hist_item_id"].numpy()[row, :length])
        used["item_category"] |= set(batch["hist_category"].numpy()[row, :length])
    expected = sum(np.sum(model.embeddings.table(t).embeddings.numpy()[sorted(ids)] ** 2) for t, ids in used.items())
    np.testing.assert_allclose(penalty.numpy(), 0.5 * expected, rtol=1e-5)


def test_embedding_l2_from_the_config_penalises_every_whole_table_and_is_set_before_the_build():
    config = ml_collections.ConfigDict(dict(
        model=dict(name="dien", history=HISTORY, attention_units=(8,), hidden_units=(8,), aux_weight=0.0,
                   embedding_l2=0.5),
        tasks=dict(score=dict(label="click"))))
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, SCHEMA)
    model(_batch(), training=True)
    tables = [model.embeddings.table(t).embeddings.numpy() for t in ("user_id", "item_id", "item_category")]
    # Every row, the ones this batch does not touch included (DeepCTR's l2_reg_embedding).
    np.testing.assert_allclose(sum(l.numpy() for l in model.losses), 0.5 * sum(np.sum(t ** 2) for t in tables),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="before the tables are built.*item_id"):
        model.embeddings.regularize(1e-6)


def test_embedding_init_stddev_from_the_config_starts_every_table_normal_and_is_set_before_the_build():
    config = ml_collections.ConfigDict(dict(
        model=dict(name="din", history=HISTORY, attention_units=(8,), hidden_units=(8,), embedding_init_stddev=1e-4),
        tasks=dict(score=dict(label="click"))))
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, SCHEMA)
    model.embeddings(_batch())  # builds every table, not the rest of the model
    rows = np.concatenate([model.embeddings.table(t).embeddings.numpy().ravel()
                           for t in ("user_id", "item_id", "item_category")])
    # DeepCTR's N(0, 1e-4²), not the default truncated N(0, 0.05²).
    assert 0.7e-4 < rows.std() < 1.3e-4
    with pytest.raises(ValueError, match="before the tables are built.*item_id"):
        model.embeddings.initialize_normal(1e-4)


def _built_dien(**options):
    """A small DIEN built from a config with ``options`` under ``model.``, after one training call (seed 0)."""
    config = ml_collections.ConfigDict(dict(
        model=dict(name="dien", history=HISTORY, negative_history=NEGATIVES, attention_units=(8,),
                   hidden_units=(8,), **options),
        tasks=dict(score=dict(label="click"))))
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, SCHEMA)
    model(_batch(), training=True)
    return model


def test_dien_aux_normalization_and_gru_gate_bias_from_the_config_reach_the_layers():
    default, grid, deepctr_bias = _built_dien(), _built_dien(aux_normalization="grid"), _built_dien(gru_gate_bias=1.0)
    units = 6  # item 4 + category 2
    assert not default.extractor.cell.bias.numpy().any()
    np.testing.assert_array_equal(deepctr_bias.extractor.cell.bias.numpy()[0, :2 * units], 1.0)  # keep, reset
    np.testing.assert_array_equal(deepctr_bias.evolution.cell.bias.numpy()[0, units:2 * units], 1.0)  # reset
    # Lengths 6, 4, 1, 0, 5, 3, 2, 6 hold 20 valid pairs in 8 rows · 5 slots: the grid mean is 20/40 of the
    # valid-pairs mean (same initialisation, so the same pair losses).
    np.testing.assert_allclose(grid.losses[0].numpy(), default.losses[0].numpy() * 20 / 40, rtol=1e-5)
    with pytest.raises(ValueError, match="model.aux_normalization must be one of"):
        _dien(aux_normalization="rows")


def test_dien_gru_reset_after_and_attention_moments_from_the_config_reach_the_layers():
    default, deepctr = _built_dien(), _built_dien(gru_reset_after=False, attention_moments="every_slot")
    assert (default.extractor.reset_after, default.evolution.reset_after, default.evolution.attention_moments) == (
        True, True, "valid")
    assert (deepctr.extractor.reset_after, deepctr.evolution.reset_after, deepctr.evolution.cell.reset_after,
            deepctr.evolution.attention_moments) == (False, False, False, "every_slot")
    # Keras' orthogonal recurrent kernel by default; tf.compat.v1's joint glorot draw without reset_after.
    for model, orthogonal in ((default, True), (deepctr, False)):
        recurrent = model.extractor.cell.recurrent_kernel.numpy()
        assert np.allclose(recurrent @ recurrent.T, np.eye(recurrent.shape[0]), atol=1e-5) == orthogonal
    with pytest.raises(ValueError, match="model.attention_moments must be one of"):
        _dien(attention_moments="all")


def test_dien_evolution_trainable_false_leaves_only_the_evolving_grus_weights_to_the_optimizer():
    """DeepCTR 0.9.4's DIEN on TF 2 never updates its AUGRU's weights; ``model.evolution_trainable=False`` is
    that: the cell's weights exist but are not trainable, the attention that drives it still is."""
    config = ml_collections.ConfigDict(dict(
        model=dict(name="dien", history=HISTORY, attention_units=(8,), hidden_units=(8,), aux_weight=0.0,
                   evolution_trainable=False),
        tasks=dict(score=dict(label="click"))))
    model = build_model(config, SCHEMA)
    model(_batch(), training=False)
    trainable = {id(w) for w in model.trainable_variables}
    cell, attention = model.evolution.cell.weights, model.evolution.attention.trainable_weights
    assert len(cell) == 3 and {id(w) for w in model.weights} >= {id(w) for w in cell}
    assert not trainable & {id(w) for w in cell} and {id(w) for w in attention} <= trainable
    assert {id(w) for w in model.extractor.weights} <= trainable
    assert InterestEvolution.from_config(model.evolution.get_config()).cell.trainable is False


def test_dien_recurrence_xla_from_the_config_gives_the_plain_loops_loss_and_gradients():
    """``model.recurrence_xla`` (default on) compiles the GRUs' step loops in training only; a training
    forward and backward from the same weights equal the plain loops' to float rounding."""
    def _built_dien(**options):
        config = ml_collections.ConfigDict(dict(
            model=dict(name="dien", history=HISTORY, negative_history=NEGATIVES, attention_units=(8,),
                       hidden_units=(8,), aux_net="mlp", aux_units=(8,), gru_variant="augru_keep", **options),
            tasks=dict(score=dict(label="click"))))
        tf.keras.utils.set_random_seed(0)
        model = build_model(config, SCHEMA)
        model(_batch(), training=False)
        return model

    compiled, plain = _built_dien(), _built_dien(recurrence_xla=False)
    assert (compiled.extractor.xla, compiled.evolution.xla, plain.extractor.xla, plain.evolution.xla) == (
        True, True, False, False)
    plain.set_weights(compiled.get_weights())

    @tf.function
    def loss_and_gradients(model, batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(batch, training=True)["score"]) + tf.add_n(model.losses)
        return loss, tape.gradient(loss, model.trainable_variables)

    batch = _batch()
    compiled_loss, compiled_gradients = loss_and_gradients(compiled, batch)
    plain_loss, plain_gradients = loss_and_gradients(plain, batch)
    np.testing.assert_allclose(compiled_loss.numpy(), plain_loss.numpy(), rtol=1e-6)
    for variable, xla, reference in zip(plain.trainable_variables, compiled_gradients, plain_gradients, strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(xla).numpy(), tf.convert_to_tensor(reference).numpy(),
                                   rtol=1e-4, atol=1e-6, err_msg=variable.name)


def test_gauc_of_one_user_equals_auc():
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.4).astype(np.float32)
    predictions = np.clip(0.3 * labels + 0.7 * rng.random(200), 0, 1).astype(np.float32)
    gauc, auc = GroupAUC(num_groups=8, num_thresholds=2000), tf.keras.metrics.AUC(num_thresholds=2000)
    gauc.update_state(labels, predictions, tf.fill([200], tf.constant(7, tf.int64)))
    auc.update_state(labels, predictions)
    np.testing.assert_allclose(gauc.result().numpy(), auc.result().numpy(), atol=2e-3)


@pytest.mark.parametrize("change, message", [
    # Left a serving input, every client of the export would have to send negatives the served model never reads.
    (dict(neg_item_id=dict(training_only=False)), "'neg_item_id' is a serving input: serving never computes the "
                                                  "auxiliary loss"),
    # Aligned with each other but not with the history: their own length, or (shorter) out of the history's range.
    (dict(neg_item_id=dict(aligned_with=None), neg_category=dict(aligned_with="neg_item_id")),
     "'neg_item_id' is not aligned with the history 'hist_item_id'"),
    (dict(neg_item_id=dict(aligned_with=None, max_len=3), neg_category=dict(aligned_with="neg_item_id", max_len=3)),
     "'neg_item_id' is not aligned with the history 'hist_item_id'.*set aligned_with='hist_item_id'"),
])
def test_a_negative_history_must_be_training_only_and_aligned_with_the_history(change, message):
    features = {name: dict(spec) for name, spec in FEATURES.items()}
    for name, spec in change.items():
        features[name].update(spec)
        features[name] = {key: value for key, value in features[name].items() if value is not None}
    schema = FeatureSchema.from_config(features)
    with pytest.raises(ValueError, match=f"model.negative_history: {message}"):
        DIEN(schema, tasks_from_config({"score": dict(label="click")}, schema), history=HISTORY,
             negative_history=NEGATIVES, attention_units=(8,), hidden_units=(8,))


def test_a_history_naming_no_feature_says_which_config_field():
    with pytest.raises(ValueError, match=r"model.history names 'hist_cat', which is no feature of config.features; "
                                         r"its sequence features: \['hist_item_id', 'hist_category', "):
        DIN(SCHEMA, TASKS, history=("hist_item_id", "hist_cat"), attention_units=(8,), hidden_units=(8,))


@pytest.mark.parametrize("aux_net, negatives", [("mlp", NEGATIVES),
                                                 pytest.param("inner_product", NEGATIVES, marks=pytest.mark.slow),
                                                 pytest.param("mlp", (), marks=pytest.mark.slow)])
def test_dien_with_its_auxiliary_loss_trains_compiled_whole_as_it_trains_plain(aux_net, negatives):
    """``--jit_compile`` compiles the whole train step, where XLA takes static shapes only: the auxiliary loss
    then scores every ``(row, t)`` slot and masks the invalid pairs instead of gathering the valid ones (their
    count varies by batch; gathering failed to compile: "Dynamic input unexpectedly found"). One SGD step from
    the same weights gives the same loss and weights either way, with given or in-batch negatives."""
    labels = {"click": tf.constant(np.arange(8) % 2, tf.float32)}
    features = _batch()
    results = []
    for jit_compile in (False, True):
        config = ml_collections.ConfigDict(dict(
            model=dict(name="dien", history=HISTORY, negative_history=negatives, attention_units=(8,),
                       hidden_units=(8,), aux_net=aux_net),
            tasks=dict(score=dict(label="click"))))
        tf.keras.utils.set_random_seed(0)
        model = build_model(config, SCHEMA)
        model.compile(optimizer=tf.keras.optimizers.SGD(0.5), jit_compile=jit_compile)
        logs = model.train_on_batch(features, labels, return_dict=True)
        results.append((logs, [(v.name, v.numpy()) for v in model.trainable_variables]))  # built in one order
    (plain_logs, plain_weights), (compiled_logs, compiled_weights) = results
    aux_plain, aux_compiled = (logs["loss"] - logs["score_loss"] for logs in (plain_logs, compiled_logs))
    assert aux_plain > 0.1  # the auxiliary loss is in the step's loss
    if negatives:  # in-batch negatives are random draws: the same only in distribution
        np.testing.assert_allclose(aux_compiled, aux_plain, rtol=1e-5)
        assert len(plain_weights) == len(compiled_weights)
        for (name, value), (_, compiled) in zip(plain_weights, compiled_weights):
            np.testing.assert_allclose(compiled, value, atol=1e-5, err_msg=name)
    else:
        np.testing.assert_allclose(compiled_logs["score_loss"], plain_logs["score_loss"], rtol=1e-5)
        assert 0.5 * aux_plain < aux_compiled < 2 * aux_plain
