"""mmoe on Census-Income (KDD), the MMoE paper's data, and the census world the other multi-task configs on it
share (``census_world``).

    tfrecsys-preprocess --config=configs/mmoe_census.py       # ../shared/datasets/census-income-kdd → data.dir
    tfrecsys-train      --config=configs/mmoe_census.py --model_dir=runs/mmoe_census

Protocol of ../shared/reference/peer-baselines.md §2: the official test file (99,762 rows) split 80/20 at
random with seed 0; tasks ``income`` (income over 50K) and ``never_married`` (marital status "Never
married"); the 32 nominal columns as embedded ids (vocabularies of the train split), the 7 continuous ones
as dense inputs, standardised in the model (``dense_batch_norm``); instance weight and marital status left
out (the second is the label). ``--config.preprocess.input`` points at another copy of the UCI files.
"""

import ml_collections

from tfrecsys.config import config_beside
from tfrecsys.data.readers.census import ATTRIBUTES

base = config_beside(__file__, "base.py")
DENSE = ("age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
         "num_persons_worked_for_employer", "weeks_worked_in_year")
NOT_FEATURES = DENSE + ("instance_weight", "marital_stat")
EMBEDDING_DIM = 16


def census_world(config: ml_collections.ConfigDict) -> None:
    """Preprocessing, features, the two tasks and training settings of every multi-task config on Census."""
    data_dir = config.data.get_ref("dir")
    config.preprocess = ml_collections.ConfigDict(dict(
        source="census-income-kdd", input="../shared/datasets/census-income-kdd", split="random",
        eval_fraction=0.2, seed=0, num_shards=4))
    for column in ATTRIBUTES:
        if column not in NOT_FEATURES:
            config.features[column] = dict(kind="id", dtype="string", embedding_dim=EMBEDDING_DIM,
                                           vocabulary=data_dir + f"/vocabularies/{column}.txt")
    for column in DENSE:
        config.features[column] = dict(kind="dense")
    config.features.income_50k = dict(kind="label")
    config.features.never_married = dict(kind="label")
    config.tasks.income = dict(label="income_50k")
    config.tasks.never_married = dict(label="never_married")
    config.model.dense_batch_norm = True
    config.model.dropout = 0.0
    config.model.tower_units = (64,)
    config.train.batch_size = 256
    config.train.learning_rate = 0.001
    config.train.steps = 960             # about 3 epochs of the 79.8k training rows at batch 256
    config.train.steps_per_loop = 320
    config.train.best_metric = "income_auc"


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("mmoe_census", data_dir="runs/data/census", model_name="mmoe_census")
    census_world(config)
    config.model.name = "mmoe"
    config.model.num_experts = 3
    config.model.expert_units = (256, 128)
    return config
