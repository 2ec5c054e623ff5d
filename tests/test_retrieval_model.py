"""two_tower on the retrieval simulator: logQ beats uncorrected in-batch training, and the exported top-K
index answers over gRPC and in Beam batch scoring exactly as the trained model does in process.

One small world (500 users, 500 items, power-law popularity) and three short trainings are shared by the module.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import served_model
from tfrecsys.config import load_config
from tfrecsys.data.simulators.retrieval import RetrievalWorldConfig, write_retrieval_world
from tfrecsys.export.trained import export_trained, first_records, load_trained_model
from tfrecsys.serving.client import ServingClient
from tfrecsys.train.loop import train_and_evaluate

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "two_tower_simulator.py")
BIN = os.path.dirname(sys.executable)
USERS, ITEMS, HISTORY = 500, 500, 10
MODES = [("in_batch", "none"), ("in_batch", "table"), ("mixed", "streaming")]


def small_config(data_dir: str, **overrides):
    return load_config(CONFIG, {
        "data.dir": data_dir, "train.steps": 150, "train.steps_per_loop": 150, "train.batch_size": 256,
        "model.num_sampled": 64,
        "features.user_id": dict(kind="id", num_buckets=USERS, embedding_dim=32),
        "features.item_id": dict(kind="id", num_buckets=ITEMS, embedding_dim=32),
        "features.hist_item_id": dict(kind="sequence", shares="item_id", max_len=HISTORY), **overrides})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("retrieval_world"))
    metadata = write_retrieval_world(RetrievalWorldConfig(num_users=USERS, num_items=ITEMS, events_per_user=30,
                                                          history_len=HISTORY, seed=0), data_dir)
    return {"dir": data_dir, "metadata": metadata}


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    runs = {}
    for negatives, logq in MODES:
        model_dir = str(tmp_path_factory.mktemp(f"{negatives}_{logq}"))
        config = small_config(world["dir"], **{"model.negatives": negatives, "model.logq": logq})
        runs[negatives, logq] = {"config": config, "model_dir": model_dir,
                                 "metrics": train_and_evaluate(config, model_dir, verbose=0)}
    return runs


@pytest.mark.slow  # a quality bar over four trainings: make test-all
def test_logq_corrected_training_beats_uncorrected_in_batch_on_recall_at_50(world, trained):
    recall = {mode: run["metrics"]["retrieval"]["recall_at_50"] for mode, run in trained.items()}
    uncorrected = recall["in_batch", "none"]
    # Uncorrected in-batch softmax learns log P(item | user) − log p(item): popularity divided out.
    assert recall["in_batch", "table"] > uncorrected + 0.05, recall
    assert recall["mixed", "streaming"] > uncorrected + 0.05, recall
    assert max(recall.values()) <= world["metadata"]["oracle"]["recall_at_50"] + 0.02
    saved = json.load(open(os.path.join(trained["in_batch", "table"]["model_dir"], "eval_metrics.json")))
    assert saved["step"] == 150
    assert saved["retrieval"]["recall_at_50"] == pytest.approx(recall["in_batch", "table"])
    assert set(saved["retrieval"]) >= {"recall_at_10", "recall_at_100", "ndcg_at_10", "ndcg_at_50", "mrr"}


def _in_process_top_k(model, features, k):
    query = model.query_tower(features, training=False)
    scores, rows = tf.math.top_k(tf.matmul(query, model.corpus_embeddings(), transpose_b=True), k=k)
    return model.corpus.ids[rows.numpy()], scores.numpy()


@pytest.mark.slow  # end-to-end; make test covers the two_tower contract in test_export_contract.py and
# test_scoring_families.py
def test_export_round_trip_over_grpc_and_batch_scoring(world, trained, tmp_path):
    run = trained["mixed", "streaming"]
    export_base = str(tmp_path / "export")
    query_path = export_trained(run["config"], run["model_dir"], export_base)
    assert query_path == os.path.join(export_base, "two_tower", "1")
    assert sorted(os.listdir(export_base)) == ["two_tower", "two_tower_candidates"]
    assert os.listdir(os.path.join(export_base, "two_tower_candidates")) == ["1"]
    for path in (query_path, os.path.join(export_base, "two_tower_candidates", "1")):
        assert os.path.getsize(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")) > 0

    model, schema, _ = load_trained_model(run["config"], run["model_dir"])
    eval_file = os.path.join(world["dir"], "eval-00000-of-00001.tfrecord")
    records = first_records([eval_file], 64)
    parsed = schema.parse_examples(tf.constant(records), with_labels=False, serving=True)
    query_inputs = {name: parsed[name].numpy() for name in ("user_id", "hist_item_id", "hist_item_id_length")}
    expected_ids, expected_scores = _in_process_top_k(model, parsed, 100)

    loaded = tf.saved_model.load(query_path)
    signature_inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    assert sorted(signature_inputs) == sorted(query_inputs)   # item features and the reward are not inputs

    candidate_inputs = {"item_id": np.arange(20, dtype=np.int64), "item_category": model.corpus.features[
        "item_category"].numpy()[:20]}
    expected_embedding = model.candidate_tower(candidate_inputs, training=False).numpy()
    # One server for the pair, from a model config file as a TF Serving deployment would have it.
    models_config = tmp_path / "models.config"
    models_config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{os.path.join(export_base, name)}" model_platform: "tensorflow" }}\n'
        for name in ("two_tower", "two_tower_candidates")) + "}\n")
    with served_model(os.path.join(export_base, "two_tower"), "two_tower", tmp_path,
                      f"--model_config_file={models_config}") as target:
        with ServingClient(target) as client:
            served = client.predict("two_tower", query_inputs)
            from_examples = client.predict("two_tower", {"inputs": np.array(records, dtype=object)},
                                           signature_name="serving_examples")
            client.wait_until_available("two_tower_candidates", timeout_s=60)
            embedding = client.predict("two_tower_candidates", candidate_inputs)["embedding"]
    assert served["item_ids"].dtype == np.int64 and served["scores"].dtype == np.float32
    assert served["item_ids"].shape == (64, 100)
    np.testing.assert_array_equal(served["item_ids"], expected_ids)
    np.testing.assert_allclose(served["scores"], expected_scores, atol=1e-5)
    np.testing.assert_array_equal(from_examples["item_ids"], expected_ids)
    np.testing.assert_allclose(embedding, expected_embedding, atol=1e-6)

    from tfrecsys.scoring.pipeline import score

    summary = score(eval_file, os.path.join(export_base, "two_tower"), str(tmp_path / "scores" / "top"),
                    mode="retrieve", top_k=10)
    rows = [json.loads(line) for path in summary.output_files for line in open(path)]
    all_features = schema.parse_examples(tf.constant(first_records([eval_file], 10_000)), with_labels=False,
                                         serving=True)
    all_ids, _ = _in_process_top_k(model, all_features, 10)
    expected = {int(user): ids.tolist() for user, ids in zip(all_features["user_id"].numpy(), all_ids)}
    by_user = {}
    for row in sorted(rows, key=lambda r: (r["user_id"], r["rank"])):
        by_user.setdefault(row["user_id"], []).append(row["item_id"])
    assert by_user == expected

    again = export_trained(run["config"], run["model_dir"], export_base)
    assert again == os.path.join(export_base, "two_tower", "2")
    assert sorted(os.listdir(os.path.join(export_base, "two_tower_candidates"))) == ["1", "2"]


def test_config_errors_name_the_field(world):
    from tfrecsys.data.model_tables import ModelTables
    from tfrecsys.models import build_model
    from tfrecsys.features.schema import FeatureSchema

    def build(**overrides):
        config = small_config(world["dir"], **overrides)
        schema = FeatureSchema.from_config(config.features)
        return build_model(config, schema, ModelTables(config, schema))

    with pytest.raises(ValueError, match="config.model.negatives must be one of"):
        build(**{"model.negatives": "hard"})
    with pytest.raises(ValueError, match="config.model.logq must be one of"):
        build(**{"model.logq": "popularity"})
    with pytest.raises(ValueError, match="config.model.candidate_id 'user_id'"):
        build(**{"model.candidate_id": "user_id"})
    with pytest.raises(FileNotFoundError, match="no_such_corpus.tfrecord"):
        build(**{"data.candidates_file": "no_such_corpus.tfrecord"})
    with pytest.raises(ValueError, match="loss 'sampled_softmax'"):
        train_and_evaluate(small_config(world["dir"], **{"tasks.retrieval": dict(label="reward", loss="mse")}),
                           str(world["dir"]) + "-bad", verbose=0)


@pytest.mark.slow  # multi-process or end-to-end: make test-all
def test_binaries_prepare_data_and_train(tmp_path):
    data_dir, model_dir = str(tmp_path / "data"), str(tmp_path / "model")
    world = ["--config.data.simulator.num_users=200", "--config.data.simulator.num_items=300",
             "--config.data.simulator.events_per_user=10"]
    common = [f"--config={CONFIG}", f"--config.data.dir={data_dir}"]

    def run(binary, *args):
        result = subprocess.run([os.path.join(BIN, binary), *common, *args], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    assert "wrote simulated retrieval" in run("tfrecsys-simulate", *world)
    assert os.path.exists(os.path.join(data_dir, "item_frequency.tsv"))
    out = run("tfrecsys-train", f"--model_dir={model_dir}", "--config.train.steps=20",
              "--config.train.steps_per_loop=20", "--config.train.steps_per_execution=10",
              "--config.model.logq=streaming")
    assert "recall_at_50" in out
    assert glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-20*"))
