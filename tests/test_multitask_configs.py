"""The multi-task configs are one file per family taking the dataset (``configs/mmoe.py:ali_ccp``): each
resolves, field by field and in the same feature and task order, to the config its former file
(``configs/mmoe_ali_ccp.py``, ...) gave. ``multitask_configs_before_folding.json`` holds those resolved
configs, written from the former files before they were folded."""

import json
import os

import ml_collections
import pytest

from tests.serving_dnn import REPO
from tfrecsys import model_options
from tfrecsys.config import load_config

CONFIGS = os.path.join(REPO, "configs")
with open(os.path.join(os.path.dirname(__file__), "multitask_configs_before_folding.json")) as f:
    BEFORE = json.load(f)
# The folded file and argument of each former config, and the fields meant to change.
FOLDED = {name: (f"{name.rsplit('_', 1)[0]}.py:{name.rsplit('_', 1)[1]}", ()) for name in BEFORE
          if name.endswith(("_census", "_aliexpress"))}
FOLDED.update({name: (f"{name[:-len('_ali_ccp')]}.py:ali_ccp", ()) for name in BEFORE if name.endswith("_ali_ccp")})
FOLDED["esmm_position_bias_simulator"] = ("esmm.py:simulator", ("experiment",))
# Census settings chosen on a validation split after the folding (bench/RESULTS.md, issue 13).
FOLDED.update({name: (path, ("train.steps",)) for name, (path, _) in FOLDED.items() if name.endswith("_census")})
# Fields configs/base.py gained after the folding, in every config.
ADDED_SINCE = ("train.ema_momentum",)
# Features the census configs gained after the folding (bench/RESULTS.md issue 13, branch censusbkt): the four
# money columns' buckets, with the bucket counts preprocessing cuts them into.
CENSUS_MONEY_BUCKETS = tuple(f"{c}_bucket" for c in ("wage_per_hour", "capital_gains", "capital_losses",
                                                        "dividends_from_stocks"))


def added_since(name: str, key: str) -> bool:
    if key in ADDED_SINCE:
        return True
    parts = key.split(".")
    # The census configs also gained their tables packed by width (bench/RESULTS.md issue 13, branch fused29).
    return name.endswith("_census") and (parts[:2] == ["preprocess", "max_buckets"] or key == "model.fused_embeddings"
                                         or (parts[0] == "features" and len(parts) > 1
                                             and parts[1] in CENSUS_MONEY_BUCKETS))


def fields(tree: dict, prefix: str = "") -> dict:
    """``{"model.tower_units": [64], ...}``: every leaf of a resolved config under its dotted name."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(fields(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_every_former_config_is_folded():
    assert sorted(FOLDED) == sorted(BEFORE) and len(BEFORE) == 13


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_folded_config_resolves_to_the_former_file_field_by_field(name):
    path, changed = FOLDED[name]
    now = json.loads(load_config(os.path.join(CONFIGS, path)).to_json_best_effort())
    before = BEFORE[name]
    kept = [feature for feature in now["features"] if not added_since(name, f"features.{feature}")]
    assert kept == list(before["features"]), "feature order (the model's input order)"
    assert list(now["tasks"]) == list(before["tasks"]), "task order (the loss weights' order)"
    # Every config holds its family's every option since (configs/base.py, tfrecsys/model_options.py): compare
    # the model blocks the builder gets, each completed with the declared defaults.
    now["model"], before["model"] = (json.loads(model_options.resolve(ml_collections.ConfigDict(block)).to_json())
                                     for block in (now["model"], before["model"]))
    now_fields, before_fields = fields(now), fields(before)
    differing = {key: (before_fields.get(key, "<absent>"), now_fields.get(key, "<absent>"))
                 for key in sorted(set(now_fields) | set(before_fields))
                 if key not in changed and not added_since(name, key)
                 and now_fields.get(key, "<absent>") != before_fields.get(key, "<absent>")}
    assert not differing, f"configs/{path} differs from the former {name}.py: {differing}"


def test_an_unknown_dataset_is_named():
    with pytest.raises(ValueError, match=r"dataset 'criteo' is not one of \['ali_ccp', 'aliexpress', 'census', "
                                         r"'simulator'\]"):
        load_config(os.path.join(CONFIGS, "mmoe.py:criteo"))
