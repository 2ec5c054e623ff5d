"""two_tower retrieval on the simulated retrieval world (known item popularity), mixed negatives + logQ.

    tfrecsys-simulate --config=configs/two_tower_simulator.py                  # runs/data/retrieval_world/
    tfrecsys-train  --config=configs/two_tower_simulator.py --model_dir=runs/two_tower
    tfrecsys-export --config=configs/two_tower_simulator.py --model_dir=runs/two_tower --export_base=runs/export
    tfrecsys-serve  --model_name=two_tower --model_base_path=runs/export/two_tower --port=8500 &

Negatives and correction are config options: --config.model.negatives=in_batch|sampled|mixed and
--config.model.logq=none|table|streaming (table: the preprocessed item_frequency.tsv; streaming: the
hashed estimator of Yi et al.).
"""

import ml_collections

from tfrecsys.config import config_beside

NUM_USERS = 1000
NUM_ITEMS = 1000
NUM_CATEGORIES = 20
HISTORY_LEN = 20

base = config_beside(__file__, "base.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("two_tower_simulator", data_dir="runs/data/retrieval_world",
                             model_name="two_tower", family="two_tower")

    config.data.candidates_file = "candidates.tfrecord"       # one example per corpus item
    config.data.item_frequency_file = "item_frequency.tsv"    # item_id<TAB>training count
    config.data.simulator = ml_collections.ConfigDict(dict(
        kind="retrieval",                     # tfrecsys/data/simulators/retrieval.py
        num_users=NUM_USERS, num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES, events_per_user=40.0,
        popularity_exponent=1.2, affinity=3.0, history_len=HISTORY_LEN, seed=0))

    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS, embedding_dim=32)
    config.features.hist_item_id = dict(kind="sequence", shares="item_id", max_len=HISTORY_LEN)
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS, embedding_dim=32)
    config.features.item_category = dict(kind="id", num_buckets=NUM_CATEGORIES, embedding_dim=8)
    config.features.reward = dict(kind="label")

    config.model.query_features = ("user_id", "hist_item_id")
    config.model.candidate_features = ("item_id", "item_category")
    config.model.candidate_id = "item_id"
    config.model.hidden_units = (64,)
    config.model.output_dim = 32
    config.model.dropout = 0.0
    config.model.temperature = 0.05
    config.model.negatives = "mixed"          # in_batch | sampled | mixed
    config.model.num_sampled = 128            # B': corpus negatives per step (sampled, mixed)
    config.model.sampler_alpha = 0.0          # corpus negatives drawn ∝ count^alpha; 0 = uniform
    config.model.logq = "table"               # none | table | streaming
    config.model.remove_accidental_hits = True
    config.model.estimator = ml_collections.ConfigDict(dict(num_buckets=1 << 14, num_hashes=3, alpha=0.01))
    config.model.eval_ks = (10, 50, 100)
    config.model.export_k = 100

    # The one task: each row's reward r_i (its sample_weight) weights the row in the sampled softmax.
    config.tasks.retrieval = dict(loss="sampled_softmax", sample_weight="reward", weight=1.0)

    config.train.steps_per_loop = 250
    config.train.steps_per_execution = 25
    config.train.shuffle_buffer = 50_000
    config.train.eval_batch_size = 1024

    config.train.best_metric = "recall_at_50"  # keep <model_dir>/best/ by this eval metric

    config.export.candidate_model_name = "two_tower_candidates"
    return config
