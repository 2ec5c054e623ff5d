"""Model registry: config ``model.name`` → builder ``(config, schema, tables) -> RecModel``.

``tables`` is what data/ hands a model besides batches (``tfrecsys.data.model_tables.ModelTables``: candidate
corpora, item frequencies), or None where no files are at hand; a builder that needs a table it was not given
says so.
"""

from typing import Callable

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
    """Builds the model ``config.model.name`` for ``schema``; an unknown name lists the known ones."""
    name = config.model.name
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r} in config.model.name; registered models: {available()}")
    return _BUILDERS[name](config, schema, tables)
