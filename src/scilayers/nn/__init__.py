"""Small Equinox networks for closures in hybrid physics–ML models.

Every network acts on a single sample (batch with `jax.vmap`, as Equinox layers do),
stores no grid size, and holds only floating-point arrays as parameters, so
`scilayers.params.network` selects all of them as θ_ml.
"""

from ._conv import PeriodicCNN1d as PeriodicCNN1d
from ._conv import PeriodicCNN2d as PeriodicCNN2d
from ._conv import PeriodicConv1d as PeriodicConv1d
from ._conv import PeriodicConv2d as PeriodicConv2d
from ._local import LocalNonlocal1d as LocalNonlocal1d
from ._mlp import MLP as MLP
from ._polynomial import Polynomial as Polynomial
from ._spectral import FNO1d as FNO1d
from ._spectral import SpectralConv1d as SpectralConv1d
