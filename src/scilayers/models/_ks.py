"""Generalised Kuramoto–Sivashinsky equation on a periodic domain."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Complex

from ..params import Param, Positive
from ._base import AbstractSpectralModel, _check_grid, _param


class KuramotoSivashinsky(AbstractSpectralModel):
    r"""Generalised Kuramoto–Sivashinsky equation

    $$u_t + c\,u u_x + a\,u_{xx} + b\,u_{xxxx} + d\,u_{xxx} = 0,\quad x\in[0, L)$$ (periodic).

    In Fourier space the linear symbol is ``L(k) = a k² - b k⁴ + i d k³`` (anti-diffusion
    ``a``, hyper-diffusion ``b``, dispersion ``d``) and the nonlinearity is written in
    conservative form ``N(u) = -(c/2) (u²)_x``. The spatial mean is conserved.

    **Arguments:**

    - `length`: domain length ``L`` (default 22, a chaotic regime).
    - `n`: number of grid points (even).
    - `a`, `b`: positive `Param`s (default 1); `c`: convection `Param` (default 1);
      `d`: dispersion `Param` (default 0; ``None`` leaves the term out, which makes the
      linear symbol real). Plain floats are wrapped in `Param`s.

    Reference: Kassam & Trefethen (2005), SIAM J. Sci. Comput. 26(4).
    """

    length: float = eqx.field(static=True)
    n: int = eqx.field(static=True)
    a: Param
    b: Param
    c: Param
    d: Param | None

    def __init__(self, length: float = 22.0, n: int = 64, a=1.0, b=1.0, c=1.0, d=0.0):
        _check_grid(length, n, "KuramotoSivashinsky")
        self.length = float(length)
        self.n = int(n)
        self.a = _param(a, Positive(), name="a")
        self.b = _param(b, Positive(), name="b")
        self.c = _param(c, name="c")
        self.d = None if d is None else _param(d, name="d")

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
        return -0.5j * self.c.value * self.wavenumbers() * jnp.fft.rfft(u * u)


class Burgers(AbstractSpectralModel):
    r"""Viscous Burgers equation ``u_t + u u_x = ν u_xx`` on a periodic domain.

    **Arguments:**

    - `length`: domain length (default 2π); `n`: grid points (even).
    - `nu`: positive viscosity `Param` (default 0.1).
    """

    length: float = eqx.field(static=True)
    n: int = eqx.field(static=True)
    nu: Param

    def __init__(self, length: float = 2 * jnp.pi, n: int = 64, nu=0.1):
        _check_grid(length, n, "Burgers")
        self.length = float(length)
        self.n = int(n)
        self.nu = _param(nu, Positive(), name="nu", units="m^2/s")

    def linear_operator(self):
        k = self.wavenumbers()
        return -self.nu.value * k**2

    def nonlinear_hat(self, u_hat, mask=None, u=None):
        if mask is not None:
            u_hat = u_hat * mask
        if u is None or mask is not None:
            u = jnp.fft.irfft(u_hat, self.n)
        return -0.5j * self.wavenumbers() * jnp.fft.rfft(u * u)
