"""Exponential time differencing Runge–Kutta 4 (Cox–Matthews, Kassam–Trefethen)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from ..models import AbstractSpectralModel
from ._base import AbstractStepper


def _contour(hl, points: int, radius: float):
    """``points`` nodes on a circle of ``radius`` around each ``hl``: shape ``(m, points)``."""
    theta = 2 * jnp.pi * (jnp.arange(points) + 0.5) / points
    return hl[:, None] + radius * jnp.exp(1j * theta)[None, :]


def etdrk4_coefficients(
    lin: Complex[Array, " m"], dt: float, points: int = 32, radius: float = 1.0
):
    r"""ETDRK4 coefficients for a diagonal linear symbol ``lin``, by contour integrals.

    Returns ``(E, E2, Q, f1, f2, f3)`` with ``E = e^{hL}``, ``E2 = e^{hL/2}``,
    ``Q = h φ_1(hL/2)/2`` and the three φ-combinations of Cox & Matthews (2002). Each
    φ-function is evaluated as the mean over ``points`` nodes of a circle of ``radius``
    centred at ``hL`` (Kassam & Trefethen 2005), which is accurate also where ``hL → 0``
    and differentiable in ``lin``.
    """
    hl = dt * lin
    lr = _contour(hl, points, radius)
    elr = jnp.exp(lr)
    elr2 = jnp.exp(lr / 2)
    lr3 = lr**3
    q = dt * jnp.mean((elr2 - 1) / lr, axis=-1)
    f1 = dt * jnp.mean((-4 - lr + elr * (4 - 3 * lr + lr**2)) / lr3, axis=-1)
    f2 = dt * jnp.mean((2 + lr + elr * (-2 + lr)) / lr3, axis=-1)
    f3 = dt * jnp.mean((-4 - 3 * lr - lr**2 + elr * (4 - lr)) / lr3, axis=-1)
    if not jnp.iscomplexobj(lin):
        q, f1, f2, f3 = (jnp.real(z) for z in (q, f1, f2, f3))
    return jnp.exp(hl), jnp.exp(hl / 2), q, f1, f2, f3


class ETDRK4(AbstractStepper):
    r"""Fourth-order exponential time differencing Runge–Kutta for ``u_t = L u + N(u)``.

    The linear part is integrated exactly; the φ-function coefficients are built from the
    model's current θ_s on every call (so ``jax.grad`` reaches e.g. KS's ``a, b, c, d``).
    Ten real FFTs per step: one into and one out of Fourier space, two per nonlinear
    evaluation.

    **Arguments:**

    - `model`: an `AbstractSpectralModel` (KS, Burgers).
    - `dt`: time step (> 0).
    - `dealias`: fraction of modes kept before nonlinear products (``2/3`` is Orszag's
      rule; ``None`` disables dealiasing, the default).
    - `contour_points`, `contour_radius`: contour-integral resolution.

    Reference: Cox & Matthews (2002), J. Comput. Phys. 176; Kassam & Trefethen (2005).
    """

    model: AbstractSpectralModel
    dt: float = eqx.field(static=True)
    dealias: float | None = eqx.field(static=True, default=None)
    contour_points: int = eqx.field(static=True, default=32)
    contour_radius: float = eqx.field(static=True, default=1.0)
    coefficients: tuple | None = None

    def __check_init__(self):
        if not isinstance(self.model, AbstractSpectralModel):
            raise ValueError(
                f"ETDRK4 needs a spectral model (KuramotoSivashinsky, Burgers), got "
                f"{type(self.model).__name__}; use sl.solvers.Diffrax for ODE models."
            )
        if self.dealias is not None and not 0 < self.dealias <= 1:
            raise ValueError(f"dealias must be in (0, 1] or None, got {self.dealias}.")

    def prepare(self) -> ETDRK4:
        """This stepper with its θ_s-dependent coefficients computed once.

        `rollout` calls it before the time loop, inside the differentiated function, so a
        trajectory computes the contour integrals once instead of once per step and
        gradients still reach θ_s. Do not keep a prepared stepper across θ_s updates.
        """
        return dataclasses.replace(self, coefficients=self._coefficients())

    def _coefficients(self):
        if self.coefficients is not None:
            return self.coefficients
        lin = self.model.linear_operator()
        return etdrk4_coefficients(lin, self.dt, self.contour_points, self.contour_radius)

    def init_carry(self, u):
        """The state carried between steps by `rollout`: ``(û, u)``, so that no step needs
        a forward FFT of its input (8 real FFTs per step instead of 10)."""
        return jnp.fft.rfft(u), u

    @staticmethod
    def carry_output(carry):
        """The physical state(s) inside a carry (works on stacked carries too)."""
        return carry[1]

    def step_carry(self, carry):
        """One step on the carried ``(û, u)``; returns the new carry."""
        v, u = carry
        m = self.model
        e, e2, q, f1, f2, f3 = self._coefficients()
        mask = None if self.dealias is None else m.dealias_mask(self.dealias)
        nv = m.nonlinear_hat(v, mask, u)
        a = e2 * v + q * nv
        na = m.nonlinear_hat(a, mask)
        b = e2 * v + q * na
        nb = m.nonlinear_hat(b, mask)
        c = e2 * a + q * (2 * nb - nv)
        nc = m.nonlinear_hat(c, mask)
        v = e * v + f1 * nv + 2 * f2 * (na + nb) + f3 * nc
        return v, jnp.fft.irfft(v, m.n)

    def __call__(self, u: Float[Array, " n"]) -> Float[Array, " n"]:
        self.check(u)
        return self.step_carry(self.init_carry(u))[1]


def phi1(lin: Complex[Array, " m"], dt: float, points: int = 32, radius: float = 1.0):
    r"""``dt · φ_1(dt L) = (e^{dt L} - 1) / L`` by the same contour integral as `ETDRK4`.

    The exact response of ``u_t = L u + g`` to a forcing ``g`` held constant over a step.
    """
    lr = _contour(dt * lin, points, radius)
    out = dt * jnp.mean((jnp.exp(lr) - 1) / lr, axis=-1)
    return out if jnp.iscomplexobj(lin) else jnp.real(out)
