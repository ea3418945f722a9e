"""Abstract scientific models: equations only, no time stepping."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from .._typing import ScalarLike
from ..params import Param, as_param, resolve


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
    r"""A scientific model: the right-hand side ``du/dt = f(t, u; θ_s)`` and its parameters.

    Time contract. Every solver integrates

    $$\frac{du}{dt} = f(t, u; θ_s) = \mathrm{rhs}(u; θ_s) + s(t, u; θ_s),$$

    evaluated by `vector_field` ``(t, u)``. An autonomous model (KS, Burgers, Lorenz-96)
    implements only ``rhs(u)`` and has no source ``s``; a time-dependent model subclasses
    `AbstractForcedModel` and also implements ``source(t, u)``, the explicitly
    time-dependent part (a drive, a forcing ``f(x, t)``). ``rhs(u)`` is always the
    autonomous part alone, so code written for autonomous models keeps working; code that
    integrates or differentiates the dynamics calls ``vector_field(t, u)``.
    """

    @property
    @abc.abstractmethod
    def state_shape(self) -> tuple[int, ...]:
        """Shape of a single state."""

    @abc.abstractmethod
    def rhs(self, u: Array) -> Array:
        """The autonomous part ``f(u; θ_s)`` of the time derivative of a single state (the
        whole derivative for an autonomous model)."""

    @abc.abstractmethod
    def initial_condition(self, key: PRNGKeyArray) -> Array:
        """A random initial state."""

    @property
    def autonomous(self) -> bool:
        """Whether the dynamics do not depend on time explicitly (no `source`)."""
        return not isinstance(self, AbstractForcedModel)

    def vector_field(self, t: ScalarLike, u: Array) -> Array:
        """The full time derivative ``f(t, u; θ_s) = rhs(u) + source(t, u)`` at time ``t``
        (``rhs(u)`` for an autonomous model, whatever ``t``). What the solvers integrate."""
        f = self.rhs(u)
        if self.autonomous:
            return f
        return f + self.source(t, u)

    def residual(
        self, trajectory: Float[Array, " time *state"], dt: float, t0: ScalarLike = 0.0
    ) -> Array:
        """The equation residual ``F(ũ; θ_s) = ∂_t ũ - f(t, ũ; θ_s)`` at interior times.

        ``∂_t`` is the second-order central difference ``(ũ_{t+1} - ũ_{t-1}) / (2 dt)``, so
        the result has ``time - 2`` entries; for a trajectory of the true equation it is
        ``O(dt²)``. The states are taken at times ``t0 + k dt`` (``t0``, default 0, is the
        time of ``trajectory[0]``; it matters only for a time-dependent model).
        """
        if trajectory.ndim != len(self.state_shape) + 1 or trajectory.shape[0] < 3:
            raise ValueError(
                f"residual expects a trajectory of shape (time >= 3, *{self.state_shape}), "
                f"got {trajectory.shape}; for a batch use jax.vmap."
            )
        check_state(trajectory[0], self.state_shape, f"{type(self).__name__}.residual")
        dudt = (trajectory[2:] - trajectory[:-2]) / (2.0 * dt)
        if self.autonomous:
            return dudt - jax.vmap(self.rhs)(trajectory[1:-1])
        times = t0 + dt * jnp.arange(1, trajectory.shape[0] - 1, dtype=jnp.result_type(float))
        return dudt - jax.vmap(self.vector_field)(times, trajectory[1:-1])


class AbstractForcedModel(AbstractModel):
    r"""A time-dependent (non-autonomous) model, ``du/dt = rhs(u; θ_s) + source(t, u; θ_s)``.

    Subclasses implement `source`: the explicitly time-dependent part, e.g. the drive
    ``(0, A cos Ωt)`` of a driven pendulum. It may depend on the state (a parametric
    drive ``q cos(2t) θ``) and on θ_s (``A`` is a `Param` and gets gradients). Every
    solver evaluates it at its own stage times (ETDRK4 at ``t, t + dt/2, t + dt``; Diffrax
    wherever its solver asks), and `rollout` advances the time by ``dt`` per step from its
    ``t0``.
    """

    @abc.abstractmethod
    def source(self, t: ScalarLike, u: Array) -> Array:
        """The explicitly time-dependent part ``s(t, u; θ_s)`` of ``du/dt`` (state-shaped)."""


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

    def nonlinear_hat_at(
        self, t: ScalarLike, u_hat: Complex[Array, " m"], mask=None, u=None
    ) -> Complex[Array, " m"]:
        """Fourier coefficients of the whole non-stiff part at time ``t``,
        ``N(t, u) = N(u) + s(t, u)``: `nonlinear_hat` plus, for an
        `AbstractForcedSpectralModel`, its `source_hat`. What the spectral steppers
        evaluate at each stage; for an autonomous model exactly `nonlinear_hat` (no extra
        FFT). ``mask`` and ``u`` as in `nonlinear_hat`."""
        if self.autonomous:
            return self.nonlinear_hat(u_hat, mask, u)
        u = jnp.fft.irfft(u_hat, self.n) if u is None else u
        return self.nonlinear_hat(u_hat, mask, u) + self.source_hat(t, u_hat, mask, u)

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


class AbstractForcedSpectralModel(AbstractSpectralModel, AbstractForcedModel):
    r"""A time-dependent semilinear PDE on a periodic 1-D domain,
    ``u_t = L u + N(u) + s(t, u)``.

    Subclasses implement `source_hat`, the Fourier coefficients of the source (in Fourier
    space, like `nonlinear_hat`, so a spectral stage needs no extra transform for a
    forcing known in modes). The spectral steppers treat ``s`` with the non-stiff part:
    ETDRK4 evaluates ``N(t, u) = N(u) + s(t, u)`` at its stage times ``t, t + dt/2,
    t + dt`` (`nonlinear_hat_at`). E.g. a forced heat equation with
    ``f(x, t) = sin(x) cos(t)``::

        def source_hat(self, t, u_hat, mask=None, u=None):
            return jnp.cos(t) * jnp.fft.rfft(jnp.sin(self.grid()))
    """

    @abc.abstractmethod
    def source_hat(
        self, t: ScalarLike, u_hat: Complex[Array, " m"], mask=None, u=None
    ) -> Complex[Array, " m"]:
        """Fourier coefficients of the source ``s(t, u)``; ``mask`` and ``u`` as in
        `nonlinear_hat` (a source that depends on ``u`` nonlinearly applies ``mask``)."""

    def source(self, t: ScalarLike, u: Float[Array, " n"]) -> Float[Array, " n"]:
        """The source ``s(t, u)`` on the grid (``irfft`` of `source_hat`)."""
        return jnp.fft.irfft(self.source_hat(t, jnp.fft.rfft(u), None, u), self.n)


def times_ik(k: Float[Array, " m"], z: Complex[Array, "*batch m"]) -> Complex[Array, "*batch m"]:
    """``i k ⊙ z`` (a spectral derivative for real wavenumbers ``k``) in real arithmetic:
    ``(-k Im z) + i (k Re z)``, the same numbers as the complex product.

    Written out because XLA multiplies ``1j * k`` as a full complex number (four products
    and two sums per mode); this is two products and no sum, and fuses with the arithmetic
    around it. It sits inside every nonlinear evaluation of a spectral stepper.
    """
    return jax.lax.complex(-k * jnp.imag(z), k * jnp.real(z))


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
    """Private alias of the public `scilayers.params.as_param`."""
    return as_param(x, constraint, **kw)


def _check_grid(length, n, name: str) -> None:
    if not (np.isfinite(length) and length > 0):
        raise ValueError(f"{name}: length must be positive and finite, got {length}.")
    if not (isinstance(n, int | np.integer) and n >= 4 and n % 2 == 0):
        raise ValueError(f"{name}: n must be an even integer >= 4, got {n!r}.")


__all__ = [
    "AbstractForcedModel",
    "AbstractForcedSpectralModel",
    "AbstractModel",
    "AbstractSpectralModel",
    "check_state",
    "resolve",
]
