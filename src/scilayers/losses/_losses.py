"""Losses: rollout data loss, physics residual loss, prior penalty."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..hybrid import Hybrid, physics_of
from ..params import log_prior
from ..solvers import rollout


def mse(pred: Array, target: Array) -> Array:
    """Mean squared error, elementwise then averaged."""
    return jnp.mean((pred - target) ** 2)


def predict_windows(
    step, windows: Float[Array, " batch time *state"], memory: str = "full"
) -> Float[Array, " batch time *state"]:
    """Roll ``step`` from the first state of each window for ``time - 1`` steps."""
    horizon = windows.shape[1] - 1
    return jax.vmap(lambda w0: rollout(step, w0, horizon, memory=memory, check_finite=False))(
        windows[:, 0]
    )


def rollout_loss(step, windows, memory: str = "full") -> tuple[Array, Array]:
    """Multi-step data loss ``mean_t ||ũ_t - u_t||²`` over an unrolled window.

    Returns ``(loss, predictions)``; ``predictions`` includes the initial states.
    """
    pred = predict_windows(step, windows, memory)
    return mse(pred[:, 1:], windows[:, 1:]), pred


def physics_loss(step, trajectories: Float[Array, " batch time *state"]) -> Array:
    r"""``L_physics = mean ||F(ũ_t; θ_s)||²`` at the interior times of ``trajectories``,
    with ``F`` the residual of the scientific model inside ``step`` at its current θ_s.
    Zero for a step with no physics (a pure network)."""
    model, dt = physics_of(step)
    if model is None or trajectories.shape[1] < 3:
        return jnp.zeros(())
    res = jax.vmap(lambda tr: model.residual(tr, dt))(trajectories)
    return jnp.mean(res**2)


def prior_loss(step) -> Array:
    """``-log p(θ_s)`` over the free `Param`s that carry a prior."""
    return -log_prior(step)


def closure_magnitude(step, states: Float[Array, " batch *state"]) -> Array:
    """Mean squared network term of a closure/residual `Hybrid` on ``states`` (0 otherwise).

    Penalising it keeps the network from absorbing what θ_s should explain."""
    if not isinstance(step, Hybrid) or step.coupling == "parameter":
        return jnp.zeros(())
    return jnp.mean(jax.vmap(step.network_term)(states) ** 2)
