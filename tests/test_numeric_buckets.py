"""Numbers embedded by their bucket (an id feature with ``boundaries``), dense features read as log1p, and
the equal-frequency cut points chosen from training values (``tfrecsys.features.buckets``)."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.features.buckets import equal_frequency_boundaries
from tfrecsys.features.embedding import FeatureEmbedding, IdLookup
from tfrecsys.features.schema import FeatureSchema, SchemaError, Vocabulary

FEATURES = {
    "age": dict(kind="dense"),
    "age_band": dict(kind="id", dtype="float32", source="age", boundaries=[18, 30.5, 65], embedding_dim=4),
    "children": dict(kind="id", dtype="int64", boundaries=[1, 2]),
    "capital_gains": dict(kind="dense", log1p=True),
}


def test_boundaries_map_each_number_to_its_bucket_from_a_tuple_or_a_file(tmp_path):
    schema = FeatureSchema.from_config(FEATURES)
    tables = FeatureEmbedding(schema).tables
    # b[i-1] <= x < b[i]: a value on a cut point opens the next bucket.
    np.testing.assert_array_equal(tables.rows("age_band", tf.constant([-3.0, 18.0, 30.0, 30.5, 99.0])),
                                  [0, 1, 1, 2, 3])
    np.testing.assert_array_equal(tables.rows("children", tf.constant([0, 1, 2, 7], tf.int64)), [0, 1, 2, 2])
    assert tables.table("age_band").input_dim == 4 and schema["age_band"].vocab.size == 4
    path = tmp_path / "age_band.txt"
    path.write_text("18\n30.5\n65\n")
    from_file = IdLookup(Vocabulary(boundaries=str(path)), "float32")
    np.testing.assert_array_equal(from_file(tf.constant([17.9, 64.0, 65.0])), [0, 2, 3])
    assert Vocabulary(boundaries=str(path)).size == 4
    copy = IdLookup.from_config(IdLookup(Vocabulary(boundaries=(18.0, 65.0)), "float32").get_config())
    np.testing.assert_array_equal(copy(tf.constant([20.0, 70.0])), [1, 2])


def test_a_bucketized_feature_reads_its_dense_columns_value_and_round_trips_through_json():
    schema = FeatureSchema.from_config(FEATURES)
    assert list(schema.parse_spec()) == ["age", "children", "capital_gains"]   # one parse of "age" for both
    assert schema.input_signature(serving=False)["age_band"].dtype == tf.float32
    assert FeatureSchema.from_json(schema.to_json()) == schema
    assert "feature" not in schema.to_json()["age_band"]
    assert "log1p" not in schema.to_json()["age"] and schema.to_json()["capital_gains"]["log1p"] is True


def test_a_client_sends_a_column_read_by_a_number_and_its_bucket_once():
    schema = FeatureSchema.from_config(FEATURES)
    served = schema.input_signature(serving=True)
    assert sorted(served) == ["age", "capital_gains", "children"] and served["age"].dtype == tf.float32
    assert schema.serving_aliases == {"age_band": "age"}
    inputs = schema.with_serving_aliases({"age": tf.constant([17.0, 40.0]), "children": tf.constant([0, 3], tf.int64),
                                          "capital_gains": tf.constant([0.0, 5.0])})
    np.testing.assert_array_equal(inputs["age_band"], [17.0, 40.0])
    tables = FeatureEmbedding(schema).tables
    np.testing.assert_array_equal(tables.rows("age_band", inputs["age_band"]), [0, 2])
    # Without a feature named after the column, the first reader carries it; a training-only reader is not served.
    bands = FeatureSchema.from_config({
        "band": dict(kind="id", dtype="float32", source="age", boundaries=[30]),
        "decade": dict(kind="id", dtype="float32", source="age", boundaries=[10, 20, 30]),
        "old": dict(kind="id", dtype="float32", source="age", boundaries=[65], training_only=True)})
    assert list(bands.input_signature(serving=True)) == ["band"] and bands.serving_aliases == {"decade": "band"}
    assert sorted(bands.input_signature(serving=False)) == ["band", "decade", "old"]


def test_a_boundaries_or_vocabulary_file_is_read_once(tmp_path, monkeypatch):
    boundaries, vocabulary = tmp_path / "age_band.txt", tmp_path / "city.txt"
    boundaries.write_text("18\n30.5\n65\n")
    vocabulary.write_text("paris\ntokyo\n")
    opened = []
    real_gfile = tf.io.gfile.GFile

    def counting_gfile(path, *args, **kwargs):
        opened.append(str(path))
        return real_gfile(path, *args, **kwargs)

    monkeypatch.setattr(tf.io.gfile, "GFile", counting_gfile)
    schema = FeatureSchema.from_config({
        "age": dict(kind="dense"),
        "age_band": dict(kind="id", dtype="float32", source="age", boundaries=str(boundaries)),
        "city": dict(kind="id", dtype="string", vocabulary=str(vocabulary))})
    vocab = schema["age_band"].vocab
    assert [vocab.size for _ in range(3)] == [4, 4, 4] and vocab.bucket_boundaries() == (18.0, 30.5, 65.0)
    FeatureEmbedding(schema, include=["age_band"])({"age_band": tf.constant([20.0])})
    assert [schema["city"].vocab.size for _ in range(3)] == [3, 3, 3]
    assert opened.count(str(boundaries)) == 1, opened
    assert opened.count(str(vocabulary)) == 1, opened


def test_a_bad_boundaries_file_is_named_with_its_feature_when_only_the_size_reads_it(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("1\nmany\n")
    schema = FeatureSchema.from_json({"income_band": dict(kind="id", dtype="float32", boundaries=str(path))})
    with pytest.raises(SchemaError, match=r"feature 'income_band' \(boundaries file .*b.txt\): could not convert"):
        schema["income_band"].vocab.size


def test_log1p_dense_feature_reaches_the_model_as_signed_log1p():
    schema = FeatureSchema.from_config(FEATURES)
    embedded = FeatureEmbedding(schema, include=["age", "capital_gains"])(
        {"age": tf.constant([40.0, 7.0]), "capital_gains": tf.constant([99999.0, -3.0])})
    np.testing.assert_allclose(embedded["capital_gains"][:, 0], [np.log1p(99999.0), -np.log1p(3.0)], rtol=1e-6)
    np.testing.assert_array_equal(embedded["age"][:, 0], [40.0, 7.0])


@pytest.mark.parametrize("spec, message", [
    (dict(kind="id", dtype="float32", boundaries=[3, 2]), "'f': boundaries must be strictly increasing; 2.0 follows"),
    (dict(kind="id", dtype="float32", boundaries=[1, 1]), "boundaries must be strictly increasing"),
    (dict(kind="id", dtype="float32", boundaries=[]), "'f': boundaries must hold at least one cut point"),
    (dict(kind="id", dtype="float32", boundaries=["x"]), "'f': boundaries must be numbers"),
    (dict(kind="id", dtype="string", boundaries=[1]), "'f': boundaries bucket numbers (dtype float32 or int64)"),
    (dict(kind="id", dtype="float32", hash_buckets=3), "'f': a float32 id feature is embedded by its bucket"),
    (dict(kind="id", dtype="float32", boundaries=[1], num_oov=2), "'f': num_oov does not apply to boundaries"),
    (dict(kind="id", dtype="float32", boundaries=[1], hash_buckets=3), "set exactly one of"),
    (dict(kind="id", dtype="float32", boundaries="/nonexistent/f.txt"), "'f': boundaries file /nonexistent"),
    (dict(kind="dense", dtype="int64", log1p=True), "dense feature 'f': log1p applies to float32 values"),
    (dict(kind="dense", boundaries=[1]), "'f': ['boundaries'] only apply to id and sequence features"),
])
def test_bad_bucket_and_log1p_settings_name_the_feature(spec, message):
    with pytest.raises(SchemaError) as error:
        FeatureSchema.from_config({"f": spec})
    assert message in str(error.value)


def test_a_boundaries_file_that_is_not_increasing_numbers_is_named(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("1\n0.5\n")
    with pytest.raises(SchemaError, match=r"'f' \(boundaries file .*b.txt\): boundaries must be strictly increasing"):
        FeatureSchema.from_config({"f": dict(kind="id", dtype="float32", boundaries=str(path))})


def test_equal_frequency_boundaries_keep_values_whole_and_give_a_heavy_value_its_own_bucket():
    # 0 is 90 % of the rows (capital gains): its own bucket, the 100 other rows share the buckets left.
    values = np.concatenate([np.zeros(900), np.arange(1, 101)])
    cuts = equal_frequency_boundaries(values, 5)
    assert cuts[0] == 0.5 and len(cuts) == 4
    counts = np.bincount(np.searchsorted(cuts, values, side="right"))
    assert counts[0] == 900 and list(counts[1:]) == [25, 25, 25, 25]
    # Few distinct values (years of age, weeks worked): one bucket per value, cut midway.
    assert equal_frequency_boundaries([3, 1, 2, 2, 1], 10) == (1.5, 2.5)
    assert equal_frequency_boundaries([5.0, 5.0], 4) == ()
    with pytest.raises(ValueError, match="max_buckets must be at least 2"):
        equal_frequency_boundaries([1, 2], 1)


def test_an_export_takes_a_bucketized_column_once_and_serves_what_the_model_scores(tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    from tests.serving_dnn import DNN_CONFIG, SMALL_DNN, synthetic_examples
    from tfrecsys.config import load_config
    from tfrecsys.contract import WARMUP_FILE
    from tfrecsys.export.saved_model import export_saved_model
    from tfrecsys.models import build_model
    from tfrecsys.serving import servables

    config = load_config(DNN_CONFIG, SMALL_DNN)
    config.features.item_price_bucket = dict(kind="id", dtype="float32", source="item_price",
                                             boundaries=(0.25, 0.5, 0.75), embedding_dim=4)
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, schema)
    examples = synthetic_examples(schema, 8)
    features = schema.parse_examples(tf.constant(examples), with_labels=False, serving=True)
    expected = model(features, training=False)["score"].numpy()
    path = export_saved_model(model, schema, str(tmp_path), "dnn_buckets", warmup_examples=examples[:3])

    signature = tf.saved_model.load(path).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert "item_price" in inputs and "item_price_bucket" not in inputs
    served = signature(**{name: features[name] for name in inputs})["score"].numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-7)
    # The bucket's own embedding reaches the score: another row of its table changes it.
    table = next(v for v in model.trainable_variables if "item_price_bucket" in v.name)
    table.assign(table + 1.0)
    assert not np.allclose(model(features, training=False)["score"].numpy(), expected)

    warmup = [prediction_log_pb2.PredictionLog.FromString(record)
              for record in tf.data.TFRecordDataset(f"{path}/assets.extra/{WARMUP_FILE}").as_numpy_iterator()]
    predicts = [log.predict_log.request for log in warmup if log.WhichOneof("log_type") == "predict_log"]
    assert len(predicts) == 3 and all(sorted(request.inputs) == sorted(inputs) for request in predicts)
    servable = servables.load_servable("dnn_buckets", 1, path, enable_model_warmup=False)
    assert servables.replay_warmup_requests(servable) == len(warmup)
