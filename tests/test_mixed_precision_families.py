"""Mixed precision (``--mixed_precision=mixed_float16`` / ``mixed_bfloat16``, docs/distributed-training.md,
"Mixed precision and XLA on GPUs"): the layers whose float32 constants do not survive 16 bits.

Each test builds the layer under the policy a GPU user trains with and feeds it the rows that broke it:
a constant that is finite in float32 and bfloat16 (8 exponent bits) can be ``inf`` in float16 (5 bits, largest
finite 65504)."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import tfrecsys  # noqa: F401,I001  (Keras 2 before TensorFlow: this file also runs as a script, below)
import tensorflow as tf

from tfrecsys.layers.search import ExactSearchUnit, SoftSearch, relevance_pooling
from tfrecsys.models import available
from tfrecsys.train.strategy import precision_policy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_REPLICA_TIMEOUT_S = 1200

POLICIES = ["mixed_float16", "mixed_bfloat16"]


@pytest.mark.parametrize("policy", POLICIES)
def test_sim_search_units_give_zeros_not_nan_for_a_row_with_nothing_selected(policy):
    """SIM's ESU and soft-search pooling masked padding with −1e9, which is −inf in float16: a row with no
    behaviour selected (an empty history, or no match of the target's category) softmaxed to NaN, and under
    mixed_float16 SIM's first step failed in GAUC's update on NaN scores."""
    rng = np.random.default_rng(0)
    selected = tf.constant(rng.normal(size=(3, 4, 6)), tf.float32)
    mask = tf.constant([[True, True, False, False], [False] * 4, [True] * 4])
    target = tf.constant(rng.normal(size=(3, 5)), tf.float32)
    with precision_policy(policy):
        unit = ExactSearchUnit(num_heads=2, head_dim=4)
        search = SoftSearch(top_k=2, projection_dim=4)
        compute = tf.as_dtype(unit.compute_dtype)
        heads = unit(tf.cast(selected, compute), mask, tf.cast(target, compute))
        _, _, relevance = search(tf.cast(selected, compute), mask, tf.cast(target, compute))
        pooled = relevance_pooling(tf.cast(selected, compute), mask, relevance)
    assert heads.dtype == compute and relevance.dtype == compute
    for name, value in (("ESU heads", heads), ("relevance pooling", pooled)):
        value = tf.cast(value, tf.float32).numpy()
        assert np.all(np.isfinite(value)), (name, value)
        np.testing.assert_array_equal(value[1], 0.0)  # nothing selected: zeros
        assert np.abs(value[0]).max() > 0 and np.abs(value[2]).max() > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_dice_trains_on_channels_of_small_or_zero_variance(policy):
    """DIN/DIEN's Dice under the policy, on a batch with a channel constant over the batch and on activations
    of small variance: finite outputs and gradients, the float32 layer's within 16-bit rounding. In float16
    ε = 1e-8 rounded to 0 (``0 · rsqrt(0) = NaN``) and the gradient's ``(Var + ε)^(−3/2)`` overflowed."""
    from tfrecsys.layers.activations import Dice

    rng = np.random.default_rng(0)
    constant_channel = rng.normal(size=(6, 3)).astype(np.float32)
    constant_channel[:, 1] = 0.5
    weights = tf.range(6.0)[:, tf.newaxis]

    def step(layer, rows):
        rows = tf.cast(rows, layer.compute_dtype)
        with tf.GradientTape() as tape:
            tape.watch(rows)
            trained = layer(rows, training=True)
            loss = tf.reduce_sum(tf.cast(trained, tf.float32) * weights)
        served = layer(rows, training=False)
        return [tf.cast(t, tf.float32).numpy() for t in (trained, tape.gradient(loss, rows), served)]

    for rows in (constant_channel, rng.normal(size=(6, 3)).astype(np.float32) * 1e-2):
        with precision_policy(policy):
            layer = Dice()
            got = step(layer, rows)
        assert layer.compute_dtype != "float32"
        # The float32 layer on the same rows rounded to 16 bits: what is left is the layer's own rounding.
        expected = step(Dice(), tf.cast(tf.cast(rows, layer.compute_dtype), tf.float32))
        for value, reference in zip(got, expected):
            assert np.all(np.isfinite(value)), (policy, value)
            np.testing.assert_allclose(value, reference, rtol=0.02, atol=0.02 * np.abs(reference).max())


def test_group_auc_of_integer_ids_compiles_under_xla():
    """--jit_compile of a family whose task keeps GAUC (din, dien, sim, hstu_ranking simulator configs): its
    integer user ids were turned into strings to be hashed, and XLA has no string kernels ("Detected
    unsupported operations … AsString" at the first step, float32 as mixed). Ids each in a slot of their own:
    the compiled update gives the plain one's GAUC, the per-user AUCs weighted by the users' rows."""
    from tfrecsys.metrics.ranking import GroupAUC

    users = tf.constant([0, 0, 0, 1, 1, 1, 7, 7], tf.int64)
    labels = tf.constant([1, 0, 0, 1, 1, 0, 0, 1], tf.float32)
    scores = tf.constant([0.9, 0.2, 0.95, 0.6, 0.3, 0.4, 0.1, 0.8])
    plain, compiled = GroupAUC(num_groups=8), GroupAUC(num_groups=8)
    plain.update_state(labels, scores, users)

    @tf.function(jit_compile=True)
    def update(*args):
        compiled.update_state(*args)

    update(labels, scores, users)
    # user 0: 1 of 2 pairs right, 3 rows; user 1: 1 of 2, 3 rows; user 7: 1 of 1, 2 rows
    expected = (3 * 0.5 + 3 * 0.5 + 2 * 1.0) / 8
    np.testing.assert_allclose([plain.result(), compiled.result()], [expected] * 2, rtol=1e-6)

def test_retrieval_corpus_rows_compile_under_xla():
    """--jit_compile of the retrieval families (two_tower, SASRec, HSTU): a target's corpus row was a hash
    table lookup, which XLA cannot compile ("LookupTableFindV2" at the first step). Integer ids are now found
    by binary search: the same rows, ``-1`` outside the corpus, plain or compiled."""
    from tests.test_generative import _Tables
    from tfrecsys.config import load_config
    from tfrecsys.data.model_tables import CandidateCorpus
    from tfrecsys.features.schema import FeatureSchema
    from tfrecsys.models import build_model

    config = load_config(os.path.join(REPO, "configs", "sasrec_simulator.py"))
    tables = _Tables(1)
    ids = np.array([40, 7, 12, 3, 25], np.int64)  # not sorted: row i holds ids[i]
    tables.corpus = CandidateCorpus("corpus", ids, {"item_id": ids}, np.ones(len(ids)))
    model = build_model(config, FeatureSchema.from_config(config.features), tables)
    query = tf.constant([[12, 3, 5], [40, 25, 99]], tf.int64)
    expected = [[2, 3, -1], [0, 4, -1]]
    np.testing.assert_array_equal(model._corpus_rows(query), expected)
    np.testing.assert_array_equal(tf.function(model._corpus_rows, jit_compile=True)(query), expected)

# Every family through the user's path ----------------------------------------------------------------------
# ``train_and_evaluate(config, mixed_precision=…)`` on the family's small simulated world (tests/
# test_scoring_families.py's cases; the generative families on simulator rows, whose labels follow the history
# they come from), 40 steps with the config's own optimizer in loops of 10, then ``export_trained``.

SWEEP_STEPS = {"train.steps": 40, "train.steps_per_loop": 10, "train.steps_per_execution": 5}
POSITION_BIAS_WORLD = {"data.simulator.num_requests": 400, "model.hidden_units": (16,), "train.batch_size": 128,
                       "train.shuffle_buffer": 1000, "export.warmup_requests": 2}
STREAMING = {
    # Each window evaluated, then trained on once: the per-window losses are those of different days.
    "dnn_streaming": ("dnn_streaming_simulator.py", {
        "data.simulator.num_users": 100, "data.simulator.num_items": 100, "data.simulator.num_events": 4000,
        "model.hidden_units": (8,), "train.batch_size": 128, "export.warmup_requests": 2}),
    "defuse_streaming": ("defuse_simulator.py", {
        "data.simulator.num_clicks": 3000, "data.simulator.days": 5, "data.simulator.pretrain_days": 2,
        "data.simulator.num_users": 100, "data.simulator.num_items": 100, "train.pretrain_windows": 2,
        "model.hidden_units": (8,), "model.auxiliary_hidden_units": (4,), "train.batch_size": 128,
        "export.warmup_requests": 2}),
}
# Whose loop losses are over rows of different kinds, so they need not fall from the first loop to the last:
# a streaming run's windows are different days, and DEFUSE's rows (its stream's days, each with its own mix
# of sample types) give 1.81, 1.78, 1.06, 1.71 in float32 too.
LOSSES_OF_DIFFERENT_ROWS = {"defuse", *STREAMING}
LOSS_WEIGHTINGS = ("uncertainty", "dwa", "gradnorm", "pcgrad")
# Beside every registered family: HSTU retrieval (the generative case is SASRec), HSTU ranking on its XLA
# attention, the position-bias tower, MMoE under each loss weighting, and both streaming loops.
EXTRA_CASES = ["hstu", "hstu_ranking_xla", "dnn_position_bias", *(f"mmoe_{kind}" for kind in LOSS_WEIGHTINGS),
               *STREAMING]


def sweep_case(name: str) -> tuple:
    """``(config file, overrides, write_data, predict)`` of a sweep case."""
    from tests import test_scoring_families as scoring

    cases = scoring.FAMILY_CASES
    if name in STREAMING:
        config_file, overrides = STREAMING[name]
        return config_file, overrides, scoring.write_simulator, scoring.ranking_predictions
    if name == "hstu":
        return ("hstu_simulator.py", {**cases["generative"].overrides, **SWEEP_STEPS}, scoring.write_simulator,
                cases["generative"].predict)
    if name == "hstu_ranking_xla":
        case = cases["hstu_ranking"]
        return (case.config_file, {**case.overrides, **SWEEP_STEPS, "model.hstu.attention_path": "xla"},
                case.write_data, case.predict)
    if name == "dnn_position_bias":
        return ("dnn_position_bias_simulator.py", {**POSITION_BIAS_WORLD, **SWEEP_STEPS}, scoring.write_simulator,
                scoring.ranking_predictions)
    if name.startswith("mmoe_"):
        case = cases["mmoe"]
        return (case.config_file, {**case.overrides, **SWEEP_STEPS, "train.loss_weighting": {"kind": name[5:]}},
                case.write_data, case.predict)
    case = cases[name]
    return case.config_file, {**case.overrides, **SWEEP_STEPS}, case.write_data, case.predict


def train_case(name: str, policy: str, root: str, strategy=None, jit_compile: bool = False) -> dict:
    """Trains and exports sweep case ``name`` under ``policy``; returns what the tests check, as JSON."""
    import tensorflow as tf

    from tests.test_scoring_families import CONFIGS
    from tfrecsys.config import load_config
    from tfrecsys.train.loop import train_and_evaluate

    class Watch(tf.keras.callbacks.Callback):
        """Each loop's (or window's) training loss and loss scale, the weights before the first step (after
        the first call for a model built by its first step)."""

        def __init__(self):
            super().__init__()
            self.losses, self.loss_scales, self.initial = [], [], None

        def on_train_begin(self, logs=None):
            if self.initial is None and self.model.weights:  # streaming calls fit once per window
                self.initial = self.model.get_weights()

        def on_train_batch_end(self, batch, logs=None):
            # Streaming builds its model in the first step: the weights after the first call, then.
            if self.initial is None:
                self.initial = self.model.get_weights()

        def on_epoch_end(self, epoch, logs=None):
            self.losses.append(float(logs["loss"]))
            if isinstance(self.model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
                self.loss_scales.append(float(self.model.optimizer.loss_scale))

    config_file, overrides, write_data, predict = sweep_case(name)
    data_dir = os.path.join(root, "data", name)
    config = load_config(os.path.join(CONFIGS, config_file), {"data.dir": data_dir, **overrides})
    if not os.path.exists(data_dir):
        write_data(config, data_dir)
    model_dir = tempfile.mkdtemp(dir=root, prefix=f"{name}_{policy}_")
    watch = Watch()
    try:
        metrics = train_and_evaluate(config, model_dir, strategy=strategy, verbose=0, mixed_precision=policy,
                                     jit_compile=jit_compile, callbacks=[watch])
        return _trained(watch, metrics, config, model_dir, predict)
    except Exception as error:  # noqa: BLE001 (one case's failure is that case's finding)
        return {"error": f"{type(error).__name__}: {error}"[:2000]}


def _trained(watch, metrics, config, model_dir: str, predict) -> dict:
    from tfrecsys.data.input import resolve_files
    from tfrecsys.export.trained import export_trained, first_records

    model = watch.model
    weights = model.get_weights()
    records = first_records(resolve_files(config.data.eval_files, config.data.dir), 64)
    served = tf.saved_model.load(export_trained(config, model_dir, os.path.join(model_dir, "export")))
    served = served.signatures["serving_examples"](inputs=tf.constant(records))
    in_process = predict(model, model.schema, records)
    return {"compute_dtype": model.compute_dtype, "losses": watch.losses, "loss_scales": watch.loss_scales,
            "moved": max(float(np.abs(a - b).max()) for a, b in zip(weights, watch.initial)),
            "finite": all(bool(np.all(np.isfinite(w))) for w in weights),
            "metrics": [float(v) for v in tf.nest.flatten(metrics)],
            "served_dtypes": sorted({v.dtype.name for v in served.values()}),
            "served_difference": {key: float(np.abs(served[key].numpy() - np.asarray(value, np.float32)).max())
                                  for key, value in in_process.items() if key != "item_ids"}}


def check_trained(name: str, policy: str, run: dict) -> None:
    assert "error" not in run, run["error"]
    assert run["compute_dtype"] == policy.removeprefix("mixed_"), run
    assert np.all(np.isfinite(run["losses"])) and run["finite"] and run["moved"] > 1e-3, run
    if name not in LOSSES_OF_DIFFERENT_ROWS:
        assert run["losses"][-1] < run["losses"][0], run
    if policy == "mixed_float16":
        # The dynamic scale starts at 2^15, halves at each skipped (non-finite) step and grows only after 2000
        # finite ones: at most 10 of the 40 steps skipped (two_tower skips 6 to 8 early on, then none).
        assert run["loss_scales"][-1] >= 2.0 ** 5, run
    assert run["metrics"] and np.all(np.isfinite(run["metrics"])), run
    assert "float16" not in run["served_dtypes"] and "bfloat16" not in run["served_dtypes"], run
    # The float32 export against the 16-bit model in this process: bfloat16 keeps 8 bits of mantissa.
    for key, difference in run["served_difference"].items():
        assert difference < (5e-3 if policy == "mixed_float16" else 2e-2), (key, run)


SWEEP = [*available(), *EXTRA_CASES]


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sweep"))


@pytest.mark.slow  # 3-20 CPU-seconds a case
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", SWEEP)
def test_every_family_trains_and_exports_under_mixed_precision_on_one_device(sweep_root, name, policy):
    check_trained(name, policy, train_case(name, policy, sweep_root))


@pytest.mark.slow  # 5-25 CPU-seconds a family (XLA compiles the step)
@pytest.mark.parametrize("name", available())
def test_every_family_trains_and_exports_under_mixed_float16_with_jit_compile(sweep_root, name):
    """--jit_compile on one device (bfloat16, and the extra cases, were swept once: bench/RESULTS.md)."""
    check_trained(name, "mixed_float16", train_case(name, "mixed_float16", sweep_root, jit_compile=True))


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    """Every sweep case under each policy on two replicas (MirroredStrategy over two logical CPUs): one fresh
    process per policy (logical devices are set before TensorFlow starts), run side by side."""
    root = tmp_path_factory.mktemp("two_replicas")
    processes = {policy: subprocess.Popen([sys.executable, "-m", "tests.test_mixed_precision_families", policy,
                                           str(root / f"{policy}.json")], cwd=REPO)
                 for policy in POLICIES}
    results = {}
    for policy, process in processes.items():
        assert process.wait(timeout=TWO_REPLICA_TIMEOUT_S) == 0, f"the {policy} sweep's process failed"
        with open(root / f"{policy}.json") as f:
            results[policy] = json.load(f)
    return results


@pytest.mark.slow  # two processes side by side: ~12 min wall at load 4 on the 2 cores (2026-12-08)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", SWEEP)
def test_every_family_trains_and_exports_under_mixed_precision_on_two_replicas(two_replicas, name, policy):
    check_trained(name, policy, two_replicas[policy][name])


def _two_replica_sweep(policy: str, output: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for name in SWEEP:
            results[name] = train_case(name, policy, root, strategy)
            with open(output, "w") as f:  # after each case: a process that dies keeps the cases before
                json.dump(results, f)


if __name__ == "__main__":
    _two_replica_sweep(sys.argv[1], sys.argv[2])
