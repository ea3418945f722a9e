"""A damped, driven pendulum: the smallest time-dependent (non-autonomous) model."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._typing import ScalarLike
from ..params import Param, Positive
from ._base import AbstractForcedModel, _param


class DrivenPendulum(AbstractForcedModel):
    r"""Damped pendulum driven by a periodic torque,

    $$\ddot θ = -γ\,\dot θ - ω_0^2 \sin θ + A \cos(Ω t),$$

    as a first-order system on the state ``u = (θ, ω)``, ``ω = θ'``:

    - autonomous part `rhs`: ``(ω, -γ ω - ω0² sin θ)``;
    - time-dependent part `source`: ``(0, A cos(Ω t))``.

    Time in seconds (or any unit, used consistently with the solver's ``dt``); ``θ`` in
    radians. For ``γ = 0.5``,
    ``ω0 = 1``, ``Ω = 2/3`` the motion is periodic for small ``A`` and chaotic near
    ``A ≈ 1.15`` (Baker & Gollub, *Chaotic Dynamics*, 1996).

    **Arguments:**

    - `gamma`: damping rate ``γ`` (1/time, default 0.5), a positive `Param`.
    - `omega0`: natural angular frequency ``ω0`` (rad/time, default 1), a positive `Param`.
    - `amplitude`: drive amplitude ``A`` (rad/time², default 0.9), a `Param`.
    - `drive_frequency`: drive angular frequency ``Ω`` (rad/time, default 2/3), a fixed
      number (not learned).

    Plain floats are wrapped in `Param`s.
    """

    gamma: Param
    omega0: Param
    amplitude: Param
    drive_frequency: float = eqx.field(static=True)

    def __init__(self, gamma=0.5, omega0=1.0, amplitude=0.9, drive_frequency: float = 2 / 3):
        if not (np.ndim(drive_frequency) == 0 and np.isfinite(drive_frequency)):
            raise ValueError(
                f"DrivenPendulum: drive_frequency must be a finite number, got {drive_frequency!r}."
            )
        self.gamma = _param(gamma, Positive(), name="gamma", units="1/s")
        self.omega0 = _param(omega0, Positive(), name="omega0", units="rad/s")
        self.amplitude = _param(amplitude, name="amplitude", units="rad/s^2")
        self.drive_frequency = float(drive_frequency)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (2,)

    def rhs(self, u: Float[Array, " 2"]) -> Float[Array, " 2"]:
        """The undriven pendulum ``(ω, -γ ω - ω0² sin θ)``."""
        theta, omega = u[0], u[1]
        accel = -self.gamma.value * omega - self.omega0.value**2 * jnp.sin(theta)
        return jnp.stack([omega, accel])

    def source(self, t: ScalarLike, u: Float[Array, " 2"]) -> Float[Array, " 2"]:
        """The drive ``(0, A cos(Ω t))``."""
        drive = self.amplitude.value * jnp.cos(self.drive_frequency * t)
        return jnp.stack([jnp.zeros_like(drive), drive])

    def initial_condition(self, key: PRNGKeyArray) -> Float[Array, " 2"]:
        """``θ`` uniform in ``[-π/2, π/2]``, ``ω`` standard normal times 0.5."""
        kt, kw = jax.random.split(key)
        theta = jax.random.uniform(kt, (), minval=-jnp.pi / 2, maxval=jnp.pi / 2)
        return jnp.stack([theta, 0.5 * jax.random.normal(kw, ())])
