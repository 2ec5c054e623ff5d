"""Generative retrieval, sasrec encoder, amazon_beauty (the shared setup: configs/generative_common.py).

    tfrecsys-preprocess --config=configs/sasrec_amazon_beauty.py
    tfrecsys-train  --config=configs/sasrec_amazon_beauty.py --model_dir=runs/sasrec_amazon_beauty
    tfrecsys-export --config=configs/sasrec_amazon_beauty.py --model_dir=runs/sasrec_amazon_beauty --export_base=runs/export
"""

from tfrecsys.config import config_beside

common = config_beside(__file__, "generative_common.py")


def get_config():
    return common.get_config("amazon_beauty", "sasrec")
