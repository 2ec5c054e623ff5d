"""Census-Income (KDD) per-task AUC of the multi-task families through the train loop, settings chosen on a
validation split and only then measured on the test split.

    tfrecsys-preprocess --config=configs/mmoe.py:census            # once (else done here): runs/data/census
    python -m bench.bench_census_auc --split=validation --families=mmoe \\
        --variant=base: --variant=ema:train.ema_momentum=0.99
    python -m bench.bench_census_auc --split=test --families=shared_bottom,mmoe,ple --seeds=0,1,2

Protocol of ../shared/reference/peer-baselines.md §2 (configs/multitask_datasets.py's census world): the
official test file split 80/20 with seed 0. ``--split=validation`` never reads the 20 % test part: it carves
a validation split out of the 80 % training part (``--validation_fraction`` of its rows, drawn with
``--validation_seed``; written once to ``<data_dir>_validation``, vocabularies as preprocessed, the configs'
bucket boundaries cut again on the carved training rows, as preprocessing cuts them on its train split) and reports
the validation AUC of both tasks after every loop of ``config.train.steps_per_loop`` steps, so variants
(config overrides) and the number of steps can be chosen on it. ``--split=test`` trains the configs as
they are (plus ``--variant`` overrides, if any) on the whole training part and reports the test AUC of the
last step, mean ± sample standard deviation over ``--seeds`` (``config.train.seed``). A variant's
bucketized feature (an id feature with ``boundaries``) may give ``boundaries='quantiles:N'``: at most N
equal-frequency buckets of its source column (``tfrecsys.features.buckets``), cut on the rows that run
trains on (the validation run's training rows; the whole training part for the test), e.g.
``--variant="age_band:features.age_band={'kind':'id','dtype':'float32','source':'age','boundaries':'quantiles:100'}"``.
Every run goes through ``tfrecsys.train.loop.train_and_evaluate``, as ``tfrecsys-train`` does; AUC is Keras' (2,000
thresholds) as in eval_metrics.json. One training process at a time; prints one JSON line per run and a
markdown table.
"""

import argparse
import ast
import json
import os
import shutil
import statistics
import tempfile

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.input import resolve_files
from tfrecsys.data.preprocess import METADATA_FILE, PreprocessConfig, preprocess
from tfrecsys.features.buckets import equal_frequency_boundaries
from tfrecsys.train.loop import train_and_evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, os.pardir, "configs")
FAMILIES = ("shared_bottom", "mmoe", "ple")
TASKS = ("income", "never_married")


class ValidationCurve(tf.keras.callbacks.Callback):
    """Each evaluated loop's step and eval AUC per task (the ``val_<task>_auc`` the loop's evaluation adds)."""

    def __init__(self):
        super().__init__()
        self.points = []

    def on_epoch_end(self, epoch, logs=None):
        if logs and f"val_{TASKS[0]}_auc" in logs:
            step = int(self.model.optimizer.iterations.numpy())
            self.points.append([step] + [round(float(logs[f"val_{task}_auc"]), 5) for task in TASKS])


def carve_validation(data_dir: str, fraction: float, seed: int, bucketized: dict) -> str:
    """``<data_dir>_validation``: the training rows of ``data_dir`` split into train and eval (a seeded random
    ``fraction`` of rows), with ``data_dir``'s vocabularies (built on the same training rows). Made once; the
    boundaries files of ``bucketized`` (``{feature: (column, max_buckets)}``, what preprocessing cut on all
    training rows) are cut again on the validation run's training rows only, at every call."""
    out_dir = f"{data_dir.rstrip('/')}_validation"
    if not os.path.exists(os.path.join(out_dir, "eval-00000-of-00001.tfrecord")):
        _write_validation_split(data_dir, out_dir, fraction, seed)
    for feature, (column, max_buckets) in bucketized.items():
        with open(os.path.join(out_dir, "vocabularies", f"{feature}.txt"), "w") as f:
            f.writelines(f"{b!r}\n" for b in equal_frequency_boundaries(train_column(out_dir, column), max_buckets))
    return out_dir


def _write_validation_split(data_dir: str, out_dir: str, fraction: float, seed: int) -> None:
    records = [r.numpy() for r in tf.data.TFRecordDataset(resolve_files("train-*.tfrecord", data_dir))]
    held_out = np.random.default_rng(seed).random(len(records)) < fraction
    os.makedirs(out_dir, exist_ok=True)
    shutil.copytree(os.path.join(data_dir, "vocabularies"), os.path.join(out_dir, "vocabularies"), dirs_exist_ok=True)
    for split, keep in (("train", ~held_out), ("eval", held_out)):
        with tf.io.TFRecordWriter(os.path.join(out_dir, f"{split}-00000-of-00001.tfrecord")) as writer:
            for record in np.asarray(records, dtype=object)[keep]:
                writer.write(record)
    print(f"validation split: {int((~held_out).sum()):,} train / {int(held_out.sum()):,} validation rows in "
          f"{out_dir}", flush=True)


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:key=value;-key`` → (name, overrides): ``key`` set to ``value`` (a Python literal, else a
    string), ``-key`` removed."""
    name, _, settings = text.partition(":")
    overrides = {}
    for setting in filter(None, settings.split(";")):
        key, _, value = setting.partition("=")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return name, overrides


QUANTILES = "quantiles:"


def train_column(data_dir: str, column: str) -> np.ndarray:
    """Every training row's value of the float column ``column`` in ``data_dir``."""
    spec = {column: tf.io.FixedLenFeature([], tf.float32)}
    batches = (tf.data.TFRecordDataset(resolve_files("train-*.tfrecord", data_dir)).batch(65536)
               .map(lambda rows: tf.io.parse_example(rows, spec)[column]))
    return np.concatenate([batch.numpy() for batch in batches])


def with_quantile_boundaries(name: str, value, data_dir: str):
    """A feature entry whose ``boundaries`` is ``'quantiles:N'`` → the same entry with the cut points of at most
    N equal-frequency buckets of its column's training values (``source``, else ``name``); else ``value``."""
    if not (isinstance(value, dict) and str(value.get("boundaries", "")).startswith(QUANTILES)):
        return value
    max_buckets = int(value["boundaries"][len(QUANTILES):])
    column = train_column(data_dir, value.get("source", name))
    return {**value, "boundaries": equal_frequency_boundaries(column, max_buckets)}


def run(family: str, data_dir: str, overrides: dict, seed: int, validation: bool) -> dict:
    config = load_config(os.path.join(CONFIGS, f"{family}.py:census"), {"data.dir": data_dir, "train.seed": seed})
    for key, value in overrides.items():
        # Unlike load_config's overrides, a variant may add a field a task leaves to its default (its weight)
        # and remove one (a feature).
        *parents, leaf = key.lstrip("-").split(".")
        block = config
        for part in parents:
            block = block[part]
        if key.startswith("-"):
            del block[leaf]
        else:
            block[leaf] = with_quantile_boundaries(leaf, value, data_dir)
    curve = ValidationCurve()
    with tempfile.TemporaryDirectory(prefix=f"census_{family}_") as model_dir:
        metrics = train_and_evaluate(config, model_dir, verbose=0, callbacks=[curve] if validation else [])
    tf.keras.backend.clear_session()
    return {"aucs": [round(metrics[task]["auc"], 5) for task in TASKS], "curve": curve.points,
            "steps": config.train.steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("validation", "test"), default="test",
                        help="validation: carve a validation split out of the training part and report AUC per "
                        "loop on it; test: train on the whole training part and report the test AUC.")
    parser.add_argument("--data_dir", default="runs/data/census",
                        help="Preprocessed Census-Income (tfrecsys-preprocess --config=configs/mmoe.py:census); "
                        "preprocessed here when absent.")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"Comma-separated subset of {FAMILIES}.")
    parser.add_argument("--variant", action="append", default=[],
                        help="name:key=value;-key — config overrides tried as one variant: key set to value, -key removed "
                        "(e.g. a feature); repeatable; 'base:' is the config as it is, the default. A feature "
                        "entry with boundaries='quantiles:N' gets the cut points of at most N equal-frequency "
                        "buckets of its column's training rows.")
    parser.add_argument("--seeds", default="0", help="Comma-separated config.train.seed values, one run each.")
    parser.add_argument("--validation_fraction", type=float, default=0.2,
                        help="Share of the training rows held out as the validation split.")
    parser.add_argument("--validation_seed", type=int, default=0, help="Seed of the validation draw.")
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"--families {unknown} are not among {FAMILIES}")
    config = load_config(os.path.join(CONFIGS, "mmoe.py:census"), {"data.dir": args.data_dir})
    if not os.path.exists(os.path.join(args.data_dir, METADATA_FILE)):
        preprocess(PreprocessConfig.from_config(config.preprocess), config.features, args.data_dir)
    validation = args.split == "validation"
    bucketized = {name: (config.features[name].get("source", name), int(count))
                  for name, count in config.preprocess.max_buckets.items()}
    data_dir = (carve_validation(args.data_dir, args.validation_fraction, args.validation_seed, bucketized)
                if validation else args.data_dir)
    variants = [parse_variant(v) for v in args.variant or ["base:"]]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for family in families:
        for name, overrides in variants:
            results = []
            for seed in seeds:
                result = {"family": family, "variant": name, "seed": seed,
                          **run(family, data_dir, overrides, seed, validation)}
                print(json.dumps(result), flush=True)
                results.append(result)
            rows.append((family, name, results))
    print(f"\n{args.split} AUC, {len(seeds)} seed(s) {args.seeds}; load {os.getloadavg()[0]:.1f}\n")
    print("| family | variant | steps | AUC income | AUC never married |\n|---|---|---|---|---|")
    for family, name, results in rows:
        cells = []
        for i in range(len(TASKS)):
            values = [r["aucs"][i] for r in results]
            spread = f" ± {statistics.stdev(values):.5f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.5f}{spread}")
        print(f"| {family} | {name} | {results[0]['steps']} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
