"""Losses: rollout data loss, physics residual loss, prior penalty."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..models import AbstractModel
from ..params import log_prior
from ..solvers import rollout, takes_time


def physics_of(step) -> tuple[AbstractModel | None, float | None]:
    """The scientific model and time step inside ``step``, or ``(None, None)`` for a step
    with no physics (a pure network).

    Duck-typed, so that losses need not know the composition layer: anything with a
    ``model`` that has a ``residual`` and a ``dt`` qualifies (every stepper, `Repeated`, and
    `Hybrid`, whose ``model`` is its physics model)."""
    model, dt = getattr(step, "model", None), getattr(step, "dt", None)
    if model is None or dt is None or not callable(getattr(model, "residual", None)):
        return None, None
    return model, dt


def mse(pred: Array, target: Array) -> Array:
    """Mean squared error, elementwise then averaged."""
    return jnp.mean((pred - target) ** 2)


def predict_windows(
    step,
    windows: Float[Array, " batch time *state"],
    memory: str = "full",
    t0: Float[Array, " batch"] | None = None,
) -> Float[Array, " batch time *state"]:
    """Roll ``step`` from the first state of each window for ``time - 1`` steps; window
    ``b`` starts at time ``t0[b]`` (default ``None``: 0; used by a step that takes time,
    see `scilayers.solvers.takes_time`, and ignored by a plain function)."""
    horizon = windows.shape[1] - 1
    if t0 is None or not takes_time(step):
        return jax.vmap(lambda w0: rollout(step, w0, horizon, memory=memory, check_finite=False))(
            windows[:, 0]
        )
    t0 = jnp.broadcast_to(jnp.asarray(t0), windows.shape[:1])
    return jax.vmap(lambda w0, s: rollout(step, w0, horizon, s, memory=memory, check_finite=False))(
        windows[:, 0], t0
    )


def rollout_loss(
    step, windows, memory: str = "full", t0=None, observed=None
) -> tuple[Array, Array]:
    """Multi-step data loss ``mean_t ||ũ_t - u_t||²`` over an unrolled window, each
    window starting at its time ``t0[b]`` (default 0; see `predict_windows`); with
    ``observed`` (flat indices into a raveled state) only those components are compared
    (an observation operator for sparse measurements).

    Returns ``(loss, predictions)``; ``predictions`` includes the initial states.
    """
    pred = predict_windows(step, windows, memory, t0)
    if observed is None:
        return mse(pred[:, 1:], windows[:, 1:]), pred
    idx = jnp.asarray(observed)
    b, t = windows.shape[0], windows.shape[1] - 1
    flat_p = pred[:, 1:].reshape(b, t, -1)
    flat_w = windows[:, 1:].reshape(b, t, -1)
    if int(max(observed)) >= flat_w.shape[-1]:
        raise ValueError(
            f"observed indices reach {max(observed)} but a state has {flat_w.shape[-1]} "
            f"components."
        )
    return mse(flat_p[..., idx], flat_w[..., idx]), pred


def physics_loss(step, trajectories: Float[Array, " batch time *state"], t0=None) -> Array:
    r"""``L_physics = mean ||F(ũ_t; θ_s)||²`` at the interior times of ``trajectories``,
    with ``F`` the residual of the scientific model inside ``step`` at its current θ_s
    (trajectory ``b`` starting at time ``t0[b]``, default 0: it matters for a
    time-dependent model). Zero for a step with no physics (a pure network)."""
    model, dt = physics_of(step)
    if model is None or trajectories.shape[1] < 3:
        return jnp.zeros(())
    if t0 is None:
        res = jax.vmap(lambda tr: model.residual(tr, dt))(trajectories)
    else:
        t0 = jnp.broadcast_to(jnp.asarray(t0), trajectories.shape[:1])
        res = jax.vmap(lambda tr, s: model.residual(tr, dt, s))(trajectories, t0)
    return jnp.mean(res**2)


def prior_loss(step) -> Array:
    """``-log p(θ_s)`` over the free `Param`s that carry a prior."""
    return -log_prior(step)


def closure_magnitude(
    step, states: Float[Array, " batch *state"], times: Float[Array, " batch"] | None = None
) -> Array:
    """Mean squared network term of a closure/residual hybrid on ``states`` (0 otherwise),
    state ``b`` at time ``times[b]`` (default ``None``: 0).

    Duck-typed: ``step.network_term(u, t)`` (what the network adds at ``u`` at time
    ``t``) is used when ``step`` has one and its ``coupling`` is not ``"parameter"``.
    Penalising it keeps the network from absorbing what θ_s should explain."""
    term = getattr(step, "network_term", None)
    if term is None or getattr(step, "coupling", None) == "parameter":
        return jnp.zeros(())
    if times is None:
        return jnp.mean(jax.vmap(term)(states) ** 2)
    times = jnp.broadcast_to(jnp.asarray(times), states.shape[:1])
    return jnp.mean(jax.vmap(term)(states, times) ** 2)
