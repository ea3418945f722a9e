"""The neural-field baseline of the aneurysm study: the field and its jitted training and
read-out (velocity on the grid, WSS from its own gradients)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp

from ...models import SidewallAneurysm
from ._lattice import _ADAM


# ====================================================================== neural field
class NeuralField(eqx.Module):
    r"""A neural field of the velocity, ``u(x, y, φ) = U c(x, y) N(x, y, φ)``: an MLP of
    position and harmonics of the cardiac phase ``φ ∈ [0, 1)``, times ``c``, an R-function
    distance to the wall (zero on it: no slip by construction; ``y`` from the lower wall).
    No physical parameters; fitted to the observations alone."""

    mlp: eqx.nn.MLP
    geometry: SidewallAneurysm = eqx.field(static=True)
    length: float = eqx.field(static=True)
    speed_ref: float = eqx.field(static=True)
    harmonics: int = eqx.field(static=True)

    def __call__(self, x, y, phase):
        g = self.geometry
        D, R = g.diameter, g.sac_radius
        xc, yc = g.neck_x, D + math.sqrt(R * R - 0.25 * g.neck_width**2)
        a = y * (D - y) / D
        b = (R * R - (x - xc) ** 2 - (y - yc) ** 2) / (2 * R)
        c = a + b + jnp.sqrt(a * a + b * b + (1e-6 * D) ** 2) - 1e-6 * D
        k = 2 * jnp.pi * jnp.arange(1, self.harmonics + 1) * phase
        z = jnp.concatenate([jnp.stack([2 * x / self.length - 1, 2 * y / D - 1]),
                             jnp.cos(k), jnp.sin(k)])  # fmt: skip
        return self.speed_ref * (4 * c / D) * self.mlp(z)


def _field_loss(f, key, data, consts):
    X, Y, PH, T, cx, cy, phases = data
    sigma, lam_div, scale, batch = consts
    pred = jax.vmap(f)(X, Y, PH)
    fit = 0.5 * jnp.mean(((pred - T) / sigma) ** 2)
    k1, k2 = jax.random.split(key)
    idx = jax.random.randint(k1, (batch,), 0, cx.shape[0])
    ph = phases[jax.random.randint(k2, (batch,), 0, phases.shape[0])]

    def div(x, y, p):
        jac = jax.jacfwd(lambda q: f(q[0], q[1], p))(jnp.stack([x, y]))
        return jac[0, 0] + jac[1, 1]

    d = jax.vmap(div)(cx[idx], cy[idx], ph) * scale
    return fit + lam_div * jnp.mean(d * d)


def _field_step_impl(f, state, key, lr, data, consts):
    loss, g = eqx.filter_value_and_grad(_field_loss)(f, key, data, consts)
    upd, state = _ADAM.update(g, state)
    upd = jax.tree_util.tree_map(lambda u: -lr * u, upd)
    return eqx.apply_updates(f, upd), state, loss


_field_step = eqx.filter_jit(_field_step_impl)
# the same step for an ensemble: fields, Adam states and keys with a leading member axis
_MEMBERS = eqx.if_array(0)
_fields_step = eqx.filter_jit(
    eqx.filter_vmap(_field_step_impl, in_axes=(_MEMBERS, _MEMBERS, 0, None, None, None))
)


@eqx.filter_jit
def _field_on_grid(f, X, Y, phases):
    return jax.vmap(jax.vmap(f, (0, 0, None)), (None, None, 0))(X, Y, phases)


_fields_on_grid = eqx.filter_jit(
    eqx.filter_vmap(_field_on_grid, in_axes=(_MEMBERS, None, None, None))
)


@eqx.filter_jit
def _field_wss(f, pts, normals, tangents, phases, rheology):
    def traction(p, n, t, ph):
        J = jax.jacfwd(lambda q: f(q[0], q[1], ph))(p)
        S = 0.5 * (J + J.T)
        gd = jnp.sqrt(2.0 * jnp.sum(S * S) + 1e-30)
        return t @ ((2.0 * rheology.viscosity(gd) * S) @ n)

    return jax.vmap(jax.vmap(traction, (0, 0, 0, None)), (None, None, None, 0))(
        pts, normals, tangents, phases
    )
