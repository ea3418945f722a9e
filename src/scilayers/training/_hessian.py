"""Second derivatives of a loss with respect to θ_s (for Laplace approximations)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from ..params import combine, named, partition
from ..solvers import direct_adjoint


class ThetaHessian(NamedTuple):
    """What `theta_hessian` returns: the Hessian ``matrix`` (p, p) over the raw θ_s at
    ``raw`` (p,), and one ``label`` per entry (``"a"``, or ``"w[3]"`` for an array Param)."""

    matrix: Float[Array, "p p"]
    labels: tuple[str, ...]
    raw: Float[Array, " p"]


def theta_hessian(loss: Callable[[Any], Array], model) -> ThetaHessian:
    r"""``∂² loss(model) / ∂θ∂θᵀ`` over the raw (unconstrained) values θ of the free `Param`s
    of ``model``, networks and fixed Params held fixed.

    Every Diffrax adjoint in ``model`` is first replaced by ``diffrax.DirectAdjoint()``
    (`scilayers.solvers.direct_adjoint`): the default ``RecursiveCheckpointAdjoint`` is
    reverse-mode only, and ``jax.hessian`` is forward over reverse. Entries are in the order
    of ``sl.params.named(model)`` (free Params only), each Param flattened. For a Laplace
    approximation in the unconstrained coordinates the covariance is ``inv(matrix)`` of the
    negative log posterior. DirectAdjoint's compile time grows with the stepper's
    `max_steps`; with a constant step size, ``max_steps=substeps`` is enough and compiles
    several times faster.

    **Arguments:** `loss`: a function of the model returning a scalar; `model`: any
    pytree holding `Param`s (a stepper, a `Hybrid`).
    """
    model = direct_adjoint(model)
    theta_s, theta_ml, frozen = partition(model)
    raw, unravel = ravel_pytree(theta_s)
    if raw.size == 0:
        raise ValueError("theta_hessian: the model has no free Param (θ_s is empty).")

    def f(x):
        return loss(combine(unravel(x), theta_ml, frozen))

    labels = []
    for name, p in named(model).items():
        if not p.fixed:
            size = int(np.size(p.raw))
            labels += [name] if np.ndim(p.raw) == 0 else [f"{name}[{i}]" for i in range(size)]
    return ThetaHessian(jax.hessian(f)(raw), tuple(labels), raw)
