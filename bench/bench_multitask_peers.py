"""Multi-task rankers against DeepCTR 0.9.4 on Census-Income (KDD), the same rows in one process.

    make peers-env
    .venv-peers/bin/python -m bench.bench_multitask_peers                      # all four families, 3 epochs
    .venv-peers/bin/python -m bench.bench_multitask_peers --families=mmoe,ple --epochs=2
    .venv/bin/python -m bench.bench_multitask_peers --families=mmoe --stacks=tfrecsys  # ours only, no DeepCTR
    .venv-peers/bin/python -m bench.bench_multitask_peers --mixed_precision=none,mixed_bfloat16  # ours at both
    .venv-peers/bin/python -m bench.bench_multitask_peers --fused_embeddings=0,1   # ours in both table layouts

Protocol of ../shared/reference/peer-baselines.md §2: configs/<family>.py:census's data (tfrecsys-preprocess:
the test file split 80/20 with seed 0; run here when ``--data_dir`` holds no preprocessed copy), batch 256,
Adam 1e-3, 3 epochs; DeepCTR's models with the sizes of that page (which the configs copy), fed the same rows
as its columns (string ids → the preprocessed vocabularies' indices, 0 unseen; dense columns min-max scaled on
train); ours get the raw columns (strings, unscaled dense). ESMM pairs ctr = income and ctcvr = income ∧ never
married: a throughput pairing.

Both stacks see the same inputs, the configs' money buckets included: the census configs embed the four
money columns (wage per hour, capital gains, capital losses, dividends) by their bucket beside their value
(``<column>_bucket``, 8-d, at most 16 equal-frequency buckets cut on the train split by preprocessing). Ours
bucket the raw value inside the model (``Bucketize`` on the preprocessed boundaries file); DeepCTR gets the
same bucket index computed here from the same file (``b[i-1] <= x < b[i]`` → ``i``) as a ``SparseFeat`` of
``len(b) + 1`` rows and the same embedding dimension, beside the column's ``DenseFeat``. Every ``SparseFeat``
takes its embedding dimension from the config (16 for the nominal columns, 8 for the buckets).

Both stacks get one input path (``in_memory_batches``): shuffled row indices each epoch, batched, and one
gather per column from the in-memory columns, what Keras' ``fit(numpy arrays, shuffle=True)`` does, but
without its cost for string columns: Keras hands ``Dataset.from_tensors(columns).repeat()`` to each batch,
which copies every string column whole per batch (11 ms of CPU per step for 32 columns of 80k strings,
against 1.5 ms for int64 columns, growing with the rows; the gather here costs 2 ms for either).

Per family, ours then DeepCTR's: steady training examples/s (rows × (E−1) ÷ wall time of epochs 2..E),
the CPU milliseconds per step over the same epochs (``time.process_time``, every thread of the process, input
included: what a loaded machine changes least), time to first step (model construction + compile + the first
``fit`` execution, after ``import``) in wall and CPU seconds, and the test AUC of each task after the last
epoch (rank AUC over the 20% test rows). Prints one JSON line per model and a markdown table with the ratios
and the load average.

``--mixed_precision`` trains ours once per listed Keras policy, in turn (``none,mixed_bfloat16``: float32, then
bfloat16 compute with float32 variables, set as ``tfrecsys-train --mixed_precision`` sets it), before
DeepCTR's model; ``--peer_mixed_precision`` does the same for DeepCTR's. ``--fused_embeddings`` trains ours
once per listed table layout (``config.model.fused_embeddings``: 0, one variable per table; 1, one per
embedding width; default: the config's own), inside each precision. The ratios of a family are to its first
DeepCTR row.
"""

import argparse
import json
import os
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.input import resolve_files
from tfrecsys.data.preprocess import METADATA_FILE, PreprocessConfig, preprocess
from tfrecsys.data.simulators.common import auc
from tfrecsys.features.embedding import IdLookup
from tfrecsys.features.schema import DenseFeature, FeatureSchema, IdFeature
from tfrecsys.train.loop import build_and_compile, create_variables
from tfrecsys.train.strategy import PRECISION_POLICIES, precision_policy

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, os.pardir, "configs")
FAMILIES = ("shared_bottom", "mmoe", "ple", "esmm")
STACKS = ("tfrecsys", "deepctr")
# The tasks each family's test AUC is reported for, as (our output, label): ESMM's second is ctcvr.
TASKS = {"esmm": (("ctr", "income_50k"), ("ctcvr", "rich_and_never_married"))}
DEFAULT_TASKS = (("income", "income_50k"), ("never_married", "never_married"))


class EpochClock(tf.keras.callbacks.Callback):
    """Wall and CPU time of each epoch, and of the first ``fit`` execution after ``started`` (a
    ``(perf_counter, process_time)`` pair)."""

    def __init__(self, started: tuple):
        super().__init__()
        self.started, self.first_step, self.first_step_cpu, self.epochs, self.epochs_cpu = started, None, None, [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._begin = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step is None:
            self.first_step = time.perf_counter() - self.started[0]
            self.first_step_cpu = time.process_time() - self.started[1]

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(time.perf_counter() - self._begin[0])
        self.epochs_cpu.append(time.process_time() - self._begin[1])


def census_rows(data_dir: str) -> tuple[FeatureSchema, dict, dict]:
    """(schema, train, test): every row of the preprocessed splits as numpy columns, labels included, with
    ESMM's ``rich_and_never_married`` = income ∧ never married."""
    config = load_config(os.path.join(CONFIGS, "mmoe.py:census"), {"data.dir": data_dir})
    if not os.path.exists(os.path.join(data_dir, METADATA_FILE)):
        preprocess(PreprocessConfig.from_config(config.preprocess), config.features, data_dir)
    schema = FeatureSchema.from_config(config.features)
    splits = []
    for pattern in (config.data.train_files, config.data.eval_files):
        records = tf.data.TFRecordDataset(resolve_files(pattern, data_dir)).batch(1 << 20).get_single_element()
        rows = {name: value.numpy() for name, value in schema.parse_examples(records).items()}
        rows["rich_and_never_married"] = rows["income_50k"] * rows["never_married"]
        splits.append(rows)
    return schema, splits[0], splits[1]


def in_memory_batches(features: dict, labels, batch_size: int, seed: int) -> tf.data.Dataset:
    """``(features, labels)`` batches of in-memory columns, rows reshuffled every epoch: the input path of both
    stacks (see the module docstring). ``labels``: a dict or a tuple of columns."""
    columns = tf.nest.map_structure(tf.constant, (features, labels))
    rows = len(next(iter(features.values())))
    return (tf.data.Dataset.range(rows).shuffle(rows, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
            .map(lambda index: tf.nest.map_structure(lambda column: tf.gather(column, index), columns),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def train_ours(family: str, data_dir: str, schema: FeatureSchema, train: dict, test: dict, epochs: int,
               seed: int, precision: str = "none", fused_embeddings=None) -> dict:
    # No weight averaging (the census configs' train.ema_momentum): DeepCTR's models train without it, and the
    # comparison is of the same network and optimizer step.
    layout = {} if fused_embeddings is None else {"model.fused_embeddings": bool(fused_embeddings)}
    config = load_config(os.path.join(CONFIGS, f"{family}.py:census"),
                         {"data.dir": data_dir, "train.ema_momentum": 0.0, **layout})
    model_schema = FeatureSchema.from_config(config.features)
    inputs = [f.name for f in model_schema.inputs]
    labels = [f.name for f in model_schema.labels]
    tf.keras.utils.set_random_seed(seed)
    with precision_policy(precision):
        started = time.perf_counter(), time.process_time()
        model = build_and_compile(config, model_schema)
        create_variables(model, model_schema)
        clock = EpochClock(started)
        batches = in_memory_batches({k: train[k] for k in inputs}, {k: train[k] for k in labels},
                                    config.train.batch_size, seed)
        model.fit(batches, epochs=epochs, verbose=0, callbacks=[clock])
        outputs = model.predict({k: test[k] for k in inputs}, batch_size=4096, verbose=0)
    tasks = TASKS.get(family, DEFAULT_TASKS)
    return report("tfrecsys", family, clock, len(train["income_50k"]), config.train.batch_size, epochs,
                  [auc(test[label], outputs[output]) for output, label in tasks], model.count_params(), precision,
                  fused_embeddings=bool(config.model.get("fused_embeddings")))


def deepctr_inputs(schema: FeatureSchema, data_dir: str, train: dict, test: dict):
    """DeepCTR's feature columns and its ``{name: array}`` inputs of both splits."""
    from deepctr.feature_column import DenseFeat, SparseFeat

    columns, train_x, test_x = [], {}, {}
    for feature in schema.inputs:
        if isinstance(feature, IdFeature) and feature.vocab.boundaries is not None:
            # float32 cut points, as the Bucketize op holds them.
            boundaries = np.asarray(feature.vocab.bucket_boundaries(), np.float32)
            columns.append(SparseFeat(feature.name, vocabulary_size=feature.vocab.size,
                                      embedding_dim=feature.embedding_dim))
            ours = IdLookup(feature.vocab, feature.dtype)
            for rows, out in ((train, train_x), (test, test_x)):
                # side="right": a value on a cut point opens the next bucket, as our model's Bucketize does.
                out[feature.name] = np.searchsorted(boundaries, rows[feature.name], side="right").astype(np.int64)
                if not np.array_equal(out[feature.name], ours(rows[feature.name]).numpy()):
                    raise AssertionError(f"{feature.name}: DeepCTR's bucket indices differ from our model's")
        elif isinstance(feature, IdFeature):
            entries = [line.rstrip("\n").encode() for line in open(feature.vocab.vocabulary, encoding="utf-8")]
            index = {value: i + 1 for i, value in enumerate(entries)}
            columns.append(SparseFeat(feature.name, vocabulary_size=len(entries) + 1,
                                      embedding_dim=feature.embedding_dim))
            for rows, out in ((train, train_x), (test, test_x)):
                out[feature.name] = np.array([index.get(v, 0) for v in rows[feature.name]], np.int64)
        elif isinstance(feature, DenseFeature):
            low, high = train[feature.name].min(), train[feature.name].max()
            columns.append(DenseFeat(feature.name, 1))
            for rows, out in ((train, train_x), (test, test_x)):
                out[feature.name] = ((rows[feature.name] - low) / max(high - low, 1e-12)).astype(np.float32)
    return columns, train_x, test_x


def train_deepctr(family: str, columns, train_x: dict, test_x: dict, train: dict, test: dict, epochs: int,
                  seed: int, precision: str = "none") -> dict:
    tf.keras.utils.set_random_seed(seed)
    with precision_policy(precision):
        return _train_deepctr(family, columns, train_x, test_x, train, test, epochs, seed, precision)


def _train_deepctr(family: str, columns, train_x: dict, test_x: dict, train: dict, test: dict, epochs: int,
                   seed: int, precision: str) -> dict:
    from deepctr.models import ESMM, MMOE, PLE, SharedBottom

    tasks = TASKS.get(family, DEFAULT_TASKS)
    started = time.perf_counter(), time.process_time()
    if family == "mmoe":
        model = MMOE(columns, num_experts=3, expert_dnn_hidden_units=(256, 128), tower_dnn_hidden_units=(64,),
                     task_types=("binary", "binary"), task_names=("income", "marital"), seed=seed)
    elif family == "ple":
        model = PLE(columns, shared_expert_num=1, specific_expert_num=1, num_levels=2,
                    expert_dnn_hidden_units=(256,), tower_dnn_hidden_units=(64,), task_types=("binary", "binary"),
                    task_names=("income", "marital"), seed=seed)
    elif family == "shared_bottom":
        model = SharedBottom(columns, bottom_dnn_hidden_units=(256, 128), tower_dnn_hidden_units=(64,),
                             task_types=("binary", "binary"), task_names=("income", "marital"), seed=seed)
    else:
        model = ESMM(columns, tower_dnn_hidden_units=(256, 128, 64), task_types=("binary", "binary"),
                     task_names=("ctr", "ctcvr"), seed=seed)
    model.compile(tf.keras.optimizers.Adam(1e-3), loss=["binary_crossentropy", "binary_crossentropy"])
    clock = EpochClock(started)
    model.fit(in_memory_batches(train_x, tuple(train[label] for _, label in tasks), 256, seed), epochs=epochs,
              verbose=0, callbacks=[clock])
    outputs = model.predict(test_x, batch_size=4096, verbose=0)
    return report("DeepCTR 0.9.4", family, clock, len(train["income_50k"]), 256, epochs,
                  [auc(test[label], np.asarray(outputs[i][:, 0], np.float32)) for i, (_, label) in enumerate(tasks)],
                  model.count_params(), precision)


def report(stack: str, family: str, clock: EpochClock, rows: int, batch_size: int, epochs: int, aucs: list,
           params: int, precision: str = "none", fused_embeddings=None) -> dict:
    steady = rows * (epochs - 1) / sum(clock.epochs[1:]) if epochs > 1 else float("nan")
    steps = -(-rows // batch_size) * (epochs - 1)
    cpu_ms = 1000 * sum(clock.epochs_cpu[1:]) / steps if epochs > 1 else float("nan")
    result = {"stack": stack, "family": family, "precision": precision, "fused_embeddings": fused_embeddings,
              "steady_examples_per_sec": round(steady),
              "cpu_ms_per_step": round(cpu_ms, 2), "first_step_s": round(clock.first_step, 2),
              "first_step_cpu_s": round(clock.first_step_cpu, 2), "auc": [round(a, 4) for a in aucs],
              "params": params, "load": round(os.getloadavg()[0], 1)}
    print(json.dumps(result), flush=True)
    return result


def table(results: list) -> str:
    """The markdown table; each row's ratios are to the first DeepCTR row of its family (none without one)."""
    lines = ["| family | stack | precision | tables | AUC task 1 | AUC task 2 | steady ex/s | ratio | CPU ms/step | "
             "CPU ratio | first step s, wall / CPU | params | load |", "|---" * 13 + "|"]
    for row in results:
        peer = next((r for r in results if r["family"] == row["family"] and r["stack"] != "tfrecsys"), None)
        ratio = f"{row['steady_examples_per_sec'] / peer['steady_examples_per_sec']:.2f}×" if peer else "–"
        cpu_ratio = f"{peer['cpu_ms_per_step'] / row['cpu_ms_per_step']:.2f}×" if peer else "–"
        tables = {None: "–", False: "per table", True: "per width"}[row.get("fused_embeddings")]
        lines.append(f"| {row['family']} | {row['stack']} | {row['precision']} | {tables} | {row['auc'][0]:.4f} | "
                     f"{row['auc'][1]:.4f} | {row['steady_examples_per_sec']:,} | {ratio} | "
                     f"{row['cpu_ms_per_step']:.1f} | {cpu_ratio} | {row['first_step_s']:.1f} / "
                     f"{row['first_step_cpu_s']:.1f} | {row['params']:,} | {row['load']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="runs/data/census",
                        help="Preprocessed Census-Income (configs/mmoe.py:census); preprocessed here when absent.")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"Comma-separated subset of {FAMILIES}.")
    parser.add_argument("--epochs", type=int, default=3, help="Training epochs per model (at least 2: the first "
                        "is not steady).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the weights and the shuffling.")
    parser.add_argument("--stacks", default=",".join(STACKS), help=f"Comma-separated subset of {STACKS}: which "
                        "side(s) to train; tfrecsys alone needs no DeepCTR (time to first step, our own speed).")
    parser.add_argument("--mixed_precision", default="none", help="Comma-separated Keras precision policies "
                        f"among {sorted(PRECISION_POLICIES)}: ours are trained once per policy, in this order "
                        "(none: float32; mixed_bfloat16: bfloat16 compute, float32 variables, as tfrecsys-train "
                        "--mixed_precision sets it).")
    parser.add_argument("--peer_mixed_precision", default="none", help="The same for DeepCTR's models (Keras' "
                        "global policy set around their construction and training).")
    parser.add_argument("--fused_embeddings", default="", help="Comma-separated table layouts of ours, each "
                        "trained in turn within each precision: 0 (one variable per table), 1 (one per embedding "
                        "width, config.model.fused_embeddings); empty: the config's own.")
    parser.add_argument("--train_rows", type=int, default=0, help="Train on the first N training rows only (a "
                        "quick check of the benchmark itself; 0: all, the protocol).")
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"--families {unknown} are not among {FAMILIES}")
    schema, train, test = census_rows(args.data_dir)
    if args.train_rows:
        train = {name: values[:args.train_rows] for name, values in train.items()}
    stacks = [s for s in args.stacks.split(",") if s]
    if not stacks or set(stacks) - set(STACKS):
        parser.error(f"--stacks {stacks} must be a non-empty subset of {STACKS}")
    precisions = {side: [p for p in value.split(",") if p]
                  for side, value in (("tfrecsys", args.mixed_precision), ("deepctr", args.peer_mixed_precision))}
    for side, listed in precisions.items():
        if not listed or set(listed) - set(PRECISION_POLICIES):
            parser.error(f"precisions {listed} of {side} must be a non-empty subset of {sorted(PRECISION_POLICIES)}")
    layouts = [None]
    if args.fused_embeddings:
        layouts = [value for value in args.fused_embeddings.split(",") if value]
        if not layouts or set(layouts) - {"0", "1"}:
            parser.error(f"--fused_embeddings {layouts} must be a non-empty list of 0 and 1")
        layouts = [value == "1" for value in layouts]
    if "deepctr" in stacks:
        columns, train_x, test_x = deepctr_inputs(schema, args.data_dir, train, test)
    results = []
    for family in families:
        if "tfrecsys" in stacks:
            for precision in precisions["tfrecsys"]:
                for fused in layouts:
                    results.append(train_ours(family, args.data_dir, schema, train, test, args.epochs, args.seed,
                                              precision, fused))
        if "deepctr" in stacks:
            for precision in precisions["deepctr"]:
                results.append(train_deepctr(family, columns, train_x, test_x, train, test, args.epochs, args.seed,
                                             precision))
    print(f"\nCensus-Income, {len(train['income_50k']):,} train / {len(test['income_50k']):,} test rows, batch 256, "
          f"{args.epochs} epochs, seed {args.seed}; load {os.getloadavg()[0]:.1f}\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
