"""SIM's search units (tfrecsys/layers/search.py) against brute force: hard search is a category filter
keeping the most recent K, soft search is the top-K inner products, the ESU is the paper's multi-head
attention over what was selected and nothing else, and time intervals fall in log2 buckets."""

import numpy as np
import tensorflow as tf

from tfrecsys.layers.search import (ExactSearchUnit, HardSearch, SoftSearch, TimeIntervalEmbedding,
                                    gather_selected)

BATCH, LENGTH, TOP_K = 6, 40, 5


def random_histories(seed=0, num_categories=4):
    rng = np.random.default_rng(seed)
    categories = rng.integers(0, num_categories, (BATCH, LENGTH)).astype(np.int64)
    lengths = np.array([0, 1, 3, 17, LENGTH - 1, LENGTH])
    mask = np.arange(LENGTH)[np.newaxis, :] < lengths[:, np.newaxis]
    return categories, mask, rng.integers(0, num_categories, BATCH).astype(np.int64)


def brute_force_category_filter(categories, mask, target, k):
    """Positions of the valid behaviours of the target's category, most recent first, the first k."""
    return [[p for p in range(LENGTH - 1, -1, -1) if mask[b, p] and categories[b, p] == target[b]][:k]
            for b in range(len(target))]


def test_hard_search_equals_a_brute_force_category_filter():
    categories, mask, target = random_histories()
    target[3] = 99  # no behaviour of this category: everything masked
    indices, selected = HardSearch(TOP_K)(tf.constant(categories), tf.constant(mask), tf.constant(target))
    expected = brute_force_category_filter(categories, mask, target, TOP_K)
    assert indices.shape == (BATCH, TOP_K)
    for row, positions in enumerate(expected):
        assert selected[row].numpy().tolist() == [True] * len(positions) + [False] * (TOP_K - len(positions))
        assert indices[row, :len(positions)].numpy().tolist() == positions
    assert len(expected[0]) == len(expected[3]) == 0 and len(expected[4]) == TOP_K  # both edges are covered


def test_hard_search_compares_string_categories_and_clamps_k_to_the_history():
    categories = tf.constant([["a", "b", "a"], ["b", "b", "c"]])
    indices, selected = HardSearch(10)(categories, tf.ones([2, 3], tf.bool), tf.constant(["a", "b"]))
    assert indices.numpy()[:, :2].tolist() == [[2, 0], [1, 0]]
    assert selected.numpy().tolist() == [[True, True, False], [True, True, False]]


def test_soft_search_equals_brute_force_top_k_with_ties_broken_by_position():
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    _, mask, _ = random_histories()
    history = rng.normal(size=(BATCH, LENGTH, 8)).astype(np.float32)
    history[:, 10:20] = history[:, 30:40] = history[:, :10]  # equal behaviours: equal scores, tied three ways
    target = rng.normal(size=(BATCH, 6)).astype(np.float32)
    search = SoftSearch(TOP_K, projection_dim=4)
    indices, selected, _ = search(tf.constant(history), tf.constant(mask), tf.constant(target))
    w_b, w_a = search.project_history.kernel.numpy(), search.project_target.kernel.numpy()
    scores = np.einsum("bld,bd->bl", history @ w_b, target @ w_a)
    for row in range(BATCH):
        valid = np.flatnonzero(mask[row])
        # Stable sort of -score: among equal scores the lower position first.
        best = valid[np.argsort(-scores[row, valid], kind="stable")][:TOP_K].tolist()
        assert indices[row, :len(best)].numpy().tolist() == best
        assert selected[row].numpy().tolist() == [True] * len(best) + [False] * (TOP_K - len(best))


def esu_reference(selected, mask, target, esu):
    """The paper's equations in numpy: per head, softmax over the selected of (W_b z)·(W_a e_a)/√d."""
    heads, dim = esu.num_heads, esu.head_dim
    keys = (selected @ esu.project_keys.kernel.numpy()).reshape(*selected.shape[:2], heads, dim)
    query = (target @ esu.project_query.kernel.numpy()).reshape(len(target), heads, dim)
    out = np.zeros((len(target), heads, selected.shape[-1]), np.float32)
    for b in range(len(target)):
        valid = np.flatnonzero(mask[b])
        if not len(valid):
            continue
        for h in range(heads):
            logits = keys[b, valid, h] @ query[b, h] / np.sqrt(dim)
            weights = np.exp(logits - logits.max())
            out[b, h] = (weights / weights.sum()) @ selected[b, valid]
    return out.reshape(len(target), -1)


def test_exact_search_unit_is_masked_multi_head_attention_over_the_selected_only():
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    categories, mask, target_category = random_histories(seed=3)
    values = rng.normal(size=(BATCH, LENGTH, 6)).astype(np.float32)
    target = rng.normal(size=(BATCH, 5)).astype(np.float32)
    indices, selected_mask = HardSearch(TOP_K)(tf.constant(categories), tf.constant(mask), tf.constant(target_category))
    esu = ExactSearchUnit(num_heads=2, head_dim=3)

    def esu_output(history):
        return esu(gather_selected(tf.constant(history), indices), selected_mask, tf.constant(target)).numpy()

    out = esu_output(values)
    assert out.shape == (BATCH, 2 * 6)
    np.testing.assert_allclose(out, esu_reference(gather_selected(values, indices).numpy(), selected_mask.numpy(),
                                                  target, esu), atol=1e-5)
    assert np.all(out[0] == 0.0)  # an empty history: nothing selected, zeros (not NaN)
    # Behaviours the GSU did not select cannot change the ESU's output.
    chosen = np.zeros((BATCH, LENGTH), bool)
    for row, position in zip(*np.nonzero(selected_mask.numpy())):
        chosen[row, indices[row, position]] = True
    perturbed = np.where(chosen[..., np.newaxis], values, values + 10 * rng.normal(size=values.shape))
    np.testing.assert_array_equal(esu_output(perturbed.astype(np.float32)), out)


def test_time_intervals_fall_in_log2_buckets_of_the_unit_from_exact_int64_times():
    request = 1_700_000_000_000  # large enough that float32 times would lose the seconds
    intervals = np.array([[0, 59, 60, 179, 180, 3600, -5, 10**9]], np.int64)
    layer = TimeIntervalEmbedding(num_buckets=10, dim=3, unit_seconds=60.0)
    buckets = layer.buckets(tf.constant(request - intervals), tf.constant([request], tf.int64)).numpy()
    # ⌊log2(1 + Δt/60)⌋: 0 s, 59 s → 0; 60 s, 179 s → 1; 180 s → 2; 1 h → 5; the future → 0; capped at 9.
    assert buckets.tolist() == [[0, 0, 1, 1, 2, 5, 0, 9]]
    assert layer(tf.constant(request - intervals), tf.constant([request], tf.int64)).shape == (1, 8, 3)
