"""Generative retrieval, sasrec encoder, simulator (the shared setup: configs/generative_common.py).

    tfrecsys-simulate --config=configs/sasrec_simulator.py
    tfrecsys-train  --config=configs/sasrec_simulator.py --model_dir=runs/sasrec_simulator
    tfrecsys-export --config=configs/sasrec_simulator.py --model_dir=runs/sasrec_simulator --export_base=runs/export
"""

from tfrecsys.config import config_beside

common = config_beside(__file__, "generative_common.py")


def get_config():
    return common.get_config("simulator", "sasrec")
