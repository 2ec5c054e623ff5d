"""Parquet in, Parquet and TFRecord out: the same rows and scores as TFRecord in and JSON lines out.

Parquet rows become tf.train.Example typed by what the model parses, so a Parquet row scores exactly like the
TFRecord row with the same values; a column that cannot feed its feature fails before the job starts, named.
"""

import dataclasses
import glob
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tests.contract_models import ContractModel, example_rows, export_contract_model, to_example
from tfrecsys.scoring import outputs, pipeline, saved_models

ROWS = 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("formats")


@pytest.fixture(scope="module")
def model_dir(workdir):
    return export_contract_model(str(workdir / "model"), version=3, offset=-0.4)


@pytest.fixture(scope="module")
def rows():
    return example_rows(ROWS, seed=5)


@pytest.fixture(scope="module")
def tfrecord(workdir, rows):
    path = str(workdir / "rows.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for row in rows:
            writer.write(to_example(row))
    return path


def in_process_scores(model_dir: str, rows: list[dict]) -> np.ndarray:
    signature = tf.saved_model.load(model_dir).signatures["serving_examples"]
    return signature(inputs=tf.constant([to_example(row) for row in rows]))["score"].numpy()


def parquet_table(rows: list[dict], **columns) -> pa.Table:
    """The rows as Parquet columns of deliberately narrow or wide types, with ``columns`` replaced."""
    table = {
        "example_id": pa.array([row["example_id"] for row in rows], pa.int64()),
        "user_id": pa.array([row["user_id"] for row in rows], pa.int16()),
        "item_id": pa.array([row["item_id"] for row in rows], pa.uint8()),
        "price": pa.array([row["price"] for row in rows], pa.float64()),
        "hist_item_id": pa.array([row["hist_item_id"] for row in rows], pa.list_(pa.int32())),
        "event_time": pa.array([1_700_000_000_000] * len(rows), pa.timestamp("ms")),  # not a feature: not read
    }
    table.update(columns)
    return pa.table(table)


def test_parquet_and_tfrecord_outputs_hold_the_rows_of_json_lines(model_dir, tfrecord, rows, workdir):
    expected = dict(zip((row["example_id"] for row in rows), in_process_scores(model_dir, rows)))

    parquet = pipeline.score(tfrecord, model_dir, str(workdir / "out" / "parquet"), output_format="parquet",
                             batch_size=16)
    as_tfrecord = pipeline.score(tfrecord, model_dir, str(workdir / "out" / "tfrecord"), output_format="tfrecord",
                                 batch_size=16)

    assert parquet.output_files == sorted(glob.glob(str(workdir / "out" / "parquet-*-of-*.parquet")))
    table = pa.concat_tables([pq.read_table(path) for path in parquet.output_files])
    assert table.schema.names == ["example_id", "model_name", "model_version", "score"]
    assert table.schema.field("example_id").type == pa.int64() and not table.schema.field("example_id").nullable
    assert table.schema.field("score").type == pa.float32()
    assert sorted(table["example_id"].to_pylist()) == sorted(expected)
    assert set(zip(table["model_name"].to_pylist(), table["model_version"].to_pylist())) == {("model", 3)}
    for key, score in zip(table["example_id"].to_pylist(), table["score"].to_numpy()):
        assert score == expected[key], "Parquet holds the exact float32 scores"

    examples = [tf.train.Example.FromString(record.numpy()).features.feature
                for record in tf.data.TFRecordDataset(as_tfrecord.output_files)]
    assert sorted(e["example_id"].int64_list.value[0] for e in examples) == sorted(expected)
    for features in examples:
        assert features["model_name"].bytes_list.value == [b"model"]
        assert features["model_version"].int64_list.value == [3]
        assert np.float32(features["score"].float_list.value[0]) == expected[features["example_id"].int64_list.value[0]]


def test_parquet_input_scores_like_the_same_rows_as_examples_with_string_keys(model_dir, rows, workdir):
    directory = workdir / "parquet_in"
    directory.mkdir()
    keys = [f"req-{row['example_id']}" for row in rows]
    table = parquet_table(rows, request_id=pa.array(keys, pa.string()))
    pq.write_table(table.slice(0, 25), str(directory / "part-0.parquet"), row_group_size=10)
    pq.write_table(table.slice(25), str(directory / "part-1.parquet"))

    summary = pipeline.score(str(directory / "*.parquet"), model_dir, str(workdir / "out" / "from_parquet"),
                             input_format="parquet", key_feature="request_id", batch_size=8)

    expected = dict(zip(keys, in_process_scores(model_dir, rows)))
    lines = [json.loads(line) for path in summary.output_files for line in open(path)]
    assert sorted(line["request_id"] for line in lines) == sorted(keys)
    assert max(abs(line["score"] - float(expected[line["request_id"]])) for line in lines) < 1e-6
    assert summary.rows_read == summary.rows_scored == ROWS and summary.rows_rejected == 0


def test_a_model_without_schema_or_raw_signature_still_scores_parquet(rows, workdir):
    """Without tfrecsys.json and serving_default nothing says what the model parses: every column an example
    can hold is passed on, typed by its Parquet type, and the model's own parsing decides."""
    model = ContractModel(offset=0.3)
    bare = str(workdir / "bare" / "1")
    tf.saved_model.save(model, bare, signatures={"serving_examples": model.serve_examples})
    path = str(workdir / "bare_rows.parquet")
    pq.write_table(parquet_table(rows, price=pa.array([row["price"] for row in rows], pa.float32())), path)

    summary = pipeline.score(path, str(workdir / "bare"), str(workdir / "out" / "bare"), input_format="parquet")

    lines = [json.loads(line) for path in summary.output_files for line in open(path)]
    expected = dict(zip((row["example_id"] for row in rows), in_process_scores(bare, rows)))
    assert {line["model_name"] for line in lines} == {"bare"}
    assert max(abs(line["score"] - float(expected[line["example_id"]])) for line in lines) < 1e-6


@pytest.mark.parametrize("column, value, message", [
    ("price", pa.array(["1.5"] * ROWS), "Column 'price' of {path} is string, which cannot feed feature 'price': "
                                        "the model parses one float32 (a scalar column of float32 or int64)"),
    ("user_id", pa.array([1.0] * ROWS), "Column 'user_id' of {path} is double, which cannot feed feature 'user_id': "
                                        "the model parses one int64 (a scalar column of int64)"),
    ("hist_item_id", pa.array(list(range(ROWS)), pa.int64()),
     "Column 'hist_item_id' of {path} is int64, which cannot feed feature 'hist_item_id': the model parses a list "
     "of int64 (a list column of int64)"),
])
def test_a_parquet_column_that_cannot_feed_its_feature_fails_before_the_job(model_dir, rows, workdir, column, value,
                                                                            message, beam_temp_dirs):
    path = str(workdir / f"wrong_{column}.parquet")
    pq.write_table(parquet_table(rows, **{column: value}), path)
    with pytest.raises(ValueError, match=re.escape(message.format(path=path))):
        pipeline.score(path, model_dir, str(workdir / "unused"), input_format="parquet")
    assert beam_temp_dirs() == []  # the pipeline was built before the column was refused


def test_missing_parquet_columns_are_named(model_dir, rows, workdir, beam_temp_dirs):
    path = str(workdir / "no_price.parquet")
    pq.write_table(parquet_table(rows).drop(["price"]), path)
    with pytest.raises(ValueError, match=re.escape(f"{path} has no column 'price'; the model parses feature 'price' "
                                                   "as one float32")):
        pipeline.score(path, model_dir, str(workdir / "unused"), input_format="parquet")
    with pytest.raises(ValueError, match=re.escape(f"{path} has no key column 'request_id'")):
        pipeline.score(path, model_dir, str(workdir / "unused"), input_format="parquet", key_feature="request_id")
    with pytest.raises(ValueError, match="Key column 'hist_item_id' .* is list<element: int32>; a key must be an "
                                         "integer or a string"):
        pipeline.score(path, model_dir, str(workdir / "unused"), input_format="parquet", key_feature="hist_item_id")
    assert beam_temp_dirs() == []


def test_parquet_rows_of_models_without_some_output_hold_nulls():
    columns = {"ctr": outputs.Column(tf.float32, 0), "item_ids": outputs.Column(tf.int64, 1)}
    tables = outputs.ParquetTables("user_id", "int64", columns)
    batch = outputs.OutputBatch([7, 8], "ranker", None, {"ctr": np.array([0.25, 0.5], np.float32)})

    [table] = tables.encode(batch)

    assert table.to_pylist() == [
        {"user_id": 7, "model_name": "ranker", "model_version": None, "ctr": 0.25, "item_ids": None},
        {"user_id": 8, "model_name": "ranker", "model_version": None, "ctr": 0.5, "item_ids": None}]
    assert table.schema.field("item_ids").type == pa.list_(pa.int64())


def test_output_columns_of_one_name_need_one_type(model_dir):
    ranker = saved_models.load_scoring_model(saved_models.ModelSpec(model_dir, "ranker"))
    wide = dataclasses.replace(ranker, name="wide", signature=dataclasses.replace(
        ranker.signature, outputs={"score": saved_models.TensorSpec(tf.float64, (-1,)),
                                   "logit": saved_models.TensorSpec(tf.float32, (-1,))}))
    formatters = [outputs.RowFormatter("score", "example_id", model) for model in (ranker, wide)]

    assert list(outputs.output_columns(formatters[:1])) == ["score"]
    with pytest.raises(ValueError, match="Output 'score' is float32 of rank 0 for model ranker/3 but float64 of rank 0 "
                                         "for model wide/3; one output column needs one type"):
        outputs.output_columns(formatters)
