"""The validation split and the epoch choice of bench/bench_sequence_peers.py (``--select_epoch=validation``):
the held-out rows are each user's second-to-last event pair, built as the test pairs are, and no training row
holds that event."""

import numpy as np
import pytest

from bench.bench_sequence_peers import chosen_epoch, hold_out_validation, reselect, taobao_rows

# user -> its 'pv' items in time order; every item id is distinct, so an item names its event. User 3 has three
# events (one training pair, which becomes its validation pair), user 4 two (a test pair only).
EVENTS = {1: [101, 102, 103, 104, 105, 106], 2: [201, 202, 203, 204], 3: [301, 302, 303], 4: [401, 402]}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("taobao") / "UserBehavior.csv"
    lines = []
    for user, items in EVENTS.items():
        for t, item in enumerate(items):
            lines.append(f"{user},{item},{item // 100},pv,{1_000 + 10 * t + user}")
            lines.append(f"{user},{item + 50},{item // 100},cart,{1_000 + 10 * t + user}")  # not a view: ignored
    lines.append("9,901,9,pv,5000")  # the file's last user is dropped (a head may cut its events off)
    path.write_text("\n".join(lines) + "\n")
    train, test, largest = taobao_rows(str(path))
    # taobao_rows maps the raw ids to 1..n in sorted order: raw item ids in sorted order are the mapped ones.
    raw_items = sorted(item for items in EVENTS.values() for item in items)
    return train, test, {raw: mapped for mapped, raw in enumerate(raw_items, start=1)}


def test_validation_rows_are_each_users_second_to_last_event_built_as_the_test_rows(rows):
    train, _, item = rows
    _, validation = hold_out_validation(train)
    users_with_validation = [user for user, items in EVENTS.items() if len(items) >= 3]
    assert list(validation["user_id"]) == [u for u in users_with_validation for _ in range(2)]
    assert list(validation["label"]) == [1.0, 0.0] * len(users_with_validation)
    for row, user in enumerate(validation["user_id"]):
        events = [item[raw] for raw in EVENTS[user]]
        history = events[:-2]
        assert validation["seq_length"][row] == len(history)
        assert list(validation["hist_item_id"][row, :len(history)]) == history
        assert not validation["hist_item_id"][row, len(history):].any()
        if validation["label"][row] == 1:
            assert validation["item_id"][row] == events[-2]
        else:
            assert validation["item_id"][row] != events[-2]


def test_no_training_row_holds_a_validation_event_and_nothing_else_moves(rows):
    train, test, item = rows
    kept, validation = hold_out_validation(train)
    held_out_items = {item[EVENTS[user][-2]] for user in validation["user_id"]}
    positives = kept["label"] == 1
    assert not held_out_items & set(kept["item_id"][positives])
    assert not held_out_items & set(kept["hist_item_id"].ravel())
    # every training row is kept or held out, none twice; the test rows are not touched
    assert len(kept["label"]) + len(validation["label"]) == len(train["label"])
    together = {k: np.concatenate([kept[k], validation[k]]) for k in train}
    as_tuples = lambda columns: sorted(zip(columns["user_id"], columns["item_id"], columns["label"],  # noqa: E731
                                           map(tuple, columns["hist_item_id"]), map(tuple, columns["neg_hist_item_id"])))
    assert as_tuples(together) == as_tuples(train)
    assert sorted(set(test["user_id"])) == sorted(EVENTS)
    assert 3 not in set(kept["user_id"])  # its one training pair is its validation pair


def test_rows_out_of_user_order_are_refused(rows):
    train, _, _ = rows
    shuffled = {k: v[::-1] for k, v in train.items()}
    with pytest.raises(ValueError, match="pair"):
        hold_out_validation(shuffled)
    interleaved = {k: np.concatenate([v[:2], v[-2:], v[2:-2]]) for k, v in train.items()}
    with pytest.raises(ValueError, match="together"):
        hold_out_validation(interleaved)


def _curve(validation_aucs):
    return [{"epoch": e + 1, "validation": {"auc": a}, "test": {"auc": 0.5 + e / 10, "gauc": 0.0, "logloss": 1.0}}
            for e, a in enumerate(validation_aucs)]


def test_the_chosen_epoch_has_the_best_validation_auc_earliest_first_within_the_limit():
    curve = _curve([0.80, 0.84, 0.82, 0.86])
    assert chosen_epoch(curve) == 4
    assert chosen_epoch(curve, max_epochs=3) == 2
    assert chosen_epoch(_curve([0.83, 0.81, 0.83])) == 1
    run = {"auc": 0.8, "gauc": 0.0, "logloss": 1.0, "chosen_epoch": 4, "curve": curve, "epochs": 4}
    three = reselect(run, 3)
    assert (three["chosen_epoch"], three["auc"], len(three["curve"]), three["epochs"]) == (2, 0.6, 3, 3)
    assert reselect(run, 4) is run
