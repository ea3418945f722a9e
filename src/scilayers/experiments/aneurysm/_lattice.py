"""Lattice runs of the aneurysm study: the near-wall closure, the closed coarse lattice,
recording a cycle, and the jitted training steps (loss, gradient, θ_s sensitivities)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from ... import params as slp
from ...solvers import LatticeBoltzmann
from ...solvers._lbm import CX, CY
from ._identifiability import _log_space_prior


# ======================================================================= lattice runs
class WallClosure(eqx.Module):
    r"""A near-wall body-force closure for a coarse lattice,
    ``F = −ρ b(x) K(φ(x), |u|, γ̇) u`` (N/m³).

    ``K`` is a 2×2 matrix of rates (1/s) from a small MLP of local features, each entry
    bounded by ``rate_max`` (tanh); ``φ`` are static geometry features (``exp(−d/dx)``
    of the distance ``d`` to the true wall, the staircase offset of the lattice's wall
    from it in cells, the wall normal), ``|u|`` the local speed over ``speed_ref`` and
    ``γ̇`` the local shear rate (carried in the lattice state) over ``shear_ref``;
    ``b = exp(−d / 1.5 dx) − e^{−2}`` for ``d < 3 dx`` (zero beyond) confines the force to
    the cells next to the wall, the only cells where the network is evaluated
    (`cells`). The MLP's last layer starts at zero, so the closure starts switched off;
    ``F`` vanishes at rest. Moves to another geometry by recomputing φ, b and the cells
    there (`on`)."""

    mlp: eqx.nn.MLP
    features: jax.Array  # (4, n_band) at the band cells
    band: jax.Array  # (n_band,)
    cells: jax.Array  # flat indices of the band cells
    shape: tuple[int, int] = eqx.field(static=True)
    rate_max: float = eqx.field(static=True)
    rho: float = eqx.field(static=True)
    velocity_unit: float = eqx.field(static=True)
    speed_ref: float = eqx.field(static=True)
    shear_ref: float = eqx.field(static=True)
    dt: float = eqx.field(static=True)

    def __init__(self, mlp, features, band, *, rate_max, rho, velocity_unit, speed_ref,
                 shear_ref, dt):  # fmt: skip
        band = np.asarray(band)
        cells = np.flatnonzero(band > 0)
        self.mlp = mlp
        self.shape = band.shape
        self.cells = jnp.asarray(cells)
        self.features = jnp.asarray(np.asarray(features).reshape(len(features), -1)[:, cells])
        self.band = jnp.asarray(band.ravel()[cells])
        self.rate_max = float(rate_max)
        self.rho = float(rho)
        self.velocity_unit = float(velocity_unit)
        self.speed_ref = float(speed_ref)
        self.shear_ref = float(shear_ref)
        self.dt = float(dt)

    def _band_force(self, state) -> jax.Array:
        """The force (N/m³) at the band cells, shape ``(2, n_band)``."""
        f = state[:9].reshape(9, -1)[:, self.cells]
        cx, cy = jnp.asarray(CX, f.dtype), jnp.asarray(CY, f.dtype)
        u = jnp.stack([cx @ f, cy @ f]) * self.velocity_unit
        speed = jnp.sqrt(jnp.sum(u * u, axis=0) + (1e-6 * self.speed_ref) ** 2) / self.speed_ref
        gd = jnp.maximum(state[9].reshape(-1)[self.cells], 0.0) / self.dt
        x = jnp.concatenate([self.features, speed[None], jnp.log1p(gd / self.shear_ref)[None]])
        k = self.rate_max * jnp.tanh(jax.vmap(self.mlp)(x.T)).T.reshape(2, 2, -1)
        return -self.rho * self.band[None] * jnp.einsum("ijc,jc->ic", k, u)

    def __call__(self, state) -> jax.Array:
        """The force (N/m³), shape ``(2, nx, ny)`` (zero away from the wall)."""
        full = jnp.zeros((2, self.shape[0] * self.shape[1]), state.dtype)
        return full.at[:, self.cells].set(self._band_force(state)).reshape(2, *self.shape)

    def usage(self, state) -> jax.Array:
        """Mean square of the force over the band cells, in units of its bound
        ``ρ·rate_max·speed_ref`` (the closure penalty)."""
        f = self._band_force(state) / (self.rho * self.rate_max * self.speed_ref)
        return jnp.mean(jnp.sum(f * f, axis=0))

    def on(self, features, band, dt: float, velocity_unit: float) -> WallClosure:
        """The same network on another lattice (geometry features and band there)."""
        return WallClosure(self.mlp, features, band, rate_max=self.rate_max, rho=self.rho,
                           velocity_unit=velocity_unit, speed_ref=self.speed_ref,
                           shear_ref=self.shear_ref, dt=dt)  # fmt: skip


class ClosedLattice(eqx.Module):
    """A coarse lattice Boltzmann stepper with an optional `WallClosure` added as a body
    force at every step (solver in the loop)."""

    lbm: LatticeBoltzmann
    closure: WallClosure | None = None

    def force(self, u):
        return None if self.closure is None else self.closure(u)

    def __call__(self, u, t):
        return self.lbm(u, t, self.force(u))

    def velocity(self, u, t):
        return self.lbm.velocity(u, t, self.force(u))

    def wall_shear_stress(self, u, wall, t):
        return self.lbm.wall_shear_stress(u, wall, t, self.force(u))


def run_blocks(stepper, u0, t0, samples: int, every: int, observe, checkpoint: bool = False):
    """``samples`` blocks of ``every`` steps from ``u0`` at ``t0``; ``observe(u, t)`` after
    each block. With ``checkpoint`` each block is recomputed in the backward pass."""
    dt = stepper.lbm.dt if isinstance(stepper, ClosedLattice) else stepper.dt

    def block(u, k):
        t = t0 + k * (every * dt)

        def one(v, i):
            return stepper(v, t + i * dt), None

        u, _ = jax.lax.scan(one, u, jnp.arange(every))
        return u, observe(u, t + every * dt)

    if checkpoint:
        block = jax.checkpoint(block)
    return jax.lax.scan(block, u0, jnp.arange(samples))


@eqx.filter_jit
def _record(stepper, cycles: int, steps: int, phases: int, wall):
    """From rest: ``cycles − 1`` cycles, then the last one recorded at ``phases`` phases:
    ``(state at the end, velocity (P, 2, nx, ny), sac WSS (P, W), max Mach)``."""
    lbm = stepper.lbm if isinstance(stepper, ClosedLattice) else stepper
    u0 = lbm.initial_state()
    u, _ = run_blocks(stepper, u0, 0.0, cycles - 1, steps, lambda u, t: None)
    t0 = (cycles - 1) * lbm.model.inflow.period

    def observe(v, t):
        vel = stepper.velocity(v, t)
        wss = stepper.wall_shear_stress(v, wall, t)
        mach = math.sqrt(3.0) * jnp.max(jnp.sqrt(jnp.sum(vel * vel, 0))) / lbm.scaling.velocity
        gd = lbm.shear_rate(v, t)
        return vel, wss, mach, gd

    u, (vel, wss, mach, gd) = run_blocks(stepper, u, t0, phases, steps // phases, observe)
    return u, vel, wss, jnp.max(mach), gd


_ADAM = optax.scale_by_adam()


def _combine(trainable, frozen):
    return slp.combine(*[t for t in trainable if t is not None], frozen)


def _lattice_loss(trainable, frozen, u0, target, cells, consts):
    sigma, n_values, lam_c, phases, every, with_net = consts
    st = _combine(trainable, frozen)

    def observe(u, t):
        vel = st.velocity(u, t).reshape(2, -1)[:, cells]
        use = st.closure.usage(u) if st.closure is not None else jnp.zeros(())
        return vel, use

    u_end, (pred, use) = run_blocks(st, u0, 0.0, phases, every, observe, checkpoint=True)
    data = 0.5 * jnp.mean(((pred - target) / sigma) ** 2)
    prior = _log_space_prior(st.lbm.model.rheology) / n_values
    pen = lam_c * jnp.mean(use) if with_net else jnp.zeros(())
    return data + prior + pen, (u_end, data, pen)


@eqx.filter_jit
def _train_step(trainable, state, frozen, u0, target, cells, lr, consts):
    """One cycle with gradients: an Adam step on the closure's weights at learning rate
    ``lr`` (traced, so a schedule does not recompile; a non-finite loss leaves them
    unchanged), and the flat gradient of the loss with respect to the raw θ_s (whose
    Gauss–Newton step the caller takes)."""
    (loss, aux), grads = eqx.filter_value_and_grad(_lattice_loss, has_aux=True)(
        trainable, frozen, u0, target, cells, consts
    )
    net = trainable[1]
    if net is not None:
        upd, state = _ADAM.update(grads[1], state)
        upd = jax.tree_util.tree_map(lambda g: -lr * g, upd)
        new = eqx.apply_updates(net, upd)
        ok = jnp.isfinite(loss)
        net = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, net)
    flat = None if trainable[0] is None else jax.flatten_util.ravel_pytree(grads[0])[0]
    return net, state, loss, aux, flat


@eqx.filter_jit
def _theta_jacobian(theta_s, net, frozen, u0, cells, consts):
    """Forward-mode sensitivities ``∂(observations)/∂(raw θ_s)`` over one cycle from
    ``u0`` (raw = log θ for positive Params), shape ``(n_obs, p)``."""
    _, _, _, phases, every, _ = consts
    flat, unravel = jax.flatten_util.ravel_pytree(theta_s)

    def obs(vec):
        st = _combine((unravel(vec), net), frozen)
        _, pred = run_blocks(st, u0, 0.0, phases, every,
                             lambda u, t: st.velocity(u, t).reshape(2, -1)[:, cells])  # fmt: skip
        return pred.ravel()

    return jax.jacfwd(obs)(flat)


@eqx.filter_jit
def _spin(stepper, u, cycles: int, steps: int):
    return run_blocks(stepper, u, 0.0, cycles, steps, lambda v, t: None)[0]


def _cosine(lr: float, it: int, total: int, alpha: float) -> float:
    c = 0.5 * (1 + math.cos(math.pi * min(it, total) / max(total, 1)))
    return lr * ((1 - alpha) * c + alpha)
