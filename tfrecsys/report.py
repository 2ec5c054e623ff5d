"""The run report: one static HTML page per training run, with its plots also written as PNG files.

``<model_dir>/report/index.html`` holds, from what training left in ``model_dir``:

- training and eval curves of every metric (TensorBoard's ``logs/train`` and ``logs/validation``: the eval
  points are those of ``config.train.eval_every_loop``), against the training step;
- the final eval metrics per task (``eval_metrics.json``) and the best checkpoint (``best/best.json``);
- the calibration curve of every binary output (``calibration.json``, written at the end of training by
  ``write_calibration``): mean predicted probability against the observed rate, per bin of predictions
  (the reliability diagram), with ``config.export.calibration`` set also after the maps the export serves;
- for retrieval models, Recall@K against K (the ``recall_at_<K>`` eval metrics).

The PNGs (``report/*.png``) are embedded in the page as data URIs, so the page is one file that opens in
any browser, offline, and can be mailed or attached to a ticket.
"""

import base64
import glob
import html
import json
import os
import re

import matplotlib

matplotlib.use("Agg")  # no display: binaries run on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPORT_SUBDIR = "report"
CALIBRATION_FILE = "calibration.json"
EVAL_METRICS_FILE = "eval_metrics.json"
BEST_FILE = os.path.join("best", "best.json")
CALIBRATION_BINS = 10
CALIBRATION_MAX_ROWS = 100_000
_KERAS_EPOCH_PREFIX = "epoch_"


def _read_json(path: str):
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_scalars(log_dir: str) -> dict[str, dict[int, float]]:
    """``{metric: {epoch: value}}`` of the Keras epoch summaries (``epoch_<metric>``) in the TensorBoard
    event files of ``log_dir``; a resumed run's later values replace earlier ones."""
    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if not value.tag.startswith(_KERAS_EPOCH_PREFIX):
                    continue
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                scalars.setdefault(value.tag[len(_KERAS_EPOCH_PREFIX):], {})[int(event.step)] = number
    return scalars


def _figure_png(figure, path: str) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _curve_plots(model_dir: str, final_step, out_dir: str) -> list[tuple[str, str]]:
    """One plot per metric, training and eval on the same axes; returns ``(title, png path)``."""
    train = read_scalars(os.path.join(model_dir, "logs", "train"))
    evaluation = read_scalars(os.path.join(model_dir, "logs", "validation"))
    if not train:
        return []
    loops = max(max(values) for values in train.values()) + 1
    # Keras logs per loop (epoch); a loop is steps_per_loop steps, so the final step gives the x axis in steps.
    steps_per_loop = final_step / loops if final_step else 1
    plots = []
    for metric in sorted(set(train) | set(evaluation)):
        figure, axes = plt.subplots(figsize=(6, 3.6))
        for label, series, style in (("train", train.get(metric), "-o"), ("eval", evaluation.get(metric), "-s")):
            if series:
                epochs = sorted(series)
                axes.plot([(e + 1) * steps_per_loop for e in epochs], [series[e] for e in epochs], style,
                          label=label, markersize=3)
        axes.set_xlabel("step" if final_step else "loop")
        axes.set_ylabel(metric)
        axes.set_title(metric)
        axes.grid(alpha=0.3)
        axes.legend()
        path = os.path.join(out_dir, f"curve_{re.sub(r'[^A-Za-z0-9_]+', '_', metric)}.png")
        _figure_png(figure, path)
        plots.append((f"{metric}: training and eval", path))
    return plots


def _calibration_plots(calibration: dict, out_dir: str) -> list[tuple[str, str]]:
    plots = []
    for output, bins in sorted((calibration or {}).items()):
        figure, axes = plt.subplots(figsize=(4.2, 4.2))
        axes.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
        axes.plot(bins["mean_predicted"], bins["observed_rate"], "-o", label=output)
        if "calibrated" in bins:
            after = bins["calibrated"]
            axes.plot(after["mean_predicted"], after["observed_rate"], "-s",
                      label=f"{output} after {after['method']} (fitted on these rows)")
        axes.set_xlabel("mean predicted probability")
        axes.set_ylabel("observed rate")
        axes.set_title(f"calibration: {output} ({sum(bins['count'])} eval rows)")
        axes.grid(alpha=0.3)
        axes.legend()
        path = os.path.join(out_dir, f"calibration_{output}.png")
        _figure_png(figure, path)
        plots.append((f"calibration of {output}", path))
    return plots


def _recall_plot(metrics: dict, out_dir: str) -> list[tuple[str, str]]:
    found = {}
    for scope in [metrics] + [v for v in metrics.values() if isinstance(v, dict)]:
        for name, value in scope.items():
            match = re.fullmatch(r"recall_at_(\d+)", name)
            if match and isinstance(value, (int, float)):
                found[int(match.group(1))] = value
    if not found:
        return []
    ks = sorted(found)
    figure, axes = plt.subplots(figsize=(5, 3.6))
    axes.plot(ks, [found[k] for k in ks], "-o")
    axes.set_xscale("log")
    axes.set_xticks(ks, [str(k) for k in ks])
    axes.set_xlabel("K")
    axes.set_ylabel("Recall@K")
    axes.set_title("Recall@K on the full corpus")
    axes.grid(alpha=0.3)
    path = os.path.join(out_dir, "recall_at_k.png")
    _figure_png(figure, path)
    return [("Recall@K against K", path)]


def _metrics_table(metrics: dict) -> str:
    rows = []
    for name, value in sorted(metrics.items()):
        if isinstance(value, dict):
            rows += [(name, metric, v) for metric, v in sorted(value.items())]
        elif name != "step":
            rows.append(("(all)", name, value))
    cells = "".join(f"<tr><td>{html.escape(task)}</td><td>{html.escape(metric)}</td><td>{value:.4f}</td></tr>"
                    for task, metric, value in rows)
    return f"<table><tr><th>task</th><th>metric</th><th>value</th></tr>{cells}</table>"


def write_report(model_dir: str) -> str:
    """Writes ``<model_dir>/report/index.html`` and its PNGs from the run in ``model_dir``; returns the page's
    path. Fails naming ``model_dir`` when it holds no run (no eval metrics and no TensorBoard logs)."""
    metrics = _read_json(os.path.join(model_dir, EVAL_METRICS_FILE))
    if metrics is None and not glob.glob(os.path.join(model_dir, "logs", "train", "events.out.tfevents.*")):
        raise FileNotFoundError(f"{model_dir} holds no training run (no {EVAL_METRICS_FILE}, no logs/train): "
                                "train with tfrecsys-train --model_dir first")
    out_dir = os.path.join(model_dir, REPORT_SUBDIR)
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "*.png")):
        os.remove(stale)
    final_step = (metrics or {}).get("step")
    plots = (_curve_plots(model_dir, final_step, out_dir)
             + _calibration_plots(_read_json(os.path.join(model_dir, CALIBRATION_FILE)), out_dir)
             + _recall_plot(metrics or {}, out_dir))
    best = _read_json(os.path.join(model_dir, BEST_FILE))
    sections = [f"<h1>Training run {html.escape(os.path.abspath(model_dir))}</h1>"]
    if metrics is not None:
        sections.append(f"<h2>Final eval metrics (step {final_step})</h2>{_metrics_table(metrics)}")
    if best:
        sections.append(f"<p>Best checkpoint by eval {html.escape(best['metric'])}: {best['value']:.4f} at step "
                        f"{best['step']} (<code>best/{html.escape(best['checkpoint'])}</code>; "
                        "<code>tfrecsys-export --checkpoint=best</code> exports it).</p>")
    for title, path in plots:
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        sections.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
                        f"<figcaption>{html.escape(title)} ({html.escape(os.path.basename(path))})</figcaption>"
                        "</figure>")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tfrecsys run report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
            "figure{display:inline-block;margin:1em}</style></head><body>" + "\n".join(sections) + "</body></html>")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def calibration_bins(predicted: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Equal-width bins of predicted probability: per non-empty bin, the mean prediction, the observed
    label rate and the row count."""
    index = np.clip((predicted * bins).astype(int), 0, bins - 1)
    result = {"mean_predicted": [], "observed_rate": [], "count": []}
    for b in range(bins):
        members = index == b
        if members.any():
            result["mean_predicted"].append(float(predicted[members].mean()))
            result["observed_rate"].append(float(labels[members].mean()))
            result["count"].append(int(members.sum()))
    return result


def write_calibration(config, model_dir: str, max_rows: int = CALIBRATION_MAX_ROWS):
    """Writes ``<model_dir>/calibration.json``: the calibration bins of every binary-labelled output of the
    trained model over (up to ``max_rows`` of) the eval split, its masked rows left out, against each task's
    label or ``config.export.calibration.label``; with ``config.export.calibration`` set, also ``calibrated``:
    the bins after the maps the export serves (tfrecsys/calibration.py), fitted on the same rows. Does nothing for models without a binary output
    (retrieval); returns the path or None."""
    from tfrecsys.calibration import (CalibrationSettings, apply_calibration, binary_tasks, eval_predictions,
                                      fit_calibration)
    from tfrecsys.export.trained import load_trained_model

    tasks = binary_tasks(config)
    if not tasks:
        return None
    settings = CalibrationSettings.from_config(config)
    model, schema, _ = load_trained_model(config, model_dir)
    calibration = {}
    rows = eval_predictions(config, model, schema, tasks, max_rows, settings.label)
    for name, (predicted, observed, weight) in rows.items():
        calibration[name] = calibration_bins(predicted, observed)
        if settings.enabled:
            maps = fit_calibration(settings, predicted, observed, weight, output=name)
            calibrated = np.asarray(apply_calibration(maps, predicted))
            calibration[name]["calibrated"] = {"method": settings.description,
                                               **calibration_bins(calibrated, observed)}
    path = os.path.join(model_dir, CALIBRATION_FILE)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(calibration, f, indent=2)
    return path
