"""Baselines: pure physics (prior or calibrated θ_s), PINN without parameter adaptation,
sequential (post-hoc) hybrid, and a pure neural emulator."""

from ._closure import a_priori_closure as a_priori_closure
from ._methods import calibrate as calibrate
from ._methods import neural_emulator as neural_emulator
from ._methods import pure_physics as pure_physics
from ._methods import sequential_hybrid as sequential_hybrid
from ._pinn import PINN as PINN
from ._pinn import PINNConfig as PINNConfig
from ._pinn import fit_pinn as fit_pinn
from ._pinn import pinn_applicable as pinn_applicable
from ._pinn import pointwise_residual as pointwise_residual
