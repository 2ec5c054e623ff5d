"""Evaluation during training, the best checkpoint, early stopping, and the run report a user opens.

One tiny run (6k simulated impressions, 3 loops of 20 steps, eval after every loop) is shared by the module.
The report test opens the page in Debian's headless chromium through Selenium and checks that every plot
rendered; it skips, naming the packages, where they are not installed (.ci/run installs them).
"""

import glob
import json
import os
import shutil
import tempfile
import types

import pytest
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.simulators.click_log import ClickLogConfig, write_click_log
from tfrecsys.export.trained import load_trained_model
from tfrecsys.report import read_scalars, write_calibration, write_report
from tfrecsys.train import callbacks as callbacks_lib
from tfrecsys.train.loop import train_and_evaluate

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "dnn_simulator.py")
STEPS, PER_LOOP = 60, 20


def tiny_config(data_dir: str, **overrides):
    return load_config(CONFIG, {"data.dir": data_dir, "train.steps": STEPS, "train.steps_per_loop": PER_LOOP,
                                "train.steps_per_execution": 10, "train.batch_size": 64, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data_dir, model_dir = str(root / "data"), str(root / "model")
    write_click_log(ClickLogConfig(num_events=6_000, num_shards=1), data_dir)
    config = tiny_config(data_dir)
    metrics = train_and_evaluate(config, model_dir, verbose=0)
    write_calibration(config, model_dir)
    return dict(root=root, data_dir=data_dir, model_dir=model_dir, config=config, metrics=metrics,
                report=write_report(model_dir))


def test_eval_curves_are_written_next_to_the_training_curves(run):
    train = read_scalars(os.path.join(run["model_dir"], "logs", "train"))
    evaluation = read_scalars(os.path.join(run["model_dir"], "logs", "validation"))
    assert sorted(evaluation["score_auc"]) == sorted(train["score_auc"]) == [0, 1, 2]
    assert sorted(evaluation) == ["loss", "score_auc", "score_logloss", "score_loss"]
    # The last loop's eval is the final evaluation of the same weights.
    assert evaluation["score_auc"][2] == pytest.approx(run["metrics"]["score"]["auc"], abs=1e-5)


def test_the_best_checkpoint_is_the_one_with_the_best_eval_metric(run):
    evaluation = read_scalars(os.path.join(run["model_dir"], "logs", "validation"))["score_auc"]
    best_epoch = max(evaluation, key=evaluation.get)
    best = callbacks_lib.read_best(run["model_dir"])
    assert best["metric"] == "auc" and best["mode"] == "max"
    assert best["step"] == (best_epoch + 1) * PER_LOOP
    assert best["value"] == pytest.approx(evaluation[best_epoch], abs=1e-6)

    _, _, best_path = load_trained_model(run["config"], run["model_dir"], checkpoint="best")
    _, _, last_path = load_trained_model(run["config"], run["model_dir"], checkpoint="last")
    assert best_path.endswith(f"best/ckpt-{best['step']}") and last_path.endswith(f"checkpoints/ckpt-{STEPS}")


def test_best_checkpoint_keeps_the_lowest_loss_across_a_resumed_run(tmp_path):
    weight = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(weight=weight)
    model = types.SimpleNamespace(optimizer=types.SimpleNamespace(iterations=tf.Variable(0)))

    def loop_ends(keeper, step, logloss):
        model.optimizer.iterations.assign(step)
        weight.assign(float(step))
        keeper.on_epoch_end(step // 10 - 1, {"logloss": 0.1, "val_logloss": logloss})

    keeper = callbacks_lib.BestCheckpoint(checkpoint, str(tmp_path), "logloss")
    keeper.set_model(model)
    for step, logloss in [(10, 0.50), (20, 0.40), (30, 0.45)]:
        loop_ends(keeper, step, logloss)
    resumed = callbacks_lib.BestCheckpoint(checkpoint, str(tmp_path), "logloss")
    resumed.set_model(model)
    loop_ends(resumed, 40, 0.42)
    loop_ends(resumed, 50, 0.30)
    loop_ends(resumed, 60, 0.35)

    best = callbacks_lib.read_best(str(tmp_path))
    assert (best["step"], best["mode"]) == (50, "min") and best["value"] == pytest.approx(0.30)
    tf.train.Checkpoint(weight=weight).restore(tf.train.latest_checkpoint(str(tmp_path / "best")))
    assert float(weight.numpy()) == 50.0


def test_best_checkpoint_export_without_one_names_the_fix(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="best_metric"):
        load_trained_model(run["config"], str(tmp_path), checkpoint="best")


def test_a_run_restored_with_another_configs_model_fails_naming_the_checkpoint(run):
    """tfrecsys-export with the config of another family, or one more layer, restored the checkpoint's weights
    that fit and exported the untrained rest without a word."""
    other = tiny_config(run["data_dir"], **{"model.hidden_units": (128, 64, 64)})
    with pytest.raises(ValueError, match=r"checkpoint .*ckpt-60 does not hold the weights of the model that config "
                                         r"'dnn_simulator' builds \(dnn\): 2 of its objects are not in it, e\.g\. "
                                         r"dnn/mlp.*/kernel:0.*trained with another config\?"):
        load_trained_model(other, run["model_dir"])


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path):
    model = types.SimpleNamespace(stop_training=False, optimizer=types.SimpleNamespace(iterations=tf.Variable(0)))
    stopper = callbacks_lib.EarlyStopping(str(tmp_path), "auc", patience=2)
    stopper.set_model(model)
    for epoch, auc in enumerate([0.70, 0.72, 0.71, 0.719]):
        model.optimizer.iterations.assign((epoch + 1) * 10)
        stopper.on_epoch_end(epoch, {"auc": 0.9, "val_auc": auc})
        assert model.stop_training == (epoch == 3)
    assert json.load(open(tmp_path / callbacks_lib.EARLY_STOP_FILE))["step"] == 40

    loss_stopper = callbacks_lib.EarlyStopping(str(tmp_path / "other"), "logloss", patience=1, write=False)
    loss_stopper.set_model(types.SimpleNamespace(stop_training=False,
                                                 optimizer=types.SimpleNamespace(iterations=tf.Variable(0))))
    loss_stopper.on_epoch_end(0, {"val_logloss": 0.40})
    loss_stopper.on_epoch_end(1, {"val_logloss": 0.39})
    assert not loss_stopper.model.stop_training
    loss_stopper.on_epoch_end(2, {"val_logloss": 0.41})
    assert loss_stopper.model.stop_training


def test_an_early_stopped_run_is_not_trained_on_by_a_rerun(run, tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(run["model_dir"], model_dir)
    with open(os.path.join(model_dir, callbacks_lib.EARLY_STOP_FILE), "w") as f:
        json.dump({"step": STEPS}, f)
    train_and_evaluate(tiny_config(run["data_dir"], **{"train.steps": 2 * STEPS}), model_dir, verbose=0)
    assert json.load(open(os.path.join(model_dir, "eval_metrics.json")))["step"] == STEPS


def test_an_unknown_best_metric_names_the_eval_metrics(run, tmp_path):
    config = tiny_config(run["data_dir"], **{"train.steps": PER_LOOP, "train.best_metric": "recall_at_10"})
    with pytest.raises(ValueError, match=r"'recall_at_10' is not one eval metric of this model \(none matches\); it has \['loss', 'score_auc'"):
        train_and_evaluate(config, str(tmp_path / "model"), verbose=0)


def test_calibration_bins_follow_the_predictions(run):
    bins = json.load(open(os.path.join(run["model_dir"], "calibration.json")))["score"]
    assert sum(bins["count"]) == 600  # the whole eval split of 6k events
    assert bins["mean_predicted"] == sorted(bins["mean_predicted"])
    assert all(0.0 <= rate <= 1.0 for rate in bins["observed_rate"])


def _browser(scratch: str):
    """Headless chromium with ``scratch`` as its $TMPDIR: it leaves its process-singleton directory
    (org.chromium.Chromium.*) there after quitting, which was one more in /tmp for every make test."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver packages are not installed "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver, env={**os.environ, "TMPDIR": scratch}), options=options)


def test_the_report_renders_every_plot_in_a_real_browser(run):
    pngs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(run["model_dir"], "report", "*.png")))
    assert pngs == ["calibration_score.png", "curve_examples_per_sec.png", "curve_loss.png", "curve_score_auc.png",
                    "curve_score_logloss.png", "curve_score_loss.png"]
    # Short: chromium's singleton socket lives in it, and a Unix socket path holds at most 107 bytes.
    scratch = tempfile.mkdtemp(prefix="chromium-")
    try:
        browser = _browser(scratch)
        try:
            browser.set_page_load_timeout(60)
            browser.get("file://" + os.path.abspath(run["report"]))
            images = browser.execute_script(
                "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
            table = browser.execute_script("return document.querySelector('table').innerText;")
        finally:
            browser.quit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert len(images) == len(pngs)
    for alt, complete, width, height in images:
        assert complete and width >= 300 and height >= 200, (alt, width, height)
    assert "score\tauc\t" + f"{run['metrics']['score']['auc']:.4f}" in table
