"""The shipped configs' export names: an experiment exports to ``<export_base>/<export.model_name>/<version>``,
and a server polling that base path serves each new version at once, in place of the one before. Two
experiments that export under one name must therefore serve the same inputs, or the second one's export
fails every request the first one's clients send."""

import glob
import os

from tfrecsys.config import load_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# Files that are no experiment, and the arguments of those that take one after a colon.
NOT_EXPERIMENTS = {"base.py", "generative_common.py", "multitask_datasets.py"}
MULTITASK_DATASETS = ("census", "ali_ccp", "aliexpress", "simulator")
DELAYED_FEEDBACK_METHODS = ("vanilla", "oracle", "fnw", "fnc", "es_dfm", "defer", "defuse", "bi_defuse", "defuse_z2")
ARGUMENTS = {"esmm.py": MULTITASK_DATASETS, "mmoe.py": MULTITASK_DATASETS, "ple.py": MULTITASK_DATASETS,
             "shared_bottom.py": MULTITASK_DATASETS, "defuse_simulator.py": DELAYED_FEEDBACK_METHODS,
             "defuse_criteo.py": DELAYED_FEEDBACK_METHODS, "dien_taobao.py": ("", "no_aux")}


def experiments() -> list[str]:
    names = sorted(os.path.basename(path) for path in glob.glob(os.path.join(CONFIGS, "*.py")))
    specs = []
    for name in names:
        if name in NOT_EXPERIMENTS:
            continue
        arguments = ARGUMENTS.get(name)
        specs += [f"{name}:{argument}" if argument else name for argument in arguments] if arguments else [name]
    return specs


def serving_inputs(config) -> tuple:
    """What a client sends: every feature that is neither a label nor training-only, with its kind and shape."""
    inputs = []
    for name, spec in sorted(config.features.items()):
        spec = dict(spec)
        if spec.get("kind") == "label" or spec.get("training_only"):
            continue
        inputs.append((name, spec.get("kind"), spec.get("dtype"), spec.get("dim"), spec.get("max_len"),
                       spec.get("aligned_with"), spec.get("source")))
    return tuple(inputs)


def test_experiments_that_export_under_one_name_serve_the_same_inputs():
    by_name = {}
    for spec in experiments():
        config = load_config(os.path.join(CONFIGS, spec))
        by_name.setdefault(config.export.model_name, {})[spec] = serving_inputs(config)
    assert len(by_name) > 20
    clashes = {name: sorted(specs) for name, specs in by_name.items() if len(set(specs.values())) > 1}
    assert not clashes, f"configs export differently-served models under one name: {clashes}"
