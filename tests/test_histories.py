"""The one history builder (tfrecsys.data.histories) that preprocessing and every simulator use: a row's
history holds only the user's events strictly before it, oldest first, the most recent N."""

import numpy as np
import pytest

from tfrecsys.data.histories import gather_histories, history_rows


def test_same_second_events_are_not_each_others_history():
    users = np.array([1, 1, 1, 1, 2, 2, 3])
    items = np.array([10, 11, 12, 13, 20, 21, 30])
    times = np.array([5, 1, 5, 9, 2, 1, 4])
    rows = history_rows(users, times, max_len=2, tiebreak=items)
    histories = [items[r].tolist() for r in rows]
    # Items 10 and 12 share a timestamp: neither is the other's history; 13 sees the latest two, oldest first.
    assert histories == [[11], [], [11], [10, 12], [21], [], []]


def _brute_force(users, times, eligible, tiebreak, max_len):
    out = []
    for row in range(len(users)):
        earlier = [r for r in range(len(users))
                   if users[r] == users[row] and times[r] < times[row] and eligible[r]]
        earlier.sort(key=lambda r: (times[r], tiebreak[r], r))
        out.append(earlier[len(earlier) - min(max_len, len(earlier)):])
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_histories_equal_the_rule_on_a_log_full_of_ties(seed):
    rng = np.random.default_rng(seed)
    rows = 300
    users = rng.integers(0, 7, rows)
    times = rng.integers(0, 40, rows)           # many events share a second
    eligible = rng.random(rows) < 0.6           # e.g. only clicks enter histories
    tiebreak = rng.integers(0, 5, rows)
    got = history_rows(users, times, 4, eligible=eligible, tiebreak=tiebreak)
    expected = _brute_force(users, times, eligible, tiebreak, 4)
    assert [g.tolist() for g in got] == expected
    for row, history in enumerate(got):
        assert (users[history] == users[row]).all() and (times[history] < times[row]).all()


def test_gather_takes_every_column_from_the_same_rows():
    users, times = np.zeros(4, np.int64), np.array([3, 1, 2, 4])
    rows = history_rows(users, times, 2)
    columns = gather_histories(rows, {"hist_item_id": np.array([30, 10, 20, 40]), "hist_action": np.array([
        1.0, 0.0, 1.0, 1.0])}, dtypes={"hist_action": np.int64})
    assert [h.tolist() for h in columns["hist_item_id"]] == [[10, 20], [], [10], [20, 30]]
    assert columns["hist_action"][3].dtype == np.int64 and columns["hist_action"][3].tolist() == [1, 1]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="history length must be positive"):
        history_rows([1], [1], 0)
    with pytest.raises(ValueError, match="must be 1-d and of one length"):
        history_rows([1, 2], [1], 3)
