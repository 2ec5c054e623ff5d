"""Generative retrieval quality: HSTU against SASRec (same configuration) and popularity, leave-one-out over the
full corpus, mean ± std over seeds (issue 15).

    .venv/bin/python bench/bench_generative.py                                   # both datasets, seeds 0 1 2
    .venv/bin/python bench/bench_generative.py --datasets=movielens_100k --seeds=0 --steps=200

For each dataset (configs/hstu_<dataset>.py and configs/sasrec_<dataset>.py, which differ only in
``model.encoder``) the data is prepared once with the config's preprocess block (tfrecsys-preprocess) from
../shared/datasets; the benchmark exits with a message when a dataset is absent. Then, per seed, HSTU and
SASRec train alternately through the generic train loop (``train_and_evaluate``) on the same rows with the
same seed, and the final model is evaluated: HR@10 (``recall_at_10``), NDCG@10 and MRR of each user's held-out
last item among every corpus item. Popularity ranks the corpus by training count. The last column is the
per-seed ratio HSTU HR@10 / SASRec HR@10 (the issue's bar: ≥ 1.05 on both datasets).
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
from tfrecsys.data.retrieval_data import popularity_of_directory  # noqa: E402
from tfrecsys.train.loop import train_and_evaluate  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs")
DATASETS = ("movielens_100k", "amazon_beauty")
ENCODERS = ("hstu", "sasrec")
METRICS = ("recall_at_10", "ndcg_at_10", "mrr")


def config_for(encoder: str, dataset: str, data_dir: str, seed: int, steps: int):
    overrides = {"data.dir": data_dir, "train.seed": seed, "train.eval_every_loop": 0, "train.best_metric": ""}
    if steps:
        overrides["train.steps"] = steps
    return load_config(os.path.join(CONFIGS, f"{encoder}_{dataset}.py"), overrides)


def prepare(dataset: str, data_root: str) -> str:
    data_dir = os.path.join(data_root, dataset)
    config = config_for("sasrec", dataset, data_dir, 0, 0)
    if not os.path.isdir(config.preprocess.input):
        sys.exit(f"{dataset}: {config.preprocess.input} is absent (see data/ for where to download it)")
    if not os.path.exists(os.path.join(data_dir, "metadata.json")):
        preprocess(PreprocessConfig.from_config(config.preprocess), config.features, data_dir)
    return data_dir


def mean_std(values) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def one_seed(dataset: str, data_dir: str, seed: int, steps: int, work_dir: str) -> dict:
    """HSTU then SASRec with one seed: ``{encoder: (metrics, seconds)}``."""
    out = {}
    for encoder in ENCODERS:
        config = config_for(encoder, dataset, data_dir, seed, steps)
        start = time.perf_counter()
        metrics = train_and_evaluate(config, os.path.join(work_dir, f"{dataset}_{encoder}_{seed}"), verbose=0)
        out[encoder] = ({m: metrics["next_item"][m] for m in METRICS}, time.perf_counter() - start)
        print(f"{dataset} seed {seed} {encoder}: " + ", ".join(f"{m} {out[encoder][0][m]:.4f}" for m in METRICS)
              + f" ({out[encoder][1]:.0f} s)", flush=True)
    return out


def run(dataset: str, data_root: str, seeds, steps: int, work_dir: str, processes: int) -> list[str]:
    data_dir = prepare(dataset, data_root)
    popularity = popularity_of_directory(data_dir)
    if processes > 1:
        # Seeds in parallel processes (spawned: TensorFlow does not survive a fork), each alternating the two.
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(one_seed, *zip(*[(dataset, data_dir, seed, steps, work_dir) for seed in seeds])))
    else:
        runs = [one_seed(dataset, data_dir, seed, steps, work_dir) for seed in seeds]
    results = {encoder: {m: [run[encoder][0][m] for run in runs] for m in METRICS} for encoder in ENCODERS}
    seconds = {encoder: [run[encoder][1] for run in runs] for encoder in ENCODERS}
    ratios = np.asarray(results["hstu"]["recall_at_10"]) / np.asarray(results["sasrec"]["recall_at_10"])
    used_steps = config_for("hstu", dataset, data_dir, 0, steps).train.steps
    rows = [f"| {dataset} | popularity | {popularity['recall_at_10']:.4f} | {popularity['ndcg_at_10']:.4f} | "
            f"{popularity['mrr']:.4f} | | |"]
    for encoder in ENCODERS:
        r = results[encoder]
        ratio = f"{mean_std(ratios)} ({', '.join(f'{x:.3f}' for x in ratios)})" if encoder == "hstu" else ""
        rows.append(f"| {dataset} | {encoder} ({used_steps} steps) | {mean_std(r['recall_at_10'])} | "
                    f"{mean_std(r['ndcg_at_10'])} | {mean_std(r['mrr'])} | {np.mean(seconds[encoder]):.0f} s | "
                    f"{ratio} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated, from {DATASETS}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (config.train.seed)")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps of every run (default: each config's train.steps)")
    parser.add_argument("--processes", type=int, default=1,
                        help="seeds trained in parallel processes (each alternates HSTU and SASRec)")
    parser.add_argument("--data_root", default="runs/data/bench_generative",
                        help="where each dataset is preprocessed once (<data_root>/<dataset>), reused after")
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        parser.error(f"unknown datasets {unknown}; choose from {DATASETS}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    table = ["| dataset | model | HR@10 | NDCG@10 | MRR | train+eval time | HSTU/SASRec HR@10 (per seed) |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work_dir:
        for dataset in datasets:
            table += run(dataset, args.data_root, seeds, args.steps, work_dir, args.processes)
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
