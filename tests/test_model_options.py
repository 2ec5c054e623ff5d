"""Model options declared once (tfrecsys/model_options.py): every shipped config validates against its family's
declaration without data, a misspelt config.model key is an error naming the closest option (in a config
file, through the real command line, and in a config built in code), an option a config file leaves out is
settable from the command line, and the builders use the declared defaults."""

import glob
import inspect
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from tfrecsys import model_options
from tfrecsys.config import config_beside, load_config
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import available, build_model

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
BIN = os.path.dirname(sys.executable)
# The shipped configs and the arguments (datasets) each takes; the helpers shared by several files are no
# experiments of their own.
HELPERS = {"base", "multitask_datasets", "generative_common"}
BASE = os.path.join(REPO, "configs", "base.py")
MULTITASK_DATASETS = tuple(config_beside(BASE, "multitask_datasets.py").WORLDS)
DEFUSE_METHODS = tuple(config_beside(BASE, "defuse_simulator.py").METHOD_LOSS)
ARGUMENTS = {"mmoe": MULTITASK_DATASETS, "ple": MULTITASK_DATASETS, "shared_bottom": MULTITASK_DATASETS,
             "esmm": MULTITASK_DATASETS, "defuse_simulator": DEFUSE_METHODS, "defuse_criteo": DEFUSE_METHODS}


def shipped_configs() -> list[str]:
    paths = []
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name not in HELPERS:
            paths += [f"{path}:{argument}" for argument in ARGUMENTS[name]] if name in ARGUMENTS else [path]
    return paths


def test_every_registered_family_declares_its_options_and_nothing_else_is_declared():
    assert available() == sorted(model_options.FAMILIES)


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_holds_every_declared_option_of_its_family_and_nothing_else(path):
    """Validation needs no data: the configs of absent datasets validate too."""
    config = load_config(path)
    declared = model_options.options(config.model.name)
    assert set(config.model) == set(declared)
    resolved = model_options.resolve(config.model)
    for key, default in declared.items():
        if isinstance(default, model_options.NoDefault) and default.required:
            assert resolved[key] is not None, key


@pytest.mark.parametrize("path", ["configs/din_simulator.py", "configs/dien_simulator.py", "configs/sim_simulator.py",
                                  "configs/dnn_simulator.py", "configs/mmoe.py:simulator", "configs/ple.py:simulator",
                                  "configs/shared_bottom.py:simulator", "configs/esmm.py:simulator",
                                  "configs/esm2_simulator.py", "configs/hstu_ranking_simulator.py",
                                  "configs/logistic_regression_simulator.py", "configs/defuse_simulator.py"])
def test_the_simulator_configs_build_their_model(path):
    config = load_config(os.path.join(REPO, path))
    model = build_model(config, FeatureSchema.from_config(config.features))
    assert model.name.startswith(config.model.name)


def _din_config(**model):
    return ml_collections.ConfigDict(dict(
        model=dict(name="din", history=("hist_item_id",), **model),
        tasks=dict(score=dict(label="click"))))


DIN_FEATURES = {"item_id": dict(kind="id", num_buckets=20, embedding_dim=4),
                "hist_item_id": dict(kind="sequence", shares="item_id", max_len=4),
                "click": dict(kind="label")}


def test_a_din_built_without_the_options_uses_the_declared_defaults():
    model = build_model(_din_config(), FeatureSchema.from_config(DIN_FEATURES))
    din = model_options.FAMILIES["din"]
    assert model.attention.hidden_units == din["attention_units"] == (80, 40)
    assert model.mba_l2 == din["mba_l2"]
    assert model.tower.hidden_units == list(din["hidden_units"]) == [200, 80]


def test_a_misspelt_key_in_a_config_built_in_code_names_the_closest_option():
    with pytest.raises(ValueError) as error:
        build_model(_din_config(atention_units=(8, 4)), FeatureSchema.from_config(DIN_FEATURES))
    message = str(error.value)
    assert "config.model.atention_units" in message and "din" in message
    assert "did you mean 'attention_units'?" in message and model_options.OPTIONS_DOC in message
    assert "\n" not in message


def test_a_misspelt_key_in_a_nested_block_names_the_closest_option():
    with pytest.raises(ValueError, match=r"config.model.position_tower.hiden_units: .*did you mean 'hidden_units'"):
        build_model(_din_config(position_tower=dict(tasks=("score",), hiden_units=(4,))),
                    FeatureSchema.from_config(DIN_FEATURES))


def test_a_required_option_left_unset_is_named():
    config = _din_config()
    del config.model["history"]
    with pytest.raises(ValueError, match=r"config.model.history: din needs this option"):
        build_model(config, FeatureSchema.from_config(DIN_FEATURES))


def test_an_hstu_setting_that_is_no_layer_argument_names_the_closest_one():
    config = load_config(os.path.join(REPO, "configs", "hstu_ranking_simulator.py"))
    config.model.hstu = ml_collections.ConfigDict(dict(atention_path="padded"))
    with pytest.raises(ValueError, match=r"config.model.hstu.atention_path: .*did you mean 'attention_path'"):
        build_model(config, FeatureSchema.from_config(config.features))


def test_hstu_settings_the_config_leaves_unset_are_derived_by_the_model_and_set_ones_reach_the_layers():
    config = load_config(os.path.join(REPO, "configs", "hstu_ranking_simulator.py"),
                         {"model.hstu.jagged_groups": 3, "model.hstu.value_dim": 4})
    model = build_model(config, FeatureSchema.from_config(config.features))
    layer = model.encoder.hstu_layers[0]
    assert layer.jagged_groups == 3 and layer.value_dim == 4
    assert layer.num_heads == config.model.num_heads
    assert layer.max_seq_len == 2 * config.features.hist_item_id.max_len + 1


def _misspelt_config_file(tmp_path) -> str:
    path = tmp_path / "din_misspelt.py"
    path.write_text(textwrap.dedent(f"""
        from tfrecsys.config import config_beside
        din = config_beside({BASE!r}, "din_simulator.py")

        def get_config():
            config = din.get_config()
            config.model.atention_units = (32, 16)
            return config
        """))
    return str(path)


def test_a_misspelt_key_in_a_config_file_fails_to_load_naming_the_closest_option(tmp_path):
    with pytest.raises(ValueError, match=r"config.model.atention_units: din has no option 'atention_units'; "
                                         r"did you mean 'attention_units'\?"):
        load_config(_misspelt_config_file(tmp_path))


def test_a_misspelt_key_in_a_config_file_is_one_usage_error_line_at_the_command_line(tmp_path):
    result = subprocess.run([os.path.join(BIN, "tfrecsys-train"), f"--config={_misspelt_config_file(tmp_path)}",
                             f"--model_dir={tmp_path / 'model'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfrecsys-train: error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "config.model.atention_units" in errors[0] and "did you mean 'attention_units'?" in errors[0]
    assert not (tmp_path / "model").exists()


# Parses tfrecsys-train's own flags (config_flags' --config and its overrides) and prints the model block.
PARSE_TRAIN_FLAGS = """
import sys
from absl import flags
from tfrecsys.cli import train
from tfrecsys.cli.common import parse_flags
parse_flags("tfrecsys-train", ["tfrecsys-train", "--model_dir=unused", *sys.argv[1:]])
print(repr(flags.FLAGS.config.model.to_dict()))
"""


def parsed_model_block(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PARSE_TRAIN_FLAGS, *args], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return eval(result.stdout.strip().splitlines()[-1])


def test_options_a_config_file_leaves_out_are_set_from_the_command_line_with_their_types():
    """dnn_simulator.py sets none of these: a float as 1e-6, a bool, a tuple, a nested block's key; and a
    required two_tower option (no default, an unset field of its type) on a file that sets it."""
    block = parsed_model_block("--config=configs/dnn_simulator.py", "--config.model.embedding_l2=1e-6",
                               "--config.model.fused_embeddings=true", "--config.model.embedding_init_stddev=0.01",
                               "--config.model.position_tower.hidden_units=(8,4)",
                               "--config.model.position_tower.position_dropout=0.3")
    assert block["embedding_l2"] == 1e-6 and block["fused_embeddings"] is True
    assert block["embedding_init_stddev"] == 0.01
    assert block["position_tower"]["hidden_units"] == (8, 4) and block["position_tower"]["position_dropout"] == 0.3
    block = parsed_model_block("--config=configs/din_simulator.py", "--config.model.attention_units=(16,8)",
                               "--config.model.attention_normalization=softmax")
    assert block["attention_units"] == (16, 8) and block["attention_normalization"] == "softmax"
    block = parsed_model_block("--config=configs/two_tower_simulator.py", "--config.model.temperature=0.1",
                               "--config.model.estimator.num_buckets=1024", "--config.model.export_k=20")
    assert block["temperature"] == 0.1 and block["estimator"]["num_buckets"] == 1024 and block["export_k"] == 20


def test_an_unknown_override_is_one_error_line_with_a_suggestion(tmp_path):
    result = subprocess.run([os.path.join(BIN, "tfrecsys-train"), "--config=configs/din_simulator.py",
                             f"--model_dir={tmp_path / 'model'}", "--config.model.atention_units=(8,4)"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfrecsys-train: error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "--config.model.atention_units=(8,4): the config has no field 'atention_units'" in errors[0]
    assert "attention_units" in errors[0].split("no field", 1)[1] and model_options.OPTIONS_DOC in errors[0]
    assert "copy" not in errors[0]


def _defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_nested_blocks_and_shared_constants_match_the_code_they_configure():
    from tfrecsys.layers.hstu import HSTULayer
    from tfrecsys.layers.retrieval import StreamingFrequencyEstimator
    from tfrecsys.metrics.retrieval import DEFAULT_KS
    from tfrecsys.models.base import RecModel

    tower = _defaults(RecModel.add_position_tower)
    assert set(model_options.POSITION_TOWER) == set(inspect.signature(RecModel.add_position_tower).parameters) - {
        "self"}
    assert {k: v for k, v in model_options.POSITION_TOWER.items() if k != "tasks"} == tower
    estimator = _defaults(StreamingFrequencyEstimator.__init__)
    assert model_options.FAMILIES["two_tower"]["estimator"] == {k: estimator[k] for k in
                                                                ("num_buckets", "num_hashes", "alpha")}
    assert model_options.RETRIEVAL_KS == DEFAULT_KS
    hstu = inspect.signature(HSTULayer.__init__).parameters
    assert set(model_options.HSTU_LAYER) == {name for name, p in hstu.items()
                                             if name != "self" and p.kind is not p.VAR_KEYWORD}
    assert {k: v for k, v in model_options.HSTU_LAYER.items() if not isinstance(v, model_options.NoDefault)} == {
        k: hstu[k].default for k, v in model_options.HSTU_LAYER.items() if not isinstance(v, model_options.NoDefault)}


# A builder default that differs from its model class's keyword default; the builder's (declared) value is
# the one a config gets, kept as the code had it.
CLASS_DEFAULT_DIFFERS = {("generative", "num_sampled")}


def test_the_declared_defaults_agree_with_the_model_classes_keyword_defaults():
    from tfrecsys.models.defuse import DelayedFeedbackRanker
    from tfrecsys.models.dien import DIEN
    from tfrecsys.models.din import DIN
    from tfrecsys.models.generative import GenerativeRetrieval
    from tfrecsys.models.hstu_ranking import HSTURanking
    from tfrecsys.models.sim import SIMRanker
    from tfrecsys.models.two_tower import TwoTowerRetrieval

    compared = 0
    for family, cls in [("din", DIN), ("dien", DIEN), ("sim", SIMRanker), ("two_tower", TwoTowerRetrieval),
                        ("generative", GenerativeRetrieval), ("hstu_ranking", HSTURanking),
                        ("defuse", DelayedFeedbackRanker)]:
        keyword_defaults = _defaults(cls.__init__)
        for key, default in model_options.FAMILIES[family].items():
            if key in keyword_defaults and not isinstance(default, (model_options.NoDefault, dict)):
                same = tuple(keyword_defaults[key] or ()) == tuple(default) if isinstance(default, tuple) \
                    else keyword_defaults[key] == default
                assert same != ((family, key) in CLASS_DEFAULT_DIFFERS), (family, key, keyword_defaults[key])
                compared += 1
    assert compared > 40


def test_the_options_page_holds_the_current_table():
    page = open(os.path.join(REPO, model_options.OPTIONS_DOC)).read()
    assert model_options.markdown_table() in page, "regenerate the table: python -m tfrecsys.model_options"
