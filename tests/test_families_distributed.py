"""Every model family under MirroredStrategy over two logical CPUs: it trains, its replicas stay identical, and
a two-replica step is the step a user expects (docs/distributed-training.md, "Model families under a
strategy").

* Families with no per-replica batch statistics: two replicas over a global batch take the one-replica step
  over the same batch (SGD, 3 steps; each family's own masks, sample weights and auxiliary losses in play).
* Families with batch moments (Dice in DIN/DIEN's activation units, batch normalisation of the multi-task
  families' dense inputs) take them per replica, as Keras' unsynchronised BatchNormalization and DeepCTR do:
  the two-replica step equals the average of the one-replica steps over each half of the batch.
* XLA paths inside the replica function: DIEN's compiled recurrence, HSTU's compiled attention (ranking and
  retrieval) are called by each replica's step.
* Packed embedding tables (``model.fused_embeddings``) under the strategy train as one variable per table.
* DEFUSE's streaming loop scores and trains the same days on two replicas as on one device.

Logical devices must be configured before TensorFlow starts, so the checks run in a fresh process
(``python -m tests.test_families_distributed fast|slow <output.json>``) that writes its findings as JSON; the
tests read them. The ``fast`` group (make test: the fixes' checks, Dice, packed tables; ~35 CPU-seconds) and
the ``slow`` one (make test-slow: every other family; ~2 CPU-minutes) are one process each.

Last, real two-worker runs (MultiWorkerMirroredStrategy) of tfrecsys-train for DIEN, MMoE with packed tables
and SIM with its per-user history store (slow).
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from tests.sim_cases import SMALL_MODEL as SMALL_SIM_MODEL
from tests.sim_cases import SMALL_SIM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
ROWS = 16          # the global batch: 8 rows per replica
STEPS = 3
LEARNING_RATE = 0.1
# SGD keeps a gradient's rounding in the weights at its own size (Adam's first steps, g / |g|, would turn a
# float32 rounding of a near-zero gradient into a step of the learning rate).
SMALL_MULTITASK = {"model.tower_units": (4,), "model.position_tower.position_dropout": 0.0}
SMALL_HSTU = {"features.item_id.num_buckets": 50, "features.item_id.embedding_dim": 8, "model.num_blocks": 1,
              "model.dropout": 0.0}
SMALL_GENERATIVE = {**SMALL_HSTU, "model.num_sampled": 8, "features.hist_item_id.max_len": 6,
                    "features.hist_timestamp.max_len": 6, "features.next_item_id.max_len": 6}
SMALL_HSTU_RANKING = {**SMALL_HSTU, "model.hidden_units": (4,), "model.num_heads": 2,
                      **{f"features.{name}.max_len": 6 for name in ("hist_item_id", "hist_action", "hist_timestamp")}}
# Configs whose step must be the one-replica step: (config file, overrides). Dropout is off (each replica
# draws its own mask).
MMOE_PACKED = ("mmoe.py:simulator", {**SMALL_MULTITASK, "model.expert_units": (8,), "model.fused_embeddings": True})
FAST_SAME_STEP = {
    "hstu_ranking_xla": ("hstu_ranking_simulator.py", {**SMALL_HSTU_RANKING, "model.hstu.attention_path": "xla"}),
}
SLOW_SAME_STEP = {
    "shared_bottom": ("shared_bottom.py:simulator", {**SMALL_MULTITASK, "model.bottom_units": (8,)}),
    "ple": ("ple.py:simulator", {**SMALL_MULTITASK, "model.expert_units": (8,)}),
    "esmm": ("esmm.py:simulator", SMALL_MULTITASK),
    "esm2": ("esm2_simulator.py", SMALL_MULTITASK),
    "dnn_position_tower": ("dnn_position_bias_simulator.py", {"model.hidden_units": (8,),
                                                              "model.position_tower.position_dropout": 0.0}),
    "sim": ("sim_simulator.py", {**SMALL_SIM, "model.attention_activation": "prelu"}),
    "defuse": ("defuse_simulator.py", {"model.hidden_units": (8,)}),
}
# Retrieval families that sample their negatives per replica (each replica draws its own): they must train
# and keep their replicas identical; the step cannot be the one-replica step.
SAMPLED = {
    "hstu_retrieval_xla": ("hstu_simulator.py", {**SMALL_GENERATIVE, "model.hstu.attention_path": "xla"}),
    "sasrec": ("sasrec_simulator.py", SMALL_GENERATIVE),
}


# In the subprocess ----------------------------------------------------------------------------------------

def _two_replicas():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _config_model(config_file: str, overrides: dict):
    """``(build, schema, batch)``: a builder of the config's model (corpus tables made up for retrieval), its
    schema and a parsed global batch of synthetic rows."""
    import tensorflow as tf

    from tests.serving_dnn import synthetic_examples
    from tests.test_generative import _Tables
    from tfrecsys.config import load_config
    from tfrecsys.features.schema import FeatureSchema
    from tfrecsys.models import build_model

    config = load_config(os.path.join(REPO, "configs", config_file))
    for key, value in overrides.items():  # new leaves too (model.fused_embeddings, a dense feature)
        *parents, leaf = key.split(".")
        block = config
        for part in parents:
            block = block[part]
        block[leaf] = value
    schema = FeatureSchema.from_config(config.features)
    tables = _Tables(SMALL_HSTU["features.item_id.num_buckets"]) if config.model.name == "generative" else None
    batch = schema.split_labels(schema.parse_examples(tf.constant(synthetic_examples(schema, ROWS, seed=3))))
    return (lambda: build_model(config, schema, tables)), schema, batch


class Run:
    """A model built (seed 0) and compiled with SGD inside ``strategy``'s scope, its variables created as the
    train loop creates them; ``fit(batch, steps)`` trains on ``steps`` copies of one global batch."""

    def __init__(self, strategy, build, schema, jit_compile: bool = False):
        import tensorflow as tf

        from tfrecsys.train.loop import create_variables

        self.strategy = strategy
        with strategy.scope():
            tf.keras.utils.set_random_seed(0)
            self.model = build()
            # steps_per_execution 2: the train loop's own multi-step function (tfrecsys.models.execution).
            self.model.compile(optimizer=tf.keras.optimizers.SGD(LEARNING_RATE), steps_per_execution=2,
                               jit_compile=jit_compile)
            create_variables(self.model, schema)
        self.initial = self.model.get_weights()

    def fit(self, batch, steps: int = STEPS) -> dict:
        import tensorflow as tf

        self.model.set_weights(self.initial)
        history = self.model.fit(tf.data.Dataset.from_tensors(batch).repeat(steps), epochs=1, verbose=0)
        return {"loss": float(history.history["loss"][-1]), "weights": self.model.get_weights()}

    def replicas_identical(self) -> bool:
        """Whether every replica holds the same value of every variable the replicas keep in sync (ON_READ
        variables, such as batch moments' moving averages, are each replica's own)."""
        import tensorflow as tf

        for variable in self.model.variables:
            if variable.synchronization == tf.VariableSynchronization.ON_READ:
                continue
            values = [v.numpy() for v in self.strategy.experimental_local_results(variable)]
            if len(values) != self.strategy.num_replicas_in_sync:
                return False
            if not all(np.array_equal(values[0], v) for v in values[1:]):
                return False
        return True


def _largest_difference(a: list, b: list) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def _xla_call_sites(model) -> int:
    """How many calls of XLA-compiled functions (``_XlaMustCompile``) the model's train function makes, through
    every function it calls: one per replica for each compiled layer call."""
    # Private, pinned with TF 2.16: the train function's traced graph (it is traced once).
    concrete = model.train_tf_function._list_all_concrete_functions_for_serialization()[0]
    library = {f.signature.name: f for f in concrete.graph.as_graph_def().library.function}
    compiled = {name for name, f in library.items() if f.attr["_XlaMustCompile"].b}

    def calls(nodes) -> int:
        count = 0
        for node in nodes:
            for attr in ("f", "body", "cond", "then_branch", "else_branch"):
                target = node.attr[attr].func.name if attr in node.attr else ""
                if target in compiled:
                    count += 1
                elif target in library:
                    count += calls(library[target].node_def)
        return count

    return calls(concrete.graph.as_graph_def().node)


def _evaluate(model, batch) -> dict:
    import tensorflow as tf

    return {name: float(value) for name, value in
            model.evaluate(tf.data.Dataset.from_tensors(batch), return_dict=True, verbose=0).items()}


def _same_step(one, two, build, schema, batch, evaluate: bool = False, jit_compile: bool = False) -> dict:
    """Both runs' 3 steps; with ``evaluate``, also both trained models' metrics on the batch (every task's,
    and the model's own: GAUC, full-corpus recall), which the replicas' partial counts must add up to;
    ``jit_compile``: the whole step XLA-compiled (``--jit_compile``)."""
    single, mirrored = Run(one, build, schema, jit_compile), Run(two, build, schema, jit_compile)
    a, b = single.fit(batch), mirrored.fit(batch)
    out = {"loss_one": a["loss"], "loss_two": b["loss"], "difference": _largest_difference(a["weights"], b["weights"]),
           "moved": _largest_difference(a["weights"], single.initial),
           "replicas_identical": mirrored.replicas_identical(),
           "xla_calls": [_xla_call_sites(single.model), _xla_call_sites(mirrored.model)]}
    if evaluate:
        out["evaluation"] = [_evaluate(single.model, batch), _evaluate(mirrored.model, batch)]
    return out


def _halves(batch):
    import tensorflow as tf

    half = ROWS // 2
    return [tf.nest.map_structure(lambda t: t[start:start + half], batch) for start in (0, half)]


def _per_replica_moments(one, two, build, schema, batch) -> dict:
    """One two-replica SGD step against the mean of the one-replica steps over each half (each half with its
    own moments) and against the one-replica step over the whole batch (the global moments)."""
    single, mirrored = Run(one, build, schema), Run(two, build, schema)
    whole, step = single.fit(batch, steps=1), mirrored.fit(batch, steps=1)
    halves = [single.fit(half, steps=1)["weights"] for half in _halves(batch)]
    mean_of_halves = [(x + y) / 2 for x, y in zip(*halves)]
    return {"to_mean_of_halves": _largest_difference(step["weights"], mean_of_halves),
            "to_whole_batch": _largest_difference(step["weights"], whole["weights"]),
            "moved": _largest_difference(whole["weights"], single.initial),
            "replicas_identical": mirrored.replicas_identical(), "loss_two": step["loss"]}


def _sequence_model(kind: str, equal_halves: bool, **options):
    """DIN or DIEN on tests/test_din_dien.py's tiny schema (DIEN with its sampled-negative history, so the
    auxiliary loss reads no other row of the batch) and a global batch of two halves, each with the lengths
    ``6 4 1 0 5 3 2 6``; with ``equal_halves`` False the second half's histories are cut to 2 behaviours, so
    the replicas hold different numbers of valid behaviours (DIEN's auxiliary loss is a mean over them)."""
    import tensorflow as tf

    from tests.test_din_dien import HISTORY, NEGATIVES, SCHEMA, TASKS, _batch
    from tfrecsys.models.dien import DIEN
    from tfrecsys.models.din import DIN

    first, second = _batch(8, seed=0), _batch(8, seed=1)
    if not equal_halves:
        second["hist_item_id_length"] = tf.minimum(second["hist_item_id_length"], 2)
    features = {name: tf.concat([first[name], second[name]], 0) for name in first}
    labels = {"click": tf.constant(np.random.default_rng(2).integers(0, 2, ROWS), tf.float32)}
    if kind == "din":
        features = {k: v for k, v in features.items() if k not in NEGATIVES}

        def build():
            return DIN(SCHEMA, TASKS, history=HISTORY, attention_units=(8,), hidden_units=(8,), **options)
    else:
        def build():
            return DIEN(SCHEMA, TASKS, history=HISTORY, negative_history=NEGATIVES, attention_units=(8,),
                        hidden_units=(8,), **options)
    return build, SCHEMA, (features, labels)


def _same_labels_in_both_halves(model):
    """``(build, schema, batch)`` with the second half's labels those of the first: a masked task (CVR on
    clicks) then has as many rows in each half, so the mean of the halves' steps is the two-replica step."""
    import tensorflow as tf

    build, schema, (features, labels) = model
    half = ROWS // 2
    labels = {name: tf.concat([value[:half], value[:half]], 0) for name, value in labels.items()}
    return build, schema, (features, labels)


def _packed_against_per_table(two) -> dict:
    """mmoe with its tables packed by width and with one variable per table, the same initial values, 3 steps
    each on two replicas: every table row and every other weight alike."""
    from tests.test_fused_embeddings import copy_tables

    runs = {}
    for fused in (False, True):
        build, schema, batch = _config_model("mmoe.py:simulator", {**MMOE_PACKED[1],
                                                                  "model.fused_embeddings": fused})
        runs[fused] = Run(two, build, schema)
    per_table, packed = runs[False].model, runs[True].model
    copy_tables(per_table.embeddings, packed.embeddings)
    tables = [{v.ref() for v in m.embeddings.weights} for m in (per_table, packed)]
    others = [[v for v in m.weights if v.ref() not in t] for m, t in zip((per_table, packed), tables)]
    for source, target in zip(*others):
        target.assign(source)
    for run in runs.values():
        run.initial = run.model.get_weights()
        run.fit(batch)
    table_difference = max(float(np.abs(per_table.embeddings.table_slice(name).values().numpy()
                                        - packed.embeddings.table_slice(name).values().numpy()).max())
                           for name in per_table.embeddings.table_names)
    return {"tables": table_difference,
            "others": _largest_difference([v.numpy() for v in others[0]], [v.numpy() for v in others[1]]),
            "variables": [len(per_table.embeddings.weights), len(packed.embeddings.weights)],
            "replicas_identical": runs[True].replicas_identical()}


def _defuse_streaming(one, two, root: str) -> dict:
    """DEFUSE trained in streaming mode (tfrecsys.train.streaming: pretraining days, then each day scored by
    the model of the days before and trained on), on a small delayed-feedback stream, once per strategy."""
    import importlib.util

    from tfrecsys.data.simulators import write_from_config
    from tfrecsys.train.loop import train_and_evaluate

    spec = importlib.util.spec_from_file_location("defuse_config", os.path.join(REPO, "configs", "defuse_simulator.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("defuse")
    root = tempfile.mkdtemp(prefix="defuse_", dir=root)  # fresh: a model directory left over would resume
    config.data.dir = os.path.join(root, "data")
    simulator = config.data.simulator
    simulator.num_clicks, simulator.days, simulator.pretrain_days = 3000, 5, 2
    simulator.num_users, simulator.num_items = 100, 100
    config.train.pretrain_windows = 2
    config.model.hidden_units, config.model.auxiliary_hidden_units = (8,), (4,)
    write_from_config(simulator, config.data.dir)
    import tensorflow as tf

    class Replicas(tf.keras.callbacks.Callback):
        seen = set()

        def on_train_begin(self, logs=None):
            self.seen.add(self.model.distribute_strategy.num_replicas_in_sync)

    out = {}
    for name, strategy in (("one", one), ("two", two)):
        model_dir = os.path.join(root, f"defuse_{name}")
        replicas = Replicas()
        replicas.seen = set()
        train_and_evaluate(config, model_dir, strategy=strategy, verbose=0, callbacks=[replicas])
        with open(os.path.join(model_dir, "streaming_metrics.json")) as f:
            summary = json.load(f)
        out[name] = {"replicas": sorted(replicas.seen), "windows": [w["window"] for w in summary["windows"]],
                     "windows_trained": summary["windows_trained"], "step": summary["step"],
                     "cvr": summary["row_weighted_average"]["cvr"]}
    return out


def _jit_compile_refused(two, root: str) -> str:
    """The train loop's error for ``--jit_compile`` on two local replicas (raised before any data is read)."""
    from tfrecsys.config import load_config
    from tfrecsys.train.loop import train_and_evaluate

    config = load_config(os.path.join(REPO, "configs", "dnn_simulator.py"), {"data.dir": os.path.join(root, "none")})
    try:
        train_and_evaluate(config, os.path.join(root, "jit_model"), strategy=two, verbose=0, jit_compile=True)
    except ValueError as error:
        return str(error)
    return ""


def _jit_compile_on_local_replicas(two) -> str:
    """What TF 2.16 does with a whole XLA-compiled step (Keras' own train function, steps_per_execution 1) on
    two local replicas: the error the train loop's refusal stands for, or "" once it trains."""
    import tensorflow as tf

    build, schema, batch = _config_model(*MMOE_PACKED)
    with two.scope():
        model = build()
        model.compile(optimizer=tf.keras.optimizers.SGD(LEARNING_RATE), jit_compile=True)
    try:
        model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), verbose=0)
    except tf.errors.InvalidArgumentError as error:
        return error.message
    return ""


# Families trained under a mixed precision policy on two replicas: DIN (Dice, GAUC), DEFUSE (PR-AUC, calibration,
# its auxiliary tower) and HSTU ranking (float32 towers, the XLA attention, its LayerNorms).
MIXED_PRECISION = {
    "din": ("din_simulator.py", {"model.attention_units": (8,), "model.hidden_units": (8,)}),
    "defuse": SLOW_SAME_STEP["defuse"],
    "hstu_ranking_xla": FAST_SAME_STEP["hstu_ranking_xla"],
}


def _mixed_precision(two, policy: str, config_file: str, overrides: dict) -> dict:
    """3 steps of the config's model built under ``policy`` on two replicas (Keras' LossScaleOptimizer under
    mixed_float16, whose dynamic scale skips a step whose gradients are not finite)."""
    from tfrecsys.train.strategy import precision_policy

    try:  # an error fails this check's test only, not the whole group's process
        with precision_policy(policy):
            build, schema, batch = _config_model(config_file, overrides)
            run = Run(two, build, schema)
            fitted = run.fit(batch)
    except Exception as error:  # noqa: BLE001
        return {"error": f"{type(error).__name__}: {error}"[:2000]}
    return {"loss": fitted["loss"], "moved": _largest_difference(fitted["weights"], run.initial),
            "finite": all(bool(np.all(np.isfinite(w))) for w in fitted["weights"]),
            "replicas_identical": run.replicas_identical(),
            "variable_dtypes": sorted({v.dtype.name for v in run.model.variables if v.dtype.is_floating}),
            "output_dtypes": sorted({v.dtype.name for v in run.model(batch[0], training=False).values()})}


def _steps_per_execution(one, two) -> list:
    """The train loop's steps per call for a config's 5, on one device and on the two local replicas."""
    from tfrecsys.train.loop import steps_per_execution

    out = []
    for strategy in (one, two):
        with strategy.scope():
            out.append(steps_per_execution(5))
    return out


def _checks(group: str, one, two, root: str) -> dict:
    """The checks of ``group``: ``fast`` (make test) or ``slow`` (make test-slow)."""
    result = {"replicas": two.num_replicas_in_sync}
    if group == "fast":
        result["dien_prelu"] = _same_step(one, two, *_sequence_model("dien", False, attention_activation="prelu"))
        result["din_dice"] = _per_replica_moments(one, two, *_sequence_model("din", True))
        result["hstu_ranking_xla"] = _same_step(one, two, *_config_model(*FAST_SAME_STEP["hstu_ranking_xla"]))
        result["packed_against_per_table"] = _packed_against_per_table(two)
        result["jit_compile_refused"] = _jit_compile_refused(two, root)
        for name, case in MIXED_PRECISION.items():
            result[f"mixed_bfloat16_{name}"] = _mixed_precision(two, "mixed_bfloat16", *case)
        result["mixed_float16_hstu_ranking_xla"] = _mixed_precision(two, "mixed_float16",
                                                                    *MIXED_PRECISION["hstu_ranking_xla"])
        result["steps_per_execution"] = _steps_per_execution(one, two)
        return result
    for name, (config_file, overrides) in SLOW_SAME_STEP.items():
        result[name] = _same_step(one, two, *_config_model(config_file, overrides), evaluate=True)
    result["mmoe_packed"] = _same_step(one, two, *_config_model(*MMOE_PACKED), evaluate=True)
    # din_simulator's task: AUC, logloss and GAUC grouped by user.
    result["din_prelu"] = _same_step(one, two, *_config_model(
        "din_simulator.py", {"model.attention_units": (8,), "model.hidden_units": (8,),
                             "model.attention_activation": "prelu"}), evaluate=True)
    result["dien_dice"] = _per_replica_moments(one, two, *_sequence_model("dien", True))
    result["jit_compile_on_local_replicas"] = _jit_compile_on_local_replicas(two)
    result["mmoe_dense_batch_norm"] = _per_replica_moments(one, two, *_same_labels_in_both_halves(_config_model(
        "mmoe.py:simulator", {**MMOE_PACKED[1], "model.dense_batch_norm": True,
                              "features.dense_signal": {"kind": "dense"}})))
    result["defuse_streaming"] = _defuse_streaming(one, two, root)
    for name, (config_file, overrides) in SAMPLED.items():
        build, schema, batch = _config_model(config_file, overrides)
        run, single = Run(two, build, schema), Run(one, build, schema)
        fitted = run.fit(batch)
        single.model.set_weights(fitted["weights"])  # the trained weights, evaluated on one device
        result[name] = {"loss": fitted["loss"], "replicas_identical": run.replicas_identical(),
                        "moved": _largest_difference(fitted["weights"], run.initial),
                        "xla_calls": _xla_call_sites(run.model),
                        "evaluation": [_evaluate(single.model, batch), _evaluate(run.model, batch)]}
    return result


def main(argv):
    group, output = argv[1:3]
    import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow loads; no op runs before the devices are set)

    two = _two_replicas()
    import tensorflow as tf

    result = _checks(group, tf.distribute.get_strategy(), two, os.path.dirname(os.path.abspath(output)))
    with open(output, "w") as f:
        json.dump(result, f, indent=1)


def _run_checks(group: str, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp(f"families_mirrored_{group}") / "result.json"
    process = subprocess.run([sys.executable, "-m", "tests.test_families_distributed", group, str(output)],
                             cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert process.returncode == 0, process.stderr[-6000:]
    return json.loads(output.read_text())


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    return _run_checks("fast", tmp_path_factory)


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    return _run_checks("slow", tmp_path_factory)


# The tests ------------------------------------------------------------------------------------------------

def assert_same_step(check: dict) -> None:
    """Two replicas end 3 SGD steps where one replica ends them over the same global batches (measured: at
    most 3e-8 on any weight, float32 sums taken in another order), the replicas hold one value, and the
    steps moved the weights by far more than the tolerance."""
    assert np.isfinite(check["loss_two"]) and check["loss_two"] == pytest.approx(check["loss_one"], rel=1e-5)
    assert check["replicas_identical"]
    assert check["difference"] < 1e-5 and check["moved"] > 1e-3, check


def assert_per_replica_moments(check: dict) -> None:
    """One two-replica step is the mean of the one-replica steps over each half, each with its own batch
    moments (measured: 6e-8), and not the step with the global batch's moments (3.6e-5 for DIN's Dice)."""
    assert np.isfinite(check["loss_two"]) and check["replicas_identical"]
    assert check["to_mean_of_halves"] < 1e-6 and check["moved"] > 1e-3, check
    assert check["to_whole_batch"] > 10 * check["to_mean_of_halves"], check


def assert_xla_in_each_replica(check: dict) -> None:
    """The two-replica train function calls the compiled functions once per replica for every call the
    one-replica function makes."""
    one, two = check["xla_calls"]
    assert one > 0 and two == 2 * one, check


def test_dien_takes_the_one_device_step_with_its_auxiliary_loss_and_compiled_recurrence(fast):
    """DIEN (PReLU attention: no batch moments) with its auxiliary loss over sampled negatives, the replicas
    holding different numbers of valid behaviour pairs: the auxiliary loss is the mean over the global
    batch's pairs (tfrecsys.losses.replicas; before, the mean of each replica's mean: 1.7e-3 off after 3
    steps), and the XLA-compiled GRU loops run inside each replica's step."""
    assert fast["replicas"] == 2
    assert_same_step(fast["dien_prelu"])
    assert_xla_in_each_replica(fast["dien_prelu"])


def test_dice_takes_its_batch_moments_per_replica(fast):
    assert_per_replica_moments(fast["din_dice"])


def test_hstu_ranking_takes_the_one_device_step_with_its_history_loss_and_xla_attention(fast):
    """hstu_ranking's history-label loss is a mean over the global batch's valid history positions (before:
    the mean of the replicas' means, 8.6e-3 off after 3 steps); its XLA attention path runs in each replica."""
    assert_same_step(fast["hstu_ranking_xla"])
    assert_xla_in_each_replica(fast["hstu_ranking_xla"])


def test_packed_tables_train_as_one_variable_per_table_under_the_strategy(fast):
    packed = fast["packed_against_per_table"]
    assert packed["variables"][1] < packed["variables"][0]  # it is packed
    assert packed["replicas_identical"]
    assert packed["tables"] < 1e-6 and packed["others"] < 1e-6, packed


@pytest.mark.parametrize("run", [*(f"mixed_bfloat16_{name}" for name in MIXED_PRECISION),
                                 "mixed_float16_hstu_ranking_xla"])
def test_mixed_precision_trains_on_two_replicas(fast, run):
    """The GPU set-up (--mixed_precision under MirroredStrategy): the steps move finite float32 weights, the
    replicas stay identical, the outputs stay float32. Failed before: metrics' AutoCastVariables (GAUC,
    PR-AUC) under the strategy, DEFUSE's bfloat16 auxiliary weights against its float32 logit, HSTU ranking's
    towers ignoring their float32 policy, and in float16 HSTU's LayerNorm gradient on padded rows (−½ ε^−1.5
    overflowed, so no step was ever taken)."""
    check = fast[run]
    assert "error" not in check, check["error"]
    assert np.isfinite(check["loss"]) and check["finite"] and check["replicas_identical"], check
    assert check["moved"] > 1e-3, check
    assert check["variable_dtypes"] in (["float32"], ["float32", "float64"]), check
    assert check["output_dtypes"] == ["float32"], check


def test_the_train_loop_takes_one_step_per_call_on_several_local_devices(fast):
    """With steps_per_execution > 1 on two local replicas, the all-gather of a sparse gradient whose row count
    differs by replica and step failed ("Shape mismatch in the collective instance") for every family with
    sequence features, float32 too: tests/test_mixed_precision_families.py trains them all through the loop
    on two replicas (slow)."""
    assert fast["steps_per_execution"] == [5, 1]


def test_jit_compile_on_several_local_devices_is_refused_with_the_way_out(fast):
    message = fast["jit_compile_refused"]
    assert "--jit_compile cannot run with 2 devices in one process" in message
    assert "--gpus_per_worker=1" in message and "recurrence_xla" in message


@pytest.mark.slow  # a second subprocess of ~2 CPU-minutes: make test-slow
@pytest.mark.parametrize("family", [*SLOW_SAME_STEP, "mmoe_packed", "din_prelu"])
def test_family_takes_the_one_device_step(slow, family):
    assert slow["replicas"] == 2
    assert_same_step(slow[family])


@pytest.mark.slow
@pytest.mark.parametrize("family", [*SLOW_SAME_STEP, "mmoe_packed", "din_prelu", *SAMPLED])
def test_evaluation_on_two_replicas_gives_the_one_device_metrics(slow, family):
    """Every task's metrics (AUC, logloss, GAUC, calibration…) and the model's own (full-corpus recall) over
    the batch split across two replicas: the replicas' partial counts add up to the one-device metrics."""
    one, two = slow[family]["evaluation"]
    assert sorted(one) == sorted(two) and len(one) > 1
    for name in one:
        assert np.isfinite(two[name])
        if family in SAMPLED and name.endswith("loss"):
            continue  # the sampled-softmax loss meets each replica's own negatives, in evaluation too
        assert two[name] == pytest.approx(one[name], abs=1e-4), (name, one, two)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dien_dice", "mmoe_dense_batch_norm"])
def test_batch_moments_are_per_replica(slow, family):
    """DIEN's Dice (in its attention unit) and the multi-task families' BatchNormalization of dense inputs
    (Keras' unsynchronised one)."""
    assert_per_replica_moments(slow[family])


@pytest.mark.slow
def test_jit_compile_still_fails_on_two_local_replicas(slow):
    """Why the train loop refuses --jit_compile there: TF 2.16's compiled step on two local devices reads
    replica 1's variables from device 0. When a TensorFlow upgrade makes this pass, lift the refusal
    (``tfrecsys.train.strategy.check_jit_compile``)."""
    message = slow["jit_compile_on_local_replicas"]
    assert "Trying to access resource" in message and "replica_1" in message, message


@pytest.mark.slow  # two TensorFlow processes
def test_jit_compile_on_two_cpu_workers_is_refused_at_once(tmp_path):
    """Without the refusal both workers failed in their first step: ``No registered 'CollectiveGatherV2'
    OpKernel for XLA_CPU_JIT`` (the embedding gradients' all-gather inside the compiled step)."""
    from tests.test_distributed import run_launcher

    command = [os.path.join(os.path.dirname(sys.executable), "tfrecsys-train"),
               f"--config={os.path.join(REPO, 'configs', 'dnn_simulator.py')}",
               f"--config.data.dir={tmp_path / 'none'}", f"--model_dir={tmp_path / 'model'}", "--jit_compile",
               "--connect_timeout_s=120"]
    status, log = run_launcher(command, 2, tmp_path / "launch.log", timeout_s=MULTI_WORKER_TIMEOUT_S, grace_s=5)
    assert status == 1, log[-5000:]
    assert "tfrecsys-train: error: --jit_compile cannot run on 2 CPU workers" in log, log[-5000:]
    assert "No registered 'CollectiveGatherV2'" not in log  # refused before any step


@pytest.mark.slow
def test_defuse_streams_the_same_days_on_two_replicas(slow):
    """DEFUSE's streaming loop under the strategy (its pretraining days, then each day scored by the model of
    the days before): the same days scored and trained, the same step count, and the same day-by-day CVR
    metrics as on one device (Adam; measured: equal to every printed digit). Stated tolerance: 1e-4."""
    one, two = slow["defuse_streaming"]["one"], slow["defuse_streaming"]["two"]
    assert one["replicas"] == [1] and two["replicas"] == [2]
    assert two["windows"] == one["windows"] and two["windows_trained"] == one["windows_trained"] > 2
    assert two["step"] == one["step"]
    assert two["cvr"]["auc"] == pytest.approx(one["cvr"]["auc"], abs=1e-4)
    assert two["cvr"]["logloss"] == pytest.approx(one["cvr"]["logloss"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(SAMPLED))
def test_retrieval_with_per_replica_negatives_trains(slow, family):
    check = slow[family]
    assert np.isfinite(check["loss"]) and check["replicas_identical"] and check["moved"] > 1e-3, check
    if family.endswith("_xla"):
        assert check["xla_calls"] > 0 and check["xla_calls"] % 2 == 0


# Two real workers (MultiWorkerMirroredStrategy) ----------------------------------------------------------

MULTI_WORKER_TIMEOUT_S = 300
# tfrecsys-train's own main, run with one more Keras callback that saves the worker's final weights (the
# chief's checkpoint shows only its own): the flags, the strategy from TF_CONFIG, the loop and the export are
# the binary's.
TRAIN_WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tfrecsys
    from tfrecsys.train import loop
    out_dir = sys.argv.pop(1)
    train_and_evaluate = loop.train_and_evaluate

    def with_saved_weights(*args, callbacks=(), **kwargs):
        import tensorflow as tf

        class SaveWeights(tf.keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
                np.savez(os.path.join(out_dir, f"worker-{index}.npz"), *self.model.get_weights())

        return train_and_evaluate(*args, callbacks=[*callbacks, SaveWeights()], **kwargs)

    loop.train_and_evaluate = with_saved_weights
    from tfrecsys.cli import train
    sys.argv[0] = "tfrecsys-train"
    train.run()
""")
# Short runs of small models on small simulated worlds: (config, the simulator's world shrunk, overrides).
MULTI_WORKER = {
    # DIN packs its valid behaviours on one device; on several replicas it looks up the padded history, and its
    # mini-batch aware L2 keeps every slot, so the replicas' sparse gradients have one length (the packed ones
    # failed TF 2.16's all-gather inside the multi-step call: "Shape mismatch in the collective instance").
    "din": ("din_simulator.py", {"num_users": 200, "events_per_user": 40},
            {"model.attention_units": (8,), "model.hidden_units": (8,), "model.mba_l2": 1e-4}),
    # Next-item retrieval looks up its positives on the padded label matrix on several replicas (same reason).
    "sasrec": ("sasrec_simulator.py", {"num_users": 150}, {}),
    "dien": ("dien_simulator.py", {"num_users": 200, "events_per_user": 40},
             {"model.attention_units": (8,), "model.hidden_units": (8,)}),
    "mmoe_packed": ("mmoe.py:simulator", {"num_users": 200, "num_requests": 1500},
                    {"model.tower_units": (4,), "model.expert_units": (8,), "model.fused_embeddings": True}),
    # The rows hold only the user and the time: the input pipeline cuts both histories from the per-user store.
    "sim": ("sim_simulator.py", {"num_users": 60, "events_per_user": 300, "warmup_events": 100},
            {**SMALL_SIM_MODEL, **{f"features.{name}.max_len": 60
                                   for name in ("long_item_id", "long_category", "long_timestamp")}}),
}
MULTI_WORKER_TRAIN = {"train.steps": 20, "train.steps_per_loop": 10, "train.steps_per_execution": 5,
                      "train.batch_size": 64, "train.eval_batch_size": 512, "train.shuffle_buffer": 1000}


CONFIG_FILE = """
from tfrecsys.config import load_config


def get_config():
    config = load_config({path!r})
    for key, value in {overrides!r}.items():
        *parents, leaf = key.split(".")
        block = config
        for part in parents:
            block = block[part]
        block[leaf] = value
    return config
"""


@pytest.mark.slow  # two TensorFlow processes each: make test-slow
@pytest.mark.parametrize("family", list(MULTI_WORKER))
def test_two_workers_train_to_identical_weights_and_the_chief_exports(family, tmp_path):
    """tfrecsys-train on 2 local workers (tfrecsys-launch's library, free ports on 127.0.0.1, a timeout):
    both workers end with the same weights, only the chief writes the checkpoints and the one export, and the
    export serves probabilities. The experiment is a config file of the user's own: the family's config with
    small sizes (and, for mmoe, its tables packed by width, a key its simulator config does not set)."""
    import tensorflow as tf

    from tests.test_distributed import load_weights, run_launcher
    from tfrecsys.config import load_config
    from tfrecsys.data.simulators import write_from_config
    from tfrecsys.export.trained import first_records
    from tfrecsys.train.loop import CHECKPOINT_SUBDIR

    config_file, world, overrides = MULTI_WORKER[family]
    data_dir = tmp_path / "data"
    settings = {**MULTI_WORKER_TRAIN, **overrides, "data.dir": str(data_dir)}
    config_path = tmp_path / "experiment.py"
    config_path.write_text(CONFIG_FILE.format(path=os.path.join(REPO, "configs", config_file), overrides=settings))
    config = load_config(str(config_path))
    config.data.simulator.update(world)
    write_from_config(config.data.simulator, str(data_dir))
    weights_dir, model_dir, export_base = tmp_path / "weights", tmp_path / "model", tmp_path / "export"
    weights_dir.mkdir()
    command = [sys.executable, "-c", TRAIN_WORKER, str(weights_dir), f"--config={config_path}",
               f"--model_dir={model_dir}", f"--export_base={export_base}", "--connect_timeout_s=120",
               "--heartbeat_timeout_s=30"]
    status, log = run_launcher(command, 2, tmp_path / "launch.log", timeout_s=MULTI_WORKER_TIMEOUT_S)
    assert status == 0, log[-6000:]

    first, second = (load_weights(str(weights_dir / f"worker-{i}.npz")) for i in range(2))
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # Only the chief wrote: one export (a retrieval model's query model and its candidate model beside it), one
    # version each, no scratch copies left in the model directory.
    name = config.export.model_name
    exported = sorted(os.listdir(export_base))
    assert exported in ([name], [name, f"{name}_candidates"]), exported
    assert all(os.listdir(export_base / model) == ["1"] for model in exported)
    assert log.count("exported SavedModel to") == 1 and "[worker 0] exported SavedModel to" in log
    assert [c for c in os.listdir(model_dir / CHECKPOINT_SUBDIR) if c.startswith(".")] == []
    assert tf.train.latest_checkpoint(str(model_dir / CHECKPOINT_SUBDIR)).endswith("ckpt-20")
    records = first_records(sorted(tf.io.gfile.glob(str(data_dir / "eval-*.tfrecord"))), 256)
    outputs = tf.saved_model.load(str(export_base / name / "1")).signatures["serving_examples"](
        inputs=tf.constant(records))
    assert outputs
    for output_name, output in outputs.items():
        assert output.shape[0] == len(records)
        if output_name == "item_ids":  # a retrieval model's top K: ids of its corpus
            assert output.dtype == tf.int64 and np.all(output.numpy() >= 0)
            continue
        assert np.all(np.isfinite(output.numpy()))
        if output_name != "scores":  # a ranker's probabilities (a retriever's scores are similarities)
            assert np.all((output.numpy() >= 0) & (output.numpy() <= 1))


if __name__ == "__main__":
    main(sys.argv)
