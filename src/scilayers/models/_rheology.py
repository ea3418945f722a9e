r"""Rheology of blood: shear-rate-dependent viscosity ``μ(γ̇)`` with learnable θ_s.

A rheology maps the local shear rate ``γ̇ = √(2 S:S)`` (1/s, ``S`` the strain-rate
tensor) to the dynamic viscosity ``μ`` (Pa·s). Three laws:

- `Newtonian`: ``μ(γ̇) = μ``;
- `Carreau`: ``μ(γ̇) = μ_∞ + (μ_0 − μ_∞)\,(1 + (λγ̇)^2)^{(n−1)/2}``, shear-thinning for
  ``n < 1`` (blood: Cho & Kensey 1991);
- `PowerLaw`: ``μ(γ̇) = K γ̇^{n−1}`` (Ostwald–de Waele), with ``γ̇`` floored at
  ``shear_rate_min`` so the viscosity stays finite where the fluid does not shear.

Every coefficient is a positive `Param`, so a solver that evaluates ``μ`` inside its
step gives gradients to the rheology. The 2-D lattice Boltzmann solver
(`scilayers.solvers.LatticeBoltzmann`) sets its local relaxation time from it.

Reference: Y. I. Cho, K. R. Kensey (1991) "Effects of the non-Newtonian viscosity of blood
on flows in a diseased arterial vessel. Part 1: Steady flows", Biorheology 28:241–262.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ..params import LogNormal, Param, Positive
from ._base import _param

BLOOD_DENSITY = 1060.0
"""Density of whole blood (kg/m³)."""

CHO_KENSEY_1991 = {"mu_0": 0.056, "mu_inf": 0.00345, "lam": 3.313, "n": 0.3568}
"""Carreau parameters of blood (Cho & Kensey 1991): μ0, μ∞ (Pa·s), λ (s), n."""


class AbstractRheology(eqx.Module):
    """A generalised-Newtonian fluid: the dynamic viscosity ``μ(γ̇)`` (Pa·s) as a function of
    the shear rate ``γ̇`` (1/s)."""

    @abc.abstractmethod
    def viscosity(self, shear_rate: ArrayLike) -> Array:
        """Dynamic viscosity (Pa·s) at the shear rate ``shear_rate`` (1/s), elementwise."""

    def viscosity_range(self, shear_rate_max: float) -> tuple[float, float]:
        """The smallest and largest viscosity (Pa·s) for shear rates in
        ``[0, shear_rate_max]`` (concrete θ_s; sampled on a logarithmic grid, exact for the
        monotone laws here). What a solver checks its stability limits against."""
        g = np.concatenate([[0.0], np.geomspace(1e-8, max(shear_rate_max, 1e-7), 200)])
        mu = np.asarray(self.viscosity(jnp.asarray(g)))
        return float(np.min(mu)), float(np.max(mu))


class Newtonian(AbstractRheology):
    """A Newtonian fluid, ``μ(γ̇) = μ``.

    **Arguments:**

    - `mu`: dynamic viscosity, Pa·s (default 0.0035, the textbook value for blood at high
      shear). A positive `Param` with a ``LogNormal(0.0035, 0.5)`` prior; a `Param` is
      used as given.
    """

    mu: Param

    def __init__(self, mu=0.0035):
        self.mu = _param(mu, Positive(), name="mu", units="Pa s", prior=LogNormal(0.0035, 0.5))

    def viscosity(self, shear_rate: ArrayLike) -> Array:
        return jnp.broadcast_to(self.mu.value, jnp.shape(shear_rate))


class Carreau(AbstractRheology):
    r"""The Carreau model of a shear-thinning fluid,

    $$μ(γ̇) = μ_∞ + (μ_0 − μ_∞)\,\big(1 + (λγ̇)^2\big)^{(n−1)/2}.$$

    ``μ_0`` is the zero-shear plateau, ``μ_∞`` the high-shear plateau, ``1/λ`` the shear
    rate at which thinning sets in, ``n`` the power-law index of the thinning range
    (``n = 1`` is Newtonian with ``μ = μ_0``). Defaults and prior medians are the values
    for human blood of Cho & Kensey (1991): ``μ_0 = 0.056`` Pa·s, ``μ_∞ = 0.00345`` Pa·s,
    ``λ = 3.313`` s, ``n = 0.3568``.

    **Arguments:**

    - `mu_0`: zero-shear viscosity, Pa·s.
    - `mu_inf`: infinite-shear viscosity, Pa·s.
    - `lam`: relaxation time λ, s.
    - `n`: power-law index (dimensionless).

    Each is a positive `Param` with a log-normal prior around the Cho–Kensey value
    (σ = 0.5 in log space for the viscosities and λ, 0.3 for ``n``); pass a `Param` to
    change the constraint or prior, or ``Param(v, fixed=True)`` to hold one fixed.
    """

    mu_0: Param
    mu_inf: Param
    lam: Param
    n: Param

    def __init__(self, mu_0=0.056, mu_inf=0.00345, lam=3.313, n=0.3568):
        ck = CHO_KENSEY_1991
        self.mu_0 = _param(mu_0, Positive(), name="mu_0", units="Pa s",
                           prior=LogNormal(ck["mu_0"], 0.5))  # fmt: skip
        self.mu_inf = _param(mu_inf, Positive(), name="mu_inf", units="Pa s",
                             prior=LogNormal(ck["mu_inf"], 0.5))  # fmt: skip
        self.lam = _param(lam, Positive(), name="lam", units="s", prior=LogNormal(ck["lam"], 0.5))
        self.n = _param(n, Positive(), name="n", units="", prior=LogNormal(ck["n"], 0.3))

    def viscosity(self, shear_rate: ArrayLike) -> Array:
        mu0, mui, lam, n = self.mu_0.value, self.mu_inf.value, self.lam.value, self.n.value
        return mui + (mu0 - mui) * (1.0 + (lam * shear_rate) ** 2) ** (0.5 * (n - 1.0))


class PowerLaw(AbstractRheology):
    r"""A power-law (Ostwald–de Waele) fluid, ``μ(γ̇) = K\,\max(γ̇, γ̇_{min})^{n−1}``.

    Shear-thinning for ``n < 1``; the floor ``γ̇_min`` keeps the viscosity finite where the
    fluid does not shear (a channel's centreline), which every discrete solver needs.

    **Arguments:**

    - `K`: consistency, Pa·sⁿ (default 0.017, a blood-like value).
    - `n`: flow index (default 0.708).
    - `shear_rate_min`: floor of the shear rate, 1/s (default 1e-3), not learned; the
      viscosity is then at most ``K γ̇_min^{n−1}``.
    """

    K: Param
    n: Param
    shear_rate_min: float = eqx.field(static=True)

    def __init__(self, K=0.017, n=0.708, shear_rate_min: float = 1e-3):
        self.K = _param(K, Positive(), name="K", units="Pa s^n")
        self.n = _param(n, Positive(), name="n", units="")
        if not (np.isfinite(shear_rate_min) and shear_rate_min > 0):
            raise ValueError(
                f"PowerLaw: shear_rate_min must be a positive number (1/s), got {shear_rate_min!r}."
            )
        self.shear_rate_min = float(shear_rate_min)

    def viscosity(self, shear_rate: ArrayLike) -> Array:
        g = jnp.maximum(shear_rate, self.shear_rate_min)
        return self.K.value * g ** (self.n.value - 1.0)


__all__ = [
    "BLOOD_DENSITY",
    "CHO_KENSEY_1991",
    "AbstractRheology",
    "Carreau",
    "Newtonian",
    "PowerLaw",
]
