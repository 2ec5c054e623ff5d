"""Beam batch scoring against the SavedModel contract: what a user of tfrecsys-score relies on.

Every row is scored exactly once under its own key, with the scores the SavedModel itself gives; the highest
model version is picked; wrong signatures, inputs and keys fail with messages that name them.
"""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.contract_models import example_rows, export_contract_model, to_example
from tfrecsys.scoring import model_handler, pipeline

ROWS = 60
SHARDS = 3
FLAGS = ("--input", "--model_base_path", "--model_version", "--signature_name", "--key_feature", "--output",
         "--min_batch_size", "--max_batch_size", "--runner")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("scoring")


@pytest.fixture(scope="module")
def model_base(workdir):
    """Versions 1 and 2 of the contract model; version 2's offset moves every score."""
    base = str(workdir / "model")
    export_contract_model(base, version=1, offset=0.0)
    export_contract_model(base, version=2, offset=0.7)
    return base


@pytest.fixture(scope="module")
def records(workdir):
    """The example rows, written as SHARDS TFRecord files; returns (file pattern, rows)."""
    rows = example_rows(ROWS, seed=3)
    for shard in range(SHARDS):
        with tf.io.TFRecordWriter(str(workdir / f"examples-{shard}.tfrecord")) as writer:
            for row in rows[shard::SHARDS]:
                writer.write(to_example(row))
    return str(workdir / "examples-*.tfrecord"), rows


def expected_scores(version_dir: str, rows: list[dict]) -> dict[int, float]:
    """Scores straight from the SavedModel's serving_examples signature, by example_id."""
    signature = tf.saved_model.load(version_dir).signatures["serving_examples"]
    scores = signature(inputs=tf.constant([to_example(row) for row in rows]))["score"].numpy()
    return {row["example_id"]: float(s) for row, s in zip(rows, scores)}


def read_json_lines(files: list[str]) -> list[dict]:
    lines = []
    for path in files:
        with open(path) as f:
            lines.extend(json.loads(line) for line in f)
    return lines


def assert_scored_once(lines: list[dict], expected: dict[int, float]) -> None:
    keys = [line["example_id"] for line in lines]
    assert sorted(keys) == sorted(expected), "every row scored exactly once, under its own key"
    assert all(set(line) == {"example_id", "score"} for line in lines)
    diff = max(abs(line["score"] - expected[line["example_id"]]) for line in lines)
    assert diff < 1e-5


def test_scores_every_row_once_with_the_highest_version(model_base, records, workdir):
    pattern, rows = records
    summary = pipeline.score(pattern, model_base, str(workdir / "in_process" / "scores"),
                             min_batch_size=4, max_batch_size=16)

    assert summary.model_dir == os.path.join(model_base, "2")
    assert summary.rows_scored == ROWS
    assert summary.output_files == sorted(glob.glob(str(workdir / "in_process" / "scores-*-of-*.jsonl")))
    expected = expected_scores(os.path.join(model_base, "2"), rows)
    assert_scored_once(read_json_lines(summary.output_files), expected)
    stale = expected_scores(os.path.join(model_base, "1"), rows)
    assert min(abs(expected[key] - stale[key]) for key in expected) > 1e-3, "versions must score differently"


def test_cli_scores_a_chosen_version_with_pass_through_beam_options(model_base, records, workdir):
    pattern, rows = records
    output = str(workdir / "cli" / "scores")
    completed = subprocess.run(
        [score_binary(), f"--input={pattern}", f"--model_base_path={model_base}", "--model_version=1",
         f"--output={output}", "--min_batch_size=2", "--max_batch_size=8", "--", "--direct_num_workers=1"],
        capture_output=True, text=True, timeout=180)

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"Scored {ROWS} rows with {os.path.join(model_base, '1')}" in completed.stdout
    files = sorted(glob.glob(f"{output}-*-of-*.jsonl"))
    assert files and all(path in completed.stdout for path in files)
    assert_scored_once(read_json_lines(files), expected_scores(os.path.join(model_base, "1"), rows))


def test_help_exits_zero_and_explains_every_flag():
    completed = subprocess.run([score_binary(), "--help"], capture_output=True, text=True, timeout=120)

    assert completed.returncode == 0, completed.stderr[-3000:]
    for flag in FLAGS:
        assert f"{flag}:" in completed.stdout, flag
    assert "after a bare `--`" in completed.stdout


def score_binary() -> str:
    """The installed console script, next to this interpreter."""
    return os.path.join(os.path.dirname(sys.executable), "tfrecsys-score")


def test_missing_signature_is_named_with_the_available_ones(model_base, records, workdir):
    with pytest.raises(ValueError, match=r"no signature 'serving_rank'.*\['serving_default', 'serving_examples'\]"):
        pipeline.score(records[0], model_base, str(workdir / "unused"), signature_name="serving_rank")


def test_signature_of_raw_features_is_refused(model_base, records, workdir):
    with pytest.raises(ValueError, match="'serving_default'.*one string input of serialized tf.train.Example"):
        pipeline.score(records[0], model_base, str(workdir / "unused"), signature_name="serving_default")


def test_input_pattern_matching_nothing_is_named(model_base, workdir):
    pattern = str(workdir / "no-such-*.tfrecord")
    with pytest.raises(FileNotFoundError, match=re.escape(f"No input files match '{pattern}'")):
        pipeline.score(pattern, model_base, str(workdir / "unused"))


def test_model_base_without_versions_is_named(workdir):
    empty = workdir / "empty_model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"No SavedModel under {empty}")):
        model_handler.resolve_model_dir(str(empty))


def test_missing_version_is_named(model_base):
    missing = re.escape(os.path.join(model_base, "7"))
    with pytest.raises(FileNotFoundError, match=f"Model version 7 not found.*{missing}"):
        model_handler.resolve_model_dir(model_base, 7)


def test_row_without_key_fails_naming_feature_and_pattern(model_base, records, workdir):
    _, rows = records
    path = str(workdir / "keyless.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for row in rows[:3]:
            writer.write(to_example(row))
    with pytest.raises(Exception, match=re.escape(f"A row in {path} has no key feature 'request_id'")):
        pipeline.score(path, model_base, str(workdir / "keyless" / "scores"), key_feature="request_id")


def test_handler_returns_per_row_numpy_outputs(model_base, records):
    _, rows = records
    handler = model_handler.SavedModelExamplesHandler(model_base, min_batch_size=2, max_batch_size=5)
    batch = [to_example(row) for row in rows[:5]]

    results = handler.run_inference(batch, handler.load_model())

    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 5}
    assert [r.example for r in results] == batch
    assert all(r.model_id == os.path.join(model_base, "2") for r in results)
    expected = expected_scores(os.path.join(model_base, "2"), rows[:5])
    assert [r.inference["score"] for r in results] == pytest.approx([expected[row["example_id"]] for row in rows[:5]])
    assert all(isinstance(r.inference["score"], np.float32) for r in results)


def test_json_lines_keep_float32_values_exactly_and_write_2d_outputs_as_lists():
    inference = {"scores": np.array([0.1, 0.2], np.float32), "item_ids": np.array([b"a", b"b"]),
                 "ctr": np.float32(1 / 3)}

    line = json.loads(pipeline.to_json_line("request_id", "r-1", inference))

    assert list(line) == ["request_id", "ctr", "item_ids", "scores"]
    assert line["request_id"] == "r-1"
    assert np.float32(line["ctr"]) == np.float32(1 / 3) and line["ctr"] == float(np.float32(1 / 3))
    assert line["scores"] == [float(np.float32(0.1)), float(np.float32(0.2))]
    assert line["item_ids"] == ["a", "b"]


def test_key_is_the_single_int64_or_bytes_value(records):
    _, rows = records
    assert pipeline.key_example(to_example(rows[0]), "example_id", "p")[0] == rows[0]["example_id"]
    keyed = tf.train.Example()
    keyed.features.feature["request_id"].bytes_list.value.append("r-ü".encode())
    assert pipeline.key_example(keyed.SerializeToString(), "request_id", "p")[0] == "r-ü"
    keyed.features.feature["request_id"].bytes_list.value.append(b"second")
    with pytest.raises(ValueError, match="'request_id' of a row in p must hold exactly one"):
        pipeline.key_example(keyed.SerializeToString(), "request_id", "p")
    floating = tf.train.Example()
    floating.features.feature["request_id"].float_list.value.append(1.0)
    with pytest.raises(ValueError, match="got 1 value.* in float_list"):
        pipeline.key_example(floating.SerializeToString(), "request_id", "p")
    binary = tf.train.Example()
    binary.features.feature["request_id"].bytes_list.value.append(b"\xff\xfe")
    with pytest.raises(ValueError, match="'request_id' of a row in p is not UTF-8 text"):
        pipeline.key_example(binary.SerializeToString(), "request_id", "p")
