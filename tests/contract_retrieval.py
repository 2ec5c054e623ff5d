"""A small retrieval query SavedModel that follows the tfrecsys retrieval contract, built without model code.

Batch retrieval depends only on the contract (tfrecsys/export/retrieval.py), so its tests use this
hand-written module: a query embedding from the user's id, country and history, scored against every item
by inner product, top-K best first.

    serving_default(user_id int64 [B], user_country string [B], hist_item_id int64 [B, 4],
                    hist_item_id_length int64 [B]) -> {"item_ids": int64 [B, K], "scores": float32 [B, K]}
    serving_examples(inputs string [B])  # serialized tf.train.Example -> the same outputs
"""

import os

import numpy as np
import tensorflow as tf

NUM_USERS = 40
NUM_ITEMS = 30
DIM = 4
K = 5
HISTORY_LEN = 4
COUNTRIES = ("de", "fr", "jp", "us")
# Item ids unlike their row numbers, so a test sees that ids (not indices) come out.
ITEM_IDS = np.arange(NUM_ITEMS, dtype=np.int64) * 7 + 500


class RetrievalContractModel(tf.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.user_embeddings = tf.Variable(rng.normal(size=(NUM_USERS, DIM)).astype(np.float32))
        self.country_embeddings = tf.Variable(rng.normal(size=(len(COUNTRIES) + 1, DIM)).astype(np.float32))
        self.item_embeddings = tf.Variable(rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32))
        self.item_ids = tf.constant(ITEM_IDS)
        self.countries = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(COUNTRIES), tf.range(len(COUNTRIES), dtype=tf.int64)),
            default_value=len(COUNTRIES))

    def top_k(self, features):
        mask = tf.sequence_mask(features["hist_item_id_length"], HISTORY_LEN, dtype=tf.float32)
        history_rows = tf.math.floormod(features["hist_item_id"], NUM_ITEMS)
        history = tf.reduce_sum(tf.gather(self.item_embeddings, history_rows) * mask[..., None], axis=1)
        history /= tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
        query = (tf.gather(self.user_embeddings, tf.math.floormod(features["user_id"], NUM_USERS))
                 + tf.gather(self.country_embeddings, self.countries.lookup(features["user_country"])) + history)
        best = tf.math.top_k(tf.matmul(query, self.item_embeddings, transpose_b=True), k=K)
        return {"item_ids": tf.gather(self.item_ids, best.indices), "scores": best.values}

    @tf.function(input_signature=[{
        "user_id": tf.TensorSpec([None], tf.int64, name="user_id"),
        "user_country": tf.TensorSpec([None], tf.string, name="user_country"),
        "hist_item_id": tf.TensorSpec([None, HISTORY_LEN], tf.int64, name="hist_item_id"),
        "hist_item_id_length": tf.TensorSpec([None], tf.int64, name="hist_item_id_length"),
    }])
    def serve(self, features):
        return self.top_k(features)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def serve_examples(self, serialized):
        parsed = tf.io.parse_example(serialized, {
            "user_id": tf.io.FixedLenFeature([], tf.int64),
            "user_country": tf.io.FixedLenFeature([], tf.string),
            "hist_item_id": tf.io.RaggedFeature(tf.int64),
        })
        history = parsed.pop("hist_item_id")[:, -HISTORY_LEN:]
        parsed["hist_item_id"] = history.to_tensor(0, shape=[None, HISTORY_LEN])
        parsed["hist_item_id_length"] = history.row_lengths()
        return self.top_k(parsed)


def export_retrieval_contract_model(model_base_path: str, version: int = 1, seed: int = 0) -> str:
    """Writes the contract model to ``<model_base_path>/<version>`` and returns that directory."""
    model = RetrievalContractModel(seed)
    path = os.path.join(model_base_path, str(version))
    tf.saved_model.save(model, path, signatures={
        "serving_default": model.serve, "serving_examples": model.serve_examples})
    return path


def user_rows(count: int, seed: int = 0) -> list[dict]:
    """One row per user: the query features a user table holds."""
    rng = np.random.default_rng(seed)
    return [{"user_id": user, "user_country": COUNTRIES[int(rng.integers(0, len(COUNTRIES)))],
             "hist_item_id": [int(item) for item in ITEM_IDS[rng.integers(0, NUM_ITEMS, size=rng.integers(0, 7))]]}
            for user in rng.permutation(NUM_USERS)[:count].tolist()]


def to_example(row: dict) -> bytes:
    feature = {
        "user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["user_id"]])),
        "user_country": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["user_country"].encode()])),
        "hist_item_id": tf.train.Feature(int64_list=tf.train.Int64List(value=row["hist_item_id"])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def expected_top_k(version_dir: str, rows: list[dict]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``user_id -> (item_ids [K], scores [K])`` straight from the SavedModel's serving_examples signature."""
    signature = tf.saved_model.load(version_dir).signatures["serving_examples"]
    outputs = signature(inputs=tf.constant([to_example(row) for row in rows]))
    return {row["user_id"]: (ids, scores)
            for row, ids, scores in zip(rows, outputs["item_ids"].numpy(), outputs["scores"].numpy())}
