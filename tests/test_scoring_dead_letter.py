"""Bad rows go to the dead letters with their reason; the good rows around them are scored all the same.

Files mix good rows with every kind of broken row a production log holds (not an Example, no key, a missing
feature, a wrong dtype, too many values, a damaged file tail, Parquet nulls, a Parquet file of the wrong
types), spread so that most batches hold both. The contract model has no tfrecsys schema, so its bad rows are
found by scoring halves of the failing batch; the families test covers an export with a schema.
"""

import base64
import glob
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tests.contract_models import example_rows, export_contract_model, to_example
from tfrecsys.scoring import pipeline

BATCH_SIZE = 8


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("dead_letter")


@pytest.fixture(scope="module")
def model_dir(workdir):
    return export_contract_model(str(workdir / "model"), version=4, offset=0.2)


def example_with(row: dict, **changes) -> bytes:
    """``row`` as a tf.train.Example with features replaced (a list of values or a tf.train.Feature) or
    removed (None)."""
    example = tf.train.Example.FromString(to_example(row))
    for name, value in changes.items():
        del example.features.feature[name]
        if isinstance(value, tf.train.Feature):
            example.features.feature[name].CopyFrom(value)
    return example.SerializeToString()


def floats(*values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def ints(*values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def in_process_scores(model_dir: str, rows: list[dict]) -> dict[int, float]:
    signature = tf.saved_model.load(model_dir).signatures["serving_examples"]
    scores = signature(inputs=tf.constant([to_example(row) for row in rows]))["score"].numpy()
    return {row["example_id"]: float(score) for row, score in zip(rows, scores)}


def read_lines(files: list[str]) -> list[dict]:
    return [json.loads(line) for path in files for line in open(path)]


def test_every_good_row_is_scored_and_every_bad_row_reported_with_its_reason(model_dir, workdir):
    good = example_rows(40, seed=11)
    broken = example_rows(7, seed=12)
    # (serialized row, key the dead letter carries, what its reason says)
    bad = [
        (b"\xff\x00 not a protobuf", None, "not a serialized tf.train.Example"),
        (example_with(broken[0], example_id=None), None, "key feature 'example_id' is missing"),
        (example_with(broken[1], price=None), broken[1]["example_id"],
         "Feature: price (data type: float) is required but could not be found"),
        (example_with(broken[2], user_id=floats(3.0)), broken[2]["example_id"],
         "Key: user_id.  Data types don't match. Data type: float but expected type: int64"),
        (example_with(broken[3], item_id=ints(1, 2)), broken[3]["example_id"],
         "Key: item_id.  Number of int64 values != expected.  Values size: 2 but output shape: []"),
        (example_with(broken[4], hist_item_id=floats(1.0, 2.0)), broken[4]["example_id"],
         "Key: hist_item_id.  Data types don't match"),
        (example_with(broken[5], example_id=floats(7.0)), None, "key feature 'example_id' must hold exactly one int64"),
    ]
    mixed = str(workdir / "mixed.tfrecord")
    with tf.io.TFRecordWriter(mixed) as writer:
        # Bad rows every few good ones, so most batches of BATCH_SIZE hold both.
        for index, row in enumerate(good):
            writer.write(to_example(row))
            if index % 6 == 2:
                writer.write(bad[index // 6][0])
    # A file cut off inside its 10th record: the 9 before the damage are kept, the rest is one dead letter.
    tail_rows = example_rows(12, seed=13)
    for row in tail_rows:
        row["example_id"] += 10_000
    intact = str(workdir / "intact.tfrecord")
    with tf.io.TFRecordWriter(intact) as writer:
        for row in tail_rows:
            writer.write(to_example(row))
    data = open(intact, "rb").read()
    record_bytes = len(data) // len(tail_rows)
    with open(str(workdir / "truncated.tfrecord"), "wb") as f:
        f.write(data[:9 * record_bytes + record_bytes // 2])

    summary = pipeline.score(str(workdir / "[mt]*.tfrecord"), model_dir, str(workdir / "out" / "scores"),
                             batch_size=BATCH_SIZE)

    scored = read_lines(summary.output_files)
    expected = in_process_scores(model_dir, good + tail_rows[:9])
    assert sorted(line["example_id"] for line in scored) == sorted(expected), "every good row scored once"
    assert max(abs(line["score"] - expected[line["example_id"]]) for line in scored) < 1e-5

    letters = read_lines(summary.dead_letter_files)
    tail = [letter for letter in letters if letter["source"].endswith("truncated.tfrecord")]
    assert len(tail) == 1 and tail[0]["reason"].startswith("records from 9 on are unreadable: ")
    rows = {base64.b64decode(letter["record_base64"]): letter for letter in letters if letter not in tail}
    assert len(rows) == len(letters) - 1 == len(bad), "each bad row reported once"
    for record, key, reason in bad:
        letter = rows[record]
        assert reason in letter["reason"], (letter["reason"], reason)
        assert letter["key"] == key and letter["source"].endswith("mixed.tfrecord")
        assert (letter["model_name"], letter["model_version"]) == (("model", 4) if key is not None else (None, None))

    assert summary.rows_read == len(good) + len(bad) + 9
    assert summary.rows_scored == summary.rows_written == len(good) + 9
    assert summary.rows_rejected == len(bad) + 1


def test_parquet_nulls_and_a_file_of_the_wrong_types_are_dead_letters(model_dir, workdir):
    rows = example_rows(30, seed=21)
    table = pa.table({
        "example_id": pa.array([row["example_id"] for row in rows], pa.int64()),
        "user_id": pa.array([None if i == 4 else row["user_id"] for i, row in enumerate(rows)], pa.int64()),
        "item_id": pa.array([row["item_id"] for row in rows], pa.int32()),
        "price": pa.array([row["price"] for row in rows], pa.float64()),
        "hist_item_id": pa.array([[1, None] if i == 9 else row["hist_item_id"] for i, row in enumerate(rows)],
                                 pa.list_(pa.int64())),
    })
    directory = workdir / "parquet"
    directory.mkdir()
    pq.write_table(table, str(directory / "a.parquet"), row_group_size=16)
    # A later file whose user_id holds strings: the job still finishes; its rows say why they were not scored.
    strings = table.slice(0, 3).set_column(1, "user_id", pa.array(["u1", "u2", "u3"]))
    strings = strings.set_column(0, "example_id", pa.array([90, 91, 92], pa.int64()))
    pq.write_table(strings, str(directory / "b.parquet"))

    summary = pipeline.score(str(directory / "*.parquet"), model_dir, str(workdir / "out_parquet" / "scores"),
                             input_format="parquet", batch_size=BATCH_SIZE)

    good = [row for i, row in enumerate(rows) if i not in (4, 9)]
    expected = in_process_scores(model_dir, good)
    scored = read_lines(summary.output_files)
    assert sorted(line["example_id"] for line in scored) == sorted(expected)
    assert max(abs(line["score"] - expected[line["example_id"]]) for line in scored) < 1e-5
    letters = {letter["key"]: letter for letter in read_lines(summary.dead_letter_files)}
    assert sorted(letters) == sorted([rows[4]["example_id"], rows[9]["example_id"], 90, 91, 92])
    assert letters[rows[4]["example_id"]]["reason"] == "column 'user_id' is null"
    assert letters[rows[4]["example_id"]]["row"]["user_id"] is None
    assert letters[rows[9]["example_id"]]["reason"] == "column 'hist_item_id' holds a null element"
    assert letters[90]["reason"].startswith("Column 'user_id' of ") and "b.parquet is string" in letters[90]["reason"]
    assert letters[90]["row"]["user_id"] == "u1" and letters[90]["source"].endswith("b.parquet")
    assert summary.rows_read == 33 and summary.rows_scored == 28 and summary.rows_rejected == 5
    assert glob.glob(str(workdir / "out_parquet" / "scores_dead_letter-*.jsonl")) == summary.dead_letter_files


def test_rows_are_checked_against_exact_feature_needs_like_parse_example_would():
    """With an export's schema, rows of a failing batch are told apart in Python, with what is wrong."""
    from tfrecsys.scoring.rows import check_example
    from tfrecsys.scoring.saved_models import FeatureNeed

    needs = [FeatureNeed("user_id", "int64", 1, False), FeatureNeed("embedding", "float32", 3, True),
             FeatureNeed("hist_item_id", "int64", None, True), FeatureNeed("country", "string", 1, False)]
    example = tf.train.Example()
    features = example.features.feature
    features["user_id"].int64_list.value.append(7)
    features["embedding"].float_list.value.extend([0.1, 0.2, 0.3])
    features["hist_item_id"].SetInParent()  # an empty history parses as an empty sequence
    features["country"].bytes_list.value.append(b"de")
    assert check_example(features, needs) is None

    features["embedding"].float_list.value.append(0.4)
    assert check_example(features, needs) == "feature 'embedding' holds 4 values; the model parses exactly 3"
    del features["embedding"]
    assert check_example(features, needs) == "feature 'embedding' is missing (the model parses 3 values of float32)"
    features["embedding"].float_list.value.extend([0.1, 0.2, 0.3])
    features["hist_item_id"].float_list.value.append(1.0)
    assert check_example(features, needs) == ("feature 'hist_item_id' holds float_list; the model parses int64 "
                                              "(int64_list)")
    del features["hist_item_id"]
    # A row without the sequence at all: parse_example reads it as empty, so the check must not reject it
    # (else the row would be rejected only when another row of its batch fails the call).
    assert check_example(features, needs) is None
    parsed = tf.io.parse_example(tf.constant([example.SerializeToString()]),
                                 {"hist_item_id": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)})
    assert parsed["hist_item_id"].to_list() == [[]]
    features["country"].ClearField("bytes_list")
    features["hist_item_id"].SetInParent()
    assert check_example(features, needs) == "feature 'country' holds no values; the model parses string (bytes_list)"
