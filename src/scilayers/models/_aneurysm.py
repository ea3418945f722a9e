r"""Two-dimensional incompressible flow in a vessel: geometry, inflow waveform, the flow model.

The equations (solved by `scilayers.solvers.LatticeBoltzmann`) are the incompressible
Navier–Stokes equations of a generalised-Newtonian fluid,

$$∇·\mathbf u = 0,\qquad
  ρ\big(∂_t\mathbf u + (\mathbf u·∇)\mathbf u\big)
  = −∇p + ∇·\big(2μ(γ̇)\,\mathbf S\big) + \mathbf f,$$

``S = (∇u + ∇uᵀ)/2``, ``γ̇ = √(2 S:S)``, ``μ(γ̇)`` a rheology (`Carreau`, `Newtonian`,
`PowerLaw`), ``f`` an optional body force (N/m³). The geometry is a boolean mask of fluid
cells; walls are no-slip. With an inflow the domain is open in ``x``: a velocity profile
(parabolic, its mean following a `Waveform`) at the first column, a pressure outflow at
the last; without one it is periodic in ``x``.

Geometry conventions: cell ``(i, j)`` has its centre at ``((i + ½) dx, (j + ½) dx)``
(``x`` along the vessel, ``y`` across), a cell is fluid if its centre is. A geometry's
``level_set(x, y, dx)`` (positive in the fluid, zero on the wall) is its analytic wall:
the solver's halfway bounce-back puts the wall on the cell faces between fluid and solid
cells (a staircase), its interpolated (Bouzidi) walls where the level set crosses zero.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._typing import ScalarLike
from ._rheology import BLOOD_DENSITY, AbstractRheology


# -------------------------------------------------------------------------- waveform
@dataclasses.dataclass(frozen=True)
class Waveform:
    """A periodic signal sampled over one period: ``value(t)`` by linear interpolation of
    ``(time, value)`` at ``t mod period``. Hashable (tuples), so it can sit in a static
    field of a jitted module.

    **Arguments:**

    - `time`: sample times (s), increasing, from 0; the last is the period unless
      `period` is given.
    - `value`: the samples (for an inflow: the mean velocity over the inlet, m/s).
    - `period`: the period (s); default ``time[-1]``.
    """

    time: tuple[float, ...]
    value: tuple[float, ...]
    period: float = 0.0

    def __post_init__(self):
        t = np.asarray(self.time, dtype=float)
        v = np.asarray(self.value, dtype=float)
        if t.ndim != 1 or t.size < 2 or t.shape != v.shape:
            raise ValueError(
                f"Waveform needs two 1-D sequences of the same length >= 2 (time, value), "
                f"got shapes {t.shape} and {v.shape}."
            )
        if t[0] != 0 or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(v)):
            raise ValueError("Waveform: times must increase from 0 and values be finite.")
        object.__setattr__(self, "time", tuple(float(x) for x in t))
        object.__setattr__(self, "value", tuple(float(x) for x in v))
        period = float(self.period) or float(t[-1])
        if period < t[-1]:
            raise ValueError(f"Waveform: period {period} is shorter than the last time {t[-1]}.")
        object.__setattr__(self, "period", period)

    @classmethod
    def from_flow(cls, time, flow, radius: float) -> Waveform:
        """The mean velocity ``Q(t) / (π r²)`` (m/s) of a volumetric flow waveform ``Q``
        (m³/s) in a circular artery of radius ``radius`` (m), e.g. an openBF inlet file
        (`scilayers.data.load_inflow_waveform`)."""
        return cls(tuple(time), tuple(np.asarray(flow, dtype=float) / (math.pi * radius**2)))

    def __call__(self, t: ScalarLike) -> Array:
        tt = np.asarray(self.time)
        vv = np.asarray(self.value)
        if self.period > tt[-1]:  # close the cycle: interpolate back to value[0]
            tt, vv = np.append(tt, self.period), np.append(vv, vv[0])
        return jnp.interp(jnp.mod(t, self.period), tt, vv)

    @property
    def mean(self) -> float:
        """The time average over one period (trapezoid rule)."""
        tt, vv = np.asarray(self.time), np.asarray(self.value)
        tt, vv = np.append(tt, self.period), np.append(vv, vv[0])
        return float(np.trapezoid(vv, tt) / self.period)

    @property
    def peak(self) -> float:
        """The largest absolute value."""
        return float(np.max(np.abs(self.value)))

    def rescaled(self, *, mean: float | None = None, period: float | None = None) -> Waveform:
        """The same shape with another time average `mean` and/or `period` (s), e.g. a
        cerebral waveform scaled to a smaller vessel or another heart rate (the shape is
        stretched in time, as a first approximation)."""
        scale = 1.0 if mean is None else mean / self.mean
        stretch = 1.0 if period is None else period / self.period
        return Waveform(
            tuple(np.asarray(self.time) * stretch),
            tuple(np.asarray(self.value) * scale),
            self.period * stretch,
        )


# -------------------------------------------------------------------------- geometry
class FluidMask:
    """A hashable, read-only boolean mask of fluid cells, shape ``(nx, ny)``: what the flow
    model and solver take as geometry (hashable so it can be a static field)."""

    def __init__(self, fluid):
        a = np.array(fluid, dtype=bool)
        if a.ndim != 2 or min(a.shape) < 2:
            raise ValueError(f"a fluid mask must be a 2-D boolean array (nx, ny), got {a.shape}.")
        a.flags.writeable = False
        self.array = a
        self._key = (a.shape, a.tobytes())

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, FluidMask) and self._key == other._key

    def __repr__(self):
        return f"FluidMask(shape={self.shape}, fluid={int(self.array.sum())})"


@dataclasses.dataclass(frozen=True)
class WallPoints:
    """Points on a wall with their unit normals (into the fluid) and tangents, and the arc
    length along the wall (m). The signed wall shear stress at a point is ``t·(σ n)``,
    the tangential traction of the fluid on the wall along ``t``."""

    points: np.ndarray  # (P, 2) m
    normals: np.ndarray  # (P, 2)
    tangents: np.ndarray  # (P, 2)
    arclength: np.ndarray  # (P,) m

    def __hash__(self):
        return hash(tuple(np.asarray(a).tobytes() for a in dataclasses.astuple(self)))

    def __eq__(self, other):
        return isinstance(other, WallPoints) and hash(self) == hash(other)


@dataclasses.dataclass(frozen=True)
class Channel:
    """A straight channel of width `width` (m) and length `length` (m), with at least one
    solid row below and above. Walls at ``y₀ = dx + offset`` and ``y₀ + width``; with
    ``offset = 0`` and ``width`` a multiple of ``dx`` they sit exactly on cell faces
    (where halfway bounce-back puts them), otherwise between faces, where only an
    interpolated wall (``LatticeBoltzmann(..., wall="bouzidi")``) puts them.

    **Arguments:** `width`, `length` (m); `offset` (m, default 0, within ``[−dx/2, dx/2)``
    of the lattice it is put on).
    """

    width: float
    length: float
    offset: float = 0.0

    def _wall_lines(self, dx: float) -> tuple[float, float]:
        if not -0.5 * dx <= self.offset < 0.5 * dx:
            raise ValueError(
                f"Channel: offset {self.offset} m must lie within [-dx/2, dx/2) of the "
                f"lattice (dx = {dx} m)."
            )
        _cells(self.width, dx, "width")
        y0 = dx + self.offset
        return y0, y0 + self.width

    def mask(self, dx: float) -> np.ndarray:
        nx = _cells(self.length, dx, "length")
        y0, y1 = self._wall_lines(dx)
        top = int(math.ceil(y1 / dx - 0.5 - 1e-9))  # first row whose centre is not below y1
        y = (np.arange(top + 1) + 0.5) * dx
        fluid = np.zeros((nx, top + 1), dtype=bool)
        fluid[:, (y > y0) & (y < y1)] = True
        return fluid

    def level_set(self, x, y, dx: float):
        """Signed distance (m) to the nearer wall, positive in the fluid."""
        y0, y1 = self._wall_lines(dx)
        del x
        return np.minimum(y - y0, y1 - y)

    def walls(self, dx: float, n: int = 32) -> dict[str, WallPoints]:
        """Points on the bottom and top walls (tangent ``+x``, downstream)."""
        y0, y1 = self._wall_lines(dx)
        return {"bottom": _flat_wall(self.length, y0, +1.0, n),
                "top": _flat_wall(self.length, y1, -1.0, n)}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SidewallAneurysm:
    r"""A straight parent vessel with an idealised side-wall saccular aneurysm (2-D).

    The vessel is a channel of diameter `diameter` along ``x`` (walls at ``y = dx`` and
    ``y = dx + diameter``); the sac is a disc of radius `sac_radius` on its upper wall
    whose chord on the wall line, the neck, has width `neck_width`: its centre lies at
    ``(neck_x, y_top + √(R² − w²/4))``. Needs ``neck_width ≤ 2 sac_radius``.

    **Arguments:**

    - `diameter`: parent vessel diameter ``D`` (m).
    - `length`: domain length along the vessel (m).
    - `sac_radius`: radius ``R`` of the sac (m).
    - `neck_width`: neck width ``w`` (m).
    - `neck_x`: position of the neck centre along the vessel (m); default mid-length.
    """

    diameter: float
    length: float
    sac_radius: float
    neck_width: float
    neck_x: float = 0.0

    def __post_init__(self):
        for k in ("diameter", "length", "sac_radius", "neck_width"):
            v = getattr(self, k)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"SidewallAneurysm: {k} must be a positive length (m), got {v}.")
        if self.neck_width > 2 * self.sac_radius:
            raise ValueError(
                f"SidewallAneurysm: the neck ({self.neck_width} m) is wider than the sac "
                f"(diameter {2 * self.sac_radius} m); use neck_width <= 2 sac_radius."
            )
        if not self.neck_x:
            object.__setattr__(self, "neck_x", 0.5 * self.length)
        if not (self.sac_radius < self.neck_x < self.length - self.sac_radius):
            raise ValueError(
                f"SidewallAneurysm: the sac (radius {self.sac_radius} m at x = {self.neck_x} m) "
                f"does not fit in the vessel length {self.length} m; lengthen the vessel."
            )

    def _top(self, dx: float) -> float:
        return dx + _cells(self.diameter, dx, "diameter") * dx

    def centre(self, dx: float) -> tuple[float, float]:
        """Centre of the sac (m)."""
        h = math.sqrt(self.sac_radius**2 - 0.25 * self.neck_width**2)
        return self.neck_x, self._top(dx) + h

    def mask(self, dx: float) -> np.ndarray:
        """Fluid cells, shape ``(nx, ny)`` (one solid row below the vessel and above the
        sac)."""
        xc, yc = self.centre(dx)
        nx = _cells(self.length, dx, "length")
        ny = int(math.ceil((yc + self.sac_radius) / dx)) + 1
        x = (np.arange(nx) + 0.5) * dx
        y = (np.arange(ny) + 0.5) * dx
        X, Y = np.meshgrid(x, y, indexing="ij")
        vessel = (Y > dx) & (Y < self._top(dx))
        sac = (X - xc) ** 2 + (Y - yc) ** 2 < self.sac_radius**2
        return vessel | sac

    def level_set(self, x, y, dx: float):
        """A level set of the wall (m), positive in the fluid, zero on the wall: the larger
        of the vessel's (distance to the nearer wall line) and the sac's (``R − r``); the
        mask is where it is positive. Exact distance away from the neck corners."""
        xc, yc = self.centre(dx)
        vessel = np.minimum(y - dx, self._top(dx) - y)
        sac = self.sac_radius - np.hypot(x - xc, y - yc)
        return np.maximum(vessel, sac)

    def sac_mask(self, dx: float) -> np.ndarray:
        """The fluid cells of the sac (above the parent vessel's upper wall line)."""
        fluid = self.mask(dx)
        y = (np.arange(fluid.shape[1]) + 0.5) * dx
        return fluid & (y[None, :] > self._top(dx))

    def sac_wall(self, dx: float, n: int = 64) -> WallPoints:
        """``n`` points on the sac wall, from the proximal (upstream) neck corner over the
        dome to the distal one; tangent along that direction (clockwise), normal towards
        the sac centre, arc length from the proximal corner."""
        xc, yc = self.centre(dx)
        R = self.sac_radius
        # the wall line y = y_top cuts the circle at angles π + a and −a (a below 0)
        a = math.asin((yc - self._top(dx)) / R)
        th0, th1 = math.pi + a, -a  # proximal corner, distal corner; clockwise is decreasing θ
        frac = (np.arange(n) + 0.5) / n
        th = th0 + (th1 - th0) * frac
        out = np.stack([np.cos(th), np.sin(th)], axis=1)
        pts = np.array([xc, yc]) + R * out
        tang = np.stack([np.sin(th), -np.cos(th)], axis=1)  # dθ < 0 direction
        return WallPoints(pts, -out, tang, R * (th0 - th))

    def walls(self, dx: float, n: int = 32) -> dict[str, WallPoints]:
        """Points on the parent vessel's bottom wall and on the sac (see `sac_wall`)."""
        return {"bottom": _flat_wall(self.length, dx, +1.0, n), "sac": self.sac_wall(dx, n)}


def _flat_wall(length: float, y: float, normal_y: float, n: int) -> WallPoints:
    x = (np.arange(n) + 0.5) / n * length
    pts = np.stack([x, np.full(n, y)], axis=1)
    nrm = np.tile([0.0, normal_y], (n, 1))
    tan = np.tile([1.0, 0.0], (n, 1))
    return WallPoints(pts, nrm, tan, x.copy())


def _cells(length: float, dx: float, name: str) -> int:
    m = length / dx
    k = int(round(m))
    if k < 2:
        raise ValueError(
            f"the {name} {length} m spans fewer than 2 cells of dx = {dx} m; refine dx."
        )
    return k


# ------------------------------------------------------------- sampling at wall points
@functools.lru_cache(maxsize=32)
def wall_sampling(fluid: FluidMask, dx: float, wall: WallPoints, depth: tuple = (1.0, 2.0)):
    """Indices and weights that extrapolate a cell field to wall points.

    For each wall point ``p`` with normal ``n`` the field is interpolated bilinearly (over
    fluid cells only, weights renormalised) at ``p + d₁ n`` and ``p + d₂ n`` (``depth`` in
    cells, default 1 and 2) and extrapolated linearly back to the wall:
    ``f(p) ≈ (d₂ f(d₁) − d₁ f(d₂)) / (d₂ − d₁)`` — exact for a field linear along the
    normal (the shear stress of Poiseuille flow).

    Returns ``(index, weight)``, shapes ``(P, 8)``: flat cell indices into ``(nx·ny)`` and
    weights, so that ``f_wall = Σ weight · f.ravel()[index]``.
    """
    a = fluid.array
    nx, ny = a.shape
    d1, d2 = depth
    idx = np.zeros((len(wall.points), 8), dtype=np.int64)
    wts = np.zeros((len(wall.points), 8))
    c1, c2 = d2 / (d2 - d1), -d1 / (d2 - d1)
    for k, (p, nrm) in enumerate(zip(wall.points, wall.normals, strict=True)):
        for m, (d, c) in enumerate(((d1, c1), (d2, c2))):
            q = (p + d * dx * nrm) / dx - 0.5  # in cell-centre index units
            i0, j0 = int(np.floor(q[0])), int(np.floor(q[1]))
            fx, fy = q[0] - i0, q[1] - j0
            cells, w = [], []
            for di, dj, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                               (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
                i, j = min(max(i0 + di, 0), nx - 1), min(max(j0 + dj, 0), ny - 1)
                cells.append(i * ny + j)
                w.append(ww if a[i, j] else 0.0)
            s = sum(w)
            if s <= 0:
                raise ValueError(
                    f"wall point {p} has no fluid cell at {d} cells along its normal; "
                    f"refine dx or check the normals point into the fluid."
                )
            idx[k, 4 * m : 4 * m + 4] = cells
            wts[k, 4 * m : 4 * m + 4] = c * np.asarray(w) / s
    return idx, wts


# ----------------------------------------------------------------------- flow model
class IncompressibleFlow2D(eqx.Module):
    r"""Incompressible 2-D flow of a generalised-Newtonian fluid in a masked geometry.

    The equations are those of the module docstring; the model holds what defines the
    problem and its θ_s (the rheology's `Param`s), the solver the discretisation
    (`scilayers.solvers.LatticeBoltzmann`).

    **Arguments:**

    - `rheology`: the viscosity law (`Carreau`, `Newtonian`, `PowerLaw`), holding θ_s.
    - `fluid`: boolean mask of fluid cells, shape ``(nx, ny)`` (``x`` along the flow), or a
      geometry with a ``mask(dx)`` method (`Channel`, `SidewallAneurysm`).
    - `dx`: cell size (m).
    - `rho`: density (kg/m³, default 1060, blood).
    - `inflow`: a `Waveform` of the mean inlet velocity (m/s), imposed as a parabolic
      profile across the open cells of the first column; ``None`` (default) makes the
      domain periodic in ``x``.
    - `outflow`: ``"pressure"`` (the only choice: ``p = 0`` at the last column); used
      only with an inflow.
    - `force`: body force (N/m³): ``None``, a pair ``(f_x, f_y)``, or a function of time
      ``t`` (s) returning a pair (a pulsatile pressure gradient ``−∂p/∂x``).
    """

    rheology: AbstractRheology
    fluid: FluidMask = eqx.field(static=True)
    dx: float = eqx.field(static=True)
    rho: float = eqx.field(static=True)
    inflow: Waveform | None = eqx.field(static=True)
    outflow: str = eqx.field(static=True)
    force: Callable | tuple | None = eqx.field(static=True)
    geometry: object = eqx.field(static=True)

    def __init__(
        self,
        rheology: AbstractRheology,
        fluid,
        dx: float,
        *,
        rho: float = BLOOD_DENSITY,
        inflow: Waveform | None = None,
        outflow: str = "pressure",
        force=None,
    ):
        if not isinstance(rheology, AbstractRheology):
            raise ValueError(
                f"IncompressibleFlow2D needs a rheology (Carreau, Newtonian, PowerLaw), got "
                f"{type(rheology).__name__}."
            )
        if not (np.isfinite(dx) and dx > 0 and np.isfinite(rho) and rho > 0):
            raise ValueError(f"IncompressibleFlow2D: dx and rho must be positive, got {dx}, {rho}.")
        self.geometry = fluid if hasattr(fluid, "mask") else None
        arr = fluid.mask(dx) if hasattr(fluid, "mask") else fluid
        self.fluid = arr if isinstance(arr, FluidMask) else FluidMask(arr)
        self.rheology = rheology
        self.dx = float(dx)
        self.rho = float(rho)
        if inflow is not None and not isinstance(inflow, Waveform):
            raise ValueError(f"inflow must be a Waveform or None, got {type(inflow).__name__}.")
        self.inflow = inflow
        if outflow != "pressure":
            raise ValueError(f"unknown outflow {outflow!r}; use 'pressure' (p = 0 at the outlet).")
        self.outflow = outflow
        if force is not None and not callable(force):
            if np.shape(force) != (2,):
                raise ValueError(f"force must be a pair (f_x, f_y) in N/m^3, got {force!r}.")
            force = tuple(float(f) for f in force)
        self.force = force
        a = self.fluid.array
        if inflow is not None:
            if not (a[0].any() and a[-1].any()):
                raise ValueError(
                    "with an inflow the first and last columns of the mask must hold fluid "
                    "cells (the inlet and the outlet)."
                )
            if not np.array_equal(a[0], a[1]) or not np.array_equal(a[-1], a[-2]):
                raise ValueError(
                    "the inlet and outlet need a straight section: the first two and the last "
                    "two columns of the mask must be equal."
                )

    @property
    def shape(self) -> tuple[int, int]:
        """``(nx, ny)``, cells along and across the vessel."""
        return self.fluid.shape

    @property
    def periodic(self) -> bool:
        """Whether the domain is periodic in ``x`` (no inflow)."""
        return self.inflow is None

    def body_force(self, t: ScalarLike) -> Array:
        """The body force (N/m³) at time ``t``, shape ``(2,)``."""
        dtype = jnp.result_type(float)
        if self.force is None:
            return jnp.zeros(2, dtype)
        f = self.force(t) if callable(self.force) else self.force
        return jnp.asarray(f, dtype).reshape(2)

    def inlet_profile(self) -> np.ndarray:
        """Shape of the inlet velocity across the first column, shape ``(ny,)``: a
        parabola vanishing on the walls (cell faces) with mean 1 over the opening."""
        open_ = self.fluid.array[0]
        j = np.flatnonzero(open_)
        if j.size == 0 or np.any(np.diff(j) != 1):
            raise ValueError("the inlet (first column) must be one contiguous run of fluid cells.")
        ya, yb = j[0] - 0.5, j[-1] + 0.5
        y = np.arange(open_.size, dtype=float)
        prof = 6.0 * (y - ya) * (yb - y) / (yb - ya) ** 2
        return np.where(open_, prof, 0.0)

    def inlet_velocity(self, t: ScalarLike) -> Array:
        """The inlet velocity ``u_x`` (m/s) across the first column at time ``t``."""
        if self.inflow is None:
            raise ValueError("this flow has no inflow (it is periodic in x).")
        return self.inflow(t) * jnp.asarray(self.inlet_profile(), dtype=jnp.result_type(float))


__all__ = [
    "Channel",
    "FluidMask",
    "IncompressibleFlow2D",
    "SidewallAneurysm",
    "WallPoints",
    "Waveform",
    "wall_sampling",
]
