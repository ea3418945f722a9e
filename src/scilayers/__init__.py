"""scilayers: scientific solvers as differentiable layers with learnable physical parameters."""

from importlib.metadata import PackageNotFoundError, version

from . import models as models
from . import nn as nn
from . import params as params
from . import solvers as solvers
from .params import Bounded as Bounded
from .params import Param as Param
from .params import Positive as Positive
from .solvers import rollout as rollout

try:
    __version__ = version("scilayers")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

from . import baselines as baselines  # noqa: E402
from . import data as data  # noqa: E402
from . import distributed as distributed  # noqa: E402
from . import hybrid as hybrid  # noqa: E402
from . import losses as losses  # noqa: E402
from . import metrics as metrics  # noqa: E402
from . import training as training  # noqa: E402
from . import uq as uq  # noqa: E402
from .hybrid import Hybrid as Hybrid  # noqa: E402
from .hybrid import identifiability as identifiability  # noqa: E402
from .training import OnlineConfig as OnlineConfig  # noqa: E402
from .training import TrainConfig as TrainConfig  # noqa: E402
from .training import fit as fit  # noqa: E402
from .training import online_fit as online_fit  # noqa: E402
