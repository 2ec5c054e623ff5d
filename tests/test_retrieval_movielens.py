"""two_tower on MovieLens-100K from `tfrecsys-preprocess` output alone (configs/two_tower_movielens.py's
preprocess block): the files two_tower needs are there with the right contents (candidates = every movie once
with its genres, item frequencies = the training positives, leak-free histories, each user's last rating held
out), and a short run of the config's default (mixed negatives) clearly beats the popularity ranking. The full comparison is
bench/bench_retrieval.py.

Reads ../shared/datasets/movielens-100k (GroupLens' license forbids copying it into the repository) and skips
when it is absent.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.input import resolve_files
from tfrecsys.data.item_frequency import read_item_frequency
from tfrecsys.data.preprocess import PreprocessConfig, preprocess
from tfrecsys.data.readers.movielens import read_movielens_100k
from tfrecsys.data.retrieval_data import popularity_of_directory
from tfrecsys.train.loop import train_and_evaluate

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
DATASET = os.path.join(ROOT, os.pardir, "shared", "datasets", "movielens-100k")
CONFIG = os.path.join(ROOT, "configs", "two_tower_movielens.py")

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(DATASET, "u.data")),
                                reason=f"MovieLens-100K is not at {DATASET}")


def _read(files, spec):
    batches = list(tf.data.TFRecordDataset(files).batch(1 << 17).map(lambda s: tf.io.parse_example(s, spec)))
    return {name: tf.concat([b[name] for b in batches], 0) for name in spec}


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("ml100k_retrieval"))
    config = load_config(CONFIG, {"data.dir": data_dir, "preprocess.input": DATASET})
    metadata = preprocess(PreprocessConfig.from_config(config.preprocess), config.features, data_dir)
    return data_dir, config, metadata


INTERACTION = {"user_id": tf.io.FixedLenFeature([], tf.int64), "item_id": tf.io.FixedLenFeature([], tf.int64),
               "timestamp": tf.io.FixedLenFeature([], tf.int64), "hist_item_id": tf.io.RaggedFeature(tf.int64),
               "reward": tf.io.FixedLenFeature([], tf.float32)}


def test_candidates_are_every_movie_once_with_its_genres(preprocessed):
    data_dir, config, metadata = preprocessed
    corpus = _read([os.path.join(data_dir, config.data.candidates_file)],
                   {"item_id": tf.io.FixedLenFeature([], tf.int64), "genres": tf.io.RaggedFeature(tf.string)})
    movies = read_movielens_100k(DATASET).items
    genres = dict(zip(movies["item_id"].tolist(), movies["genres"].tolist()))
    items = corpus["item_id"].numpy().tolist()
    assert items == sorted(genres) and metadata["num_candidates"] == 1682
    assert [tuple(g.decode() for g in row) for row in corpus["genres"].to_list()] == [genres[i] for i in items]


def test_item_frequencies_are_the_training_positives(preprocessed):
    data_dir, config, metadata = preprocessed
    train = _read(resolve_files(config.data.train_files, data_dir), INTERACTION)
    assert train["item_id"].shape[0] == metadata["splits"]["train"]["rows"] == 99_057
    assert bool(tf.reduce_all(train["reward"] == 1.0))   # every rating is a positive
    ids, counts = np.unique(train["item_id"].numpy(), return_counts=True)
    expected = {item: 0 for item in range(1, 1683)}
    expected.update(zip(ids.tolist(), counts.tolist()))
    assert read_item_frequency(os.path.join(data_dir, config.data.item_frequency_file), "int64") == expected


def test_histories_hold_only_earlier_ratings_and_the_last_rating_is_held_out(preprocessed):
    data_dir, config, metadata = preprocessed
    ratings = read_movielens_100k(DATASET).ratings
    # In MovieLens a user rates a movie once, so (user, movie) names the rating and its time.
    rated_at = dict(zip(zip(ratings["user_id"].tolist(), ratings["item_id"].tolist()), ratings["timestamp"].tolist()))
    by_user = {}
    for (user, item), time in rated_at.items():
        by_user.setdefault(user, []).append((time, item))
    last = {user: max(events)[0] for user, events in by_user.items()}
    for split in ("train", "eval"):
        rows = _read(resolve_files(getattr(config.data, f"{split}_files"), data_dir), INTERACTION)
        users, times = rows["user_id"].numpy(), rows["timestamp"].numpy()
        for user, time, history in zip(users.tolist(), times.tolist(), rows["hist_item_id"].to_list()):
            assert len(history) <= 50 and all(rated_at[(user, item)] < time for item in history), (user, time)
            if split == "eval":
                assert time == last[user]
                earlier = sorted(event for event in by_user[user] if event[0] < time)
                # The latest 50; which of several ratings in the same second at the cut is kept is not specified.
                tie_at_cut = len(earlier) > 50 and earlier[-51][0] == earlier[-50][0]
                assert tie_at_cut or sorted(history) == sorted(item for _, item in earlier[-50:]), user
        if split == "eval":
            assert sorted(users.tolist()) == sorted(last) and metadata["splits"]["eval"]["rows"] == 943


def test_two_tower_beats_popularity_on_movielens_leave_one_out(preprocessed, tmp_path):
    data_dir, config, _ = preprocessed
    popularity = popularity_of_directory(data_dir, config.data.eval_files)

    config = load_config(CONFIG, {"data.dir": data_dir, "train.steps": 400, "train.steps_per_loop": 400})
    metrics = train_and_evaluate(config, str(tmp_path / "model"), verbose=0)["retrieval"]
    assert metrics["recall_at_10"] > 1.5 * popularity["recall_at_10"], (metrics, popularity)
    assert metrics["recall_at_50"] > 1.5 * popularity["recall_at_50"], (metrics, popularity)
    assert metrics["ndcg_at_10"] > 1.5 * popularity["ndcg_at_10"], (metrics, popularity)
