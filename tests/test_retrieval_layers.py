"""Retrieval building blocks: logQ correction, mixed-negative logits, accidental hits, the corpus sampler, the
streaming frequency estimator, sampled softmax, full-corpus metrics and the item frequency table."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrecsys.data import tfrecord
from tfrecsys.data.input import DataError
from tfrecsys.data.item_frequency import count_items, read_item_frequency, write_item_frequency
from tfrecsys.layers.retrieval import (MASKED_LOGIT, CorpusSampler, LogQCorrection, MixedNegativeLogits,
                                       RemoveAccidentalHits, StreamingFrequencyEstimator)
from tfrecsys.losses.sampled_softmax import SampledSoftmaxLoss
from tfrecsys.metrics.retrieval import MISSING_RANK, summarize_ranks, target_ranks

M = MASKED_LOGIT


def test_uniform_q_leaves_ranking_and_softmax_unchanged():
    logits = tf.random.stateless_normal([6, 9], seed=[1, 2])
    corrected = LogQCorrection()(logits, tf.fill([9], 1.0 / 9))
    np.testing.assert_array_equal(np.argsort(-corrected.numpy(), axis=1), np.argsort(-logits.numpy(), axis=1))
    np.testing.assert_allclose(tf.nn.softmax(corrected).numpy(), tf.nn.softmax(logits).numpy(), atol=1e-6)
    labels = tf.range(6, dtype=tf.int64)
    np.testing.assert_allclose(SampledSoftmaxLoss()(labels, corrected).numpy(),
                               SampledSoftmaxLoss()(labels, logits).numpy(), rtol=1e-6)


def test_logq_lowers_popular_items_by_log_q():
    corrected = LogQCorrection()(tf.zeros([1, 3]), tf.constant([0.5, 0.05, 0.0]))
    # A probability of 0 (an item no table counted) is clipped, not an infinite logit.
    np.testing.assert_allclose(corrected.numpy(), [[math.log(2), math.log(20), -math.log(1e-9)]], rtol=1e-5)


def _three_by_three_plus_two():
    """3 queries, their 3 in-batch positives (items 10, 20, 10) and 2 sampled items (30, 20)."""
    query = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positive = tf.constant([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    positive_ids = tf.constant([10, 20, 10], tf.int64)
    sampled = tf.constant([[2.0, 1.0], [0.0, 1.0]])
    sampled_ids = tf.constant([30, 20], tf.int64)
    positive_probability = tf.constant([0.4, 0.1, 0.4])   # in-batch probability of items 10, 20, 10
    sampled_probability = tf.constant([0.25, 0.5])         # the sampler's probability of items 30, 20
    return query, positive, positive_ids, sampled, sampled_ids, positive_probability, sampled_probability


def test_mixed_batch_logits_by_hand():
    query, positive, positive_ids, sampled, sampled_ids, p, q = _three_by_three_plus_two()
    layer = MixedNegativeLogits("mixed", temperature=0.5, logq=True, remove_accidental_hits=True)
    logits, positive_column = layer(query, positive, positive_ids, sampled, sampled_ids, p, q)
    log = math.log
    # ⟨u_i, v_j⟩ / 0.5 − log q_j, per column with its own sampler's q: in-batch dot products
    # [[1,0,1],[0,2,0],[1,2,1]], sampled [[2,0],[1,1],[3,1]]. Masked: row 1's item 10 in column 3, row 2's
    # item 20 drawn by the sampler (column 5), row 3's item 10 in column 1.
    expected = [
        [2 - log(.4), 0 - log(.1), M, 4 - log(.25), 0 - log(.5)],
        [0 - log(.4), 4 - log(.1), 0 - log(.4), 2 - log(.25), M],
        [M, 4 - log(.1), 2 - log(.4), 6 - log(.25), 2 - log(.5)],
    ]
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(positive_column.numpy(), [0, 1, 2])
    # The loss of row 1 is the softmax over its unmasked columns.
    row = np.array(expected[0])[[0, 1, 3, 4]]
    loss = SampledSoftmaxLoss(reduction=tf.keras.losses.Reduction.NONE)(positive_column, logits).numpy()
    assert loss[0] == pytest.approx(-(row[0] - np.log(np.exp(row).sum())), rel=1e-5)


def test_in_batch_and_sampled_only_column_layouts():
    query, positive, positive_ids, sampled, sampled_ids, p, q = _three_by_three_plus_two()
    in_batch, column = MixedNegativeLogits("in_batch", 0.5)(query, positive, positive_ids)
    assert in_batch.shape == (3, 3) and column.numpy().tolist() == [0, 1, 2]
    np.testing.assert_allclose(in_batch.numpy(), [[2, 0, M], [0, 4, 0], [M, 4, 2]])
    own_q = tf.constant([0.3, 0.5, 0.3])  # the sampler's probability of each row's positive
    only, column = MixedNegativeLogits("sampled", 0.5, logq=True)(query, positive, positive_ids, sampled,
                                                                  sampled_ids, own_q, q)
    assert column.numpy().tolist() == [0, 0, 0]
    log = math.log
    np.testing.assert_allclose(only.numpy(), [[2 - log(.3), 4 - log(.25), 0 - log(.5)],
                                              [4 - log(.5), 2 - log(.25), M],
                                              [2 - log(.3), 6 - log(.25), 2 - log(.5)]], rtol=1e-5)


def test_accidental_hits_are_masked_but_own_positive_stays():
    logits = tf.zeros([3, 4])
    masked = RemoveAccidentalHits()(logits, tf.constant([7, 8, 7], tf.int64), tf.constant([7, 8, 7, 9], tf.int64),
                                    tf.constant([0, 1, 2], tf.int64))
    np.testing.assert_array_equal(masked.numpy(), [[0, 0, M, 0], [0, 0, 0, 0], [M, 0, 0, 0]])
    no_positives = RemoveAccidentalHits()(logits[:, :2], tf.constant([7, 8, 5], tf.int64),
                                          tf.constant([8, 7], tf.int64))
    np.testing.assert_array_equal(no_positives.numpy(), [[0, M], [M, 0], [0, 0]])
    without = MixedNegativeLogits("in_batch", remove_accidental_hits=False)(
        tf.ones([2, 2]), tf.ones([2, 2]), tf.constant([1, 1], tf.int64))[0]
    assert (without.numpy() == 2).all()


def test_in_batch_logq_loss_equals_tfrs_retrieval_task():
    rng = np.random.default_rng(0)
    query = tf.math.l2_normalize(tf.constant(rng.normal(size=(8, 4)), tf.float32), axis=1)
    candidates = tf.math.l2_normalize(tf.constant(rng.normal(size=(8, 4)), tf.float32), axis=1)
    ids = tf.constant([1, 2, 3, 1, 5, 6, 2, 8], tf.int64)
    probability = tf.constant(rng.uniform(0.01, 0.3, size=8), tf.float32)
    task = tfrs.tasks.Retrieval(temperature=0.1, remove_accidental_hits=True)
    expected = task(query, candidates, candidate_sampling_probability=probability, candidate_ids=ids,
                    compute_metrics=False)
    logits, column = MixedNegativeLogits("in_batch", 0.1, logq=True)(query, candidates, ids, positive_probability=probability)
    ours = SampledSoftmaxLoss(reduction=tf.keras.losses.Reduction.SUM)(column, logits)
    assert float(ours) == pytest.approx(float(expected), rel=1e-5)


def test_sampled_softmax_weights_rows_by_reward():
    logits = tf.constant([[2.0, 0.0], [0.0, 1.0]])
    per_row = SampledSoftmaxLoss(reduction=tf.keras.losses.Reduction.NONE)(tf.constant([0, 1]), logits).numpy()
    weighted = SampledSoftmaxLoss()(tf.constant([0, 1]), logits, sample_weight=tf.constant([2.0, 0.0]))
    assert float(weighted) == pytest.approx(2.0 * per_row[0] / 2, rel=1e-6)


def test_corpus_sampler_draws_counts_to_the_power_alpha():
    counts = np.array([100.0, 25.0, 4.0, 1.0, 0.0])
    sampler = CorpusSampler(counts, num_samples=50_000, alpha=0.5, seed=3)
    rows, probability = sampler(step=1)
    expected = np.sqrt(counts) / np.sqrt(counts).sum()
    empirical = np.bincount(rows.numpy(), minlength=5) / 50_000
    np.testing.assert_allclose(empirical, expected, atol=0.01)
    np.testing.assert_allclose(probability.numpy(), expected[rows.numpy()], rtol=1e-6)
    assert empirical[4] == 0
    again, _ = sampler(step=1)
    other_replica, _ = sampler(step=1, replica=1)
    np.testing.assert_array_equal(again.numpy(), rows.numpy())
    assert (other_replica.numpy() != rows.numpy()).any()
    uniform_rows, uniform_probability = CorpusSampler(counts, num_samples=10, alpha=0.0)(step=5)
    np.testing.assert_allclose(uniform_probability.numpy(), 0.2)
    with pytest.raises(ValueError, match="count 0"):
        CorpusSampler(np.zeros(3), num_samples=2, alpha=1.0)


def _run_stream(estimator, stream):
    """Feeds ``stream`` ``[steps, batch]`` of ids to the estimator as training steps, in one graph."""

    @tf.function
    def run(batches):
        for batch in batches:
            estimator(batch, training=True)

    run(tf.constant(stream))


def test_streaming_estimator_converges_to_known_frequencies():
    num_items, batch, steps = 50, 128, 5000
    truth = 1.0 / np.arange(1, num_items + 1)
    truth /= truth.sum()                       # Zipf: from 0.22 (28 occurrences per step) to 0.0044 per draw
    rng = np.random.default_rng(0)
    ids = rng.permutation(num_items).astype(np.int64) * 7919 + 3   # arbitrary int64 ids
    stream = ids[rng.choice(num_items, size=(steps, batch), p=truth)]
    estimator = StreamingFrequencyEstimator(num_buckets=1 << 12, num_hashes=3, alpha=0.001)
    _run_stream(estimator, stream)
    estimate = estimator.probability(tf.constant(ids)).numpy()
    relative_error = np.abs(estimate - truth) / truth
    assert relative_error.max() < 0.10, relative_error
    assert int(estimator.step.numpy()) == steps


def test_several_hash_functions_undo_collisions():
    num_items, batch, steps = 60, 64, 2000
    truth = 1.0 / np.arange(1, num_items + 1) ** 1.2
    truth /= truth.sum()
    rng = np.random.default_rng(1)
    ids = np.array([f"item-{i}" for i in range(num_items)])
    stream = ids[rng.choice(num_items, size=(steps, batch), p=truth)]
    errors = {}
    for hashes in (1, 4):
        estimator = StreamingFrequencyEstimator(num_buckets=64, num_hashes=hashes, alpha=0.005)
        _run_stream(estimator, stream)
        errors[hashes] = np.mean(np.abs(estimator.probability(tf.constant(ids)).numpy() - truth) / truth)
    # With 60 items in 64 buckets one hash function leaves many collided items; the max over four gaps
    # picks an uncollided bucket for most of them.
    assert errors[4] < 0.5 * errors[1], errors


def test_estimator_without_training_only_reads():
    estimator = StreamingFrequencyEstimator(num_buckets=16, num_hashes=2, alpha=0.1)
    _run_stream(estimator, np.array([[1, 1, 2, 3]] * 10, np.int64))
    before = estimator.mean_gap.numpy().copy()
    probability = estimator(tf.constant([1, 2, 99], tf.int64), training=False).numpy()
    np.testing.assert_array_equal(estimator.mean_gap.numpy(), before)
    assert probability[0] == pytest.approx(0.5, rel=1e-4) and probability[1] == pytest.approx(0.25, rel=1e-4)
    assert probability[2] == pytest.approx(1 / 10 / 4, rel=1e-4)   # unseen: one occurrence in ten steps
    assert StreamingFrequencyEstimator.from_config(estimator.get_config()).num_hashes == 2


def test_full_corpus_ranks_and_metrics():
    scores = tf.constant([[0.9, 0.1, 0.5, 0.3], [0.2, 0.2, 0.2, 0.8], [0.1, 0.2, 0.3, 0.4]])
    ranks = target_ranks(scores, tf.constant([2, 1, -1])).numpy()
    # Row 2 ties items 0 and 2 with the target: ties count against it. Row 3's target is not in the corpus.
    assert ranks.tolist() == [1, 3, MISSING_RANK]
    metrics = summarize_ranks([0, 1, 12, MISSING_RANK], ks=(1, 10))
    assert metrics["recall_at_1"] == pytest.approx(0.25) and metrics["recall_at_10"] == pytest.approx(0.5)
    assert metrics["ndcg_at_10"] == pytest.approx((1 + 1 / math.log2(3)) / 4, rel=1e-6)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 13) / 4, rel=1e-6)


def test_recall_at_k_equals_tfrs_factorized_top_k():
    rng = np.random.default_rng(2)
    queries = tf.constant(rng.normal(size=(64, 8)), tf.float32)
    corpus = tf.constant(rng.normal(size=(300, 8)), tf.float32)
    targets = rng.integers(0, 300, size=64)
    ids = tf.range(300, dtype=tf.int64)
    top_k = tfrs.metrics.FactorizedTopK(candidates=tf.data.Dataset.from_tensor_slices((ids, corpus)).batch(100),
                                        ks=(10, 50))
    top_k.update_state(queries, tf.gather(corpus, targets), true_candidate_ids=tf.gather(ids, targets))
    theirs = {m.name: float(m.result()) for m in top_k._top_k_metrics}
    ours = summarize_ranks(target_ranks(tf.matmul(queries, corpus, transpose_b=True), targets), ks=(10, 50))
    assert ours["recall_at_10"] == pytest.approx(theirs["factorized_top_k/top_10_categorical_accuracy"])
    assert ours["recall_at_50"] == pytest.approx(theirs["factorized_top_k/top_50_categorical_accuracy"])


def test_item_frequency_table_round_trip_and_errors(tmp_path):
    tfrecord.write_sharded({"item_id": np.array([3, 1, 3, 2, 3, 1], np.int64),
                            "hist": [np.array([1, 2]), np.array([3]), np.array([], np.int64), np.array([2]),
                                     np.array([5]), np.array([1])]}, str(tmp_path), "train", 2)
    files = sorted(str(p) for p in tmp_path.glob("train-*"))
    counts = count_items(files, "item_id")
    assert counts == {3: 3, 1: 2, 2: 1}
    path = str(tmp_path / "freq" / "item_frequency.tsv")
    write_item_frequency(path, counts)
    assert open(path).read() == "3\t3\n1\t2\n2\t1\n"
    assert read_item_frequency(path) == counts
    assert read_item_frequency(path, key_dtype="string") == {"3": 3, "1": 2, "2": 1}
    with pytest.raises(DataError, match="record 2 has no value for feature 'hist'"):
        count_items(files[:1], "hist")
    with pytest.raises(DataError, match="no feature 'price'"):
        count_items(files, "price")
    bad = tmp_path / "bad.tsv"
    bad.write_text("7\t2\nx y\n")
    with pytest.raises(DataError, match=r"bad.tsv: line 2: expected 'item_id<TAB>count'"):
        read_item_frequency(str(bad))
    with pytest.raises(ValueError, match="contains a tab"):
        write_item_frequency(str(tmp_path / "t.tsv"), {"a\tb": 1})
    strings = str(tmp_path / "strings.tsv")
    write_item_frequency(strings, {"b": 2, "a": 2, "10": 5})
    assert open(strings).read() == "10\t5\na\t2\nb\t2\n"
    assert read_item_frequency(strings) == {"10": 5, "a": 2, "b": 2}


def test_layers_round_trip_through_get_config():
    for layer in (LogQCorrection(min_probability=1e-6), RemoveAccidentalHits(),
                  MixedNegativeLogits("mixed", temperature=0.1, logq=True, remove_accidental_hits=False),
                  CorpusSampler([1.0, 2.0, 3.0], num_samples=4, alpha=0.5, seed=7),
                  StreamingFrequencyEstimator(num_buckets=16, num_hashes=2, alpha=0.05, seed=3)):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
