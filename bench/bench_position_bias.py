"""Shallow position-bias tower on the position-bias simulator (issue 13): does it learn the examination curve,
and does the debiased served score rank by true relevance better than the same model trained without it?

    python -m bench.bench_position_bias          # the RESULTS.md figures (configs/dnn_position_bias_simulator.py)
    python -m bench.bench_position_bias --seeds=1 --steps=400

For each seed the simulator writes its log once, then configs/dnn_position_bias_simulator.py trains twice
through the one train loop, with the tower and with ``model.position_tower.tasks=()``, and both are scored on
the eval requests:

* Spearman correlation, per device, between the tower's bias logit at positions 1..list_size and the true
  examination curve θ[device, k] (the tower is evaluated on every (position, device) pair);
* NDCG@list_size of each eval request's shown list ordered by the served (debiased) ctr, with the true
  relevance r = P(click | examined) as the gain;
* the eval AUC of ctr on the logged clicks (what training optimises, the tower included where there is one).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.input import make_dataset, resolve_files
from tfrecsys.data.simulators import write_from_config
from tfrecsys.data.model_tables import ModelTables
from tfrecsys.export.trained import restore_weights
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.train.loop import CHECKPOINT_SUBDIR, train_and_evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, os.pardir, "configs", "dnn_position_bias_simulator.py")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two vectors without ties (a curve over positions)."""
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def ndcg_by_request(request_ids: np.ndarray, scores: np.ndarray, gains: np.ndarray) -> float:
    """Mean over requests of DCG(order by score) / DCG(order by gain), gains discounted by 1/log2(1 + rank)."""
    values = []
    for request in np.unique(request_ids):
        rows = request_ids == request
        gain, score = gains[rows], scores[rows]
        discount = 1.0 / np.log2(np.arange(2, len(gain) + 2))
        ideal = (np.sort(gain)[::-1] * discount).sum()
        values.append((gain[np.argsort(-score, kind="stable")] * discount).sum() / ideal)
    return float(np.mean(values))


def tower_curve(model, list_size: int, devices: int) -> np.ndarray:
    """The tower's bias logit ``[device, position - 1]`` (inference mode: no position dropout)."""
    positions = np.tile(np.arange(1, list_size + 1), devices).astype(np.int64)
    device_ids = np.repeat(np.arange(devices), list_size).astype(np.int64)
    logits = model.position_tower({"position": tf.constant(positions), "device": tf.constant(device_ids)},
                                  training=False)
    return logits.numpy().reshape(devices, list_size)


def evaluate(config, model_dir: str, data_dir: str, truth: dict) -> dict:
    """Restores the trained model and scores the eval split against the simulator's truth."""
    schema = FeatureSchema.from_config(config.features)
    model = build_model(config, schema, ModelTables(config, schema))
    files = resolve_files(config.data.eval_files, data_dir)
    # The eval rows with their request and example ids, to align scores with the truth's per-row arrays.
    ids = {name: dict(kind="label", dtype="int64") for name in ("request_id", "example_id")}
    with_ids = FeatureSchema.from_config({**config.features.to_dict(), **ids})
    served, requests, examples = [], [], []
    restored = False
    for features, labels in make_dataset(files, with_ids, 4096, training=False):
        if not restored:
            model(features)
            if model.position_tower is not None:
                model.build_training_towers(features)
            restore_weights(model, schema, config,
                            tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR)))
            restored = True
        serving = {name: features[name] for name in model.serving_features}
        served.append(model(serving, training=False)["ctr"].numpy())
        requests.append(labels["request_id"].numpy())
        examples.append(labels["example_id"].numpy().astype(np.int64))
    scores, rows = np.concatenate(served), np.concatenate(examples)
    result = {"ndcg_true_relevance": ndcg_by_request(np.concatenate(requests), scores, truth["relevance"][rows])}
    if model.position_tower is not None:
        curve = tower_curve(model, config.data.simulator.list_size, len(config.data.simulator.device_exponents))
        result["spearman_by_device"] = [spearman(curve[d], truth["examination_curve"][d])
                                        for d in range(curve.shape[0])]
        result["tower_curve"] = curve.round(3).tolist()
    return result


def run(seed: int, steps: int, work_dir: str, num_requests: int = 0, position_dropout: float = -1.0) -> dict:
    """Both models on one simulated log: ``{"tower": {...}, "no_tower": {...}}``."""
    config = load_config(CONFIG)
    if position_dropout >= 0:
        config.model.position_tower.position_dropout = position_dropout
    data_dir = os.path.join(work_dir, f"data-{seed}")
    config.data.dir = data_dir
    config.data.simulator.seed = seed
    if num_requests:
        config.data.simulator.num_requests = num_requests
    config.train.steps = steps
    config.train.steps_per_loop = steps
    config.train.eval_every_loop = 0
    config.train.best_metric = ""
    config.train.seed = seed
    metadata = write_from_config(config.data.simulator, data_dir)
    truth = dict(np.load(os.path.join(data_dir, "ground_truth.npz")))
    out = {"click_rate": metadata["click_rate"]}
    for name, tasks in (("tower", ("ctr",)), ("no_tower", ())):
        config.model.position_tower.tasks = tasks
        model_dir = os.path.join(work_dir, f"{name}-{seed}")
        metrics = train_and_evaluate(config, model_dir, verbose=0)
        out[name] = {"eval_auc_logged_clicks": float(metrics["ctr"]["auc"]),
                     **evaluate(config, model_dir, data_dir, truth)}
    return out


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="simulated logs (seeds 0..n-1), each trained twice")
    parser.add_argument("--first_seed", type=int, default=0, help="seed of the first log (seeds first_seed.."
                        "first_seed+seeds-1): split a long run over processes")
    parser.add_argument("--position_dropout", type=float, default=-1.0,
                        help="the tower's position dropout (negative: the config's)")
    parser.add_argument("--steps", type=int, default=1200, help="training steps of each model")
    parser.add_argument("--num_requests", type=int, default=0,
                        help="requests simulated per seed (0: the config's 30,000, 10 rows each)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work_dir:
        runs = [run(seed, args.steps, work_dir, args.num_requests, args.position_dropout)
                for seed in range(args.first_seed, args.first_seed + args.seeds)]
    print(json.dumps(runs, indent=1))
    for name in ("tower", "no_tower"):
        ndcg = [r[name]["ndcg_true_relevance"] for r in runs]
        auc = [r[name]["eval_auc_logged_clicks"] for r in runs]
        line = (f"{name:9s} NDCG@10 vs true relevance {statistics.mean(ndcg):.4f} "
                f"(per seed {[round(x, 4) for x in ndcg]})")
        line += f", eval AUC on logged clicks {statistics.mean(auc):.4f}"
        if name == "tower":
            worst = min(min(r[name]["spearman_by_device"]) for r in runs)
            line += f", lowest Spearman(tower, θ) over devices and seeds {worst:.4f}"
        print(line)
    gains = [r["tower"]["ndcg_true_relevance"] - r["no_tower"]["ndcg_true_relevance"] for r in runs]
    print(f"NDCG gain of the tower: {statistics.mean(gains):+.4f} (per seed {[round(g, 4) for g in gains]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
