"""Behaviour-sequence rankers on Taobao UserBehavior through tfrecsys-preprocess and tfrecsys-train.

The production path: ``tfrecsys-preprocess`` once, then ``tfrecsys-train`` per model, one process at a time;
prints AUC, GAUC and logloss of the eval split (each user's last event against a random item) with the load
average beside each run.

    python -m bench.bench_sequence_taobao --work_dir=/tmp/seq_taobao
    python -m bench.bench_sequence_taobao --work_dir=/tmp/seq_taobao --models=dien --seeds=42,43

Models: ``mean_pooling`` (configs/mean_pooling_taobao.py), ``din`` (din_taobao.py), ``dien`` (dien_taobao.py,
AUGRU + auxiliary loss), ``dien_no_aux`` (dien_taobao.py:no_aux, ``model.aux_weight=0``) and ``sim`` (sim_taobao.py:
lifelong histories cut from the per-user store ``user_histories-*.parquet`` written beside the rows), all five
on one preprocessed dataset (``<work_dir>/data``: the same rows, sampled negatives and eval rows). Figures are
the train loop's final evaluation (``<model_dir>/eval_metrics.json``: Keras AUC, GAUC, logloss). Prepared data
are reused when present.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = os.path.join(REPO, os.pardir, "shared", "datasets", "taobao-user-behavior")
RUNS = {"mean_pooling": ("configs/mean_pooling_taobao.py", ()),
        "din": ("configs/din_taobao.py", ()),
        "dien": ("configs/dien_taobao.py", ()),
        "dien_no_aux": ("configs/dien_taobao.py:no_aux", ()),
        "sim": ("configs/sim_taobao.py", ())}


def _binary(name: str) -> str:
    """The console script of this interpreter's environment (``.venv/bin/tfrecsys-train``)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def _run(command: list, log_path: str) -> None:
    with open(log_path, "w") as log:
        done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=7200)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}); see {log_path}")


def prepare(work_dir: str) -> None:
    """The preprocessed dataset (with SIM's per-user store) under ``work_dir``, unless already there."""
    data = os.path.join(work_dir, "data")
    if not os.path.exists(os.path.join(data, "metadata.json")):
        _run([_binary("tfrecsys-preprocess"), "--config=configs/dien_taobao.py", f"--config.data.dir={data}"],
             os.path.join(work_dir, "preprocess.log"))


def train(work_dir: str, model: str, seed: int) -> dict:
    """Trains one model with ``tfrecsys-train`` and returns its final eval metrics, wall time and load."""
    config, overrides = RUNS[model]
    data = os.path.join(work_dir, "data")
    model_dir = os.path.join(work_dir, f"{model}_seed{seed}")
    started = time.perf_counter()
    _run([_binary("tfrecsys-train"), f"--config={config}", f"--config.data.dir={data}",
          f"--config.train.seed={seed}", f"--model_dir={model_dir}", *overrides], model_dir + ".log")
    with open(os.path.join(model_dir, "eval_metrics.json")) as f:
        metrics = json.load(f)
    task = next(value for key, value in metrics.items() if isinstance(value, dict))
    return {"model": model, "seed": seed, "auc": task["auc"], "gauc": task["gauc"], "logloss": task["logloss"],
            "step": metrics["step"], "wall_s": time.perf_counter() - started, "load": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default="", help="where the prepared data, run directories and logs go (a "
                        "new temporary directory if empty; give one to reuse prepared data)")
    parser.add_argument("--models", default=",".join(RUNS), help=f"comma-separated subset of {list(RUNS)}")
    parser.add_argument("--seeds", default="42", help="comma-separated config.train.seed values; each model "
                        "trains once per seed")
    args = parser.parse_args(argv)
    if not os.path.isdir(DATASET):
        print(f"skipped: {DATASET} is absent (../shared/datasets)")
        return 0
    models = args.models.split(",")
    unknown = sorted(set(models) - set(RUNS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {list(RUNS)}")
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="bench_sequence_taobao_")
    os.makedirs(work_dir, exist_ok=True)
    print(f"work_dir: {work_dir}", flush=True)
    print(f"load before: {os.getloadavg()}", flush=True)
    prepare(work_dir)
    for seed in args.seeds.split(","):
        for model in models:
            r = train(work_dir, model, int(seed))
            print(f"{model:13s} seed {seed}  AUC {r['auc']:.4f}  GAUC {r['gauc']:.4f}  logloss {r['logloss']:.4f}  "
                  f"steps {r['step']}  wall {r['wall_s']:.0f} s  load {r['load']:.1f}  RESULT {json.dumps(r)}",
                  flush=True)
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
