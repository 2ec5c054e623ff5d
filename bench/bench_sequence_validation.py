"""Behaviour-sequence settings chosen on a validation split carved from the training part, not on the test.

Taobao UserBehavior through ``tfrecsys-preprocess`` (as ``bench/bench_sequence_taobao.py`` prepares it), then
each user's last ``--holdout_events`` distinct event times of the *training* split (both rows of each event,
the real item and its sampled one) become a validation split; ``tfrecsys-train`` trains on the rest and
evaluates on it after every loop (one loop = one epoch of the full training split, ``--epochs`` loops whatever
the epochs each config trains: the epoch count is what this split chooses). The test split (each user's last event)
is never read. Vocabularies stay those of the whole training split: ids of validation events have their rows,
trained only where they also occur in the training rows. SIM reads the whole per-user store
(``user_histories-*.parquet``, linked beside the split): the input pipeline cuts each row's histories
strictly before the row's own time, so a validation row sees none of its own events or later ones (nor the
test event), and a training row none of the validation events, which are its user's latest.

    python -m bench.bench_sequence_validation --work_dir=/tmp/seq_taobao
    python -m bench.bench_sequence_validation --work_dir=/tmp/seq_taobao --models=din,din_raw_weights --seeds=42,43

Models: ``mean_pooling`` (configs/mean_pooling_taobao.py), ``din`` (din_taobao.py, softmax-normalised
attention weights) and ``din_raw_weights`` (the same with the paper's raw weights,
``--config.model.attention_normalization=none``), ``dien`` (dien_taobao.py, with the auxiliary loss) and
``dien_no_aux`` (dien_taobao.py:no_aux) and ``sim`` (sim_taobao.py). Prints the validation AUC after
each loop, and GAUC and logloss at the end.
"""

import argparse
import collections
import json
import os
import re
import sys
import time

from bench.bench_sequence_taobao import DATASET, REPO, RUNS as TAOBAO_RUNS, _binary, _run, prepare
from tfrecsys.config import config_beside

# bench_sequence_taobao's runs, and DIN with the paper's raw weights.
RUNS = {**TAOBAO_RUNS,
        "din_raw_weights": ("configs/din_taobao.py", ("--config.model.attention_normalization=none",))}
# One loop of every Taobao config: an epoch of the full training split (configs/din_taobao.py).
STEPS_PER_EPOCH = config_beside(os.path.join(REPO, "configs", "base.py"), "din_taobao.py").STEPS_PER_EPOCH


def carve_validation(data_dir: str, out_dir: str, holdout_events: int) -> dict:
    """Writes ``out_dir/{train,eval}-00000-of-00001.tfrecord`` from ``data_dir``'s training shards: a user's
    rows at their last ``holdout_events`` distinct timestamps go to eval, when the user has at least
    ``holdout_events + 3`` (so some history stays in training); the rest to train. Returns the row counts.
    The vocabularies and the per-user store are ``link_shared``'s."""
    import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    records = []
    for name in sorted(os.listdir(data_dir)):
        if name.startswith("train-") and name.endswith(".tfrecord"):
            records += [r.numpy() for r in tf.data.TFRecordDataset(os.path.join(data_dir, name))]
    spec = {"user_id": tf.io.FixedLenFeature([], tf.int64), "timestamp": tf.io.FixedLenFeature([], tf.int64)}
    keys = tf.io.parse_example(tf.constant(records), spec)
    users, times = keys["user_id"].numpy(), keys["timestamp"].numpy()
    times_of = collections.defaultdict(set)
    for user, timestamp in zip(users, times):
        times_of[user].add(timestamp)
    cutoff = {user: sorted(ts)[-holdout_events] for user, ts in times_of.items() if len(ts) >= holdout_events + 3}
    held_out = [user in cutoff and timestamp >= cutoff[user] for user, timestamp in zip(users, times)]
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split, keep in (("train", False), ("eval", True)):
        with tf.io.TFRecordWriter(os.path.join(out_dir, f"{split}-00000-of-00001.tfrecord")) as writer:
            rows = [record for record, held in zip(records, held_out) if held == keep]
            for record in rows:
                writer.write(record)
        counts[split] = len(rows)
    return counts


def link_shared(data_dir: str, out_dir: str) -> None:
    """Links ``data_dir``'s vocabularies and per-user store files into ``out_dir`` (what the configs read
    beside the rows), those not linked yet: the store is not carved, its cut by each row's time is the guard."""
    for name in sorted(os.listdir(data_dir)):
        if name == "vocabularies" or (name.startswith("user_histories-") and name.endswith(".parquet")):
            link = os.path.join(out_dir, name)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(os.path.join(data_dir, name)), link)


def train(data_dir: str, work_dir: str, model: str, seed: int, epochs: int) -> dict:
    """``tfrecsys-train`` of one model on the carved split for ``epochs`` loops of ``STEPS_PER_EPOCH``; the
    validation figures after each loop and at the end."""
    config, overrides = RUNS[model]
    overrides = (*overrides, f"--config.train.steps={epochs * STEPS_PER_EPOCH}",
                 f"--config.train.steps_per_loop={STEPS_PER_EPOCH}")
    model_dir = os.path.join(work_dir, f"{model}_seed{seed}")
    log_path = model_dir + ".log"
    started = time.perf_counter()
    _run([_binary("tfrecsys-train"), f"--config={config}", f"--config.data.dir={data_dir}",
          f"--config.train.seed={seed}", f"--model_dir={model_dir}", *overrides], log_path)
    per_loop = [float(auc) for auc in re.findall(r"val_score_auc: ([0-9.]+)", open(log_path).read())]
    with open(os.path.join(model_dir, "eval_metrics.json")) as f:
        task = next(value for value in json.load(f).values() if isinstance(value, dict))
    return {"model": model, "seed": seed, "auc_per_loop": per_loop, "auc": task["auc"], "gauc": task["gauc"],
            "logloss": task["logloss"], "wall_s": time.perf_counter() - started, "load": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", required=True, help="bench_sequence_taobao's work directory: its prepared "
                        "<work_dir>/data is read (prepared first if absent); the split and runs go beside it")
    parser.add_argument("--holdout_events", type=int, default=5, help="each user's last N distinct event times "
                        "of the training split form the validation split")
    parser.add_argument("--models", default=",".join(RUNS), help=f"comma-separated subset of {list(RUNS)}")
    parser.add_argument("--seeds", default="42", help="comma-separated config.train.seed values")
    parser.add_argument("--epochs", type=int, default=2, help="loops of one epoch of the full training split "
                        f"({STEPS_PER_EPOCH} steps) each model trains, evaluated after each, whatever the "
                        "epochs each config trains")
    args = parser.parse_args(argv)
    if not os.path.isdir(DATASET):
        print(f"skipped: {DATASET} is absent (../shared/datasets)")
        return 0
    models = args.models.split(",")
    unknown = sorted(set(models) - set(RUNS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {list(RUNS)}")
    prepare(args.work_dir)
    split_dir = os.path.join(args.work_dir, f"validation_{args.holdout_events}")
    if not os.path.exists(os.path.join(split_dir, "eval-00000-of-00001.tfrecord")):
        counts = carve_validation(os.path.join(args.work_dir, "data"), split_dir, args.holdout_events)
        print(f"validation split: {counts['train']} train rows, {counts['eval']} validation rows", flush=True)
    link_shared(os.path.join(args.work_dir, "data"), split_dir)
    print(f"load before: {os.getloadavg()}", flush=True)
    for seed in args.seeds.split(","):
        for model in models:
            r = train(split_dir, split_dir, model, int(seed), args.epochs)
            print(f"{model:16s} seed {seed}  validation AUC per loop {r['auc_per_loop']}  final AUC {r['auc']:.4f}  "
                  f"GAUC {r['gauc']:.4f}  logloss {r['logloss']:.4f}  wall {r['wall_s']:.0f} s  load "
                  f"{r['load']:.1f}  RESULT {json.dumps(r)}", flush=True)
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
