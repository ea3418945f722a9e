"""Abstract scientific models: equations only, no time stepping."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from ..params import Param, resolve


def check_state(u, shape: tuple[int, ...], where: str) -> None:
    """Raise a `ValueError` naming the fix if ``u`` does not have the single-state shape."""
    got = tuple(jnp.shape(u))
    if got != tuple(shape):
        hint = ""
        if len(got) == len(shape) + 1 and got[1:] == tuple(shape):
            hint = "; for a batch of states use jax.vmap"
        elif len(got) > len(shape) and got[-len(shape) :] == tuple(shape):
            hint = "; for batched inputs use jax.vmap over the leading axes"
        raise ValueError(f"{where}: expected a state of shape {tuple(shape)}, got {got}{hint}.")


class AbstractModel(eqx.Module):
    """A scientific model: the right-hand side ``du/dt = f(u; θ_s)`` and its parameters."""

    @property
    @abc.abstractmethod
    def state_shape(self) -> tuple[int, ...]:
        """Shape of a single state."""

    @abc.abstractmethod
    def rhs(self, u: Array) -> Array:
        """The time derivative ``f(u; θ_s)`` of a single state."""

    @abc.abstractmethod
    def initial_condition(self, key: PRNGKeyArray) -> Array:
        """A random initial state."""

    def residual(self, trajectory: Float[Array, " time *state"], dt: float) -> Array:
        """The equation residual ``F(ũ; θ_s) = ∂_t ũ - f(ũ; θ_s)`` at interior times.

        ``∂_t`` is the second-order central difference ``(ũ_{t+1} - ũ_{t-1}) / (2 dt)``, so
        the result has ``time - 2`` entries; for a trajectory of the true equation it is
        ``O(dt²)``.
        """
        if trajectory.ndim != len(self.state_shape) + 1 or trajectory.shape[0] < 3:
            raise ValueError(
                f"residual expects a trajectory of shape (time >= 3, *{self.state_shape}), "
                f"got {trajectory.shape}; for a batch use jax.vmap."
            )
        check_state(trajectory[0], self.state_shape, f"{type(self).__name__}.residual")
        dudt = (trajectory[2:] - trajectory[:-2]) / (2.0 * dt)
        return dudt - jax.vmap(self.rhs)(trajectory[1:-1])


class AbstractSpectralModel(AbstractModel):
    """A semilinear PDE on a periodic 1-D domain, ``u_t = L u + N(u)``.

    ``L`` is diagonal in Fourier space (`linear_operator`), ``N`` is evaluated
    pseudo-spectrally (`nonlinear_hat`). Both are computed from the current θ_s on every
    call, so gradients reach the parameters.
    """

    length: eqx.AbstractVar[float]
    n: eqx.AbstractVar[int]

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.n,)

    @property
    def dx(self) -> float:
        return self.length / self.n

    def grid(self) -> Float[Array, " n"]:
        """Grid points ``x_j = j L / n``, ``j = 0 … n-1``."""
        return jnp.arange(self.n) * self.dx

    def wavenumbers(self) -> Float[Array, " m"]:
        """Angular wavenumbers of the real FFT, ``k_j = 2π j / L``, ``j = 0 … n/2``."""
        return 2 * jnp.pi / self.length * jnp.arange(self.n // 2 + 1)

    def dealias_mask(self, fraction: float = 2 / 3) -> Float[Array, " m"]:
        """1 for modes kept by the ``fraction`` rule (Orszag's 2/3 by default), 0 otherwise."""
        j = np.arange(self.n // 2 + 1)
        return jnp.asarray(j <= fraction * (self.n // 2), dtype=jnp.result_type(float))

    @abc.abstractmethod
    def linear_operator(self) -> Complex[Array, " m"]:
        """Symbol ``L(k)`` of the linear part on the rfft wavenumbers."""

    @abc.abstractmethod
    def nonlinear_hat(self, u_hat: Complex[Array, " m"], mask=None, u=None) -> Complex[Array, " m"]:
        """Fourier coefficients of ``N(u)``; ``mask`` (optional) dealiases ``u_hat`` first;
        ``u`` (optional) is ``irfft(u_hat)`` when the caller already has it (saves an FFT)."""

    def rhs(self, u: Float[Array, " n"]) -> Float[Array, " n"]:
        u_hat = jnp.fft.rfft(u)
        lin = self.linear_operator() * u_hat
        return jnp.fft.irfft(lin + self.nonlinear_hat(u_hat, u=u), self.n)

    def derivative(self, u: Float[Array, " n"], order: int = 1) -> Float[Array, " n"]:
        """Spectral derivative ``∂_x^order u``."""
        ik = 1j * self.wavenumbers()
        return jnp.fft.irfft(ik**order * jnp.fft.rfft(u), self.n)

    def pde_residual(self, derivs) -> Float[Array, ""]:
        r"""The pointwise residual ``u_t - f(u, u_x, u_xx, u_xxx, u_xxxx)`` at one point.

        Used by mesh-free methods (the PINN baseline) that differentiate a continuous
        field ``u(x, t)`` themselves; θ_s is read from the model's `Param`s, so gradients
        reach it. Zero for an exact solution.

        **Arguments:**

        - `derivs`: ``(u, u_x, u_xx, u_xxx, u_xxxx, u_t)`` at one point, as a tuple of
          scalars or an array of shape ``(6,)``.

        **Returns:** the scalar residual.

        The base implementation raises `NotImplementedError`; a model overrides it to
        become usable by `scilayers.baselines.fit_pinn` (see
        `scilayers.baselines.pinn_applicable`).
        """
        raise NotImplementedError(
            f"model {type(self).__name__} has no pointwise residual; implement "
            "pde_residual to use the PINN baseline."
        )

    def initial_condition(self, key: PRNGKeyArray, modes: int = 6, amplitude: float = 1.0):
        """A random smooth zero-mean field: the lowest ``modes`` Fourier modes with random
        Gaussian coefficients decaying as ``1/j``, scaled to RMS ``amplitude``."""
        kr, ki = jax.random.split(key)
        j = jnp.arange(1, modes + 1)
        coef = (jax.random.normal(kr, (modes,)) + 1j * jax.random.normal(ki, (modes,))) / j
        u_hat = jnp.zeros(self.n // 2 + 1, dtype=coef.dtype).at[1 : modes + 1].set(coef)
        u = jnp.fft.irfft(u_hat, self.n)
        return amplitude * u / jnp.sqrt(jnp.mean(u**2))


def _point_derivatives(derivs, where: str) -> tuple[Array, ...]:
    """Unpack ``(u, u_x, u_xx, u_xxx, u_xxxx, u_t)`` for `pde_residual`, checking the shape."""
    if isinstance(derivs, tuple | list):
        parts = tuple(jnp.asarray(v) for v in derivs)
        ok = len(parts) == 6 and all(v.shape == () for v in parts)
        got = f"{len(parts)} entries of shapes {[v.shape for v in parts]}"
    else:
        derivs = jnp.asarray(derivs)
        ok = derivs.shape == (6,)
        parts = tuple(derivs) if ok else ()
        got = f"an array of shape {derivs.shape}"
    if not ok:
        raise ValueError(
            f"{where} expects (u, u_x, u_xx, u_xxx, u_xxxx, u_t) at one point (6 scalars or "
            f"shape (6,)), got {got}; for many points use jax.vmap."
        )
    return parts


def _param(x, constraint=None, **kw) -> Param:
    return x if isinstance(x, Param) else Param(x, constraint, **kw)


def _check_grid(length, n, name: str) -> None:
    if not (np.isfinite(length) and length > 0):
        raise ValueError(f"{name}: length must be positive and finite, got {length}.")
    if not (isinstance(n, int | np.integer) and n >= 4 and n % 2 == 0):
        raise ValueError(f"{name}: n must be an even integer >= 4, got {n!r}.")


__all__ = ["AbstractModel", "AbstractSpectralModel", "check_state", "resolve"]
