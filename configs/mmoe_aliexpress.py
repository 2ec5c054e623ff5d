"""mmoe on the AliExpress Searching System dataset (the AITM/PLE multi-task data), and the AliExpress world
the other multi-task configs on it share (``aliexpress_world``).

    tfrecsys-preprocess --config=configs/mmoe_aliexpress.py  # ../shared/datasets/aliexpress-sample → data.dir
    tfrecsys-train      --config=configs/mmoe_aliexpress.py --model_dir=runs/mmoe_aliexpress

Input: the release's CSVs (one country's ``train.csv`` and ``test.csv``, or torch-rechub's samples with the
same columns; ``tfrecsys.data.readers.aliexpress``), split as released. The shared copy is a 120-row sample
(a pipeline check only): point ``--config.preprocess.input`` at a country's directory. Features: the 16
label-encoded categorical columns (vocabularies of the train split) and the 63 normalised numerical ones.
Tasks: ``ctr`` (click) and ``cvr`` (conversion, over clicked rows).
"""

import ml_collections

from tfrecsys.config import config_beside
from tfrecsys.data.readers.aliexpress import NUM_CATEGORICAL, NUM_NUMERICAL

base = config_beside(__file__, "base.py")


def aliexpress_world(config: ml_collections.ConfigDict) -> None:
    """Preprocessing, features, tasks and training settings of every multi-task config on AliExpress."""
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


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("mmoe_aliexpress", data_dir="runs/data/aliexpress", model_name="mmoe_aliexpress")
    aliexpress_world(config)
    config.model.name = "mmoe"
    config.model.num_experts = 8
    config.model.expert_units = (128, 64)
    return config
