"""The click-log simulator: deterministic, power-law popularity, no leakage, learnable signal."""

import filecmp
import json

import numpy as np

from tfrecsys.data.simulators.click_log import ClickLogConfig, auc, simulate_click_log, write_click_log

SMALL = ClickLogConfig(num_users=300, num_items=200, num_events=20_000, num_shards=2)


def test_same_seed_writes_identical_files(tmp_path):
    first = write_click_log(SMALL, str(tmp_path / "a"))
    write_click_log(SMALL, str(tmp_path / "b"))
    for name in first["train_files"] + first["eval_files"]:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
    other = write_click_log(ClickLogConfig(**{**SMALL.__dict__, "seed": 1}), str(tmp_path / "c"))
    assert not filecmp.cmp(tmp_path / "a" / first["train_files"][0], tmp_path / "c" / other["train_files"][0],
                           shallow=False)


def test_popularity_follows_power_law():
    columns, truth = simulate_click_log(SMALL)
    counts = np.sort(np.bincount(columns["item_id"], minlength=SMALL.num_items))[::-1]
    ranks = np.arange(1, 21)
    slope = np.polyfit(np.log(ranks), np.log(counts[:20]), 1)[0]
    assert -1.4 < slope < -0.8, slope  # configured exponent 1.1
    assert counts[: SMALL.num_items // 10].sum() / counts.sum() > 0.5


def test_histories_hold_only_earlier_clicks_of_the_same_user():
    columns, _ = simulate_click_log(SMALL)
    clicked_before = {}
    for row in range(len(columns["user_id"])):
        user = columns["user_id"][row]
        expected = clicked_before.get(user, [])[-SMALL.history_len:]
        np.testing.assert_array_equal(columns["hist_item_id"][row], expected)
        if columns["click"][row]:
            clicked_before.setdefault(user, []).append(columns["item_id"][row])
    assert np.all(np.diff(columns["timestamp"]) > 0)


def test_click_rate_and_oracle_auc(tmp_path):
    metadata = write_click_log(SMALL, str(tmp_path))
    assert abs(metadata["click_rate"] - SMALL.target_ctr) < 0.01
    # The true probabilities rank far better than chance, so the data carries learnable signal.
    assert metadata["oracle_auc"] > 0.85
    assert json.load(open(tmp_path / "metadata.json"))["train_rows"] == 18_000


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300), 1)  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg))
    assert abs(auc(labels, scores) - pairwise) < 1e-12
