"""SIM against DIN and mean-pooling where the relevant behaviours are older than the recent history: AUC, GAUC
and logloss on the lifelong sequential world of configs/sim_simulator.py, every model on the same rows.

    python -m bench.run_all sim                      # or: python -m bench.bench_sim --steps=450 --seeds=0,1

The world (seed 0): 400 users with about 290 clicks each in the per-user history store; a user's current
interest lasts about 250 impressions, so the 20 most recent clicks show the current interest while the other
long-term interests (clicked 12x more often than other categories, ground truth) were clicked long before.
``user_id`` is training-only for every model: what a model knows of a user comes from the histories.

* ``mean_pooling``: the dnn family over the target and the 20 recent clicks, mean-pooled;
* ``mean_pooling_lifelong``: the same with the lifelong history (1,000 most recent clicks) mean-pooled too;
* ``din``: target attention over the 20 recent clicks;
* ``sim_hard`` / ``sim_soft``: configs/sim_simulator.py, hard search (the target's category) or soft search
  (top-K inner products, auxiliary GSU task of weight 0.1), DIN over the recent clicks.

All train ``--steps`` steps of batch 256 with the same seed (the generic train loop) and are evaluated on the
whole eval split (the last 10% of rows in time). Also printed: AUC on the eval rows whose target is in one of
the user's long-term interests other than the current one (ground truth), where the recent history says
little and the lifelong one much.
"""

import argparse
import json
import os
import tempfile
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.simulators import write_from_config
from tfrecsys.data.simulators.common import auc
from tfrecsys.export.trained import load_trained_model
from tfrecsys.data.input import make_dataset, resolve_files
from tfrecsys.train.loop import train_and_evaluate, user_histories

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM_CONFIG = os.path.join(REPO, "configs", "sim_simulator.py")
RECENT = ("recent_item_id", "recent_category")
LIFELONG = ("long_item_id", "long_category", "long_timestamp")
MODELS = ("mean_pooling", "mean_pooling_lifelong", "din", "sim_hard", "sim_soft")


def variant(name: str, data_dir: str, steps: int, seed: int):
    """configs/sim_simulator.py turned into ``name``: same world, rows, store, steps and seed."""
    config = load_config(SIM_CONFIG, {"data.dir": data_dir, "train.steps": steps, "train.steps_per_loop": steps,
                                      "train.seed": seed, "train.best_metric": ""})
    if name.startswith("sim"):
        if name == "sim_soft":
            config.model.search = "soft"
            config.tasks.gsu = dict(label="click", weight=0.1, metrics=())
        return config
    keep_lifelong = name == "mean_pooling_lifelong"
    dropped = LIFELONG if not keep_lifelong else LIFELONG[2:]
    for feature in dropped:
        del config.features[feature]
        del config.data.user_histories.sequences[feature]
    # The request time only finds histories in the store: these models have no use for an int64 time.
    config.features.timestamp = dict(kind="dense", dtype="int64", training_only=True)
    model = {"name": "dnn", "hidden_units": (128, 64), "dropout": 0.0}
    if name == "din":
        model = {"name": "din", "history": RECENT, "attention_units": (80, 40), "attention_activation": "dice",
                 "hidden_units": (128, 64), "dropout": 0.0, "mba_l2": 0.0}
    config.model = model
    return config


def long_term_auc(config, model_dir: str, truth, eval_rows: int) -> float:
    """AUC over the eval rows whose target is a long-term interest of the user but not the current one."""
    model, schema, _ = load_trained_model(config, model_dir)
    dataset = make_dataset(resolve_files(config.data.eval_files, config.data.dir), schema,
                           config.train.eval_batch_size, targets={"score": "click"}, training=False,
                           user_histories=user_histories(config, schema))
    scores, labels = [], []
    for features, label in dataset:
        scores.append(model(features, training=False)["score"].numpy())
        labels.append(label["score"].numpy())
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    assert len(scores) == eval_rows
    selected = truth["in_long_term"][-eval_rows:] & ~truth["is_current"][-eval_rows:]
    return auc(labels[selected], scores[selected])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=450, help="training steps of every model (batch 256)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds; the world is seed 0")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    parser.add_argument("--data_dir", default="", help="reuse a simulated world here (written when empty)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench_sim_")
    data_dir = args.data_dir or os.path.join(root, "data")
    if not os.path.exists(os.path.join(data_dir, "metadata.json")):
        write_from_config(load_config(SIM_CONFIG).data.simulator, data_dir)
    with open(os.path.join(data_dir, "metadata.json")) as f:
        metadata = json.load(f)
    truth = np.load(os.path.join(data_dir, "ground_truth.npz"))
    print(f"world: {metadata['train_rows']} train / {metadata['eval_rows']} eval rows, "
          f"{metadata['history_events_per_user']:.0f} history events per user, oracle eval AUC "
          f"{metadata['oracle_auc']:.4f}; load {os.getloadavg()[0]:.1f}", flush=True)
    results = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.models.split(","):
            config = variant(name, data_dir, args.steps, seed)
            model_dir = os.path.join(root, f"{name}_{seed}")
            started = time.perf_counter()
            tf.keras.utils.set_random_seed(seed)
            metrics = train_and_evaluate(config, model_dir, verbose=0)["score"]
            long_term = long_term_auc(config, model_dir, truth, metadata["eval_rows"])
            results.setdefault(name, []).append((metrics["auc"], metrics["gauc"], metrics["logloss"], long_term))
            print(f"seed {seed} {name:22s} AUC {metrics['auc']:.4f} GAUC {metrics['gauc']:.4f} "
                  f"logloss {metrics['logloss']:.4f} AUC(long-term, not current) {long_term:.4f} "
                  f"({time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    print("\nmean over seeds: model, AUC, GAUC, logloss, AUC on long-term-not-current targets")
    for name, rows in results.items():
        print(f"{name:22s} " + " ".join(f"{v:.4f}" for v in np.mean(rows, axis=0)))
    if "sim_hard" in results:
        for other in ("din", "mean_pooling", "mean_pooling_lifelong"):
            if other in results:
                gain = np.mean(results["sim_hard"], axis=0) - np.mean(results[other], axis=0)
                print(f"sim_hard − {other}: AUC {gain[0]:+.4f}, GAUC {gain[1]:+.4f}, long-term AUC {gain[3]:+.4f}")


if __name__ == "__main__":
    main()
