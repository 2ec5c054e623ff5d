"""mmoe on Ali-CCP (Alibaba Click and Conversion Prediction, the ESMM paper's data), and the Ali-CCP world
the other multi-task configs on it share (``ali_ccp_world``).

    tfrecsys-preprocess --config=configs/mmoe_ali_ccp.py     # ../shared/datasets/ali-ccp-sample → data.dir
    tfrecsys-train      --config=configs/mmoe_ali_ccp.py --model_dir=runs/mmoe_ali_ccp

Input: the torch-rechub CSVs (``*train*.csv``, ``*val*.csv``, ``*test*.csv``, kept as the release's splits;
``tfrecsys.data.readers.ali_ccp``). The shared copy is a 200-row sample (a pipeline check, far too small for
metrics): point ``--config.preprocess.input`` at the full preprocessed files. Ali-CCP fields are
label-encoded ids (vocabularies of the train split, unseen ids in the OOV row) plus 8 dense values. Tasks:
``ctr`` (click) and ``cvr`` (purchase, over clicked rows). Ali-CCP has no intermediate action (cart, wish)
column, so ESM² has no config here (configs/esm2_simulator.py has one).
"""

import ml_collections

from tfrecsys.config import config_beside
from tfrecsys.data.readers.ali_ccp import FIELDS

base = config_beside(__file__, "base.py")
DENSE_FIELDS = ("109_14", "110_14", "127_14", "150_14", "508", "509", "702", "853")


def ali_ccp_world(config: ml_collections.ConfigDict) -> None:
    """Preprocessing, features, tasks and training settings of every multi-task config on Ali-CCP."""
    data_dir = config.data.get_ref("dir")
    config.preprocess = ml_collections.ConfigDict(dict(
        source="ali-ccp", input="../shared/datasets/ali-ccp-sample", split="files", num_shards=2))
    config.data.eval_files = "test-*.tfrecord"
    for field in FIELDS:
        config.features[f"field_{field}"] = dict(kind="id", embedding_dim=8,
                                                 vocabulary=data_dir + f"/vocabularies/field_{field}.txt")
    for field in DENSE_FIELDS:
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


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("mmoe_ali_ccp", data_dir="runs/data/ali_ccp", model_name="mmoe_ali_ccp")
    ali_ccp_world(config)
    config.model.name = "mmoe"
    config.model.num_experts = 4
    config.model.expert_units = (128, 64)
    return config
