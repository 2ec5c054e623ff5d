"""dien on Taobao UserBehavior (the protocol and data of din_taobao.py): interest extractor GRU with the
auxiliary loss against the preprocessed negative history, AUGRU interest evolution.

    tfrecsys-preprocess --config=configs/dien_taobao.py   # the same output as din_taobao.py's
    tfrecsys-train      --config=configs/dien_taobao.py --model_dir=runs/dien_taobao
    tfrecsys-train      --config=configs/dien_taobao.py:no_aux --model_dir=runs/dien_no_aux

Sizes are DeepCTR's defaults on this protocol: both GRUs of the history's width (16 + 16), attention
(64, 16) Dice with softmax weights, the auxiliary net an MLP (100, 50) over ``[h_t ; e_b[t+1]]``, α = 1.
``:no_aux`` is the same model without the auxiliary loss (α = 0). Each trains the epochs chosen for it on
validation (``din_taobao.taobao_world``): 1 with the auxiliary loss, 2 without.
"""

import ml_collections

from tfrecsys.config import config_beside

base = config_beside(__file__, "base.py")
din = config_beside(__file__, "din_taobao.py")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """``variant``: "" (the auxiliary loss) or "no_aux" (none: ``model.aux_weight`` 0)."""
    if variant not in ("", "no_aux"):
        raise ValueError(f"configs/dien_taobao.py: unknown variant {variant!r}; use configs/dien_taobao.py or "
                         "configs/dien_taobao.py:no_aux")
    config = base.get_config("dien_taobao", data_dir="runs/data/taobao", model_name="dien_taobao", family="dien")
    # Validation AUC after 1 / 2 epochs: 0.840 / 0.790 with the auxiliary loss, 0.748 / 0.750 without.
    din.taobao_world(config, epochs=2 if variant == "no_aux" else 1)
    config.model.history = ("hist_item_id", "hist_category_id")
    config.model.negative_history = ("neg_hist_item_id", "neg_hist_category_id")
    config.model.gru_variant = "augru"
    config.model.aux_weight = 0.0 if variant == "no_aux" else 1.0
    config.model.aux_net = "mlp"
    config.model.aux_units = (100, 50)
    config.model.attention_units = (64, 16)
    config.model.attention_activation = "dice"
    config.model.hidden_units = (256, 128, 64)
    config.model.dropout = 0.0
    return config
