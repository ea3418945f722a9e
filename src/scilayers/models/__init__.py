"""Scientific models: equations only (right-hand sides, linear/nonlinear splits, residuals)."""

from ._advection_diffusion import LatLonAdvectionDiffusion as LatLonAdvectionDiffusion
from ._arterial import MMHG as MMHG
from ._arterial import ArterialCase as ArterialCase
from ._arterial import ArterialNetwork as ArterialNetwork
from ._arterial import OutletSpec as OutletSpec
from ._arterial import VesselSpec as VesselSpec
from ._arterial import Windkessel as Windkessel
from ._arterial import wall_stiffness as wall_stiffness
from ._base import AbstractForcedModel as AbstractForcedModel
from ._base import AbstractForcedSpectralModel as AbstractForcedSpectralModel
from ._base import AbstractModel as AbstractModel
from ._base import AbstractSpectralModel as AbstractSpectralModel
from ._base import check_state as check_state
from ._ks import Burgers as Burgers
from ._ks import KuramotoSivashinsky as KuramotoSivashinsky
from ._lorenz96 import Lorenz96 as Lorenz96
from ._lorenz96 import Lorenz96TwoScale as Lorenz96TwoScale
from ._pendulum import DrivenPendulum as DrivenPendulum
