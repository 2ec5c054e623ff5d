"""Two-tower retrieval on MovieLens-100K: quality, speed and time to first step against tensorflow-recommenders.

    python -m bench.run_all retrieval
    python -m bench.bench_retrieval --seeds=3 --steps=2000         # the RESULTS.md figures

1. Quality, leave-one-out by time (each user's last rating is the target, ranked among all 1,682 movies):
   Recall@10, Recall@50, NDCG@10 and MRR of the popularity ranking, of configs/two_tower_movielens.py
   trained with in-batch negatives, mixed negatives, and each with the logQ correction (item frequency table;
   mixed also with the streaming estimator), and of the same model built in tensorflow-recommenders
   (``TFRSFullFeatureRetrieval``: the same history and genre towers, ``tasks.Retrieval`` over in-batch
   negatives, with and without its logQ ``candidate_sampling_probability``), trained on the same batches for
   the same steps; mean ± std over seeds.
2. Speed, measured in one run: training examples/s of two_tower against tensorflow-recommenders on the same
   in-memory batches, for the id-only towers of the TFRS tutorial (user and movie embeddings, a 32-unit
   projection, L2 normalisation, temperature) and for the full-feature towers of the config. Runs alternate
   between the models; the median of each is reported with the ratio to TFRS's model of the same towers.
3. Time to first step: model construction, compile, input pipeline and the first training step (one step
   per execution), each in a fresh process, alternating between two_tower (``train_and_evaluate``) and the
   TFRS full-feature model (``fit`` on the same input pipeline); median wall and CPU seconds.

MovieLens-100K is read from ../shared/datasets/movielens-100k (never copied into the repository) and prepared
by the config's preprocess block (tfrecsys-preprocess); the benchmark exits with a message when it is absent.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrecsys.config import load_config
from tfrecsys.data.input import make_dataset, resolve_files
from tfrecsys.data.model_tables import ModelTables
from tfrecsys.data.preprocess import PreprocessConfig, preprocess
from tfrecsys.data.retrieval_data import popularity_of_directory
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.metrics.retrieval import summarize_ranks, target_ranks
from tfrecsys.train.loop import build_and_compile, train_and_evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, os.pardir, "configs", "two_tower_movielens.py")
DATASET = os.path.join(HERE, os.pardir, os.pardir, "shared", "datasets", "movielens-100k")
MODES = [("in-batch", "in_batch", "none"), ("in-batch + logQ", "in_batch", "table"), ("mixed", "mixed", "none"),
         ("mixed + logQ", "mixed", "table"), ("mixed + streaming logQ", "mixed", "streaming")]
TFRS_MODES = [("TFRS in-batch (same features)", False), ("TFRS in-batch + logQ (same features)", True)]
METHODS = [label for label, _, _ in MODES] + [label for label, _ in TFRS_MODES]
REPORTED = ("recall_at_10", "recall_at_50", "ndcg_at_10", "mrr")


def quality(data_dir: str, popularity: dict, seeds: int, steps: int, methods) -> dict:
    """``{method: [metrics per seed]}``; popularity (deterministic) is the dataset's own baseline."""
    results = {"popularity": [popularity]}
    tfrs_logq = dict(TFRS_MODES)
    for label, negatives, logq in MODES:
        if label in methods:
            results[label] = []
    for label in tfrs_logq:
        if label in methods:
            results[label] = []
    for seed in range(seeds):   # seeds outermost: an interrupted run still holds every method's first seeds
        for label in list(results)[1:]:
            overrides = {"data.dir": data_dir, "train.steps": steps, "train.steps_per_loop": steps,
                         "train.seed": 42 + seed}
            started = time.perf_counter()
            if label in tfrs_logq:
                metrics = train_and_evaluate_tfrs(load_config(CONFIG, overrides), logq=tfrs_logq[label])
            else:
                _, negatives, logq = next(mode for mode in MODES if mode[0] == label)
                config = load_config(CONFIG, {**overrides, "model.negatives": negatives, "model.logq": logq})
                with tempfile.TemporaryDirectory() as model_dir:
                    metrics = train_and_evaluate(config, model_dir, verbose=0)["retrieval"]
            results[label].append(metrics)
            print(f"  {label:36s} seed {seed}: " + ", ".join(f"{k}={metrics[k]:.4f}" for k in REPORTED)
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


def _mean_over_length(values, lengths):
    """``[batch, max_len, dim]`` rows averaged over the first ``lengths`` ``[batch]`` positions → ``[batch, dim]``
    (zeros for an empty sequence)."""
    mask = tf.sequence_mask(lengths, tf.shape(values)[1], dtype=values.dtype)[..., tf.newaxis]
    return tf.reduce_sum(values * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def _mlp(hidden_units, output_dim: int) -> tf.keras.Sequential:
    return tf.keras.Sequential([tf.keras.layers.Dense(units, activation="relu") for units in hidden_units]
                               + [tf.keras.layers.Dense(output_dim)])


class TFRSQueryTower(tf.keras.Model):
    """``normalize(MLP([e(user_id); mean e(hist_item_id)]))``, the history through the shared item table."""

    def __init__(self, item_embedding, num_users: int, user_dim: int, hidden_units, output_dim: int):
        super().__init__()
        self.user_embedding = tf.keras.layers.Embedding(num_users, user_dim)
        self.item_embedding = item_embedding
        self.mlp = _mlp(hidden_units, output_dim)

    def call(self, features):
        history = _mean_over_length(self.item_embedding(features["hist_item_id"]), features["hist_item_id_length"])
        flat = tf.concat([self.user_embedding(features["user_id"]), history], axis=-1)
        return tf.math.l2_normalize(self.mlp(flat), axis=-1)


class TFRSCandidateTower(tf.keras.Model):
    """``normalize(MLP([e(item_id); mean e(genres)]))``, genre names looked up in the model."""

    def __init__(self, item_embedding, genres, genre_dim: int, hidden_units, output_dim: int):
        super().__init__()
        self.item_embedding = item_embedding
        self.genre_lookup = tf.keras.layers.StringLookup(vocabulary=list(genres), mask_token=None)
        self.genre_embedding = tf.keras.layers.Embedding(len(genres) + 1, genre_dim)
        self.mlp = _mlp(hidden_units, output_dim)

    def call(self, features):
        genres = _mean_over_length(self.genre_embedding(self.genre_lookup(features["genres"])),
                                   features["genres_length"])
        flat = tf.concat([self.item_embedding(features["item_id"]), genres], axis=-1)
        return tf.math.l2_normalize(self.mlp(flat), axis=-1)


class TFRSFullFeatureRetrieval(tfrs.Model):
    """configs/two_tower_movielens.py's towers built in tensorflow-recommenders, trained with its
    ``tasks.Retrieval`` (in-batch softmax, accidental hits removed, reward as sample weight). With
    ``item_probability`` (``[num_items + 1]``, by item id) each in-batch column gets TFRS's logQ correction,
    ``candidate_sampling_probability``: the same frequency table as two_tower's ``logq="table"``."""

    def __init__(self, schema: FeatureSchema, model_config, item_probability=None):
        super().__init__()
        hidden, dim = tuple(model_config.hidden_units), model_config.output_dim
        item_embedding = tf.keras.layers.Embedding(schema["item_id"].vocab.size, schema["item_id"].embedding_dim)
        self.query_model = TFRSQueryTower(item_embedding, schema["user_id"].vocab.size,
                                          schema["user_id"].embedding_dim, hidden, dim)
        self.candidate_model = TFRSCandidateTower(item_embedding, schema["genres"].vocab.vocabulary,
                                                  schema["genres"].embedding_dim, hidden, dim)
        self.task = tfrs.tasks.Retrieval(temperature=model_config.temperature,
                                         remove_accidental_hits=model_config.remove_accidental_hits)
        self.item_probability = None if item_probability is None else tf.constant(item_probability, tf.float32)

    def compute_loss(self, inputs, training=False):
        features, labels = inputs
        probability = None
        if self.item_probability is not None:
            probability = tf.gather(self.item_probability, features["item_id"])
        return self.task(self.query_model(features), self.candidate_model(features), sample_weight=labels["reward"],
                         candidate_sampling_probability=probability, candidate_ids=features["item_id"],
                         compute_metrics=False)


def _tfrs_setup(config, logq: bool = False):
    """``(schema, corpus, compiled TFRSFullFeatureRetrieval, training batches)`` for ``config``, on the same
    input pipeline and candidate corpus as two_tower."""
    schema = FeatureSchema.from_config(config.features)
    corpus = ModelTables(config, schema).candidate_corpus(config.model.candidate_features, config.model.candidate_id)
    item_probability = None
    if logq:   # two_tower's table: an item the table has not counted gets the probability of one occurrence
        item_probability = np.full(schema["item_id"].vocab.size, 1.0 / corpus.counts.sum())
        item_probability[corpus.ids] = np.maximum(corpus.counts, 1.0) / corpus.counts.sum()
    model = TFRSFullFeatureRetrieval(schema, config.model, item_probability)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.train.learning_rate),
                  steps_per_execution=config.train.steps_per_execution)
    train = make_dataset(resolve_files(config.data.train_files, config.data.dir), schema, config.train.batch_size,
                         training=True, shuffle_buffer=config.train.shuffle_buffer, seed=config.train.seed)
    return schema, corpus, model, train


def train_and_evaluate_tfrs(config, logq: bool) -> dict:
    """Trains ``TFRSFullFeatureRetrieval`` for ``config.train.steps`` and ranks each evaluation user's target
    among the whole corpus, with the metric code of two_tower's evaluation."""
    tf.keras.utils.set_random_seed(config.train.seed)
    schema, corpus, model, train = _tfrs_setup(config, logq)
    model.fit(train, steps_per_epoch=config.train.steps, epochs=1, verbose=0)
    corpus_embeddings = model.candidate_model(corpus.features)
    row_of = {item: row for row, item in enumerate(corpus.ids.tolist())}
    evaluation = make_dataset(resolve_files(config.data.eval_files, config.data.dir), schema,
                              config.train.eval_batch_size, training=False)
    ranks = []
    for features, _ in evaluation:
        scores = tf.matmul(model.query_model(features), corpus_embeddings, transpose_b=True)
        rows = [row_of.get(item, -1) for item in features[config.model.candidate_id].numpy().tolist()]
        ranks.append(target_ranks(scores, tf.constant(rows, tf.int64)).numpy())
    return summarize_ranks(np.concatenate(ranks), config.model.eval_ks)


def _fit_rate(model, data, steps: int) -> float:
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - started)


ID_ONLY_TFRS = "tfrs basic retrieval (id-only towers)"
FULL_TFRS = "TFRS in-batch (full-feature towers)"


def speed(data_dir: str, batch_size: int, steps: int, rounds: int) -> dict:
    """Examples/s of two_tower and of the TFRS model with the same towers: id-only (two_tower in-batch, and
    mixed + streaming logQ) and full-feature (two_tower in-batch, and the config's default)."""
    base = load_config(CONFIG, {"data.dir": data_dir})
    schema = FeatureSchema.from_config(base.features)
    files = resolve_files(base.data.train_files, data_dir)
    batches = make_dataset(files, schema, batch_size, training=True, seed=0)
    data = batches.take(200).cache().repeat()
    id_only = {"model.query_features": ("user_id",), "model.candidate_features": ("item_id",),
               "model.hidden_units": ()}
    variants = [("two_tower in-batch (id-only towers)", {**id_only, "model.negatives": "in_batch",
                                                         "model.logq": "none"}, ID_ONLY_TFRS),
                ("two_tower mixed + streaming logQ (id-only towers)", {**id_only, "model.negatives": "mixed",
                                                                       "model.logq": "streaming"}, ID_ONLY_TFRS),
                ("two_tower in-batch (full-feature towers)", {"model.negatives": "in_batch", "model.logq": "none"},
                 FULL_TFRS),
                ("two_tower default config (full-feature towers)", {}, FULL_TFRS)]
    models, baseline_of = {}, {}
    for label, overrides, baseline in variants:
        config = load_config(CONFIG, {"data.dir": data_dir, "train.steps_per_execution": 50, **overrides})
        models[label], baseline_of[label] = build_and_compile(config, schema), baseline
    tfrs_model = TFRSBasicRetrieval(schema["user_id"].vocab.size, schema["item_id"].vocab.size,
                                    base.model.output_dim, base.model.temperature)
    tfrs_model.compile(optimizer=tf.keras.optimizers.Adam(base.train.learning_rate), steps_per_execution=50)
    models[ID_ONLY_TFRS], baseline_of[ID_ONLY_TFRS] = tfrs_model, ID_ONLY_TFRS
    models[FULL_TFRS], baseline_of[FULL_TFRS] = _tfrs_setup(base)[2], FULL_TFRS
    for model in models.values():   # trace, build and warm up outside the timed runs
        _fit_rate(model, data, 100)
    sizes = {label: int(sum(np.prod(v.shape) for v in model.trainable_variables)) for label, model in models.items()}
    rates = {label: [] for label in models}
    for _ in range(rounds):
        for label, model in models.items():
            rates[label].append(_fit_rate(model, data, steps) * batch_size)
    medians = {label: statistics.median(values) for label, values in rates.items()}
    # Each round's ratio compares runs seconds apart, so it cancels the load that shifts between rounds.
    round_ratios = {label: [mine / theirs for mine, theirs in zip(values, rates[baseline_of[label]])]
                    for label, values in rates.items()}
    return {"examples_per_sec": medians, "all_runs": rates,
            "ratio_to_tfrs": {k: v / medians[baseline_of[k]] for k, v in medians.items()},
            "round_ratios": round_ratios, "baseline": baseline_of, "trainable_parameters": sizes,
            "batch_size": batch_size, "steps_per_run": steps, "rounds": rounds}


class _FirstStepClock(tf.keras.callbacks.Callback):
    """Wall and CPU seconds from ``started`` to the end of the first training step."""

    def __init__(self, started: tuple):
        super().__init__()
        self.started = started
        self.seconds = None

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is None:
            self.seconds = {"wall": time.perf_counter() - self.started[0],
                            "cpu": time.process_time() - self.started[1]}


def first_step_probe(model: str, data_dir: str) -> dict:
    """Time to first step of a fresh process: construction, compile, input pipeline and one training step
    (``steps_per_execution=1``), two_tower through ``train_and_evaluate`` or the TFRS full-feature model."""
    config = load_config(CONFIG, {"data.dir": data_dir, "train.steps": 1, "train.steps_per_loop": 1,
                                  "train.steps_per_execution": 1})
    clock = _FirstStepClock((time.perf_counter(), time.process_time()))
    if model == "two_tower":
        with tempfile.TemporaryDirectory() as model_dir:
            train_and_evaluate(config, model_dir, verbose=0, callbacks=[clock])
    else:
        _, _, tfrs_model, train = _tfrs_setup(config)
        tfrs_model.fit(train, steps_per_epoch=1, epochs=1, verbose=0, callbacks=[clock])
    return clock.seconds


def first_step(data_dir: str, rounds: int) -> dict:
    """Median time to first step of two_tower and TFRS, fresh processes alternating ``rounds`` times."""
    runs = {"two_tower": [], "tfrs": []}
    root = os.path.join(HERE, os.pardir)
    for _ in range(rounds):
        for model in runs:
            probe = subprocess.run([sys.executable, "-m", "bench.bench_retrieval", f"--first_step_probe={model}",
                                    f"--data_dir={data_dir}"], cwd=root, capture_output=True, text=True,
                                   timeout=600, check=True)
            runs[model].append(json.loads(probe.stdout.strip().splitlines()[-1]))
            print(f"  first step, {model:9s}: wall {runs[model][-1]['wall']:.2f} s, "
                  f"CPU {runs[model][-1]['cpu']:.2f} s", flush=True)
    return {model: {"wall": statistics.median(r["wall"] for r in values),
                    "cpu": statistics.median(r["cpu"] for r in values), "runs": values}
            for model, values in runs.items()}


def _methods(text: str) -> list:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {METHODS}")
    return methods


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per learned method")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run (batch 512)")
    parser.add_argument("--methods", type=_methods, default=METHODS,
                        help="comma-separated learned methods of the quality table (default: all): "
                             + ", ".join(METHODS))
    parser.add_argument("--speed_steps", type=int, default=300, help="steps per timed speed run")
    parser.add_argument("--speed_rounds", type=int, default=5, help="timed runs per model, alternating")
    parser.add_argument("--first_step_rounds", type=int, default=3,
                        help="fresh processes per model timing construction to first step, alternating (0: skip)")
    parser.add_argument("--dataset", default=DATASET, help="MovieLens-100K directory (u.data, u.item)")
    parser.add_argument("--skip_quality", action="store_true", help="only measure training speed and first step")
    parser.add_argument("--first_step_probe", choices=("two_tower", "tfrs"),
                        help="internal: time one model's first step in this process and print it as JSON")
    parser.add_argument("--data_dir", help="internal, with --first_step_probe: the prepared retrieval dataset")
    args = parser.parse_args(argv)
    if args.first_step_probe:
        if not args.data_dir:
            parser.error("--first_step_probe needs --data_dir (a dataset the config's preprocess block wrote)")
        print(json.dumps(first_step_probe(args.first_step_probe, args.data_dir)))
        return 0
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
            report["quality"] = quality(data_dir, popularity, args.seeds, args.steps, args.methods)
            print("\n" + quality_table(report["quality"]) + "\n", flush=True)
        report["speed"] = speed(data_dir, batch_size=512, steps=args.speed_steps, rounds=args.speed_rounds)
        if args.first_step_rounds:
            report["first_step"] = first_step(data_dir, args.first_step_rounds)
    speed_report = report["speed"]
    print("| model | trainable parameters | examples/s (median) | ratio of medians to TFRS (same towers) | "
          "per-round ratio: median [min–max] |\n|---|---|---|---|---|")
    for label, rate in speed_report["examples_per_sec"].items():
        ratios = speed_report["round_ratios"][label]
        print(f"| {label} | {speed_report['trainable_parameters'][label]:,} | {rate:,.0f} | "
              f"{speed_report['ratio_to_tfrs'][label]:.2f} | {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}–{max(ratios):.2f}] |")
    if "first_step" in report:
        timings = report["first_step"]
        print("\n| time to first step (median) | wall s | CPU s |\n|---|---|---|")
        for model, median in timings.items():
            print(f"| {model} | {median['wall']:.2f} | {median['cpu']:.2f} |")
    print(json.dumps({k: v for k, v in report.items() if k != "quality"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
