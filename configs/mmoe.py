"""mmoe (shared experts, one softmax gate per task) on a multi-task dataset: census (the default), ali_ccp,
aliexpress or simulator (configs/multitask_datasets.py says what each holds).

    tfrecsys-preprocess --config=configs/mmoe.py:census
    tfrecsys-train      --config=configs/mmoe.py:census --model_dir=runs/mmoe_census
    tfrecsys-simulate   --config=configs/mmoe.py:simulator
    tfrecsys-train      --config=configs/mmoe.py:simulator --model_dir=runs/mmoe
"""

from tfrecsys.config import config_beside

datasets = config_beside(__file__, "multitask_datasets.py")
# (num_experts, expert_units) per dataset: census has DeepCTR's defaults (peer-baselines §2).
EXPERTS = {"census": (3, (256, 128)), "ali_ccp": (4, (128, 64)), "aliexpress": (8, (128, 64)),
           "simulator": (4, (64,))}


def get_config(dataset: str = "census"):
    config = datasets.start("mmoe", dataset)
    config.model.num_experts, config.model.expert_units = EXPERTS[dataset]
    if dataset == "simulator":
        datasets.simulator_ctr_cvr_heads(config)
    return config
