"""Generalised Kuramoto–Sivashinsky equation on a periodic domain."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from ..params import Param, Positive
from ._base import (
    AbstractSpectralModel,
    _check_grid,
    _param,
    _point_derivatives,
    times_ik,
)


class KuramotoSivashinsky(AbstractSpectralModel):
    r"""Generalised Kuramoto–Sivashinsky equation

    $$u_t + c\,u u_x + a\,u_{xx} + b\,u_{xxxx} + d\,u_{xxx} = e\,(u_x^2)_x,\quad x\in[0, L)$$
    (periodic).

    In Fourier space the linear symbol is ``L(k) = a k² - b k⁴ + i d k³`` (anti-diffusion
    ``a``, hyper-diffusion ``b``, dispersion ``d``) and the nonlinearity is written in
    conservative form ``N(u) = -(c/2) (u²)_x + e (u_x²)_x``. The spatial mean is conserved.

    The optional ``e (u_x²)_x`` is a second conservative nonlinearity. Unlike ``d u_xxx``,
    it keeps KS's symmetry ``u(x) → -u(-x)``, so the dynamics stay chaotic (a dispersive
    ``d`` locks them into travelling waves).

    **Arguments:**

    - `length`: domain length ``L`` (default 22, a chaotic regime).
    - `n`: number of grid points (even).
    - `a`, `b`: positive `Param`s (default 1); `c`: convection `Param` (default 1);
      `d`: dispersion `Param` (default 0; ``None`` leaves the term out, which makes the
      linear symbol real); `e`: coefficient of ``(u_x²)_x`` (default ``None``: no such
      term). Plain floats are wrapped in `Param`s.

    Reference: Kassam & Trefethen (2005), SIAM J. Sci. Comput. 26(4).
    """

    length: float = eqx.field(static=True)
    n: int = eqx.field(static=True)
    a: Param
    b: Param
    c: Param
    d: Param | None
    e: Param | None

    def __init__(
        self, length: float = 22.0, n: int = 64, a=1.0, b=1.0, c=1.0, d=0.0, e=None
    ):
        _check_grid(length, n, "KuramotoSivashinsky")
        self.length = float(length)
        self.n = int(n)
        self.a = _param(a, Positive(), name="a")
        self.b = _param(b, Positive(), name="b")
        self.c = _param(c, name="c")
        self.d = None if d is None else _param(d, name="d")
        self.e = None if e is None else _param(e, name="e")

    def linear_operator(self) -> Complex[Array, " m"]:
        k = self.wavenumbers()
        real = self.a.value * k**2 - self.b.value * k**4
        if self.d is None:  # no dispersive term: a real symbol, cheaper coefficients
            return real
        return real + 1j * self.d.value * k**3

    def nonlinear_hat(self, u_hat, mask=None, u=None):
        if mask is not None:
            u_hat = u_hat * mask
        if u is None or mask is not None:
            u = jnp.fft.irfft(u_hat, self.n)
        k = self.wavenumbers()
        flux = -0.5 * self.c.value * u * u
        if self.e is not None:
            ux = jnp.fft.irfft(times_ik(k, u_hat), self.n)
            flux = flux + self.e.value * ux * ux
        return times_ik(k, jnp.fft.rfft(flux))

    def pde_residual(self, derivs) -> Float[Array, ""]:
        r"""``u_t + c u u_x + a u_xx + b u_xxxx + d u_xxx - e (u_x²)_x`` at one point (0 for
        a solution);
        `derivs` is ``(u, u_x, u_xx, u_xxx, u_xxxx, u_t)``, see
        `AbstractSpectralModel.pde_residual`."""
        u, ux, uxx, uxxx, uxxxx, ut = _point_derivatives(derivs, "KuramotoSivashinsky.pde_residual")
        r = ut + self.c.value * u * ux + self.a.value * uxx + self.b.value * uxxxx
        if self.e is not None:
            r = r - 2.0 * self.e.value * ux * uxx
        return r if self.d is None else r + self.d.value * uxxx


class Burgers(AbstractSpectralModel):
    r"""Viscous Burgers equation ``u_t + u u_x = ν u_xx`` on a periodic domain, with an
    optional dispersive term (Korteweg–de Vries–Burgers): ``u_t + u u_x = ν u_xx - δ u_xxx``.

    **Arguments:**

    - `length`: domain length (default 2π); `n`: grid points (even).
    - `nu`: positive viscosity `Param` (default 0.1).
    - `delta`: dispersion `Param` (default ``None``: no such term).
    """

    length: float = eqx.field(static=True)
    n: int = eqx.field(static=True)
    nu: Param
    delta: Param | None

    def __init__(self, length: float = 2 * jnp.pi, n: int = 64, nu=0.1, delta=None):
        _check_grid(length, n, "Burgers")
        self.length = float(length)
        self.n = int(n)
        self.nu = _param(nu, Positive(), name="nu", units="m^2/s")
        self.delta = None if delta is None else _param(delta, name="delta", units="m^3/s")

    def linear_operator(self):
        k = self.wavenumbers()
        if self.delta is None:
            return -self.nu.value * k**2
        return -self.nu.value * k**2 + 1j * self.delta.value * k**3

    def nonlinear_hat(self, u_hat, mask=None, u=None):
        if mask is not None:
            u_hat = u_hat * mask
        if u is None or mask is not None:
            u = jnp.fft.irfft(u_hat, self.n)
        return times_ik(-0.5 * self.wavenumbers(), jnp.fft.rfft(u * u))

    def pde_residual(self, derivs) -> Float[Array, ""]:
        r"""``u_t + u u_x - ν u_xx + δ u_xxx`` at one point (0 for a solution); `derivs` is
        ``(u, u_x, u_xx, u_xxx, u_xxxx, u_t)``, see `AbstractSpectralModel.pde_residual`."""
        u, ux, uxx, uxxx, _, ut = _point_derivatives(derivs, "Burgers.pde_residual")
        r = ut + u * ux - self.nu.value * uxx
        return r if self.delta is None else r + self.delta.value * uxxx
