"""esmm (CTR and CVR towers, pCTCVR = pCTR · pCVR, losses on ctr and ctcvr over every impression, none on
cvr) on a multi-task dataset: census (the default), ali_ccp, aliexpress or simulator
(configs/multitask_datasets.py).

    tfrecsys-preprocess --config=configs/esmm.py:ali_ccp
    tfrecsys-train      --config=configs/esmm.py:ali_ccp --model_dir=runs/esmm_ali_ccp
    tfrecsys-simulate   --config=configs/esmm.py:simulator
    tfrecsys-train      --config=configs/esmm.py:simulator --model_dir=runs/esmm
    tfrecsys-train      --config=configs/esmm.py:simulator --config.model.backbone=mmoe \
                        --config.train.loss_weighting.kind=uncertainty        # ESMM towers on MMoE

* census is a throughput pairing only (as in ../shared/reference/peer-baselines.md §2): ``ctr`` = income over
  50K, ``ctcvr`` = income over 50K and never married;
* on ali_ccp and aliexpress a purchase (conversion) implies a click: it is the CTCVR label, and ``cvr`` is
  measured against it over clicked rows only;
* on the simulator the position-bias tower's logit is added to ctr and to ctcvr (a conversion needs a click,
  so the position that made the click likelier makes click-and-convert likelier too) and never to cvr, the
  post-click task: this choice is ours, the papers do not cover it. Serving gives ctr, cvr and ctcvr
  debiased.
"""

from tfrecsys.config import config_beside

datasets = config_beside(__file__, "multitask_datasets.py")
CONVERSION_LABEL = {"ali_ccp": "purchase", "aliexpress": "conversion"}


def get_config(dataset: str = "census"):
    config = datasets.start("esmm", dataset, data_dir="runs/data/census_esmm" if dataset == "census" else "")
    if dataset == "census":
        config.preprocess.labels = {"rich_and_never_married": "income_50k == 1 and never_married == 1"}
        config.features.rich_and_never_married = dict(kind="label")
        del config.tasks["income"]
        del config.tasks["never_married"]
    config.model.backbone = "none"      # none | shared_bottom | mmoe | ple (with that backbone's keys)
    if dataset == "census":
        config.model.tower_units = (256, 128, 64)
        config.tasks.ctr = dict(label="income_50k")
        config.tasks.cvr = dict(label="never_married", loss=None, mask="income_50k == 1", metrics=("auc",))
        config.tasks.ctcvr = dict(label="rich_and_never_married")
        config.train.best_metric = "ctr_auc"
    elif dataset == "simulator":
        config.model.num_experts = 4
        config.model.expert_units = (64,)
        config.model.tower_units = (64, 32)
        config.model.dropout = 0.0
        config.model.position_tower.update(datasets.position_tower(("ctr", "ctcvr")))
        config.tasks.ctr = dict(label="click")
        config.tasks.cvr = dict(label="conversion", loss=None, mask="click == 1", metrics=("auc", "calibration"))
        config.tasks.ctcvr = dict(label="conversion")
        config.train.best_metric = "ctr_auc"
    else:
        label = CONVERSION_LABEL[dataset]
        config.model.tower_units = (128, 64)
        config.tasks.cvr = dict(label=label, loss=None, mask="click == 1", metrics=("auc",))
        config.tasks.ctcvr = dict(label=label)
    return config
