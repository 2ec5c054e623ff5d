"""The per-user store of lifelong histories that ``tfrecsys-preprocess`` writes (``preprocess.user_history_columns``,
SIM on the production path): it holds every kept event of each user once, the same events as the rows and their
``hist_*``, and the histories the input pipeline cuts from it for a row never show the row's own event or a later
one (the eval row is each user's last event). Made-up rows, no Beam pipeline: the per-user steps preprocessing
runs; the pipeline itself is covered in tests/test_preprocess.py (byte-identical output, dead letters)."""

import collections
import dataclasses
import os

import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.preprocess import (USER_HISTORIES_FILES, PreprocessConfig, _item_values, _write_user_history_shard,
                                      item_catalogue, plan_preprocessing, user_examples, user_history_events,
                                      user_history_problem)
from tfrecsys.data.readers.taobao import parse_behavior
from tfrecsys.data.user_histories import UserHistories
from tfrecsys.features.schema import FeatureSchema

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
LONG = 50
FEATURES = {"user_id": dict(kind="id", num_buckets=10, training_only=True),
            "timestamp": dict(kind="dense", dtype="int64"),
            "item_id": dict(kind="id", num_buckets=100), "category_id": dict(kind="id", num_buckets=200),
            "hist_item_id": dict(kind="sequence", shares="item_id", max_len=LONG),
            "hist_category_id": dict(kind="sequence", shares="category_id", max_len=LONG, aligned_with="hist_item_id"),
            "long_item_id": dict(kind="sequence", shares="item_id", max_len=LONG),
            "long_category_id": dict(kind="sequence", shares="category_id", max_len=LONG,
                                     aligned_with="long_item_id"),
            "long_timestamp": dict(kind="sequence", raw=True, max_len=LONG, aligned_with="long_item_id"),
            "click": dict(kind="label")}
STORE = dict(file=USER_HISTORIES_FILES, user_feature="user_id", time_feature="timestamp",
             sequences={"long_item_id": "item_id", "long_category_id": "category_id", "long_timestamp": "timestamp"})


def _lines() -> list:
    """User 7 views items 1..9 a minute apart, puts one in the cart (not a page view: no event under
    keep_rows), and ends with two views in the same second, one of them the held-out event; user 8 views
    three items; user 9 one (no eval row)."""
    rows = [(7, 1 + t, 101 + t, "pv", 1000 + 60 * t) for t in range(9)]
    rows += [(7, 30, 130, "cart", 1200), (7, 11, 111, "pv", 5000), (7, 12, 112, "pv", 5000)]
    rows += [(8, 20 + t, 120 + t, "pv", 3000 + t) for t in range(3)] + [(9, 40, 140, "pv", 4000)]
    return [",".join(map(str, row)) for row in rows]


def _config(tmp_path) -> PreprocessConfig:
    (tmp_path / "UserBehavior.csv").write_text("\n".join(_lines()) + "\n")
    return PreprocessConfig(source="taobao-user-behavior", input=str(tmp_path), history_len=LONG,
                            history_columns=("item_id", "category_id"), sampled_item_columns=("category_id",),
                            keep_rows="behavior == 'pv'", negatives_per_event=1, negative_label="click",
                            user_history_columns=("item_id", "category_id"), num_shards=2)


def _preprocess_by_hand(tmp_path):
    """The examples and the store files of the made-up log, from the per-user steps of the pipeline."""
    out = tmp_path / "out"
    out.mkdir()
    plan, _ = plan_preprocessing(_config(tmp_path), FEATURES, str(out), user_histories=STORE)
    events = [record for record in map(parse_behavior, _lines()) if plan.keep_rows(record) == 1.0]
    by_user = collections.defaultdict(list)
    for event in events:
        by_user[event["user_id"]].append(event)
    catalogue = item_catalogue(plan, {_item_values(plan, event) for event in events})
    examples = [element for user, user_events in by_user.items()
                for element in user_examples(plan, (user, user_events), catalogue=catalogue)]
    shards = collections.defaultdict(list)
    for user, user_events in by_user.items():
        shard, pair = user_history_events(plan, (user, user_events[::-1]))
        shards[shard].append(pair)
    written = [_write_user_history_shard((index, shards[index]), plan, str(out)) for index in range(2)]
    return plan, events, examples, written, str(out)


def test_the_store_holds_every_kept_event_once_and_rows_leave_its_sequences_out(tmp_path):
    plan, events, _, written, out = _preprocess_by_hand(tmp_path)
    assert not {"long_item_id", "long_category_id", "long_timestamp"} & {o.name for o in plan.outputs}
    assert {"user_id", "timestamp", "item_id", "hist_item_id"} <= {o.name for o in plan.outputs}
    assert sum(shard["users"] for shard in written) == 3 and sum(shard["events"] for shard in written) == 15
    stored = {}
    for shard in written:
        table = pq.read_table(f"{out}/{shard['file']}").to_pylist()
        for row in table:
            assert row["user_id"] not in stored  # each user in one row of one file
            stored[row["user_id"]] = list(zip(row["timestamp"], row["item_id"], row["category_id"]))
    expected = collections.defaultdict(list)
    for event in events:
        expected[event["user_id"]].append((event["timestamp"], event["item_id"], event["category_id"]))
    assert stored == {user: sorted(rows) for user, rows in expected.items()}
    assert all(item != 30 for rows in stored.values() for _, item, _ in rows)  # the cart row is no event


def test_no_row_sees_its_own_event_or_a_later_one_in_the_histories_cut_from_the_store(tmp_path):
    _, events, examples, _, out = _preprocess_by_hand(tmp_path)
    schema = FeatureSchema.from_config(FEATURES)
    histories = UserHistories.from_config(STORE, schema, base_dir=out)
    rows = {name: tf.constant([example[name] for _, _, example in examples], tf.int64)
            for name in ("user_id", "timestamp")}
    cut = {name: value.numpy() for name, value in histories.cut_histories(rows).items()}
    evals = [index for index, (split, _, _) in enumerate(examples) if split == "eval"]
    assert len(evals) == 4  # users 7 and 8: the held-out view and its sampled row
    for index, (split, _, example) in enumerate(examples):
        length = cut["long_item_id_length"][index]
        history = list(zip(cut["long_timestamp"][index][:length], cut["long_item_id"][index][:length]))
        before = sorted((e["timestamp"], e["item_id"]) for e in events
                        if e["user_id"] == example["user_id"] and e["timestamp"] < example["timestamp"])
        assert history == before, (split, example)
        # The same events, in the same order, as the row's own history (what DIN and DIEN read).
        assert cut["long_item_id"][index][:length].tolist() == example["hist_item_id"]
        assert cut["long_category_id"][index][:length].tolist() == example["hist_category_id"]
    held_out = [examples[index][2] for index in evals if examples[index][2]["click"] == 1.0]
    assert sorted((e["user_id"], e["item_id"]) for e in held_out) == [(7, 12), (8, 22)]
    for index in evals:
        length = cut["long_item_id_length"][index]
        assert (cut["long_timestamp"][index][:length] < examples[index][2]["timestamp"]).all()
        # User 7's other view of that second (item 11) is not history either.
        assert not {11, 12, 22} & set(cut["long_item_id"][index][:length].tolist())


def test_rows_the_store_cannot_hold_and_settings_that_cannot_work_are_named(tmp_path):
    plan, _ = plan_preprocessing(_config(tmp_path), FEATURES, str(tmp_path / "out"), user_histories=STORE)
    event = parse_behavior("7,1,101,pv,1511544070")
    assert user_history_problem(plan, event) is None
    assert "column 'timestamp' is 9223372036854775808, not an int64" in user_history_problem(
        plan, parse_behavior("7,1,101,pv,9223372036854775808"))
    with pytest.raises(ValueError, match="set preprocess.user_history_columns"):
        plan_preprocessing(dataclasses.replace(_config(tmp_path), user_history_columns=()), FEATURES,
                           str(tmp_path / "out"), user_histories=STORE)
    with pytest.raises(ValueError, match="set it to 'user_histories-\\*.parquet'"):
        plan_preprocessing(_config(tmp_path), FEATURES, str(tmp_path / "out"),
                           user_histories={**STORE, "file": "user_histories.parquet"})
    with pytest.raises(ValueError, match="feature 'long_category_id' is cut from column 'behavior', which the store"):
        plan_preprocessing(_config(tmp_path), FEATURES, str(tmp_path / "out"), user_histories={
            **STORE, "sequences": {**STORE["sequences"], "long_category_id": "behavior"}})


def test_sim_taobao_preprocesses_what_din_and_dien_train_on_and_cuts_its_histories_from_the_store(tmp_path):
    # One tfrecsys-preprocess output serves every Taobao config: the same rows, negatives and vocabularies.
    (tmp_path / "UserBehavior.csv").write_text("\n".join(_lines()) + "\n")
    overrides = {"data.dir": str(tmp_path / "out"), "preprocess.input": str(tmp_path)}
    plans = {}
    for family in ("sim", "dien", "din"):
        config = load_config(os.path.join(CONFIGS, f"{family}_taobao.py"), overrides)
        plans[family], _ = plan_preprocessing(PreprocessConfig.from_config(config.preprocess), config.features,
                                              config.data.dir, config.data.get("user_histories"))
    for family in ("dien", "din"):
        assert plans["sim"].config == plans[family].config
        assert {o.name: o for o in plans["sim"].outputs} == {o.name: o for o in plans[family].outputs}
        assert plans["sim"].vocabulary_sources == plans[family].vocabulary_sources
        assert plans["sim"].user_history_outputs == plans[family].user_history_outputs != ()
    assert config.data.get("user_histories") is None
    sim = load_config(os.path.join(CONFIGS, "sim_taobao.py"), overrides)
    assert set(sim.data.user_histories.sequences) == {"recent_item_id", "recent_category_id", "long_item_id",
                                                      "long_category_id", "long_timestamp"}
