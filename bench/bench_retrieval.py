"""Two-tower retrieval: quality on MovieLens-100K and training speed against tensorflow-recommenders.

    python -m bench.run_all retrieval
    python -m bench.bench_retrieval --seeds=3 --steps=2000         # the RESULTS.md figures

1. Quality, leave-one-out by time (each user's last rating is the target, ranked among all 1,682 movies):
   Recall@10, Recall@50, NDCG@10 and MRR of the popularity ranking and of configs/two_tower_movielens.py
   trained with in-batch negatives, mixed negatives, and each with the logQ correction (item frequency table;
   mixed also with the streaming estimator), mean ± std over seeds.
2. Speed, measured in one run: training examples/s of two_tower against the tensorflow-recommenders basic
   retrieval model (the tutorial's ``tfrs.Model`` with ``tasks.Retrieval``) of the same size on the same
   in-memory batches: user and movie embeddings (32), a 32-unit projection, L2 normalisation, temperature.
   Runs alternate between the two models; the median of each is reported with the ratio.

MovieLens-100K is read from ../shared/datasets/movielens-100k (never copied into the repository) and prepared
by the config's preprocess block (tfrecsys-preprocess); the benchmark exits with a message when it is absent.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrecsys.config import load_config
from tfrecsys.data.input import make_dataset, resolve_files
from tfrecsys.data.preprocess import PreprocessConfig, preprocess
from tfrecsys.data.retrieval_data import popularity_of_directory
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.train.loop import build_and_compile, train_and_evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, os.pardir, "configs", "two_tower_movielens.py")
DATASET = os.path.join(HERE, os.pardir, os.pardir, "shared", "datasets", "movielens-100k")
MODES = [("in-batch", "in_batch", "none"), ("in-batch + logQ", "in_batch", "table"), ("mixed", "mixed", "none"),
         ("mixed + logQ", "mixed", "table"), ("mixed + streaming logQ", "mixed", "streaming")]
REPORTED = ("recall_at_10", "recall_at_50", "ndcg_at_10", "mrr")


def quality(data_dir: str, popularity: dict, seeds: int, steps: int) -> dict:
    """``{method: [metrics per seed]}``; popularity (deterministic) is the dataset's own baseline."""
    results = {"popularity": [popularity]}
    for label, negatives, logq in MODES:
        results[label] = []
        for seed in range(seeds):
            config = load_config(CONFIG, {"data.dir": data_dir, "model.negatives": negatives, "model.logq": logq,
                                          "train.steps": steps, "train.steps_per_loop": steps,
                                          "train.seed": 42 + seed})
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as model_dir:
                metrics = train_and_evaluate(config, model_dir, verbose=0)["retrieval"]
            results[label].append(metrics)
            print(f"  {label:24s} seed {seed}: " + ", ".join(f"{k}={metrics[k]:.4f}" for k in REPORTED)
                  + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    return results


def _cell(values: list) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def quality_table(results: dict) -> str:
    lines = ["| method | Recall@10 | Recall@50 | NDCG@10 | MRR |", "|---|---|---|---|---|"]
    for label, runs in results.items():
        lines.append(f"| {label} | " + " | ".join(_cell([r[k] for r in runs]) for k in REPORTED) + " |")
    return "\n".join(lines)


class TFRSBasicRetrieval(tfrs.Model):
    """The tensorflow-recommenders tutorial model, sized like two_tower's user-id/movie-id towers."""

    def __init__(self, num_users: int, num_items: int, dim: int, temperature: float):
        super().__init__()

        def tower(rows):
            return tf.keras.Sequential([tf.keras.layers.Embedding(rows, dim), tf.keras.layers.Dense(dim),
                                        tf.keras.layers.Lambda(lambda x: tf.math.l2_normalize(x, axis=-1))])

        self.user_model = tower(num_users)
        self.movie_model = tower(num_items)
        self.task = tfrs.tasks.Retrieval(temperature=temperature)

    def compute_loss(self, inputs, training=False):
        features, _ = inputs
        return self.task(self.user_model(features["user_id"]), self.movie_model(features["item_id"]),
                         compute_metrics=not training)


def _fit_rate(model, data, steps: int) -> float:
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - started)


def speed(data_dir: str, batch_size: int, steps: int, rounds: int) -> dict:
    """Examples/s of two_tower (in-batch, and mixed + streaming logQ) and of the TFRS basic model."""
    base = load_config(CONFIG, {"data.dir": data_dir})
    schema = FeatureSchema.from_config(base.features)
    files = resolve_files(base.data.train_files, data_dir)
    batches = make_dataset(files, schema, batch_size, training=True, seed=0)
    data = batches.take(200).cache().repeat()
    models = {}
    for label, negatives, logq in (("two_tower in-batch", "in_batch", "none"),
                                   ("two_tower mixed + streaming logQ", "mixed", "streaming")):
        config = load_config(CONFIG, {"data.dir": data_dir, "model.query_features": ("user_id",),
                                      "model.candidate_features": ("item_id",), "model.hidden_units": (),
                                      "train.steps_per_execution": 50, "model.negatives": negatives,
                                      "model.logq": logq})
        models[label] = build_and_compile(config, schema)
    tfrs_model = TFRSBasicRetrieval(schema["user_id"].vocab.size, schema["item_id"].vocab.size,
                                    base.model.output_dim, base.model.temperature)
    tfrs_model.compile(optimizer=tf.keras.optimizers.Adam(base.train.learning_rate), steps_per_execution=50)
    models["tfrs basic retrieval"] = tfrs_model
    for model in models.values():   # trace, build and warm up outside the timed runs
        _fit_rate(model, data, 100)
    sizes = {label: int(sum(np.prod(v.shape) for v in model.trainable_variables)) for label, model in models.items()}
    rates = {label: [] for label in models}
    for _ in range(rounds):
        for label, model in models.items():
            rates[label].append(_fit_rate(model, data, steps) * batch_size)
    medians = {label: statistics.median(values) for label, values in rates.items()}
    baseline = medians["tfrs basic retrieval"]
    return {"examples_per_sec": medians, "ratio_to_tfrs": {k: v / baseline for k, v in medians.items()},
            "trainable_parameters": sizes, "batch_size": batch_size, "steps_per_run": steps, "rounds": rounds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per learned method")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run (batch 512)")
    parser.add_argument("--speed_steps", type=int, default=300, help="steps per timed speed run")
    parser.add_argument("--speed_rounds", type=int, default=5, help="timed runs per model, alternating")
    parser.add_argument("--dataset", default=DATASET, help="MovieLens-100K directory (u.data, u.item)")
    parser.add_argument("--skip_quality", action="store_true", help="only measure training speed")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.dataset, "u.data")):
        print(f"MovieLens-100K not found at {args.dataset}: skipping the retrieval benchmark")
        return 0
    with tempfile.TemporaryDirectory() as data_dir:
        config = load_config(CONFIG, {"data.dir": data_dir, "preprocess.input": args.dataset})
        metadata = preprocess(PreprocessConfig.from_config(config.preprocess), config.features, data_dir)
        popularity = popularity_of_directory(data_dir, config.data.eval_files)
        print(f"MovieLens-100K leave-one-out: {metadata['splits']['train']['rows']} training rows, "
              f"{metadata['splits']['eval']['rows']} evaluated users, {metadata['num_candidates']} candidates",
              flush=True)
        report = {}
        if not args.skip_quality:
            report["quality"] = quality(data_dir, popularity, args.seeds, args.steps)
            print("\n" + quality_table(report["quality"]) + "\n", flush=True)
        report["speed"] = speed(data_dir, batch_size=512, steps=args.speed_steps, rounds=args.speed_rounds)
    speed_report = report["speed"]
    print("| model | trainable parameters | examples/s (median) | ratio to TFRS |\n|---|---|---|---|")
    for label, rate in speed_report["examples_per_sec"].items():
        print(f"| {label} | {speed_report['trainable_parameters'][label]:,} | {rate:,.0f} | "
              f"{speed_report['ratio_to_tfrs'][label]:.2f} |")
    print(json.dumps(report["speed"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
