r"""Finite volumes for 1-D blood flow in arterial networks (`ArterialMUSCL`).

Method of lines on the cell averages of ``(A, Q)`` (openBF's discretisation, Melis 2017):

- MUSCL reconstruction of pressure and flow: per cell a limited slope (monotonised
  central ``mc`` by default; also openBF's ``superbee``, ``minmod`` or the unlimited
  ``central``), face values ``U ± slope/2``, the face area from the tube law at the face
  (so a tapered vessel's ``A0(x)`` enters no slope: the rest state is kept to round-off
  and a steady flow to O(dx²); openBF reconstructs ``A`` itself, which is the same for a
  uniform vessel up to the nonlinearity of the tube law); the end cells of a vessel take
  their one-sided difference (linear extrapolation to the boundary face, so the
  boundaries are second order too);
- numerical flux at interior faces: local Lax–Friedrichs (``rusanov``, wave-speed bound
  ``max(|u| + c)`` of the two face states) or openBF's global Lax–Friedrichs
  (``lax_friedrichs``, viscosity ``dx/dt``);
- boundary faces by characteristics: the outgoing Riemann invariant is taken from the
  reconstructed face value of the end cell, and the face state solves the boundary
  condition — prescribed inflow, three-element Windkessel (its capacitor pressure is part
  of the state and integrated with the same stages), or a junction (mass and total
  pressure, any number of vessel ends) — by Newton's method through Optimistix with
  implicit differentiation. The boundary flux is the physical flux of that state, so the
  inflow enters exactly and mass is conserved through junctions to the Newton tolerance;
- sources (friction, taper) in the same stages; time stepping by the two-stage SSP
  Runge–Kutta (Heun) scheme of openBF's ``muscl!``; second order in space and time.

The step ``dt`` is fixed (a jit-able, differentiable ``lax.scan``); `arterial_stable_dt` picks it
from the CFL condition ``dt max((|u| + c)/dx) ≤ cfl``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float

from .._typing import ScalarLike
from ..models._arterial import (
    ArterialNetwork,
    area,
    boundary_state,
    flux,
    inlet_residual,
    junction_residual,
    pressure,
    taper_source,
    wave_speed,
    windkessel_residual,
)
from ._base import AbstractStepper

LIMITERS = ("superbee", "minmod", "mc", "central")
NUMERICAL_FLUXES = ("rusanov", "lax_friedrichs")


def _minmod(a, b):
    return 0.5 * (jnp.sign(a) + jnp.sign(b)) * jnp.minimum(jnp.abs(a), jnp.abs(b))


def _limit(kind: str, dm, dp):
    """Limited slope (a difference over one cell) from the backward/forward differences."""
    if kind == "superbee":
        s1 = _minmod(dm, 2.0 * dp)
        s2 = _minmod(2.0 * dm, dp)
        return 0.5 * (jnp.sign(s1) + jnp.sign(s2)) * jnp.maximum(jnp.abs(s1), jnp.abs(s2))
    if kind == "minmod":
        return _minmod(dm, dp)
    if kind == "mc":
        return _minmod(_minmod(2.0 * dm, 2.0 * dp), 0.5 * (dm + dp))
    return 0.5 * (dm + dp)


def arterial_stable_dt(
    model: ArterialNetwork, cfl: float = 0.9, speed_margin: float = 1.6
) -> float:
    r"""The step ``dt = cfl · min_i dx_i / (speed_margin · c0_i)``.

    ``c0`` is the linear wave speed at rest; ``speed_margin`` (default 1.6) bounds
    ``(|u| + c) / c0`` over the cardiac cycle (in the Boileau cases it stays below
    1.5: the area swells by up to ~40 %, ``c ∝ A^{1/4}``, and ``|u| ≲ 0.3 c``). The solver
    measures the real Courant number (`ArterialMUSCL.courant`); `run` reports its maximum.
    Needs concrete θ_s (call outside ``jit``).
    """
    c0 = np.asarray(model.wave_speed0())
    dx = np.array([v.length / v.n_cells for v in model.case.vessels])
    return float(cfl * np.min(dx / (speed_margin * c0)))


def _root(fn, z0, args, tol: float, max_steps: int):
    sol = optx.root_find(
        fn,
        optx.Newton(rtol=tol, atol=tol),
        z0,
        args,
        max_steps=max_steps,
        throw=False,
        adjoint=optx.ImplicitAdjoint(),
    )
    return sol.value


class ArterialMUSCL(AbstractStepper):
    r"""One time step of the MUSCL finite-volume scheme for an `ArterialNetwork`.

    ``step(u, t)`` advances the flat state ``u`` (``A``, ``Q``, Windkessel ``P_c``; see
    `ArterialNetwork`) from ``t`` to ``t + dt`` (two SSP-RK2 stages, inflow evaluated at
    ``t`` and ``t + dt``). Everything derived from θ_s (``β`` from ``E``, the Windkessel
    coefficients) is computed inside the call, so ``jax.grad`` of any functional of a
    rollout reaches ``E``, ``R1``, ``C`` and ``R2``; the boundary and junction Newton solves
    are differentiated implicitly (`optimistix.ImplicitAdjoint`).

    **Arguments:**

    - `model`: the `ArterialNetwork`.
    - `dt`: time step (s); default `arterial_stable_dt` ``(model, cfl)``. A `dt` whose Courant
      number at rest, ``dt · max(c0/dx)``, exceeds 1 is a `ValueError` (the scheme would
      blow up); the Courant number along a run is measured by `run`.
    - `cfl`: target Courant number when `dt` is chosen (default 0.9, openBF's ``Ccfl``).
    - `limiter`: slope limiter: ``"mc"`` (monotonised central, default), ``"superbee"``
      (openBF's), ``"minmod"``, ``"central"`` (unlimited, for smooth problems). With the
      second-order boundary extrapolation, ``superbee`` let a high-frequency mode grow in
      narrow vessels with strongly reflecting ends (the intercostal arteries of ADAN56,
      ``R1 ≈ 24 Z0``); ``mc`` and ``minmod`` are stable there, and ``mc`` keeps second
      order in L1 and L∞ on smooth problems.
    - `numerical_flux`: ``"rusanov"`` (default) or ``"lax_friedrichs"`` (openBF's).
    - `newton_tol`: tolerance of the boundary Newton solves on ``z = (A/A0)^{1/4}`` and
      on the scaled residuals (default 1e-11 in float64, 1e-5 in float32).
    - `newton_steps`: most Newton iterations per solve (default 20).

    Reference: A. Melis (2017) PhD thesis, Univ. Sheffield (openBF); E. F. Toro (2009)
    *Riemann Solvers and Numerical Methods for Fluid Dynamics*, §13–14 (MUSCL, TVD).
    """

    model: ArterialNetwork
    dt: float = eqx.field(static=True)
    limiter: str = eqx.field(static=True)
    numerical_flux: str = eqx.field(static=True)
    newton_tol: float = eqx.field(static=True)
    newton_steps: int = eqx.field(static=True)

    def __init__(
        self,
        model: ArterialNetwork,
        dt: float | None = None,
        *,
        cfl: float = 0.9,
        limiter: str = "mc",
        numerical_flux: str = "rusanov",
        newton_tol: float | None = None,
        newton_steps: int = 20,
    ):
        if not isinstance(model, ArterialNetwork):
            raise ValueError(f"ArterialMUSCL needs an ArterialNetwork, got {type(model).__name__}.")
        if limiter not in LIMITERS:
            raise ValueError(f"unknown limiter {limiter!r}; choose one of {LIMITERS}.")
        if numerical_flux not in NUMERICAL_FLUXES:
            raise ValueError(
                f"unknown numerical_flux {numerical_flux!r}; choose one of {NUMERICAL_FLUXES}."
            )
        if not (0.0 < cfl <= 1.0):
            raise ValueError(f"cfl must be in (0, 1], got {cfl}.")
        self.model = model
        self.dt = float(arterial_stable_dt(model, cfl)) if dt is None else float(dt)
        self.limiter = limiter
        self.numerical_flux = numerical_flux
        if newton_tol is None:
            newton_tol = 1e-11 if jnp.result_type(float) == jnp.float64 else 1e-5
        self.newton_tol = float(newton_tol)
        self.newton_steps = int(newton_steps)

    def __check_init__(self):
        if isinstance(self.model.E.raw, jax.core.Tracer) or not np.isfinite(self.dt):
            return
        c0 = np.asarray(self.model.wave_speed0())
        dx = np.array([v.length / v.n_cells for v in self.model.case.vessels])
        courant = float(self.dt * np.max(c0 / dx))
        if courant > 1.0:
            safe = arterial_stable_dt(self.model, 0.9)
            raise ValueError(
                f"dt = {self.dt:.4g} s violates the CFL condition: the Courant number at "
                f"rest is already {courant:.3f} > 1 (c0 up to {np.max(c0):.3g} m/s, "
                f"dx down to {np.min(dx):.3g} m); use dt <= {safe:.4g} s "
                f"(arterial_stable_dt(model, cfl=0.9)) or leave dt=None."
            )
        # the Windkessel capacitors are integrated explicitly by the same stages: their
        # rate -(1/R2 + 1/(R1 + Z0))/C, Z0 = ρc0/A0 the vessel's impedance, must stay inside
        # the real stability interval of SSP-RK2, dt·λ <= 2
        m = self.model
        if m.n_outlets:
            top, lay = m.topology, m.layout
            ends = 2 * np.asarray(top.outlets) + 1
            A0 = np.pi * lay.end_radius[ends] ** 2
            beta = np.asarray(m.beta())[np.asarray(top.outlets)]
            z0 = m.case.rho * np.sqrt(beta / (2.0 * m.case.rho * np.sqrt(A0))) / A0
            R1, C, R2 = (np.asarray(p.value) for p in (m.R1, m.C, m.R2))
            lam = (1.0 / R2 + 1.0 / (R1 + z0)) / C
            k = int(np.argmax(lam))
            if self.dt * lam[k] > 2.0:
                label = m.case.vessels[top.outlets[k]].label
                raise ValueError(
                    f"dt = {self.dt:.4g} s is too long for the Windkessel at {label!r}: its "
                    f"capacitor relaxes in {1.0 / lam[k]:.3g} s (C = {C[k]:.3g} m^3/Pa) and "
                    f"the explicit stages need dt <= {2.0 / lam[k]:.3g} s; reduce dt or "
                    f"increase C."
                )

    # ------------------------------------------------------------------ internals
    def _coefficients(self):
        m = self.model
        lay = m.layout
        beta_v = m.beta()
        beta_c = beta_v[lay.vessel_of]
        A0c = np.pi * lay.radius**2
        return dict(
            beta_v=beta_v,
            beta_c=beta_c,
            A0c=A0c,
            dsqrtA0=math.sqrt(math.pi) * lay.dradius,
            dK=beta_c * (-2.0 * lay.dradius / (np.pi * lay.radius**3)),
            beta_f=beta_v[lay.vessel_of[lay.face_left]],
            A0f=np.pi * lay.face_radius**2,
            beta_e=jnp.repeat(beta_v, 2),
            A0e=np.pi * lay.end_radius**2,
            pext_e=np.repeat(np.array([v.p_ext for v in m.case.vessels]), 2),
            R1=m.R1.value,
            C=m.C.value,
            R2=m.R2.value,
        )

    def _slopes(self, p, Q):
        lay = self.model.layout

        def slope(U):
            # the end cells of a vessel take their one-sided difference (linear
            # extrapolation to the boundary face: second order there too)
            dp = jnp.roll(U, -1) - U
            dm = U - jnp.roll(U, 1)
            dp = jnp.where(lay.last, dm, dp)
            dm = jnp.where(lay.first, dp, dm)
            return _limit(self.limiter, dm, dp)

        return slope(p), slope(Q)

    def _ends(self, p, Q, sp, sQ, pc, t, co):
        """States ``(A, Q)`` at the 2V vessel ends (``2v`` proximal, ``2v + 1`` distal) from
        the boundary conditions, and the outlet flows; ``p`` is the cell pressure, ``sp``
        and ``sQ`` the limited slopes."""
        m = self.model
        lay, top, rho = m.layout, m.topology, m.case.rho
        # outgoing invariant from the reconstructed face value of each end cell
        ec, sg = lay.end_cell, lay.end_sign
        A0e, beta_e, pext_e = co["A0e"], co["beta_e"], co["pext_e"]
        Ae = area(p[ec] + 0.5 * sg * sp[ec], A0e, beta_e, pext_e)
        Qe = Q[ec] + 0.5 * sg * sQ[ec]
        We = Qe / Ae + sg * 4.0 * wave_speed(Ae, A0e, beta_e, rho)
        z0 = jnp.sqrt(jnp.sqrt(Ae / A0e))
        tol, steps = self.newton_tol, self.newton_steps
        A_end = jnp.zeros_like(Ae)
        Q_end = jnp.zeros_like(Ae)

        # inlet: prescribed flow
        e = 2 * top.inlet
        q_in = m.inflow(t)
        z = _root(inlet_residual, z0[e], (We[e], q_in, A0e[e], beta_e[e], rho), tol, steps)
        A_end = A_end.at[e].set(A0e[e] * z**4)
        Q_end = Q_end.at[e].set(q_in)

        # Windkessel outlets
        eo = 2 * np.asarray(top.outlets, dtype=np.int64) + 1
        q_out = jnp.zeros((0,), Q.dtype)
        if eo.size:
            args = (We[eo], pc, co["R1"], A0e[eo], beta_e[eo], pext_e[eo], rho)
            axes = (0, 0, 0, 0, 0, 0, None)
            z = jax.vmap(lambda z0_, a_: _root(windkessel_residual, z0_, a_, tol, steps),
                         in_axes=(0, axes))(z0[eo], args)  # fmt: skip
            Ao, uo, _, _ = boundary_state(z, We[eo], 1.0, A0e[eo], beta_e[eo], 0.0, rho)
            q_out = Ao * uo
            A_end = A_end.at[eo].set(Ao)
            Q_end = Q_end.at[eo].set(q_out)

        # junctions, grouped by the number of vessel ends
        for _n, vessels, signs, _nodes in top.junctions:
            s = np.asarray(signs)
            ej = 2 * np.asarray(vessels, dtype=np.int64) + (s > 0)
            args = (We[ej], s, A0e[ej], beta_e[ej], pext_e[ej], rho)
            axes = (0, 0, 0, 0, 0, None)
            z = jax.vmap(lambda z0_, a_: _root(junction_residual, z0_, a_, tol, steps),
                         in_axes=(0, axes))(z0[ej], args)  # fmt: skip
            Aj, uj, _, _ = boundary_state(z, We[ej], s, A0e[ej], beta_e[ej], 0.0, rho)
            A_end = A_end.at[ej.reshape(-1)].set(Aj.reshape(-1))
            Q_end = Q_end.at[ej.reshape(-1)].set((Aj * uj).reshape(-1))
        return A_end, Q_end, q_out

    def _rates(self, A, Q, pc, t, co):
        m = self.model
        lay, rho = m.layout, m.case.rho
        # reconstruct pressure (not area) and flow, and take the area at a face from the tube
        # law there: a tapered vessel's A0(x) then enters no slope and no numerical
        # diffusion, and the rest state (and, to O(dx²), a steady flow) is kept exactly
        p = pressure(A, co["A0c"], co["beta_c"], lay.p_ext)
        sp, sQ = self._slopes(p, Q)
        # interior faces
        jl = lay.face_left
        A0f, bf, pf = co["A0f"], co["beta_f"], lay.p_ext[jl]
        AL, QL = area(p[jl] + 0.5 * sp[jl], A0f, bf, pf), Q[jl] + 0.5 * sQ[jl]
        AR = area(p[jl + 1] - 0.5 * sp[jl + 1], A0f, bf, pf)
        QR = Q[jl + 1] - 0.5 * sQ[jl + 1]
        FLa, FLq = flux(AL, QL, co["A0f"], co["beta_f"], rho)
        FRa, FRq = flux(AR, QR, co["A0f"], co["beta_f"], rho)
        if self.numerical_flux == "rusanov":
            sL = jnp.abs(QL / AL) + wave_speed(AL, co["A0f"], co["beta_f"], rho)
            sR = jnp.abs(QR / AR) + wave_speed(AR, co["A0f"], co["beta_f"], rho)
            a = jnp.maximum(sL, sR)
        else:
            a = lay.dx[jl] / self.dt
        Fa = 0.5 * (FLa + FRa) - 0.5 * a * (AR - AL)
        Fq = 0.5 * (FLq + FRq) - 0.5 * a * (QR - QL)
        # boundary faces: the physical flux of the boundary states
        A_end, Q_end, q_out = self._ends(p, Q, sp, sQ, pc, t, co)
        Fa_e, Fq_e = flux(A_end, Q_end, co["A0e"], co["beta_e"], rho)
        nf = m.n_cells + len(m.case.vessels)
        FA = jnp.zeros(nf, A.dtype).at[lay.face_slot].set(Fa).at[lay.end_slot].set(Fa_e)
        FQ = jnp.zeros(nf, A.dtype).at[lay.face_slot].set(Fq).at[lay.end_slot].set(Fq_e)
        left = np.arange(m.n_cells) + lay.vessel_of
        dA = -(FA[left + 1] - FA[left]) / lay.dx
        src = -lay.friction * Q / A
        if np.any(lay.dradius != 0.0):
            src = src + taper_source(A, co["A0c"], co["beta_c"], co["dsqrtA0"], co["dK"], rho)
        dQ = -(FQ[left + 1] - FQ[left]) / lay.dx + src
        pout = np.array([o.p_out for o in m.case.outlets])
        dpc = (q_out - (pc - pout) / co["R2"]) / co["C"]
        return dA, dQ, dpc

    # ------------------------------------------------------------------- public
    def __call__(self, u: Float[Array, " n"], t: ScalarLike = 0.0) -> Float[Array, " n"]:
        """Advance ``u`` (state at time ``t``) by one step ``dt`` (SSP-RK2)."""
        self.check(u)
        m, dt = self.model, self.dt
        co = self._coefficients()

        # SSP-RK2 as two passes of one stage, u_{k+1} = a_k u + (1 - a_k)(u_k + dt L(u_k)),
        # a = (0, 1/2), over lax.scan: the stage (and its Newton solves) is traced and
        # compiled once, not twice
        def stage(v, coef):
            a, c = coef
            rates = self._rates(*m.split(v), t + c * dt, co)
            return a * u + (1.0 - a) * (v + dt * jnp.concatenate(rates)), None

        coefs = (jnp.asarray([0.0, 0.5], u.dtype), jnp.asarray([0.0, 1.0], u.dtype))
        return jax.lax.scan(stage, u, coefs)[0]

    def boundary_states(
        self, u: Float[Array, " n"], t: ScalarLike = 0.0
    ) -> tuple[Float[Array, " ends"], Float[Array, " ends"]]:
        """Area and flow ``(A, Q)`` at the ``2 · n_vessels`` vessel ends (index ``2v`` the
        proximal end of vessel ``v``, ``2v + 1`` its distal end) as the scheme's boundary
        and junction solves give them for the state ``u`` at time ``t``: at the inlet
        ``Q = Q_in(t)``; at a junction mass and total pressure balance to the Newton
        tolerance."""
        self.check(u)
        A, Q, pc = self.model.split(u)
        co = self._coefficients()
        p = pressure(A, co["A0c"], co["beta_c"], self.model.layout.p_ext)
        sp, sQ = self._slopes(p, Q)
        A_end, Q_end, _ = self._ends(p, Q, sp, sQ, pc, t, co)
        return A_end, Q_end

    def courant(self, u: Float[Array, " n"]) -> Array:
        """The Courant number ``dt · max_i (|u_i| + c_i) / dx_i`` of the state ``u``."""
        m = self.model
        A, Q, _ = m.split(u)
        lay = m.layout
        c = wave_speed(A, np.pi * lay.radius**2, m.beta()[lay.vessel_of], m.case.rho)
        return self.dt * jnp.max((jnp.abs(Q / A) + c) / lay.dx)

    def run(
        self,
        u0: Float[Array, " n"],
        t0: ScalarLike,
        samples: int,
        every: int,
        *,
        points: int = 5,
        checkpoint: bool = False,
    ) -> tuple[Array, Float[Array, "samples 3 vessels points"], Array]:
        """``samples · every`` steps from ``u0`` at time ``t0``, over ``lax.scan``.

        Returns ``(u_end, probes, max_courant)``: the final state; pressure (Pa), flow
        (m³/s) and area (m²) at ``points`` equally spaced positions per vessel (see
        `ArterialNetwork.probe`) at the times ``t0 + k · every · dt``, ``k = 0 …
        samples − 1`` (before each block of ``every`` steps); the largest Courant number
        met. With ``checkpoint=True`` each block is recomputed in the backward pass
        (memory O(samples + every) instead of O(samples · every)).
        """
        self.check(u0)
        dt = self.dt

        def block(u, k):
            t = t0 + k * (every * dt)
            probe = self.model.probe(u, points)

            def one(carry, i):
                v, cmax = carry
                v = self(v, t + i * dt)
                return (v, jnp.maximum(cmax, self.courant(v))), None

            (u, cmax), _ = jax.lax.scan(one, (u, self.courant(u)), jnp.arange(every))
            return u, (probe, cmax)

        if checkpoint:
            block = jax.checkpoint(block)
        u, (probes, cmax) = jax.lax.scan(block, u0, jnp.arange(samples))
        return u, probes, jnp.max(cmax)


__all__ = ["ArterialMUSCL", "LIMITERS", "NUMERICAL_FLUXES", "arterial_stable_dt"]
