"""Label rules (tfrecsys.data.label_rules): combined conditions such as "converted within w of the click"
select exactly the rows numpy selects, in the rule itself and through tfrecsys-preprocess; the one-comparison
spelling keeps working; errors name the label and the column."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.data.input import resolve_files
from tfrecsys.data.label_rules import parse_label_rule
from tfrecsys.data.preprocess import PreprocessConfig, preprocess
from tfrecsys.data.readers.criteo import CONVERSION_COLUMNS

WINDOW = 3600


def _conversion_log(rows: int, seed: int = 0) -> dict:
    """Clicks with and without conversions (-1 when none, as the Criteo reader writes), many exactly at the
    window's edges so an off-by-one comparison changes the selection."""
    rng = np.random.default_rng(seed)
    click = 1_600_000_000 + rng.integers(0, 86_400, rows)
    delay = rng.choice([0, 1, WINDOW - 1, WINDOW, WINDOW + 1, 50_000], rows)
    converted = rng.random(rows) < 0.5
    return {"click_timestamp": click, "conversion_timestamp": np.where(converted, click + delay, -1),
            "int_1": rng.integers(0, 10, rows).astype(np.float64), "cat_1": rng.choice(["a", "b", "c"], rows)}


RULES = {
    "converted_in_window": ("0 <= conversion_timestamp - click_timestamp <= 3600",
                            lambda c: (c["conversion_timestamp"] - c["click_timestamp"] >= 0)
                            & (c["conversion_timestamp"] - c["click_timestamp"] <= WINDOW)),
    "late_or_busy": ("(conversion_timestamp >= 0 and not conversion_timestamp - click_timestamp <= 3600) "
                     "or (int_1 > 6 and cat_1 != 'a')",
                     lambda c: ((c["conversion_timestamp"] >= 0)
                                & ~(c["conversion_timestamp"] - c["click_timestamp"] <= WINDOW))
                     | ((c["int_1"] > 6) & (c["cat_1"] != "a"))),
    "bought": ("cat_1 == b", lambda c: c["cat_1"] == "b"),   # the one-comparison spelling, unquoted value
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_rule_selects_the_rows_numpy_selects(name):
    log = _conversion_log(2000)
    text, reference = RULES[name]
    rule = parse_label_rule(name, text, CONVERSION_COLUMNS)
    records = [{k: v[i].item() for k, v in log.items()} for i in range(2000)]
    labels = np.asarray([rule(record) for record in records])
    expected = reference(log)
    assert 0 < expected.sum() < len(expected)
    np.testing.assert_array_equal(labels, expected.astype(np.float64))


@pytest.mark.parametrize("text, message", [
    ("0 <= conversion_time - click_timestamp <= 3600",
     r"labels\['x'\] = .*: the source has no column 'conversion_time'"),
    ("cat_1 - click_timestamp > 0", r"column 'cat_1' \(string\) is not numeric"),
    ("int_1 > 'a'", r"compares a number \(column 'int_1' \(float32\)\) with a string"),
    ("int_1 > 1 and", r"is not '<column> <op> <value>'"),
    ("int_1 + 1", r"'int_1 \+ 1' is not a condition"),
    ("len(cat_1) > 1", r"'len\(cat_1\)' is not a column"),
])
def test_bad_rules_name_the_label_and_the_column(text, message):
    with pytest.raises(ValueError, match=message):
        parse_label_rule("x", text, CONVERSION_COLUMNS)


def test_preprocessing_writes_combined_labels_equal_to_numpy(tmp_path):
    rows = 400
    log = _conversion_log(rows, seed=1)
    lines = []
    for i in range(rows):
        conversion = "" if log["conversion_timestamp"][i] < 0 else str(log["conversion_timestamp"][i])
        # int_2 carries the row number, so each written example is matched to its row.
        lines.append("\t".join([str(log["click_timestamp"][i]), conversion, str(int(log["int_1"][i])), str(i),
                                *["1"] * 6, log["cat_1"][i], *["x"] * 8]))
    source = tmp_path / "data.txt"
    source.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "out")
    labels = {name: text for name, (text, _) in RULES.items()}
    config = PreprocessConfig(source="criteo-conversion-logs", input=str(source), split="chronological",
                              eval_fraction=0.0, labels=labels, num_shards=1)
    features = {"int_2": dict(kind="dense"), **{name: dict(kind="label") for name in labels}}
    preprocess(config, features, out)
    spec = {name: tf.io.FixedLenFeature([], tf.float32) for name in ["int_2", *labels]}
    written = next(iter(tf.data.TFRecordDataset(resolve_files("train-*.tfrecord", out)).batch(rows).map(
        lambda records: tf.io.parse_example(records, spec))))
    row = written["int_2"].numpy().astype(np.int64)
    assert sorted(row.tolist()) == list(range(rows))
    for name, (_, reference) in RULES.items():
        expected = reference(log).astype(np.float32)
        assert 0 < expected.sum() < rows
        np.testing.assert_array_equal(written[name].numpy(), expected[row], err_msg=name)
