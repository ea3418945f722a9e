"""Composition of scientific steppers and networks."""

from ._hybrid import COUPLINGS as COUPLINGS
from ._hybrid import Hybrid as Hybrid
from ._hybrid import NeuralStepper as NeuralStepper
from ._hybrid import physics_of as physics_of
