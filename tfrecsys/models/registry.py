"""Model registry: config ``model.name`` → builder ``(config, schema, tables) -> RecModel``.

``tables`` is what data/ hands a model besides batches (``tfrecsys.data.model_tables.ModelTables``: candidate
corpora, item frequencies), or None where no files are at hand; a builder that needs a table it was not given
says so.
"""

import inspect
from typing import Callable

from tfrecsys.losses.weighting import loss_weighting_from_config

_BUILDERS: dict[str, Callable] = {}


def register(name: str):
    """Class or function decorator that makes a model buildable by ``model.name = name``."""

    def decorate(builder):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def available() -> list[str]:
    return sorted(_BUILDERS)


def build_model(config, schema, tables=None):
    """Builds the model ``config.model.name`` for ``schema``; an unknown name lists the known ones.

    Then the options every family takes from the config: ``model.position_tower`` (a shallow position-bias
    tower, ``RecModel.add_position_tower``'s keyword arguments; none when its ``tasks`` are empty),
    ``model.embedding_l2`` (L2 over the whole tables of ``model.embeddings``, ``EmbeddingTables.regularize``;
    0, the default, is none), ``model.fused_embeddings`` (every table of one embedding width in one variable,
    ``EmbeddingTables.pack_by_width``; False, the default: one variable per table), ``model.embedding_init_stddev``
    (the tables' rows start ``N(0, stddev²)``, ``EmbeddingTables.initialize_normal``; unset or 0, the default:
    truncated ``N(0, 0.05²)``) and
    ``train.loss_weighting`` (``{"kind": ...}``, ``tfrecsys.losses.weighting``).
    """
    name = config.model.name
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r} in config.model.name; registered models: {available()}")
    model = _BUILDERS[name](config, schema, tables)
    if config.model.get("fused_embeddings"):
        model.embeddings.pack_by_width()
    if config.model.get("embedding_l2"):
        model.embeddings.regularize(config.model.embedding_l2)
    if config.model.get("embedding_init_stddev"):
        model.embeddings.initialize_normal(config.model.embedding_init_stddev)
    position_tower = _as_dict(config.model.get("position_tower"))
    # position_tower.tasks=() turns a config's tower off from the command line.
    if position_tower and position_tower.get("tasks"):
        known = set(inspect.signature(model.add_position_tower).parameters)
        if set(position_tower) - known:
            raise ValueError(f"config.model.position_tower: unknown keys {sorted(set(position_tower) - known)}; "
                             f"it takes {sorted(known)}")
        model.add_position_tower(**position_tower)
    weighting = _as_dict(config.train.get("loss_weighting")) if "train" in config else {}
    if weighting:
        model.set_loss_weighting(loss_weighting_from_config(weighting, model.loss_weighting.task_weights))
    return model


def _as_dict(block) -> dict:
    return block.to_dict() if hasattr(block, "to_dict") else dict(block or {})
