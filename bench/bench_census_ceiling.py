"""How high can any model get on Census-Income (KDD) with the census configs' 39 inputs on their split? Gradient-
boosted trees (scikit-learn's HistGradientBoostingClassifier, LightGBM) as a ceiling and a logistic regression on
one-hot inputs as a floor, tuned on the validation split of bench/bench_census_auc.py, then measured on test.

    make peers-env                                   # scikit-learn and LightGBM: benchmark environment only
    .venv-peers/bin/python -m bench.bench_census_ceiling --split=validation           # the grids, validation AUC
    .venv-peers/bin/python -m bench.bench_census_ceiling --split=test --seeds=0,1,2   # the chosen settings, test AUC
    .venv-peers/bin/python -m bench.bench_census_ceiling --split=validation --importance  # what the trees use
    .venv-peers/bin/python -m bench.bench_census_ceiling --split=test --tasks=never_married \
        --lost_by=detailed_household_and_family_stat                 # which rows the remaining 1 − AUC is in

The rows are the networks' rows, read from the same preprocessed TFRecords (``tfrecsys-preprocess
--config=configs/mmoe.py:census``, run here when ``--data_dir`` holds no copy; the raw file comes from
``../shared/datasets/census-income-kdd``, and without it the bench skips with the reason): the official test
file split 80/20 with seed 0 (79,823 train / 19,939 test rows). ``--split=validation`` never reads the test
rows: it trains on ``bench_census_auc``'s carved training rows (63,848) and scores its validation rows (15,975),
the same draw (``--validation_fraction``, ``--validation_seed``), for every setting of each model's grid and,
for the boosted trees, every number of rounds; ``--split=test`` trains each model's setting chosen on
validation (``CHOSEN``, per task) on all training rows for the chosen number of rounds and reports the test
AUC, mean ± SD over ``--seeds`` (LightGBM's row and column subsampling seed; scikit-learn's trees here, without
subsampling or early stopping, and the logistic regression have no randomness: their seeds agree to the digit).

Inputs, the networks' 39: the 32 nominal columns as categories (codes of the training rows' values; a value
unseen in training is missing) and the 7 continuous values as they are (the trees split on raw values; the
logistic regression gets them standardised, beside one-hot nominal columns). ``--cross`` adds crossed
nominal columns (``a*b``, the pair's values joined), as a feature kind would give the networks. AUC is the
exact rank AUC (scikit-learn) and, for comparison with the networks' figures (Keras' AUC in eval_metrics.json),
Keras' AUC with 2,000 thresholds on the same scores.
"""

import argparse
import itertools
import json
import os
import statistics
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.input import resolve_files
from tfrecsys.data.preprocess import METADATA_FILE, PreprocessConfig, preprocess

from bench.bench_census_auc import carve_validation

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, os.pardir, "configs")
TASKS = {"income": "income_50k", "never_married": "never_married"}
MODELS = ("logistic", "hgb", "lightgbm")
# Rounds at which the boosted trees' validation AUC is read (each model trains once to the last): on this data
# they peak within a few hundred rounds at these learning rates and fall after (bench/RESULTS.md, censusnm).
ROUND_STEP = 25
MAX_ROUNDS = 800
GRIDS = {
    "logistic": [dict(C=c) for c in (0.03, 0.1, 0.3, 1.0, 3.0)],
    # Smaller than LightGBM's (a fit costs about twice its CPU here); both grids agree where they overlap.
    "hgb": [dict(learning_rate=0.03, max_leaf_nodes=leaves, min_samples_leaf=leaf, l2_regularization=l2)
            for leaves, leaf, l2 in ((15, 20, 0.0), (15, 200, 10.0), (63, 20, 0.0), (63, 200, 10.0))],
    "lightgbm": [dict(learning_rate=0.03, num_leaves=leaves, min_data_in_leaf=leaf, lambda_l2=l2,
                      feature_fraction=features, bagging_fraction=0.8, bagging_freq=1, cat_smooth=10.0)
                 for leaves, leaf, l2, features in itertools.product((15, 63), (20, 200), (0.0, 10.0), (0.5, 0.9))],
}
# Chosen on validation (bench/RESULTS.md issue 13, branch censusnm): per (model, task), the setting and rounds.
_LIGHTGBM = dict(learning_rate=0.03, num_leaves=15, min_data_in_leaf=20, lambda_l2=0.0, bagging_fraction=0.8,
                 bagging_freq=1, cat_smooth=10.0)
CHOSEN = {
    ("logistic", "never_married"): (dict(C=1.0), None),
    ("hgb", "never_married"): (dict(learning_rate=0.03, max_leaf_nodes=15, min_samples_leaf=20,
                                    l2_regularization=0.0), 175),
    ("lightgbm", "never_married"): (dict(_LIGHTGBM, feature_fraction=0.9), 275),
    ("logistic", "income"): (dict(C=0.1), None),
    # Income, for information (its bar is met): the best of the first 8 of the 16 settings (15 leaves).
    ("lightgbm", "income"): (dict(_LIGHTGBM, feature_fraction=0.5), 350),
}


def read_rows(data_dir: str, pattern: str, columns: dict) -> dict:
    """Every row of ``data_dir``'s ``pattern`` files: ``{column: numpy array}`` (strings decoded)."""
    spec = {name: tf.io.FixedLenFeature([], tf.string if dtype == "string" else tf.float32)
            for name, dtype in columns.items()}
    parts = {name: [] for name in columns}
    for batch in tf.data.TFRecordDataset(resolve_files(pattern, data_dir)).batch(65536):
        for name, values in tf.io.parse_example(batch, spec).items():
            parts[name].append(values.numpy())
    rows = {name: np.concatenate(values) for name, values in parts.items()}
    return {name: (values.astype(str) if columns[name] == "string" else values) for name, values in rows.items()}


class Inputs:
    """The 39 inputs as model matrices: nominal columns coded on the training rows (unseen → missing), crosses
    ``a*b`` as further nominal columns, continuous columns as floats."""

    def __init__(self, train: dict, nominal: list, continuous: list, crosses: list):
        self.nominal = list(nominal) + [f"{a}*{b}" for a, b in crosses]
        self.continuous = list(continuous)
        self.crosses = list(crosses)
        self.codes = {name: {value: i for i, value in enumerate(np.unique(column))}
                      for name, column in self._nominal_columns(train).items()}
        self._matrices = {}

    def _nominal_columns(self, rows: dict) -> dict:
        columns = {name: rows[name] for name in self.nominal if "*" not in name}
        for a, b in self.crosses:
            columns[f"{a}*{b}"] = np.char.add(np.char.add(rows[a], "|"), rows[b])
        return columns

    def codes_of(self, rows: dict) -> np.ndarray:
        """[rows, nominal] float codes, NaN where the value was not seen in training."""
        columns = self._nominal_columns(rows)
        return np.stack([np.array([self.codes[name].get(v, np.nan) for v in columns[name]], dtype=np.float64)
                         for name in self.nominal], axis=1)

    def matrix(self, rows: dict) -> np.ndarray:
        """[rows, nominal + continuous]: the trees' input (nominal columns first), made once per row set."""
        if id(rows) not in self._matrices:
            self._matrices[id(rows)] = np.concatenate(
                [self.codes_of(rows), np.stack([rows[c] for c in self.continuous], axis=1)], axis=1)
        return self._matrices[id(rows)]

    def cardinalities(self) -> list:
        return [len(self.codes[name]) for name in self.nominal]


def keras_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Keras' AUC with 2,000 thresholds, the networks' reported metric."""
    metric = tf.keras.metrics.AUC(num_thresholds=2000)
    metric.update_state(labels, scores)
    return float(metric.result().numpy())


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels, scores))


def fit_logistic(inputs: Inputs, train: dict, labels: np.ndarray, setting: dict, seed: int):
    """Logistic regression on one-hot nominal columns (unseen → all zero) and standardised continuous ones."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    codes = inputs.codes_of(train)
    encoder = OneHotEncoder(categories=[np.arange(n, dtype=np.float64) for n in inputs.cardinalities()],
                            handle_unknown="ignore")
    encoder.fit(codes)
    dense = np.stack([train[c] for c in inputs.continuous], axis=1)
    scaler = StandardScaler().fit(dense)

    def design(rows):
        with np.errstate(invalid="ignore"):
            codes = np.nan_to_num(inputs.codes_of(rows), nan=-1.0)
        return sparse.hstack([encoder.transform(codes),
                              sparse.csr_matrix(scaler.transform(np.stack([rows[c] for c in inputs.continuous], 1)))
                              ]).tocsr()

    model = LogisticRegression(C=setting["C"], max_iter=5000, solver="lbfgs", random_state=seed)
    model.fit(design(train), labels)
    return lambda rows, rounds=None: model.predict_proba(design(rows))[:, 1], None


def fit_hgb(inputs: Inputs, train: dict, labels: np.ndarray, setting: dict, seed: int, rounds: int = MAX_ROUNDS):
    """scikit-learn's histogram gradient boosting, nominal columns as native categories, no early stopping:
    the rounds are read on validation instead."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from threadpoolctl import threadpool_limits

    categorical = [True] * len(inputs.nominal) + [False] * len(inputs.continuous)
    model = HistGradientBoostingClassifier(max_iter=rounds, early_stopping=False, categorical_features=categorical,
                                           random_state=seed, **setting)
    # One OpenMP thread, as LightGBM's num_threads=1: on this shared 2-core machine two threads spin-waited for
    # each other (119 CPU s per fit at load 10 against 18 s with one, the same trees).
    with threadpool_limits(1):
        model.fit(inputs.matrix(train), labels)

    def predict(rows, rounds=None):
        matrix = inputs.matrix(rows)
        with threadpool_limits(1):
            if rounds is None:
                return model.predict_proba(matrix)[:, 1]
            return {(i + 1): p[:, 1] for i, p in enumerate(model.staged_predict_proba(matrix)) if (i + 1) in rounds}

    return predict, None


def fit_lightgbm(inputs: Inputs, train: dict, labels: np.ndarray, setting: dict, seed: int,
                 rounds: int = MAX_ROUNDS):
    """LightGBM, nominal columns as categorical features (its one-vs-rest / sorted-gradient category splits)."""
    import lightgbm

    params = dict(objective="binary", verbosity=-1, num_threads=1, seed=seed, max_cat_to_onehot=4,
                  max_bin=255, **setting)
    dataset = lightgbm.Dataset(inputs.matrix(train), labels, categorical_feature=list(range(len(inputs.nominal))),
                               feature_name=[n.replace("*", "_x_") for n in inputs.nominal] + inputs.continuous,
                               free_raw_data=False)
    booster = lightgbm.train(params, dataset, num_boost_round=rounds)

    def predict(rows, rounds=None):
        matrix = inputs.matrix(rows)
        if rounds is None:
            return booster.predict(matrix)
        # Raw scores accumulated round range by round range (one pass over the trees), then the probability.
        staged, total, done = {}, np.zeros(len(matrix)), 0
        for r in sorted(rounds):
            total = total + booster.predict(matrix, start_iteration=done, num_iteration=r - done, raw_score=True)
            staged[r], done = 1.0 / (1.0 + np.exp(-total)), r
        return staged

    gain = booster.feature_importance(importance_type="gain")
    importance = dict(zip(inputs.nominal + inputs.continuous, (gain / gain.sum()).round(4).tolist()))
    return predict, importance


def lost_auc_by(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict:
    """Where 1 − AUC comes from: ``{group: (rows, positives, lost)}``, ``lost`` the share of (positive, negative)
    pairs ordered wrongly (ties half) whose negative row is in the group. The ``lost`` values sum to 1 − AUC."""
    positive = labels == 1
    ranked = np.sort(scores[positive])
    negatives = scores[~positive]
    below = np.searchsorted(ranked, negatives, side="left")   # positives scored under the negative: wrong
    wrong = below + 0.5 * (np.searchsorted(ranked, negatives, side="right") - below)
    pairs = float(positive.sum()) * float((~positive).sum())
    return {group: (int((groups == group).sum()), int(positive[groups == group].sum()),
                    float(wrong[groups[~positive] == group].sum() / pairs))
            for group in np.unique(groups)}


FITS = {"logistic": fit_logistic, "hgb": fit_hgb, "lightgbm": fit_lightgbm}


def load(data_dir: str, split: str, fraction: float, seed: int) -> tuple:
    """(train rows, scored rows, nominal columns, continuous columns) of ``split``."""
    config = load_config(os.path.join(CONFIGS, "mmoe.py:census"), {"data.dir": data_dir})
    if not os.path.exists(os.path.join(data_dir, METADATA_FILE)):
        preprocess(PreprocessConfig.from_config(config.preprocess), config.features, data_dir)
    with open(os.path.join(data_dir, METADATA_FILE)) as f:
        stored = json.load(f)["columns"]
    nominal = [n for n, f in config.features.items() if f.kind == "id" and "source" not in f]
    continuous = [n for n, f in config.features.items() if f.kind == "dense"]
    columns = {name: stored[name] for name in nominal + continuous + list(TASKS.values())}
    if split == "validation":
        data_dir = carve_validation(data_dir, fraction, seed, {})
    return read_rows(data_dir, "train-*.tfrecord", columns), read_rows(data_dir, "eval-*.tfrecord", columns), \
        nominal, continuous


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("validation", "test"), default="validation",
                        help="validation: every grid setting on bench_census_auc's validation split; test: the "
                        "settings chosen on validation (CHOSEN), trained on all training rows, test AUC.")
    parser.add_argument("--data_dir", default="runs/data/census",
                        help="Preprocessed Census-Income (tfrecsys-preprocess --config=configs/mmoe.py:census); "
                        "preprocessed here when absent.")
    parser.add_argument("--models", default=",".join(MODELS), help=f"Comma-separated subset of {MODELS}.")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"Comma-separated subset of {tuple(TASKS)}.")
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds (the trees' subsampling), one run each.")
    parser.add_argument("--cross", action="append", default=[],
                        help="a*b: a crossed nominal column (the values of a and b joined); repeatable.")
    parser.add_argument("--importance", action="store_true",
                        help="Print LightGBM's gain importance per input (share of the total gain) for each run.")
    parser.add_argument("--lost_by", default="",
                        help="With --split=test: a nominal column; for each model's first seed, print where 1 − AUC "
                        "comes from, per value of that column (lost_auc_by), e.g. detailed_household_and_family_stat.")
    parser.add_argument("--validation_fraction", type=float, default=0.2,
                        help="Share of the training rows held out as the validation split (as bench_census_auc).")
    parser.add_argument("--validation_seed", type=int, default=0, help="Seed of the validation draw.")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    if sorted(set(models) - set(MODELS)) or sorted(set(tasks) - set(TASKS)):
        parser.error(f"--models must be among {MODELS}, --tasks among {tuple(TASKS)}")
    raw = load_config(os.path.join(CONFIGS, "mmoe.py:census")).preprocess.input
    if not os.path.exists(os.path.join(args.data_dir, METADATA_FILE)) and not os.path.isdir(raw):
        print(f"skipped: no preprocessed census rows in {args.data_dir} and no Census-Income files in {raw} "
              "(see data/census-income-kdd.md)")
        return 0
    train, scored, nominal, continuous = load(args.data_dir, args.split, args.validation_fraction,
                                              args.validation_seed)
    crosses = [tuple(c.split("*")) for c in args.cross]
    unknown = [c for pair in crosses for c in pair if c not in nominal]
    if unknown or any(len(pair) != 2 for pair in crosses):
        parser.error(f"--cross takes a*b of two nominal columns; not nominal: {unknown}")
    inputs = Inputs(train, nominal, continuous, crosses)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.split}: {len(train[continuous[0]]):,} training rows, {len(scored[continuous[0]]):,} scored rows, "
          f"{len(inputs.nominal)} nominal + {len(continuous)} continuous inputs", flush=True)
    table = []
    for task in tasks:
        label = TASKS[task]
        for model in models:
            if args.split == "validation":
                table += validate(model, task, inputs, train, scored, label, seeds, args.importance)
            else:
                table.append(test(model, task, inputs, train, scored, label, seeds, args.importance,
                                  args.lost_by))
    print(f"\n{args.split} AUC, seeds {args.seeds}; load {os.getloadavg()[0]:.1f}\n")
    print("| task | model | setting | rounds | AUC (exact) | AUC (Keras, 2,000 thresholds) | CPU s |\n"
          "|---|---|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    return 0


def mean_sd(values: list) -> str:
    spread = f" ± {statistics.stdev(values):.5f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.5f}{spread}"


def validate(model, task, inputs, train, scored, label, seeds, importance) -> list:
    """Every setting of ``model``'s grid; for the trees, the best number of rounds of each (a multiple of
    ROUND_STEP). Returns table rows, the best setting last and marked."""
    rows, best = [], None
    rounds = list(range(ROUND_STEP, MAX_ROUNDS + 1, ROUND_STEP))
    for setting in GRIDS[model]:
        for seed in seeds:
            started = time.process_time()
            predict, gains = FITS[model](inputs, train, train[label], setting, seed)
            if model == "logistic":
                curve = {None: predict(scored)}
            else:
                curve = predict(scored, rounds)
            aucs = {r: rank_auc(scored[label], p) for r, p in curve.items()}
            chosen = max(aucs, key=aucs.get)
            result = {"task": task, "model": model, "setting": setting, "seed": seed, "rounds": chosen,
                      "auc": round(aucs[chosen], 5), "keras_auc": round(keras_auc(scored[label], curve[chosen]), 5),
                      "curve": {r: round(a, 5) for r, a in aucs.items() if r is None or r % 250 == 0},
                      "cpu_s": round(time.process_time() - started, 1)}
            if importance and gains:
                result["importance"] = dict(sorted(gains.items(), key=lambda kv: -kv[1])[:15])
            print(json.dumps(result), flush=True)
            rows.append([task, model, json.dumps(setting), chosen, result["auc"], result["keras_auc"],
                         result["cpu_s"]])
            if best is None or result["auc"] > best[4]:
                best = rows[-1]
    return rows + [[task, f"**{model} best**"] + best[2:]]


def test(model, task, inputs, train, scored, label, seeds, importance, lost_by="") -> list:
    if (model, task) not in CHOSEN:
        print(f"{model} on {task}: no setting chosen on validation (CHOSEN), not run", flush=True)
        return [task, model, "not chosen on validation", "", "", "", ""]
    setting, rounds = CHOSEN[model, task]
    aucs, keras_aucs, cpu = [], [], []
    for seed in seeds:
        started = time.process_time()
        fit = FITS[model]
        predict, gains = (fit(inputs, train, train[label], setting, seed) if model == "logistic" else
                          fit(inputs, train, train[label], setting, seed, rounds=rounds))
        scores = predict(scored)
        aucs.append(rank_auc(scored[label], scores))
        keras_aucs.append(keras_auc(scored[label], scores))
        cpu.append(time.process_time() - started)
        result = {"task": task, "model": model, "setting": setting, "rounds": rounds, "seed": seed,
                  "auc": round(aucs[-1], 5), "keras_auc": round(keras_aucs[-1], 5), "cpu_s": round(cpu[-1], 1)}
        if importance and gains:
            result["importance"] = dict(sorted(gains.items(), key=lambda kv: -kv[1])[:15])
        print(json.dumps(result), flush=True)
        if lost_by and seed == seeds[0]:
            print(f"\n1 − AUC = {1 - aucs[-1]:.5f} of {model} on {task} by {lost_by} (rows, positives, lost):")
            lost = lost_auc_by(scored[label], scores, scored[lost_by])
            for group, (count, positives, part) in sorted(lost.items(), key=lambda kv: -kv[1][2])[:8]:
                print(f"| {group} | {count:,} | {positives:,} | {part:.5f} |")
            print(flush=True)
    return [task, model, json.dumps(setting), rounds, mean_sd(aucs), mean_sd(keras_aucs),
            round(statistics.mean(cpu), 1)]


if __name__ == "__main__":
    raise SystemExit(main())
