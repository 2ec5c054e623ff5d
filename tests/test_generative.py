"""Generative retrieval (tfrecsys/models/generative.py): SASRec's causal encoder, the next-item data layout,
the position-weighted loss, and the model learning a sequential rule with either encoder."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.data.model_tables import CandidateCorpus
from tfrecsys.data.next_item import next_item_rows
from tfrecsys.data.preprocess import PreprocessConfig, plan_preprocessing, preprocess
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.sasrec import SASRecStack
from tfrecsys.models import build_model
from tfrecsys.models.generative import next_item_softmax
from tests.test_preprocess import _records, made_up_movielens_100k
from tests.test_export_contract import GENERATIVE_CONFIG


def test_sasrec_output_never_depends_on_later_or_padded_items():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 8)).astype(np.float32)
    lengths = np.array([6, 4])
    stack = SASRecStack(num_blocks=2, num_heads=2)
    before = stack(x, lengths).numpy()
    changed = x.copy()
    changed[:, 4:] = rng.normal(size=(2, 2, 8))  # later items of row 0, padding of row 1
    after = stack(changed, lengths).numpy()
    np.testing.assert_array_equal(after[0, :4], before[0, :4])
    np.testing.assert_array_equal(after[1, :4], before[1, :4])
    assert np.abs(after[0, 4:] - before[0, 4:]).max() > 1e-3  # the changed positions themselves do change
    assert not after[1, 4:].any()  # padded outputs are 0


def test_next_item_rows_hold_each_users_last_training_event_and_held_out_item():
    users = np.array([7, 7, 7, 7, 8, 8, 9])
    items = np.array([1, 2, 3, 4, 5, 6, 7])
    times = np.array([10, 20, 30, 40, 10, 20, 10])
    columns, split, train_events = next_item_rows(users, items, times, history_len=2)
    train, evaluated = split["train"], split["eval"]
    by_user = {(int(columns["user_id"][r]), r in evaluated): r for r in range(len(columns["user_id"]))}
    row = by_user[(7, False)]  # the second-to-last event, its history the two before it
    assert columns["item_id"][row] == 3 and list(columns["hist_item_id"][row]) == [1, 2]
    assert list(columns["next_item_id"][row]) == [2, 3]
    row = by_user[(7, True)]  # history_len 2 keeps the most recent two; the last label is the held-out item
    assert list(columns["hist_item_id"][row]) == [2, 3] and list(columns["next_item_id"][row]) == [3, 4]
    assert list(columns["hist_timestamp"][row]) == [20, 30]
    # User 8's training event has no history (no row); user 9 has one event (training only, no row).
    assert (8, False) not in by_user and list(columns["next_item_id"][by_user[(8, True)]]) == [6]
    assert 9 not in columns["user_id"]
    assert len(train) == 1 and len(evaluated) == 2
    assert sorted(train_events.tolist()) == [1, 2, 3, 5, 7]  # frequencies count every training event


def test_next_item_loss_weighs_every_position_alike():
    logits = tf.constant(np.random.default_rng(1).normal(size=(5, 4)), tf.float32)
    positive = tf.constant([0, 0, 0, 0, 0])
    per_position = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive, logits=logits).numpy()
    rows = next_item_softmax(None, {"logits": logits, "positive_column": positive,
                                    "row": tf.constant([0, 0, 0, 0, 1]), "rows": 2}).numpy()
    np.testing.assert_allclose(rows.mean(), per_position.mean(), rtol=1e-6)
    np.testing.assert_allclose(rows, np.array([per_position[:4].sum(), per_position[4]]) * 2 / 5, rtol=1e-6)


@pytest.mark.slow  # a Beam pipeline: about 15 s on the shared 2-core machine
def test_preprocessing_writes_one_training_and_one_eval_row_per_user_with_next_items(tmp_path):
    (tmp_path / "Beauty.txt").write_text("1 10 11 12 13\n2 20 21\n")  # the S3-Rec format: user, items in order
    (tmp_path / "Beauty_item2attributes.json").write_text("{}")
    config = PreprocessConfig(source="amazon-beauty", input=str(tmp_path), history_len=5,
                              history_columns=("item_id", "timestamp"), examples_per_user="last", num_shards=1)
    features = {"item_id": dict(kind="id", num_buckets=30),
                "hist_item_id": dict(kind="sequence", shares="item_id", max_len=5),
                "next_item_id": dict(kind="label", dtype="int64", max_len=5)}
    preprocess(config, features, str(tmp_path / "out"))
    # user_id is no feature, yet every row carries it: the key tfrecsys-score --mode=retrieve writes per row.
    spec = {"user_id": tf.io.FixedLenFeature([], tf.int64), "item_id": tf.io.FixedLenFeature([], tf.int64),
            "hist_item_id": tf.io.RaggedFeature(tf.int64), "next_item_id": tf.io.RaggedFeature(tf.int64)}
    rows = {}
    for split in ("train", "eval"):
        parsed = _records(sorted((tmp_path / "out").glob(f"{split}-*")), spec)
        rows[split] = sorted((int(user), int(item), list(history), list(labels)) for user, item, history, labels
                             in zip(parsed["user_id"].numpy(), parsed["item_id"].numpy(),
                                    parsed["hist_item_id"].to_list(), parsed["next_item_id"].to_list()))
    assert rows["train"] == [(1, 12, [10, 11], [11, 12])]  # user 2's training event has no history
    assert rows["eval"] == [(1, 13, [10, 11, 12], [11, 12, 13]), (2, 21, [20], [21])]
    with pytest.raises(ValueError, match="examples_per_user 'last' needs an event log with split 'leave_one_out'"):
        plan_preprocessing(PreprocessConfig(source="movielens-100k", input=made_up_movielens_100k(tmp_path),
                                            split="chronological", examples_per_user="last"),
                           features, str(tmp_path / "out2"))


class _Tables:
    """A corpus handed to the builder directly (no files)."""

    def __init__(self, num_items):
        ids = np.arange(num_items, dtype=np.int64)
        self.corpus = CandidateCorpus("corpus", ids, {"item_id": ids}, np.ones(num_items))

    def candidate_corpus(self, feature_names, id_feature):
        return self.corpus


@pytest.mark.slow  # training: about 10 s per encoder on the shared machine
@pytest.mark.parametrize("encoder", ["sasrec", "hstu"])
def test_both_encoders_learn_a_sequential_rule_that_popularity_cannot(encoder):
    """Every user walks the items in steps of +1 (mod 20) from a random start: popularity ranks the held-out
    item at chance (HR@1 ≈ 1/20), a causal encoder that reads the last item learns it in a few dozen steps."""
    num_items, length, users = 20, 6, 128
    config = load_config(GENERATIVE_CONFIG, {
        "model.encoder": encoder, "model.num_blocks": 1, "model.dropout": 0.0, "model.num_sampled": 19,
        "model.eval_ks": (1,), "features.item_id.num_buckets": num_items,
        "features.item_id.embedding_dim": 16, "features.hist_item_id.max_len": length,
        "features.hist_timestamp.max_len": length, "features.next_item_id.max_len": length})
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, schema, _Tables(num_items))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02))
    rng = np.random.default_rng(0)
    start = rng.integers(0, num_items, size=(users, 1))
    walk = (start + np.arange(length + 1)) % num_items
    lengths = rng.integers(2, length + 1, size=users)
    pad = np.arange(length)[None, :] < lengths[:, None]
    features = {"hist_item_id": np.where(pad, walk[:, :-1], 0), "hist_item_id_length": lengths,
                "hist_timestamp": np.where(pad, np.arange(length)[None, :] * 60, 0),
                "item_id": walk[np.arange(users), lengths]}
    labels = {"next_item_id": np.where(pad, walk[:, 1:], 0), "next_item_id_length": lengths}
    data = tf.data.Dataset.from_tensors((features, labels)).repeat()
    model.fit(data, steps_per_epoch=40, epochs=1, verbose=0)
    metrics = model.evaluate(data, steps=1, return_dict=True, verbose=0)
    assert metrics["recall_at_1"] > 0.9, metrics
    query = model({k: v for k, v in features.items() if k != "item_id"})["query_embedding"]
    assert query.shape == (users, 16)
