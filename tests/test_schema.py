"""The feature schema: config parsing, errors that name the feature, parsing and padding of sequences."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.data.tfrecord import to_examples
from tfrecsys.features.embedding import FeatureEmbedding, IdLookup
from tfrecsys.features.schema import FeatureSchema, SchemaError, Vocabulary

FEATURES = {
    "user_id": dict(kind="id", num_buckets=10, embedding_dim=4),
    "city": dict(kind="id", dtype="string", vocabulary=["paris", "tokyo"], embedding_dim=3),
    "query": dict(kind="id", dtype="string", hash_buckets=7, embedding_dim=2),
    "price": dict(kind="dense"),
    "position": dict(kind="id", num_buckets=5, training_only=True),
    "hist_item": dict(kind="sequence", max_len=3, num_buckets=20, embedding_dim=4),
    "hist_time": dict(kind="sequence", max_len=3, num_buckets=100, aligned_with="hist_item"),
    "click": dict(kind="label"),
}


def schema():
    return FeatureSchema.from_config(FEATURES)


def test_serving_signature_excludes_labels_and_training_only_features():
    specs = schema().input_signature(serving=True)
    assert sorted(specs) == ["city", "hist_item", "hist_item_length", "hist_time", "price", "query", "user_id"]
    assert specs["hist_item"].shape.as_list() == [None, 3] and specs["hist_item"].dtype == tf.int64
    assert specs["city"].dtype == tf.string
    assert "position" in schema().input_signature(serving=False)


def test_parse_keeps_most_recent_events_and_lengths():
    columns = {
        "user_id": np.array([1, 2]), "city": np.array([b"paris", b"rome"]), "query": np.array([b"a", b"b"]),
        "price": np.array([0.5, 1.5], np.float32), "position": np.array([0, 3]),
        "hist_item": [np.array([1, 2, 3, 4, 5]), np.array([7])],
        "hist_time": [np.array([10, 20, 30, 40, 50]), np.array([70])],
        "click": np.array([1.0, 0.0], np.float32),
    }
    parsed = schema().parse_examples(tf.constant(to_examples(columns)))
    np.testing.assert_array_equal(parsed["hist_item"], [[3, 4, 5], [7, 0, 0]])
    np.testing.assert_array_equal(parsed["hist_time"], [[30, 40, 50], [70, 0, 0]])
    np.testing.assert_array_equal(parsed["hist_item_length"], [3, 1])
    assert parsed["hist_item_length"].dtype == tf.int64
    assert "hist_time_length" not in parsed


@pytest.mark.parametrize("features, message", [
    ({"u": dict(kind="id")}, "set exactly one of num_buckets"),
    ({"u": dict(kind="id", num_buckets=3, hash_buckets=4)}, "set exactly one of num_buckets"),
    ({"u": dict(kind="id", dtype="string", num_buckets=3)}, "'u': num_buckets needs dtype int64"),
    ({"u": dict(kind="idd", num_buckets=3)}, "'u': kind must be one of"),
    ({"u": dict(kind="dense", embeding_dim=3)}, "'u' (dense): unknown keys ['embeding_dim']"),
    ({"h": dict(kind="sequence", max_len=3, shares="item")}, "'h' shares 'item', which is not an id feature"),
    ({"i": dict(kind="id", num_buckets=3), "h": dict(kind="sequence", max_len=3, shares="i", num_buckets=3)},
     "sequence feature 'h': set exactly one of shares"),
    ({"p": dict(kind="dense", num_buckets=3)}, "'p': ['num_buckets'] only apply to id and sequence features"),
    ({"h": dict(kind="sequence", max_len=3, num_buckets=4), "t": dict(kind="sequence", max_len=4, num_buckets=4,
                                                                     aligned_with="h")},
     "'t' has max_len 4 but its primary 'h' has 3"),
])
def test_schema_errors_name_the_feature(features, message):
    with pytest.raises(SchemaError) as error:
        FeatureSchema.from_config(features)
    assert message in str(error.value)


def test_id_lookup_maps_out_of_vocabulary_ids_to_oov_rows():
    buckets = IdLookup(Vocabulary(num_buckets=5, num_oov=2))
    np.testing.assert_array_equal(buckets(tf.constant([0, 4, 5, -1, 6], tf.int64)), [0, 4, 6, 6, 5])
    vocabulary = IdLookup(Vocabulary(vocabulary=("paris", "tokyo")), "string")
    np.testing.assert_array_equal(vocabulary(tf.constant(["tokyo", "rome", "paris"])), [2, 0, 1])
    hashed = IdLookup(Vocabulary(hash_buckets=7), "string")(tf.constant(["a", "b", "a"])).numpy()
    assert hashed[0] == hashed[2] and all(0 <= h < 7 for h in hashed)


def test_feature_embedding_shapes_and_masks():
    parsed = {"user_id": tf.constant([1, 99], tf.int64), "city": tf.constant(["paris", "x"]),
              "query": tf.constant(["q", "r"]), "price": tf.constant([1.0, 2.0]),
              "hist_item": tf.constant([[1, 2, 0], [3, 0, 0]], tf.int64),
              "hist_item_length": tf.constant([2, 1], tf.int64),
              "hist_time": tf.constant([[5, 6, 0], [7, 0, 0]], tf.int64)}
    s = schema()
    embedded = FeatureEmbedding(s, include=[f.name for f in s.serving_inputs])(parsed)
    assert embedded["user_id"].shape == (2, 4)
    assert embedded["city"].shape == (2, 3)
    assert embedded["price"].shape == (2, 1)
    assert embedded["hist_item"].shape == (2, 3, 4)
    np.testing.assert_array_equal(embedded["hist_time_mask"], [[True, True, False], [True, False, False]])


def test_to_json_round_trips():
    s = schema()
    assert FeatureSchema.from_config(s.to_json()) == s
