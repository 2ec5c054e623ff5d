"""Generative ranking (tfrecsys/models/hstu_ranking.py): the interleaved item/action sequence, candidates that
see the history but not each other (m in one pass = m passes of one), and the schema checks."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.action_tokens import InterleavedActionTokens
from tfrecsys.layers.pooling import masked_mean
from tfrecsys.models import build_model

CONFIG = "configs/hstu_ranking_simulator.py"
SMALL = {"features.item_id.embedding_dim": 8, "features.item_id.num_buckets": 50, "model.num_blocks": 1,
         "model.hidden_units": (4,), "model.num_heads": 2, "model.dropout": 0.0,
         **{f"features.{name}.max_len": 6 for name in ("hist_item_id", "hist_action", "hist_timestamp")}}


def test_tokens_interleave_items_and_actions_then_append_the_candidates():
    items = np.arange(1, 7, dtype=np.float32).reshape(2, 3, 1)       # row 0: items 1 2 3; row 1: 4 5 (6 padding)
    actions = -items
    times = np.array([[10, 20, 30], [40, 50, 60]])
    candidates = np.array([[100.0, 101.0], [200.0, 201.0]]).reshape(2, 2, 1)
    tokens, token_times, lengths, positions = InterleavedActionTokens()(
        items, actions, times, np.array([3, 2]), candidates, np.array([2, 1]), np.array([[99, 99], [77, 77]]))
    np.testing.assert_array_equal(tokens[..., 0].numpy(), [[1, -1, 2, -2, 3, -3, 100, 101],
                                                           [4, -4, 5, -5, 200, 0, 0, 0]])
    np.testing.assert_array_equal(token_times.numpy(), [[10, 10, 20, 20, 30, 30, 99, 99],
                                                        [40, 40, 50, 50, 77, 0, 0, 0]])
    np.testing.assert_array_equal(lengths.numpy(), [8, 5])
    np.testing.assert_array_equal(positions.numpy(), [[6, 7], [4, 5]])


@pytest.fixture(scope="module")
def model_and_batch():
    """An untrained small model and a batch of 3 histories: empty, 4 events, full (6)."""
    config = load_config(CONFIG, SMALL)
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, schema)
    rng = np.random.default_rng(0)
    batch, max_len = 3, schema["hist_item_id"].max_len
    features = {"hist_item_id": rng.integers(1, 50, (batch, max_len)),
                "hist_action": rng.integers(0, 2, (batch, max_len)),
                "hist_timestamp": np.sort(rng.integers(0, 10 ** 6, (batch, max_len)), 1),
                "hist_item_id_length": np.array([0, 4, max_len]), "item_id": rng.integers(1, 50, batch),
                "timestamp": np.full((batch, 1), 10 ** 6 + 60)}
    return model, {name: tf.constant(value, tf.int64) for name, value in features.items()}


def test_m_candidates_in_one_pass_score_as_m_passes_of_one_candidate(model_and_batch):
    model, features = model_and_batch
    m = 3
    candidates = tf.constant(np.random.default_rng(1).integers(1, 50, (3, m)), tf.int64)
    together = model.score_candidates(features, candidates)["score"].numpy()
    # The m single-candidate passes as one batch of 3·m rows: row (k, b) holds history b and candidate k.
    one_each = {name: tf.concat([value] * m, 0) for name, value in features.items()}
    one_each["item_id"] = tf.reshape(tf.transpose(candidates), [-1])
    alone = model(one_each)["score"].numpy().reshape(m, 3).T
    assert np.abs(together - alone).max() < 1e-5
    assert np.ptp(together, axis=1).min() > 1e-4, "the candidate itself must change its score"
    # Order and padding: reversed candidates, row 1 with only its first two (the third padded) score alike.
    reversed_padded = model.score_candidates(features, candidates[:, ::-1],
                                             candidate_lengths=tf.constant([3, 2, 3]))["score"].numpy()
    assert np.abs(reversed_padded[[0, 2], ::-1] - together[[0, 2]]).max() < 1e-5
    assert np.abs(reversed_padded[1, :2] - together[1, ::-1][:2]).max() < 1e-5 and reversed_padded[1, 2] == 0


def test_a_history_item_scores_as_it_would_as_the_candidate_of_the_events_before_it(model_and_batch):
    model, features = model_and_batch
    per_position = model.item_position_scores(features)["score"].numpy()
    assert not per_position[0].any() and not per_position[1, 4:].any(), "padded positions score 0"
    rows, items = np.array([1, 1, 2, 2]), np.array([0, 3, 2, 5])
    as_candidates = {name: tf.gather(value, rows) for name, value in features.items()}
    as_candidates.update(hist_item_id_length=tf.constant(items, tf.int64),
                         item_id=tf.gather_nd(features["hist_item_id"], np.stack([rows, items], 1)),
                         timestamp=tf.gather_nd(features["hist_timestamp"], np.stack([rows, items], 1))[:, None])
    alone = model(as_candidates)["score"].numpy()
    assert np.abs(per_position[rows, items] - alone).max() < 1e-5


def test_training_adds_the_history_label_loss_at_item_positions(model_and_batch):
    model, features = model_and_batch
    served = model(features)["score"].numpy()
    trained = model(features, training=True)["score"].numpy()
    np.testing.assert_allclose(trained, served, atol=1e-6)  # the candidate's outputs from the same pass
    p = model.item_position_scores(features)["score"].numpy()
    label = features["hist_action"].numpy() >= 1  # history_labels {"score": 1}: clicked
    valid = np.arange(p.shape[1])[None, :] < features["hist_item_id_length"].numpy()[:, None]
    p = np.clip(p, 1e-7, 1 - 1e-7)
    expected = -np.where(label, np.log(p), np.log(1 - p))[valid].mean()
    assert len(model.losses) == 1 and abs(float(model.losses[0]) - expected) < 1e-5


def test_a_candidate_reads_the_actions_of_the_history(model_and_batch):
    model, features = model_and_batch
    both = {name: tf.concat([value, value], 0) for name, value in features.items()}
    both["hist_action"] = tf.concat([features["hist_action"], 1 - features["hist_action"]], 0)
    before, after = np.split(model(both)["score"].numpy(), 2)
    assert after[0] == before[0], "row 0 has no history: its actions are padding"
    assert np.abs(after[1:] - before[1:]).min() > 1e-5


def test_a_bad_action_feature_is_named():
    config = load_config(CONFIG, {**SMALL, "model.action_feature": "hist_item_id"})
    with pytest.raises(ValueError, match="action_feature 'hist_item_id' must be a raw sequence aligned_with"):
        build_model(config, FeatureSchema.from_config(config.features))


def test_a_raw_float_sequence_pools_to_its_masked_mean():
    # What DIN and dnn towers read from the ratings history the ranking benchmark gives them beside HSTU's.
    ratings = tf.constant([[4.0, 2.0, 9.0], [0.0, 0.0, 0.0]])
    pooled = masked_mean(ratings, tf.constant([[True, True, False], [False, False, False]]))
    np.testing.assert_array_equal(pooled.numpy(), [[3.0], [0.0]])
