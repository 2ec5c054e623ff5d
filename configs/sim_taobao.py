"""sim on Taobao UserBehavior through tfrecsys-preprocess: the rows, sampled negatives, split and vocabularies of
din_taobao.py, with lifelong histories cut from the per-user store preprocessing writes beside the rows.

    tfrecsys-preprocess --config=configs/sim_taobao.py   # the same rows, vocabularies and store as din_taobao.py's
    tfrecsys-train      --config=configs/sim_taobao.py --model_dir=runs/sim_taobao

The protocol of din_taobao.py (page views only; every view a real row and a sampled one; each user's last view
and its sampled row the eval split). ``tfrecsys-preprocess`` also writes ``user_histories-*.parquet``
(``preprocess.user_history_columns`` of ``din_taobao.taobao_world``): every view of every user once, with
``item_id``, ``category_id`` and the time. The input pipeline cuts for every row the ``RECENT_LEN`` most recent
views (the DIN branch) and the ``LIFELONG_LEN`` most recent (GSU/ESU) strictly before the row's ``timestamp``
(also the request time of the time intervals). ``user_id`` is training-only: it finds the user's store row and
groups GAUC. The rows' own histories (``hist_*``, ``neg_hist_*``) are declared training-only and not read: so
preprocessing this config writes what din/dien's does, the negative histories counted in the vocabularies.
Ids, embeddings (16) and training (Adam 1e-3, batch 256) are din_taobao.py's, for 1 epoch, chosen on validation
(``din_taobao.taobao_world``); the SIM sizes are sim_simulator.py's (hard search on the category, K = 50, 2 heads).
"""

import ml_collections

from tfrecsys.config import config_beside

RECENT_LEN = 10
LIFELONG_LEN = 500

base = config_beside(__file__, "base.py")
din = config_beside(__file__, "din_taobao.py")
sim_simulator = config_beside(__file__, "sim_simulator.py")


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("sim_taobao", data_dir="runs/data/taobao", model_name="sim_taobao", family="sim")
    din.taobao_world(config, epochs=1)  # validation AUC after 1 / 2 epochs: 0.871 / 0.844
    for name in ("user_id", "hist_item_id", "hist_category_id"):
        config.features[name].training_only = True
    config.features.timestamp = dict(kind="dense", dtype="int64")
    sim_simulator.lifelong_ranker(config, category="category_id", item_category="category_id",
                                  recent_len=RECENT_LEN, lifelong_len=LIFELONG_LEN)
    config.data.user_histories.file = "user_histories-*.parquet"  # preprocessing's store files
    return config
