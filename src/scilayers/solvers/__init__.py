"""Differentiable time steppers and `rollout`."""

from ._arterial import ArterialMUSCL as ArterialMUSCL
from ._arterial import arterial_stable_dt as arterial_stable_dt
from ._base import AbstractStepper as AbstractStepper
from ._diffrax import Diffrax as Diffrax
from ._diffrax import direct_adjoint as direct_adjoint
from ._etdrk import ETDRK4 as ETDRK4
from ._etdrk import etdrk4_coefficients as etdrk4_coefficients
from ._etdrk import phi1 as phi1
from ._lbm import LatticeBoltzmann as LatticeBoltzmann
from ._lbm import LatticeScaling as LatticeScaling
from ._lbm import lattice_dt as lattice_dt
from ._lbm import tawss_osi as tawss_osi
from ._rollout import MEMORY_POLICIES as MEMORY_POLICIES
from ._rollout import Repeated as Repeated
from ._rollout import rollout as rollout
from ._rollout import takes_time as takes_time
from ._splitting import StrangSplitting as StrangSplitting
from ._stability import check_explicit_stability as check_explicit_stability
from ._stability import stability_polynomial as stability_polynomial
