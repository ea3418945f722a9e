r"""Lattice Boltzmann (D2Q9, two-relaxation-time) for 2-D incompressible flow (`LatticeBoltzmann`).

The scheme, per step of ``dt`` on cells of size ``dx`` (everything in lattice units
inside, ``dx = dt = 1``, lattice density 1):

- **Equilibrium** (He & Luo 1997, incompressible):
  ``f_i^eq = w_i [ρ + 3 c_i·u + 9/2 (c_i·u)² − 3/2 u²]``, ``u = Σ c_i f_i + F/2`` (lattice
  density 1), pressure ``p = (ρ − 1)/3``. The incompressible form removes the
  ``O(Ma²)`` density error from the momentum, so unsteady and channel flows converge at
  second order under diffusive scaling.
- **Collision**, two relaxation times (Ginzburg 2008): the populations split into
  symmetric and antisymmetric parts ``f^± = (f_i ± f_ī)/2`` relaxed at
  ``ω^+ = 1/τ`` and ``ω^−``, with the "magic" product
  ``Λ = (τ − ½)(1/ω^− − ½)`` held fixed (default ``3/16``). ``τ = ½ + 3ν`` sets the
  viscosity; with ``Λ`` fixed the position of a bounce-back wall does not depend on
  ``ν`` (so a shear-thinning fluid keeps its walls where the mask puts them), and
  ``Λ = 3/16`` puts it exactly halfway for a parabolic profile (``Λ = 1/4`` is the most
  stable choice; both are allowed).
- **Local viscosity**: ``τ(x, t) = ½ + 3 ν(γ̇)``, ``ν = μ(γ̇)/ρ``, from the rheology at
  the local shear rate ``γ̇ = √(2 S:S)``, with the strain rate from the non-equilibrium
  second moment, ``S = −3/(2τ) [Π^neq + ½(uF + Fu)]``, ``Π^neq = Σ c_i c_i (f_i − f_i^eq)``:
  local, no finite differences. ``γ̇`` and ``τ`` depend on each other; the state carries
  the last ``γ̇`` and each step makes `picard` fixed-point passes from it (exact in a
  steady state, where the carried value is the fixed point).
- **Body force** by Guo's scheme split over the two rates:
  ``(1 − ω^+/2) w_i [9 (c_i·u)(c_i·F) − 3 u·F] + (1 − ω^−/2) 3 w_i c_i·F``.
- **Streaming** with ``jnp.roll`` over the whole grid; **walls** by halfway bounce-back
  (``f_ī(x, t+1) = f_i^*(x, t)`` when ``x + c_i`` is solid): no-slip on the cell face, a
  staircase for a curved wall, whose position error is up to ~½ cell (first order). Or,
  with ``wall="bouzidi"``, by the linear interpolated bounce-back of Bouzidi, Firdaouss &
  Lallemand (2001), with the wall at the fraction ``q ∈ (0, 1]`` of the link from the
  fluid node ``x`` to the solid one where the geometry's level set vanishes:
  ``f_ī(x, t+1) = 2q f_i^*(x) + (1 − 2q) f_i^*(x − c_i)`` for ``q < ½`` and
  ``f_ī(x, t+1) = f_i^*(x)/(2q) + (2q − 1)/(2q) f_ī^*(x)`` for ``q ≥ ½`` (halfway
  bounce-back at ``q = ½``; where ``x − c_i`` is solid too, a one-cell gap, the link
  falls back to it). The ``q`` are found once, in NumPy, by bisection of the level set
  along each wall link; the coefficients are constants of the jitted step, so the
  scheme is as differentiable as the rest. The wall is then second-order accurate
  wherever it lies.
- **Inlet** (the face left of the first column): a wall moving with the inflow profile,
  ``f_i = f_ī^* + 6 w_i c_i·u_in`` (Ladd's bounce-back with momentum correction; the
  mass flux is exact, which the non-equilibrium extrapolation at the inlet missed by
  ~3 % at ``τ ≈ 1``); **outlet** (last column): pressure ``p = 0`` by non-equilibrium
  extrapolation (Guo, Zheng & Shi 2002), ``f_i = f_i^eq(1, u_{−2}) + (f_i − f_i^eq)_{−2}``
  (a zero-gradient outlet, tried, let the pressure level drift with a velocity inlet and
  lost mass along the vessel; it is not offered). Without an inflow the domain is periodic
  in ``x``.

Units: the model is in SI (m, s, Pa, kg/m³); `LatticeScaling` states the conversion.
Stability: the relaxation time must stay above ½ (the solver refuses ``τ < tau_min``,
default 0.505) and the Mach number ``Ma = √3 |u| dt/dx`` well below 1 (refused above
``mach_max``, default 0.3, at the inflow's peak); both errors say how to change ``dt``.

References: T. Krüger et al. (2017) *The Lattice Boltzmann Method*, Springer (§5.3 BGK
boundary conditions, §6.3 Guo forcing, §10.7 TRT, §11.2 interpolated bounce-back);
M. Bouzidi, M. Firdaouss, P. Lallemand (2001) Phys Fluids 13:3452; I. Ginzburg, F. Verhaeghe,
D. d'Humières (2008) Commun Comput Phys 3:427; X. He, L.-S. Luo (1997) J Stat Phys 88:927;
Z. Guo, C. Zheng, B. Shi (2002) Phys Fluids 14:2007 and Chin Phys 11:366.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._typing import ScalarLike
from ..models._aneurysm import IncompressibleFlow2D, WallPoints, wall_sampling
from ._base import AbstractStepper

# D2Q9 velocities, weights and opposite directions
CX = np.array([0, 1, 0, -1, 0, 1, -1, -1, 1])
CY = np.array([0, 0, 1, 0, -1, 1, 1, -1, -1])
WEIGHTS = np.array([4 / 9] + [1 / 9] * 4 + [1 / 36] * 4)
OPPOSITE = np.array([0, 3, 4, 1, 2, 7, 8, 5, 6])
CS2 = 1.0 / 3.0


@dataclasses.dataclass(frozen=True)
class LatticeScaling:
    r"""Conversion between SI and lattice units (``dx = dt = 1``, density 1).

    ``u_lat = u dt/dx``, ``ν_lat = ν dt/dx²``, ``γ̇_lat = γ̇ dt``,
    ``p = ρ (dx/dt)² p_lat`` (stresses likewise), ``f_lat = f dt² / (ρ dx)`` for a force
    density, ``t = n dt``.

    **Arguments:** `dx` (m), `dt` (s), `rho` (kg/m³).
    """

    dx: float
    dt: float
    rho: float

    @property
    def velocity(self) -> float:
        """One lattice velocity in m/s (``dx/dt``)."""
        return self.dx / self.dt

    @property
    def stress(self) -> float:
        """One lattice stress (or pressure) in Pa (``ρ dx²/dt²``)."""
        return self.rho * self.velocity**2

    @property
    def force(self) -> float:
        """One lattice force density in N/m³ (``ρ dx / dt²``)."""
        return self.rho * self.dx / self.dt**2

    def tau(self, mu) -> Array:
        """Relaxation time ``τ = ½ + 3 μ dt / (ρ dx²)`` at dynamic viscosity ``mu`` (Pa·s)."""
        return 0.5 + 3.0 * mu / self.rho * self.dt / self.dx**2

    def mach(self, speed) -> Array:
        """Lattice Mach number ``√3 |u| dt/dx`` of a speed (m/s)."""
        return math.sqrt(3.0) * jnp.abs(speed) / self.velocity


def lattice_dt(dx: float, speed: float, mach: float = 0.1) -> float:
    """The step (s) at which the speed ``speed`` (m/s) has the lattice Mach number ``mach``:
    ``dt = mach · dx / (√3 · speed)``."""
    if not (speed > 0 and 0 < mach < 1):
        raise ValueError(f"lattice_dt needs speed > 0 and 0 < mach < 1, got {speed}, {mach}.")
    return mach * dx / (math.sqrt(3.0) * speed)


def _c(a, ndim: int) -> Array:
    """A (9,) lattice constant shaped to broadcast against (9, *field) arrays."""
    return jnp.asarray(a, dtype=jnp.result_type(float)).reshape((9,) + (1,) * ndim)


def equilibrium(rho: Array, ux: Array, uy: Array) -> Array:
    """Incompressible D2Q9 equilibrium ``w_i [ρ + 3 c·u + 9/2 (c·u)² − 3/2 u²]`` (lattice
    units), shape ``(9, *rho.shape)``."""
    n = rho.ndim
    cu = _c(CX, n) * ux[None] + _c(CY, n) * uy[None]
    usq = (ux * ux + uy * uy)[None]
    return _c(WEIGHTS, n) * (rho[None] + 3.0 * cu + 4.5 * cu * cu - 1.5 * usq)


def _moments(f: Array, fx, fy) -> tuple[Array, Array, Array]:
    """Density and velocity (with the half-force shift of Guo's scheme), lattice units."""
    rho = jnp.sum(f, axis=0)
    ux = jnp.tensordot(jnp.asarray(CX, f.dtype), f, axes=1) + 0.5 * fx
    uy = jnp.tensordot(jnp.asarray(CY, f.dtype), f, axes=1) + 0.5 * fy
    return rho, ux, uy


def _safe_sqrt(x):
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


class LatticeBoltzmann(AbstractStepper):
    r"""One step of the D2Q9 two-relaxation-time lattice Boltzmann scheme (module docstring)
    for an `IncompressibleFlow2D`.

    State: shape ``(10, nx, ny)``: the nine populations ``f_i`` (lattice units) and, last,
    the shear rate ``γ̇ dt`` of the last collision (what the local relaxation time is
    iterated from). `initial_state` makes one from SI velocity and pressure fields;
    `velocity`, `pressure`, `shear_rate`, `stress` and `wall_shear_stress` read SI fields
    back. ``step(u, t)`` advances from ``t`` to ``t + dt`` (s); the rheology's θ_s enter
    through ``τ`` inside the call, so ``jax.grad`` of any functional of a run reaches them.

    **Arguments:**

    - `model`: the `IncompressibleFlow2D`.
    - `dt`: time step (s); `lattice_dt` picks one from a Mach number.
    - `magic`: the TRT product ``Λ`` (default 3/16: exact halfway walls for parabolic
      profiles; 1/4 is the most stable).
    - `picard`: fixed-point passes for ``γ̇ ↔ τ`` per step (default 1; 0 uses the carried
      ``γ̇``; a Newtonian fluid needs none).
    - `tau_min`: smallest admissible relaxation time (default 0.505).
    - `mach_max`: largest admissible Mach number of the inflow's peak (default 0.3).
    - `shear_rate_max`: the largest shear rate (1/s) over which ``τ`` is checked; default
      ``0.2 / dt`` (a lattice shear rate of 0.2, beyond any flow with ``Ma < 0.3`` resolved
      by a few cells).
    - `wall`: ``"halfway"`` (default: bounce-back, the wall on the cell faces of the mask)
      or ``"bouzidi"`` (interpolated bounce-back at the geometry's analytic wall; needs a
      model built from a geometry with a ``level_set``, e.g. `SidewallAneurysm`, `Channel`).
    """

    model: IncompressibleFlow2D
    dt: float = eqx.field(static=True)
    magic: float = eqx.field(static=True)
    picard: int = eqx.field(static=True)
    tau_min: float = eqx.field(static=True)
    mach_max: float = eqx.field(static=True)
    shear_rate_max: float = eqx.field(static=True)
    wall: str = eqx.field(static=True)

    def __init__(
        self,
        model: IncompressibleFlow2D,
        dt: float,
        *,
        magic: float = 3.0 / 16.0,
        picard: int = 1,
        tau_min: float = 0.505,
        mach_max: float = 0.3,
        shear_rate_max: float | None = None,
        wall: str = "halfway",
    ):
        if not isinstance(model, IncompressibleFlow2D):
            raise ValueError(
                f"LatticeBoltzmann needs an IncompressibleFlow2D, got {type(model).__name__}."
            )
        if not magic > 0:
            raise ValueError(f"magic (the TRT product Λ) must be > 0, got {magic}.")
        if picard < 0:
            raise ValueError(f"picard must be >= 0, got {picard}.")
        if wall not in ("halfway", "bouzidi"):
            raise ValueError(f"unknown wall {wall!r}; use 'halfway' or 'bouzidi'.")
        if wall == "bouzidi" and not hasattr(model.geometry, "level_set"):
            raise ValueError(
                "wall='bouzidi' needs the wall's position: build the IncompressibleFlow2D "
                "from a geometry with a level_set(x, y, dx) (SidewallAneurysm, Channel), "
                "not from a bare mask; or use wall='halfway'."
            )
        self.wall = wall
        self.model = model
        self.dt = float(dt)
        self.magic = float(magic)
        self.picard = int(picard)
        self.tau_min = float(tau_min)
        self.mach_max = float(mach_max)
        self.shear_rate_max = 0.2 / self.dt if shear_rate_max is None else float(shear_rate_max)

    def __check_init__(self):
        leaves = jax.tree_util.tree_leaves(self.model.rheology)
        if any(isinstance(x, jax.core.Tracer) for x in leaves) or not np.isfinite(self.dt):
            return
        sc = self.scaling
        mu_lo, mu_hi = self.model.rheology.viscosity_range(self.shear_rate_max)
        tau_lo = float(sc.tau(mu_lo))
        if tau_lo < self.tau_min:
            dt_need = (self.tau_min - 0.5) * sc.rho * sc.dx**2 / (3.0 * mu_lo)
            raise ValueError(
                f"the relaxation time τ = 1/2 + 3 μ dt/(ρ dx²) falls to {tau_lo:.4f} (at "
                f"μ = {mu_lo:.3g} Pa s, dx = {sc.dx:.3g} m, dt = {sc.dt:.3g} s), below the "
                f"stable limit {self.tau_min}; use dt >= {dt_need:.3g} s (keeping the Mach "
                f"number low), or refine dx with dt ∝ dx², or lower tau_min at your risk."
            )
        if self.model.inflow is not None:
            peak = 1.5 * self.model.inflow.peak  # centreline of the parabolic profile
            ma = float(sc.mach(peak))
            if ma > self.mach_max:
                raise ValueError(
                    f"the inflow's peak centreline speed {peak:.3g} m/s is Mach {ma:.3f} on "
                    f"the lattice (√3 u dt/dx), above {self.mach_max}; use dt <= "
                    f"{lattice_dt(sc.dx, peak, self.mach_max):.3g} s (lattice_dt) or coarsen "
                    f"dx, or slow the flow."
                )
        del mu_hi

    # ------------------------------------------------------------------ basics
    @property
    def scaling(self) -> LatticeScaling:
        """The `LatticeScaling` of this step (the model's ``dx`` and ``rho``, this ``dt``)."""
        return LatticeScaling(self.model.dx, self.dt, self.model.rho)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (10,) + self.model.shape

    def _force(self, t, force=None) -> tuple[Array, Array]:
        F = self.model.body_force(t) / self.scaling.force
        if force is None:
            return F[0], F[1]
        extra = jnp.asarray(force) / self.scaling.force
        if extra.shape != (2,) + self.model.shape:
            raise ValueError(
                f"force must be a body-force field of shape {(2,) + self.model.shape} "
                f"(N/m^3), got {extra.shape}."
            )
        return F[0] + extra[0], F[1] + extra[1]

    def _tau(self, gd: Array) -> Array:
        """Relaxation time at the lattice shear rate ``gd``."""
        mu = self.model.rheology.viscosity(gd / self.dt)
        return self.scaling.tau(mu)

    def _strain(self, f: Array, gd: Array, fx, fy, passes: int):
        """Macroscopic fields, the equilibrium, strain rate (lattice), shear rate and τ."""
        rho, ux, uy = _moments(f, fx, fy)
        feq = equilibrium(rho, ux, uy)
        neq = f - feq
        cx, cy = _c(CX, 2), _c(CY, 2)
        pxx = jnp.sum(cx * cx * neq, axis=0) + ux * fx
        pyy = jnp.sum(cy * cy * neq, axis=0) + uy * fy
        pxy = jnp.sum(cx * cy * neq, axis=0) + 0.5 * (ux * fy + uy * fx)
        pn = _safe_sqrt(pxx * pxx + pyy * pyy + 2.0 * pxy * pxy)
        tau = self._tau(gd)
        for _ in range(passes):
            gd = 3.0 * pn / (math.sqrt(2.0) * tau)
            tau = self._tau(gd)
        s = -1.5 / tau
        return rho, ux, uy, feq, (s * pxx, s * pyy, s * pxy), gd, tau

    # ------------------------------------------------------------------ the step
    def __call__(self, u: Float[Array, "10 nx ny"], t: ScalarLike = 0.0, force=None) -> Array:
        """Advance ``u`` (state at time ``t``, s) by one step ``dt``; ``force`` (optional,
        shape ``(2, nx, ny)``, N/m³) is a body-force field added to the model's for this
        step (e.g. a closure's term)."""
        self.check(u)
        m = self.model
        fluid = m.fluid.array
        solid = ~fluid
        f, gd = u[:9], u[9]
        fx, fy = self._force(t, force)
        rho, ux, uy, feq, _, gd, tau = self._strain(f, gd, fx, fy, self.picard)
        # TRT collision with Guo forcing
        tau_m = 0.5 + self.magic / (tau - 0.5)
        wp, wm = (1.0 / tau)[None], (1.0 / tau_m)[None]
        fb, eb = f[OPPOSITE], feq[OPPOSITE]
        neq_p = 0.5 * (f + fb - feq - eb)
        neq_m = 0.5 * (f - fb - feq + eb)
        cx, cy, w = _c(CX, 2), _c(CY, 2), _c(WEIGHTS, 2)
        cu = cx * ux[None] + cy * uy[None]
        cF = cx * jnp.broadcast_to(fx, ux.shape)[None] + cy * jnp.broadcast_to(fy, uy.shape)[None]
        src_p = w * (9.0 * cu * cF - 3.0 * (ux * fx + uy * fy)[None])
        src_m = 3.0 * w * cF
        post = f - wp * neq_p - wm * neq_m + (1.0 - 0.5 * wp) * src_p + (1.0 - 0.5 * wm) * src_m
        post = jnp.where(solid[None], w, post)
        # streaming, halfway bounce-back
        streamed = jnp.stack(
            [jnp.roll(post[i], (int(CX[i]), int(CY[i])), axis=(0, 1)) for i in range(9)]
        )
        if self.wall == "halfway":
            f = jnp.where(_bounce_mask(m.fluid), post[OPPOSITE], streamed)
        else:
            bb, a, b, c = _bouzidi_coefficients(m.geometry, m.fluid, m.dx)
            behind = jnp.stack(
                [jnp.roll(post[OPPOSITE[i]], (-int(CX[i]), -int(CY[i])), axis=(0, 1))
                 for i in range(9)]
            )  # fmt: skip
            wall = a * post[OPPOSITE] + b * behind + c * post
            f = jnp.where(bb, wall, streamed)
        if m.inflow is not None:
            f = self._open_boundaries(f, post, t + self.dt)
        gd = jnp.where(fluid, gd, 0.0)
        return jnp.concatenate([f, gd[None]])

    def _open_boundaries(self, f: Array, post: Array, t) -> Array:
        m = self.model
        fluid = m.fluid.array
        zero = jnp.zeros((), f.dtype)

        def extrapolate(col, rho_b=None, ux_b=None):
            # non-equilibrium extrapolation: the boundary's equilibrium (given density or
            # velocity, the rest from the neighbour column) plus the neighbour's f − f^eq
            g = f[:, col]
            rho, ux, uy = _moments(g, zero, zero)
            feq = equilibrium(rho, ux, uy)
            if ux_b is not None:
                ux, uy = ux_b, jnp.zeros_like(uy)
            if rho_b is not None:
                rho = jnp.full_like(rho, rho_b)
            return equilibrium(rho, ux, uy) + g - feq

        # inlet: the face x = 0 (left of the first column) is a wall moving with the inflow
        # (Ladd's bounce-back with momentum correction, f_i = f_ī^* + 6 w_i c_i·u_in at the
        # link's midpoint): the mass flux through each row is exact, and summed over the
        # rows it is Simpson's rule of the profile, exact for the parabola
        cin = np.flatnonzero(CX == 1)
        ubar = m.inflow(t) / self.scaling.velocity
        shape_at = np.stack([_profile_at(m, -0.5 * CY[i]) for i in cin])  # (3, ny)
        corr = 6.0 * WEIGHTS[cin][:, None] * shape_at * ubar
        f_in = post[OPPOSITE[cin], 0] + corr
        f = f.at[cin, 0].set(jnp.where(fluid[0][None], f_in, f[cin, 0]))
        f_out = extrapolate(-2, rho_b=1.0)
        return f.at[:, -1].set(jnp.where(fluid[-1][None], f_out, f[:, -1]))

    # -------------------------------------------------------------- SI in and out
    def initial_state(self, velocity=None, pressure=None) -> Float[Array, "10 nx ny"]:
        """A state at equilibrium with the velocity ``(2, nx, ny)`` (m/s, default rest) and
        pressure ``(nx, ny)`` (Pa, default 0) fields; solid cells at rest."""
        sc = self.scaling
        shape = self.model.shape
        dtype = jnp.result_type(float)
        fluid = jnp.asarray(self.model.fluid.array)
        vel = jnp.zeros((2,) + shape, dtype) if velocity is None else jnp.asarray(velocity, dtype)
        p = jnp.zeros(shape, dtype) if pressure is None else jnp.asarray(pressure, dtype)
        if vel.shape != (2,) + shape or p.shape != shape:
            raise ValueError(
                f"initial_state expects velocity of shape {(2,) + shape} and pressure of shape "
                f"{shape}, got {vel.shape} and {p.shape}."
            )
        vel = jnp.where(fluid[None], vel / sc.velocity, 0.0)
        rho = 1.0 + 3.0 * jnp.where(fluid, p / sc.stress, 0.0)
        f = equilibrium(rho, vel[0], vel[1])
        return jnp.concatenate([f, jnp.zeros((1,) + shape, dtype)])

    def fields(self, u: Float[Array, "10 nx ny"], t: ScalarLike = 0.0, force=None):
        """``(velocity (2, nx, ny) m/s, pressure (nx, ny) Pa)`` of the state ``u`` at time
        ``t`` (zero in solid cells); ``force``: the extra body-force field of the step that
        made ``u``, if any (the velocity moment includes half of it)."""
        fx, fy = self._force(t, force)
        rho, ux, uy = _moments(u[:9], fx, fy)
        fluid = jnp.asarray(self.model.fluid.array)
        sc = self.scaling
        vel = jnp.where(fluid[None], jnp.stack([ux, uy]) * sc.velocity, 0.0)
        p = jnp.where(fluid, (rho - 1.0) * CS2 * sc.stress, 0.0)
        return vel, p

    def velocity(self, u, t: ScalarLike = 0.0, force=None) -> Float[Array, "2 nx ny"]:
        """Velocity (m/s), zero in solid cells (``force`` as in `fields`)."""
        return self.fields(u, t, force)[0]

    def pressure(self, u, t: ScalarLike = 0.0) -> Float[Array, "nx ny"]:
        """Pressure (Pa, relative to the outlet or the initial mean), zero in solid cells."""
        return self.fields(u, t)[1]

    def _stress(self, u, t, passes: int = 3, force=None):
        fx, fy = self._force(t, force)
        *_, (sxx, syy, sxy), gd, _ = self._strain(u[:9], u[9], fx, fy, passes)
        fluid = jnp.asarray(self.model.fluid.array)
        mu = self.model.rheology.viscosity(gd / self.dt)
        sig = 2.0 * mu[None] * jnp.stack([sxx, syy, sxy]) / self.dt
        return jnp.where(fluid[None], sig, 0.0), jnp.where(fluid, gd / self.dt, 0.0)

    def shear_rate(self, u, t: ScalarLike = 0.0, force=None) -> Float[Array, "nx ny"]:
        """Shear rate ``γ̇ = √(2 S:S)`` (1/s) from the local non-equilibrium stress."""
        return self._stress(u, t, force=force)[1]

    def stress(self, u, t: ScalarLike = 0.0, force=None) -> Float[Array, "3 nx ny"]:
        """Viscous stress ``2 μ(γ̇) S`` (Pa) as ``(σ_xx, σ_yy, σ_xy)``."""
        return self._stress(u, t, force=force)[0]

    def wall_shear_stress(
        self, u, wall: WallPoints, t: ScalarLike = 0.0, force=None
    ) -> Float[Array, " P"]:
        """Signed wall shear stress ``t·(σ n)`` (Pa) at the points of `wall`
        (`scilayers.models.WallPoints`): the viscous stress extrapolated linearly to each
        point along its normal from one and two cells into the fluid (`wall_sampling`).
        With ``wall="bouzidi"`` the points are on the wall the flow sees, and the WSS
        converges at second order (a velocity-gradient fit with zero velocity imposed at
        the point, tried, is first order: it turns the scheme's O(dx²) slip into an O(dx)
        gradient error)."""
        sig = self.stress(u, t, force)
        return _traction(sig, self.model, wall)

    # ------------------------------------------------------------------------ runs
    def run(
        self,
        u0: Float[Array, "10 nx ny"],
        t0: ScalarLike,
        samples: int,
        every: int,
        observe: Callable | None = None,
        *,
        checkpoint: bool = False,
    ):
        """``samples · every`` steps from ``u0`` at time ``t0`` (s), over ``lax.scan``.

        Returns ``(u_end, observed, max_mach)``: the final state; ``observe(u, t)``
        (default: the velocity field) after each block of ``every`` steps, stacked
        (``samples`` entries, at ``t0 + k · every · dt``, ``k = 1 … samples``); and the
        largest lattice Mach number met at the sample times (a value above ~0.3 means the
        run is not to be trusted: lower ``dt``). With ``checkpoint=True`` each block is
        recomputed in the backward pass (memory O(samples + every)).
        """
        self.check(u0)
        dt = self.dt
        observe = (lambda v, t: self.velocity(v, t)) if observe is None else observe
        u0 = jnp.asarray(u0, dtype=jnp.result_type(float))

        def block(u, k):
            t = t0 + k * (every * dt)

            def one(v, i):
                return self(v, t + i * dt), None

            u, _ = jax.lax.scan(one, u, jnp.arange(every))
            te = t + every * dt
            vel = self.velocity(u, te)
            mach = (
                math.sqrt(3.0)
                * jnp.max(jnp.sqrt(jnp.sum(vel * vel, axis=0)))
                / (self.scaling.velocity)
            )
            return u, (observe(u, te), mach)

        if checkpoint:
            block = jax.checkpoint(block)
        u, (obs, mach) = jax.lax.scan(block, u0, jnp.arange(samples))
        return u, obs, jnp.max(mach)


def _profile_at(model: IncompressibleFlow2D, dy: float) -> np.ndarray:
    """The inlet profile (mean 1 over the opening) at ``y_j + dy`` (cells) for every row."""
    j = np.flatnonzero(model.fluid.array[0])
    ya, yb = j[0] - 0.5, j[-1] + 0.5
    y = np.arange(model.shape[1]) + dy
    prof = np.maximum(6.0 * (y - ya) * (yb - y) / (yb - ya) ** 2, 0.0)
    return np.where(model.fluid.array[0], prof, 0.0)


def _bounce_mask(fluid) -> np.ndarray:
    """``(9, nx, ny)``: where population ``i`` at a fluid cell would come from a solid cell."""
    solid = ~fluid.array
    return np.stack(
        [fluid.array & np.roll(solid, (int(CX[i]), int(CY[i])), axis=(0, 1)) for i in range(9)]
    )


def link_fractions(level_set: Callable, fluid, dx: float, iters: int = 60) -> np.ndarray:
    """Where the wall cuts each wall link: ``q (9, nx, ny)``, for population ``i`` at a
    fluid cell ``x`` whose upstream neighbour ``x − c_i`` is solid, the fraction of the link
    from ``x`` towards ``x − c_i`` at which ``level_set`` (positive in the fluid; called
    with positions in m and ``dx``) changes sign, by bisection; 0 on other links.

    Periodic wrap-around links are measured in the unwrapped positions (``x − c_i`` past
    the domain's edge), which is right for geometries that continue straight there."""
    bb = _bounce_mask(fluid)
    q = np.zeros(bb.shape)
    for i in range(1, 9):
        ii, jj = np.nonzero(bb[i])
        if ii.size == 0:
            continue
        x0, y0 = (ii + 0.5) * dx, (jj + 0.5) * dx
        ex, ey = -CX[i] * dx, -CY[i] * dx
        lo, hi = np.zeros(ii.size), np.ones(ii.size)
        if np.any(level_set(x0, y0, dx) <= 0):
            raise ValueError("link_fractions: the level set is not positive at a fluid cell.")
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            inside = level_set(x0 + mid * ex, y0 + mid * ey, dx) > 0
            lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
        q[i, ii, jj] = np.maximum(0.5 * (lo + hi), 1e-6)
    return q


@functools.lru_cache(maxsize=32)
def _bouzidi_coefficients(geometry, fluid, dx: float):
    """``(bb, a, b, c)``, each ``(9, nx, ny)``: the wall links and the weights of
    ``f_ī^*(x)``, ``f_ī^*(x + c_i)`` and ``f_i^*(x)`` in the linear interpolated bounce-back
    (Bouzidi et al. 2001) of the population ``i`` arriving at ``x`` (module docstring)."""
    bb = _bounce_mask(fluid)
    q = link_fractions(geometry.level_set, fluid, dx)
    arr = fluid.array
    behind_fluid = np.stack(
        [np.roll(arr, (-int(CX[i]), -int(CY[i])), axis=(0, 1)) for i in range(9)]
    )
    small = bb & (q < 0.5) & behind_fluid
    large = bb & (q >= 0.5)
    a = np.where(bb, 1.0, 0.0)  # halfway where the link has no second fluid node
    a = np.where(small, 2.0 * q, a)
    a = np.where(large, 0.5 / np.where(large, q, 1.0), a)
    b = np.where(small, 1.0 - 2.0 * q, 0.0)
    c = np.where(large, (2.0 * q - 1.0) / (2.0 * np.where(large, q, 1.0)), 0.0)
    return bb, a, b, c


def _traction(sig: Array, model: IncompressibleFlow2D, wall: WallPoints) -> Array:
    idx, wts = wall_sampling(model.fluid, model.dx, wall)
    flat = sig.reshape(3, -1)
    s = jnp.sum(flat[:, idx] * jnp.asarray(wts)[None], axis=-1)  # (3, P) at the wall
    n, tg = np.asarray(wall.normals), np.asarray(wall.tangents)
    tnx = s[0] * n[:, 0] + s[2] * n[:, 1]
    tny = s[2] * n[:, 0] + s[1] * n[:, 1]
    return tg[:, 0] * tnx + tg[:, 1] * tny


def tawss_osi(wss: Float[Array, "time P"]) -> tuple[Array, Array]:
    r"""Time-averaged wall shear stress and oscillatory shear index from a signed WSS
    series sampled uniformly over whole cycles (time first):

    $$\mathrm{TAWSS} = \overline{|τ_w|},\qquad
      \mathrm{OSI} = \tfrac12\Big(1 − \frac{|\overline{τ_w}|}{\overline{|τ_w|}}\Big)$$

    (Ku et al. 1985; in 2-D ``τ_w`` is the signed tangential traction). OSI is 0 for
    shear that never reverses and 0.5 for purely oscillatory shear."""
    wss = jnp.asarray(wss)
    tawss = jnp.mean(jnp.abs(wss), axis=0)
    mean = jnp.abs(jnp.mean(wss, axis=0))
    osi = 0.5 * (1.0 - mean / jnp.where(tawss > 0, tawss, 1.0))
    return tawss, jnp.where(tawss > 0, osi, 0.0)


__all__ = [
    "CX",
    "CY",
    "OPPOSITE",
    "WEIGHTS",
    "LatticeBoltzmann",
    "LatticeScaling",
    "equilibrium",
    "lattice_dt",
    "link_fractions",
    "tawss_osi",
]
