"""Projections: restrictions of a closure network to a class of operators."""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..models import AbstractModel, AbstractSpectralModel


class AbstractProjection(eqx.Module):
    """A restriction of a closure/residual network ``N`` to a class of operators,
    ``g = P(N)(u)``, supplied by a model or a study to `Hybrid(..., projection=...)`.

    Subclasses implement ``__call__(net, u) -> g(u)`` (same shape as ``u``) and
    ``check(model)``, which raises a `ValueError` saying what to do when the projection is
    not defined for the model's states (called once, when the `Hybrid` is built).
    """

    @abc.abstractmethod
    def __call__(self, net: Callable[[Array], Array], u: Array) -> Array:
        """The projected network output at the state ``u``."""

    @abc.abstractmethod
    def check(self, model: AbstractModel) -> None:
        """Raise a `ValueError` if the projection is not defined for ``model``'s states."""


class OddSignReflection(AbstractProjection):
    r"""Project a network onto operators odd under sign flip and under reflection.

    For a 1-D periodic field on a uniform grid, with the sign flip ``σ u = -u`` and the
    reflection ``R u(x) = u(-x)``, the projection

    $$g(u) = \tfrac14\big[N(u) - N(-u) - R\,N(R u) + R\,N(-R u)\big]$$

    satisfies ``g(-u) = -g(u)`` and ``g(Ru) = -R g(u)``, and is the identity on operators
    that already do. Every term even under either symmetry is removed: linear even-order
    derivatives (``u_xx``, ``u_xxxx``: diffusion-like coefficients) and the conservative
    quadratic ``u u_x`` (a convection coefficient), so a closure cannot absorb a change of
    such θ_s. Odd-order dispersive terms (``u_xxx``, ``u² u_x``, …) stay expressible. For
    Kuramoto–Sivashinsky and Burgers this keeps every coefficient identifiable; for another
    model, check that each θ_s multiplies a term of the removed class (or use
    ``identifiable="orthogonal"``, which needs no such knowledge).

    A network with ``is_odd`` true (``N(-u) = -N(u)`` by construction, e.g. a bias-free
    ``tanh`` `PeriodicCNN1d`) takes two calls instead of four, with the same result.
    Leading batch axes are allowed; the grid is the last axis.
    """

    def __call__(self, net, u):
        n = u.shape[-1]
        idx = (-jnp.arange(n)) % n  # R: x_j -> x_{-j} on the periodic grid
        ru = u[..., idx]
        if getattr(net, "is_odd", False):  # N(-u) = -N(u): two of the four terms suffice
            return 0.5 * (net(u) - net(ru)[..., idx])
        # four separate calls: measured 2x faster on CPU than one call on a stacked batch
        return 0.25 * (net(u) - net(-u) - net(ru)[..., idx] + net(-ru)[..., idx])

    def check(self, model):
        if not isinstance(model, AbstractSpectralModel):
            shape = getattr(model, "state_shape", None)
            raise ValueError(
                f"OddSignReflection acts on a 1-D periodic field on a uniform grid (an "
                f"AbstractSpectralModel such as KuramotoSivashinsky or Burgers); "
                f"{type(model).__name__} has states of shape {shape}, where the reflection "
                f"x -> -x is not defined. Use identifiable='orthogonal' instead, or write an "
                f"AbstractProjection for these states."
            )
