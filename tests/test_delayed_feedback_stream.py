"""The delayed-feedback stream builder (tfrecsys/data/delayed_feedback_stream.py) against the simulator's truth."""

import glob
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.data import delayed_feedback_stream as stream
from tfrecsys.data.simulators.delayed_feedback import DelayedFeedbackConfig, simulate_delayed_feedback
from tfrecsys.losses import delayed_feedback as dfl

WORLD = DelayedFeedbackConfig(num_clicks=3000, num_users=100, num_items=200, days=10, seed=5)
W_O, W_A = WORLD.observation_window_seconds, WORLD.attribution_window_seconds


@pytest.fixture(scope="module")
def world():
    columns, truth = simulate_delayed_feedback(WORLD)
    ip, fn, rn = (int(np.sum(truth["sample_type"] == code)) for code in range(3))
    return columns, truth, {"IP": ip, "FN": fn, "RN": rn}


def read_rows(output_dir: str, prefix: str) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(output_dir, f"{prefix}-*.tfrecord"))):
        for record in tf.compat.v1.io.tf_record_iterator(path):
            example = tf.train.Example.FromString(record).features.feature
            for name in ("emit_timestamp", "sample_type", "example_id"):
                out.setdefault(name, []).append(example[name].int64_list.value[0])
            out.setdefault("label", []).append(example["label"].float_list.value[0])
            out.setdefault("columns", set()).update(example.keys())
    return {k: (v if k == "columns" else np.array(v)) for k, v in out.items()}


def counts(rows) -> dict:
    return {name: int(np.sum(rows["sample_type"] == code)) for code, name in enumerate(dfl.SAMPLE_TYPES)}


# Per method, the rows of each sample type in terms of the truth's IP/FN/RN clicks (every row kept).
EXPECTED = {
    "vanilla": lambda t: {"observed_negative": t["FN"] + t["RN"], "immediate_positive": t["IP"]},
    "oracle": lambda t: {"final_label": t["IP"] + t["FN"] + t["RN"]},
    "fnw": lambda t: {"observed_negative": t["IP"] + t["FN"] + t["RN"], "delayed_positive": t["IP"] + t["FN"]},
    "defuse": lambda t: {"observed_negative": t["FN"] + t["RN"], "immediate_positive": t["IP"],
                         "delayed_positive": t["FN"], "auxiliary_immediate": t["IP"],
                         "auxiliary_delayed": t["FN"], "auxiliary_real_negative": t["RN"]},
    "defer": lambda t: {"observed_negative": t["FN"] + t["RN"], "immediate_positive": t["IP"],
                        "delayed_positive": t["FN"], "attributed_duplicate": t["IP"] + t["RN"],
                        "auxiliary_immediate": t["IP"], "auxiliary_delayed": t["FN"],
                        "auxiliary_real_negative": t["RN"]},
    "bi_defuse": lambda t: {"observed_negative": t["FN"] + t["RN"], "immediate_positive": t["IP"],
                            "delayed_positive": t["FN"]},
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_rows_per_sample_type_equal_the_simulators_truth(method, world):
    columns, _, truth = world
    settings = stream.settings_for(columns, method, W_O, W_A, window_seconds=86_400, pretrain_seconds=0,
                                   keep_future_rows=True)
    rows = stream.emit_rows(columns, settings)
    assert {k: v for k, v in counts(rows).items() if v} == {k: v for k, v in EXPECTED[method](truth).items() if v}


def test_a_stream_whose_pipeline_fails_while_it_is_built_leaves_no_temp_dir(world, tmp_path, monkeypatch,
                                                                             beam_temp_dirs):
    """beam.Pipeline makes a beam-pipeline-temp* directory that only its run() removes; a transform that
    raises while the pipeline is built must not leave it in the user's /tmp."""
    class FailingStream(beam.PTransform):
        def __init__(self, settings):
            super().__init__()

        def expand(self, clicks):
            raise ValueError("the stream could not be built")

    columns, _, _ = world
    settings = stream.settings_for(columns, "defer", W_O, W_A, window_seconds=86_400, pretrain_seconds=0)
    monkeypatch.setattr(stream, "DelayedFeedbackStream", FailingStream)
    with pytest.raises(ValueError, match="could not be built"):
        stream.build_stream(columns, settings, str(tmp_path))
    assert beam_temp_dirs() == []


def test_the_beam_stream_in_its_window_files_matches_the_truth(world, tmp_path):
    columns, _, truth = world
    settings = stream.settings_for(columns, "defer", W_O, W_A, window_seconds=86_400, pretrain_seconds=0,
                                   keep_future_rows=True)
    metadata = stream.build_stream(columns, settings, str(tmp_path))
    rows = read_rows(str(tmp_path), stream.STREAM_PREFIX)
    expected = {name: count for name, count in EXPECTED["defer"](truth).items() if count}
    assert {k: v for k, v in counts(rows).items() if v} == expected
    assert metadata["sample_types"] == expected
    # In time order across the window files, and no training row knows its click's future.
    assert np.all(np.diff(rows["emit_timestamp"]) >= 0)
    assert not rows["columns"] & {"conversion_timestamp", "converted", "converted_in_window"}
    positives = {dfl.IMMEDIATE_POSITIVE, dfl.DELAYED_POSITIVE}
    assert all(label == (kind in positives) for label, kind in zip(rows["label"], rows["sample_type"])
               if kind < dfl.ATTRIBUTED_DUPLICATE)


def test_rows_after_the_stream_end_are_dropped_and_the_pretraining_period_has_final_labels(world):
    columns, truth, _ = world
    day = 86_400
    settings = stream.settings_for(columns, "defuse", W_O, W_A, window_seconds=day, pretrain_seconds=3 * day)
    rows = stream.emit_rows(columns, settings)
    t0, conversion = columns["click_timestamp"], columns["conversion_timestamp"]
    streaming = t0 >= settings.stream_start_timestamp
    fake_negative = truth["sample_type"] == 1
    # A delayed positive is in the stream only if its conversion happened by the end (the last click).
    assert counts(rows)["delayed_positive"] == int(np.sum(streaming & fake_negative & (conversion <= t0.max())))
    assert np.all(rows["emit_timestamp"] <= t0.max())
    assert counts(rows)["final_label"] == int(np.sum(~streaming))
    final = rows["sample_type"] == dfl.FINAL_LABEL
    assert np.array_equal(rows["label"][final], columns["converted"][rows["example_id"][final]])
    assert settings.pretrain_windows == 3
    clicks = stream.evaluation_clicks(columns, settings)
    assert np.array_equal(clicks["label"], columns["converted"][streaming])
    assert not set(clicks) & set(stream.FUTURE_COLUMNS)


def test_a_criteo_conversion_log_becomes_a_stream(tmp_path):
    """Lines of the Criteo Conversion Logs format (click ts, conversion ts or empty, 8 ints, 9 categories)."""
    hour, day = 3600, 86_400
    clicks = [(0, ""), (100, 100 + 60), (200, 200 + 5 * hour), (300, 300 + 9 * day), (day + 10, day + 20)]
    lines = ["\t".join([str(t), str(c), *([""] * 8), *(["a1b2c3d4"] * 9)]) for t, c in clicks]
    path = tmp_path / "data.txt"
    path.write_text("\n".join(lines) + "\n")
    block = stream.SourceStream.from_config(dict(input=str(path), method="defuse", observation_window_seconds=hour,
                                                 attribution_window_seconds=7 * day, pretrain_seconds=day))
    clicks = stream.read_clicks(block)
    assert np.array_equal(clicks["example_id"], np.arange(5)) and np.all(clicks["int_1"] == 0)  # missing → 0
    settings = stream.settings_for(clicks, block.method, block.observation_window_seconds,
                                   block.attribution_window_seconds, block.window_seconds, block.pretrain_seconds)
    rows = stream.emit_rows(clicks, settings)
    # Day 0 pretrains (final labels; the 9-day conversion is outside w_a). The day-1 click would be emitted
    # at t0 + w_o, after the log's last click: not yet in the stream, but scored in day 1's evaluation clicks.
    assert {k: v for k, v in counts(rows).items() if v} == {
        "final_label": 4, "auxiliary_immediate": 1, "auxiliary_delayed": 1, "auxiliary_real_negative": 2}
    assert rows["label"][rows["sample_type"] == dfl.FINAL_LABEL].tolist() == [0, 1, 1, 0]
    assert len(stream.evaluation_clicks(clicks, settings)["label"]) == 1
    assert "int_1" in rows and "cat_9" in rows
    with pytest.raises(ValueError, match="unknown delayed_feedback_stream settings \\['w_o'\\]"):
        stream.SourceStream.from_config(dict(input=str(path), w_o=1))
