"""tfrecsys-preprocess: the Beam pipeline from source files to sharded examples for a schema.

Checked: histories never hold an event at or after their target's time; leave-one-out and chronological
splits; vocabularies with minimum counts, hashing statistics and item frequencies; byte-identical output
when run twice (also with a different runner layout); malformed rows in the dead-letter file with their
reason; schema mismatches named before anything runs; and the CLI end to end into training.
"""

import dataclasses
import filecmp
import json
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tests.test_data_readers import dataset
from tfrecsys.config import load_config
from tfrecsys.data.input import check_schema, make_dataset, resolve_files
from tfrecsys.data.item_frequency import read_item_frequency
from tfrecsys.data import preprocess as preprocess_module
from tfrecsys.data.preprocess import (LostElementsError, PreprocessConfig, check_nothing_lost, features_from_metadata,
                                      plan_preprocessing, preprocess, vocabulary_path)
from tfrecsys.data.readers import movielens
from tfrecsys.features.schema import FeatureSchema, SchemaError

BIN = os.path.dirname(sys.executable)
CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "dnn_movielens_100k.py")


def _records(files, spec):
    dataset_ = tf.data.TFRecordDataset(files).batch(4096).map(lambda s: tf.io.parse_example(s, spec))
    batches = list(dataset_)
    return {name: (tf.concat([b[name] for b in batches], 0) if batches else None) for name in spec}


# MovieLens-100K, leave-one-out -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def movielens_loo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ml100k_loo"))
    features = {"user_id": dict(kind="id", vocabulary=vocabulary_path(out, "user_id")),
                "item_id": dict(kind="id", vocabulary=vocabulary_path(out, "item_id")),
                "hist_item_id": dict(kind="sequence", shares="item_id", max_len=10),
                "hist_rating": dict(kind="sequence", raw=True, dtype="float32", max_len=10,
                                    aligned_with="hist_item_id"),
                "like": dict(kind="label")}
    config = PreprocessConfig(source="movielens-100k", input=dataset("movielens-100k"), split="leave_one_out",
                              history_len=10, history_columns=("item_id", "timestamp", "rating"),
                              labels={"like": "rating >= 4"}, min_counts={"item_id": 3}, num_shards=2)
    return out, preprocess(config, features, out)


def test_no_history_event_is_at_or_after_its_target(movielens_loo):
    out, metadata = movielens_loo
    files = resolve_files("train-*.tfrecord,eval-*.tfrecord", out)
    rows = _records(files, {"timestamp": tf.io.FixedLenFeature([], tf.int64),
                            "hist_timestamp": tf.io.RaggedFeature(tf.int64),
                            "hist_item_id": tf.io.RaggedFeature(tf.int64)})
    assert rows["timestamp"].shape[0] == 100_000 == metadata["source_rows"]
    earlier = rows["hist_timestamp"] < tf.expand_dims(rows["timestamp"], 1)
    assert bool(tf.reduce_all(earlier.flat_values))
    # Ratings within the same second are not each other's history, and histories are full where they can be.
    lengths = rows["hist_timestamp"].row_lengths().numpy()
    assert lengths.max() == 10 and (lengths == 0).sum() >= 943
    assert bool(tf.reduce_all(rows["hist_timestamp"][:, 1:] >= rows["hist_timestamp"][:, :-1]).numpy())


def test_leave_one_out_holds_out_each_users_last_rating(movielens_loo):
    out, metadata = movielens_loo
    assert metadata["splits"]["eval"]["rows"] == 943 and metadata["splits"]["train"]["rows"] == 99_057
    ratings = movielens.read_movielens_100k(dataset("movielens-100k")).ratings
    held_out = _records(resolve_files("eval-*.tfrecord", out),
                        {"user_id": tf.io.FixedLenFeature([], tf.int64),
                         "timestamp": tf.io.FixedLenFeature([], tf.int64),
                         "item_id": tf.io.FixedLenFeature([], tf.int64),
                         "hist_item_id": tf.io.RaggedFeature(tf.int64),
                         "hist_rating": tf.io.RaggedFeature(tf.float32)})
    last_time = {}
    for user, time in zip(ratings["user_id"].tolist(), ratings["timestamp"].tolist()):
        last_time[user] = max(time, last_time.get(user, 0))
    users = held_out["user_id"].numpy()
    assert sorted(users.tolist()) == sorted(last_time)
    assert all(last_time[u] == t for u, t in zip(users.tolist(), held_out["timestamp"].numpy().tolist()))
    # A held-out rating's history is the user's 10 latest items strictly before it, oldest first.
    user = int(users[0])
    mine = ratings["user_id"] == user
    target_time = int(held_out["timestamp"][0])
    before = np.flatnonzero(mine & (ratings["timestamp"] < target_time))
    order = before[np.lexsort((ratings["item_id"][before], ratings["timestamp"][before]))]
    expected = ratings["item_id"][order][-10:]
    assert sorted(held_out["hist_item_id"][0].numpy().tolist()) == sorted(expected.tolist())
    # A float32 history column (the ratings: HSTU's actions) is aligned with the items.
    pairs = zip(held_out["hist_item_id"][0].numpy().tolist(), held_out["hist_rating"][0].numpy().tolist())
    assert sorted(pairs) == sorted(zip(expected.tolist(), ratings["rating"][order][-10:].tolist()))


def test_training_shards_mix_users(movielens_loo):
    # A small shuffle window (make_dataset's first windows) over a file of one user after another would hold a
    # few dozen users; training rows are written in a seeded pseudo-random order instead.
    out, _ = movielens_loo
    spec = {"user_id": tf.io.FixedLenFeature([], tf.int64)}
    users = _records(resolve_files("train-00000-of-00002.tfrecord", out), spec)["user_id"].numpy()
    assert len(np.unique(users[:2048])) > 600
    assert np.mean(users[1:] == users[:-1]) < 0.02  # in key order, nearly every row follows its own user's
    with pytest.raises(ValueError, match="preprocess.train_order is 'random'; choose from"):
        PreprocessConfig(source="movielens-100k", input="unused", train_order="random")


def test_vocabularies_min_counts_and_item_frequencies(movielens_loo):
    out, metadata = movielens_loo
    items = open(os.path.join(out, "vocabularies", "item_id.txt")).read().split()
    train = _records(resolve_files("train-*.tfrecord", out), {"item_id": tf.io.FixedLenFeature([], tf.int64)})
    ids, counts = np.unique(train["item_id"].numpy(), return_counts=True)
    kept = ids[counts >= 3]
    assert sorted(map(int, items)) == sorted(kept.tolist())
    assert metadata["vocabularies"]["item_id"] == {"file": "vocabularies/item_id.txt", "min_count": 3,
                                                   "size": len(kept)}
    frequency = read_item_frequency(os.path.join(out, "item_frequency.tsv"), "int64")
    assert frequency == dict(zip(ids.tolist(), counts.tolist()))
    # Most frequent first, so the vocabulary's first id is the train split's most frequent item.
    assert int(items[0]) == ids[np.argmax(counts)]
    schema = FeatureSchema.from_config(features_from_metadata(out))
    assert schema["item_id"].vocab.size == len(kept) + 1  # + the OOV row
    check_schema(resolve_files("eval-*.tfrecord", out)[0], schema)


# Taobao UserBehavior: determinism, dead letters, formats ------------------------------------------------------


@pytest.fixture(scope="module")
def taobao_part(tmp_path_factory):
    """The first 12,000 rows of the shared UserBehavior file in reverse order (so no output can rely on the
    file listing a user's events in time order) plus five malformed lines, one of them not UTF-8 and one with a
    time outside int64 (a temporary file: the dataset itself never enters the repository)."""
    with open(dataset("taobao-user-behavior", "UserBehavior_head84474.csv")) as f:
        lines = [next(f) for _ in range(12_000)][::-1]
    directory = tmp_path_factory.mktemp("taobao")
    lines[100:100] = ["1,2,3,click,1511544070\n", "1,2,3,pv\n", "x,2,3,pv,1511544070\n", "1,2,3,pv,1" + "0" * 19 + "\n"]
    (directory / "UserBehavior.csv").write_bytes("".join(lines).encode() + b"1,2,3,pv,15115\xff44070\n")
    return str(directory)


def _taobao(input_dir: str, out: str, output_format: str = "tfrecord", pipeline_args=()) -> dict:
    features = {"user_id": dict(kind="id", hash_buckets=1000),
                "item_id": dict(kind="id", vocabulary=vocabulary_path(out, "item_id")),
                "category_id": dict(kind="id", vocabulary=vocabulary_path(out, "category_id")),
                "behavior": dict(kind="id", dtype="string", vocabulary=("pv", "cart", "fav", "buy")),
                "hist_item_id": dict(kind="sequence", shares="item_id", max_len=20),
                "hist_category_id": dict(kind="sequence", shares="category_id", max_len=20,
                                         aligned_with="hist_item_id"),
                "bought": dict(kind="label")}
    config = PreprocessConfig(source="taobao-user-behavior", input=input_dir, split="chronological",
                              eval_fraction=0.2, history_len=20,
                              history_columns=("item_id", "category_id", "timestamp"),
                              labels={"bought": "behavior == buy"}, sequence_columns=("item_id", "behavior"),
                              candidate_columns=("category_id",), frequency_label="bought", num_shards=3,
                              user_history_columns=("item_id", "category_id"),
                              output_format=output_format)
    return preprocess(config, features, out, pipeline_args=list(pipeline_args))


@pytest.fixture(scope="module")
def taobao_runs(taobao_part, tmp_path_factory):
    first, second = str(tmp_path_factory.mktemp("first")), str(tmp_path_factory.mktemp("second"))
    metadata = _taobao(taobao_part, first)
    # Another bundle layout and element order: two worker processes.
    _taobao(taobao_part, second, pipeline_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    return first, second, metadata


def _all_files(directory: str) -> list:
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names)


def test_preprocessing_twice_gives_byte_identical_output(taobao_runs):
    first, second, metadata = taobao_runs
    names = _all_files(first)
    assert names == _all_files(second)
    assert {"metadata.json", "dead_letter.jsonl", "item_frequency.tsv", "vocabularies/item_id.txt",
            "train-00002-of-00003.tfrecord", "eval-00000-of-00001.tfrecord", "candidates.tfrecord",
            "sequences-00002-of-00003.tfrecord", "user_histories-00002-of-00003.parquet"} <= set(names)
    different = [n for n in names if not filecmp.cmp(os.path.join(first, n), os.path.join(second, n), shallow=False)]
    assert different == []
    assert metadata["splits"]["train"]["rows"] + metadata["splits"]["eval"]["rows"] == 12_000


def test_check_nothing_lost_names_each_shortfall():
    check_nothing_lost([("events grouped by user", 12_000, 12_000)])
    with pytest.raises(LostElementsError) as error:
        check_nothing_lost([("events grouped by user", 12_000, 11_777), ("examples written", 9_600, 9_600),
                            ("users written", 40, 41)])
    assert "events grouped by user: 11,777 came out of 12,000" in str(error.value)
    assert "users written: 41 came out of 40" in str(error.value) and "examples written" not in str(error.value)


def test_a_step_that_loses_events_fails_the_run_without_metadata(taobao_part, tmp_path, monkeypatch):
    # A runner dropping grouped elements, played by the per-user store's step losing each user's oldest event.
    keep_events = preprocess_module.user_history_events

    def losing_events(plan, user_events):
        user, events = user_events
        return keep_events(plan, (user, sorted(events, key=lambda event: event["timestamp"])[1:]))
    monkeypatch.setattr(preprocess_module, "user_history_events", losing_events)
    with pytest.raises(Exception, match=r"events written to the per-user store: [\d,]+ came out of 12,000 "):
        _taobao(taobao_part, str(tmp_path))
    assert not os.path.exists(tmp_path / "metadata.json")


def test_multi_threaded_local_runs_are_refused_before_the_old_output_is_cleared(movielens_loo):
    out, _ = movielens_loo
    config = PreprocessConfig(source="movielens-100k", input=dataset("movielens-100k"))
    with pytest.raises(ValueError, match="--direct_running_mode=multi_threading with --direct_num_workers=2"):
        preprocess(config, {"item_id": dict(kind="id", num_buckets=2000), "rating": dict(kind="label")}, out,
                   pipeline_args=["--direct_num_workers=2", "--direct_running_mode=multi_threading"], overwrite=True)
    assert os.path.exists(os.path.join(out, "metadata.json"))


def test_malformed_rows_go_to_the_dead_letter_file_with_the_reason(taobao_runs):
    first, _, metadata = taobao_runs
    assert metadata["dead_letter_rows"] == 5 and metadata["source_rows"] == 12_000
    dead = [json.loads(line) for line in open(os.path.join(first, "dead_letter.jsonl"))]
    assert sorted(d["reason"] for d in dead) == [
        "column 'timestamp' is 10000000000000000000, not an int64: the per-user history store "
        "(preprocess.user_history_columns) cannot hold this event",
        "expected 5 ','-separated fields, got 4", "field 'behavior_type': 'click' is not one of "
        "['pv', 'cart', 'fav', 'buy']", "field 'user_id': 'x' is not an integer",
        "not valid utf-8: 'utf-8' codec can't decode byte 0xff in position 14: invalid start byte"]
    assert all(d["path"].endswith("UserBehavior.csv") and d["text"] for d in dead)


def test_chronological_split_and_aligned_histories(taobao_runs):
    first, _, metadata = taobao_runs
    cutoff = metadata["eval_from_time"]
    spec = {"timestamp": tf.io.FixedLenFeature([], tf.int64), "hist_item_id": tf.io.RaggedFeature(tf.int64),
            "hist_category_id": tf.io.RaggedFeature(tf.int64), "hist_timestamp": tf.io.RaggedFeature(tf.int64),
            "bought": tf.io.FixedLenFeature([], tf.float32)}
    train = _records(resolve_files("train-*.tfrecord", first), spec)
    evaluation = _records(resolve_files("eval-*.tfrecord", first), spec)
    assert int(tf.reduce_max(train["timestamp"])) < cutoff <= int(tf.reduce_min(evaluation["timestamp"]))
    assert abs(evaluation["timestamp"].shape[0] / 12_000 - 0.2) < 0.01
    for rows in (train, evaluation):
        lengths = rows["hist_item_id"].row_lengths()
        assert bool(tf.reduce_all(lengths == rows["hist_category_id"].row_lengths()))
        assert bool(tf.reduce_all((rows["hist_timestamp"] < tf.expand_dims(rows["timestamp"], 1)).flat_values))
    buys = float(tf.reduce_sum(train["bought"]) + tf.reduce_sum(evaluation["bought"]))
    assert 0 < buys < 12_000 * 0.1
    hashing = metadata["hashing"]["user_id"]
    assert hashing["hash_buckets"] == 1000 and hashing["distinct_train_values"] > 50
    assert hashing["colliding_values"] == hashing["distinct_train_values"] - hashing["occupied_buckets"] >= 0


def test_per_user_sequences_hold_every_event_once_in_time_order(taobao_runs):
    first, _, metadata = taobao_runs
    event = {"user_id": tf.io.FixedLenFeature([], tf.int64), "item_id": tf.io.FixedLenFeature([], tf.int64),
             "timestamp": tf.io.FixedLenFeature([], tf.int64), "behavior": tf.io.FixedLenFeature([], tf.string)}
    events = []
    for split, mark in (("train", 0), ("eval", 1)):
        rows = _records(resolve_files(f"{split}-*.tfrecord", first), event)
        events += zip(*(rows[name].numpy().tolist() for name in event), [mark] * rows["user_id"].shape[0])
    sequence_spec = {"user_id": tf.io.FixedLenFeature([], tf.int64),
                     **{name: tf.io.RaggedFeature(spec.dtype) for name, spec in event.items() if name != "user_id"},
                     "in_eval": tf.io.RaggedFeature(tf.int64)}
    sequences = _records(resolve_files("sequences-*.tfrecord", first), sequence_spec)
    users = sequences["user_id"].numpy().tolist()
    assert len(users) == len(set(users)) == metadata["sequences"]["users"] == len({e[0] for e in events})
    listed = []
    for row, user in enumerate(users):
        times = sequences["timestamp"][row].numpy()
        assert (np.diff(times) >= 0).all(), f"user {user}'s sequence is not in time order"
        listed += zip([user] * len(times), sequences["item_id"][row].numpy().tolist(), times.tolist(),
                      sequences["behavior"][row].numpy().tolist(), sequences["in_eval"][row].numpy().tolist())
    # Every event once (with the split its example is in), nothing else.
    assert sorted(listed) == sorted(events) and len(listed) == metadata["source_rows"]
    # The per-user store of lifelong histories holds the same events, each user in one row of one file.
    store = pq.read_table([os.path.join(first, name) for name in metadata["user_histories"]["files"]]).to_pylist()
    assert len(store) == len(users) == metadata["user_histories"]["users"]
    stored = [(row["user_id"], item, time) for row in store for item, time in zip(row["item_id"], row["timestamp"])]
    assert sorted(stored) == sorted(e[:3] for e in events)
    assert all(row["timestamp"] == sorted(row["timestamp"]) for row in store)


def test_candidates_hold_each_item_once_and_frequencies_count_the_positives(taobao_runs):
    first, _, metadata = taobao_runs
    spec = {"item_id": tf.io.FixedLenFeature([], tf.int64), "category_id": tf.io.FixedLenFeature([], tf.int64)}
    corpus = _records([os.path.join(first, "candidates.tfrecord")], spec)
    events = _records(resolve_files("train-*.tfrecord,eval-*.tfrecord", first), spec)
    pairs = set(zip(events["item_id"].numpy().tolist(), events["category_id"].numpy().tolist()))
    items = corpus["item_id"].numpy().tolist()
    assert items == sorted(set(items)) and len(items) == metadata["num_candidates"]
    assert set(zip(items, corpus["category_id"].numpy().tolist())) == pairs
    train = _records(resolve_files("train-*.tfrecord", first), {"item_id": tf.io.FixedLenFeature([], tf.int64),
                                                                "bought": tf.io.FixedLenFeature([], tf.float32)})
    bought = train["item_id"].numpy()[train["bought"].numpy() == 1.0]
    expected = {item: 0 for item in items}   # every corpus item, those without a training purchase at 0
    expected.update(zip(*(a.tolist() for a in np.unique(bought, return_counts=True))))
    assert read_item_frequency(os.path.join(first, "item_frequency.tsv"), "int64") == expected
    assert 0 < len(bought) < train["item_id"].shape[0]


def test_a_candidate_column_that_varies_within_an_item_is_named(tmp_path):
    directory = tmp_path / "taobao"
    directory.mkdir()
    # Item 7 is in category 3 in one event and 4 in another: the column is not a property of the item.
    (directory / "UserBehavior.csv").write_text("1,7,3,pv,1511544070\n2,7,4,pv,1511544071\n2,8,4,buy,1511544072\n")
    config = PreprocessConfig(source="taobao-user-behavior", input=str(directory), split="chronological",
                              candidate_columns=("category_id",), num_shards=1)
    with pytest.raises(Exception, match="column 'category_id' is not an item column: item 7 has more than one value"):
        preprocess(config, {"item_id": dict(kind="id", num_buckets=10)}, str(tmp_path / "out"))


def test_parquet_output_yields_the_same_batches_as_tfrecord(taobao_part, taobao_runs, tmp_path):
    first, _, _ = taobao_runs
    _taobao(taobao_part, str(tmp_path), output_format="parquet")
    assert all(filecmp.cmp(os.path.join(first, "vocabularies", n), tmp_path / "vocabularies" / n, shallow=False)
               for n in ("item_id.txt", "category_id.txt"))
    schema = FeatureSchema.from_config(features_from_metadata(first))
    batches = []
    for directory, suffix in ((first, "tfrecord"), (str(tmp_path), "parquet")):
        files = resolve_files(f"train-*.{suffix}", directory)
        batches.append(list(make_dataset(files, schema, 500, targets={"bought": "bought"}, training=False)))
    arrow_schema = pq.read_schema(files[0])  # standard columns, readable by any Parquet tool
    assert arrow_schema.field("hist_item_id").type == pa.list_(pa.int64())
    assert arrow_schema.field("timestamp").type == pa.int64() and arrow_schema.field("bought").type == pa.float32()
    assert len(batches[0]) == len(batches[1]) > 10
    for (inputs_a, labels_a), (inputs_b, labels_b) in zip(*batches):
        assert sorted(inputs_a) == sorted(inputs_b)
        for name in inputs_a:
            np.testing.assert_array_equal(inputs_a[name].numpy(), inputs_b[name].numpy())
        np.testing.assert_array_equal(labels_a["bought"].numpy(), labels_b["bought"].numpy())


# Sample tables --------------------------------------------------------------------------------------------------


def test_ali_ccp_keeps_the_release_splits(tmp_path):
    out = str(tmp_path)
    features = {"field_101": dict(kind="id", vocabulary=vocabulary_path(out, "field_101")),
                "field_205": dict(kind="id", hash_buckets=64),
                "dense_508": dict(kind="dense"),
                "click": dict(kind="label"), "purchase": dict(kind="label")}
    config = PreprocessConfig(source="ali-ccp", input=dataset("ali-ccp-sample"), split="files", num_shards=2)
    metadata = preprocess(config, features, out)
    assert {s: info["rows"] for s, info in metadata["splits"].items()} == {"train": 100, "val": 50, "test": 50}
    assert metadata["splits"]["val"]["files"] == ["val-00000-of-00001.tfrecord"]
    assert metadata["dead_letter_rows"] == 0 and "item_frequency_file" not in metadata
    labels = _records(resolve_files("train-*.tfrecord", out), {"click": tf.io.FixedLenFeature([], tf.float32),
                                                               "purchase": tf.io.FixedLenFeature([], tf.float32)})
    assert float(tf.reduce_sum(labels["click"])) == 7 and float(tf.reduce_sum(labels["purchase"])) == 1


def test_census_random_split_is_seeded(tmp_path):
    sample = dataset("census-income-kdd", "deepctr_census-income.sample")
    directory = tmp_path / "census"
    directory.mkdir()
    (directory / "census-income.data").write_text(open(sample).read())
    config = PreprocessConfig(source="census-income-kdd", input=str(directory), split="random", eval_fraction=0.25)

    def split_with_seed(seed: int, out: str) -> tuple[dict, dict]:
        """The split's metadata and the age column of each split's examples, in file order."""
        features = {"age": dict(kind="dense"), "education": dict(kind="id", dtype="string",
                                                                 vocabulary=vocabulary_path(out, "education")),
                    "income_50k": dict(kind="label"), "never_married": dict(kind="label")}
        metadata = preprocess(dataclasses.replace(config, seed=seed), features, out)
        ages = {split: _records([os.path.join(out, f) for f in info["files"]],
                                {"age": tf.io.FixedLenFeature([], tf.float32)})["age"].numpy().tolist()
                for split, info in metadata["splits"].items()}
        return metadata, ages

    first, first_ages = split_with_seed(0, str(tmp_path / "a"))
    again, again_ages = split_with_seed(0, str(tmp_path / "a_again"))
    other, other_ages = split_with_seed(1, str(tmp_path / "b"))
    assert first["splits"]["train"]["rows"] + first["splits"]["eval"]["rows"] == 200
    assert 25 <= first["splits"]["eval"]["rows"] <= 75
    assert again["splits"] == first["splits"] and again_ages == first_ages  # the same seed, the same split
    for name in first["splits"]["eval"]["files"] + first["splits"]["train"]["files"]:
        assert filecmp.cmp(os.path.join(tmp_path / "a", name), os.path.join(tmp_path / "a_again", name),
                           shallow=False), name
    # Another seed, other rows in eval. Compared as multisets: the training shards' row order depends on the
    # seed too (train_order="shuffled"), so whole-file orders differ even when the split ignores the seed.
    assert sorted(other_ages["eval"]) != sorted(first_ages["eval"])


# Errors before anything runs -------------------------------------------------------------------------------------


def made_up_movielens_100k(directory) -> str:
    """A directory laid out like MovieLens-100K with two invented ratings: planning checks a config against
    the source's columns and only needs the ratings file to exist, so these tests run without the dataset."""
    (directory / "u.data").write_text("1\t10\t4\t881250949\n2\t20\t3\t881250950\n")
    return str(directory)


def test_a_pipeline_that_fails_while_it_is_built_leaves_no_temp_dir(tmp_path, monkeypatch, beam_temp_dirs):
    """beam.Pipeline makes a beam-pipeline-temp* directory that only its run() removes; a build step that
    raises (played by a builder that adds one read, then fails) must not leave it in the user's /tmp."""
    def failing_build(pipeline, plan, files, output_dir, make_joiner):
        _ = pipeline | "Read" >> beam.Create([b"1\t10\t4\t881250949"])
        raise ValueError("the pipeline could not be built")

    monkeypatch.setattr(preprocess_module, "build_pipeline", failing_build)
    config = PreprocessConfig(source="movielens-100k", input=made_up_movielens_100k(tmp_path))
    with pytest.raises(ValueError, match="could not be built"):
        preprocess(config, {"item_id": dict(kind="id", num_buckets=2000), "rating": dict(kind="label")},
                   str(tmp_path / "out"))
    assert beam_temp_dirs() == []


@pytest.mark.parametrize("feature, spec, message", [
    ("user_id", dict(kind="id", dtype="string", hash_buckets=10),
     "feature 'user_id' is int64 in the source movielens-100k but the schema says IdFeature string"),
    ("genres", dict(kind="id", dtype="string", hash_buckets=10),
     "feature 'genres' is string_list in the source movielens-100k but the schema says IdFeature string"),
    ("hist_rating", dict(kind="sequence", max_len=5, hash_buckets=10),
     r"feature 'hist_rating': the source movielens-100k has no such column; available: \["),
    ("like", dict(kind="id", num_buckets=2),
     "feature 'like' is a label rule \\(float32 0/1\\) but the schema says IdFeature int64"),
])
def test_schema_mismatch_fails_at_start_naming_feature_and_types(feature, spec, message, tmp_path):
    config = PreprocessConfig(source="movielens-100k", input=made_up_movielens_100k(tmp_path),
                              labels={"like": "rating >= 4"})
    features = {"item_id": dict(kind="id", num_buckets=2000), feature: spec, "rating": dict(kind="label")}
    with pytest.raises(SchemaError, match=message):
        plan_preprocessing(config, features, str(tmp_path / "out"))


@pytest.mark.parametrize("changes, message", [
    (dict(split="random"),
     "'random': movielens-100k is an event log; use one of \\['leave_one_out', 'chronological'\\]"),
    (dict(labels={"like": "rating ~ 4"}), "is not '<column> <op> <value>'"),
    (dict(labels={"like": "stars >= 4"}), "the source has no column 'stars'"),
    (dict(labels={"like": "rating >= 4 and age - zip_code > 1"}), r"labels\['like'\].*column 'zip_code' \(string\)"),
    (dict(candidate_columns=("stars",)), "preprocess.candidate_columns: the source movielens-100k has no column"),
    (dict(sequence_columns=("genres",)), "preprocess.sequence_columns: column 'genres' is a list"),
    (dict(frequency_label="like"), "preprocess.frequency_label 'like' is not a written label rule"),
    (dict(min_counts={"user_id": 2}), "preprocess.min_counts \\['user_id'\\]: only features whose vocabulary"),
    (dict(source="movielens-20m"), "unknown source 'movielens-20m'"),
    (dict(keep_rows="stars > 1"), "preprocess.keep_rows = 'stars > 1': the source has no column 'stars'"),
    (dict(negatives_per_event=1, negative_label="clicked"), "preprocess.negative_label 'clicked' is not a label "
                                                           "feature"),
    (dict(negatives_per_event=1, negative_label="rating", labels={"like": "rating >= 4"}),
     "preprocess.labels \\['like'\\] cannot be written with sampled negatives"),
    (dict(negatives_per_event=1, negative_label="rating", sampled_item_columns=("genre",)),
     "preprocess.sampled_item_columns: the source movielens-100k has no columns \\['genre'\\]"),
])
def test_bad_preprocess_settings_are_named(changes, message, tmp_path):
    config = PreprocessConfig(**{**dict(source="movielens-100k", input=made_up_movielens_100k(tmp_path)), **changes})
    with pytest.raises(ValueError, match=message):
        plan_preprocessing(config, {"item_id": dict(kind="id", num_buckets=2000), "user_id": dict(
            kind="id", num_buckets=1000), "rating": dict(kind="label")}, str(tmp_path / "out"))


def test_existing_output_is_kept_unless_overwrite(movielens_loo):
    out, _ = movielens_loo
    config = PreprocessConfig(source="movielens-100k", input=dataset("movielens-100k"))
    with pytest.raises(FileExistsError, match="already holds preprocessed data"):
        preprocess(config, {"item_id": dict(kind="id", num_buckets=2000), "rating": dict(kind="label")}, out)


# The binary, into training -----------------------------------------------------------------------------------------


@pytest.mark.slow  # multi-process or end-to-end: make test-all
def test_cli_preprocesses_the_movielens_config_and_training_reads_it(tmp_path):
    """tfrecsys-preprocess on configs/dnn_movielens_100k.py (a 20,000-rating part of u.data), then the
    config's schema parses the output and the dnn trains on it."""
    source = dataset("movielens-100k")
    part = tmp_path / "ml-100k"
    part.mkdir()
    for name in ("u.item", "u.user"):
        (part / name).write_bytes(open(os.path.join(source, name), "rb").read())
    with open(os.path.join(source, "u.data")) as f:
        (part / "u.data").write_text("".join(next(f) for _ in range(20_000)))
    data_dir = str(tmp_path / "prepared")
    result = subprocess.run([os.path.join(BIN, "tfrecsys-preprocess"), f"--config={CONFIG}",
                             f"--config.preprocess.input={part}", f"--config.data.dir={data_dir}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote movielens-100k to {data_dir}" in result.stdout

    from tfrecsys.train.loop import train_and_evaluate

    config = load_config(CONFIG, {"data.dir": data_dir, "train.steps": 20, "train.steps_per_loop": 20,
                                  "train.steps_per_execution": 10, "train.batch_size": 256})
    metadata = json.load(open(os.path.join(data_dir, "metadata.json")))
    assert metadata["splits"]["train"]["rows"] + metadata["splits"]["eval"]["rows"] == 20_000
    metrics = train_and_evaluate(config, str(tmp_path / "model"), verbose=0)
    assert 0.5 < metrics["score"]["auc"] <= 1.0


def test_census_age_band_gets_train_split_boundaries_and_reads_the_written_age(tmp_path):
    """A bucketized id feature of a dense column: preprocessing writes its equal-frequency cut points from the
    train split and no column of its own; training reads the band from the written ``age``."""
    sample = dataset("census-income-kdd", "deepctr_census-income.sample")
    directory = tmp_path / "census"
    directory.mkdir()
    (directory / "census-income.data").write_text(open(sample).read())
    out = str(tmp_path / "out")
    config = PreprocessConfig(source="census-income-kdd", input=str(directory), split="random", eval_fraction=0.25,
                              num_shards=1, max_buckets={"age_band": 4})
    features = {"age": dict(kind="dense"),
                "age_band": dict(kind="id", dtype="float32", source="age", embedding_dim=2,
                                 boundaries=vocabulary_path(out, "age_band")),
                "income_50k": dict(kind="label")}
    metadata = preprocess(config, features, out)
    assert "age_band" not in metadata["columns"] and metadata["columns"]["age"] == "float32"
    assert metadata["features"]["age_band"]["boundaries"] == os.path.join("vocabularies", "age_band.txt")
    schema = FeatureSchema.from_config(features_from_metadata(out))
    cuts = schema["age_band"].vocab.bucket_boundaries()
    assert len(cuts) == 3 and metadata["vocabularies"]["age_band"] == {
        "file": os.path.join("vocabularies", "age_band.txt"), "size": 4, "min_count": 1, "max_buckets": 4}
    train_ages = _records(resolve_files("train-*.tfrecord", out), {"age": tf.io.FixedLenFeature([], tf.float32)})
    counts = np.bincount(np.searchsorted(cuts, train_ages["age"].numpy(), side="right"), minlength=4)
    rows = metadata["splits"]["train"]["rows"]
    assert counts.sum() == rows and counts.min() >= rows // 8, counts   # about a quarter each, ages kept whole
    batch, _ = next(iter(make_dataset(resolve_files("train-*.tfrecord", out), schema, batch_size=8, training=False)))
    np.testing.assert_array_equal(batch["age_band"], batch["age"])
    with pytest.raises(ValueError, match=r"preprocess.max_buckets \['age'\]: only features whose boundaries file"):
        plan_preprocessing(dataclasses.replace(config, max_buckets={"age": 4}), features, str(tmp_path / "other"))
