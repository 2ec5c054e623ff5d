"""ple (CGC extraction levels with shared and task-specific experts) on a multi-task dataset: census (the
default), ali_ccp, aliexpress or simulator (configs/multitask_datasets.py).

    tfrecsys-preprocess --config=configs/ple.py:census
    tfrecsys-train      --config=configs/ple.py:census --model_dir=runs/ple_census
    tfrecsys-simulate   --config=configs/ple.py:simulator
    tfrecsys-train      --config=configs/ple.py:simulator --model_dir=runs/ple
"""

from tfrecsys.config import config_beside

datasets = config_beside(__file__, "multitask_datasets.py")
# (num_levels, shared_experts, task_experts, expert_units) per dataset: census has DeepCTR's defaults.
EXPERTS = {"census": (2, 1, 1, (256,)), "ali_ccp": (2, 2, 1, (128, 64)), "aliexpress": (2, 2, 1, (128, 64)),
           "simulator": (2, 2, 1, (64,))}


def get_config(dataset: str = "census"):
    config = datasets.start("ple", dataset)
    (config.model.num_levels, config.model.shared_experts, config.model.task_experts,
     config.model.expert_units) = EXPERTS[dataset]
    if dataset == "simulator":
        datasets.simulator_ctr_cvr_heads(config)
    return config
