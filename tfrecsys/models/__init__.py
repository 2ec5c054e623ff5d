"""Model families, each registered under its config name (``config.model.name``)."""

from tfrecsys.models import dnn  # noqa: F401  (registers "dnn")
from tfrecsys.models import esmm  # noqa: F401  (registers "esmm", "esm2")
from tfrecsys.models import logistic_regression  # noqa: F401  (registers "logistic_regression")
from tfrecsys.models import multitask  # noqa: F401  (registers "shared_bottom", "mmoe", "ple")
from tfrecsys.models import two_tower  # noqa: F401  (registers "two_tower")
from tfrecsys.models.base import RecModel  # noqa: F401
from tfrecsys.models.registry import available, build_model, register  # noqa: F401
