"""A small SavedModel that follows the tfrecsys SavedModel contract, built without any model code.

Serving and scoring depend only on the contract (../shared/DESIGN.md), so their tests use this hand-written
module rather than a trained model: the same signatures, dtypes and named outputs a tfrecsys export has.

    serving_default(user_id int64 [B], item_id int64 [B], price float32 [B],
                    hist_item_id int64 [B, 4], hist_item_id_length int64 [B]) -> {"score": float32 [B]}
    serving_examples(inputs string [B])  # serialized tf.train.Example            -> {"score": float32 [B]}

``MultiTaskContractModel`` takes the same inputs and answers ESMM's three named outputs instead,
``{"ctr", "cvr", "ctcvr"}`` (float32 [B] each, ``ctcvr = ctr · cvr``): what ``output_filter`` selects from.
"""

import os

import numpy as np
import tensorflow as tf

HISTORY_LEN = 4


class ContractModel(tf.Module):
    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.user_weight = tf.Variable(0.01, dtype=tf.float32)
        self.item_weight = tf.Variable(-0.02, dtype=tf.float32)
        self.history_weight = tf.Variable(0.003, dtype=tf.float32)
        self.offset = tf.Variable(offset, dtype=tf.float32)

    def score(self, features):
        mask = tf.sequence_mask(features["hist_item_id_length"], HISTORY_LEN, dtype=tf.float32)
        history = tf.reduce_sum(tf.cast(features["hist_item_id"], tf.float32) * mask, axis=1)
        logit = (self.user_weight * tf.cast(features["user_id"], tf.float32)
                 + self.item_weight * tf.cast(features["item_id"], tf.float32)
                 + self.history_weight * history + features["price"] + self.offset)
        return {"score": tf.sigmoid(logit)}

    @tf.function(input_signature=[{
        "user_id": tf.TensorSpec([None], tf.int64, name="user_id"),
        "item_id": tf.TensorSpec([None], tf.int64, name="item_id"),
        "price": tf.TensorSpec([None], tf.float32, name="price"),
        "hist_item_id": tf.TensorSpec([None, HISTORY_LEN], tf.int64, name="hist_item_id"),
        "hist_item_id_length": tf.TensorSpec([None], tf.int64, name="hist_item_id_length"),
    }])
    def serve(self, features):
        return self.score(features)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def serve_examples(self, serialized):
        parsed = tf.io.parse_example(serialized, {
            "user_id": tf.io.FixedLenFeature([], tf.int64),
            "item_id": tf.io.FixedLenFeature([], tf.int64),
            "price": tf.io.FixedLenFeature([], tf.float32),
            "hist_item_id": tf.io.RaggedFeature(tf.int64),
        })
        history = parsed.pop("hist_item_id")[:, -HISTORY_LEN:]
        parsed["hist_item_id"] = history.to_tensor(0, shape=[None, HISTORY_LEN])
        parsed["hist_item_id_length"] = history.row_lengths()
        return self.score(parsed)


class MultiTaskContractModel(ContractModel):
    """Several named outputs, as ESMM exports them: ``ctr`` is the contract score, ``cvr`` its own sigmoid of
    the price and the item, ``ctcvr = ctr · cvr``."""

    def __init__(self, offset: float = 0.0):
        super().__init__(offset)
        self.cvr_price_weight = tf.Variable(-0.7, dtype=tf.float32)
        self.cvr_item_weight = tf.Variable(0.05, dtype=tf.float32)

    def score(self, features):
        ctr = super().score(features)["score"]
        cvr = tf.sigmoid(self.cvr_price_weight * features["price"]
                         + self.cvr_item_weight * tf.cast(features["item_id"] % 7, tf.float32))
        return {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}


def export_contract_model(model_base_path: str, version: int = 1, offset: float = 0.0,
                          multi_task: bool = False) -> str:
    """Writes the contract model (``multi_task``: MultiTaskContractModel) to ``<model_base_path>/<version>``
    and returns that directory."""
    model = (MultiTaskContractModel if multi_task else ContractModel)(offset)
    path = os.path.join(model_base_path, str(version))
    tf.saved_model.save(model, path, signatures={
        "serving_default": model.serve, "serving_examples": model.serve_examples})
    return path


def example_rows(count: int, seed: int = 0) -> list[dict]:
    """Raw feature rows with keys, as a client or a TFRecord file would hold them."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        history = rng.integers(0, 50, size=rng.integers(0, 7)).tolist()
        rows.append({"example_id": 1000 + i, "user_id": int(rng.integers(0, 100)),
                     "item_id": int(rng.integers(0, 50)), "price": float(np.float32(rng.random())),
                     "hist_item_id": history})
    return rows


def to_example(row: dict) -> bytes:
    feature = {
        "example_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["example_id"]])),
        "user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["user_id"]])),
        "item_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["item_id"]])),
        "price": tf.train.Feature(float_list=tf.train.FloatList(value=[row["price"]])),
        "hist_item_id": tf.train.Feature(int64_list=tf.train.Int64List(value=row["hist_item_id"])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def to_serving_inputs(rows: list[dict]) -> dict[str, np.ndarray]:
    """The padded-history batch serving_default takes (most recent HISTORY_LEN events kept)."""
    histories = [row["hist_item_id"][-HISTORY_LEN:] for row in rows]
    padded = np.zeros((len(rows), HISTORY_LEN), np.int64)
    for i, history in enumerate(histories):
        padded[i, :len(history)] = history
    return {"user_id": np.array([r["user_id"] for r in rows], np.int64),
            "item_id": np.array([r["item_id"] for r in rows], np.int64),
            "price": np.array([r["price"] for r in rows], np.float32),
            "hist_item_id": padded,
            "hist_item_id_length": np.array([len(h) for h in histories], np.int64)}
