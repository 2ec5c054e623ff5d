"""Beam batch scoring against the SavedModel contract: what a user of tfrecsys-score relies on.

Every row is scored exactly once under its own key, with the scores the SavedModel itself gives, tagged with
the model's name and version; the highest model version is picked; wrong signatures, inputs and keys fail
before the job starts with messages that name them.
"""

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.contract_models import example_rows, export_contract_model, to_example
from tfrecsys.contract import ASSETS_EXTRA_DIR, METADATA_FILE
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.scoring import model_handler, outputs, pipeline, rows as scoring_rows, saved_models

ROWS = 60
SHARDS = 3


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


def assert_scored_once(lines: list[dict], expected: dict[int, float], version: int) -> None:
    keys = [line["example_id"] for line in lines]
    assert sorted(keys) == sorted(expected), "every row scored exactly once, under its own key"
    assert all(list(line) == ["example_id", "model_name", "model_version", "score"] for line in lines)
    assert {(line["model_name"], line["model_version"]) for line in lines} == {("model", version)}
    diff = max(abs(line["score"] - expected[line["example_id"]]) for line in lines)
    assert diff < 1e-5


def test_scores_every_row_once_with_the_highest_version(model_base, records, workdir):
    pattern, rows = records
    summary = pipeline.score(pattern, model_base, str(workdir / "in_process" / "scores"), batch_size=8)

    assert [model.model_dir for model in summary.models] == [os.path.join(model_base, "2")]
    assert summary.rows_read == summary.rows_scored == summary.rows_written == ROWS
    assert summary.scored_by_model == {"model/2": ROWS} and summary.rows_rejected == 0
    assert summary.output_files == sorted(glob.glob(str(workdir / "in_process" / "scores-*-of-*.jsonl")))
    assert summary.dead_letter_files == sorted(glob.glob(str(workdir / "in_process" / "scores_dead_letter-*.jsonl")))
    assert read_json_lines(summary.dead_letter_files) == []
    expected = expected_scores(os.path.join(model_base, "2"), rows)
    assert_scored_once(read_json_lines(summary.output_files), expected, version=2)
    stale = expected_scores(os.path.join(model_base, "1"), rows)
    assert min(abs(expected[key] - stale[key]) for key in expected) > 1e-3, "versions must score differently"


def test_cli_scores_a_chosen_version_with_pass_through_beam_options(model_base, records, workdir):
    pattern, rows = records
    output = str(workdir / "cli" / "scores")
    completed = subprocess.run(
        [score_binary(), f"--input={pattern}", f"--model_base_path={model_base}", "--model_version=1",
         f"--output={output}", "--batch_size=7", "--num_output_shards=2", "--", "--direct_num_workers=1"],
        capture_output=True, text=True, timeout=180)

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"Scored {ROWS} of {ROWS} rows with {os.path.join(model_base, '1')} (model/1)" in completed.stdout
    assert f"Wrote {ROWS} rows into 2 file(s)" in completed.stdout
    assert "Rejected 0 rows into" in completed.stdout
    files = sorted(glob.glob(f"{output}-*-of-*.jsonl"))
    assert len(files) == 2 and all(path in completed.stdout for path in files)
    assert_scored_once(read_json_lines(files), expected_scores(os.path.join(model_base, "1"), rows), version=1)


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
        saved_models.resolve_model_dir(str(empty))


def test_missing_version_is_named(model_base):
    missing = re.escape(os.path.join(model_base, "7"))
    with pytest.raises(FileNotFoundError, match=f"Model version 7 not found.*{missing}"):
        saved_models.resolve_model_dir(model_base, 7)


def test_a_feature_missing_from_every_first_row_fails_before_the_job(model_base, records, workdir, beam_temp_dirs):
    """Rows without the history (another config's rows, or rows whose histories a per-user store holds) were
    scored as if every user had an empty history: parsing reads an absent list as an empty one."""
    _, rows = records
    # The contract model with the feature schema a tfrecsys export records: what says the history is needed.
    with_schema = str(workdir / "with_schema" / "1")
    shutil.copytree(os.path.join(model_base, "2"), with_schema)
    schema = FeatureSchema.from_config({"user_id": dict(kind="id", num_buckets=100),
                                        "item_id": dict(kind="id", num_buckets=50), "price": dict(kind="dense"),
                                        "hist_item_id": dict(kind="sequence", shares="item_id", max_len=4)})
    os.makedirs(os.path.join(with_schema, ASSETS_EXTRA_DIR), exist_ok=True)
    with open(os.path.join(with_schema, METADATA_FILE), "w") as f:
        json.dump({"schema": schema.to_json()}, f)
    path = str(workdir / "historyless.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for row in rows[:5]:
            example = tf.train.Example.FromString(to_example(row))
            del example.features.feature["hist_item_id"]
            writer.write(example.SerializeToString())
    message = (f"None of the first 5 rows of {path} has feature(s) 'hist_item_id' (a list of int64), which model "
               "with_schema/1 parses")
    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline.score(path, os.path.dirname(with_schema), str(workdir / "historyless" / "scores"))
    assert beam_temp_dirs() == []


def test_key_feature_missing_from_the_first_rows_fails_before_the_job(model_base, records, workdir, beam_temp_dirs):
    _, rows = records
    path = str(workdir / "keyless.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for row in rows[:3]:
            writer.write(to_example(row))
    message = f"None of the first 3 rows of {path} has a key feature 'request_id'"
    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline.score(path, model_base, str(workdir / "keyless" / "scores"), key_feature="request_id")
    assert beam_temp_dirs() == []


def test_key_clashing_with_an_output_or_the_model_tags_is_refused(model_base, records, workdir):
    for key in ("score", "model_version"):
        with pytest.raises(ValueError, match=f"Key feature '{key}' clashes with the output columns"):
            pipeline.score(records[0], model_base, str(workdir / "unused"), key_feature=key)


def test_two_models_with_one_name_and_version_are_refused(model_base, records, workdir):
    same = saved_models.ModelSpec(model_base, name="m", version=2)
    with pytest.raises(ValueError, match="are tagged .m/2. and .m/2.; give them different names"):
        pipeline.score(records[0], [same, same], str(workdir / "unused"))


def test_model_flag_parses_name_path_and_version():
    assert saved_models.ModelSpec.parse("challenger=gs://b/models/dnn@7") == saved_models.ModelSpec(
        "gs://b/models/dnn", "challenger", 7)
    assert saved_models.ModelSpec.parse("champion=/m/dnn") == saved_models.ModelSpec("/m/dnn", "champion", None)
    with pytest.raises(ValueError, match="is not NAME=PATH or NAME=PATH@VERSION"):
        saved_models.ModelSpec.parse("/m/dnn@3")


def test_handler_scores_a_batch_and_keeps_row_order(model_base, records):
    _, rows = records
    model = saved_models.load_scoring_model(saved_models.ModelSpec(model_base))
    handler = model_handler.SavedModelBatchHandler(model)
    batch = scoring_rows.KeyedBatch("f", [row["example_id"] for row in rows[:5]], [to_example(row) for row in rows[:5]])

    [result] = handler.run_inference(batch, handler.load_model())

    assert handler.should_skip_batching() and result.example is batch
    assert result.model_id == os.path.join(model_base, "2") and model.tag == "model/2"
    assert result.inference.rows.tolist() == [0, 1, 2, 3, 4] and result.inference.rejected == []
    expected = expected_scores(os.path.join(model_base, "2"), rows[:5])
    assert result.inference.outputs["score"].dtype == np.float32
    assert result.inference.outputs["score"].tolist() == pytest.approx([expected[r["example_id"]] for r in rows[:5]])


def test_json_lines_keep_float32_values_exactly_and_write_2d_outputs_as_lists():
    batch = outputs.OutputBatch(keys=["r-1"], model_name="m", model_version=3, values={
        "scores": np.array([[0.1, 0.2]], np.float32), "item_ids": np.array([[b"a", b"b"]]),
        "ctr": np.array([1 / 3], np.float32)})

    columns = {"ctr": outputs.Column(tf.float32, 0), "item_ids": outputs.Column(tf.string, 1),
               "scores": outputs.Column(tf.float32, 1)}
    [text] = outputs.JsonLines("request_id", columns).encode(batch)
    line = json.loads(text)

    assert list(line) == ["request_id", "model_name", "model_version", "ctr", "item_ids", "scores"]
    assert (line["request_id"], line["model_name"], line["model_version"]) == ("r-1", "m", 3)
    assert np.float32(line["ctr"]) == np.float32(1 / 3) and line["ctr"] == float(np.float32(1 / 3))
    assert line["scores"] == [float(np.float32(0.1)), float(np.float32(0.2))]
    assert line["item_ids"] == ["a", "b"]


def test_key_is_the_single_int64_or_bytes_value(records):
    _, rows = records
    features = tf.train.Example.FromString(to_example(rows[0])).features.feature
    assert scoring_rows.example_key(features, "example_id", "int64") == rows[0]["example_id"]
    keyed = tf.train.Example()
    keyed.features.feature["request_id"].bytes_list.value.append("r-ü".encode())
    assert scoring_rows.example_key(keyed.features.feature, "request_id", "string") == "r-ü"
    with pytest.raises(scoring_rows.RowError, match="'request_id' must hold exactly one int64 value"):
        scoring_rows.example_key(keyed.features.feature, "request_id", "int64")
    keyed.features.feature["request_id"].bytes_list.value.append(b"second")
    with pytest.raises(scoring_rows.RowError, match="got 2 value.* in bytes_list"):
        scoring_rows.example_key(keyed.features.feature, "request_id", "string")
    binary = tf.train.Example()
    binary.features.feature["request_id"].bytes_list.value.append(b"\xff\xfe")
    with pytest.raises(scoring_rows.RowError, match="'request_id' is not UTF-8 text"):
        scoring_rows.example_key(binary.features.feature, "request_id", "string")


def test_keying_a_batch_rejects_only_the_rows_without_a_usable_key(records):
    _, rows = records
    keyless = tf.train.Example()
    keyless.features.feature["user_id"].int64_list.value.append(1)
    batch = scoring_rows.RowBatch("f.tfrecord", [to_example(rows[0]), b"\xff\x00garbage", keyless.SerializeToString(),
                                                 to_example(rows[1])])

    keyed, rejected = scoring_rows.key_batch(batch, "example_id", "int64")

    assert keyed.keys == [rows[0]["example_id"], rows[1]["example_id"]]
    assert keyed.records == [batch.records[0], batch.records[3]]
    assert [d.record for d in rejected] == [batch.records[1], batch.records[2]]
    assert rejected[0].reason.startswith("not a serialized tf.train.Example")
    assert rejected[1].reason == "key feature 'example_id' is missing" and rejected[1].source == "f.tfrecord"


def tfrecsys_imports(module: str) -> set[str]:
    """Every tfrecsys module that importing ``module`` can import, at module level or inside a function,
    with the packages above each."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen, pending = set(), [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            package = ".".join(parts[:depth])
            if package in seen:
                continue
            path = os.path.join(root, *package.split("."))
            path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
            if not os.path.exists(path):
                continue  # a name imported from a module, not a module
            seen.add(package)
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Import):
                    pending.extend(alias.name for alias in node.names if alias.name.startswith("tfrecsys"))
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfrecsys"):
                    pending.extend([node.module] + [f"{node.module}.{alias.name}" for alias in node.names])
    return seen


def test_scoring_needs_no_model_code():
    """Scoring depends on the SavedModel contract only: nothing the binary imports reaches a model, layer,
    loss or train module (a Beam worker needs none of them)."""
    reached = tfrecsys_imports("tfrecsys.cli.score") | tfrecsys_imports("tfrecsys.scoring.pipeline")
    assert "tfrecsys.scoring.model_handler" in reached and "tfrecsys.cli.common" in reached
    forbidden = [m for m in reached if m.split(".")[:2] in [["tfrecsys", p] for p in ("models", "layers", "losses",
                                                                                        "train")]]
    assert forbidden == []


def test_a_path_no_tensorflow_file_system_reads_is_named():
    with pytest.raises(ValueError, match="TensorFlow has no file system for nosuch:// to read nosuch://b/x.tfrecord"):
        saved_models.ensure_tensorflow_filesystem("nosuch://b/x.tfrecord")


def test_model_flags_take_one_base_path_or_named_models():
    assert saved_models.model_specs(None, None, None, ["champion=/m/dnn@3", "challenger=/m/dnn"]) == [
        saved_models.ModelSpec("/m/dnn", "champion", 3), saved_models.ModelSpec("/m/dnn", "challenger", None)]
    assert saved_models.model_specs("/m/dnn", 2, "ranker", []) == [saved_models.ModelSpec("/m/dnn", "ranker", 2)]
    with pytest.raises(ValueError, match="Give either --model_base_path .* or one or more --model"):
        saved_models.model_specs("/m/dnn", None, None, ["a=/m/dnn"])
    with pytest.raises(ValueError, match="Give either --model_base_path"):
        saved_models.model_specs(None, None, None, [])
    with pytest.raises(ValueError, match="--model_version and --model_name go with --model_base_path"):
        saved_models.model_specs(None, 2, None, ["a=/m/dnn"])
