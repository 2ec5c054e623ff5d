"""Experiment configs: ml_collections files under configs/ with a ``get_config()`` function.

Binaries take them with ``--config=configs/<name>.py`` and per-field overrides
(``--config.train.batch_size=256``) through ``ml_collections.config_flags``; ``load_config`` does the same
for tests and scripts. A file whose ``get_config`` takes an argument (the dataset of a multi-task family)
gets it after a colon, as config_flags passes it: ``configs/mmoe.py:ali_ccp`` calls ``get_config("ali_ccp")``.
"""

import importlib.util
import os

import ml_collections

from tfrecsys import model_options


def config_beside(config_file: str, name: str):
    """The module ``name`` in the directory of ``config_file`` (an experiment's ``configs/base.py``), loaded by
    path: configs/ is no package, and absl's ``--config`` loader puts nothing on ``sys.path``."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    spec = importlib.util.spec_from_file_location(f"tfrecsys_config_{os.path.splitext(name)[0]}_{abs(hash(path))}",
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """Loads ``get_config()`` from the file ``path`` (``get_config(argument)`` for ``path:argument``) and
    applies dotted overrides (``{"train.steps": 100}``); an unknown override key is an error naming it, and so
    is a ``config.model`` key its family does not declare (``tfrecsys.model_options.resolve``)."""
    arguments = ()
    if not os.path.isfile(path) and ":" in os.path.basename(path):
        path, argument = path.rsplit(":", 1)
        arguments = (argument,)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"tfrecsys_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    config = module.get_config(*arguments)
    for key, value in (overrides or {}).items():
        parent = config
        *path_parts, leaf = key.split(".")
        for part in path_parts:
            if part not in parent:
                raise KeyError(f"config has no field {key!r}")
            parent = parent[part]
        if leaf not in parent:
            raise KeyError(f"config has no field {key!r}")
        parent[leaf] = value
    if "name" in config.get("model", {}):
        model_options.resolve(config.model)
    return config
