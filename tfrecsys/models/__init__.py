"""Model families, each registered under its config name (``config.model.name``)."""

from tfrecsys.models import dnn  # noqa: F401  (registers "dnn")
from tfrecsys.models import logistic_regression  # noqa: F401  (registers "logistic_regression")
from tfrecsys.models import two_tower  # noqa: F401  (registers "two_tower")
from tfrecsys.models import defuse  # noqa: F401  (registers "defuse" and the delayed-feedback losses)
from tfrecsys.models.base import RecModel  # noqa: F401
from tfrecsys.models.registry import available, build_model, register  # noqa: F401
