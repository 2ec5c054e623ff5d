"""The datasets every multi-task family trains on, one world each: preprocessing or simulator, features, tasks
and training settings. A family's config file (configs/{shared_bottom,mmoe,ple,esmm}.py) takes the dataset
as its argument and adds its own model:

    tfrecsys-preprocess --config=configs/mmoe.py:census       # ../shared/datasets/census-income-kdd → data.dir
    tfrecsys-train      --config=configs/mmoe.py:census --model_dir=runs/mmoe_census
    tfrecsys-simulate   --config=configs/esmm.py:simulator

* ``census``: Census-Income (KDD), the MMoE paper's data. Protocol of ../shared/reference/peer-baselines.md
  §2: the official test file (99,762 rows) split 80/20 at random with seed 0; tasks ``income`` (income over
  50K) and ``never_married`` (marital status "Never married"); the 32 nominal columns as embedded ids
  (vocabularies of the train split), the 7 continuous ones as dense inputs, standardised in the model
  (``dense_batch_norm``); instance weight and marital status left out (the second is the label). The four
  money columns (wage per hour, capital gains, capital losses, dividends) are also embedded by their bucket
  (``<column>_bucket``, 8-d): at most 16 equal-frequency buckets cut on the train split by
  ``tfrecsys-preprocess``, read from the same column, so a serving client sends each money column once.
* ``ali_ccp``: Ali-CCP (Alibaba Click and Conversion Prediction, the ESMM paper's data), the torch-rechub
  CSVs (``*train*.csv``, ``*val*.csv``, ``*test*.csv``, kept as the release's splits). The shared copy is a
  200-row sample (a pipeline check, far too small for metrics): point ``--config.preprocess.input`` at the
  full files. Label-encoded ids (vocabularies of the train split, unseen ids in the OOV row) plus 8 dense
  values. Tasks ``ctr`` (click) and ``cvr`` (purchase, over clicked rows). Ali-CCP has no intermediate action
  (cart, wish) column, so ESM² has no config on it (configs/esm2_simulator.py has one).
* ``aliexpress``: the AliExpress Searching System dataset (the AITM/PLE multi-task data), one country's
  ``train.csv`` and ``test.csv`` (or torch-rechub's samples with the same columns), split as released. The
  shared copy is a 120-row sample (a pipeline check only). The 16 label-encoded categorical columns and the
  63 normalised numerical ones. Tasks ``ctr`` (click) and ``cvr`` (conversion, over clicked rows).
* ``simulator``: the position-bias simulator (``tfrecsys.data.simulators.position_bias``: ranked lists with a
  known examination curve, correlated click and conversion labels over every impression), the world of
  configs/dnn_position_bias_simulator.py. Tasks ``ctr`` (click) and ``cvr`` (conversion, over clicked rows);
  a shallow position-bias tower adds its logit to the engagement tasks in training
  (``--config.model.position_tower.tasks='()'`` turns it off).

``--config.preprocess.input`` points a real dataset at another copy of its files.
"""

import ml_collections

from tfrecsys.config import config_beside
from tfrecsys.data.readers.ali_ccp import FIELDS as ALI_CCP_FIELDS
from tfrecsys.data.readers.aliexpress import NUM_CATEGORICAL, NUM_NUMERICAL
from tfrecsys.data.readers.census import ATTRIBUTES as CENSUS_ATTRIBUTES

base = config_beside(__file__, "base.py")
position_bias = config_beside(__file__, "dnn_position_bias_simulator.py")

CENSUS_DENSE = ("age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
                "num_persons_worked_for_employer", "weeks_worked_in_year")
CENSUS_NOT_FEATURES = CENSUS_DENSE + ("instance_weight", "marital_stat")
CENSUS_EMBEDDING_DIM = 16
# Heavy-tailed amounts (capital gains: 0 in 96 % of rows, up to 99,999) that the batch norm squeezes together;
# their buckets beside the values add ~0.003-0.004 income AUC (bench/RESULTS.md issue 13, branch census6).
CENSUS_MONEY = ("wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks")
CENSUS_MONEY_BUCKETS = 16
CENSUS_MONEY_BUCKET_DIM = 8
ALI_CCP_DENSE_FIELDS = ("109_14", "110_14", "127_14", "150_14", "508", "509", "702", "853")


def census_world(config: ml_collections.ConfigDict) -> None:
    data_dir = config.data.get_ref("dir")
    config.preprocess = ml_collections.ConfigDict(dict(
        source="census-income-kdd", input="../shared/datasets/census-income-kdd", split="random",
        eval_fraction=0.2, seed=0, num_shards=4, max_buckets={}))
    for column in CENSUS_ATTRIBUTES:
        if column not in CENSUS_NOT_FEATURES:
            config.features[column] = dict(kind="id", dtype="string", embedding_dim=CENSUS_EMBEDDING_DIM,
                                           vocabulary=data_dir + f"/vocabularies/{column}.txt")
    for column in CENSUS_DENSE:
        config.features[column] = dict(kind="dense")
    for column in CENSUS_MONEY:
        bucket = f"{column}_bucket"
        config.features[bucket] = dict(kind="id", dtype="float32", source=column,
                                       embedding_dim=CENSUS_MONEY_BUCKET_DIM,
                                       boundaries=data_dir + f"/vocabularies/{bucket}.txt")
        config.preprocess.max_buckets[bucket] = CENSUS_MONEY_BUCKETS
    config.features.income_50k = dict(kind="label")
    config.features.never_married = dict(kind="label")
    config.tasks.income = dict(label="income_50k")
    config.tasks.never_married = dict(label="never_married")
    config.model.dense_batch_norm = True
    # The 32 nominal tables (16-d) and the 4 bucket tables (8-d) as one variable per width: the first step in
    # 0.70x the CPU time (median of 24 pairs), the same AUC (EmbeddingTables.pack_by_width; docs/performance.md;
    # bench/RESULTS.md issue 13, branch fused29). Checkpoints of one variable per table need False.
    config.model.fused_embeddings = True
    config.model.dropout = 0.0
    config.model.tower_units = (64,)
    config.train.batch_size = 256
    config.train.learning_rate = 0.001
    # Chosen on a validation split of the training rows (bench/bench_census_auc.py, bench/RESULTS.md issue 13):
    # about 4 epochs of the 79.8k training rows at batch 256, the weights' moving average evaluated and exported.
    config.train.steps = 1280
    config.train.steps_per_loop = 320
    config.train.ema_momentum = 0.99
    config.train.best_metric = "income_auc"


def ali_ccp_world(config: ml_collections.ConfigDict) -> None:
    data_dir = config.data.get_ref("dir")
    config.preprocess = ml_collections.ConfigDict(dict(
        source="ali-ccp", input="../shared/datasets/ali-ccp-sample", split="files", num_shards=2))
    config.data.eval_files = "test-*.tfrecord"
    for field in ALI_CCP_FIELDS:
        config.features[f"field_{field}"] = dict(kind="id", embedding_dim=8,
                                                 vocabulary=data_dir + f"/vocabularies/field_{field}.txt")
    for field in ALI_CCP_DENSE_FIELDS:
        config.features[f"dense_{field}"] = dict(kind="dense")
    config.features.click = dict(kind="label")
    config.features.purchase = dict(kind="label")
    config.tasks.ctr = dict(label="click")
    config.tasks.cvr = dict(label="purchase", mask="click == 1")
    config.model.dense_batch_norm = False    # Ali-CCP's dense values are scaled to [0, 1] already
    config.model.dropout = 0.0
    config.model.tower_units = (64,)
    config.train.batch_size = 1024
    config.train.steps = 2000
    config.train.steps_per_loop = 500
    config.train.best_metric = "ctr_auc"


def aliexpress_world(config: ml_collections.ConfigDict) -> None:
    data_dir = config.data.get_ref("dir")
    config.preprocess = ml_collections.ConfigDict(dict(
        source="aliexpress", input="../shared/datasets/aliexpress-sample", split="files", num_shards=2))
    config.data.eval_files = "test-*.tfrecord"
    for i in range(1, NUM_CATEGORICAL + 1):
        config.features[f"categorical_{i}"] = dict(kind="id", embedding_dim=8,
                                                   vocabulary=data_dir + f"/vocabularies/categorical_{i}.txt")
    for i in range(1, NUM_NUMERICAL + 1):
        config.features[f"numerical_{i}"] = dict(kind="dense")
    config.features.click = dict(kind="label")
    config.features.conversion = dict(kind="label")
    config.tasks.ctr = dict(label="click")
    config.tasks.cvr = dict(label="conversion", mask="click == 1")
    config.model.dense_batch_norm = False    # the release normalises its numerical columns
    config.model.dropout = 0.0
    config.model.tower_units = (64,)
    config.train.batch_size = 2048
    config.train.steps = 2000
    config.train.steps_per_loop = 500
    config.train.best_metric = "ctr_auc"


def simulator_world(config: ml_collections.ConfigDict) -> None:
    """The position-bias simulator's world; the family sets its model, the tower and the tasks."""
    position_bias.position_world(config)


def position_tower(tasks: tuple) -> dict:
    """The shallow position-bias tower of the simulator configs, its logit added to ``tasks``: what
    ``config.model.position_tower.update`` sets (the block's other options keep their defaults)."""
    return dict(tasks=tasks, features=("position", "device"), hidden_units=(16,), position_dropout=0.1)


def simulator_ctr_cvr_heads(config: ml_collections.ConfigDict) -> None:
    """CTR and click-masked CVR heads with the position tower on CTR: the simulator set-up of the multi-task
    families without their own conversion structure (shared_bottom, mmoe, ple)."""
    config.model.tower_units = (32,)
    config.model.dropout = 0.0
    config.model.position_tower.update(position_tower(("ctr",)))
    config.tasks.ctr = dict(label="click")
    config.tasks.cvr = dict(label="conversion", mask="click == 1")
    config.train.best_metric = "ctr_auc"


WORLDS = {"census": census_world, "ali_ccp": ali_ccp_world, "aliexpress": aliexpress_world,
          "simulator": simulator_world}
DATA_DIRS = {"census": "runs/data/census", "ali_ccp": "runs/data/ali_ccp", "aliexpress": "runs/data/aliexpress",
             "simulator": "runs/data/position_bias"}


def start(family: str, dataset: str, data_dir: str = "") -> ml_collections.ConfigDict:
    """``configs/base.py``'s blocks for ``family`` on ``dataset`` (one of ``WORLDS``), with the dataset's world.

    Experiment ``<family>_<dataset>``; exported as ``<family>_<dataset>``, or ``<family>`` on the simulator.
    """
    if dataset not in WORLDS:
        raise ValueError(f"configs/{family}.py: dataset {dataset!r} is not one of {sorted(WORLDS)} (pass it as "
                         f"--config=configs/{family}.py:<dataset>)")
    model_name = family if dataset == "simulator" else f"{family}_{dataset}"
    config = base.get_config(f"{family}_{dataset}", data_dir=data_dir or DATA_DIRS[dataset], model_name=model_name,
                             family=family)
    WORLDS[dataset](config)
    return config
