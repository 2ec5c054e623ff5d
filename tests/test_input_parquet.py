"""tf.data input from TFRecord and Parquet: the same rows give the same batches in both formats (eval and
seeded training), training shuffles rows across files and covers every row once per epoch, workers read
disjoint files, and a Parquet file that does not match the schema fails at start naming feature and types.

Parquet files are standard Arrow columns (``list<int64>`` sequences, ...): a file written by plain pyarrow
trains, and a file written by tfrecsys scores in batch scoring like its TFRecord copy."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tests.contract_models import example_rows, export_contract_model
from tfrecsys.config import load_config
from tfrecsys.data import parquet, tfrecord
from tfrecsys.data.input import (FIRST_WINDOW_BATCHES, DataError, batches_from_chunks, check_schema, count_records,
                                 find_bad_record, make_dataset)
from tfrecsys.data.simulators.click_log import ClickLogConfig, simulate_click_log
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.scoring import pipeline
from tfrecsys.train.loop import train_and_evaluate

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


def test_first_training_windows_are_small_and_double_up_to_the_shuffle_buffer(tmp_path):
    # Time to first step: the first batch waits for FIRST_WINDOW_BATCHES batches' rows to be decoded, not for
    # a whole shuffle_buffer (a second each for MovieLens); windows then double: 80, 160, 320, 640 rows.
    path = tfrecord.write_sharded(_columns(ROWS), str(tmp_path), "data", 1)
    dataset = make_dataset(path, SCHEMA, 10, targets={"click": "click"}, training=True, seed=3, shuffle_buffer=640)
    ids = [inputs["example_id"].numpy() for inputs, _ in dataset.take(8 + 16 + 32)]
    assert FIRST_WINDOW_BATCHES == 8
    for window, (start, stop) in enumerate([(0, 8), (8, 24), (24, 56)]):
        rows = np.concatenate(ids[start:stop])
        assert sorted(rows) == list(range(start * 10, stop * 10)), f"window {window}"
        assert not np.array_equal(rows, np.arange(start * 10, stop * 10)), f"window {window} is not shuffled"


def test_chunks_held_in_memory_batch_exactly_as_read_from_the_file(both_formats):
    # The input benchmark's ceiling ("records in memory") relies on this: batches_from_chunks is all that
    # make_dataset does after reading, so chunks of the same records give the same batches, epoch after epoch.
    tfrecord_files, _, _ = both_formats
    path, buffer = tfrecord_files[0], 150
    read = make_dataset([path], SCHEMA, 40, targets={"click": "click"}, training=True, seed=5, shuffle_buffer=buffer)
    chunks = tf.ragged.stack(list(tf.data.TFRecordDataset(path).batch(buffer)))
    in_memory = batches_from_chunks(tf.data.Dataset.from_tensor_slices(chunks).repeat(),
                                    SCHEMA.parse_examples, SCHEMA, 40,
                                    targets={"click": "click"}, training=True, seed=5)
    # The first epoch: later ones start each file at a seeded random chunk (the test below), chunks in memory
    # repeat in file order.
    batches = count_records([path]) // 40
    _assert_same(list(read.take(batches)), list(in_memory.take(batches)))


def test_each_epoch_visits_a_files_windows_in_a_fresh_order_and_every_row_once(tmp_path):
    # One file of five 80-row windows: epoch 1 reads them in file order; without the per-epoch rotation every
    # later epoch replayed the same windows in the same order, which cost 0.04 validation AUC in the second
    # pass on Taobao (bench/RESULTS.md, issue 12).
    path = tfrecord.write_sharded(_columns(400), str(tmp_path), "data", 1)
    dataset = make_dataset(path, SCHEMA, 10, targets={"click": "click"}, training=True, seed=3, shuffle_buffer=80)
    ids = np.concatenate([inputs["example_id"].numpy() for inputs, _ in dataset.take(3 * 40)]).reshape(3, 5, 80)
    windows = [[frozenset(window) for window in epoch] for epoch in ids]
    assert windows[0] == [frozenset(range(start, start + 80)) for start in range(0, 400, 80)]
    for epoch in ids:
        assert sorted(epoch.ravel()) == list(range(400))  # an exact permutation of the rows
    assert windows[1] != windows[0] and windows[2] != windows[0] and windows[2] != windows[1]


def test_input_runs_without_the_tf_data_autotuner(both_formats):
    # Its per-element bookkeeping is paid once per TFRecord record: about a tenth of training speed on TFRecord
    # input (bench/RESULTS.md).
    tfrecord_files, parquet_files, _ = both_formats
    for files in (tfrecord_files, parquet_files):
        for training in (True, False):
            dataset = make_dataset(files, SCHEMA, 64, targets={"click": "click"}, training=training)
            assert dataset.options().autotune.enabled is False


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


def test_tfrecsys_writes_standard_arrow_columns(both_formats):
    _, parquet_files, _ = both_formats
    schema = pq.read_schema(parquet_files[0])
    assert {name: str(schema.field(name).type) for name in schema.names} == {
        "example_id": "int64", "user_id": "int64", "city": "string", "price": "float",
        "position_embedding": "fixed_size_list<element: float>[3]", "hist_item_id": "list<element: int64>",
        "hist_tag": "list<element: string>", "tags": "list<element: string>", "click": "float"}
    assert not any(key.startswith(b"tfrecsys") for key in schema.metadata or {})  # no private encodings
    table = pq.read_table(parquet_files[0])
    assert table["example_id"].to_pylist()[:3] == [0, 1, 2]
    assert len(table["position_embedding"][0].as_py()) == 3


def _plain_pyarrow_table(columns: dict) -> pa.Table:
    """The columns as another tool would write them: narrower integers, a dictionary-encoded string column,
    variable-size lists for the dense vector, large lists and large strings."""
    return pa.table({
        "example_id": pa.array(columns["example_id"], pa.int64()),
        "user_id": pa.array(columns["user_id"], pa.int32()),
        "city": pa.array(columns["city"].tolist(), pa.string()).dictionary_encode(),
        "price": pa.array(columns["price"], pa.float32()),
        "position_embedding": pa.array(columns["position_embedding"].tolist(), pa.list_(pa.float32())),
        "hist_item_id": pa.array([h.tolist() for h in columns["hist_item_id"]], pa.list_(pa.int64())),
        "hist_tag": pa.array([t.tolist() for t in columns["hist_tag"]], pa.large_list(pa.large_string())),
        "tags": pa.array([[v.encode() for v in t] for t in columns["tags"]], pa.list_(pa.binary())),
        "click": pa.array(columns["click"], pa.float32()),
        "not_a_feature": pa.array([{"x": 1}] * len(columns["click"])),  # other columns are not read
    })


def test_a_parquet_file_written_by_plain_pyarrow_reads_like_tfrecord(both_formats, tmp_path):
    tfrecord_files, _, _ = both_formats
    columns = _columns(ROWS)
    table = _plain_pyarrow_table(columns)
    bounds = np.linspace(0, ROWS, 4).astype(int)
    files = []
    for index in range(3):  # row groups that do not line up with the pipeline's chunks
        files.append(str(tmp_path / f"plain-{index}.parquet"))
        pq.write_table(table.slice(bounds[index], bounds[index + 1] - bounds[index]), files[-1], row_group_size=97)
    check_schema(files[0], SCHEMA)
    _assert_same(_batches(tfrecord_files, False), _batches(files, False))
    _assert_same(_batches(tfrecord_files, True, seed=4, shuffle_buffer=300),
                 _batches(files, True, seed=4, shuffle_buffer=300))


def test_tfrecsys_train_trains_on_plain_pyarrow_parquet_like_on_tfrecord(tmp_path):
    """A user's own Parquet (written by pyarrow, list<int64> histories) through the training binary's library
    call: the same rows as TFRecord give the same trained model, metric for metric."""
    config = load_config(os.path.join(os.path.dirname(__file__), os.pardir, "configs", "dnn_simulator.py"))
    config.data.simulator.num_events = 6_000
    config.train.update(batch_size=256, steps=20, steps_per_loop=20, steps_per_execution=10, shuffle_buffer=2_000,
                        eval_batch_size=1024)
    columns, _ = simulate_click_log(ClickLogConfig.from_config(config.data.simulator))
    split = 5_000
    for fmt in ("tfrecord", "parquet"):
        (tmp_path / fmt).mkdir()
    for prefix, rows in (("train", slice(0, split)), ("eval", slice(split, None))):
        part = {name: values[rows] for name, values in columns.items()}
        tfrecord.write_sharded(part, str(tmp_path / "tfrecord"), prefix, 2)
        table = pa.table({name: pa.array([v.tolist() for v in values], pa.list_(pa.int64()))
                          if isinstance(values, list) else pa.array(values) for name, values in part.items()})
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), tmp_path / "parquet" / f"{prefix}-0.parquet")
        pq.write_table(table.slice(half), tmp_path / "parquet" / f"{prefix}-1.parquet")
    assert pq.read_schema(tmp_path / "parquet" / "train-0.parquet").field("hist_item_id").type == pa.list_(pa.int64())

    metrics = {}
    for fmt in ("tfrecord", "parquet"):
        config.data.update(dir=str(tmp_path / fmt), train_files=f"train-*.{fmt}", eval_files=f"eval-*.{fmt}")
        metrics[fmt] = train_and_evaluate(config, str(tmp_path / f"model_{fmt}"))
    assert metrics["parquet"]["score"]["auc"] > 0.55
    flat = {fmt: {"loss": m["loss"], **m["score"]} for fmt, m in metrics.items()}
    assert flat["parquet"] == pytest.approx(flat["tfrecord"], rel=1e-5)


def test_a_tfrecsys_parquet_file_scores_like_its_tfrecord_copy(tmp_path):
    """One format across the project: batch scoring reads the Parquet that tfrecsys writes."""
    rows = example_rows(48, seed=11)
    columns = {name: np.asarray([row[name] for row in rows], np.float32 if name == "price" else np.int64)
               for name in ("example_id", "user_id", "item_id", "price")}
    columns["hist_item_id"] = [np.asarray(row["hist_item_id"], np.int64) for row in rows]
    parquet.write_sharded(columns, str(tmp_path), "rows", 2)
    tfrecord.write_sharded(columns, str(tmp_path), "rows", 2)
    model = export_contract_model(str(tmp_path / "model"), version=1, offset=0.2)

    scores = {}
    for fmt in ("parquet", "tfrecord"):
        summary = pipeline.score(str(tmp_path / f"rows-*.{fmt}"), model, str(tmp_path / "scores" / fmt),
                                 input_format=fmt)
        assert summary.rows_scored == len(rows) and summary.rows_rejected == 0
        lines = [json.loads(line) for path in summary.output_files for line in open(path)]
        scores[fmt] = {line["example_id"]: line["score"] for line in lines}
    assert scores["parquet"] == scores["tfrecord"] and len(scores["parquet"]) == len(rows)


def test_parquet_schema_mismatch_fails_at_start_naming_feature_and_types(tmp_path):
    good = parquet.write_parquet(_columns(5), str(tmp_path / "good.parquet"))
    check_schema(good, SCHEMA)
    table = pq.read_table(good)

    def write(name, **replaced):
        changed = table
        for column, values in replaced.items():
            changed = changed.set_column(changed.schema.get_field_index(column), column, values)
        pq.write_table(changed, tmp_path / name)
        return str(tmp_path / name)

    cases = [
        (write("f64.parquet", price=pa.array(np.arange(5, dtype=np.float64))),
         r"f64\.parquet: feature 'price' is double in the data but the schema says float32 \(float\)"),
        (write("scalar_history.parquet", hist_item_id=pa.array(np.arange(5))),
         r"feature 'hist_item_id' is int64 in the data but the schema says sequence of int64 \(list<element: int64>\)"),
        (write("float_history.parquet", hist_item_id=pa.array([[1.0]] * 5, pa.list_(pa.float32()))),
         r"feature 'hist_item_id' is list<element: float> in the data but the schema says sequence of int64"),
        (write("string_ids.parquet", user_id=pa.array(["u"] * 5)),
         "feature 'user_id' is string in the data but the schema says int64"),
        (write("uint64_ids.parquet", user_id=pa.array(np.arange(5, dtype=np.uint64))),
         "feature 'user_id' is uint64 in the data but the schema says int64"),
        (write("wide_vector.parquet", position_embedding=pa.array([[0.0] * 4] * 5, pa.list_(pa.float32(), 4))),
         r"feature 'position_embedding' is fixed_size_list<element: float>\[4\] in the data but the schema says "
         r"float32 \(fixed_size_list<element: float>\[3\]\)"),
    ]
    for path, message in cases:
        with pytest.raises(DataError, match=message):
            check_schema(path, SCHEMA)
    pq.write_table(table.drop_columns(["city"]), tmp_path / "no_city.parquet")
    with pytest.raises(DataError, match=r"no_city\.parquet: no column 'city' \(schema: string\)"):
        check_schema(str(tmp_path / "no_city.parquet"), SCHEMA)


def test_bad_values_and_damaged_or_mixed_inputs_are_named(both_formats, tmp_path):
    tfrecord_files, parquet_files, _ = both_formats
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(open(parquet_files[0], "rb").read()[:200])
    assert find_bad_record([parquet_files[1], str(damaged)], SCHEMA).startswith(f"{damaged}: not a readable Parquet")
    assert find_bad_record(parquet_files, SCHEMA) is None
    with pytest.raises(DataError, match="input mixes Parquet and TFRecord files"):
        make_dataset([tfrecord_files[0], parquet_files[0]], SCHEMA, 8, targets={"click": "click"}, training=False)

    table = parquet.to_table(_columns(3_000))  # rows past the first read chunk (1024 rows)
    # A null element in a history past the first chunk, every list keeping its length (hist_tag is aligned
    # with hist_item_id: lists of other lengths would fail the batch on that first).
    histories = table.column("hist_item_id").to_pylist()
    null_row = next(row for row in range(1200, table.num_rows) if histories[row])
    histories[null_row] = [None] + histories[null_row][1:]
    bad_files = {
        "null_price": ("price", pa.array([1.0] * 1500 + [None] + [1.0] * (table.num_rows - 1501), pa.float32()),
                       "column 'price' is null in row 1500"),
        "null_element": ("hist_item_id", pa.array(histories, pa.list_(pa.int64())),
                         f"column 'hist_item_id' holds a null element in row {null_row}"),
        "short_vector": ("position_embedding", pa.array([[0.5] * 3] * 7 + [[0.5]] * (table.num_rows - 7),
                                                       pa.list_(pa.float32())),
                         "column 'position_embedding' holds 1 values in row 7; the schema says dense of dim 3"),
    }
    for name, (column, values, message) in bad_files.items():
        path = str(tmp_path / f"{name}.parquet")
        pq.write_table(table.set_column(table.schema.get_field_index(column), column, values), path)
        assert find_bad_record([parquet_files[0], path], SCHEMA) == f"{path}: {message}"
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"{path}: {message}"):
            list(make_dataset([path], SCHEMA, 64, targets={"click": "click"}, training=False))


def test_string_sequences_keep_empty_strings_empty_lists_and_nul_bytes(tmp_path):
    columns = {"tags": [np.asarray([], object), np.asarray([""], object), np.asarray(["a", "", "b\x00"], object)],
               "click": np.zeros(3, np.float32)}
    schema = FeatureSchema.from_config({"tags": dict(kind="sequence", dtype="string", max_len=3, hash_buckets=4),
                                        "click": dict(kind="label")})
    path = parquet.write_parquet(columns, str(tmp_path / "tags.parquet"))
    tfrecord_path = tfrecord.write_sharded(columns, str(tmp_path), "tags", 1)
    (inputs, _), = make_dataset([path], schema, 3, targets={"click": "click"}, training=False)
    (expected, _), = make_dataset(tfrecord_path, schema, 3, targets={"click": "click"}, training=False)
    assert inputs["tags_length"].numpy().tolist() == [0, 1, 3] == expected["tags_length"].numpy().tolist()
    np.testing.assert_array_equal(inputs["tags"].numpy(), expected["tags"].numpy())
    assert inputs["tags"].numpy()[2].tolist() == [b"a", b"", b"b\x00"]


SEQUENTIAL_SCHEMA = FeatureSchema.from_config({
    "example_id": dict(kind="id", hash_buckets=100),
    "request_time": dict(kind="dense", dtype="int64"),
    "hist_short": dict(kind="sequence", max_len=2, num_buckets=30, source="hist_item_id"),
    "hist_long": dict(kind="sequence", max_len=5, num_buckets=30, source="hist_item_id"),
    "hist_time": dict(kind="sequence", max_len=5, raw=True, aligned_with="hist_long", source="hist_ts"),
    "hist_dwell": dict(kind="sequence", max_len=3, raw=True, dtype="float32"),
    "next_item": dict(kind="label", dtype="int64", max_len=5),
    "click": dict(kind="label"),
})


def _sequential_columns(rows: int) -> dict:
    rng = np.random.default_rng(5)
    lengths = rng.integers(0, 8, rows)
    return {
        "example_id": np.arange(rows, dtype=np.int64),
        # Odd seconds around 1.7e9: a float32 on the way would round them to multiples of 128.
        "request_time": 1_712_345_679 + 2 * np.arange(rows, dtype=np.int64),
        "hist_item_id": [rng.integers(0, 30, n) for n in lengths],
        "hist_ts": [1_700_000_001 + np.sort(rng.integers(0, 10**6, n)) * 2 for n in lengths],
        "hist_dwell": [rng.random(n).astype(np.float32) for n in lengths],
        "next_item": [rng.integers(0, 30, n) for n in lengths],
        "click": (rng.random(rows) < 0.3).astype(np.float32),
    }


def _rows(batches) -> list:
    """Every batch's inputs and targets as plain Python lists (ragged rows as lists)."""
    return [{name: (value.to_list() if isinstance(value, tf.RaggedTensor) else value.numpy().tolist())
             for part in batch for name, value in part.items()} for batch in batches]


def test_raw_sequences_int64_dense_and_cuts_of_one_column_read_alike_from_parquet_and_tfrecord(tmp_path):
    columns = _sequential_columns(300)
    files = {"tfrecord": tfrecord.write_sharded(columns, str(tmp_path), "seq", 2),
             "parquet": parquet.write_sharded(columns, str(tmp_path), "seq", 2)}
    assert pq.read_schema(files["parquet"][0]).field("hist_dwell").type == pa.list_(pa.field("element", pa.float32()))
    targets = {"click": "click", "next": "next_item"}
    read = {(fmt, ragged): list(make_dataset(paths, SEQUENTIAL_SCHEMA, 64, targets=targets, training=False,
                                             ragged=ragged))
            for fmt, paths in files.items() for ragged in (False, True)}
    for ragged in (False, True):
        assert _rows(read["tfrecord", ragged]) == _rows(read["parquet", ragged])
    padded = read["parquet", False]
    inputs = {name: np.concatenate([batch[0][name].numpy() for batch in padded]) for name in padded[0][0]}
    assert inputs["request_time"].dtype == np.int64
    np.testing.assert_array_equal(inputs["request_time"], columns["request_time"])
    row = int(np.argmax([len(h) for h in columns["hist_item_id"]]))  # a history longer than both cuts
    assert len(columns["hist_item_id"][row]) > 5
    np.testing.assert_array_equal(inputs["hist_short"][row], columns["hist_item_id"][row][-2:])
    np.testing.assert_array_equal(inputs["hist_long"][row], columns["hist_item_id"][row][-5:])
    np.testing.assert_array_equal(inputs["hist_time"][row], columns["hist_ts"][row][-5:])
    np.testing.assert_array_equal(inputs["hist_dwell"][row], columns["hist_dwell"][row][-3:])
    # Ragged batches hold the padded rows without their padding, and no lengths.
    for (ragged_inputs, ragged_targets), (padded_inputs, padded_targets) in zip(read["parquet", True], padded):
        assert not any(name.endswith("_length") for name in ragged_inputs)
        assert isinstance(ragged_targets["next"], tf.RaggedTensor)
        for name, value in ragged_inputs.items():
            if not isinstance(value, tf.RaggedTensor):
                np.testing.assert_array_equal(value, padded_inputs[name])
                continue
            length_name = SEQUENTIAL_SCHEMA[name].length_name
            for index, length in enumerate(padded_inputs[length_name].numpy()):
                assert value[index].numpy().tolist() == padded_inputs[name][index, :length].numpy().tolist()


def test_a_missing_source_column_is_named_with_the_feature_that_reads_it(tmp_path):
    columns = _sequential_columns(3)
    del columns["hist_item_id"]
    for path in (parquet.write_parquet(columns, str(tmp_path / "seq.parquet")),
                 tfrecord.write_sharded(columns, str(tmp_path), "seq", 1)[0]):
        with pytest.raises(DataError, match=r"no (column|feature) 'hist_item_id' \(schema: int64, read by feature "
                                            r"'hist_short'\)"):
            check_schema(path, SEQUENTIAL_SCHEMA)
