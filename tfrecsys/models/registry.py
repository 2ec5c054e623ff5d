"""Model registry: config ``model.name`` → builder ``(config, schema, tables) -> RecModel``.

``tables`` is what data/ hands a model besides batches (``tfrecsys.data.model_tables.ModelTables``: candidate
corpora, item frequencies), or None where no files are at hand; a builder that needs a table it was not given
says so.

Each family's ``config.model`` options and their defaults are declared once, in ``tfrecsys/model_options.py``
(pure Python, so that config files fill them in without importing a model): ``register`` refuses a family
that declares no options there, and ``build_model`` hands the builder the config with ``config.model`` checked
against that declaration and completed with its defaults, so a builder reads ``config.model.<option>`` with
no default of its own.
"""

from typing import Callable

from tfrecsys import model_options
from tfrecsys.losses.weighting import loss_weighting_from_config

_BUILDERS: dict[str, Callable] = {}


def register(name: str):
    """Class or function decorator that makes a model buildable by ``model.name = name``."""

    if name not in model_options.FAMILIES:
        raise ValueError(f"model {name!r} declares no options: add FAMILIES[{name!r}] to tfrecsys/model_options.py")

    def decorate(builder):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def available() -> list[str]:
    return sorted(_BUILDERS)


def build_model(config, schema, tables=None):
    """Builds the model ``config.model.name`` for ``schema``; an unknown name lists the known ones, an unknown
    ``config.model`` key names the closest option (``tfrecsys.model_options.resolve``).

    Then the options every family takes from the config: ``model.position_tower`` (a shallow position-bias
    tower, ``RecModel.add_position_tower``'s keyword arguments; none when its ``tasks`` are empty),
    ``model.embedding_l2`` (L2 over the whole tables of ``model.embeddings``, ``EmbeddingTables.regularize``;
    0 is none), ``model.fused_embeddings`` (every table of one embedding width in one variable,
    ``EmbeddingTables.pack_by_width``; False: one variable per table), ``model.embedding_init_stddev``
    (the tables' rows start ``N(0, stddev²)``, ``EmbeddingTables.initialize_normal``; 0: truncated
    ``N(0, 0.05²)``) and ``train.loss_weighting`` (``{"kind": ...}``, ``tfrecsys.losses.weighting``).
    """
    name = config.model.get("name")
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r} in config.model.name; registered models: {available()}")
    config = with_resolved_model(config)
    model = _BUILDERS[name](config, schema, tables)
    options = config.model
    if options.fused_embeddings:
        model.embeddings.pack_by_width()
    if options.embedding_l2:
        model.embeddings.regularize(options.embedding_l2)
    if options.embedding_init_stddev:
        model.embeddings.initialize_normal(options.embedding_init_stddev)
    # position_tower.tasks=() turns a config's tower off from the command line.
    if options.position_tower.tasks:
        model.add_position_tower(**options.position_tower.to_dict())
    weighting = _as_dict(config.train.get("loss_weighting")) if "train" in config else {}
    if weighting:
        model.set_loss_weighting(loss_weighting_from_config(weighting, model.loss_weighting.task_weights))
    return model


def with_resolved_model(config):
    """A copy of ``config`` whose ``model`` block is checked and complete (``model_options.resolve``); the
    caller's config is left as it is."""
    resolved = model_options.resolve(config.model)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model = resolved
    return config


def set_options(block) -> dict:
    """The options of a nested block that are set (``config.model.hstu``: an unset one is left to the model)."""
    return {key: value for key, value in _as_dict(block).items() if value is not None}


def _as_dict(block) -> dict:
    return block.to_dict() if hasattr(block, "to_dict") else dict(block or {})
