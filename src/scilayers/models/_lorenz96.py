"""Lorenz-96 with one and two scales."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..params import Param, Positive
from ._base import AbstractModel, _param


def _advection(x: Array) -> Array:
    """``(x_{k+1} - x_{k-2}) x_{k-1}`` with periodic indices."""
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1)


class Lorenz96(AbstractModel):
    r"""One-scale Lorenz-96,

    $$\dot x_k = α\,(x_{k+1} - x_{k-2})\,x_{k-1} - γ\,x_k + F,$$

    with periodic indices. ``α = γ = 1`` is Lorenz (1996)'s model, and ``x_k = F`` is then a
    fixed point. As the slow equations of a coarse climate model, ``α`` (advection
    strength) and ``γ`` (linear damping) are effective coefficients that a closure study
    learns, while ``F`` is the known external forcing (pass ``Param(F, fixed=True)``).

    **Arguments:** `k` variables (>= 4); forcing `forcing` (``F``, default 8; `Param` name
    ``"F"``); `advection` (``α``, name ``"advection"``) and `damping` (``γ``, positive,
    name ``"damping"``): a number or a `Param` is learned as θ_s like `forcing`; the default
    ``None`` is ``1`` held fixed (Lorenz's model, unchanged by training).
    """

    k: int = eqx.field(static=True)
    forcing: Param
    advection: Param
    damping: Param

    def __init__(self, k: int = 40, forcing=8.0, advection=None, damping=None):
        if k < 4:
            raise ValueError(f"Lorenz96 needs k >= 4 variables, got {k}.")
        self.k = int(k)
        self.forcing = _param(forcing, name="F")
        fixed = {"fixed": True}
        self.advection = _param(1.0 if advection is None else advection, name="advection",
                                **(fixed if advection is None else {}))  # fmt: skip
        self.damping = _param(1.0 if damping is None else damping, Positive(), name="damping",
                              **(fixed if damping is None else {}))  # fmt: skip

    @property
    def state_shape(self):
        return (self.k,)

    def rhs(self, u: Float[Array, " k"]) -> Float[Array, " k"]:
        return self.advection.value * _advection(u) - self.damping.value * u + self.forcing.value

    def initial_condition(self, key: PRNGKeyArray) -> Array:
        return self.forcing.value + 0.01 * jax.random.normal(key, (self.k,))


class Lorenz96TwoScale(AbstractModel):
    r"""Two-scale Lorenz-96 (Lorenz 1996), with K slow and J fast variables per slow one:

    $$\dot X_k = X_{k-1}(X_{k+1} - X_{k-2}) - X_k + F - \frac{hc}{b}\sum_j Y_{j,k}$$
    $$\dot Y_{j,k} = c b\,Y_{j+1,k}(Y_{j-1,k} - Y_{j+2,k}) - c Y_{j,k} + \frac{hc}{b} X_k$$

    The fast variables form one ring of length ``K·J``. The state is the flat vector
    ``[X (K), Y (K·J)]``; use `split` to recover ``(X, Y)``.

    **Arguments:** `k`, `j` sizes; `forcing` ``F`` (10), coupling `h` (1), time-scale ratio
    `c` (10) and amplitude ratio `b` (10), each a `Param`.
    """

    k: int = eqx.field(static=True)
    j: int = eqx.field(static=True)
    forcing: Param
    h: Param
    b: Param
    c: Param

    def __init__(self, k: int = 8, j: int = 32, forcing=10.0, h=1.0, b=10.0, c=10.0):
        if k < 4 or j < 1:
            raise ValueError(f"Lorenz96TwoScale needs k >= 4 and j >= 1, got k={k}, j={j}.")
        self.k, self.j = int(k), int(j)
        self.forcing = _param(forcing, name="F")
        self.h = _param(h, name="h")
        self.b = _param(b, Positive(), name="b")
        self.c = _param(c, Positive(), name="c")

    @property
    def state_shape(self):
        return (self.k * (self.j + 1),)

    def split(self, u: Array) -> tuple[Array, Array]:
        """``(X of shape (K,), Y of shape (K, J))`` from a flat state."""
        return u[..., : self.k], u[..., self.k :].reshape(*u.shape[:-1], self.k, self.j)

    def rhs(self, u: Array) -> Array:
        x, y = self.split(u)
        y = y.reshape(-1)
        h, b, c, f = self.h.value, self.b.value, self.c.value, self.forcing.value
        coupling = h * c / b
        dx = _advection(x) - x + f - coupling * y.reshape(self.k, self.j).sum(-1)
        dy = (
            c * b * jnp.roll(y, -1) * (jnp.roll(y, 1) - jnp.roll(y, -2))
            - c * y
            + coupling * jnp.repeat(x, self.j)
        )
        return jnp.concatenate([dx, dy])

    def initial_condition(self, key: PRNGKeyArray) -> Array:
        kx, ky = jax.random.split(key)
        x = self.forcing.value * (0.5 + jax.random.uniform(kx, (self.k,)))
        y = 0.1 * jax.random.normal(ky, (self.k * self.j,))
        return jnp.concatenate([x, y])
