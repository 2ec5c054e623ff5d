"""Generative ranking quality: hstu_ranking against DIN on the same rows, AUC and GAUC per task, mean ± std over
seeds (issue 15).

    .venv/bin/python bench/bench_hstu_ranking.py                       # MovieLens-100K, seeds 0 1 2
    .venv/bin/python bench/bench_hstu_ranking.py --seeds=0 --steps=200

The data is configs/hstu_ranking_movielens_100k.py's (tfrecsys-preprocess, once, from ../shared/datasets; the
benchmark exits with a message when the dataset is absent): every rating a row, its candidate the rated movie,
its history the user's earlier movies and ratings, chronological split, tasks ``like`` (rating >= 4) and
``love`` (rating = 5). Per seed, the models train one after another through the generic train loop on the
same files with the same steps, batch, learning rate and seed:

* ``hstu_ranking``: the config; the towers also train at every history item, labelled by its rating
  (``model.history_labels``);
* ``hstu_ranking_candidate_only``: the same without ``history_labels`` (one labelled position per row);
* ``din``: attention over the history items with the candidate, plus the user id and the history's mean
  rating (the user's rating bias, which HSTU reads from the rating tokens).

The last column is the per-seed ratio of each HSTU's ``like`` AUC to DIN's.
"""

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from tfrecsys.config import load_config  # noqa: E402
from tfrecsys.data.preprocess import PreprocessConfig, preprocess  # noqa: E402
from tfrecsys.train.loop import train_and_evaluate  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs",
                      "hstu_ranking_movielens_100k.py")
MODELS = ("hstu_ranking", "hstu_ranking_candidate_only", "din")
TASKS = ("like", "love")
METRICS = ("auc", "gauc")


def config_for(model: str, data_dir: str, seed: int, steps: int):
    overrides = {"data.dir": data_dir, "train.seed": seed, "train.eval_every_loop": 0}
    if steps:  # one loop: any step count divides itself
        overrides.update({"train.steps": steps, "train.steps_per_loop": steps})
    config = load_config(CONFIG, overrides)
    if model == "hstu_ranking_candidate_only":
        config.model.history_labels = {}
    if model == "din":
        # The same rows and tasks; DIN's own inputs (raw timestamps are no tower input).
        for name in ("hist_timestamp", "timestamp"):
            del config.features[name]
        config.features.user_id.training_only = False
        config.model = dict(name="din", history=("hist_item_id",), attention_units=(32, 16),
                            attention_activation="dice", hidden_units=(64, 32), dropout=0.0, mba_l2=0.0)
    return config


def prepare(data_root: str) -> str:
    data_dir = os.path.join(data_root, "movielens_100k_ratings")
    config = config_for("hstu_ranking", data_dir, 0, 0)
    if not os.path.isdir(config.preprocess.input):
        sys.exit(f"{config.preprocess.input} is absent (see data/ for where to download MovieLens-100K)")
    if not os.path.exists(os.path.join(data_dir, "metadata.json")):
        preprocess(PreprocessConfig.from_config(config.preprocess), config.features, data_dir)
    return data_dir


def mean_std(values) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def one_seed(data_dir: str, seed: int, steps: int, work_dir: str, models) -> dict:
    """``models`` one after another with one seed: ``{model: ({(task, metric): value}, seconds)}``."""
    out = {}
    for model in models:
        config = config_for(model, data_dir, seed, steps)
        start = time.perf_counter()
        metrics = train_and_evaluate(config, os.path.join(work_dir, f"{model}_{seed}"), verbose=0)
        out[model] = ({(t, m): metrics[t][m] for t in TASKS for m in METRICS}, time.perf_counter() - start)
        print(f"seed {seed} {model}: " + ", ".join(f"{t} {m} {out[model][0][(t, m)]:.4f}"
                                                   for t in TASKS for m in METRICS)
              + f" ({out[model][1]:.0f} s)", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (config.train.seed)")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps of every run (default: the config's train.steps)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {MODELS}")
    parser.add_argument("--processes", type=int, default=1,
                        help="seeds trained in parallel processes (each trains the models one after another)")
    parser.add_argument("--data_root", default="runs/data/bench_hstu_ranking",
                        help="where MovieLens-100K is preprocessed once, reused after")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    if not models or set(models) - set(MODELS):
        parser.error(f"--models {args.models!r}: choose from {MODELS}")
    data_dir = prepare(args.data_root)
    with tempfile.TemporaryDirectory() as work_dir:
        jobs = [(data_dir, seed, args.steps, work_dir, models) for seed in seeds]
        if args.processes > 1:
            # Seeds in parallel processes (spawned: TensorFlow does not survive a fork), each alternating the two.
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(args.processes, mp_context=context) as pool:
                runs = list(pool.map(one_seed, *zip(*jobs)))
        else:
            runs = [one_seed(*job) for job in jobs]
    steps = config_for("hstu_ranking", data_dir, 0, args.steps).train.steps
    table = ["| model | like AUC | like GAUC | love AUC | love GAUC | train+eval time | HSTU/DIN like AUC (per seed) |",
             "|---|---|---|---|---|---|---|"]
    for model in models:
        values = {key: [run[model][0][key] for run in runs] for key in runs[0][model][0]}
        ratio = ""
        if model != "din" and "din" in models:
            ratios = np.array([run[model][0][("like", "auc")] / run["din"][0][("like", "auc")] for run in runs])
            ratio = f"{mean_std(ratios)} ({', '.join(f'{x:.3f}' for x in ratios)})"
        table.append(f"| {model} ({steps} steps) | " + " | ".join(mean_std(values[(t, m)]) for t in TASKS
                                                                  for m in METRICS)
                     + f" | {np.mean([run[model][1] for run in runs]):.0f} s | {ratio} |")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
