"""Composition of scientific steppers and networks, and the identifiability of θ_s."""

from ._hybrid import COUPLINGS as COUPLINGS
from ._hybrid import IDENTIFIABLE as IDENTIFIABLE
from ._hybrid import Hybrid as Hybrid
from ._hybrid import Inputs as Inputs
from ._hybrid import NeuralStepper as NeuralStepper
from ._identifiability import Identifiability as Identifiability
from ._identifiability import identifiability as identifiability
from ._projections import AbstractProjection as AbstractProjection
from ._projections import DataOrthogonal as DataOrthogonal
from ._projections import OddSignReflection as OddSignReflection
from ._sensitivity import orthogonalize as orthogonalize
