"""Experiment configs: ml_collections files under configs/ with a ``get_config()`` function.

Binaries take them with ``--config=configs/<name>.py`` and per-field overrides
(``--config.train.batch_size=256``) through ``ml_collections.config_flags``; ``load_config`` does the same
for tests and scripts.
"""

import importlib.util
import os

import ml_collections


def load_config(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """Loads ``get_config()`` from the file ``path`` and applies dotted overrides
    (``{"train.steps": 100}``); an unknown override key is an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"tfrecsys_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    config = module.get_config()
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
    return config
