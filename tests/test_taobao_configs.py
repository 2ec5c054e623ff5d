"""The Taobao behaviour-sequence configs train the epochs chosen for each on validation (bench/RESULTS.md,
issue 12, "Taobao epochs chosen on validation"), one evaluation per epoch; ``dien_taobao.py:no_aux`` is DIEN
without the auxiliary loss and otherwise the same model."""

import os

import pytest

from tfrecsys.config import load_config

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
STEPS_PER_EPOCH = 150_116 // 256  # training rows preprocessing writes from the shared head file, batch 256


@pytest.mark.parametrize("name, epochs", [("mean_pooling_taobao.py", 1), ("din_taobao.py", 1),
                                          ("dien_taobao.py", 1), ("dien_taobao.py:no_aux", 2),
                                          ("sim_taobao.py", 1)])
def test_each_taobao_config_trains_its_validated_epochs_with_an_evaluation_after_each(name, epochs):
    config = load_config(os.path.join(CONFIGS, name))
    assert config.train.batch_size == 256
    assert config.train.steps == epochs * STEPS_PER_EPOCH
    assert config.train.steps_per_loop == STEPS_PER_EPOCH


def test_dien_no_aux_differs_from_dien_only_in_the_auxiliary_loss_and_the_epochs():
    with_aux = load_config(os.path.join(CONFIGS, "dien_taobao.py")).to_dict()
    without = load_config(os.path.join(CONFIGS, "dien_taobao.py:no_aux")).to_dict()
    assert (with_aux["model"]["aux_weight"], without["model"]["aux_weight"]) == (1.0, 0.0)
    for config in (with_aux, without):
        del config["model"]["aux_weight"], config["train"]["steps"]
    assert with_aux == without


def test_an_unknown_dien_taobao_variant_is_an_error_naming_the_file_and_the_choices():
    with pytest.raises(ValueError, match=r"configs/dien_taobao\.py: unknown variant 'noaux'.*dien_taobao\.py:no_aux"):
        load_config(os.path.join(CONFIGS, "dien_taobao.py:noaux"))
