r"""One-dimensional blood flow in compliant arterial networks, and the Windkessel outflow.

The equations only: tube law, fluxes and sources of the area–flow (``A``, ``Q``) system,
Riemann invariants, the residuals of the boundary and junction conditions, the
three-element Windkessel, and the network description (`ArterialCase`, `ArterialNetwork`)
with its learnable θ_s (``E`` per vessel; ``R1``, ``C``, ``R2`` per outlet). The
finite-volume solver lives in `scilayers.solvers.ArterialMUSCL`; the case-file reader in
`scilayers.data.load_arterial_case`.

Formulation (as in openBF, Melis 2017, on whose case files the data are built):

$$\partial_t A + \partial_x Q = 0,\qquad
  \partial_t Q + \partial_x\Big(\frac{Q^2}{A}\Big) + \frac{A}{ρ}\,\partial_x p
  = -2(γ_v+2)\,π\,\frac{μ}{ρ}\,\frac{Q}{A},$$

with the elastic tube law

$$p = p_\mathrm{ext} + \frac{β}{A_0}\big(\sqrt{A} - \sqrt{A_0}\big),\qquad
  β = \frac{\sqrt{π}\,E\,h_0}{1 - σ^2} = \frac{4}{3}\sqrt{π}\,E\,h_0\quad(σ = 1/2),$$

``β`` in Pa·m. openBF stores ``β/√A0`` (Pa) under the name ``beta`` and writes
``p = p_ext + beta (√(A/A0) − 1)``: the same law. ``γ_v`` is the exponent of the
axisymmetric velocity profile ``u(r) ∝ 1 − (r/R)^{γ_v}`` (``gamma_profile`` in the case
files; 9 is a blunt profile, 2 is Poiseuille). In conservation form the momentum flux is
``Q²/A + β A^{3/2} / (3 ρ A0)``; a tapered vessel (``A0``, ``β/A0`` varying along ``x``)
adds the non-conservative source given in `taper_source`. The wave speed is

$$c = \sqrt{\frac{A}{ρ}\frac{\partial p}{\partial A}} = \sqrt{\frac{β\sqrt{A}}{2ρA_0}},
\qquad c_0 = \sqrt{\frac{β}{2ρ\sqrt{A_0}}}\ \text{at}\ A = A_0,$$

and the Riemann invariants of the frictionless uniform system are ``W± = Q/A ± 4c``.

References: L. Formaggia, D. Lamponi, A. Quarteroni (2003) J Eng Math 47:251;
J. Alastruey et al. (2012) "Arterial pulse wave haemodynamics"; E. Boileau et al. (2015)
Int J Numer Meth Biomed Eng 31:e02732; A. Melis (2017) openBF, github.com/alemelis/openBF.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._typing import ScalarLike
from ..params import Param, Positive
from ._base import AbstractForcedModel, _param

MMHG = 133.322387415
"""One millimetre of mercury in pascal."""


# ------------------------------------------------------------------------- tube law
def wall_stiffness(E: ArrayLike, h0: ArrayLike) -> Array:
    r"""``β = (4/3) √π E h0`` (Pa·m): the tube-law stiffness of a thin elastic wall
    (Poisson ratio 1/2), from Young's modulus ``E`` (Pa) and wall thickness ``h0`` (m)."""
    return (4.0 / 3.0) * math.sqrt(math.pi) * jnp.asarray(E) * jnp.asarray(h0)


def pressure(A: ArrayLike, A0: ArrayLike, beta: ArrayLike, p_ext: ArrayLike = 0.0) -> Array:
    r"""Tube law ``p = p_ext + β (√A − √A0) / A0`` (Pa), ``β`` from `wall_stiffness`."""
    return p_ext + beta * (jnp.sqrt(A) - jnp.sqrt(A0)) / A0


def area(p: ArrayLike, A0: ArrayLike, beta: ArrayLike, p_ext: ArrayLike = 0.0) -> Array:
    r"""Inverse tube law: the area ``A = (√A0 + (p − p_ext) A0 / β)²`` (m²) at pressure ``p``."""
    return (jnp.sqrt(A0) + (p - p_ext) * A0 / beta) ** 2


def wave_speed(A: ArrayLike, A0: ArrayLike, beta: ArrayLike, rho: ScalarLike) -> Array:
    r"""Pulse-wave speed ``c = √(β √A / (2 ρ A0))`` (m/s); at ``A = A0`` the linear speed
    ``c0 = √(β / (2 ρ √A0))``."""
    return jnp.sqrt(beta * jnp.sqrt(A) / (2.0 * rho * A0))


def flux(
    A: ArrayLike, Q: ArrayLike, A0: ArrayLike, beta: ArrayLike, rho: ScalarLike
) -> tuple[Array, Array]:
    r"""Physical flux of the conservation form, ``(Q, Q²/A + β A^{3/2} / (3 ρ A0))``."""
    return jnp.asarray(Q), Q * Q / A + beta * A * jnp.sqrt(A) / (3.0 * rho * A0)


def friction_coefficient(gamma_profile: ArrayLike, mu: ScalarLike, rho: ScalarLike) -> Array:
    r"""``K_R = 2 (γ_v + 2) π μ / ρ`` (m²/s): the viscous source is ``−K_R Q / A``."""
    return 2.0 * (jnp.asarray(gamma_profile) + 2.0) * math.pi * mu / rho


def taper_source(
    A: ArrayLike,
    A0: ArrayLike,
    beta: ArrayLike,
    dsqrtA0_dx: ArrayLike,
    dK_dx: ArrayLike,
    rho: ScalarLike,
) -> Array:
    r"""Momentum source of a tapered vessel, so that ``∂x(flux) − source = (A/ρ) ∂x p``.

    With ``K = β/A0`` varying along ``x``,

    $$S = -\frac{A}{ρ}\Big[K'\big(\tfrac23\sqrt{A} - \sqrt{A_0}\big) - K\,(\sqrt{A_0})'\Big],$$

    which vanishes for a uniform vessel and keeps the state ``A = A0(x), Q = 0`` at rest.
    """
    K = beta / A0
    return -(A / rho) * (dK_dx * (2.0 / 3.0 * jnp.sqrt(A) - jnp.sqrt(A0)) - K * dsqrtA0_dx)


def riemann_invariants(
    A: ArrayLike, Q: ArrayLike, A0: ArrayLike, beta: ArrayLike, rho: ScalarLike
) -> tuple[Array, Array]:
    r"""``(W+, W−) = (Q/A + 4c, Q/A − 4c)``: the forward (speed ``u + c``) and backward
    (speed ``u − c``) Riemann invariants of the frictionless uniform system."""
    u = Q / A
    c4 = 4.0 * wave_speed(A, A0, beta, rho)
    return u + c4, u - c4


# ------------------------------------------------- boundary / junction residuals
# The unknown of every boundary problem is ``z = (A/A0)^{1/4}`` per vessel end, so that
# ``A = A0 z⁴``, ``c = c0 z`` and ``p − p_ext = (β/√A0)(z² − 1)``: every residual is a
# polynomial in ``z`` (no square roots of a Newton iterate that could turn negative).
def boundary_state(z, W, sign, A0, beta, p_ext, rho):
    r"""The state at a vessel end from ``z = (A/A0)^{1/4}`` and the outgoing invariant
    ``W`` (``sign`` +1 at a distal end, where ``W = W+``; −1 at a proximal end, ``W−``):
    returns ``(A, u, p, c0)`` with ``A = A0 z⁴``, ``u = W − sign · 4 c0 z`` (``c = c0 z``),
    ``p = p_ext + (β/√A0)(z² − 1)``."""
    c0 = jnp.sqrt(beta / (2.0 * rho * jnp.sqrt(A0)))
    z2 = z * z
    A = A0 * z2 * z2
    u = W - sign * 4.0 * c0 * z
    p = p_ext + beta / jnp.sqrt(A0) * (z2 - 1.0)
    return A, u, p, c0


def inlet_residual(z, args) -> Array:
    r"""Prescribed inflow at a vessel's proximal end: ``A u − Q_in = 0`` with
    ``u = W− + 4c(A)`` (the backward invariant ``W−`` leaves the vessel through its inlet).

    ``args = (W, Q_in, A0, beta, rho)``; the residual is scaled by ``A0 c0``."""
    W, q_in, A0, beta, rho = args
    A, u, _, c0 = boundary_state(z, W, -1.0, A0, beta, 0.0, rho)
    return (A * u - q_in) / (A0 * c0)


def windkessel_residual(z, args) -> Array:
    r"""Three-element Windkessel at a vessel's distal end: ``p(A) − P_c − R1 A u = 0`` with
    ``u = W+ − 4c(A)`` (the forward invariant ``W+`` leaves through the outlet), ``P_c``
    the pressure of the Windkessel's capacitor.

    ``args = (W, P_c, R1, A0, beta, p_ext, rho)``; scaled by ``ρ c0²``."""
    W, pc, R1, A0, beta, p_ext, rho = args
    A, u, p, c0 = boundary_state(z, W, 1.0, A0, beta, p_ext, rho)
    return (p - pc - R1 * A * u) / (rho * c0 * c0)


def junction_residual(z, args) -> Array:
    r"""A junction of ``n`` vessel ends (bifurcation, conjunction, simple joint, any ``n``):

    - each end keeps its outgoing invariant: ``u_k = W_k − s_k 4 c_k(A_k)``;
    - mass is conserved: ``Σ_k s_k A_k u_k = 0``;
    - total pressure is continuous: ``p_k + ρu_k²/2 = p_1 + ρu_1²/2``, ``k = 2 … n``;

    ``s_k = +1`` for a vessel that ends at the junction (its distal end, flow into the
    node), ``−1`` for one that starts there. ``args = (W, s, A0, beta, p_ext, rho)``, each
    of shape ``(n,)`` but ``rho``. Mass is scaled by ``mean(A0 c0)``, pressure by
    ``ρ mean(c0)²``."""
    W, s, A0, beta, p_ext, rho = args
    A, u, p, c0 = boundary_state(z, W, s, A0, beta, p_ext, rho)
    mass = jnp.sum(s * A * u) / jnp.mean(A0 * c0)
    ptot = p + 0.5 * rho * u * u
    cont = (ptot[1:] - ptot[0]) / (rho * jnp.mean(c0) ** 2)
    return jnp.concatenate([mass[None], cont])


# --------------------------------------------------------------------- Windkessel
class Windkessel(AbstractForcedModel):
    r"""Three-element Windkessel (R1–C–R2): the outflow model of a truncated arterial tree.

    The capacitor pressure ``P_c`` (the state, shape ``(1,)``) obeys

    $$C\,\frac{dP_c}{dt} = Q(t) - \frac{P_c - p_\mathrm{out}}{R_2},\qquad
      p = P_c + R_1\,Q(t),$$

    so a steady inflow ``Q`` gives ``p → p_out + Q (R1 + R2)``, approached as
    ``exp(−t / (R2 C))``.

    **Arguments:**

    - `R1`: proximal (characteristic) resistance, Pa·s/m³ (default 1e7).
    - `C`: compliance, m³/Pa (default 1e-8).
    - `R2`: peripheral resistance, Pa·s/m³ (default 1e8).
    - `p_out`: venous (outflow) pressure, Pa (default 0; openBF uses 0), not learned.
    - `inflow`: the inflow ``Q(t)`` (m³/s), a number or a function of ``t`` (default 0).

    ``R1``, ``C``, ``R2`` are positive `Param`s (plain numbers are wrapped).
    """

    R1: Param
    C: Param
    R2: Param
    p_out: float = eqx.field(static=True)
    inflow: object = eqx.field(static=True)

    def __init__(self, R1=1.0e7, C=1.0e-8, R2=1.0e8, p_out: float = 0.0, inflow=0.0):
        self.R1 = _param(R1, Positive(), name="R1", units="Pa s/m^3")
        self.C = _param(C, Positive(), name="C", units="m^3/Pa")
        self.R2 = _param(R2, Positive(), name="R2", units="Pa s/m^3")
        self.p_out = float(p_out)
        if not (callable(inflow) or np.ndim(inflow) == 0):
            raise ValueError(
                f"Windkessel: inflow must be a number or a function of t, got {inflow!r}."
            )
        self.inflow = inflow if callable(inflow) else float(inflow)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (1,)

    def flow(self, t: ScalarLike) -> Array:
        """The inflow ``Q(t)`` (m³/s)."""
        q = self.inflow(t) if callable(self.inflow) else self.inflow
        return jnp.asarray(q, dtype=jnp.result_type(float))

    def rhs(self, u: Float[Array, " 1"]) -> Float[Array, " 1"]:
        """Capacitor discharge through ``R2``: ``−(P_c − p_out) / (R2 C)``."""
        return -(u - self.p_out) / (self.R2.value * self.C.value)

    def source(self, t: ScalarLike, u: Float[Array, " 1"]) -> Float[Array, " 1"]:
        """Charging by the inflow: ``Q(t) / C``."""
        return jnp.broadcast_to(self.flow(t) / self.C.value, u.shape)

    def pressure(self, u: Float[Array, " 1"], t: ScalarLike) -> Array:
        """Inlet pressure ``p = P_c + R1 Q(t)`` (Pa), shape ``()``."""
        return u[0] + self.R1.value * self.flow(t)

    def time_constant(self) -> Array:
        """``R2 C`` (s), the relaxation time of the capacitor."""
        return self.R2.value * self.C.value

    def initial_condition(self, key: PRNGKeyArray | None = None) -> Float[Array, " 1"]:
        """The discharged state ``P_c = p_out`` (``key`` is unused)."""
        return jnp.full((1,), self.p_out, dtype=jnp.result_type(float))


# --------------------------------------------------------------- network description
@dataclasses.dataclass(frozen=True)
class VesselSpec:
    """One arterial segment of a case file (SI units).

    ``r_prox``/``r_dist`` are the lumen radii at the inlet and outlet ends (equal for a
    uniform vessel; the radius varies linearly in between); ``h0`` the wall thickness;
    ``sn``/``tn`` the ids of its start and end nodes; ``n_cells`` the finite-volume cells
    (openBF's ``M``, default ``max(5, ⌈L / 1 mm⌉)``)."""

    label: str
    sn: int
    tn: int
    length: float
    E: float
    r_prox: float
    r_dist: float
    h0: float
    gamma_profile: float
    p_ext: float
    n_cells: int


@dataclasses.dataclass(frozen=True)
class OutletSpec:
    """A three-element Windkessel at the distal end of vessel number `vessel`."""

    vessel: int
    R1: float
    C: float
    R2: float
    p_out: float = 0.0


@dataclasses.dataclass(frozen=True)
class ArterialCase:
    """A network case: vessels, Windkessel outlets, blood, and the inflow waveform over one
    cardiac cycle (``inflow_time`` from 0 to the period, ``inflow_flow`` in m³/s at the
    proximal end of the network's single inlet vessel). Hashable (tuples only), so it can
    sit in a static field of a jitted module. ``cfl``, ``max_cycles``, ``samples`` (openBF's
    ``jump``) and ``tolerance_mmhg`` are the case file's solver settings."""

    name: str
    vessels: tuple[VesselSpec, ...]
    outlets: tuple[OutletSpec, ...]
    rho: float
    mu: float
    inflow_time: tuple[float, ...]
    inflow_flow: tuple[float, ...]
    cfl: float = 0.9
    max_cycles: int = 10
    samples: int = 100
    tolerance_mmhg: float = 1.0
    source: str = ""

    @property
    def period(self) -> float:
        """The cardiac period (s): the last time of the inflow waveform."""
        return float(self.inflow_time[-1])

    @property
    def mean_inflow(self) -> float:
        """Cycle-averaged inflow (m³/s) of the case's waveform (numpy: a constant even
        where a solver is being traced; `ArterialNetwork.mean_inflow` is its network's)."""
        t, q = np.asarray(self.inflow_time), np.asarray(self.inflow_flow)
        return float(np.trapezoid(q, t) / (t[-1] - t[0]))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(v.label for v in self.vessels)

    def __post_init__(self):
        _topology(self)  # validates the graph once


@dataclasses.dataclass(frozen=True)
class _Topology:
    inlet: int  # vessel fed by the inflow
    outlets: tuple[int, ...]  # vessel per outlet (same order as case.outlets)
    # junction groups by number of vessel ends: n -> (vessels (k, n), signs (k, n), nodes)
    junctions: tuple[tuple[int, tuple[tuple[int, ...], ...], tuple[tuple[float, ...], ...],
                           tuple[int, ...]], ...]  # fmt: skip


def _check_waveform(t, q, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(times, flows)`` of an inflow waveform as float arrays, checked: 1-D, of equal
    length >= 2, times increasing from 0."""
    t, q = np.asarray(t, dtype=float), np.asarray(q, dtype=float)
    if t.ndim != 1 or t.shape != q.shape or t.size < 2 or t[0] != 0 or np.any(np.diff(t) <= 0):
        raise ValueError(
            f"{where}: the inflow needs >= 2 (time, flow) pairs, times increasing from 0; got "
            f"shapes {t.shape} and {q.shape}."
        )
    return t, q


@functools.lru_cache(maxsize=64)
def _topology(case: ArterialCase) -> _Topology:
    where = f"{case.source or case.name}"
    if not case.vessels:
        raise ValueError(f"{where}: the network has no vessels.")
    if not (case.rho > 0 and case.mu > 0):
        raise ValueError(f"{where}: blood density and viscosity must be > 0.")
    _check_waveform(case.inflow_time, case.inflow_flow, where)
    for v in case.vessels:
        values = (v.length, v.E, v.r_prox, v.r_dist, v.h0)
        if not all(np.isfinite(x) and x > 0 for x in values) or v.n_cells < 2:
            raise ValueError(
                f"{where}: vessel {v.label!r} needs L, E, radii and h0 > 0 and at least 2 "
                f"cells, got L={v.length}, E={v.E}, R={v.r_prox}/{v.r_dist}, h0={v.h0}, "
                f"M={v.n_cells}."
            )
    for o in case.outlets:
        if not 0 <= o.vessel < len(case.vessels):
            raise ValueError(
                f"{where}: an outlet names vessel number {o.vessel}, not in the network."
            )
    ends: dict[int, list[tuple[int, float]]] = {}
    for i, v in enumerate(case.vessels):
        if v.sn == v.tn:
            raise ValueError(f"{where}: vessel {v.label!r} starts and ends at node {v.sn}.")
        ends.setdefault(v.sn, []).append((i, -1.0))
        ends.setdefault(v.tn, []).append((i, 1.0))
    inlets = [i for node, e in ends.items() if len(e) == 1 and e[0][1] < 0 for i, _ in e]
    terminals = [i for node, e in ends.items() if len(e) == 1 and e[0][1] > 0 for i, _ in e]
    if len(inlets) != 1:
        names = [case.vessels[i].label for i in inlets]
        raise ValueError(
            f"{where}: expected exactly one inlet vessel (a start node 'sn' that no other "
            f"vessel touches), found {len(inlets)}: {names}."
        )
    out_vessels = tuple(o.vessel for o in case.outlets)
    if len(set(out_vessels)) != len(out_vessels):
        raise ValueError(f"{where}: a vessel has two Windkessel outlets.")
    for i in terminals:
        if i not in out_vessels:
            raise ValueError(
                f"{where}: terminal vessel {case.vessels[i].label!r} has no outlet; give it "
                f"R1, R2 and Cc (a three-element Windkessel)."
            )
    for i in out_vessels:
        if i not in terminals:
            raise ValueError(
                f"{where}: vessel {case.vessels[i].label!r} has a Windkessel outlet but its "
                f"end node {case.vessels[i].tn} joins other vessels."
            )
    groups: dict[int, list] = {}
    for node in sorted(ends):
        e = ends[node]
        if len(e) < 2:
            continue
        if all(s > 0 for _, s in e) or all(s < 0 for _, s in e):
            kind = "ends" if e[0][1] > 0 else "starts"
            raise ValueError(
                f"{where}: every vessel at node {node} {kind} there; a junction needs flow "
                f"in and out."
            )
        groups.setdefault(len(e), []).append((tuple(i for i, _ in e), tuple(s for _, s in e), node))
    junctions = tuple(
        (n, tuple(g[0] for g in grp), tuple(g[1] for g in grp), tuple(g[2] for g in grp))
        for n, grp in sorted(groups.items())
    )
    return _Topology(inlets[0], out_vessels, junctions)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Static (numpy) geometry of the flat cell layout: vessel ``v`` owns cells
    ``offsets[v]:offsets[v+1]`` and faces ``offsets[v]+v … offsets[v+1]+v``."""

    offsets: np.ndarray
    vessel_of: np.ndarray  # (N,)
    dx: np.ndarray  # (N,)
    radius: np.ndarray  # (N,) lumen radius at the cell centre
    dradius: np.ndarray  # (N,) dR/dx
    h0: np.ndarray  # (N,)
    p_ext: np.ndarray  # (N,)
    friction: np.ndarray  # (N,) K_R
    face_left: np.ndarray  # (F_int,) left cell of each interior face
    face_radius: np.ndarray  # (F_int,)
    face_slot: np.ndarray  # (F_int,) index in the face array
    end_cell: np.ndarray  # (2V,) cell next to end e (e = 2v proximal, 2v+1 distal)
    end_slot: np.ndarray  # (2V,)
    end_radius: np.ndarray  # (2V,)
    end_sign: np.ndarray  # (2V,) -1 proximal, +1 distal
    first: np.ndarray  # (N,) bool, first cell of a vessel
    last: np.ndarray  # (N,) bool


@functools.lru_cache(maxsize=64)
def _layout(case: ArterialCase) -> _Layout:
    V = len(case.vessels)
    m = np.array([v.n_cells for v in case.vessels])
    offsets = np.concatenate([[0], np.cumsum(m)])
    vessel_of = np.repeat(np.arange(V), m)
    L = np.array([v.length for v in case.vessels])
    rp = np.array([v.r_prox for v in case.vessels])
    rd = np.array([v.r_dist for v in case.vessels])
    dx_v = L / m
    local = np.arange(offsets[-1]) - offsets[vessel_of]
    xc = (local + 0.5) * dx_v[vessel_of]
    slope = (rd - rp) / L
    radius = rp[vessel_of] + slope[vessel_of] * xc
    first = local == 0
    last = local == m[vessel_of] - 1
    face_left = np.flatnonzero(~last)
    xf = (local[face_left] + 1.0) * dx_v[vessel_of[face_left]]
    face_radius = rp[vessel_of[face_left]] + slope[vessel_of[face_left]] * xf
    end_cell = np.stack([offsets[:-1], offsets[1:] - 1], axis=1).reshape(-1)
    end_slot = np.stack([offsets[:-1] + np.arange(V), offsets[1:] + np.arange(V)], axis=1)
    end_radius = np.stack([rp, rd], axis=1).reshape(-1)
    gam = np.array([v.gamma_profile for v in case.vessels])
    return _Layout(
        offsets=offsets,
        vessel_of=vessel_of,
        dx=dx_v[vessel_of],
        radius=radius,
        dradius=slope[vessel_of],
        h0=np.array([v.h0 for v in case.vessels])[vessel_of],
        p_ext=np.array([v.p_ext for v in case.vessels])[vessel_of],
        friction=2.0 * (gam[vessel_of] + 2.0) * math.pi * case.mu / case.rho,
        face_left=face_left,
        face_radius=face_radius,
        face_slot=face_left + vessel_of[face_left] + 1,
        end_cell=end_cell,
        end_slot=end_slot.reshape(-1),
        end_radius=end_radius,
        end_sign=np.tile(np.array([-1.0, 1.0]), V),
        first=first,
        last=last,
    )


class ArterialNetwork(eqx.Module):
    r"""A 1-D arterial network (`ArterialCase`) with learnable wall and outflow parameters.

    The equations are those of the module docstring: area–flow conservation law per vessel,
    tube law ``p = p_ext + β(√A − √A0)/A0`` with ``β = (4/3)√π E h0``, viscous friction
    ``−2(γ_v+2)πμQ/(ρA)``, a prescribed inflow at the inlet vessel, a three-element
    Windkessel at each terminal vessel and junctions conserving mass and total pressure.

    State (flat, shape `state_shape`): the cell averages ``A`` (m², all vessels'
    cells concatenated in case order), then ``Q`` (m³/s), then the Windkessel capacitor
    pressures ``P_c`` (Pa, one per outlet). `split` and `join` convert.

    **Arguments:**

    - `case`: the network (`scilayers.data.load_arterial_case` reads one).
    - `E`: Young's modulus per vessel (Pa), shape ``(n_vessels,)``; default the case's.
    - `R1`, `C`, `R2`: Windkessel resistance (Pa·s/m³), compliance (m³/Pa), resistance per
      outlet, shape ``(n_outlets,)``; default the case's.
    - `inflow`: the inflow waveform over one cycle as ``(times, flows)`` (s from 0 to the
      period, m³/s); default the case's. It is held as a fixed `Param` (data, not a static
      field), so networks that differ only in their inflow — another heart rate, an
      exercise waveform with as many samples — share one compiled program.

    Each of `E`, `R1`, `C`, `R2` is a positive `Param` (numbers and arrays are wrapped), so
    θ_s = ``{E, R1, C, R2}``; pass ``Param(..., fixed=True)`` to hold one fixed.
    """

    case: ArterialCase = eqx.field(static=True)
    E: Param
    R1: Param
    C: Param
    R2: Param
    inflow_wave: Param

    def __init__(self, case: ArterialCase, E=None, R1=None, C=None, R2=None, inflow=None):
        if not isinstance(case, ArterialCase):
            raise ValueError(
                f"ArterialNetwork needs an ArterialCase (see scilayers.data.load_arterial_case), "
                f"got {type(case).__name__}."
            )
        self.case = case
        nv, no = len(case.vessels), len(case.outlets)

        def make(x, default, n, name, units):
            if x is None:
                x = np.asarray(default, dtype=float)
            p = _param(x, Positive(), name=name, units=units)
            if tuple(np.shape(p.value)) != (n,):
                raise ValueError(
                    f"ArterialNetwork: {name} must have shape ({n},) (one per "
                    f"{'vessel' if name == 'E' else 'outlet'}), got {tuple(np.shape(p.value))}."
                )
            return p

        self.E = make(E, [v.E for v in case.vessels], nv, "E", "Pa")
        self.R1 = make(R1, [o.R1 for o in case.outlets], no, "R1", "Pa s/m^3")
        self.C = make(C, [o.C for o in case.outlets], no, "C", "m^3/Pa")
        self.R2 = make(R2, [o.R2 for o in case.outlets], no, "R2", "Pa s/m^3")
        t, q = (case.inflow_time, case.inflow_flow) if inflow is None else inflow
        t, q = _check_waveform(t, q, "ArterialNetwork")
        if not np.all(np.isfinite(q)):
            raise ValueError("ArterialNetwork: the inflow waveform contains NaN or inf.")
        self.inflow_wave = Param(np.stack([t, q]), fixed=True, name="inflow")

    # -- layout -------------------------------------------------------------------
    @property
    def n_cells(self) -> int:
        """Total number of finite-volume cells."""
        return int(sum(v.n_cells for v in self.case.vessels))

    @property
    def n_outlets(self) -> int:
        return len(self.case.outlets)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (2 * self.n_cells + self.n_outlets,)

    @property
    def topology(self) -> _Topology:
        return _topology(self.case)

    @property
    def layout(self) -> _Layout:
        return _layout(self.case)

    def split(self, u: Float[Array, " n"]) -> tuple[Array, Array, Array]:
        """``(A, Q, P_c)`` from the flat state."""
        n = self.n_cells
        return u[:n], u[n : 2 * n], u[2 * n :]

    def join(self, A: Array, Q: Array, pc: Array) -> Float[Array, " n"]:
        """The flat state from ``(A, Q, P_c)``."""
        return jnp.concatenate([A, Q, pc])

    # -- coefficients from θ_s (computed inside the call, so gradients reach E) -----
    def beta(self) -> Float[Array, " vessels"]:
        """``β = (4/3)√π E h0`` per vessel (Pa·m)."""
        h0 = np.array([v.h0 for v in self.case.vessels])
        return wall_stiffness(self.E.value, h0)

    def reference_area(self) -> np.ndarray:
        """``A0`` at the cell centres (m², numpy)."""
        return np.pi * self.layout.radius**2

    def wave_speed0(self) -> Float[Array, " vessels"]:
        """Linear wave speed ``c0 = √(β / (2ρ√A0))`` per vessel (m/s) at its smallest
        radius (the fastest point of a tapered vessel)."""
        rmin = np.array([min(v.r_prox, v.r_dist) for v in self.case.vessels])
        A0 = np.pi * rmin**2
        return wave_speed(A0, A0, self.beta(), self.case.rho)

    @property
    def period(self) -> Array:
        """The cardiac period (s) of the inflow waveform."""
        return self.inflow_wave.value[0, -1]

    def inflow(self, t: ScalarLike) -> Array:
        """Inlet flow ``Q_in(t)`` (m³/s): the inflow waveform, periodic, linearly
        interpolated."""
        tt, qq = self.inflow_wave.value
        return jnp.interp(jnp.mod(t, tt[-1]), tt, qq)

    def mean_inflow(self) -> Array:
        """Cycle-averaged inflow (m³/s)."""
        tt, qq = self.inflow_wave.value
        return jnp.trapezoid(qq, tt) / (tt[-1] - tt[0])

    # -- diagnostics --------------------------------------------------------------
    def pressure(self, u: Float[Array, " n"]) -> Float[Array, " cells"]:
        """Pressure in every cell (Pa)."""
        A, _, _ = self.split(u)
        lay = self.layout
        return pressure(A, self.reference_area(), self.beta()[lay.vessel_of], lay.p_ext)

    def volume(self, u: Float[Array, " n"]) -> Array:
        """Blood volume in the vessels, ``Σ A_i dx_i`` (m³)."""
        A, _, _ = self.split(u)
        return jnp.sum(A * self.layout.dx)

    def probe(self, u: Float[Array, " n"], points: int = 5) -> Float[Array, "3 vessels points"]:
        """Pressure (Pa), flow (m³/s) and area (m²) at ``points`` equally spaced positions
        along each vessel, inlet (x = 0) to outlet (x = L): linear interpolation between
        cell centres, linear extrapolation into the end half-cells (second order)."""
        A, Q, _ = self.split(u)
        p = self.pressure(u)
        idx, w = _probe_weights(self.case, points)
        out = [f[idx[..., 0]] * (1.0 - w) + f[idx[..., 1]] * w for f in (p, Q, A)]
        return jnp.stack(out)

    # -- initial states -------------------------------------------------------------
    def initial_state(self, kind: str = "mean") -> Float[Array, " n"]:
        """A starting state.

        - ``"rest"``: ``A = A0``, ``Q = 0``, ``P_c = p_out`` (openBF's start).
        - ``"mean"`` (default): the steady state of the cycle-mean inflow without friction:
          every vessel at the pressure ``P̄`` for which the outlets (each ``R1 + R2`` to
          ``p_out``) drain the mean inflow, vessel flows from mass balance, capacitors
          charged to ``p_out + R2 Q_k``. Reaches the periodic state in fewer cycles.
        """
        lay = self.layout
        A0 = self.reference_area()
        dtype = jnp.result_type(float)
        no = self.n_outlets
        pout = np.array([o.p_out for o in self.case.outlets])
        if kind == "rest":
            return self.join(
                jnp.asarray(A0, dtype), jnp.zeros(self.n_cells, dtype), jnp.asarray(pout, dtype)
            )
        if kind != "mean":
            raise ValueError(f"unknown initial state {kind!r}; use 'mean' or 'rest'.")
        R = self.R1.value + self.R2.value
        qbar = self.mean_inflow()
        pbar = (qbar + jnp.sum(pout / R)) / jnp.sum(1.0 / R)
        q_out = (pbar - pout) / R
        pc = pout + self.R2.value * q_out
        A = area(pbar, A0, self.beta()[lay.vessel_of], lay.p_ext)
        q_ves = jnp.asarray(_mean_flows(self.case)) @ jnp.concatenate(
            [jnp.asarray([qbar], dtype), q_out]
        )
        Q = q_ves[lay.vessel_of]
        assert pc.shape == (no,)
        return self.join(A, Q, pc)


@functools.lru_cache(maxsize=64)
def _probe_weights(case: ArterialCase, points: int) -> tuple[np.ndarray, np.ndarray]:
    """For each (vessel, point): the two cells to interpolate between and the weight of the
    second, so that ``f(x) ≈ f[i] (1 − w) + f[j] w`` (linear; extrapolated at the ends)."""
    if points < 2:
        raise ValueError(f"probe needs at least 2 points per vessel, got {points}.")
    lay = _layout(case)
    idx = np.zeros((len(case.vessels), points, 2), dtype=np.int64)
    w = np.zeros((len(case.vessels), points))
    for v, spec in enumerate(case.vessels):
        m = spec.n_cells
        xi = np.linspace(0.0, 1.0, points) * m - 0.5  # position in cell-centre units
        i0 = np.clip(np.floor(xi).astype(int), 0, m - 2)
        idx[v, :, 0] = lay.offsets[v] + i0
        idx[v, :, 1] = lay.offsets[v] + i0 + 1
        w[v] = xi - i0
    return idx, w


@functools.lru_cache(maxsize=64)
def _mean_flows(case: ArterialCase) -> np.ndarray:
    """Matrix ``M`` with ``q_vessels = M @ [Q_in, Q_out_1, …]``: the steady vessel flows
    from mass balance at every node (least squares, so a network with loops gets the
    minimum-norm split)."""
    top = _topology(case)
    nodes = sorted({v.sn for v in case.vessels} | {v.tn for v in case.vessels})
    row = {n: i for i, n in enumerate(nodes)}
    B = np.zeros((len(nodes), len(case.vessels)))
    for i, v in enumerate(case.vessels):
        B[row[v.sn], i] -= 1.0
        B[row[v.tn], i] += 1.0
    # B q + (inflow at inlet node) − (outflow at outlet nodes) = 0
    S = np.zeros((len(nodes), 1 + len(top.outlets)))
    S[row[case.vessels[top.inlet].sn], 0] = 1.0
    for k, vi in enumerate(top.outlets):
        S[row[case.vessels[vi].tn], 1 + k] = -1.0
    return -np.linalg.pinv(B) @ S
