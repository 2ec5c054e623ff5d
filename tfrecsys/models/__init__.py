"""Model families, each registered under its config name (``config.model.name``)."""

from tfrecsys.models import dien  # noqa: F401  (registers "dien")
from tfrecsys.models import din  # noqa: F401  (registers "din")
from tfrecsys.models import dnn  # noqa: F401  (registers "dnn")
from tfrecsys.models import esmm  # noqa: F401  (registers "esmm", "esm2")
from tfrecsys.models import generative  # noqa: F401  (registers "generative")
from tfrecsys.models import hstu_ranking  # noqa: F401  (registers "hstu_ranking")
from tfrecsys.models import logistic_regression  # noqa: F401  (registers "logistic_regression")
from tfrecsys.models import multitask  # noqa: F401  (registers "shared_bottom", "mmoe", "ple")
from tfrecsys.models import sim  # noqa: F401  (registers "sim")
from tfrecsys.models import two_tower  # noqa: F401  (registers "two_tower")
from tfrecsys.models import defuse  # noqa: F401  (registers "defuse" and the delayed-feedback losses)
from tfrecsys.models.base import RecModel  # noqa: F401
from tfrecsys.models.registry import available, build_model, register  # noqa: F401
