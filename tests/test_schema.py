"""The feature schema: config parsing, errors that name the feature, parsing and padding of sequences (raw
ones, exact int64, several cuts of one stored column, label sequences, ragged), its JSON round trip and the
one decoder of it that batch scoring uses."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfrecsys import contract
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


# Raw sequences, exact int64, several cuts of one stored column, label sequences, ragged parsing -------------

SEQUENTIAL = {
    "item_id": dict(kind="id", num_buckets=100),
    "request_time": dict(kind="dense", dtype="int64"),
    "hist_short": dict(kind="sequence", max_len=2, shares="item_id", source="hist_item_id"),
    "hist_long": dict(kind="sequence", max_len=4, shares="item_id", source="hist_item_id"),
    "hist_time": dict(kind="sequence", max_len=4, raw=True, aligned_with="hist_long", source="hist_ts"),
    "hist_dwell": dict(kind="sequence", max_len=3, raw=True, dtype="float32"),
    "position": dict(kind="dense", training_only=True),
    "next_item": dict(kind="label", dtype="int64", max_len=4),
    "click": dict(kind="label"),
}
# Seconds around 1.7e9 with odd low digits: float32 keeps only multiples of 128 there.
T0 = 1_700_000_001
REQUEST_TIMES = np.array([1_712_345_679, 1_712_345_681], np.int64)


def sequential_columns() -> dict:
    return {
        "item_id": np.array([5, 6]), "request_time": REQUEST_TIMES, "position": np.array([0.0, 1.0], np.float32),
        "hist_item_id": [np.array([11, 12, 13, 14, 15, 16]), np.array([21])],
        "hist_ts": [T0 + np.arange(6) * 37, np.array([T0 + 3])],
        "hist_dwell": [np.array([0.5, 1.25, 2.0, 8.75], np.float32), np.array([], np.float32)],
        "next_item": [np.array([12, 13, 14, 15, 16, 17]), np.array([22])],
        "click": np.array([1.0, 0.0], np.float32),
    }


def parse_sequential(**kwargs) -> dict:
    return FeatureSchema.from_config(SEQUENTIAL).parse_examples(tf.constant(to_examples(sequential_columns())),
                                                                 **kwargs)


def test_raw_int64_timestamp_sequence_parses_exact_padded_and_ragged():
    times = T0 + np.arange(6) * 37
    assert not np.array_equal(times.astype(np.float32).astype(np.int64), times)  # what a float cast would do
    padded, ragged = parse_sequential(), parse_sequential(ragged=True)
    assert padded["hist_time"].dtype == ragged["hist_time"].dtype == tf.int64
    np.testing.assert_array_equal(padded["hist_time"], [times[-4:], [T0 + 3, 0, 0, 0]])
    np.testing.assert_array_equal(ragged["hist_time"][0], times[-4:])
    np.testing.assert_array_equal(ragged["hist_time"][1], [T0 + 3])
    assert "hist_time_length" not in padded  # a side sequence is masked by its primary's length
    # A float32 raw sequence parses from float_list, most recent 3 kept.
    assert padded["hist_dwell"].dtype == tf.float32
    np.testing.assert_array_equal(padded["hist_dwell"], [[1.25, 2.0, 8.75], [0, 0, 0]])
    np.testing.assert_array_equal(padded["hist_dwell_length"], [3, 0])
    signature = FeatureSchema.from_config(SEQUENTIAL).input_signature()
    assert signature["hist_time"].dtype == tf.int64 and signature["hist_time"].shape.as_list() == [None, 4]
    assert signature["hist_dwell"].dtype == tf.float32 and "hist_dwell_length" in signature


def test_int64_dense_scalar_parses_and_serves_exact():
    parsed = parse_sequential()
    assert parsed["request_time"].dtype == tf.int64
    np.testing.assert_array_equal(parsed["request_time"], REQUEST_TIMES)
    specs = FeatureSchema.from_config(SEQUENTIAL).input_signature()
    assert specs["request_time"].dtype == tf.int64 and specs["request_time"].shape.as_list() == [None]


def test_features_of_one_stored_column_cut_their_own_most_recent_events():
    schema = FeatureSchema.from_config(SEQUENTIAL)
    assert schema["hist_short"].source == schema["hist_long"].source == "hist_item_id"
    assert schema["item_id"].source == "item_id"
    spec = schema.parse_spec(schema.inputs)
    assert "hist_item_id" in spec and "hist_short" not in spec and "hist_long" not in spec
    parsed = parse_sequential()
    np.testing.assert_array_equal(parsed["hist_short"], [[15, 16], [21, 0]])
    np.testing.assert_array_equal(parsed["hist_short_length"], [2, 1])
    np.testing.assert_array_equal(parsed["hist_long"], [[13, 14, 15, 16], [21, 0, 0, 0]])
    np.testing.assert_array_equal(parsed["hist_long_length"], [4, 1])
    assert "hist_item_id" not in parsed


def test_label_sequence_parses_padded_with_its_length_and_is_never_a_serving_input():
    schema = FeatureSchema.from_config(SEQUENTIAL)
    parsed = parse_sequential()
    assert parsed["next_item"].dtype == tf.int64
    np.testing.assert_array_equal(parsed["next_item"], [[14, 15, 16, 17], [22, 0, 0, 0]])
    np.testing.assert_array_equal(parsed["next_item_length"], [4, 1])
    inputs, labels = schema.split_labels(parsed)
    assert sorted(labels) == ["click", "next_item", "next_item_length"]
    assert not {"next_item", "next_item_length"} & set(inputs)
    for serving in (True, False):
        assert not {"next_item", "next_item_length"} & set(schema.input_signature(serving=serving))
    served = schema.parse_examples(tf.constant(to_examples(sequential_columns())), with_labels=False, serving=True)
    assert sorted(served) == sorted(schema.input_signature(serving=True))


def test_ragged_parse_equals_padded_parse_row_by_row():
    schema = FeatureSchema.from_config(SEQUENTIAL)
    padded, ragged = parse_sequential(), parse_sequential(ragged=True)
    assert not any(name.endswith("_length") for name in ragged)
    assert sorted(padded) == sorted(set(ragged) | {f.length_name for f in schema.features
                                                   if f.is_sequence and f.has_own_length})
    for feature in schema.features:
        if not feature.is_sequence:
            np.testing.assert_array_equal(ragged[feature.name], padded[feature.name], err_msg=feature.name)
            continue
        value = ragged[feature.name]
        assert isinstance(value, tf.RaggedTensor) and value.dtype == padded[feature.name].dtype, feature.name
        lengths = padded[feature.length_name].numpy()
        np.testing.assert_array_equal(value.row_lengths(), lengths, err_msg=feature.name)
        for row, length in enumerate(lengths):
            np.testing.assert_array_equal(value[row], padded[feature.name][row, :length], err_msg=feature.name)


def test_embedded_says_which_features_the_embedding_looks_up():
    embedded = {f.name for f in FeatureSchema.from_config(SEQUENTIAL).features if f.embedded}
    assert embedded == {"item_id", "hist_short", "hist_long"}
    embedded = {f.name for f in schema().features if f.embedded}
    assert embedded == {"user_id", "city", "query", "position", "hist_item", "hist_time"}


def test_to_json_from_json_round_trip_keeps_the_new_fields():
    schema = FeatureSchema.from_config(SEQUENTIAL)
    written = schema.to_json()
    assert written["hist_short"]["source"] == "hist_item_id" and "source" not in written["item_id"]
    assert written["hist_time"]["raw"] is True and "embedding_dim" not in written["hist_time"]
    assert written["request_time"]["dtype"] == "int64" and written["next_item"]["max_len"] == 4
    decoded = FeatureSchema.from_json(json.loads(json.dumps(written)))
    assert decoded == schema and FeatureSchema.from_config(written) == schema
    assert decoded.input_signature() == schema.input_signature()


def test_from_json_opens_no_vocabulary_file_but_from_config_needs_it(tmp_path):
    features = {"city": dict(kind="id", dtype="string", vocabulary=str(tmp_path / "gone.txt"))}
    assert FeatureSchema.from_json(features)["city"].vocab.vocabulary.endswith("gone.txt")
    with pytest.raises(SchemaError, match="'city': vocabulary file .*gone.txt does not exist") as refused:
        FeatureSchema.from_config(features)
    assert "run it with this config" in str(refused.value)


@pytest.mark.parametrize("features, message", [
    ({"t": dict(kind="sequence", max_len=3, raw=True, num_buckets=10)},
     "raw sequence feature 't' is not embedded, so ['num_buckets'] do not apply"),
    ({"t": dict(kind="sequence", max_len=3, raw=True, embedding_dim=8)},
     "raw sequence feature 't' is not embedded, so ['embedding_dim'] do not apply"),
    ({"i": dict(kind="id", num_buckets=3), "t": dict(kind="sequence", max_len=3, raw=True, shares="i")},
     "raw sequence feature 't' is not embedded, so it takes no shares"),
    ({"t": dict(kind="sequence", max_len=3, raw=True, dtype="string")},
     "raw sequence feature 't': dtype 'string' is not one of ['int64', 'float32']"),
    ({"t": dict(kind="sequence", max_len=3, dtype="float32", num_buckets=3)},
     "sequence feature 't': dtype 'float32' is not one of ['int64', 'string']; set raw=True"),
    ({"p": dict(kind="dense", dtype="string")}, "dense feature 'p': dtype 'string' is not one of"),
    ({"p": dict(kind="dense", dtype="int64", default=0.5)}, "dense feature 'p' is int64 but its default 0.5"),
    ({"y": dict(kind="label", max_len=0)}, "label feature 'y': max_len must be positive"),
    ({"y": dict(kind="label", max_len=3), "y_length": dict(kind="dense")},
     "feature 'y_length' clashes with the length input of sequence 'y'"),
    ({"y": dict(kind="label", max_len=3), "t": dict(kind="sequence", max_len=3, raw=True, aligned_with="y")},
     "'t' is aligned_with 'y', which is not a primary sequence feature"),
    ({"h": dict(kind="sequence", max_len=3, raw=True), "u": dict(kind="id", num_buckets=3, source="h")},
     "features 'h' and 'u' both read column 'h', as a list of int64 and as 1 int64 value per row"),
    ({"a": dict(kind="sequence", max_len=3, raw=True, source="c"),
      "b": dict(kind="sequence", max_len=9, raw=True, dtype="float32", source="c")},
     "features 'a' and 'b' both read column 'c', as a list of int64 and as a list of float32"),
    ({"u": dict(kind="id", num_buckets=3, source="")}, "feature 'u': source must name a stored column"),
    ({"p": dict(kind="dense", max_len=3)}, "'p' (dense): unknown keys ['max_len']"),
])
def test_schema_errors_name_the_feature_for_the_new_kinds(features, message):
    with pytest.raises(SchemaError) as error:
        FeatureSchema.from_config(features)
    assert message in str(error.value)


# Batch scoring reads an export's schema through FeatureSchema.from_json ------------------------------------


def _fake_export(directory, schema: FeatureSchema) -> str:
    """A SavedModel directory as scoring reads it without loading it: saved_model.pb with the contract's two
    signatures, and the metadata file with the schema."""
    graph = meta_graph_pb2.MetaGraphDef()
    graph.meta_info_def.tags.append(contract.SERVING_TAG)

    def tensor_info(spec):
        return meta_graph_pb2.TensorInfo(name=f"{spec.name}:0", dtype=spec.dtype.as_datatype_enum,
                                         tensor_shape=spec.shape.as_proto())

    examples = graph.signature_def[contract.SERVING_EXAMPLES]
    examples.inputs[contract.EXAMPLES_INPUT].CopyFrom(tensor_info(tf.TensorSpec([None], tf.string, "inputs")))
    examples.outputs["score"].CopyFrom(tensor_info(tf.TensorSpec([None], tf.float32, "score")))
    raw = graph.signature_def[contract.SERVING_DEFAULT]
    for name, spec in schema.input_signature().items():
        raw.inputs[name].CopyFrom(tensor_info(spec))
    os.makedirs(os.path.join(directory, contract.ASSETS_EXTRA_DIR))
    with open(os.path.join(directory, contract.SAVED_MODEL_FILE), "wb") as f:
        f.write(saved_model_pb2.SavedModel(meta_graphs=[graph]).SerializeToString())
    with open(os.path.join(directory, contract.METADATA_FILE), "w") as f:
        json.dump({"model_name": "seq", "schema": schema.to_json()}, f)
    return str(directory)


def test_scoring_reads_the_export_schema_through_the_one_decoder(tmp_path):
    from tfrecsys.scoring.saved_models import FeatureNeed, ModelSpec, load_scoring_model

    schema = FeatureSchema.from_config(SEQUENTIAL)
    model = load_scoring_model(ModelSpec(_fake_export(tmp_path / "seq", schema)))
    assert model.needs.exact
    # Stored columns, each once (hist_short and hist_long read one); labels and training-only left out.
    assert sorted(model.needs.features, key=lambda need: need.name) == [
        FeatureNeed("hist_dwell", "float32", None, True), FeatureNeed("hist_item_id", "int64", None, True),
        FeatureNeed("hist_ts", "int64", None, True), FeatureNeed("item_id", "int64", 1, False),
        FeatureNeed("request_time", "int64", 1, False)]
    # The recorded schema goes through FeatureSchema.from_json, with its checks, naming the file at fault.
    path = _fake_export(tmp_path / "bad", schema)
    metadata_path = os.path.join(path, contract.METADATA_FILE)
    with open(metadata_path) as f:
        metadata = json.load(f)
    metadata["schema"]["hist_time"]["num_buckets"] = 10
    with open(metadata_path, "w") as f:
        json.dump(metadata, f)
    with pytest.raises(ValueError, match=re.escape(f"{metadata_path}: the recorded feature schema is invalid: "
                                                   "raw sequence feature 'hist_time' is not embedded")):
        load_scoring_model(ModelSpec(path))


def test_a_side_sequence_that_does_not_line_up_with_its_primary_fails_the_parse_naming_both():
    """Parsing cut and padded each sequence on its own, so a row whose categories had lost an entry paired
    every item with the category of another event, silently."""
    schema = FeatureSchema.from_config({
        "hist_item_id": dict(kind="sequence", num_buckets=10, max_len=3),
        "hist_category": dict(kind="sequence", num_buckets=5, max_len=3, aligned_with="hist_item_id")})

    def example(items, categories) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature={
            "hist_item_id": tf.train.Feature(int64_list=tf.train.Int64List(value=items)),
            "hist_category": tf.train.Feature(int64_list=tf.train.Int64List(value=categories))})).SerializeToString()

    parsed = schema.parse_examples(tf.constant([example([1, 2, 3, 4], [1, 2, 3, 4]), example([], [])]),
                                   with_labels=False)
    np.testing.assert_array_equal(parsed["hist_category"].numpy(), [[2, 3, 4], [0, 0, 0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence feature 'hist_category' must hold as many "
                                                             "values as 'hist_item_id' in every row"):
        schema.parse_examples(tf.constant([example([1, 2], [1, 2]), example([1, 2, 3], [1])]), with_labels=False)
