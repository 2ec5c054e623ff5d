"""shared_bottom (one shared MLP, a tower per task), the baseline of MMoE and PLE, on a multi-task dataset:
census (the default), ali_ccp, aliexpress or simulator (configs/multitask_datasets.py).

    tfrecsys-preprocess --config=configs/shared_bottom.py:census
    tfrecsys-train      --config=configs/shared_bottom.py:census --model_dir=runs/shared_bottom_census
    tfrecsys-simulate   --config=configs/shared_bottom.py:simulator
    tfrecsys-train      --config=configs/shared_bottom.py:simulator --model_dir=runs/shared_bottom
"""

from tfrecsys.config import config_beside

datasets = config_beside(__file__, "multitask_datasets.py")
BOTTOM_UNITS = {"census": (256, 128), "ali_ccp": (128, 64), "aliexpress": (128, 64), "simulator": (64,)}


def get_config(dataset: str = "census"):
    config = datasets.start("shared_bottom", dataset)
    config.model.bottom_units = BOTTOM_UNITS[dataset]
    if dataset == "simulator":
        datasets.simulator_ctr_cvr_heads(config)
    return config
