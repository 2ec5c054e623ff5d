"""two_tower retrieval on MovieLens-100K, leave-one-out by time (each user's last rating is evaluated).

    tfrecsys-preprocess --config=configs/two_tower_movielens.py     # reads ../shared/datasets/movielens-100k
    tfrecsys-train  --config=configs/two_tower_movielens.py --model_dir=runs/two_tower_ml
    tfrecsys-export --config=configs/two_tower_movielens.py --model_dir=runs/two_tower_ml --export_base=runs/export

Preprocessing writes the interactions (every rating is a positive, reward 1), candidates.tfrecord (every
movie once, with its genres) and item_frequency.tsv (training ratings per movie). The query tower reads the
user and the last 50 movies the user rated before the target; the candidate tower the movie and its genres.
bench/bench_retrieval.py compares popularity, in-batch and mixed negatives with and without logQ, and the same
towers built in tensorflow-recommenders.
"""

import ml_collections

from tfrecsys.config import config_beside

from tfrecsys.data.readers.movielens import GENRES_100K

NUM_USERS = 943    # ids 1..943 (id 0 and unseen ids go to the OOV row)
NUM_ITEMS = 1682   # ids 1..1682
HISTORY_LEN = 50

base = config_beside(__file__, "base.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("two_tower_movielens", data_dir="runs/data/movielens_100k_retrieval",
                             model_name="two_tower_movielens", family="two_tower")

    config.data.candidates_file = "candidates.tfrecord"
    config.data.item_frequency_file = "item_frequency.tsv"

    config.preprocess = ml_collections.ConfigDict(dict(
        source="movielens-100k",
        input="../shared/datasets/movielens-100k",   # GroupLens' u.data / u.item / u.user
        split="leave_one_out",
        history_len=HISTORY_LEN,
        history_columns=("item_id",),
        labels={"reward": "rating > 0"},             # every rating is a positive interaction of weight 1
        candidate_columns=("genres",),               # candidates.tfrecord: item_id and genres per movie
        num_shards=2,
    ))

    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS + 1, embedding_dim=32)
    config.features.hist_item_id = dict(kind="sequence", shares="item_id", max_len=HISTORY_LEN)
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS + 1, embedding_dim=32)
    config.features.genres = dict(kind="sequence", dtype="string", vocabulary=list(GENRES_100K),
                                       max_len=6, embedding_dim=8)
    config.features.reward = dict(kind="label")

    config.model.query_features = ("user_id", "hist_item_id")
    config.model.candidate_features = ("item_id", "genres")
    config.model.candidate_id = "item_id"
    config.model.hidden_units = (64,)
    config.model.output_dim = 32
    config.model.dropout = 0.0
    config.model.temperature = 0.1
    config.model.negatives = "mixed"          # in_batch | sampled | mixed
    config.model.num_sampled = 256            # B': uniform corpus negatives per step
    config.model.sampler_alpha = 0.0
    # Mixed negatives without logQ: the best Recall@50 measured (bench/RESULTS.md); the 256 uniform corpus
    # negatives already keep popular items from being over-penalised, and logQ on top measured lower.
    config.model.logq = "none"                # none | table | streaming
    config.model.remove_accidental_hits = True
    config.model.estimator = ml_collections.ConfigDict(dict(num_buckets=1 << 14, num_hashes=3, alpha=0.01))
    config.model.eval_ks = (10, 50, 100)
    config.model.export_k = 100

    config.tasks.retrieval = dict(loss="sampled_softmax", sample_weight="reward", weight=1.0)

    config.train.steps = 2000                 # ~10 epochs of the 99,057 training ratings
    config.train.steps_per_loop = 500
    config.train.steps_per_execution = 50
    config.train.shuffle_buffer = 100_000
    config.train.eval_batch_size = 943

    config.train.best_metric = "recall_at_50"  # keep <model_dir>/best/ by this eval metric

    config.export.candidate_model_name = "two_tower_movielens_candidates"
    return config
