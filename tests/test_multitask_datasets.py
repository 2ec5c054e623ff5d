"""The multi-task configs on the real datasets go the user's path: ``tfrecsys-preprocess``'s pipeline on the
shared samples, then a few training steps of each family's config, with per-task eval metrics.

Slow (a model build per config, one Beam pipeline per dataset and a training run per config); the sample runs
skip where ../shared/datasets is absent.
"""

import os

import numpy as np
import pytest

from tests.serving_dnn import REPO
from tests.test_data_readers import dataset
from tfrecsys.config import load_config
from tfrecsys.data.preprocess import PreprocessConfig, preprocess
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.train.loop import train_and_evaluate

CONFIGS = os.path.join(REPO, "configs")
FAMILIES = ("shared_bottom", "mmoe", "ple", "esmm")
DATASETS = {"census": "census-income-kdd", "ali_ccp": "ali-ccp-sample", "aliexpress": "aliexpress-sample"}
QUICK = {"train.steps": 4, "train.steps_per_loop": 4, "train.steps_per_execution": 2, "train.batch_size": 32,
         "train.eval_batch_size": 64, "train.shuffle_buffer": 100, "train.best_metric": ""}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_family_has_a_config_on_every_dataset_whose_tasks_are_its_outputs(name, family, tmp_path):
    config = load_config(os.path.join(CONFIGS, f"{family}.py:{name}"), {"data.dir": str(tmp_path)})
    assert config.model.name == family and "preprocess" in config
    features = {key: dict(value) for key, value in config.features.items()}
    for value in features.values():  # the vocabularies and boundaries preprocessing would write, one entry each
        for kind in ("vocabulary", "boundaries"):
            if isinstance(value.get(kind), str):
                os.makedirs(os.path.dirname(value[kind]), exist_ok=True)
                with open(value[kind], "w") as f:
                    f.write("1\n")
    model = build_model(config, FeatureSchema.from_config(features))
    assert set(config.tasks) <= set(model.output_names_served)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """dataset name → its sample preprocessed by the mmoe config's block (once per module)."""
    done = {}

    def get(name: str) -> str:
        if name not in done:
            data_dir = str(tmp_path_factory.mktemp(name))
            config = load_config(os.path.join(CONFIGS, f"mmoe.py:{name}"), {"data.dir": data_dir})
            block = {**dict(config.preprocess), "input": dataset(DATASETS[name])}
            metadata = preprocess(PreprocessConfig.from_config(block), config.features, data_dir)
            assert metadata["dead_letter_rows"] == 0 and metadata["splits"]["train"]["rows"] == 100
            done[name] = data_dir
        return done[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["ali_ccp", "aliexpress"])
def test_samples_preprocess_and_train_every_family(name, family, preprocessed, tmp_path):
    data_dir = preprocessed(name)
    config = load_config(os.path.join(CONFIGS, f"{family}.py:{name}"), {"data.dir": data_dir, **QUICK})
    metrics = train_and_evaluate(config, str(tmp_path / family), verbose=0)
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["ctr"]["auc"] <= 1.0, metrics
    assert set(metrics) >= set(config.tasks), metrics
