"""Beam scores equal the in-process model's predictions for every model family of the registry.

Each family trains a few steps on its simulator with a small config and goes the user's path (the generic
train loop, then ``export_trained``); its Beam scores over the exported SavedModel must equal the predictions of
the same trained Keras model in this process (max abs diff < 1e-5). A family added to the registry without a
case here fails loudly rather than going unchecked. Also here, because they need a real tfrecsys export (one
with the feature schema in ``assets.extra/tfrecsys.json``): champion and challenger in one pass, where a row
one model cannot parse is rejected for that model only, and Parquet input with sequence features.
"""

import dataclasses
import json
import os
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tests.sim_cases import SMALL_SIM_PER_ROW
from tfrecsys.config import load_config
from tfrecsys.data.input import resolve_files
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.export.trained import export_trained, first_records, load_trained_model
from tfrecsys.features.schema import FeatureSchema, SequenceFeature
from tfrecsys.models import available, build_model
from tfrecsys.scoring import pipeline, saved_models
from tfrecsys.train.loop import train_and_evaluate

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
MAX_ROWS = 400


def write_click_log(config, data_dir: str) -> None:
    from tfrecsys.data.simulators.click_log import ClickLogConfig, write_click_log as write

    write(ClickLogConfig.from_config(config.data.simulator), data_dir)


def write_retrieval_world(config, data_dir: str) -> None:
    from tfrecsys.data.simulators.retrieval import RetrievalWorldConfig, write_retrieval_world as write

    write(RetrievalWorldConfig.from_config(config.data.simulator), data_dir)


def write_simulator(config, data_dir: str) -> None:
    """The simulator a config's ``data.simulator`` block names by ``kind`` (as ``tfrecsys-simulate`` runs it)."""
    from tfrecsys.data.simulators import write_from_config

    write_from_config(config.data.simulator, data_dir)


def ranking_predictions(model, schema: FeatureSchema, records: list[bytes]) -> dict[str, np.ndarray]:
    """The model's outputs by name, ``[rows]`` each."""
    features = schema.parse_examples(tf.constant(records), with_labels=False, serving=True)
    return {name: value.numpy() for name, value in model(features, training=False).items()}


def top_k_predictions(model, schema: FeatureSchema, records: list[bytes], k: int) -> dict[str, np.ndarray]:
    """The best ``k`` corpus items by ``⟨query, candidate⟩`` of the in-process towers: ``item_ids``/``scores``
    ``[rows, k]``, best first."""
    features = schema.parse_examples(tf.constant(records), with_labels=False, serving=True)
    query = model(features, training=False)["query_embedding"]
    best = tf.math.top_k(tf.matmul(query, model.corpus_embeddings(), transpose_b=True), k=k)
    return {"item_ids": tf.gather(tf.constant(model.corpus.ids), best.indices).numpy(), "scores": best.values.numpy()}


@dataclasses.dataclass(frozen=True)
class FamilyCase:
    """A small experiment of one family: its config file with overrides, how its simulator data is written,
    the scoring mode and key of its export, and its in-process predictions."""
    config_file: str
    overrides: dict
    write_data: Callable
    mode: str
    key_feature: str
    predict: Callable
    slow: bool = False  # a family whose scoring path a fast case already runs: checked by make test-all only


SMALL_SEQUENTIAL_WORLD = {
    "data.simulator.num_users": 40, "data.simulator.events_per_user": 30, "model.attention_units": (4,),
    "model.hidden_units": (8,), "train.steps": 10, "train.steps_per_loop": 10, "train.steps_per_execution": 5,
    "train.batch_size": 64, "train.shuffle_buffer": 1000, "export.warmup_requests": 2}
MULTITASK_RUN = {"data.simulator.num_requests": 300, "model.tower_units": (4,), "train.steps": 10,
                 "train.steps_per_loop": 10, "train.steps_per_execution": 10, "train.batch_size": 128,
                 "train.shuffle_buffer": 1000, "export.warmup_requests": 2}
FAMILY_CASES = {
    "dnn": FamilyCase(
        "dnn_simulator.py",
        {"data.simulator.num_events": 4000, "model.hidden_units": (16,),
         "train.steps": 20, "train.steps_per_loop": 20, "train.steps_per_execution": 10, "train.batch_size": 128,
         "train.shuffle_buffer": 1000, "export.warmup_requests": 2},
        write_click_log, "score", "example_id", ranking_predictions),
    "logistic_regression": FamilyCase(
        "logistic_regression_simulator.py",
        {"data.simulator.num_events": 4000, "train.steps": 20, "train.steps_per_loop": 20,
         "train.steps_per_execution": 10, "train.batch_size": 128, "train.shuffle_buffer": 1000,
         "export.warmup_requests": 2},
        write_click_log, "score", "example_id", ranking_predictions),
    "two_tower": FamilyCase(
        "two_tower_simulator.py",
        {"data.simulator.num_users": 150, "data.simulator.num_items": 120, "data.simulator.events_per_user": 6.0,
         "model.hidden_units": (), "model.output_dim": 8, "model.num_sampled": 16,
         "model.export_k": 10, "model.eval_ks": (10,), "train.best_metric": "recall_at_10",
         "train.steps": 10, "train.steps_per_loop": 10,
         "train.steps_per_execution": 5, "train.batch_size": 64, "train.eval_batch_size": 256,
         "train.shuffle_buffer": 1000, "export.warmup_requests": 2},
        write_retrieval_world, "retrieve", "user_id",
        lambda model, schema, records: top_k_predictions(model, schema, records, 10)),
    "generative": FamilyCase(
        "sasrec_simulator.py",
        {"data.simulator.num_users": 60, "data.simulator.num_items": 40, "data.simulator.events_per_user": 40,
         "model.num_blocks": 1, "model.num_sampled": 16, "model.export_k": 10, "model.eval_ks": (10,),
         "train.steps": 10, "train.steps_per_loop": 10, "train.steps_per_execution": 5, "train.batch_size": 32,
         "train.eval_batch_size": 256, "train.shuffle_buffer": 1000, "export.warmup_requests": 2},
        write_simulator, "retrieve", "user_id",
        lambda model, schema, records: top_k_predictions(model, schema, records, 10), slow=True),
    "din": FamilyCase("din_simulator.py", SMALL_SEQUENTIAL_WORLD, write_simulator, "score", "example_id",
                      ranking_predictions),
    # dien, sim, generative and defuse score through the same contract as din, dnn and two_tower (raw
    # histories, named [batch] outputs, top-K): make test-all only, to keep make test inside its 10 minutes.
    "dien": FamilyCase("dien_simulator.py", SMALL_SEQUENTIAL_WORLD, write_simulator, "score", "example_id",
                       ranking_predictions, slow=True),
    "sim": FamilyCase(
        "sim_simulator.py",
        {**SMALL_SIM_PER_ROW, "train.steps": 10, "train.steps_per_loop": 10, "train.steps_per_execution": 5,
         "train.batch_size": 64, "train.eval_batch_size": 256, "train.shuffle_buffer": 1000,
         "export.warmup_requests": 2},
        write_simulator, "score", "example_id", ranking_predictions, slow=True),
    # Multi-task families score through the same contract as dnn (named [batch] outputs): make test-all only.
    **{family: FamilyCase("esm2_simulator.py" if family == "esm2" else f"{family}.py:simulator", {**MULTITASK_RUN, **overrides}, write_simulator, "score",
                          "example_id", ranking_predictions, slow=True)
       for family, overrides in (("shared_bottom", {"model.bottom_units": (8,)}),
                                 ("mmoe", {"model.num_experts": 2, "model.expert_units": (8,)}),
                                 ("ple", {"model.expert_units": (8,)}), ("esmm", {}), ("esm2", {}))},
    "defuse": FamilyCase(
        "defuse_simulator.py",
        # Batch mode over the stream's rows: this case checks export and scoring (streaming: test_defuse_model).
        {"data.simulator.num_clicks": 1000, "data.simulator.num_users": 100, "data.simulator.num_items": 100,
         "data.simulator.days": 3, "data.simulator.pretrain_days": 1, "train.mode": "batch",
         "model.hidden_units": (8,), "model.auxiliary_hidden_units": (4,), "train.steps": 20,
         "train.steps_per_loop": 20, "train.steps_per_execution": 10, "train.batch_size": 128,
         "train.shuffle_buffer": 1000, "export.warmup_requests": 2},
        write_simulator, "score", "example_id", ranking_predictions, slow=True),
    "hstu_ranking": FamilyCase(
        "hstu_ranking_simulator.py",
        {"data.simulator.num_users": 40, "data.simulator.events_per_user": 30, "model.num_blocks": 1,
         "model.hidden_units": (4,), "train.steps": 10, "train.steps_per_loop": 10, "train.steps_per_execution": 5,
         "train.batch_size": 64, "train.shuffle_buffer": 1000, "export.warmup_requests": 2},
        write_simulator, "score", "example_id", ranking_predictions, slow=True),  # ~44 s: make test-all only
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``family -> run``, trained and exported on first use, so tests that share a family share its run."""
    runs = {}

    def get(family: str) -> dict:
        if family not in runs:
            runs[family] = train_and_export(family, tmp_path_factory.mktemp(family))
        return runs[family]

    return get


def train_and_export(family: str, root) -> dict:
    case = FAMILY_CASES[family]
    data_dir, model_dir, export_base = str(root / "data"), str(root / "model"), str(root / "export")
    config = load_config(os.path.join(CONFIGS, case.config_file), {"data.dir": data_dir, **case.overrides})
    case.write_data(config, data_dir)
    train_and_evaluate(config, model_dir, verbose=0)
    export_path = export_trained(config, model_dir, export_base)
    model, schema, _ = load_trained_model(config, model_dir)
    eval_files = resolve_files(config.data.eval_files, config.data.dir)
    records = first_records(eval_files, MAX_ROWS)
    return dict(case=case, config=config, schema=schema, model=model, export_path=export_path,
                model_base=os.path.dirname(export_path), eval_pattern=os.path.join(data_dir, config.data.eval_files),
                eval_files=eval_files, records=records, root=root,
                keys=[key_of(record, case.key_feature) for record in records],
                predictions=case.predict(model, schema, records))


def key_of(record: bytes, key_feature: str):
    return tf.train.Example.FromString(record).features.feature[key_feature].int64_list.value[0]


def read_lines(files: list[str]) -> list[dict]:
    return [json.loads(line) for path in files for line in open(path)]


@pytest.mark.parametrize("family", [pytest.param(name, marks=pytest.mark.slow)
                                    if name in FAMILY_CASES and FAMILY_CASES[name].slow else name
                                    for name in available()])
def test_beam_scores_equal_the_in_process_predictions(family, trained):
    if family not in FAMILY_CASES:
        pytest.fail(f"model family {family!r} is registered but has no small scoring case: add one to FAMILY_CASES "
                    f"in {__file__}, so that batch scoring is checked against its in-process predictions")
    run = trained(family)
    case, records = run["case"], run["records"]
    pattern = str(run["root"] / "scored_rows.tfrecord")
    with tf.io.TFRecordWriter(pattern) as writer:
        for record in records:
            writer.write(record)

    summary = pipeline.score(pattern, run["model_base"], str(run["root"] / "scores" / family), mode=case.mode,
                             key_feature=case.key_feature, batch_size=64)

    assert summary.rows_read == summary.rows_scored == len(records) and summary.rows_rejected == 0
    lines = read_lines(summary.output_files)
    row_of = {key: row for row, key in enumerate(run["keys"])}
    assert len(row_of) == len(records), "the case's key must be unique per row"
    if case.mode == "score":
        assert sorted(line[case.key_feature] for line in lines) == sorted(row_of)
        for name, predicted in run["predictions"].items():
            scored = np.array([line[name] for line in lines], np.float64)
            expected = np.array([predicted[row_of[line[case.key_feature]]] for line in lines], np.float64)
            assert np.abs(scored - expected).max() < 1e-5, name
    else:
        k = run["predictions"]["item_ids"].shape[1]
        assert len(lines) == k * len(records)
        for line in lines:
            row, rank = row_of[line[case.key_feature]], line["rank"]
            assert line["item_id"] == run["predictions"]["item_ids"][row, rank - 1]
            assert abs(line["score"] - run["predictions"]["scores"][row, rank - 1]) < 1e-5


def small_dnn_export(run: dict, export_base: str, name: str, drop: tuple, seed: int) -> str:
    """The dnn of ``run``'s config without the features ``drop``, built untrained with ``seed``."""
    config = run["config"]
    features = {key: value for key, value in config.features.items() if key not in drop}
    schema = FeatureSchema.from_config(features)
    tf.keras.utils.set_random_seed(seed)
    model = build_model(config, schema)
    model(schema.parse_examples(tf.constant(run["records"][:2]), with_labels=False, serving=True), training=False)
    export_saved_model(model, schema, export_base, name, version=seed)
    return os.path.join(export_base, name)


def test_champion_and_challenger_score_in_one_pass_each_rejecting_only_what_it_cannot_parse(trained):
    run = trained("dnn")
    export_base = str(run["root"] / "ab")
    champion = small_dnn_export(run, export_base, "dnn_small", drop=("item_price",), seed=3)
    challenger = small_dnn_export(run, export_base, "dnn_full", drop=(), seed=4)
    records = run["records"][:200]
    unpriced = []
    for record in records[:5]:
        example = tf.train.Example.FromString(record)
        del example.features.feature["item_price"]
        example.features.feature["example_id"].int64_list.value[0] += 1_000_000
        unpriced.append(example.SerializeToString())
    path = str(run["root"] / "ab_rows.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records + unpriced:
            writer.write(record)

    summary = pipeline.score(path, [saved_models.ModelSpec(champion, "champion"),
                                    saved_models.ModelSpec(challenger, "challenger")],
                             str(run["root"] / "ab_scores" / "ab"), output_format="parquet", batch_size=32)

    assert summary.rows_read == 205, "the input is read once for both models"
    assert summary.scored_by_model == {"champion/3": 205, "challenger/4": 200}
    table = pa.concat_tables([pq.read_table(file) for file in summary.output_files])
    assert len(table) == summary.rows_written == 405
    for spec, name, version in ((champion, "champion", 3), (challenger, "challenger", 4)):
        signature = tf.saved_model.load(os.path.join(spec, str(version))).signatures["serving_examples"]
        scored = [row for row in table.to_pylist() if (row["model_name"], row["model_version"]) == (name, version)]
        good = records + unpriced if name == "champion" else records
        expected = dict(zip((key_of(r, "example_id") for r in good),
                            signature(inputs=tf.constant(good))["score"].numpy()))
        assert sorted(row["example_id"] for row in scored) == sorted(expected)
        assert max(abs(row["score"] - expected[row["example_id"]]) for row in scored) < 1e-6
    letters = read_lines(summary.dead_letter_files)
    assert sorted(letter["key"] for letter in letters) == sorted(key_of(r, "example_id") for r in unpriced)
    assert {(letter["model_name"], letter["model_version"], letter["reason"]) for letter in letters} == {
        ("challenger", 4, "feature 'item_price' is missing (the model parses one float32)")}


def test_parquet_rows_with_sequences_score_like_their_examples(trained):
    run = trained("dnn")
    schema, records = run["schema"], run["records"]
    columns: dict[str, list] = {"example_id": []}
    for feature in schema.serving_inputs:
        columns[feature.name] = []
    for record in records:
        features = tf.train.Example.FromString(record).features.feature
        for name, values in columns.items():
            value = features[name]
            items = list(getattr(value, value.WhichOneof("kind")).value) if value.WhichOneof("kind") else []
            is_sequence = name in schema.input_signature() and isinstance(schema[name], SequenceFeature)
            values.append(items if is_sequence else items[0])
    path = str(run["root"] / "rows.parquet")
    pq.write_table(pa.table(columns), path, row_group_size=150)

    summary = pipeline.score(path, run["model_base"], str(run["root"] / "parquet_scores" / "dnn"),
                             input_format="parquet", batch_size=100)

    lines = read_lines(summary.output_files)
    row_of = {key: row for row, key in enumerate(run["keys"])}
    assert sorted(line["example_id"] for line in lines) == sorted(row_of)
    assert max(abs(line["score"] - run["predictions"]["score"][row_of[line["example_id"]]]) for line in lines) < 1e-5


def test_rows_whose_aligned_sequences_differ_in_length_are_dead_letters_naming_both(trained):
    """A row whose categories do not line up with its items (here the last two dropped) was scored, each
    item paired with another item's category; now it goes to the dead letters and its neighbours score."""
    run = trained("din")
    records = run["records"][:40]
    path, damaged = str(run["root"] / "misaligned.tfrecord"), set()
    with tf.io.TFRecordWriter(path) as writer:
        for row, record in enumerate(records):
            example = tf.train.Example.FromString(record)
            categories = example.features.feature["hist_category"].int64_list.value
            if row % 4 == 1 and len(categories) >= 3:
                del categories[-2:]
                damaged.add(run["keys"][row])
            writer.write(example.SerializeToString())
    assert damaged

    summary = pipeline.score(path, run["model_base"], str(run["root"] / "misaligned_scores" / "din"), batch_size=16)

    dead = read_lines(summary.dead_letter_files)
    assert {line["key"] for line in dead} == damaged
    assert {line["reason"] for line in dead} == {
        "sequence feature 'hist_category' must hold as many values as 'hist_item_id' in every row (it is "
        "aligned_with it, one value per event)"}
    scored = {line["example_id"] for line in read_lines(summary.output_files)}
    assert scored == set(run["keys"][:len(records)]) - damaged


@pytest.mark.slow  # starts a model server process
@pytest.mark.parametrize("family", ["din", "dien"])
def test_grpc_scores_of_behaviour_histories_equal_the_in_process_predictions(family, trained, tmp_path):
    """The raw padded histories (``serving_default``) and the serialized Examples (``serving_examples``) of the
    trained model's eval rows, sent to ``tfrecsys-serve`` over the official gRPC stub, score as in process."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tests.conftest import served_model

    run = trained(family)
    records = run["records"][:64]
    raw = run["schema"].parse_examples(tf.constant(records), with_labels=False, serving=True)
    requests = {"serving_default": {name: value.numpy() for name, value in raw.items()},
                "serving_examples": {"inputs": np.array(records, dtype=object)}}
    model_name = os.path.basename(run["model_base"])
    with served_model(run["model_base"], model_name, str(tmp_path)) as target, grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.signature_name = model_name, signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            scores = tf.make_ndarray(stub.Predict(request, timeout=60).outputs["score"])
            np.testing.assert_allclose(scores, run["predictions"]["score"][:64], atol=1e-5, err_msg=signature)
