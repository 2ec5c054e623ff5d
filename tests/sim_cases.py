"""Small SIM experiments for the every-family tests (export contract, Beam scoring): configs/sim_simulator.py
with tiny sizes.

``SMALL_SIM`` shrinks the model and the histories (the contract test feeds synthetic rows, each feature under
its own name). ``SMALL_SIM_PER_ROW`` also swaps the per-user history store for per-row histories of a small
sequential world, the recent and the lifelong history cut from one stored column (``source``): the scoring
test compares predictions over stored rows, and rows read from the store hold no history of their own.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM_CONFIG = os.path.join(REPO, "configs", "sim_simulator.py")
RECENT_LEN, LIFELONG_LEN = 4, 24


def _histories(source: bool) -> dict:
    def sequence(name, column, max_len, **spec):
        return {f"features.{name}": dict(kind="sequence", max_len=max_len, **spec,
                                         **({"source": column} if source else {}))}

    return {**sequence("recent_item_id", "hist_item_id", RECENT_LEN, shares="item_id"),
            **sequence("recent_category", "hist_category", RECENT_LEN, shares="item_category",
                       aligned_with="recent_item_id"),
            **sequence("long_item_id", "hist_item_id", LIFELONG_LEN, shares="item_id"),
            **sequence("long_category", "hist_category", LIFELONG_LEN, shares="item_category",
                       aligned_with="long_item_id"),
            **sequence("long_timestamp", "hist_timestamp", LIFELONG_LEN, raw=True, aligned_with="long_item_id")}


SMALL_MODEL = {"model.top_k": 6, "model.head_dim": 4, "model.attention_hidden_units": (8,),
               "model.hidden_units": (16,), "model.time_buckets": 8, "model.time_embedding_dim": 4}
SMALL_SIM = {**SMALL_MODEL, **_histories(source=False)}
SMALL_SIM_PER_ROW = {
    **SMALL_MODEL, **_histories(source=True), "data.user_histories": None,
    "data.simulator": dict(kind="sequential", num_users=60, num_items=200, num_categories=10, events_per_user=80,
                           history_len=LIFELONG_LEN, seed=0)}
