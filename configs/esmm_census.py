"""esmm on Census-Income (KDD), a throughput pairing only (as in ../shared/reference/peer-baselines.md §2):
``ctr`` = income over 50K, ``ctcvr`` = income over 50K and never married; ``cvr`` has no loss.

    tfrecsys-preprocess --config=configs/esmm_census.py
    tfrecsys-train      --config=configs/esmm_census.py --model_dir=runs/esmm_census
"""

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
census = config_beside(__file__, "mmoe_census.py")


def get_config():
    config = base.get_config("esmm_census", data_dir="runs/data/census_esmm", model_name="esmm_census")
    census.census_world(config)
    config.preprocess.labels = {"rich_and_never_married": "income_50k == 1 and never_married == 1"}
    config.features.rich_and_never_married = dict(kind="label")
    del config.tasks["income"]
    del config.tasks["never_married"]
    config.model.name = "esmm"
    config.model.backbone = "none"
    config.model.tower_units = (256, 128, 64)
    config.tasks.ctr = dict(label="income_50k")
    config.tasks.cvr = dict(label="never_married", loss=None, mask="income_50k == 1", metrics=("auc",))
    config.tasks.ctcvr = dict(label="rich_and_never_married")
    config.train.best_metric = "ctr_auc"
    return config
