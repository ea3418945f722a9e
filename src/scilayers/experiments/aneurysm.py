r"""Cerebral aneurysm study (issue 10 §2): a patient's blood rheology from 4-D-flow-MRI-like
velocity data, and the wall shear stress (WSS) in the sac.

The question a clinician asks of patient-specific CFD is the time-averaged WSS (TAWSS) and
the oscillatory shear index (OSI) on the aneurysm sac. Both depend on the blood's
shear-thinning rheology, whose parameters vary between patients, and on the resolution of
the solver. This study:

- **Truth**: the Carreau fluid with a "patient's" θ_s (`true_*`, away from the textbook
  values) in a side-wall aneurysm, solved by the D2Q9 lattice Boltzmann scheme on a lattice
  `refine` times finer than the models' (acoustic scaling: ``dx`` and ``dt`` both divided),
  run to its periodic state; its last cycle is recorded at `record_phases` phases.
- **Observations** (4-D flow MRI): the truth averaged over the coarse cells (voxels) of a
  sub-grid (every `obs_stride` cells of the lumen and sac), at `obs_phases` phases of the
  last cycle, with Gaussian noise of standard deviation `noise` × the peak centreline
  inflow speed.
- **Methods** (the coarse lattice, ``cells_across`` cells across the vessel):
  ``pure_physics`` (Newtonian, μ = 0.0035 Pa s, the clinical default), ``carreau_prior``
  (Cho & Kensey 1991), ``pure_physics_calibrated`` (Carreau θ_s fitted to the data),
  ``hybrid_joint`` (θ_s and a near-wall closure fitted together), ``sequential_hybrid``
  (θ_s calibrated first, then the closure with θ_s fixed), ``neural_field`` (an MLP of
  position and phase fitted to the data with a soft divergence penalty; no-slip by
  construction; WSS from its own gradients with the Cho & Kensey viscosity) and the
  reference ``obs_mean`` (the time mean of the observations).
- **Training**: each iteration runs one cardiac cycle with gradients (blocks of the
  cycle recomputed in the backward pass, `jax.checkpoint`); θ_s (4 numbers, log) take
  damped Gauss–Newton steps, the gradient preconditioned by the Gauss–Newton matrix of
  the data and prior (forward-mode sensitivities of the observations, refreshed every few
  iterations; Adam, tried first, was still wandering along the sloppy direction after 16
  cycles), the closure's weights Adam steps, both from the same reverse-mode gradient.
  Each cycle starts from the end state of the previous one, relaxed by one cycle without
  gradient after a θ_s step — a periodic state without a spin-up per iteration (a
  truncated gradient: the dependence of the initial state on θ is dropped; at the truth,
  noise-free, it is zero, as is the full gradient). The loss is the data misfit over σ²
  (mean), a Gaussian prior on log θ_s (the Params' log-normal priors: MAP, so directions
  the data do not see stay at the textbook values), and for the hybrids
  ``lambda_closure`` × the mean square of the closure's force in units of its bound.
- **Closure** (`WallClosure`): a body force ``F = −ρ b(x) K u`` added to the coarse
  lattice's collision (Guo forcing), where ``K`` (2×2, rates in 1/s, bounded by
  ``rate_max``) is a small MLP of local features (distance to the true wall, how far the
  lattice's staircase wall is from it, the wall normal, speed, shear rate) and
  ``b(d)`` (zero beyond 3 cells) confines it to the cells next to the wall, where a coarse
  lattice misplaces the curved wall. It vanishes at rest and starts at zero. Identifiability of
  θ_s against the closure: the closure acts only near walls, sees no time, and is
  penalised; θ_s must explain the bulk.
- **Metrics**, per evaluation set: velocity MSE on the coarse grid against the truth
  averaged over coarse cells (``{s}_mse``, ``{s}_nmse``), RMSE at the observation points
  against the noise-free truth, TAWSS error in the sac (relative L2 along the sac wall of
  the profiles smoothed over one coarse cell of arc length, the neck corners — where WSS
  is singular — left out), the error of the sac-averaged TAWSS, the OSI error; θ_s errors
  and the errors of the learned viscosity μ(γ̇) at 1, 10 and 100 /s; the Fisher
  information of the observations for the Carreau parameters, and by the delta method
  for those viscosities and for ``K = (μ0 − μ∞) λ^(n−1)`` (which of them the data
  identify).
- **Out of domain** (never trained on): a larger sac with a wider neck (``ood_sac``), and a
  higher heart rate (``ood_hr``); learned θ_s and closure are carried over unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from .. import params as slp
from ..metrics import summary
from ..models import Carreau, IncompressibleFlow2D, Newtonian, SidewallAneurysm, Waveform
from ..models._rheology import BLOOD_DENSITY, CHO_KENSEY_1991
from ..params import LogNormal
from ..solvers import LatticeBoltzmann, tawss_osi
from ..solvers._lbm import CX, CY
from ._common import RunCache, environment, write_json
from ._study import AbstractStudy

CARREAU = ("mu_0", "mu_inf", "lam", "n")
NEWTONIAN_MU = 0.0035

#: Methods in table order, with their labels; ``obs_mean`` is a reference.
METHODS = {
    "pure_physics": "Newtonian blood, μ = 0.0035 Pa s (clinical default)",
    "carreau_prior": "Carreau at Cho & Kensey (1991)",
    "pure_physics_calibrated": "Carreau θ_s calibrated to the MRI data",
    "hybrid_joint": "Carreau θ_s + wall closure, jointly",
    "sequential_hybrid": "calibrated θ_s, then the wall closure",
    "neural_field": "neural field of the MRI data",
    "obs_mean": "time mean of the observations",
}
REFERENCES = ("obs_mean",)
SHEAR_RATES = (1.0, 10.0, 100.0)  # 1/s: the sac, the thinning range, the vessel wall
DETERMINISTIC = ("pure_physics", "carreau_prior")  # use neither data nor the seed
TRAINED = ("pure_physics_calibrated", "hybrid_joint", "sequential_hybrid", "neural_field")


# =============================================================================== config
@dataclass(frozen=True)
class AneurysmConfig:
    """The aneurysm study's configuration (SI units). See the module docstring.

    **Flow and geometry**: `waveform` (an openBF case under ``hemodynamics/`` whose inflow
    shape is used — the common carotid artery of Boileau et al. 2015 by default — or
    ``"synthetic"``, a three-harmonic cerebral-like waveform that needs no data), rescaled
    to `mean_velocity` (m/s) and `period` (s); vessel `diameter`, domain `length`, sac
    `sac_radius` and `neck_width` (m). Coarse lattice: `cells_across` cells across the
    vessel, `steps_per_cycle` steps per period; the truth's lattice is `refine` times
    finer (``refine = 1``: the truth on the models' own lattice, no model error).
    `truth_cycles` / `eval_cycles`: cycles run from rest (the last one recorded, at
    `record_phases` phases); `wall_points` points on the sac wall. `wall`: the solver's
    no-slip walls for the truth and every lattice model, ``"bouzidi"`` (default:
    interpolated bounce-back at the analytic wall, second order) or ``"halfway"``
    (bounce-back on the cell faces, a staircase sac wall).

    **Truth**: `true_mu_0`, `true_mu_inf` (Pa s), `true_lam` (s), `true_n`.

    **Observations**: every `obs_stride`-th coarse cell in x and y, `obs_phases` phases
    (dividing `record_phases`), noise std `noise` × the peak centreline inflow speed.

    **Out of domain**: `ood` names the sets (``"sac"``: `ood_sac_radius`,
    `ood_neck_width`; ``"hr"``: `ood_period`).

    **Training** (every method the same budget): `iterations` cycles with gradients after
    `spinup_cycles` cycles without. θ_s (log) by damped Gauss–Newton: each step
    ``δ = −(H + μ diag H)⁻¹ ∇L`` with the Gauss–Newton matrix ``H`` of the data and prior
    (forward-mode sensitivities of the observations, refreshed every `gn_refresh`
    iterations), damping `gn_damping`, steps clipped to `gn_max_step` per parameter,
    followed by `gn_relax` cycles without gradient (the state relaxes to the new θ_s);
    the closure by Adam at `lr_net`, cosine-decayed to a fifth. Closure: `closure_width`
    hidden units (two layers), largest rate `closure_rate` (1/s), penalty
    `lambda_closure`. Neural field:
    `nf_width` × `nf_depth`, `nf_harmonics` harmonics of the phase, `nf_iterations` Adam
    steps at `nf_lr`, divergence penalty `nf_lambda_div`, `nf_batch` collocation points.

    `methods`: the methods run (default all); `max_seeds`: at most this many of the
    requested seeds are run (``None``: all), so the quick preset fits its budget;
    `uq`: only ``"none"`` (the study has no uncertainty block).
    """

    preset: str = "quick"
    waveform: str = "boileau2015/cca"
    mean_velocity: float = 0.04
    period: float = 0.8
    diameter: float = 4e-3
    length: float = 24e-3
    sac_radius: float = 3e-3
    neck_width: float = 4e-3
    cells_across: int = 12
    steps_per_cycle: int = 2560
    refine: int = 2
    truth_cycles: int = 4
    eval_cycles: int = 3
    record_phases: int = 16
    wall_points: int = 48
    wall: str = "bouzidi"
    true_mu_0: float = 0.08
    true_mu_inf: float = 0.0042
    true_lam: float = 2.2
    true_n: float = 0.42
    obs_stride: int = 2
    obs_phases: int = 8
    noise: float = 0.03
    ood: tuple[str, ...] = ("sac", "hr")
    ood_sac_radius: float = 3.6e-3
    ood_neck_width: float = 5e-3
    ood_period: float = 0.6
    iterations: int = 10
    spinup_cycles: int = 2
    gn_damping: float = 1e-2
    gn_max_step: float = 0.2
    gn_refresh: int = 4
    gn_relax: int = 1
    lr_net: float = 0.05
    closure_width: int = 12
    closure_rate: float = 30.0
    lambda_closure: float = 1.0
    nf_width: int = 48
    nf_depth: int = 3
    nf_harmonics: int = 3
    nf_iterations: int = 1500
    nf_lr: float = 3e-3
    nf_lambda_div: float = 0.1
    nf_batch: int = 1024
    methods: tuple[str, ...] = tuple(METHODS)
    max_seeds: int | None = 1
    uq: str = "none"

    def __post_init__(self):
        if self.uq != "none":
            raise ValueError(
                f"the aneurysm study has no uncertainty block; use --uq none, got {self.uq!r}."
            )
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}.")
        need = {"hybrid_joint": (), "sequential_hybrid": ("pure_physics_calibrated",)}
        for m, deps in need.items():
            if m in self.methods and any(d not in self.methods for d in deps):
                raise ValueError(f"method {m} needs {deps} in methods.")
        if set(self.ood) - {"sac", "hr"}:
            raise ValueError(f"ood sets are 'sac' and 'hr', got {self.ood}.")
        if self.record_phases % self.obs_phases:
            raise ValueError(
                f"obs_phases ({self.obs_phases}) must divide record_phases ({self.record_phases})."
            )
        if self.steps_per_cycle % self.record_phases:
            raise ValueError(
                f"record_phases ({self.record_phases}) must divide steps_per_cycle "
                f"({self.steps_per_cycle})."
            )
        if self.wall not in ("bouzidi", "halfway"):
            raise ValueError(f"wall must be 'bouzidi' or 'halfway', got {self.wall!r}.")
        if self.refine < 1 or self.cells_across < 4:
            raise ValueError("refine must be >= 1 and cells_across >= 4.")
        if self.max_seeds is not None and self.max_seeds < 1:
            raise ValueError(f"max_seeds must be >= 1 or None, got {self.max_seeds}.")

    def replace(self, **changes) -> AneurysmConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def true_theta(self) -> dict[str, float]:
        return {k: getattr(self, f"true_{k}") for k in CARREAU}

    @property
    def dx(self) -> float:
        return self.diameter / self.cells_across

    @property
    def dt(self) -> float:
        return self.period / self.steps_per_cycle


PRESETS = {
    "quick": AneurysmConfig(),
    "full": AneurysmConfig(
        preset="full", cells_across=16, steps_per_cycle=3392, record_phases=32,
        obs_phases=16, wall_points=64, truth_cycles=5, eval_cycles=4, iterations=60,
        closure_width=16, nf_iterations=4000, max_seeds=None,
    ),
}  # fmt: skip


# ============================================================================== cases
@dataclass(frozen=True)
class Case:
    """One evaluation set: a geometry and a heart period (s)."""

    name: str
    label: str
    geometry: SidewallAneurysm
    period: float


@dataclass(frozen=True)
class Lattice:
    """A case on a lattice: the flow model factory's fixed parts."""

    case: Case
    dx: float
    dt: float
    steps: int  # per cycle
    waveform: Waveform
    mask: np.ndarray
    wall: str = "bouzidi"

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    def model(self, rheology) -> IncompressibleFlow2D:
        return IncompressibleFlow2D(rheology, self.case.geometry, self.dx, rho=BLOOD_DENSITY,
                                    inflow=self.waveform)  # fmt: skip

    def stepper(self, rheology) -> LatticeBoltzmann:
        return LatticeBoltzmann(self.model(rheology), self.dt, wall=self.wall)

    def sac_wall(self, n: int):
        return self.case.geometry.sac_wall(self.dx, n)


def synthetic_waveform(period: float = 1.0) -> Waveform:
    """A cerebral-like inflow (mean 1): systolic peak ≈ 1.8, diastolic flow ≈ 0.6."""
    t = np.linspace(0.0, period, 65)[:-1]
    p = 2 * np.pi * t / period
    v = 1.0 + 0.55 * np.sin(p - 0.3) + 0.25 * np.sin(2 * p - 1.2) + 0.1 * np.sin(3 * p - 2.0)
    return Waveform(tuple(t), tuple(v), period)


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


@eqx.filter_jit
def _field_step(f, state, key, lr, data, consts):
    loss, g = eqx.filter_value_and_grad(_field_loss)(f, key, data, consts)
    upd, state = _ADAM.update(g, state)
    upd = jax.tree_util.tree_map(lambda u: -lr * u, upd)
    return eqx.apply_updates(f, upd), state, loss


@eqx.filter_jit
def _field_on_grid(f, X, Y, phases):
    return jax.vmap(jax.vmap(f, (0, 0, None)), (None, None, 0))(X, Y, phases)


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


def _cosine(lr: float, it: int, total: int, alpha: float) -> float:
    c = 0.5 * (1 + math.cos(math.pi * min(it, total) / max(total, 1)))
    return lr * ((1 - alpha) * c + alpha)


def restrict(fine: np.ndarray, r: int, shape: tuple[int, int]) -> np.ndarray:
    """Average a fine-lattice field (``(..., nx·r, ny_f)``, zero in solid cells) over the
    coarse cells of ``shape``: both lattices put the vessel's lower wall at ``y = dx`` of
    their own, so coarse row ``j`` holds fine rows ``(j−1)r+1 … jr``."""
    nx, ny = shape
    pad = np.zeros(fine.shape[:-2] + (nx * r, ny * r), dtype=float)
    rows = min(fine.shape[-1], ny * r - (r - 1))
    pad[..., :, r - 1 : r - 1 + rows] = fine[..., : nx * r, :rows]
    return pad.reshape(fine.shape[:-2] + (nx, r, ny, r)).mean(axis=(-3, -1))


# ====================================================================== geometry features
def wall_distance(geo: SidewallAneurysm, x: np.ndarray, y: np.ndarray):
    """Distance (m) from points ``(x, y)`` — ``y`` measured from the vessel's lower wall —
    to the analytic wall of the side-wall aneurysm, and the unit normal of the nearest
    wall point towards the point: ``(d, n_x, n_y)``."""
    D, R, w, xc = geo.diameter, geo.sac_radius, geo.neck_width, geo.neck_x
    yc = D + math.sqrt(R * R - 0.25 * w * w)
    best = np.full(x.shape, np.inf)
    nx_, ny_ = np.zeros_like(x), np.zeros_like(x)

    def take(d, qx, qy):
        nonlocal best
        better = d < best
        norm = np.maximum(np.hypot(x - qx, y - qy), 1e-30)
        nx_[better] = ((x - qx) / norm)[better]
        ny_[better] = ((y - qy) / norm)[better]
        best = np.where(better, d, best)

    take(np.abs(y), x, np.zeros_like(y))  # lower wall
    inside = np.abs(x - xc) < 0.5 * w  # the neck: nearest upper-wall point is a corner
    qx = np.where(inside, xc + np.where(x >= xc, 0.5, -0.5) * w, x)
    take(np.hypot(x - qx, y - D), qx, np.full_like(y, D))
    r = np.maximum(np.hypot(x - xc, y - yc), 1e-30)
    qx, qy = xc + R * (x - xc) / r, yc + R * (y - yc) / r
    take(np.where(qy >= D, np.abs(R - r), np.inf), qx, qy)
    return best, nx_, ny_


def closure_geometry(lat: Lattice):
    """Static features ``(4, nx, ny)`` and band ``(nx, ny)`` of `WallClosure` on a lattice."""
    mask, dx = lat.mask, lat.dx
    nx, ny = mask.shape
    X, Y = np.meshgrid((np.arange(nx) + 0.5) * dx, (np.arange(ny) + 0.5) * dx, indexing="ij")
    d, n1, n2 = wall_distance(lat.case.geometry, X, Y - dx)
    # distance to the lattice's own (staircase) wall: to the nearest solid cell's square
    solid = np.argwhere(~mask)
    fluid = np.argwhere(mask)
    ds = np.full(mask.shape, np.inf)
    for a in range(0, len(fluid), 512):
        f = fluid[a : a + 512]
        px, py = (f[:, 0:1] + 0.5), (f[:, 1:2] + 0.5)
        gx = np.maximum(np.maximum(solid[None, :, 0] - px, px - solid[None, :, 0] - 1), 0)
        gy = np.maximum(np.maximum(solid[None, :, 1] - py, py - solid[None, :, 1] - 1), 0)
        ds[f[:, 0], f[:, 1]] = np.min(np.hypot(gx, gy), axis=1) * dx
    stair = np.clip((ds - d) / dx, -1.0, 1.0)
    feats = np.stack([np.exp(-d / dx), stair, n1, n2])
    feats = np.where(mask[None], feats, 0.0)
    band = np.where(mask & (d < 3 * dx), np.exp(-d / (1.5 * dx)) - math.exp(-2.0), 0.0)
    return feats, band


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


# ================================================================================= study
class AneurysmStudy(AbstractStudy):
    """Cerebral aneurysm: Carreau θ_s from MRI-like velocities, WSS in the sac (issue 10)."""

    name = "aneurysm"
    title = "Cerebral aneurysm: non-Newtonian blood and wall shear stress"
    description = (
        "side-wall aneurysm, 2-D lattice Boltzmann: learn the Carreau θ_s of a patient's "
        "blood from 4-D-flow-MRI-like velocities with a near-wall closure; clinical "
        "metric: TAWSS in the sac; out of domain: larger sac, higher heart rate"
    )
    presets: ClassVar[dict] = PRESETS
    field_kind = "2d"
    cfg: AneurysmConfig

    def __init__(self, cfg: AneurysmConfig, data_dir: Path | None = None):
        super().__init__(cfg, data_dir)
        self._wave: Waveform | None = None
        self._lattices: dict = {}

    # -- the protocol's hooks -----------------------------------------------------------
    def problem(self, cache_dir, progress):
        raise NotImplementedError(
            "the aneurysm study is a calibration study outside the forecast protocol; it "
            "runs through its own AneurysmStudy.run (scilayers run aneurysm)."
        )

    def truth_model(self, eval_set=None):
        """The truth's stepper: the Carreau fluid with the patient's θ_s on the fine lattice."""
        fine = self.lattice(self.cases()[0], self.cfg.refine)
        return fine.stepper(Carreau(**self.cfg.true_theta))

    def physics(self, eval_set=None):
        """The coarse stepper with the textbook (Cho & Kensey) Carreau θ_s."""
        return self.lattice(self.cases()[0]).stepper(Carreau())

    def closure(self, key, odd: bool = False):
        """The hybrid's `WallClosure` on the training lattice (state → body force field)."""
        del odd
        return self._closure(key, self.lattice(self.cases()[0]))

    def emulator(self, key):
        raise NotImplementedError(
            "the aneurysm study has no time-stepping emulator; its neural baseline is a "
            "neural field of the observations (NeuralField)."
        )

    # -- cases and lattices ------------------------------------------------------------
    def base_waveform(self) -> Waveform:
        """The inflow's shape (any mean and period; `lattice` rescales it)."""
        cfg = self.cfg
        if self._wave is None:
            if cfg.waveform == "synthetic":
                self._wave = synthetic_waveform()
            else:
                from ..data import load_arterial_case

                case = load_arterial_case(cfg.waveform, self.data_dir)
                self._wave = Waveform.from_flow(case.inflow_time, case.inflow_flow,
                                                case.vessels[0].r_prox)  # fmt: skip
        return self._wave

    def cases(self) -> list[Case]:
        cfg = self.cfg
        geo = SidewallAneurysm(cfg.diameter, cfg.length, cfg.sac_radius, cfg.neck_width)
        out = [Case("id", "training geometry and heart rate", geo, cfg.period)]
        if "sac" in cfg.ood:
            big = SidewallAneurysm(cfg.diameter, cfg.length, cfg.ood_sac_radius,
                                   cfg.ood_neck_width)  # fmt: skip
            out.append(Case("ood_sac", f"larger sac (R = {cfg.ood_sac_radius * 1e3:g} mm, "
                            f"neck {cfg.ood_neck_width * 1e3:g} mm)", big, cfg.period))  # fmt: skip
        if "hr" in cfg.ood:
            out.append(Case("ood_hr", f"heart rate {60 / cfg.ood_period:.0f} bpm (trained at "
                            f"{60 / cfg.period:.0f})", geo, cfg.ood_period))  # fmt: skip
        return out

    def lattice(self, case: Case, refine: int = 1) -> Lattice:
        """``case`` on the coarse lattice (``refine = 1``) or one ``refine`` times finer."""
        if (case, refine) not in self._lattices:
            self._lattices[(case, refine)] = self._make_lattice(case, refine)
        return self._lattices[(case, refine)]

    def _make_lattice(self, case: Case, refine: int) -> Lattice:
        cfg = self.cfg
        dx, dt = cfg.dx / refine, cfg.dt / refine
        steps = int(round(case.period / dt))
        if abs(steps * dt - case.period) > 1e-6 * case.period or steps % (
            cfg.record_phases * refine
        ):
            raise ValueError(
                f"the period {case.period} s of set {case.name} is not a whole number of "
                f"{cfg.record_phases} blocks of steps dt = {dt:.4g} s; change the period or "
                f"steps_per_cycle."
            )
        wave = self.base_waveform().rescaled(mean=cfg.mean_velocity, period=case.period)
        return Lattice(case, dx, dt, steps, wave, case.geometry.mask(dx), cfg.wall)

    @property
    def speed_ref(self) -> float:
        """Peak centreline inflow speed (m/s): 1.5 × the waveform's peak mean velocity."""
        cfg = self.cfg
        return 1.5 * self.base_waveform().rescaled(mean=cfg.mean_velocity).peak

    def _closure(self, key, lat: Lattice) -> WallClosure:
        cfg = self.cfg
        mlp = eqx.nn.MLP(6, 4, cfg.closure_width, 2, activation=jnp.tanh, key=key)
        last = mlp.layers[-1]
        mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                          (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))  # fmt: skip
        feats, band = closure_geometry(lat)
        return WallClosure(mlp, feats, band, rate_max=cfg.closure_rate, rho=BLOOD_DENSITY,
                           velocity_unit=lat.dx / lat.dt, speed_ref=self.speed_ref,
                           shear_ref=self.speed_ref / cfg.diameter, dt=lat.dt)  # fmt: skip

    def _move_closure(self, closure: WallClosure | None, lat: Lattice):
        if closure is None:
            return None
        feats, band = closure_geometry(lat)
        return closure.on(feats, band, lat.dt, lat.dx / lat.dt)

    # -- truth -------------------------------------------------------------------------
    def _truth_key(self) -> str:
        cfg = self.cfg
        keep = {k: v for k, v in cfg.to_dict().items() if k in (
            "waveform", "mean_velocity", "period", "diameter", "length", "sac_radius",
            "neck_width", "cells_across", "steps_per_cycle", "refine", "truth_cycles",
            "record_phases", "wall_points", "wall", "true_mu_0", "true_mu_inf", "true_lam",
            "true_n", "ood", "ood_sac_radius", "ood_neck_width", "ood_period")}  # fmt: skip
        keep["dtype"] = str(jnp.result_type(float))
        keep["version"] = 1
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    def truth(self, cache_dir: Path, log) -> dict[str, dict[str, np.ndarray]]:
        """The fine-lattice truth of every case, restricted to the coarse lattice (cached
        in ``cache_dir`` under a hash of the config)."""
        cfg = self.cfg
        path = Path(cache_dir) / f"aneurysm-truth-{self._truth_key()}.npz"
        if path.is_file():
            with np.load(path) as f:
                flat = {k: f[k] for k in f.files}
            log(f"aneurysm: truth from cache {path}")
            out: dict[str, dict[str, np.ndarray]] = {}
            for k, v in flat.items():
                s, _, name = k.partition("/")
                out.setdefault(s, {})[name] = v
            return out
        out = {}
        for case in self.cases():
            t0 = time.perf_counter()
            coarse = self.lattice(case)
            fine = self.lattice(case, cfg.refine)
            step = fine.stepper(Carreau(**cfg.true_theta))
            wall = fine.sac_wall(cfg.wall_points)
            _, vel, wss, mach, gd = _record(step, cfg.truth_cycles, fine.steps,
                                            cfg.record_phases, wall)  # fmt: skip
            vel, gd = np.asarray(vel, float), np.asarray(gd, float)
            r = cfg.refine
            valid = restrict(fine.mask.astype(float), r, coarse.shape) > 1 - 1e-9
            sac_f = case.geometry.sac_mask(fine.dx)
            out[case.name] = {
                "vel": restrict(vel, r, coarse.shape),
                "wss": np.asarray(wss, float),
                "valid": valid & coarse.mask,
                "mach": np.asarray(float(mach)),
                "shear_sac_median": np.asarray(np.median(gd[:, sac_f])),
                "shear_wall_max": np.asarray(gd.max()),
            }
            log(f"aneurysm: truth {case.name} on {fine.shape} ({cfg.truth_cycles} cycles) in "
                f"{time.perf_counter() - t0:.0f} s, max Mach {float(mach):.3f}")  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{f"{s}/{k}": v for s, d in out.items() for k, v in d.items()})
        tmp.replace(path)
        return out

    def observation_cells(self, lat: Lattice) -> np.ndarray:
        """Flat indices of the observed coarse cells (voxels): every `obs_stride`-th cell in
        x and y that is fluid, away from the inlet and outlet columns."""
        s = self.cfg.obs_stride
        nx, ny = lat.shape
        sel = np.zeros(lat.shape, bool)
        sel[2 : nx - 2 : s, 1::s] = True
        sel[:, :] &= lat.mask
        return np.flatnonzero(sel)

    def observations(self, truth_id: dict, lat: Lattice, seed: int):
        """``(noisy (P_obs, 2, n), noise-free (P_obs, 2, n), cells)`` of the training set."""
        cfg = self.cfg
        cells = self.observation_cells(lat)
        every = cfg.record_phases // cfg.obs_phases
        vel = truth_id["vel"][every - 1 :: every].reshape(cfg.obs_phases, 2, -1)[:, :, cells]
        rng = np.random.default_rng(10_000 + seed)
        noisy = vel + cfg.noise * self.speed_ref * rng.standard_normal(vel.shape)
        return noisy, vel, cells

    # -- training -----------------------------------------------------------------------
    def _sigma(self) -> float:
        """The σ the loss assumes (the noise level, floored at 1 % of the peak speed)."""
        return max(self.cfg.noise, 0.01) * self.speed_ref

    def train_lattice(self, stepper: ClosedLattice, lat: Lattice, obs, cells, *,
                      train_theta: bool, train_net: bool, seed: int, log, tag: str):  # fmt: skip
        """`iterations` cycles of Gauss–Newton on θ_s and Adam on the closure (see the
        module docstring and `AneurysmConfig`). Returns the trained stepper, the θ_s
        history, the loss history and seconds."""
        cfg = self.cfg
        t_start = time.perf_counter()
        if not train_theta:
            stepper = eqx.tree_at(lambda s: s.lbm.model.rheology, stepper,
                                  slp.fix(stepper.lbm.model.rheology))  # fmt: skip
        theta_s, theta_ml, frozen = slp.partition(stepper)
        if not train_net:
            frozen = slp.combine(theta_ml, frozen)
            theta_ml = None
        if not train_theta:
            theta_s = None
        sigma = self._sigma()
        n_values = float(np.size(obs))
        consts = (sigma, n_values, float(cfg.lambda_closure), cfg.obs_phases,
                  lat.steps // cfg.obs_phases, bool(train_net))  # fmt: skip
        target, cells_j = jnp.asarray(obs), jnp.asarray(cells)
        state = None if theta_ml is None else _ADAM.init(theta_ml)
        if train_theta:
            _, unravel = jax.flatten_util.ravel_pytree(theta_s)
            prec, _ = _prior_vectors(theta_s)
        u = _spin(stepper, stepper.lbm.initial_state(), cfg.spinup_cycles, lat.steps)
        history = {k: [] for k in slp.values(stepper.lbm.model.rheology)}
        losses = []
        gram = None
        for it in range(cfg.iterations):
            if train_theta and it % cfg.gn_refresh == 0:
                J = np.asarray(_theta_jacobian(theta_s, theta_ml, frozen, u, cells_j, consts))
                gram = J.T @ J / sigma**2
            lr = jnp.asarray(_cosine(cfg.lr_net, it, cfg.iterations, 0.2))
            theta_ml, state, loss, (u, data, pen), grad = _train_step(
                (theta_s, theta_ml), state, frozen, u, target, cells_j, lr, consts)  # fmt: skip
            loss = float(loss)
            if not math.isfinite(loss):
                log(f"aneurysm: {tag} seed {seed}: non-finite loss at iteration {it}; stopped")
                break
            if train_theta:  # damped Gauss–Newton on raw θ_s (the gradient is of L/N)
                H = gram + np.diag(prec)
                step = -np.linalg.solve(H + cfg.gn_damping * np.diag(np.diag(H)),
                                        n_values * np.asarray(grad, float))  # fmt: skip
                step *= min(1.0, cfg.gn_max_step / max(np.max(np.abs(step)), 1e-30))
                flat = jax.flatten_util.ravel_pytree(theta_s)[0]
                theta_s = unravel(flat + jnp.asarray(step, flat.dtype))
                if cfg.gn_relax:
                    u = _spin(_combine((theta_s, theta_ml), frozen), u, cfg.gn_relax, lat.steps)
            losses.append(loss)
            cur = _combine((theta_s, theta_ml), frozen)
            for k, v in slp.values(cur.lbm.model.rheology).items():
                history[k].append(float(v))
            if it % 4 == 0 or it == cfg.iterations - 1:
                th = ", ".join(f"{k} {v[-1]:.4g}" for k, v in history.items())
                log(f"aneurysm: {tag} seed {seed} it {it}: loss {loss:.4g} (data "
                    f"{float(data):.4g}, closure {float(pen):.3g}); {th}")  # fmt: skip
        trainable = (theta_s, theta_ml)
        trained = _combine(trainable, frozen)
        if not train_theta:  # free the Params again (their values are kept bit for bit)
            trained = eqx.tree_at(lambda s: s.lbm.model.rheology, trained,
                                  slp.fix(trained.lbm.model.rheology, False))  # fmt: skip
        return trained, history, losses, time.perf_counter() - t_start

    def train_field(self, lat: Lattice, obs, cells, seed: int, log):
        """Fit `NeuralField` to the observations (Adam, a soft divergence penalty on random
        fluid cells at the observed phases)."""
        cfg = self.cfg
        t_start = time.perf_counter()
        key = jax.random.key(seed)
        mlp = eqx.nn.MLP(2 + 2 * cfg.nf_harmonics, 2, cfg.nf_width, cfg.nf_depth,
                         activation=jnp.tanh, key=key)  # fmt: skip
        field = NeuralField(mlp, lat.case.geometry, cfg.length, self.speed_ref, cfg.nf_harmonics)
        nx, ny = lat.shape
        ci, cj = np.unravel_index(cells, (nx, ny))
        ox, oy = (ci + 0.5) * lat.dx, (cj - 0.5) * lat.dx
        phases = (np.arange(cfg.obs_phases) + 1.0) / cfg.obs_phases
        P, n = len(phases), len(cells)
        X = jnp.asarray(np.tile(ox, P))
        Y = jnp.asarray(np.tile(oy, P))
        PH = jnp.asarray(np.repeat(phases, n))
        T = jnp.asarray(np.transpose(obs, (0, 2, 1)).reshape(-1, 2))
        fi, fj = np.nonzero(lat.mask)
        cx, cy = jnp.asarray((fi + 0.5) * lat.dx), jnp.asarray((fj - 0.5) * lat.dx)
        data = (X, Y, PH, T, cx, cy, jnp.asarray(phases))
        consts = (self._sigma(), float(cfg.nf_lambda_div), cfg.diameter / self.speed_ref,
                  cfg.nf_batch)  # fmt: skip
        state = _ADAM.init(eqx.filter(field, eqx.is_inexact_array))
        losses = []
        for it in range(cfg.nf_iterations):
            lr = jnp.asarray(_cosine(cfg.nf_lr, it, cfg.nf_iterations, 0.05))
            field, state, loss = _field_step(field, state, jax.random.fold_in(key, it), lr,
                                             data, consts)  # fmt: skip
            if it % 100 == 0 or it == cfg.nf_iterations - 1:
                losses.append(float(loss))
        log(f"aneurysm: neural_field seed {seed}: loss {losses[0]:.4g} -> {losses[-1]:.4g}")
        return field, losses, time.perf_counter() - t_start

    # -- evaluation --------------------------------------------------------------------
    def evaluate_lattice(self, rheology, closure, case: Case):
        """Run the coarse model (rheology, closure moved onto the case) from rest; the
        last cycle's velocity (P, 2, nx, ny) and sac WSS (P, W)."""
        cfg = self.cfg
        lat = self.lattice(case)
        st = ClosedLattice(lat.stepper(rheology), self._move_closure(closure, lat))
        _, vel, wss, mach, _ = _record(st, cfg.eval_cycles, lat.steps, cfg.record_phases,
                                       lat.sac_wall(cfg.wall_points))  # fmt: skip
        return np.asarray(vel, float), np.asarray(wss, float), float(mach)

    def evaluate_field(self, field: NeuralField, case: Case):
        """The neural field on the coarse grid of ``case`` (same geometry only) at the
        recorded phases, and its WSS on the sac wall from its own gradients with the Cho &
        Kensey viscosity."""
        cfg = self.cfg
        lat = self.lattice(case)
        nx, ny = lat.shape
        X, Y = np.meshgrid((np.arange(nx) + 0.5) * lat.dx, (np.arange(ny) - 0.5) * lat.dx,
                           indexing="ij")  # fmt: skip
        phases = (np.arange(cfg.record_phases) + 1.0) / cfg.record_phases
        vel = np.asarray(_field_on_grid(field, jnp.asarray(X.ravel()), jnp.asarray(Y.ravel()),
                                        jnp.asarray(phases)))  # fmt: skip
        vel = np.transpose(vel, (0, 2, 1)).reshape(len(phases), 2, nx, ny)
        vel = np.where(lat.mask[None, None], vel, 0.0)
        wall = lat.sac_wall(cfg.wall_points)
        pts = np.asarray(wall.points) - np.array([0.0, lat.dx])
        wss = _field_wss(field, jnp.asarray(pts), jnp.asarray(wall.normals),
                         jnp.asarray(wall.tangents), jnp.asarray(phases), Carreau())  # fmt: skip
        return vel, np.asarray(wss, float)

    def scores(self, case: Case, truth: dict, vel, wss) -> tuple[dict, dict]:
        """Metrics (keys without the set prefix) and arrays of one prediction."""
        lat = self.lattice(case)
        tv, valid = truth["vel"], truth["valid"]
        cells = self.observation_cells(lat)
        m: dict[str, float | None] = {}
        arrays: dict[str, np.ndarray] = {}
        if vel is not None:
            err = (vel - tv)[:, :, valid]
            m["mse"] = float(np.mean(err**2))
            m["nmse"] = m["mse"] / float(np.mean(tv[:, :, valid] ** 2))
            flat = (vel - tv).reshape(vel.shape[0], 2, -1)[:, :, cells]
            m["rmse_obs"] = float(np.sqrt(np.mean(flat**2)))
            sac = valid & case.geometry.sac_mask(lat.dx)
            m["rmse_sac"] = float(np.sqrt(np.mean((vel - tv)[:, :, sac] ** 2)))
            arrays["speed"] = np.sqrt(np.sum(vel**2, axis=1)).astype(np.float32)
        if wss is not None:
            ta, osi = (np.asarray(a, float) for a in tawss_osi(wss))
            tt, ot = (np.asarray(a, float) for a in tawss_osi(truth["wss"]))
            S, keep = self.wall_smoothing(lat)
            a, b = (S @ ta)[keep], (S @ tt)[keep]
            m["tawss_err"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
            m["tawss_mean_err"] = float(abs(ta[keep].mean() / tt[keep].mean() - 1.0))
            m["osi_err"] = float(np.mean(np.abs(osi - ot)[keep]))
            arrays["tawss"], arrays["osi"] = ta, osi
        return m, arrays

    def wall_smoothing(self, lat: Lattice):
        """Gaussian smoothing over one coarse cell of arc length along the sac wall, and the
        points more than one coarse cell (of arc) away from the neck corners."""
        cfg = self.cfg
        arc = np.asarray(lat.sac_wall(cfg.wall_points).arclength)
        total = arc[-1] + arc[0]
        S = np.exp(-0.5 * ((arc[:, None] - arc[None, :]) / lat.dx) ** 2)
        S /= S.sum(axis=1, keepdims=True)
        keep = (arc > lat.dx) & (arc < total - lat.dx)
        return S, keep

    # -- identifiability -------------------------------------------------------------------
    def fisher(self, rheology: Carreau, lat: Lattice, cells) -> dict:
        """Fisher information of the observations for log θ_s (Carreau), from their
        sensitivities over one cycle from the periodic state at ``rheology`` (forward mode),
        with the assumed noise σ: eigenvalues, condition number, relative standard errors
        (Cramér–Rao), correlations; a parameter with relative std > 0.1 is flagged as not
        identified within 10 %."""
        cfg = self.cfg
        st0 = ClosedLattice(lat.stepper(rheology))
        theta_s, theta_ml, frozen = slp.partition(st0)
        frozen = slp.combine(theta_ml, frozen)
        vals = slp.values(rheology)
        names = list(vals)
        n_values = float(2 * cfg.obs_phases * len(cells))
        consts = (self._sigma(), n_values, float(cfg.lambda_closure), cfg.obs_phases,
                  lat.steps // cfg.obs_phases, False)  # fmt: skip
        u0 = _spin(st0, st0.lbm.initial_state(), cfg.spinup_cycles + 1, lat.steps)
        J = np.asarray(_theta_jacobian(theta_s, None, frozen, u0, jnp.asarray(cells), consts))
        return fisher_block(J, self._sigma(), names, [float(vals[k]) for k in names])

    # -- the whole study -----------------------------------------------------------------
    def run(self, seeds, out, *, resume=False, progress=True, log=print) -> dict:
        """Truth, every method for every seed (cached in ``OUT/runs``), identifiability,
        figures and ``OUT/results.json`` / ``OUT/arrays.npz``."""
        del progress
        t_start = time.perf_counter()
        cfg = self.cfg
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        asked = list(seeds)
        seeds = asked[: cfg.max_seeds] if cfg.max_seeds is not None else asked
        cache = RunCache(out / "runs")
        truth = self.truth(out.parent / ".cache", log)
        cases = self.cases()
        lat_id = self.lattice(cases[0])
        runs: dict[str, list[tuple[dict, dict]]] = {m: [] for m in METHODS if m in cfg.methods}
        trained: dict[tuple[str, int], object] = {}  # calibrated rheology per seed, this process

        def cached(name, seed):
            return cache.get(name, seed) if resume else None

        for seed in seeds:
            obs, obs_clean, cells = self.observations(truth["id"], lat_id, seed)
            for method in [m for m in METHODS if m in cfg.methods]:
                hit = cached(method, seed)
                if hit is not None:
                    log(f"aneurysm: {method} seed {seed}: cached")
                    runs[method].append(hit)
                    continue
                if method in DETERMINISTIC and runs[method]:  # the same for every seed
                    metrics, arrays = runs[method][0]
                    log(f"aneurysm: {method} seed {seed}: as seed {seeds[0]} (no data, no noise)")
                else:
                    metrics, arrays = self._run_method(method, seed, truth, obs, cells, cases,
                                                       trained, runs, log)  # fmt: skip
                cache.put(method, seed, metrics, arrays)
                runs[method].append((metrics, arrays))
        ident = cached("identifiability", seeds[0])
        carreau_method = next((m for m in ("pure_physics_calibrated", "hybrid_joint")
                               if m in cfg.methods), None)  # fmt: skip
        if ident is None:
            if carreau_method is not None:
                learned = runs[carreau_method][0][0]["theta"]
                rheo = Carreau(**{k: learned[k] for k in CARREAU})
            else:
                rheo = Carreau()
            log("aneurysm: Fisher information of the observations for the Carreau θ_s")
            block = self.fisher(rheo, lat_id, self.observation_cells(lat_id))
            block["at"] = carreau_method or "carreau_prior"
            ident = (block, {})
            cache.put("identifiability", seeds[0], block, {})
        ident = ident[0]
        check = cached("coarse_true_theta", seeds[0])
        if check is None:
            log("aneurysm: the coarse lattice at the true θ_s (premise check)")
            m, a = {}, {}
            for case in cases:
                vel, wss, _ = self.evaluate_lattice(Carreau(**cfg.true_theta), None, case)
                sc, arr = self.scores(case, truth[case.name], vel, wss)
                m.update({f"{case.name}_{k}": v for k, v in sc.items()})
                a.update({f"{k}_{case.name}": v for k, v in arr.items() if k == "tawss"})
            check = (m, a)
            cache.put("coarse_true_theta", seeds[0], m, a)
        results = self.assemble(seeds, asked, runs, truth, ident, check, cases)
        arrays = self.report_arrays(runs, truth, cases, check[1])
        np.savez(out / "arrays.npz", **arrays)
        results["figures"] = self.draw(out, results, arrays, cases)
        results["wall_seconds"] = time.perf_counter() - t_start
        results["targets"] = self.study_targets(results)
        write_json(out / "results.json", results)
        return results

    def _run_method(self, method, seed, truth, obs, cells, cases, trained, runs, log):
        lat = self.lattice(cases[0])
        metrics: dict = {}
        arrays: dict = {}
        rheology, closure, field = None, None, None
        seconds = 0.0
        if method == "pure_physics":
            rheology = Newtonian(NEWTONIAN_MU)
        elif method == "carreau_prior":
            rheology = Carreau()
        elif method in ("pure_physics_calibrated", "hybrid_joint", "sequential_hybrid"):
            key = jax.random.key(seed)
            if method == "sequential_hybrid":
                calibrated = trained.get(("pure_physics_calibrated", seed))
                if calibrated is None:  # from the cache of this seed's calibration
                    th = runs["pure_physics_calibrated"][-1][0]["theta"]
                    calibrated = Carreau(**{k: th[k] for k in CARREAU})
                start = ClosedLattice(lat.stepper(calibrated), self._closure(key, lat))
                train_theta, train_net = False, True
            elif method == "hybrid_joint":
                start = ClosedLattice(lat.stepper(Carreau()), self._closure(key, lat))
                train_theta, train_net = True, True
            else:
                start = ClosedLattice(lat.stepper(Carreau()))
                train_theta, train_net = True, False
            log(f"aneurysm: training {method} seed {seed}")
            st, history, losses, seconds = self.train_lattice(
                start, lat, obs, cells, train_theta=train_theta, train_net=train_net,
                seed=seed, log=log, tag=method)  # fmt: skip
            rheology, closure = st.lbm.model.rheology, st.closure
            if method == "pure_physics_calibrated":
                trained[(method, seed)] = rheology
            metrics["theta_history"] = history
            metrics["losses"] = losses
        elif method == "neural_field":
            field, losses, seconds = self.train_field(lat, obs, cells, seed, log)
            metrics["losses"] = losses
        metrics["train_seconds"] = seconds
        if rheology is not None:
            metrics["theta"] = {k: float(v) for k, v in slp.values(rheology).items()}
        for case in cases:
            t0 = time.perf_counter()
            vel = wss = None
            if rheology is not None:
                vel, wss, mach = self.evaluate_lattice(rheology, closure, case)
                metrics[f"{case.name}_max_mach"] = mach
            elif field is not None and case.geometry == cases[0].geometry:
                vel, wss = self.evaluate_field(field, case)
            elif method == "obs_mean" and case.geometry == cases[0].geometry:
                vel = self.obs_mean_field(obs, cells, lat)
            if vel is None:
                continue
            sc, arr = self.scores(case, truth[case.name], vel, wss)
            metrics.update({f"{case.name}_{k}": v for k, v in sc.items()})
            arrays.update({f"{k}_{case.name}": v for k, v in arr.items()})
            log(f"aneurysm: {method} seed {seed} on {case.name}: "
                + ", ".join(f"{k} {v:.3g}" for k, v in sc.items() if v is not None)
                + f" ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        return metrics, arrays

    def obs_mean_field(self, obs, cells, lat: Lattice):
        """The time mean of the observations, spread over the coarse grid by nearest
        observed cell, constant in time."""
        nx, ny = lat.shape
        mean = obs.mean(axis=0)  # (2, n)
        ci, cj = np.unravel_index(cells, (nx, ny))
        fi, fj = np.nonzero(lat.mask)
        d = (fi[:, None] - ci[None]) ** 2 + (fj[:, None] - cj[None]) ** 2
        near = np.argmin(d, axis=1)
        vel = np.zeros((2, nx, ny))
        vel[:, fi, fj] = mean[:, near]
        return np.broadcast_to(vel, (self.cfg.record_phases, 2, nx, ny)).copy()

    # -- results -----------------------------------------------------------------------
    def assemble(self, seeds, asked, runs, truth, ident, check, cases) -> dict:
        cfg = self.cfg
        names = [c.name for c in cases]
        poorly = set(ident.get("poorly_identified", []))
        methods: dict[str, dict] = {}
        prior = dict(CHO_KENSEY_1991)
        all_keys = list(dict.fromkeys(
            k for per_seed in runs.values() for k in per_seed[0][0]
            if any(k.startswith(f"{s}_") for s in names) and not k.endswith("max_mach")
        ))  # fmt: skip
        for method, per_seed in runs.items():
            entry: dict = {"label": METHODS[method]}
            if method in REFERENCES:
                entry["reference"] = True
            for k in all_keys:  # a metric a method has no value for is left out (—)
                if k in per_seed[0][0]:
                    entry[k] = summary([m.get(k) for m, _ in per_seed])
            theta0 = per_seed[0][0].get("theta")
            if theta0 is not None:
                for g in SHEAR_RATES:
                    true_mu = viscosity(cfg.true_theta, g)
                    entry[f"visc_err_{g:g}"] = summary(
                        [abs(viscosity(m["theta"], g) / true_mu - 1.0) for m, _ in per_seed])
                if set(theta0) == set(CARREAU):
                    true_k = power_law_consistency(cfg.true_theta)
                    entry["K_err"] = summary([abs(power_law_consistency(m["theta"]) / true_k - 1)
                                              for m, _ in per_seed])  # fmt: skip
            if method in TRAINED:
                entry["train_seconds"] = summary([m["train_seconds"] for m, _ in per_seed])
            theta = per_seed[0][0].get("theta")
            if theta is not None and set(theta) == set(CARREAU):
                entry["theta"] = {}
                for k in CARREAU:
                    learned = [m["theta"][k] for m, _ in per_seed]
                    true = cfg.true_theta[k]
                    entry["theta"][k] = {
                        "true": true, "initial": prior[k], "learned": learned,
                        "rel_error": summary([abs(v - true) / true for v in learned]),
                        "identifiable": k not in poorly,
                    }  # fmt: skip
            if "theta_history" in per_seed[0][0] and set(per_seed[0][0]["theta_history"]) == set(
                CARREAU
            ):
                entry["theta_history"] = {
                    k: [m["theta_history"][k] for m, _ in per_seed] for k in CARREAU
                }
            if "losses" in per_seed[0][0] and method != "neural_field":
                finals = [m["losses"][-1] if m["losses"] else None for m, _ in per_seed]
                conv = [_plateau(m["losses"]) for m, _ in per_seed]
                entry["convergence"] = {
                    "criterion": f"fixed budget of {cfg.iterations} cycles; converged = the loss "
                                 "changed < 2 % over the last quarter",
                    "final_loss": summary(finals), "converged": conv,
                    "steps": summary([len(m["losses"]) for m, _ in per_seed]),
                }  # fmt: skip
            methods[method] = entry
        checks = {}
        for s in names:
            t = truth[s]
            checks[f"{s}_max_mach"] = float(t["mach"])
            checks[f"{s}_shear_rate_sac_median"] = float(t["shear_sac_median"])
            checks[f"{s}_shear_rate_max"] = float(t["shear_wall_max"])
            for k in ("tawss_err", "tawss_mean_err", "rmse_sac", "nmse"):
                if f"{s}_{k}" in check[0]:
                    checks[f"coarse_at_true_theta_{s}_{k}"] = check[0][f"{s}_{k}"]
        notes = self.study_notes(seeds, asked, ident, check)
        results = {
            "experiment": self.name,
            "preset": cfg.preset,
            "seeds": list(seeds),
            "config": {**cfg.to_dict(), "derived": self.derived()},
            "environment": environment(),
            "eval_sets": names,
            "field_kind": "2d",
            "methods": methods,
            "truth": {"checks": checks},
            "identifiability": ident,
            "tables": self.study_tables(methods, ident, cases),
            "notes": notes,
        }
        return results

    def derived(self) -> dict:
        """Lattice and flow numbers of the training set."""
        cfg = self.cfg
        lat = self.lattice(self.cases()[0])
        step = lat.stepper(Carreau(**cfg.true_theta))
        sc = step.scaling
        mu_ref = float(Carreau(**cfg.true_theta).viscosity(6 * cfg.mean_velocity / cfg.diameter))
        nu = mu_ref / BLOOD_DENSITY
        return {
            "coarse_grid": list(lat.shape), "fine_grid": list(self.lattice(
                self.cases()[0], cfg.refine).shape),
            "dx_m": lat.dx, "dt_s": lat.dt, "steps_per_cycle": lat.steps,
            "reynolds_mean": cfg.mean_velocity * cfg.diameter / nu,
            "womersley": 0.5 * cfg.diameter * math.sqrt(2 * math.pi / cfg.period / nu),
            "mach_peak_centreline": float(sc.mach(self.speed_ref)),
            "tau_at_mu_inf": float(sc.tau(cfg.true_mu_inf)),
            "noise_std_m_s": cfg.noise * self.speed_ref,
            "observed_cells": int(len(self.observation_cells(lat))),
        }  # fmt: skip

    def study_tables(self, methods: dict, ident: dict, cases) -> list[dict]:
        cols = ["Method"] + [f"{c.name} TAWSS err (%)" for c in cases] + [
            f"{c.name} sac-mean TAWSS err (%)" for c in cases] + ["ID OSI err"]  # fmt: skip
        rows = []
        for name, e in methods.items():
            row = [name]
            for key in [f"{c.name}_tawss_err" for c in cases] + [
                f"{c.name}_tawss_mean_err" for c in cases
            ]:
                row.append(_pct(e.get(key)))
            osi = e.get("id_osi_err")
            row.append("—" if not osi or osi.get("mean") is None else f"{osi['mean']:.3f}")
            rows.append(row)
        tables = [{
            "title": "Wall shear stress in the sac (the clinical metric)",
            "columns": cols, "rows": rows,
            "caption": "TAWSS err: relative L2 error along the sac wall (profiles smoothed over "
                       "one coarse cell of arc, neck corners left out) against the fine-lattice "
                       "truth; sac-mean: error of the TAWSS averaged over the sac; mean ± std "
                       "over seeds where there are several.",
        }]  # fmt: skip
        rows = []
        true = self.cfg.true_theta
        for name, e in methods.items():
            if "visc_err_1" not in e:
                continue
            row = [name]
            for g in SHEAR_RATES:
                row.append(_pct(e.get(f"visc_err_{g:g}")))
            row.append(_pct(e.get("K_err")))
            rows.append(row)
        mu_true = ", ".join(f"{1e3 * viscosity(true, g):.2f}" for g in SHEAR_RATES)
        tables.append({
            "title": "The blood's viscosity curve",
            "columns": ["Method"] + [f"μ({g:g}/s) err (%)" for g in SHEAR_RATES]
                       + ["K err (%)"],
            "rows": rows,
            "caption": f"Relative error of the learned viscosity μ(γ̇) at shear rates of the sac "
                       f"(~1/s), the thinning range and the vessel wall (~100/s); true values "
                       f"{mu_true} mPa s. K = (μ0 − μ∞) λ^(n−1) is the power-law consistency, "
                       f"the combination of μ0 and λ that shear rates above 1/λ see.",
        })  # fmt: skip
        vecs = ident.get("eigenvectors")
        if vecs:
            params = ident["params"]
            rows = []
            for j, lam in enumerate(ident["eigenvalues"]):
                rows.append([f"{lam:.3g}"] + [f"{vecs[i][j]:+.2f}" for i in range(len(params))])
            tables.append({
                "title": "Fisher information: eigen-directions in log θ_s",
                "columns": ["eigenvalue"] + list(params), "rows": rows,
                "caption": "Eigenvalues of the Fisher information of the observations for "
                           "log θ_s (1/σ² units) and their eigenvectors: a small eigenvalue's "
                           "direction is a combination of parameters the MRI data cannot "
                           "determine (1/√λ is its std in log units).",
            })  # fmt: skip
        return tables

    def study_notes(self, seeds, asked, ident, check) -> list[str]:
        cfg = self.cfg
        notes = []
        if len(seeds) < len(asked):
            notes.append(f"The {cfg.preset} preset runs at most {cfg.max_seeds} seed(s); "
                         f"{len(asked)} were asked for, {len(seeds)} run.")  # fmt: skip
        poorly = ident.get("poorly_identified", [])
        rel = ident.get("relative_std", {})
        k_std = ident.get("combinations", {}).get("K", {}).get("relative_std")
        notes.append(
            "Identifiability (Fisher information of the observations at the calibrated θ_s, "
            "one cycle): relative Cramér–Rao std "
            + ", ".join(f"{k} {v:.2g}" for k, v in rel.items() if v is not None)
            + (f", K = (μ0 − μ∞) λ^(n−1) {k_std:.2g}" if k_std is not None else "")
            + (f"; not identified within 10 %: {', '.join(poorly)}" if poorly else "")
            + ". The shear rates of this flow lie almost all above 1/λ, where Carreau is "
            "close to the power law μ∞ + K γ̇^(n−1): the data see μ0 and λ through K, so "
            "their separate values are not measurements (where they land depends on the "
            "optimiser's path and the prior, not on the data)."
        )
        c = check[0]
        if "id_tawss_err" in c:
            notes.append(
                f"Premise: the coarse lattice run at the true θ_s still misses the sac TAWSS "
                f"by {100 * c['id_tawss_err']:.1f} % (sac velocity RMSE "
                f"{1e3 * c['id_rmse_sac']:.2f} mm/s) — what no θ_s can fix and a closure may."
            )
        notes.append(
            "Budgets: every lattice method trains for the same number of cycles "
            f"({cfg.iterations}); sequential_hybrid starts its closure stage from the "
            "calibrated θ_s, so it has seen twice as many cycles as hybrid_joint."
        )
        notes.append(
            "Training starts each cycle from the previous iteration's end state, relaxed by "
            f"{cfg.gn_relax} cycle(s) without gradient after each θ_s step (no gradient "
            "through the initial state: a truncated gradient)."
        )
        notes.append(
            "neural_field and obs_mean describe one geometry: they have no prediction for "
            "ood_sac; on ood_hr they are evaluated at the same phases of the faster cycle."
        )
        if cfg.waveform != "synthetic":
            notes.append(
                f"Inflow: the shape of the {cfg.waveform} inlet waveform (openBF), rescaled to "
                f"a mean of {cfg.mean_velocity} m/s and period {cfg.period} s (a reduced, "
                "low-Reynolds problem for 2 cores; the circle-of-Willis file is the aortic "
                "root's inflow, zero in diastole, so a carotid shape is used)."
            )
        return notes

    def study_targets(self, results: dict) -> list[dict]:
        cfg = self.cfg
        methods = results["methods"]
        out = []
        hj = methods.get("hybrid_joint", {})
        theta = hj.get("theta", {})
        if theta:
            errs = {k: theta[k]["rel_error"]["mean"] for k, v in theta.items()
                    if v.get("identifiable")}  # fmt: skip
            combos = results.get("identifiability", {}).get("combinations", {})
            if combos.get("K", {}).get("identified") and "K_err" in hj:
                errs["K"] = hj["K_err"]["mean"]
            for g in SHEAR_RATES:
                key = f"visc_err_{g:g}"
                if combos.get(f"mu({g:g}/s)", {}).get("identified") and key in hj:
                    errs[f"μ({g:g}/s)"] = hj[key]["mean"]
            worst = max(errs.values()) if errs else None
            out.append({
                "name": "Carreau θ_s, or the viscosities and combinations of them, that the "
                        "data identify (Cramér–Rao std ≤ 10 %) within 10 % (hybrid_joint)",
                "value": ", ".join(f"{k} {100 * v:.1f} %" for k, v in errs.items())
                         or "the data identify no parameter or combination within 10 %",
                "target": "≤ 10 % each",
                "pass": None if worst is None else bool(worst <= 0.10),
            })  # fmt: skip

        def mean(m, key):
            v = methods.get(m, {}).get(key)
            return None if not isinstance(v, dict) else v.get("mean")

        hj_t = mean("hybrid_joint", "id_tawss_err")
        if hj_t is not None:
            out.append({"name": "TAWSS in the sac within 10 % (hybrid_joint, ID)",
                        "value": f"{100 * hj_t:.1f} %", "target": "≤ 10 %",
                        "pass": bool(hj_t <= 0.10)})  # fmt: skip
            for other in ("pure_physics", "sequential_hybrid"):
                o = mean(other, "id_tawss_err")
                if o is not None:
                    out.append({"name": f"hybrid_joint TAWSS error below {other} (ID)",
                                "value": f"{100 * hj_t:.1f} % vs {100 * o:.1f} %",
                                "target": "lower", "pass": bool(hj_t < o)})  # fmt: skip
            ood = {s: mean("hybrid_joint", f"{s}_tawss_err") for s in results["eval_sets"][1:]}
            out.append({"name": "OOD TAWSS reported (hybrid_joint)",
                        "value": ", ".join(f"{s} {100 * v:.1f} %" for s, v in ood.items()
                                           if v is not None) or "none",
                        "target": "reported",
                        "pass": bool(ood) and None not in ood.values()})  # fmt: skip
        if cfg.preset == "quick":
            wall = results.get("wall_seconds", math.nan)
            out.append({"name": "quick preset under 10 minutes (this run, incl. cached parts)",
                        "value": f"{wall / 60:.1f} min", "target": "< 10 min",
                        "pass": bool(wall < 600)})  # fmt: skip
        return out

    # -- arrays and figures -------------------------------------------------------------------
    def report_arrays(self, runs, truth, cases, check_arrays) -> dict[str, np.ndarray]:
        """``arrays.npz``: per set the truth's and each method's speed (seed 0) as
        ``(phase, y, x)`` with NaN outside the fluid (the report's snapshot figures), the
        TAWSS along the sac wall (truth, coarse at the true θ_s, every method, seed 0)
        and the arc length."""
        cfg = self.cfg
        out: dict[str, np.ndarray] = {}
        for case in cases:
            s = case.name
            lat = self.lattice(case)
            valid = truth[s]["valid"]
            sp = np.sqrt(np.sum(truth[s]["vel"] ** 2, axis=1))
            out[f"truth_{s}"] = np.where(valid[None], sp, np.nan).transpose(0, 2, 1)
            out[f"arc_{s}"] = np.asarray(lat.sac_wall(cfg.wall_points).arclength)
            out[f"tawss_truth_{s}"] = np.asarray(tawss_osi(truth[s]["wss"])[0], float)
            if f"tawss_{s}" in check_arrays:
                out[f"tawss_coarse_true_theta_{s}"] = check_arrays[f"tawss_{s}"]
            for method, per_seed in runs.items():
                arr = per_seed[0][1]
                if f"speed_{s}" in arr:
                    sp = np.asarray(arr[f"speed_{s}"], float)
                    sp = np.where(valid[None], sp, np.nan)
                    out[f"pred_{s}__{method}"] = sp.transpose(0, 2, 1)
                if f"tawss_{s}" in arr:
                    out[f"tawss_{s}__{method}"] = np.asarray(arr[f"tawss_{s}"], float)
        return out

    def draw(self, out: Path, results: dict, arrays: dict, cases) -> list[dict]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figs = out / "figures"
        figs.mkdir(parents=True, exist_ok=True)
        entries = []
        from matplotlib.colors import PowerNorm

        cfg = self.cfg
        lat = self.lattice(cases[0])
        truth = arrays["truth_id"]
        inflow = np.nanmean(truth[:, :, :3], axis=(1, 2))
        k = int(np.nanargmax(inflow))
        i0 = max(int((cfg.length / 2 - 1.8 * cfg.sac_radius) / lat.dx), 0)
        i1 = min(int((cfg.length / 2 + 1.8 * cfg.sac_radius) / lat.dx) + 1, truth.shape[2])
        crop = (slice(None), slice(i0, i1))
        panels = [("truth (fine lattice, averaged to coarse cells)", truth[k][crop])]
        for m in ("hybrid_joint", "pure_physics_calibrated", "pure_physics"):
            if f"pred_id__{m}" in arrays:
                panels.append((m, arrays[f"pred_id__{m}"][k][crop]))
        ref = panels[0][1]
        vmax = float(np.nanmax(ref))
        fig, axes = plt.subplots(2, len(panels), figsize=(3.4 * len(panels) + 1.2, 5.6),
                                 squeeze=False, layout="constrained")  # fmt: skip
        errs = [np.abs(p - ref) for _, p in panels[1:]]
        emax = max([float(np.nanpercentile(e, 99.5)) for e in errs] or [1.0])
        norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
        enorm = PowerNorm(0.5, vmin=0.0, vmax=emax)
        ext = (i0 * lat.dx * 1e3, i1 * lat.dx * 1e3, 0, ref.shape[0] * lat.dx * 1e3)
        ie = None
        for j, (title, f) in enumerate(panels):
            im = axes[0][j].imshow(f, origin="lower", cmap="viridis", norm=norm, extent=ext)
            axes[0][j].set_title(title, fontsize=8)
            if j:
                ie = axes[1][j].imshow(errs[j - 1], origin="lower", cmap="magma", norm=enorm,
                                       extent=ext)  # fmt: skip
                rms = np.sqrt(np.nanmean(errs[j - 1] ** 2))
                axes[1][j].set_title(f"|error|, RMS {1e3 * rms:.2f} mm/s", fontsize=8)
            else:
                axes[1][j].set_axis_off()
        for ax in axes.flat:
            ax.set_xlabel("x (mm)", fontsize=7)
            ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="|u| (m/s), √ scale")
        if ie is not None:
            fig.colorbar(ie, ax=list(axes[1]), shrink=0.8, label="|error| (m/s), √ scale")
        fig.suptitle(f"Velocity magnitude at peak inflow (phase {k + 1}/{truth.shape[0]}), "
                     f"seed {results['seeds'][0]}", fontsize=10)  # fmt: skip
        fig.savefig(figs / "aneurysm_velocity.png", dpi=110)
        plt.close(fig)
        entries.append({"file": "figures/aneurysm_velocity.png",
                        "title": "Velocity magnitude: truth, hybrid, calibrated and Newtonian",
                        "caption": "Speed at the phase of peak inflow on the coarse cells; "
                                   "bottom: absolute error against the truth."})  # fmt: skip
        fig, axes = plt.subplots(1, len(cases), figsize=(5.2 * len(cases), 4.6), squeeze=False)
        colours = plt.get_cmap("tab10")
        for ax, case in zip(axes[0], cases, strict=True):
            s = case.name
            arc = arrays[f"arc_{s}"] * 1e3
            ax.plot(arc, arrays[f"tawss_truth_{s}"], "k-", lw=2.2, label="truth (fine)")
            if f"tawss_coarse_true_theta_{s}" in arrays:
                ax.plot(arc, arrays[f"tawss_coarse_true_theta_{s}"], "k:", lw=1.2,
                        label="coarse, true θ_s")  # fmt: skip
            for i, m in enumerate(METHODS):
                key = f"tawss_{s}__{m}"
                if key in arrays:
                    ax.plot(arc, arrays[key], "-", color=colours(i), lw=1.2, label=m)
            ax.set_yscale("log")
            ax.set_xlabel("arc length along the sac wall from the proximal neck (mm)")
            ax.set_title(f"{s}: {case.label}", fontsize=9)
        axes[0][0].set_ylabel("TAWSS (Pa)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)
        fig.tight_layout(rect=(0, 0.14, 1, 1))
        fig.savefig(figs / "aneurysm_wss.png", dpi=110)
        plt.close(fig)
        entries.append({"file": "figures/aneurysm_wss.png",
                        "title": "Time-averaged WSS along the sac wall",
                        "caption": "TAWSS of the last cycle along the sac wall (seed 0): the "
                                   "fine-lattice truth, the coarse lattice at the true θ_s "
                                   "(what no calibration can beat without a closure) and each "
                                   "method, per evaluation set."})  # fmt: skip
        return entries


# ====================================================================== helpers
def _log_space_prior(rheology) -> jax.Array:
    """``½ Σ ((log θ − log median)/σ)²`` over the free Params with a log-normal prior: the
    negative log prior of log θ (MAP in the coordinates the optimiser uses)."""
    total = jnp.zeros(())
    for p in slp.named(rheology).values():
        if p.fixed or not isinstance(p.prior, LogNormal):
            continue
        z = (jnp.log(p.value) - math.log(p.prior.median)) / p.prior.sigma
        total = total + 0.5 * jnp.sum(z * z)
    return total


def fisher_block(J: np.ndarray, sigma: float, names, values, threshold: float = 0.1) -> dict:
    """The ``identifiability`` block from sensitivities ``J`` (observations × log θ_s)."""
    F = J.T @ J / sigma**2
    lam, vec = np.linalg.eigh(0.5 * (F + F.T))
    lam_c = np.maximum(lam, lam[-1] * 1e-16)
    cov = (vec / lam_c) @ vec.T  # a direction the data do not see has a huge variance
    rel = np.sqrt(np.maximum(np.diag(cov), 0.0))  # std of log θ = relative std
    corr = cov / np.outer(rel, rel)
    poorly = [n for n, r in zip(names, rel, strict=True) if not r <= threshold]
    combos = {}
    if list(names) == list(CARREAU):  # quantities the data may see better than θ_s
        theta = dict(zip(names, values, strict=True))
        grads = {"K": (_consistency_gradient(theta),
                       "(mu_0 - mu_inf) lam^(n-1), Pa s^n (power-law consistency)")}
        for g in SHEAR_RATES:
            grads[f"mu({g:g}/s)"] = (_viscosity_gradient(theta, g),
                                     f"the viscosity at a shear rate of {g:g}/s")  # fmt: skip
        for key, (grad, text) in grads.items():
            std = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
            combos[key] = {"definition": text, "relative_std": std,
                           "identified": bool(std <= threshold)}  # fmt: skip
    return {
        "params": list(names),
        "values": dict(zip(names, values, strict=True)),
        "fisher": F.tolist(),
        "eigenvalues": lam.tolist(),
        "eigenvectors": vec.tolist(),
        "condition_number": float(lam_c[-1] / lam_c[0]),
        "relative_std": dict(zip(names, rel.tolist(), strict=True)),
        "correlation": corr.tolist(),
        "poorly_identified": poorly,
        "combinations": combos,
        "noise_std": sigma,
        "n_observations": int(J.shape[0]),
        "method": "forward-mode sensitivities of the observations over one cycle, log θ_s",
    }


def _prior_vectors(theta_s) -> tuple[np.ndarray, np.ndarray]:
    """Precision ``1/σ²`` and mean ``log median`` of the log-normal priors of the raw θ_s,
    in the order `jax.flatten_util.ravel_pytree` puts them (0, 0 without a prior)."""

    def one(p, which):
        ok = isinstance(p.prior, LogNormal) and not p.fixed
        if which == 0:
            return jnp.full_like(p.raw, 1.0 / p.prior.sigma**2 if ok else 0.0)
        return jnp.full_like(p.raw, math.log(p.prior.median) if ok else 0.0)

    out = []
    for which in (0, 1):
        tree = jax.tree_util.tree_map(lambda p, w=which: one(p, w), theta_s, is_leaf=slp.is_param)
        out.append(np.asarray(jax.flatten_util.ravel_pytree(tree)[0], float))
    return out[0], out[1]


def power_law_consistency(theta: dict) -> float:
    """``K = (μ0 − μ∞) λ^(n−1)`` (Pa sⁿ): at shear rates ``γ̇ ≫ 1/λ`` Carreau is
    ``μ∞ + K γ̇^(n−1)``, so data at such shear rates see μ0 and λ only through ``K``."""
    return (theta["mu_0"] - theta["mu_inf"]) * theta["lam"] ** (theta["n"] - 1.0)


def _consistency_gradient(theta: dict) -> np.ndarray:
    """``∂ log K / ∂ log θ`` for θ = (μ0, μ∞, λ, n)."""
    d = theta["mu_0"] - theta["mu_inf"]
    return np.array([theta["mu_0"] / d, -theta["mu_inf"] / d, theta["n"] - 1.0,
                     theta["n"] * math.log(theta["lam"])])  # fmt: skip


def _viscosity_gradient(theta: dict, shear_rate: float) -> np.ndarray:
    """``∂ log μ(γ̇) / ∂ log θ`` for θ = (μ0, μ∞, λ, n) (Carreau)."""

    def log_mu(log_theta):
        return jnp.log(Carreau(*jnp.exp(log_theta)).viscosity(shear_rate))

    x = jnp.log(jnp.asarray([theta[k] for k in CARREAU], dtype=jnp.result_type(float)))
    return np.asarray(jax.grad(log_mu)(x), float)


def viscosity(theta: dict, shear_rate: float) -> float:
    """μ(γ̇) (Pa s) of a Carreau (``mu_0, mu_inf, lam, n``) or Newtonian (``mu``) θ_s."""
    if "mu" in theta:
        return float(theta["mu"])
    return float(Carreau(**theta).viscosity(shear_rate))


def _plateau(losses) -> bool:
    if len(losses) < 4:
        return False
    q = max(len(losses) // 4, 2)
    a, b = np.mean(losses[-2 * q : -q]), np.mean(losses[-q:])
    return bool(abs(a - b) <= 0.02 * abs(a))


def _pct(stat) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "—"
    std = stat.get("std") or 0.0
    return f"{100 * stat['mean']:.1f} ± {100 * std:.1f}" if len(stat.get("per_seed", [])) > 1 \
        else f"{100 * stat['mean']:.1f}"
