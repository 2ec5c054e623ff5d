"""tf.data input from TFRecord and Parquet: the same rows give the same batches in both formats (eval and
seeded training), training shuffles rows across files and covers every row once per epoch, workers read
disjoint files, and a Parquet file that does not match the schema fails at start naming feature and types."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tfrecsys.data import parquet, tfrecord
from tfrecsys.data.input import DataError, check_schema, count_records, find_bad_record, make_dataset
from tfrecsys.features.schema import FeatureSchema

SCHEMA = FeatureSchema.from_config({
    "example_id": dict(kind="id", hash_buckets=100),
    "user_id": dict(kind="id", num_buckets=50),
    "city": dict(kind="id", dtype="string", vocabulary=("paris", "oslo")),
    "price": dict(kind="dense"),
    "position_embedding": dict(kind="dense", dim=3),
    "hist_item_id": dict(kind="sequence", max_len=4, num_buckets=30),
    "hist_tag": dict(kind="sequence", dtype="string", max_len=4, hash_buckets=16, aligned_with="hist_item_id"),
    "tags": dict(kind="sequence", dtype="string", max_len=2, vocabulary=("a", "b", "")),
    "click": dict(kind="label"),
})
ROWS = 1_000


def _columns(rows: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 7, rows)  # longer than max_len too: the most recent 4 are kept
    tags = [tuple(rng.choice(["a", "b", ""], size=rng.integers(0, 3))) for _ in range(rows)]
    return {
        "example_id": np.arange(rows, dtype=np.int64),
        "user_id": rng.integers(0, 50, rows),
        "city": rng.choice(["paris", "oslo", "rome"], rows).astype(object),
        "price": rng.random(rows).astype(np.float32),
        "position_embedding": rng.random((rows, 3)).astype(np.float32),
        "hist_item_id": [rng.integers(0, 30, n) for n in lengths],
        "hist_tag": [rng.choice(["x", "y", "z"], n).astype(object) for n in lengths],
        "tags": [np.asarray(t, object) for t in tags],
        "click": (rng.random(rows) < 0.3).astype(np.float32),
    }


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("formats"))
    columns = _columns(ROWS)
    return (tfrecord.write_sharded(columns, directory, "data", 3),
            parquet.write_sharded(columns, directory, "data", 3), directory)


def _batches(files, training, **kwargs):
    dataset = make_dataset(files, SCHEMA, 64, targets={"click": "click"}, training=training, **kwargs)
    return list(dataset.take(30)) if training else list(dataset)


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b) > 0
    for (inputs_a, labels_a), (inputs_b, labels_b) in zip(batches_a, batches_b):
        assert sorted(inputs_a) == sorted(inputs_b)
        for name in inputs_a:
            assert inputs_a[name].dtype == inputs_b[name].dtype, name
            np.testing.assert_array_equal(inputs_a[name].numpy(), inputs_b[name].numpy(), err_msg=name)
        np.testing.assert_array_equal(labels_a["click"].numpy(), labels_b["click"].numpy())


def test_parquet_and_tfrecord_yield_identical_eval_batches(both_formats):
    tfrecord_files, parquet_files, _ = both_formats
    from_tfrecord, from_parquet = _batches(tfrecord_files, False), _batches(parquet_files, False)
    _assert_same(from_tfrecord, from_parquet)
    inputs = from_tfrecord[0][0]
    assert inputs["hist_item_id"].shape == (64, 4) and inputs["tags"].dtype == tf.string
    assert inputs["position_embedding"].shape == (64, 3)
    assert sum(len(labels["click"]) for _, labels in from_parquet) == ROWS
    assert count_records(parquet_files) == count_records(tfrecord_files) == ROWS


def test_parquet_and_tfrecord_yield_identical_seeded_training_batches(both_formats):
    tfrecord_files, parquet_files, _ = both_formats
    for seed in (1, 2):
        _assert_same(_batches(tfrecord_files, True, seed=seed, shuffle_buffer=300),
                     _batches(parquet_files, True, seed=seed, shuffle_buffer=300))
    first = _batches(tfrecord_files, True, seed=1, shuffle_buffer=300)[0][0]["example_id"].numpy()
    other = _batches(tfrecord_files, True, seed=2, shuffle_buffer=300)[0][0]["example_id"].numpy()
    assert not np.array_equal(first, other)


def test_training_shuffles_rows_across_files_and_covers_every_row_each_epoch(both_formats):
    tfrecord_files, _, _ = both_formats
    dataset = make_dataset(tfrecord_files, SCHEMA, 50, targets={"click": "click"}, training=True, seed=3,
                           shuffle_buffer=600)
    ids = np.concatenate([inputs["example_id"].numpy() for inputs, _ in dataset.take(3 * ROWS // 50)])
    counts = np.bincount(ids, minlength=ROWS)
    # Three epochs' worth of rows: every row about three times (windows may straddle an epoch boundary).
    assert counts.min() >= 2 and counts.max() <= 4 and np.mean(counts == 3) > 0.8
    # A batch mixes the files (rows 0-332, 333-665, 666-999) and is no run of neighbouring rows.
    first = ids[:50]
    assert len(np.unique(np.searchsorted([333, 666], first, side="right"))) >= 2
    assert np.mean(np.abs(np.diff(first)) == 1) < 0.2


@pytest.mark.parametrize("suffix", ["tfrecord", "parquet"])
def test_workers_read_disjoint_files(both_formats, suffix):
    tfrecord_files, parquet_files, _ = both_formats
    files = tfrecord_files if suffix == "tfrecord" else parquet_files
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        dataset = make_dataset(files, SCHEMA, 64, targets={"click": "click"}, training=False, input_context=context)
        seen.append(np.concatenate([inputs["example_id"].numpy() for inputs, _ in dataset]))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen).tolist()) == list(range(ROWS))


def test_parquet_schema_mismatch_fails_at_start_naming_feature_and_types(tmp_path):
    good = parquet.write_parquet(_columns(5), str(tmp_path / "good.parquet"))
    check_schema(good, SCHEMA)

    table = pq.read_table(good)
    price = table.schema.get_field_index("price")
    pq.write_table(table.set_column(price, "price", pa.array(np.arange(5, dtype=np.float64))), tmp_path / "f64.parquet")
    with pytest.raises(DataError, match=r"f64\.parquet: feature 'price' is double in the data but the schema says "
                                        r"float32 \(float\)"):
        check_schema(str(tmp_path / "f64.parquet"), SCHEMA)

    pq.write_table(table.drop_columns(["city"]), tmp_path / "no_city.parquet")
    with pytest.raises(DataError, match=r"no_city\.parquet: no column 'city' \(schema: string\)"):
        check_schema(str(tmp_path / "no_city.parquet"), SCHEMA)

    history = table.schema.get_field_index("hist_item_id")
    listed = table.set_column(history, "hist_item_id", pa.array([[1, 2]] * 5, pa.list_(pa.int64())))
    pq.write_table(listed, tmp_path / "lists.parquet")
    with pytest.raises(DataError, match=r"column 'hist_item_id' is list<element: int64> in the data .*tensorflow-io "
                                        "reads flat columns only"):
        check_schema(str(tmp_path / "lists.parquet"), SCHEMA)

    user = table.schema.get_field_index("user_id")
    pq.write_table(table.set_column(user, "user_id", pa.array(["u"] * 5)), tmp_path / "string_ids.parquet")
    with pytest.raises(DataError, match="feature 'user_id' is string in the data but the schema says int64"):
        check_schema(str(tmp_path / "string_ids.parquet"), SCHEMA)


def test_damaged_and_mixed_inputs_are_named(both_formats, tmp_path):
    tfrecord_files, parquet_files, _ = both_formats
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(open(parquet_files[0], "rb").read()[:200])
    assert find_bad_record([parquet_files[1], str(damaged)], SCHEMA).startswith(f"{damaged}: not a readable Parquet")
    assert find_bad_record(parquet_files, SCHEMA) is None
    with pytest.raises(DataError, match="input mixes Parquet and TFRecord files"):
        make_dataset([tfrecord_files[0], parquet_files[0]], SCHEMA, 8, targets={"click": "click"}, training=False)


def test_string_sequences_keep_empty_strings_and_empty_lists(tmp_path):
    columns = {"tags": [np.asarray([], object), np.asarray([""], object), np.asarray(["a", "", "b"], object)],
               "click": np.zeros(3, np.float32)}
    schema = FeatureSchema.from_config({"tags": dict(kind="sequence", dtype="string", max_len=3, hash_buckets=4),
                                        "click": dict(kind="label")})
    path = parquet.write_parquet(columns, str(tmp_path / "tags.parquet"))
    tfrecord_path = tfrecord.write_sharded(columns, str(tmp_path), "tags", 1)
    (inputs, _), = make_dataset([path], schema, 3, targets={"click": "click"}, training=False)
    (expected, _), = make_dataset(tfrecord_path, schema, 3, targets={"click": "click"}, training=False)
    assert inputs["tags_length"].numpy().tolist() == [0, 1, 3] == expected["tags_length"].numpy().tolist()
    np.testing.assert_array_equal(inputs["tags"].numpy(), expected["tags"].numpy())
    with pytest.raises(ValueError, match="column 'bad': a value contains the separator"):
        parquet.to_table({"bad": [np.asarray(["a\x1fb"], object)]})
    assert os.path.getsize(path) > 0
