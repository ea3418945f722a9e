"""Learnable scientific parameters θ_s and filters that split a model by role."""

from ._constraints import AbstractConstraint as AbstractConstraint
from ._constraints import Bounded as Bounded
from ._constraints import Positive as Positive
from ._constraints import Unconstrained as Unconstrained
from ._param import NETWORK_PACKAGES as NETWORK_PACKAGES
from ._param import Param as Param
from ._param import as_param as as_param
from ._param import combine as combine
from ._param import fix as fix
from ._param import frozen as frozen
from ._param import is_network as is_network
from ._param import is_param as is_param
from ._param import log_prior as log_prior
from ._param import named as named
from ._param import network as network
from ._param import partition as partition
from ._param import resolve as resolve
from ._param import scientific as scientific
from ._param import set_values as set_values
from ._param import unlearned as unlearned
from ._param import values as values
from ._priors import AbstractPrior as AbstractPrior
from ._priors import LogNormal as LogNormal
from ._priors import Normal as Normal
