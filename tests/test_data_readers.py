"""Source readers on the shared copies of the public datasets: the published counts, and bad rows kept with
their reason. Tests that need a dataset skip, saying which, when ../shared/datasets lacks it."""

import math
import os
import shutil

import numpy as np
import pytest

from tfrecsys.data.readers import SOURCES, aliexpress, ali_ccp, amazon, census, criteo, movielens, taobao

DATASETS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared", "datasets")


def dataset(*parts: str) -> str:
    path = os.path.join(DATASETS, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{os.path.normpath(path)} is absent (real datasets are read from ../shared/datasets, never "
                    "copied into the repository)")
    return path


def test_movielens_100k_has_the_published_counts():
    data = movielens.read_movielens_100k(dataset("movielens-100k"))
    assert (data.num_ratings, data.num_users, data.num_items) == (100_000, 943, 1_682)
    assert data.bad_rows == []
    ratings = data.ratings
    for name in ("user_id", "item_id", "timestamp"):
        assert ratings[name].dtype == np.int64 and ratings[name].shape == (100_000,)
    assert ratings["rating"].dtype == np.float32
    assert np.bincount(ratings["rating"].astype(int))[1:].tolist() == [6_110, 11_370, 27_145, 34_174, 21_201]
    assert (ratings["timestamp"].min(), ratings["timestamp"].max()) == (874_724_710, 893_286_638)
    # Raw ids as in u.data: the first line is "196 242 3 881250949".
    assert (ratings["user_id"][0], ratings["item_id"][0], ratings["timestamp"][0]) == (196, 242, 881_250_949)
    assert len(data.items["item_id"]) == 1_682 and len(data.users["user_id"]) == 943
    toy_story = list(data.items["item_id"]).index(1)
    assert data.items["title"][toy_story] == "Toy Story (1995)"
    assert data.items["genres"][toy_story] == ("Animation", "Children's", "Comedy")
    assert data.items["release_year"][toy_story] == 1995
    assert data.users["occupation"][0] == "technician" and data.users["age"][0] == 24


def test_movielens_1m_ratings_sample_joins_every_movie_and_user():
    data = movielens.read_movielens_1m(dataset("movielens-1m"), "samples/librecommender_sample_movielens_rating.dat")
    assert (data.num_ratings, data.num_users, data.num_items) == (100_000, 5_958, 3_312)
    assert len(data.items["item_id"]) == 3_883 and len(data.users["user_id"]) == 6_040
    assert data.bad_rows == []
    shares = np.bincount(data.ratings["rating"].astype(int))[1:] / data.num_ratings
    np.testing.assert_allclose(shares, [0.056, 0.107, 0.262, 0.349, 0.226], atol=0.001)


def test_movielens_bad_rows_are_kept_with_their_reason(tmp_path):
    source = dataset("movielens-100k")
    for name in ("u.item", "u.user"):
        shutil.copy(os.path.join(source, name), tmp_path / name)
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n196\t99999\t3\t881250949\n7\t1\tgood\t1\n"
                                     "1\t2\t3\n1\t2\t9\t881250949\n")
    data = movielens.read_movielens_100k(str(tmp_path))
    assert data.num_ratings == 1
    reasons = [(row.line, row.reason) for row in data.bad_rows]
    assert reasons == [(2, "item_id 99999 is not in u.item"), (3, "field 'rating': 'good' is not a number"),
                       (4, "expected 4 '\\t'-separated fields, got 3"), (5, "field 'rating': 9.0 is outside 0.5..5")]
    assert data.bad_rows[0].path.endswith("u.data") and data.bad_rows[0].text == "196\t99999\t3\t881250949"


def test_missing_file_names_it_and_the_card(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"movielens-100k: .*u\.item does not exist.*data/movielens-100k\.md"):
        movielens.read_movielens_100k(str(tmp_path))


def test_amazon_beauty_has_the_s3rec_statistics():
    data = amazon.read_amazon_beauty(dataset("amazon-beauty-s3rec"))
    events = data.interactions
    assert (data.num_users, data.num_items, len(events["user_id"])) == (22_363, 12_101, 198_502)
    assert np.unique(events["user_id"], return_counts=True)[1].min() >= 5  # a 5-core
    assert len(data.item_attributes) == 12_101
    assert len({a for attributes in data.item_attributes.values() for a in attributes}) == 637
    # The first line is "1 1 2 3 4 5": the user's items in review order, timestamp = position.
    first = events["user_id"] == 1
    assert events["item_id"][first].tolist() == [1, 2, 3, 4, 5]
    assert events["timestamp"][first].tolist() == [0, 1, 2, 3, 4]


def test_taobao_user_behavior_has_the_published_counts():
    data = taobao.read_user_behavior(dataset("taobao-user-behavior", "UserBehavior_head84474.csv"))
    events = data.events
    assert len(events["user_id"]) == 84_474 and data.num_users == 815
    assert len(np.unique(events["item_id"])) == 55_367 and len(np.unique(events["category_id"])) == 2_914
    counts = {b: int((events["behavior"] == b).sum()) for b in taobao.BEHAVIORS}
    assert counts == {"pv": 75_871, "cart": 4_497, "fav": 2_356, "buy": 1_750}
    assert data.bad_rows == []


def test_taobao_rejects_an_unknown_behavior(tmp_path):
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,2,3,pv,1511544070\n1,2,3,click,1511544071\n1,2,3,buy\n")
    data = taobao.read_user_behavior(str(path))
    assert len(data.events["user_id"]) == 1
    assert [r.reason for r in data.bad_rows] == [
        "field 'behavior_type': 'click' is not one of ['pv', 'cart', 'fav', 'buy']",
        "expected 5 ','-separated fields, got 4"]


def test_census_income_kdd_test_set_has_the_published_counts():
    data = census.read_census_income(dataset("census-income-kdd", "census-income.test.gz"))
    rows = data.rows
    assert len(rows["age"]) == 99_762 and data.bad_rows == []
    assert int(rows["income_50k"].sum()) == 6_186  # ' 50000+.'; 93,576 are ' - 50000.'
    assert int((rows["year"] == "94").sum()) == 49_816 and int((rows["year"] == "95").sum()) == 49_946
    assert rows["age"][0] == 38 and rows["class_of_worker"][0] == "Private"
    np.testing.assert_array_equal(rows["never_married"], (rows["marital_stat"] == "Never married").astype(np.float32))
    sample = census.read_census_income(dataset("census-income-kdd", "deepctr_census-income.sample"))
    assert len(sample.rows["age"]) == 200 and int(sample.rows["income_50k"].sum()) == 12  # 188 / 12


def test_ali_ccp_samples_have_the_published_counts():
    for split, rows, clicks in (("train", 100, 7), ("val", 50, 3), ("test", 50, 2)):
        data = ali_ccp.read_ali_ccp_csv(dataset("ali-ccp-sample", f"torch_rechub_ali_ccp_{split}_sample.csv"))
        assert len(data.rows["click"]) == rows and int(data.rows["click"].sum()) == clicks
        assert int(data.rows["purchase"].sum()) == 1 and len(data.rows) == 33 and data.bad_rows == []
        assert data.rows["field_101"].dtype == np.int64 and data.rows["dense_109_14"].dtype == np.float32
    paddle = ali_ccp.read_ali_ccp_paddle(dataset("ali-ccp-sample", "paddlerec_esmm_small.txt"))
    assert len(paddle.rows["click"]) == 10 and paddle.bad_rows == []
    tokens = [sum(len(paddle.rows[f"field_{f}"][row]) for f in ali_ccp.FIELDS) for row in range(10)]
    assert 876 <= min(tokens) and max(tokens) <= 888  # 879..891 comma-separated fields per line, 3 are not tokens


def test_purchase_without_click_is_a_bad_row(tmp_path):
    path = tmp_path / "ali_ccp_train.csv"
    path.write_text("click,purchase,101,D508\n1,1,3,0.5\n0,1,3,0.5\n2,0,3,0.5\n")
    data = ali_ccp.read_ali_ccp_csv(str(path))
    assert len(data.rows["click"]) == 1
    assert [r.reason for r in data.bad_rows] == ["purchase=1 without click=1: a conversion needs a click",
                                                 "field 'click': label must be 0 or 1, got 2"]


def test_aliexpress_samples_have_the_published_counts():
    for split, rows, clicks, conversions in (("train", 100, 60, 2), ("test", 20, 10, 2)):
        data = aliexpress.read_aliexpress(dataset("aliexpress-sample", f"torch_rechub_aliexpress_{split}_sample.csv"))
        assert (len(data.rows["click"]), int(data.rows["click"].sum()), int(data.rows["conversion"].sum())) == (
            rows, clicks, conversions)
        assert len(data.rows) == 82 and data.bad_rows == []


def test_criteo_display_sample_and_its_tab_separated_original(tmp_path):
    path = dataset("criteo-display-ad-sample", "deepctr_criteo_sample.txt")
    data = criteo.read_criteo_display(path)
    rows = data.rows
    assert len(rows["label"]) == 200 and int(rows["label"].sum()) == 49 and data.bad_rows == []
    assert np.isnan(rows["I1"][0]) and rows["I3"][0] == 260.0 and rows["C1"][0] == "05db9164" and rows["C26"][0] == ""
    # The original train.txt holds the same columns tab-separated without a header.
    with open(path) as f:
        lines = f.read().splitlines()[1:]
    original = tmp_path / "train.txt"
    original.write_text("".join(line.replace(",", "\t") + "\n" for line in lines) + "1\t2\n")
    from_tsv = criteo.read_criteo_display(str(original))
    for name in criteo.DISPLAY_COLUMNS:
        np.testing.assert_array_equal(from_tsv.rows[name], rows[name])
    assert [(r.line, r.reason) for r in from_tsv.bad_rows] == [(201, "expected 40 '\\t'-separated fields, got 2")]


def test_criteo_conversion_logs_format(tmp_path):
    """data.txt of the Conversion Logs: click ts, conversion ts (empty: none), 8 integer, 9 categorical."""
    categories = "\t".join(f"c{i}" for i in range(9))
    path = tmp_path / "data.txt"
    path.write_text(f"100\t\t1\t2\t\t4\t5\t6\t7\t8\t{categories}\n"
                    f"200\t3800\t1\t\t3\t4\t5\t6\t7\t8\t{categories}\n"
                    f"300\t250\t1\t2\t3\t4\t5\t6\t7\t8\t{categories}\n"
                    f"400\t500\t1\t2\t3\n")
    data = criteo.read_criteo_conversion_logs(str(path))
    rows = data.rows
    assert rows["click_timestamp"].tolist() == [100, 200]
    assert rows["conversion_timestamp"].tolist() == [-1, 3800] and rows["delay"].tolist() == [-1, 3600]
    assert rows["converted"].tolist() == [0.0, 1.0]
    assert math.isnan(rows["int_3"][0]) and rows["int_3"][1] == 3.0 and rows["cat_9"][1] == "c8"
    assert [(r.line, r.reason) for r in data.bad_rows] == [
        (3, "conversion at 250 is before its click at 300"), (4, "expected 19 '\\t'-separated fields, got 5")]


def test_every_source_is_registered_with_columns():
    assert set(SOURCES) == {"movielens-100k", "movielens-1m", "amazon-beauty", "taobao-user-behavior",
                            "census-income-kdd", "ali-ccp", "aliexpress", "criteo-display-ad",
                            "criteo-conversion-logs"}
    for source in SOURCES.values():
        if source.is_event_log:
            assert {source.user_column, source.item_column, source.time_column} <= set(source.columns)
