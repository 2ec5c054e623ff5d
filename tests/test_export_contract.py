"""The SavedModel contract, checked for every registered model family as ``saved_model_cli show --all``
reports it and as TF Serving loads it (a TF1 session over the MetaGraph, the loader tensorflow_model_server
uses).

Every family in ``tfrecsys.models.available()`` needs an entry in FAMILY_CASES: a small config and the
exporter that family uses. A family without one fails here on purpose, so no family ships unchecked.
"""

import contextlib
import dataclasses
import io
import json
import os
import re
from typing import Callable

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.tools import saved_model_cli
from tensorflow_serving.apis import prediction_log_pb2

from tests.serving_dnn import DNN_CONFIG, SMALL_DNN, export_ranking_model, synthetic_examples
from tests.sim_cases import SIM_CONFIG, SMALL_SIM
from tfrecsys.config import load_config
from tfrecsys.data.model_tables import ModelTables
from tfrecsys.export import saved_model as contract
from tfrecsys.features.schema import FeatureSchema, IdFeature, SequenceFeature
from tfrecsys.export.trained import export_model, first_records
from tfrecsys.models import available, build_model
from tfrecsys.models.tasks import tasks_from_config
from tfrecsys.serving import servables


def simulator_config(family: str) -> str:
    name = "esm2_simulator.py" if family == "esm2" else f"{family}.py:simulator"
    return os.path.join(os.path.dirname(DNN_CONFIG), name)


@dataclasses.dataclass(frozen=True)
class FamilyCase:
    config: str
    overrides: dict
    # (config path, overrides, export_base, model_name) → exported version path
    export: Callable[..., str] = export_ranking_model
    kind: str = "ranking"
    # A family whose export path another (fast) case already runs: checked by make test-all only.
    slow: bool = False


def export_two_tower(config_path: str, overrides: dict, export_base: str, model_name: str) -> str:
    """A small simulated retrieval world, the model built on it (untrained) and its own exporter."""
    from tfrecsys.data.simulators.retrieval import RetrievalWorldConfig, write_retrieval_world

    data_dir = os.path.join(export_base, "data")
    config = load_config(config_path, {**overrides, "data.dir": data_dir})
    write_retrieval_world(RetrievalWorldConfig.from_config(config.data.simulator), data_dir)
    schema = FeatureSchema.from_config(config.features)
    model = build_model(config, schema, ModelTables(config, schema))
    warmup = first_records(sorted(tf.io.gfile.glob(os.path.join(data_dir, config.data.eval_files))), 4)
    model(schema.parse_examples(tf.constant(warmup), with_labels=False, serving=True), training=False)
    return export_model(model, export_base, model_name, warmup_examples=warmup)


TWO_TOWER_CONFIG = os.path.join(os.path.dirname(DNN_CONFIG), "two_tower_simulator.py")
SMALL_TWO_TOWER = {"data.simulator.num_users": 60, "data.simulator.num_items": 40,
                   "data.simulator.events_per_user": 4.0, "model.hidden_units": (8,), "model.output_dim": 8,
                   "model.num_sampled": 8, "model.export_k": 5}
def export_simulated_retrieval(config_path: str, overrides: dict, export_base: str, model_name: str) -> str:
    """The config's simulator (``data.simulator.kind``) written small, the model built on it (untrained) and
    exported by its own exporter."""
    from tfrecsys.data.simulators import write_from_config

    data_dir = os.path.join(export_base, "data")
    config = load_config(config_path, {**overrides, "data.dir": data_dir})
    write_from_config(config.data.simulator, data_dir)
    schema = FeatureSchema.from_config(config.features)
    model = build_model(config, schema, ModelTables(config, schema))
    warmup = first_records(sorted(tf.io.gfile.glob(os.path.join(data_dir, config.data.eval_files))), 4)
    model(schema.parse_examples(tf.constant(warmup), with_labels=False, serving=True), training=False)
    return export_model(model, export_base, model_name, warmup_examples=warmup)


# HSTU trained on its XLA path: the export must still hold no XLA-compiled function (the padded path).
GENERATIVE_CONFIG = os.path.join(os.path.dirname(DNN_CONFIG), "hstu_simulator.py")
SMALL_GENERATIVE = {"data.simulator.num_users": 40, "data.simulator.num_items": 30,
                    "data.simulator.events_per_user": 40, "data.simulator.target_ctr": 0.3,
                    "model.num_blocks": 1, "model.num_sampled": 8, "model.export_k": 5,
                    "model.hstu.attention_path": "xla"}
LR_CONFIG = os.path.join(os.path.dirname(DNN_CONFIG), "logistic_regression_simulator.py")
DIN_CONFIG = os.path.join(os.path.dirname(DNN_CONFIG), "din_simulator.py")
DIEN_CONFIG = os.path.join(os.path.dirname(DNN_CONFIG), "dien_simulator.py")
SMALL_BEHAVIOUR_MODEL = {"model.attention_units": (4,), "model.hidden_units": (8,)}
SMALL_TOWERS = {"model.tower_units": (4,)}
SMALL_EXPERTS = {"model.expert_units": (8,)}
DEFUSE_CONFIG = os.path.join(os.path.dirname(DNN_CONFIG), "defuse_simulator.py")
HSTU_RANKING_CONFIG = os.path.join(os.path.dirname(DNN_CONFIG), "hstu_ranking_simulator.py")
FAMILY_CASES = {
    "dnn": FamilyCase(DNN_CONFIG, SMALL_DNN),
    "logistic_regression": FamilyCase(LR_CONFIG, {}),
    "two_tower": FamilyCase(TWO_TOWER_CONFIG, SMALL_TWO_TOWER, export_two_tower, kind="retrieval"),
    "generative": FamilyCase(GENERATIVE_CONFIG, SMALL_GENERATIVE, export_simulated_retrieval, kind="retrieval"),
    "din": FamilyCase(DIN_CONFIG, SMALL_BEHAVIOUR_MODEL),
    # dien and sim export through the same raw-history signature as din: make test-all only (make test's time).
    "dien": FamilyCase(DIEN_CONFIG, SMALL_BEHAVIOUR_MODEL, slow=True),
    "sim": FamilyCase(SIM_CONFIG, SMALL_SIM, slow=True),
    # Multi-task families share one model class and export path: ESMM on MMoE runs it in make test.
    "esmm": FamilyCase(simulator_config("esmm"), {**SMALL_TOWERS, **SMALL_EXPERTS, "model.backbone": "mmoe",
                                                  "model.num_experts": 2}),
    "shared_bottom": FamilyCase(simulator_config("shared_bottom"), {**SMALL_TOWERS, "model.bottom_units": (8,)},
                                slow=True),
    "mmoe": FamilyCase(simulator_config("mmoe"), {**SMALL_TOWERS, **SMALL_EXPERTS, "model.num_experts": 2},
                       slow=True),
    "ple": FamilyCase(simulator_config("ple"), {**SMALL_TOWERS, **SMALL_EXPERTS}, slow=True),
    "esm2": FamilyCase(simulator_config("esm2"), SMALL_TOWERS, slow=True),
    "defuse": FamilyCase(DEFUSE_CONFIG, {"model.hidden_units": (8,), "model.auxiliary_hidden_units": (4,)}),
    # Trained on the XLA path, exported on the padded one; ~30 s under load, so make test-all only.
    "hstu_ranking": FamilyCase(HSTU_RANKING_CONFIG, {"model.num_blocks": 1, "model.hidden_units": (4,),
                                                     "model.hstu.attention_path": "xla"}, slow=True),
}
CLI_DTYPES = {tf.int64: "DT_INT64", tf.string: "DT_STRING", tf.float32: "DT_FLOAT"}


def served_tasks(config) -> list[str]:
    """The tasks whose outputs are served: every task but the model's training heads (an auxiliary model's)."""
    model = build_model(config, FeatureSchema.from_config(config.features))
    return sorted(task.name for task in tasks_from_config(config.tasks) if task.name not in model.training_heads)


def parse_saved_model_cli(text: str) -> tuple[dict, set]:
    """``saved_model_cli show --all`` output → ({signature: {"inputs", "outputs", "method"}}, op names)."""
    signatures = {}
    for block in re.split(r"\nsignature_def\['", text)[1:]:
        name, body = block.split("']:", 1)
        entry = {"inputs": {}, "outputs": {}, "method": re.search(r"Method name is: (\S*)", body).group(1)}
        for kind, alias, dtype, shape, tensor in re.findall(
                r"(inputs|outputs)\['([^']+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (.+?)\s+name: (\S+)", body):
            entry[kind][alias] = (dtype, shape, tensor)
        signatures[name] = entry
    ops = re.search(r"contains the following ops: \{(.*?)\}", text, re.S)
    return signatures, set(re.findall(r"'(\w+)'", ops.group(1))) if ops else set()


def cli_shape(shape) -> str:
    dims = ["-1" if size is None else str(size) for size in shape]
    return f"({', '.join(dims)})" if len(dims) > 1 else f"({dims[0]})"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """family → (export path, config, saved_model_cli output), built on first use."""
    cache = {}

    def get(family: str):
        if family not in cache:
            case = FAMILY_CASES[family]
            base = str(tmp_path_factory.mktemp(family))
            path = case.export(case.config, case.overrides, base, family)
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                saved_model_cli._show_all(path)
            cache[family] = (path, load_config(case.config, case.overrides), output.getvalue())
        return cache[family]

    return get


def test_every_registered_family_has_a_contract_case():
    missing = sorted(set(available()) - set(FAMILY_CASES))
    assert not missing, (f"model families {missing} have no small export-contract case in "
                         f"tests/test_export_contract.py FAMILY_CASES: add a small config and its exporter")


def family_params(kind: str, only=None) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if case.slow else name
            for name, case in sorted(FAMILY_CASES.items()) if case.kind == kind and (only is None or only(case))]


def serves_sequences(case: FamilyCase) -> bool:
    """Whether the case's serving signature takes a padded sequence with its ``<name>_length``."""
    schema = FeatureSchema.from_config(load_config(case.config, case.overrides).features)
    return any(f.is_sequence and f.has_own_length for f in schema.serving_inputs)


RANKING_FAMILIES = family_params("ranking")
SEQUENCE_RANKING_FAMILIES = family_params("ranking", only=serves_sequences)
RETRIEVAL_FAMILIES = family_params("retrieval")


@pytest.mark.parametrize("family", RETRIEVAL_FAMILIES)
def test_retrieval_signatures_return_top_k_item_ids_and_scores(exports, family):
    """A retrieval query model answers Predict with the best K corpus items per query; it has no per-row
    output, so no classify/regress signature, and TF Serving runs it as saved (same answers as TF2)."""
    path, config, output = exports(family)
    signatures, ops = parse_saved_model_cli(output)
    schema = FeatureSchema.from_config(config.features)
    k = FAMILY_CASES[family].overrides["model.export_k"]
    with open(os.path.join(path, contract.METADATA_FILE)) as f:
        query_features = set(json.load(f)["retrieval"]["query_features"])
    query_inputs = {name: spec for name, spec in schema.input_signature(serving=True).items()
                    if name in query_features or name.removesuffix("_length") in query_features}
    assert set(signatures) == {"__saved_model_init_op", contract.SERVING_DEFAULT, contract.SERVING_EXAMPLES}
    default = signatures[contract.SERVING_DEFAULT]
    assert default["method"] == contract.PREDICT_METHOD
    assert {alias: info[:2] for alias, info in default["inputs"].items()} == {
        name: (CLI_DTYPES[spec.dtype], cli_shape(spec.shape.as_list())) for name, spec in query_inputs.items()}
    assert {alias: info[:2] for alias, info in default["outputs"].items()} == {
        "item_ids": ("DT_INT64", f"(-1, {k})"), "scores": ("DT_FLOAT", f"(-1, {k})")}
    assert signatures[contract.SERVING_EXAMPLES]["outputs"].keys() == default["outputs"].keys()
    assert not {op for op in ops if "Xla" in op} and contract.xla_compiled_functions(path) == {}
    rows = synthetic_examples(schema, 3, seed=2)
    features = {name: value for name, value in schema.parse_examples(
        tf.constant(rows), with_labels=False, serving=True).items() if name in query_inputs}
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        signature_def = tf.compat.v1.saved_model.load(session, ["serve"], path).signature_def[contract.SERVING_DEFAULT]
        feed = {signature_def.inputs[name].name: value.numpy() for name, value in features.items()}
        ids = session.run(signature_def.outputs["item_ids"].name, feed)
    loaded = tf.saved_model.load(path).signatures[contract.SERVING_DEFAULT](**features)
    np.testing.assert_array_equal(ids, loaded["item_ids"].numpy())
    assert np.all(np.diff(loaded["scores"].numpy(), axis=1) <= 0)  # best first
    servable = servables.load_servable(family, 1, path, enable_model_warmup=False)
    assert servables.replay_warmup_requests(servable) > 0


@pytest.mark.parametrize("family", RANKING_FAMILIES)
def test_signatures_as_saved_model_cli_shows_them(exports, family):
    path, config, output = exports(family)
    signatures, ops = parse_saved_model_cli(output)
    schema = FeatureSchema.from_config(config.features)
    task_names = served_tasks(config)

    default = signatures[contract.SERVING_DEFAULT]
    assert default["method"] == contract.PREDICT_METHOD
    expected_inputs = {name: (CLI_DTYPES[spec.dtype], cli_shape(spec.shape.as_list()))
                       for name, spec in schema.input_signature(serving=True).items()}
    assert {alias: info[:2] for alias, info in default["inputs"].items()} == expected_inputs
    not_served = {f.name for f in schema.features if f.training_only}
    assert not_served.isdisjoint(default["inputs"]), "labels and training-only features must not be inputs"
    assert {alias: info[:2] for alias, info in default["outputs"].items()} == {
        task: ("DT_FLOAT", "(-1)") for task in task_names}

    examples = signatures[contract.SERVING_EXAMPLES]
    assert examples["method"] == contract.PREDICT_METHOD
    assert {alias: info[:2] for alias, info in examples["inputs"].items()} == {"inputs": ("DT_STRING", "(-1)")}
    shared_input = examples["inputs"]["inputs"][2]
    for task in task_names:
        classify = signatures[contract.classify_signature(task)]
        regress = signatures[contract.regress_signature(task)]
        assert classify["method"] == "tensorflow/serving/classify"
        assert regress["method"] == "tensorflow/serving/regress"
        assert classify["inputs"] == regress["inputs"] == {"inputs": ("DT_STRING", "(-1)", shared_input)}
        assert {alias: info[:2] for alias, info in classify["outputs"].items()} == {"scores": ("DT_FLOAT", "(-1, 1)")}
        assert {alias: info[:2] for alias, info in regress["outputs"].items()} == {"outputs": ("DT_FLOAT", "(-1)")}
    assert not {op for op in ops if "Xla" in op}, f"serving graph has XLA ops: {ops}"
    assert contract.xla_compiled_functions(path) == {}


@pytest.mark.parametrize("family", RANKING_FAMILIES)
def test_tf_serving_session_runs_classify_and_regress_from_one_input(exports, family):
    """What MultiInference does in tensorflow_model_server: one Session.run of several Example signatures
    fed through their shared input tensor; the answers equal the TF2 signatures'."""
    path, config, _ = exports(family)
    schema = FeatureSchema.from_config(config.features)
    rows = synthetic_examples(schema, 5, seed=7)
    task_names = served_tasks(config)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], path)
        signature_defs = meta_graph.signature_def
        fetches = {}
        for task in task_names:
            fetches[f"classify_{task}"] = signature_defs[contract.classify_signature(task)].outputs["scores"].name
            fetches[f"regress_{task}"] = signature_defs[contract.regress_signature(task)].outputs["outputs"].name
        feed = signature_defs[contract.SERVING_EXAMPLES].inputs["inputs"].name
        session_outputs = session.run(fetches, {feed: rows})
    loaded = tf.saved_model.load(path)
    by_examples = loaded.signatures[contract.SERVING_EXAMPLES](inputs=tf.constant(rows))
    features = schema.parse_examples(tf.constant(rows), with_labels=False, serving=True)
    by_features = loaded.signatures[contract.SERVING_DEFAULT](**features)
    for task in task_names:
        np.testing.assert_allclose(session_outputs[f"classify_{task}"][:, 0], by_examples[task].numpy(), atol=1e-6)
        np.testing.assert_allclose(session_outputs[f"regress_{task}"], by_examples[task].numpy(), atol=1e-6)
        np.testing.assert_allclose(by_features[task].numpy(), by_examples[task].numpy(), atol=1e-6)


def known_id_and_rows(vocab) -> tuple | None:
    """(an id inside the vocabulary, its row, the OOV row of an unseen id: 10**12 or b"never-seen"), or None
    for a hashed feature (no OOV row) or several vocabulary OOV rows (picked by a hash not recomputed here)."""
    if vocab.num_buckets is not None:
        known = min(7, vocab.num_buckets - 1)
        return known, known, vocab.num_buckets + 10**12 % vocab.num_oov
    if vocab.vocabulary is not None and vocab.num_oov == 1:
        entries = vocab.vocabulary if isinstance(vocab.vocabulary, tuple) else open(vocab.vocabulary).read().split()
        index = min(3, len(entries) - 1)
        return entries[index], index + 1, 0  # OOV row first, then the vocabulary in order
    return None


@pytest.mark.parametrize("family", RANKING_FAMILIES)
def test_unknown_ids_read_the_oov_row_and_known_ids_their_own(exports, family):
    """Lookup and hashing live in the SavedModel: a client sends raw ids, and one never seen in training
    lands in an OOV row instead of failing the request.

    For each id and sequence input (set with every input of its table): rows whose id is unseen and rows
    whose id is a known ``k`` score differently, and alike once the OOV row of the table holds row ``k``'s values. So the unseen id reads
    the OOV row (nothing else changed) and ``k`` reads row ``k`` (not the OOV row, not a neighbour)."""
    path, config, _ = exports(family)
    schema = FeatureSchema.from_config(config.features)
    base = {name: value.numpy() for name, value in schema.parse_examples(
        tf.constant(synthetic_examples(schema, 3, seed=1)), with_labels=False, serving=True).items()}
    loaded = tf.saved_model.load(path)  # owns the variables: the signature alone would see them deleted
    signature = loaded.signatures[contract.SERVING_DEFAULT]
    tables = {v.name: v for v in signature.variables}
    checked = []
    for feature in schema.serving_inputs:
        if not isinstance(feature, (IdFeature, SequenceFeature)) or not feature.embedded:  # raw: no table
            continue
        owner = schema[feature.table]
        rows = known_id_and_rows(owner.vocab)
        if rows is None:
            continue
        known, known_row, oov_row = rows
        matching = [v for name, v in tables.items() if name.endswith(f"/{owner.table}_embedding/embeddings:0")]
        assert len(matching) == 1, f"no single embedding table for {owner.table} among {sorted(tables)}"
        [table] = matching

        # Every input of the table takes the id: a model may read a feature only where it equals another of
        # the same table (SIM's hard search embeds the history behaviours of the target's category).
        same_table = [f for f in schema.serving_inputs if getattr(f, "embedded", False) and f.table == feature.table]

        def score_with(raw_id):
            features = dict(base)
            unseen_or_known = np.array(raw_id, dtype=object if owner.dtype == "string" else np.int64)
            for alike in same_table:
                features[alike.name] = np.full_like(base[alike.name], unseen_or_known)
                if isinstance(alike, SequenceFeature):  # every position valid, so every one is read
                    features[alike.length_name] = np.full_like(base[alike.length_name], alike.max_len)
            outputs = signature(**{name: tf.constant(value) for name, value in features.items()})
            return {task: value.numpy() for task, value in outputs.items()}

        unseen = b"never-seen" if owner.dtype == "string" else 10**12
        saved_oov_row = table[oov_row].numpy()
        by_unseen, by_known = score_with(unseen), score_with(known)
        assert any(np.any(by_unseen[t] != by_known[t]) for t in by_unseen), feature.name
        table[oov_row].assign(table[known_row])
        try:  # other inputs' random ids may be unseen too, so both sides are scored with the copied row
            by_known = score_with(known)
            for task, value in score_with(unseen).items():
                np.testing.assert_array_equal(value, by_known[task], err_msg=f"{feature.name} → {task}")
        finally:
            table[oov_row].assign(saved_oov_row)
        checked.append(feature.name)
    assert checked, "no id or sequence input with an OOV row to check"


@pytest.mark.parametrize("family", SEQUENCE_RANKING_FAMILIES)
def test_a_sequence_length_outside_its_padded_width_is_refused_naming_the_input(exports, family):
    """``<name>_length`` counts the valid leading entries of ``[batch, max_len]``: 0 and max_len are served,
    −1 and max_len + 1 fail the request with the input named (the masks would otherwise read every slot, or
    none, without a word)."""
    path, config, _ = exports(family)
    schema = FeatureSchema.from_config(config.features)
    sequences = [f for f in schema.serving_inputs if f.is_sequence and f.has_own_length]
    base = {name: value.numpy() for name, value in schema.parse_examples(
        tf.constant(synthetic_examples(schema, 2, seed=3)), with_labels=False, serving=True).items()}
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures[contract.SERVING_DEFAULT]
    for feature in sequences:
        for length, served in ((0, True), (feature.max_len, True), (-1, False), (feature.max_len + 1, False)):
            features = {**base, feature.length_name: np.array([length, 1], np.int64)}
            call = lambda: signature(**{name: tf.constant(value) for name, value in features.items()})  # noqa: E731
            if served:
                assert all(np.all(np.isfinite(v.numpy())) for v in call().values() if v.dtype.is_floating)
                continue
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=rf"serving input {feature.length_name} must hold values in "
                                     rf"\[0, {feature.max_len}\]"):
                call()


@pytest.mark.parametrize("family", RANKING_FAMILIES)
def test_warmup_requests_are_in_tf_serving_format_and_replay(exports, family):
    path, _, _ = exports(family)
    warmup = os.path.join(path, "assets.extra", contract.WARMUP_FILE)
    log_types = [prediction_log_pb2.PredictionLog.FromString(record).WhichOneof("log_type")
                 for record in tf.data.TFRecordDataset(warmup).as_numpy_iterator()]
    assert set(log_types) == {"predict_log", "classify_log", "regress_log"}
    servable = servables.load_servable(family, 1, path, enable_model_warmup=False)
    assert servables.replay_warmup_requests(servable) == len(log_types)


class JitScorer(tf.keras.Model):
    """A ranker whose scoring path is XLA-compiled: what TF Serving cannot run without experimental flags."""

    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1)

    @tf.function(jit_compile=True)
    def _score(self, x):
        return tf.sigmoid(tf.squeeze(self.dense(x), -1))

    def call(self, features, training=None):
        return {"score": self._score(tf.expand_dims(features["item_price"], -1))}


def test_export_refuses_a_serving_path_that_needs_xla(tmp_path):
    schema = FeatureSchema.from_config({"item_price": {"kind": "dense"}, "click": {"kind": "label"}})
    model = JitScorer()
    model({"item_price": tf.constant([0.5])})
    with pytest.raises(ValueError,
                       match=r"needs XLA to serve \(.*serving_default: .*__score.*--xla_cpu_compilation_enabled"):
        contract.export_saved_model(model, schema, str(tmp_path), "jit")
    assert os.listdir(tmp_path / "jit") == []  # the staging directory is gone, no version appeared
