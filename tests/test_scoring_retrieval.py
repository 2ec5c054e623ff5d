"""The retrieval batch job: the top-K candidates of every user, as (user, item, score, rank) rows.

Against a hand-written query model of the retrieval contract (tests/contract_retrieval.py): every user gets
exactly the model's K items, best first, ranked 1..K, with the model's own scores.
"""

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tests.contract_models import export_contract_model
from tests.contract_retrieval import K, expected_top_k, export_retrieval_contract_model, to_example, user_rows
from tfrecsys.scoring import pipeline

USERS = 30


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("retrieval")


@pytest.fixture(scope="module")
def model_base(workdir):
    base = str(workdir / "query")
    export_retrieval_contract_model(base, version=5)
    return base


@pytest.fixture(scope="module")
def users():
    return user_rows(USERS, seed=8)


def assert_top_k(rows: list[tuple], expected: dict, users: list[dict], k: int) -> None:
    """``rows`` of (user_id, item_id, score, rank): each user's best ``k`` of the model's list, in order."""
    by_user: dict[int, list[tuple]] = {}
    for user, item, score, rank in rows:
        by_user.setdefault(user, []).append((rank, item, score))
    assert sorted(by_user) == sorted(row["user_id"] for row in users), "every user, once"
    for user, candidates in by_user.items():
        candidates.sort()
        ids, scores = expected[user]
        assert [rank for rank, _, _ in candidates] == list(range(1, k + 1))
        assert [item for _, item, _ in candidates] == ids[:k].tolist()
        assert np.abs(np.array([score for _, _, score in candidates]) - scores[:k]).max() < 1e-5
        assert all(a >= b for a, b in zip(scores[:k], scores[1:k])), "best first"


def test_every_user_gets_the_models_top_k_as_ranked_rows(model_base, users, workdir):
    path = str(workdir / "users.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for row in users:
            writer.write(to_example(row))

    summary = pipeline.score(path, model_base, str(workdir / "out" / "top_k"), mode="retrieve", batch_size=7)

    lines = [json.loads(line) for file in summary.output_files for line in open(file)]
    assert all(list(line) == ["user_id", "model_name", "model_version", "item_id", "score", "rank"] for line in lines)
    assert {(line["model_name"], line["model_version"]) for line in lines} == {("query", 5)}
    rows = [(line["user_id"], line["item_id"], line["score"], line["rank"]) for line in lines]
    assert_top_k(rows, expected_top_k(f"{model_base}/5", users), users, K)
    assert summary.rows_read == summary.rows_scored == USERS and summary.rows_written == USERS * K


def test_parquet_users_to_parquet_top_3(model_base, users, workdir):
    path = str(workdir / "users.parquet")
    pq.write_table(pa.table({
        "user_id": pa.array([row["user_id"] for row in users], pa.int32()),
        "user_country": pa.array([row["user_country"] for row in users], pa.dictionary(pa.int8(), pa.string())),
        "hist_item_id": pa.array([row["hist_item_id"] for row in users], pa.list_(pa.int64())),
    }), path)

    summary = pipeline.score(path, model_base, str(workdir / "out" / "top_3"), input_format="parquet",
                             output_format="parquet", mode="retrieve", top_k=3)

    table = pa.concat_tables([pq.read_table(file) for file in summary.output_files])
    assert table.schema.names == ["user_id", "model_name", "model_version", "item_id", "score", "rank"]
    assert [table.schema.field(name).type for name in ("user_id", "item_id", "rank", "score")] == [
        pa.int64(), pa.int64(), pa.int64(), pa.float32()]
    rows = list(zip(*(table[name].to_pylist() for name in ("user_id", "item_id", "score", "rank"))))
    assert_top_k(rows, expected_top_k(f"{model_base}/5", users), users, 3)


def test_retrieve_mode_needs_item_ids_and_scores(workdir):
    ranker = export_contract_model(str(workdir / "ranker"))
    path = str(workdir / "one_user.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(to_example(user_rows(1)[0]))
    with pytest.raises(ValueError, match=re.escape("has outputs ['score'], not the retrieval outputs "
                                                   "['item_ids', 'scores']; retrieve mode needs")):
        pipeline.score(path, ranker, str(workdir / "unused"), mode="retrieve")


def test_top_k_beyond_the_models_k_is_refused(model_base, workdir):
    path = str(workdir / "one_more_user.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(to_example(user_rows(1)[0]))
    with pytest.raises(ValueError, match=f"top_k={K + 1} but model query/5 returns {K} candidates per row"):
        pipeline.score(path, model_base, str(workdir / "unused"), mode="retrieve", top_k=K + 1)
