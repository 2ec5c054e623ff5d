"""Generative retrieval, hstu encoder, simulator (the shared setup: configs/generative_common.py).

    tfrecsys-simulate --config=configs/hstu_simulator.py
    tfrecsys-train  --config=configs/hstu_simulator.py --model_dir=runs/hstu_simulator
    tfrecsys-export --config=configs/hstu_simulator.py --model_dir=runs/hstu_simulator --export_base=runs/export
"""

from tfrecsys.config import config_beside

common = config_beside(__file__, "generative_common.py")


def get_config():
    return common.get_config("simulator", "hstu")
