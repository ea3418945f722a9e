"""The leading Lyapunov exponent of a time stepper (Benettin's algorithm)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def lyapunov_exponent(
    step,
    u0: Float[Array, " batch *state"],
    *,
    steps: int,
    dt: float | None = None,
    transient: int = 0,
    renormalise_every: int = 1,
    key: PRNGKeyArray | None = None,
) -> Float[Array, " batch"]:
    r"""Leading Lyapunov exponent ``λ₁`` of the map ``u ↦ step(u)``, per initial state.

    Benettin et al. (1980): a tangent vector ``v`` is pushed forward with the Jacobian of
    the step (``jax.jvp``, exact to round-off, no finite-difference offset) alongside the
    state, and renormalised to unit length every ``renormalise_every`` steps; the exponent
    is the mean logarithmic growth rate per unit time,

    $$λ₁ = \frac{1}{K\,m\,Δt}\sum_{k=1}^{K} \log \lVert J^{(m)}_k v_{k-1} \rVert .$$

    ``transient`` steps are integrated (state and tangent vector) before the average
    starts, so the state sits on the attractor and ``v`` has aligned with the leading
    Lyapunov vector. Every initial state of the batch runs in parallel (``jax.vmap``).

    **Arguments:**

    - `step`: a stepper ``u -> u`` (an `ETDRK4`, `Diffrax`, `Hybrid`, …).
    - `u0`: initial states, shape ``(batch, *state)``.
    - `steps`: steps averaged over (after the transient); a multiple of
      `renormalise_every`.
    - `dt`: time per step (default ``step.dt``).
    - `transient`: steps discarded first (default 0).
    - `renormalise_every`: steps between renormalisations (default 1).
    - `key`: PRNG key of the random initial tangent vectors (default ``key(0)``).

    **Returns:** ``λ₁`` per initial state, in inverse time units; the Lyapunov time is
    ``1 / λ₁``.

    Reference: Benettin, Galgani, Giorgilli & Strelcyn (1980), Meccanica 15, 9–20.
    """
    dt = getattr(step, "dt", None) if dt is None else dt
    if dt is None or not dt > 0:
        raise ValueError("lyapunov_exponent needs the time per step: pass dt=... (> 0).")
    if steps < 1 or steps % renormalise_every:
        raise ValueError(
            f"steps={steps} must be a positive multiple of renormalise_every="
            f"{renormalise_every}."
        )
    u0 = jnp.asarray(u0)
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, u0.shape, dtype=u0.dtype)
    return _lyapunov(step, u0, v0, steps, float(dt), transient, renormalise_every)


@eqx.filter_jit
def _lyapunov(step, u0, v0, steps: int, dt: float, transient: int, every: int):
    def tangent(u, v):
        return jax.jvp(step, (u,), (v,))

    def block(carry, _):
        u, v = carry

        def inner(c, _):
            return tangent(*c), None

        (u, v), _ = jax.lax.scan(inner, (u, v), None, length=every)
        norm = jnp.sqrt(jnp.sum(v**2))
        return (u, v / norm), jnp.log(norm)

    def one(u, v):
        v = v / jnp.sqrt(jnp.sum(v**2))
        if transient:
            (u, v), _ = jax.lax.scan(block, (u, v), None, length=max(1, transient // every))
        _, logs = jax.lax.scan(block, (u, v), None, length=steps // every)
        return jnp.sum(logs) / (steps * dt)

    return jax.vmap(one)(u0, v0)
