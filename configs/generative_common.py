"""The generative retrieval experiments (tfrecsys/models/generative.py): one setup, two encoders, three datasets.

``hstu_<dataset>.py`` and ``sasrec_<dataset>.py`` call ``get_config(dataset, encoder)`` and differ only in
``model.encoder``: the same items, lengths, width, blocks, heads, dropout, loss, negatives, temperature,
optimizer and steps, as in the GR paper's comparison ("identical configurations"). Datasets:

* ``simulator``: the ``sequential`` world's clicks (``tfrecsys-simulate``, kind ``sequential_next_item``);
* ``movielens_100k``: ../shared/datasets/movielens-100k through ``tfrecsys-preprocess``;
* ``amazon_beauty``: ../shared/datasets/amazon-beauty-s3rec (the S3-Rec release) through ``tfrecsys-preprocess``.

Every dataset gives one training row per user (the last training event with up to ``max_len`` items of
history and the next item after each) and one leave-one-out eval row (``tfrecsys.data.next_item``).
"""

import ml_collections

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")

# items: ids 1..num_items (0 and unknown ids take the OOV row). max_len 50 everywhere (the SASRec paper's for
# Amazon; it keeps MovieLens-100K, median 65 ratings per user, affordable on CPU).
DATASETS = {
    "simulator": dict(num_items=500, max_len=50, batch_size=128, steps=600, data_dir="runs/data/sequential_next_item"),
    "movielens_100k": dict(num_items=1682, max_len=50, batch_size=128, steps=300, source="movielens-100k",
                           input="../shared/datasets/movielens-100k",
                           data_dir="runs/data/movielens_100k_next_item"),
    "amazon_beauty": dict(num_items=12101, max_len=50, batch_size=128, steps=1000, source="amazon-beauty",
                          input="../shared/datasets/amazon-beauty-s3rec", data_dir="runs/data/amazon_beauty_next_item"),
}
ENCODERS = ("hstu", "sasrec")


def get_config(dataset: str, encoder: str) -> ml_collections.ConfigDict:
    if dataset not in DATASETS or encoder not in ENCODERS:
        raise ValueError(f"generative experiments: dataset in {sorted(DATASETS)}, encoder in {ENCODERS}; got "
                         f"{dataset!r}, {encoder!r}")
    spec = DATASETS[dataset]
    name = f"{encoder}_{dataset}"
    config = base.get_config(name, data_dir=spec["data_dir"], model_name=name, family="generative")
    max_len = spec["max_len"]
    config.data.candidates_file = "candidates.tfrecord"
    config.data.item_frequency_file = "item_frequency.tsv"
    if dataset == "simulator":
        config.data.simulator = ml_collections.ConfigDict(dict(
            kind="sequential_next_item", num_users=1000, num_items=spec["num_items"], num_categories=20,
            events_per_user=160, target_ctr=0.1, drift_rate=0.05, history_len=max_len, num_shards=2, seed=0))
    else:
        config.preprocess = ml_collections.ConfigDict(dict(
            source=spec["source"], input=spec["input"], split="leave_one_out", history_len=max_len,
            history_columns=("item_id", "timestamp"), candidate_columns=("item_id",),
            examples_per_user="last", num_shards=2))

    config.features.item_id = dict(kind="id", num_buckets=spec["num_items"] + 1, embedding_dim=64)
    config.features.hist_item_id = dict(kind="sequence", shares="item_id", max_len=max_len)
    config.features.hist_timestamp = dict(kind="sequence", raw=True, aligned_with="hist_item_id", max_len=max_len)
    config.features.next_item_id = dict(kind="label", dtype="int64", max_len=max_len)

    config.model.encoder = encoder
    config.model.history_feature = "hist_item_id"
    config.model.timestamp_feature = "hist_timestamp"
    config.model.label_feature = "next_item_id"
    config.model.candidate_id = "item_id"
    config.model.num_blocks = 2
    config.model.num_heads = 1
    config.model.dropout = 0.2
    config.model.temperature = 0.05           # on L2-normalised embeddings, as the GR reference
    config.model.negatives = "uniform"        # uniform | in_batch (logQ-corrected)
    config.model.num_sampled = 128            # uniform corpus negatives per step, shared by every position
    config.model.eval_ks = (10, 50, 200)
    config.model.export_k = 100
    # HSTU-only HSTULayer arguments; per-head widths default to embedding_dim / num_heads, as SASRec's.
    # attention_path: padded | xla (length-bucketed, compiled) | jagged; exports always take the padded one.
    config.model.hstu.attention_path = "padded"

    config.tasks.next_item = dict(loss="next_item_softmax")

    config.train.batch_size = spec["batch_size"]
    config.train.steps = spec["steps"]
    config.train.learning_rate = 0.001
    config.train.steps_per_loop = 100
    config.train.steps_per_execution = 50
    config.train.shuffle_buffer = 50_000
    config.train.eval_batch_size = 1024
    config.train.best_metric = "recall_at_10"

    config.export.candidate_model_name = f"{name}_candidates"
    return config
