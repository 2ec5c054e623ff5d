"""Generative retrieval, sasrec encoder, movielens_100k (the shared setup: configs/generative_common.py).

    tfrecsys-preprocess --config=configs/sasrec_movielens_100k.py
    tfrecsys-train  --config=configs/sasrec_movielens_100k.py --model_dir=runs/sasrec_movielens_100k
    tfrecsys-export --config=configs/sasrec_movielens_100k.py --model_dir=runs/sasrec_movielens_100k --export_base=runs/export
"""

from tfrecsys.config import config_beside

common = config_beside(__file__, "generative_common.py")


def get_config():
    return common.get_config("movielens_100k", "sasrec")
