"""mmoe on the multi-task simulator (correlated click and conversion over every impression), and the world
the other multi-task configs on it share (``multitask_world``).

    tfrecsys-simulate --config=configs/mmoe_simulator.py
    tfrecsys-train --config=configs/mmoe_simulator.py --model_dir=runs/mmoe --export_base=runs/export

Tasks: ``ctr`` (click, every impression) and ``cvr`` (conversion, trained and measured over clicked rows).
"""

import ml_collections

from tfrecsys.config import config_beside

NUM_USERS = 2000
NUM_ITEMS = 1000
NUM_CATEGORIES = 20

base = config_beside(__file__, "base.py")


def multitask_world(config: ml_collections.ConfigDict) -> None:
    """The simulator block and the features of every multi-task config on the simulator."""
    config.data.simulator = ml_collections.ConfigDict(dict(
        kind="multitask", num_users=NUM_USERS, num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES,
        num_impressions=100_000, task_correlation=0.5, seed=0))
    config.features.user_id = dict(kind="id", num_buckets=NUM_USERS, embedding_dim=16)
    config.features.item_id = dict(kind="id", num_buckets=NUM_ITEMS, embedding_dim=16)
    config.features.item_category = dict(kind="id", num_buckets=NUM_CATEGORIES, embedding_dim=8)
    config.features.click = dict(kind="label")
    config.features.conversion = dict(kind="label")
    config.train.steps = 600
    config.train.best_metric = "ctr_auc"


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("mmoe_simulator", data_dir="runs/data/multitask", model_name="mmoe")
    multitask_world(config)
    config.model.name = "mmoe"
    config.model.num_experts = 4
    config.model.expert_units = (64,)
    config.model.tower_units = (32,)
    config.model.dropout = 0.0
    config.tasks.ctr = dict(label="click")
    config.tasks.cvr = dict(label="conversion", mask="click == 1")
    return config
