"""2-D advection–diffusion(–relaxation) of temperature on a latitude–longitude grid."""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._typing import ScalarLike
from ..params import Bounded, LogNormal, Normal, Param, Positive
from ._base import AbstractForcedModel, _param, check_state

EARTH_RADIUS = 6.371e6  # m
SECONDS_PER_HOUR = 3600.0

# Stability polynomial R(z) = Σ c_k z^k of diffrax.Tsit5 (the default solver of
# `scilayers.solvers.Diffrax`): `sl.solvers.stability_polynomial(diffrax.Tsit5())`, which a
# test checks. Models never import solvers, so the coefficients are written out here.
TSIT5_STABILITY = (
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    0.001432211324807348,
)
# A mode counts as unstable if one step multiplies it by more than 1 + this.
_GROWTH_TOL = 1e-6


def _uniform_axis(values, name: str, where: str) -> tuple[tuple[float, ...], float]:
    """``values`` as a tuple of floats and its constant spacing, or a `ValueError`."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size < 3:
        raise ValueError(
            f"{where}: {name} must be a 1-D array of at least 3 points (a ring of boundary "
            f"cells around at least one interior cell), got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: {name} contains NaN or Inf.")
    steps = np.diff(arr)
    step = float(np.mean(steps))
    if step == 0.0 or not np.allclose(steps, step, rtol=1e-6, atol=0.0):
        raise ValueError(
            f"{where}: {name} must be regularly spaced (a regular lat-lon grid), got "
            f"spacings from {steps.min():g} to {steps.max():g} degrees; regrid the data first."
        )
    return tuple(float(x) for x in arr), step


def _ring_indices(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the boundary ring of an ``(ny, nx)`` grid, clockwise from
    the first row's first cell."""
    top = [(0, i) for i in range(nx)]
    right = [(j, nx - 1) for j in range(1, ny - 1)]
    bottom = [(ny - 1, i) for i in range(nx - 1, -1, -1)]
    left = [(j, 0) for j in range(ny - 2, 0, -1)]
    idx = np.array(top + right + bottom + left, dtype=int)
    return idx[:, 0], idx[:, 1]


def _extend(g: Array, axis: int) -> Array:
    """``g`` with one more layer on each side along ``axis``, extrapolated linearly."""
    first = jax.lax.slice_in_dim(g, 0, 1, axis=axis)
    second = jax.lax.slice_in_dim(g, 1, 2, axis=axis)
    last = jax.lax.slice_in_dim(g, -1, None, axis=axis)
    before = jax.lax.slice_in_dim(g, -2, -1, axis=axis)
    return jnp.concatenate([2 * first - second, g, 2 * last - before], axis=axis)


def _face_flux(w, a, b, c, d):
    """Advective flux ``w T_f`` through the face between ``b`` and ``c`` (cells ``a, b, c,
    d`` in order along the velocity's axis): the third-order upwind-biased face value
    ``T_f = (-a + 5b + 2c)/6`` for ``w > 0`` (mirrored for ``w < 0``), written as the
    fourth-order centred value plus a dissipative correction proportional to ``|w|``."""
    centred = (-a + 7 * b + 7 * c - d) / 12
    dissipation = (-a + 3 * b - 3 * c + d) / 12
    return w * centred + jnp.abs(w) * dissipation


def _face_symbol(theta: np.ndarray, sign: float) -> np.ndarray:
    """Von Neumann symbol of ``-(F_{i+1/2} - F_{i-1/2}) / w`` for `_face_flux` with unit
    speed of sign ``sign`` (per unit Courant number)."""
    e = np.exp(1j * theta)
    face = (-1 / e + 7 + 7 * e - e**2) / 12 + sign * (-1 / e + 3 - 3 * e + e**2) / 12
    return -face * (1 - 1 / e)


class LatLonAdvectionDiffusion(AbstractForcedModel):
    r"""Advection–diffusion(–relaxation) of a temperature field ``T`` (K) on a regular
    latitude–longitude grid of the sphere, with time in **hours**:

    $$\frac{\partial T}{\partial t} = -\frac{1}{R\cos φ}\left[\frac{\partial (uT)}{\partial λ}
      + \frac{\partial (v\cos φ\, T)}{\partial φ}\right]
      + \frac{κ}{R^2\cos^2 φ}\frac{\partial^2 T}{\partial λ^2}
      + \frac{κ}{R^2\cos φ}\frac{\partial}{\partial φ}
        \left(\cos φ\,\frac{\partial T}{\partial φ}\right)
      - r\,(T - T_{\mathrm{ref}}),$$

    ``λ`` longitude, ``φ`` latitude (radians), ``R = 6.371·10⁶ m``. Units: the winds
    ``u`` (eastward) and ``v`` (northward) in m/s, the eddy diffusivity ``κ`` in m²/s, the
    relaxation rate ``r`` in 1/h; the model converts to its time unit, the hour, inside
    (``∂T/∂t`` is returned in K/h, and ``t`` and ``dt`` of every solver are hours).

    **The wind.** ``u`` is uniform in m/s (zonal flow along circles of latitude is
    non-divergent). ``v`` is the meridional wind at the reference latitude ``φ_ref``
    (default: the centre of the grid) and varies as ``v(φ) = v cos φ_ref / cos φ``, the
    non-divergent continuation (``∂(v cos φ)/∂φ = 0``). Decision (mathematical necessity):
    a meridional wind uniform in m/s converges towards the pole on the sphere, and its flux
    form would heat the air by ``T v tan φ / R`` (≈ 2 K/h at 54° N for v = 10 m/s); with a
    non-divergent wind the conservative flux form above equals the advective form
    ``∂T/∂t + u/(R cos φ) ∂T/∂λ + v/R ∂T/∂φ = …`` of a passive tracer. Across the
    UK box (50–58° N) ``v(φ)`` varies by ±10 %.

    **Discretisation.** Finite volumes on the grid cells (cell ``(j, i)`` centred on
    ``(lat[j], lon[i])``, exact spherical cell areas ``R² Δλ |sin φ_{j+1/2} - sin φ_{j-1/2}|``
    and face lengths ``R Δφ`` and ``R cos φ_{j±1/2} Δλ``), so the area-weighted heat of the
    interior changes only by the fluxes through its outer faces (conservative to round-off).
    Advective fluxes use the third-order upwind-biased face value (Leonard 1979:
    ``T_f = (-T_{i-1} + 5 T_i + 2 T_{i+1})/6`` for flow towards ``i+1``, i.e. fourth-order
    centred plus a ``|w|``-weighted fourth-difference dissipation); diffusive fluxes are
    second-order centred. The scheme is second-order accurate (third order for smooth
    advection away from the boundary) and, unlike centred advective fluxes, it is stable
    under the explicit Runge–Kutta solvers Diffrax offers (Tsit5, Dopri5, Bosh3: centred
    advection has purely imaginary eigenvalues, which Tsit5 and Dopri5 amplify at every
    step). With Tsit5 (the default of `scilayers.solvers.Diffrax`) the 1-D limits are a
    Courant number ``|u| dt / Δx ≤ 2.30`` and a diffusion number ``κ dt / Δx² ≤ 0.877``;
    `max_stable_dt` computes the limit of the full 2-D operator on this grid.

    **Boundaries.** Only the interior cells evolve by transport; the outermost ring of cells
    is a boundary layer (the stencil's ghost cells, one further layer extrapolated
    linearly):

    - with an observed boundary series (`boundary_values`), the ring follows it (open
      boundary driven by observations): `source` gives the ring the time derivative of the
      series' ``C¹`` cubic Hermite (Catmull–Rom) interpolant in time, plus a relaxation
      ``boundary_relaxation · (T_obs(t) - T)`` that removes any initial mismatch (and any
      drift a closure network adds to the ring). Solvers of order ≥ 4 integrate the
      derivative of the cubic exactly, so a ring that starts on the observations stays on
      them: to round-off with ``boundary_relaxation=0``; with the default 1/h, the
      relaxation's Runge–Kutta stage errors leave about 1e-6 K (Tsit5, dt = 0.5 h) to
      6e-5 K (dt = 1 h), below the 3e-5 K float32 resolution of ERA5 at 280 K or near it.
      Outside the series' time span the ring is held at its first or last value.
    - without a series and ``boundary="open"``: zero-gradient (outflow) boundaries; the
      ring copies its interior neighbour.
    - ``boundary="closed"``: no flux (advective or diffusive) through the outer faces of
      the interior: a closed box whose area-weighted heat is conserved without relaxation.
      A test configuration: its walls stop the uniform wind's flux, so with a wind heat
      piles up against the downwind walls (a uniform field is steady only without wind).

    **Arguments:**

    - `lat`, `lon`: the cell-centre latitudes and longitudes in degrees, 1-D, regularly
      spaced, at least 3 each; latitudes ascending or descending (ERA5 is descending),
      longitudes ascending.
    - `u`, `v`: eastward wind and northward wind at ``lat_ref`` (m/s, defaults 5 and 0).
      A number becomes a learnable `Param` bounded to ``(-wind_bound, wind_bound)`` with
      a ``Normal(0, 10)`` prior; a `Param` is used as given.
    - `kappa`: eddy diffusivity κ (m²/s, default 10⁴); a number becomes a positive `Param`
      with a ``LogNormal(10⁴, 1.5)`` prior (1σ from 2.2·10³ to 4.5·10⁴ m²/s).
    - `boundary_values`: optional observed boundary series, shape ``(n_times, len(lat),
      len(lon))`` (only the ring is kept) or ``(n_times, n_ring)`` in the order of
      `ring_indices`; stored as ``Param(..., fixed=True)``, so training leaves it alone.
    - `boundary_times`: the times of the series in hours from the model's time origin
      (regularly spaced, increasing); default ``0, 1, 2, …`` (hourly from ``t = 0``).
    - `boundary_relaxation`: rate (1/h, default 1) at which the ring is pulled onto the
      series (on top of following its derivative); ``0`` turns it off.
    - `boundary`: ``"open"`` (default) or ``"closed"``; ``"closed"`` takes no series.
    - `relaxation`: optional relaxation rate ``r`` (1/h) of the interior towards
      `reference`; a number becomes a fixed positive `Param` (pass a free `Param` to learn
      it); default ``None``: no relaxation term.
    - `reference`: ``T_ref`` (K), a number or a field of the grid's shape; required with
      `relaxation`, stored as a fixed `Param`.
    - `lat_ref`: the latitude (degrees) at which `v` is given; default the grid's centre.
    - `wind_bound`: the bound (m/s, default 50) of the default wind `Param`s.
    - `radius`: the sphere's radius in m (default 6.371·10⁶).

    The state is the whole field, shape ``(len(lat), len(lon))``, ring included. The model
    is linear in ``T``, differentiable in ``u``, ``v``, ``κ`` (and a free relaxation rate),
    and works under ``jit`` and ``vmap``.
    """

    u: Param
    v: Param
    kappa: Param
    relaxation: Param | None
    reference: Param | None
    boundary_values: Param | None
    latitudes: tuple[float, ...] = eqx.field(static=True)
    longitudes: tuple[float, ...] = eqx.field(static=True)
    boundary: str = eqx.field(static=True)
    boundary_t0: float = eqx.field(static=True)
    boundary_step: float = eqx.field(static=True)
    boundary_relaxation: float = eqx.field(static=True)
    lat_ref: float = eqx.field(static=True)
    radius: float = eqx.field(static=True)

    def __init__(
        self,
        lat,
        lon,
        u=5.0,
        v=0.0,
        kappa=1e4,
        *,
        boundary_values=None,
        boundary_times=None,
        boundary_relaxation: float = 1.0,
        boundary: str = "open",
        relaxation=None,
        reference=None,
        lat_ref: float | None = None,
        wind_bound: float = 50.0,
        radius: float = EARTH_RADIUS,
    ):
        where = "LatLonAdvectionDiffusion"
        self.latitudes, dlat = _uniform_axis(lat, "lat", where)
        self.longitudes, dlon = _uniform_axis(lon, "lon", where)
        if dlon < 0:
            raise ValueError(
                f"{where}: longitudes must increase (west to east), got a spacing of {dlon:g}; "
                f"sort them first (e.g. da.sortby('longitude'))."
            )
        edge = max(abs(x) for x in self.latitudes) + abs(dlat) / 2
        if edge >= 90.0:
            raise ValueError(
                f"{where}: the cells reach latitude {edge:g}; the grid must stay off the poles "
                f"(cos φ > 0 at every cell face)."
            )
        if boundary not in ("open", "closed"):
            raise ValueError(f"{where}: boundary must be 'open' or 'closed', got {boundary!r}.")
        if not (math.isfinite(radius) and radius > 0):
            raise ValueError(f"{where}: radius must be positive, got {radius}.")
        if not (math.isfinite(wind_bound) and wind_bound > 0):
            raise ValueError(f"{where}: wind_bound must be positive (m/s), got {wind_bound}.")
        if not (math.isfinite(boundary_relaxation) and boundary_relaxation >= 0):
            raise ValueError(
                f"{where}: boundary_relaxation must be a rate >= 0 (1/h), got "
                f"{boundary_relaxation}."
            )
        self.boundary = boundary
        self.boundary_relaxation = float(boundary_relaxation)
        self.radius = float(radius)
        self.lat_ref = float(np.mean(self.latitudes) if lat_ref is None else lat_ref)
        if not abs(self.lat_ref) < 90.0:
            raise ValueError(f"{where}: lat_ref must be inside (-90, 90), got {self.lat_ref}.")

        wind = Bounded(-float(wind_bound), float(wind_bound))
        prior = Normal(0.0, 10.0)
        self.u = _param(u, wind, name="u", units="m/s", prior=prior)
        self.v = _param(v, wind, name="v", units="m/s", prior=prior)
        self.kappa = _param(
            kappa, Positive(), name="kappa", units="m^2/s", prior=LogNormal(1e4, 1.5)
        )
        for p in (self.u, self.v, self.kappa):
            if jnp.ndim(p.value) != 0:
                raise ValueError(
                    f"{where}: {p.name} must be a scalar, got shape {jnp.shape(p.value)}."
                )

        shape = (len(self.latitudes), len(self.longitudes))
        if relaxation is None:
            if reference is not None:
                raise ValueError(
                    f"{where}: reference is given without relaxation; pass relaxation=RATE "
                    f"(1/h) to relax towards it, or leave reference out."
                )
            self.relaxation, self.reference = None, None
        else:
            if reference is None:
                raise ValueError(
                    f"{where}: relaxation needs a reference field (K); pass reference=T_ref "
                    f"(a number or an array of shape {shape})."
                )
            self.relaxation = _param(
                relaxation, Positive(), name="relaxation", units="1/h", fixed=True
            )
            ref = np.asarray(reference, dtype=float)
            if ref.shape not in ((), shape) or not np.all(np.isfinite(ref)):
                raise ValueError(
                    f"{where}: reference must be a finite number or an array of shape "
                    f"{shape}, got shape {ref.shape}."
                )
            self.reference = Param(ref, fixed=True, name="reference", units="K")

        if boundary_values is None:
            if boundary_times is not None:
                raise ValueError(f"{where}: boundary_times given without boundary_values.")
            self.boundary_values = None
            self.boundary_t0, self.boundary_step = 0.0, 1.0
            return
        if boundary == "closed":
            raise ValueError(
                f"{where}: a closed box takes no boundary series; use boundary='open' with "
                f"boundary_values, or drop boundary_values."
            )
        values = np.asarray(boundary_values, dtype=float)
        rows, cols = _ring_indices(*shape)
        if values.ndim == 3 and values.shape[1:] == shape:
            values = values[:, rows, cols]
        elif not (values.ndim == 2 and values.shape[1] == rows.size):
            raise ValueError(
                f"{where}: boundary_values must have shape (n_times, {shape[0]}, {shape[1]}) "
                f"or (n_times, {rows.size}) (the ring only), got {values.shape}; for a single "
                f"time use values[None]."
            )
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ValueError(
                f"{where}: boundary_values has {bad} NaN/Inf value(s) on the boundary ring; "
                f"fill them (e.g. interpolate in time) before building the model."
            )
        n_times = values.shape[0]
        if boundary_times is None:
            t0, step = 0.0, 1.0
        else:
            times = np.asarray(boundary_times, dtype=float)
            if times.shape != (n_times,):
                raise ValueError(
                    f"{where}: boundary_times must have shape ({n_times},) like the first "
                    f"axis of boundary_values, got {times.shape}."
                )
            steps = np.diff(times)
            if not np.all(np.isfinite(times)) or np.any(steps <= 0):
                raise ValueError(f"{where}: boundary_times must be finite and increasing.")
            if steps.size and not np.allclose(steps, steps[0], rtol=1e-6, atol=0.0):
                raise ValueError(
                    f"{where}: boundary_times must be regularly spaced, got spacings from "
                    f"{steps.min():g} to {steps.max():g} h; resample the series first."
                )
            t0, step = float(times[0]), float(steps[0]) if steps.size else 1.0
        self.boundary_t0, self.boundary_step = float(t0), float(step)
        self.boundary_values = Param(values, fixed=True, name="boundary_values", units="K")

    # ------------------------------------------------------------------ grid
    @property
    def state_shape(self) -> tuple[int, ...]:
        return (len(self.latitudes), len(self.longitudes))

    @property
    def lat(self) -> np.ndarray:
        """Cell-centre latitudes (degrees), as given."""
        return np.asarray(self.latitudes)

    @property
    def lon(self) -> np.ndarray:
        """Cell-centre longitudes (degrees, increasing)."""
        return np.asarray(self.longitudes)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lat, lon)`` of every cell centre in degrees, each of shape `state_shape`."""
        lat2, lon2 = np.meshgrid(self.lat, self.lon, indexing="ij")
        return lat2, lon2

    def _metric(self) -> dict[str, np.ndarray | float]:
        """Grid spacings (rad), cosines at centres and faces, and cell areas (m²)."""
        phi = np.deg2rad(self.lat)
        dphi = float(phi[1] - phi[0])  # signed: negative for descending latitudes
        dlam = float(np.deg2rad(self.longitudes[1] - self.longitudes[0]))
        faces = np.concatenate([[phi[0] - dphi / 2], phi[:-1] + dphi / 2, [phi[-1] + dphi / 2]])
        area = self.radius**2 * dlam * np.abs(np.diff(np.sin(faces)))
        return {
            "dphi": abs(dphi),
            "dlam": dlam,
            "sign": math.copysign(1.0, dphi),
            "cos": np.cos(phi),
            "cos_face": np.cos(faces[1:-1]),  # between row j and j+1
            "area": area,  # per row
        }

    def cell_area(self) -> np.ndarray:
        """Area of every grid cell in m², shape `state_shape` (exact on the sphere)."""
        area = self._metric()["area"]
        return np.repeat(area[:, None], len(self.longitudes), axis=1)

    def interior_mask(self) -> np.ndarray:
        """``True`` on the cells that evolve by transport, ``False`` on the boundary ring."""
        mask = np.zeros(self.state_shape, dtype=bool)
        mask[1:-1, 1:-1] = True
        return mask

    def area_weights(self) -> np.ndarray:
        """Area weights of the interior cells (summing to 1; 0 on the ring): ``Σ w T`` is
        the area-weighted mean temperature of the interior, the quantity a closed box
        conserves."""
        w = self.cell_area() * self.interior_mask()
        return w / w.sum()

    def ring_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of the boundary ring, clockwise from the first row's first cell:
        ``field[rows, cols]`` is the ring in the order `boundary_values` uses."""
        return _ring_indices(*self.state_shape)

    # ------------------------------------------------------------------ dynamics
    def _ghosted(self, T: Array) -> Array:
        """The field whose ring the interior fluxes see: the state itself with an observed
        boundary, the interior's edge values otherwise."""
        if self.boundary_values is not None:
            return T
        return jnp.pad(T[1:-1, 1:-1], 1, mode="edge")

    def transport(self, T: Float[Array, "lat lon"]) -> Float[Array, "lat-2 lon-2"]:
        """Advection–diffusion tendency (K/h) of the interior cells, shape
        ``(len(lat) - 2, len(lon) - 2)``, from the flux divergence of the field ``T`` (K)."""
        check_state(T, self.state_shape, "LatLonAdvectionDiffusion.transport")
        m = self._metric()
        R, dlam, dphi = self.radius, m["dlam"], m["dphi"]
        u, v, kappa = self.u.value, self.v.value, self.kappa.value
        dtype = jnp.result_type(T, u)
        T = T.astype(dtype)
        g = self._ghosted(T)
        closed = self.boundary == "closed"

        # zonal fluxes (K m/s) through the faces between columns i, i+1 of interior rows
        gx = _extend(g, axis=1)[1:-1]
        a, b, c, d = gx[:, :-3], gx[:, 1:-2], gx[:, 2:-1], gx[:, 3:]
        dx = jnp.asarray(R * m["cos"][1:-1, None] * dlam, dtype)
        fx = _face_flux(u, a, b, c, d) - kappa * (c - b) / dx
        if closed:
            fx = fx * jnp.asarray(np.r_[0.0, np.ones(fx.shape[1] - 2), 0.0][None, :], dtype)
        div = (fx[:, 1:] - fx[:, :-1]) * (R * dphi)

        # meridional transports (K m²/s) through the faces between rows j, j+1, in the
        # direction of increasing row index; v cos φ is constant (non-divergent wind)
        gy = _extend(g, axis=0)[:, 1:-1]
        a, b, c, d = gy[:-3], gy[1:-2], gy[2:-1], gy[3:]
        q = m["sign"] * v * math.cos(math.radians(self.lat_ref))
        cos_face = jnp.asarray(m["cos_face"][:, None], dtype)
        hy = R * dlam * _face_flux(q, a, b, c, d) - kappa * dlam * cos_face * (c - b) / dphi
        if closed:
            hy = hy * jnp.asarray(np.r_[0.0, np.ones(hy.shape[0] - 2), 0.0][:, None], dtype)
        div = div + (hy[1:] - hy[:-1])

        area = jnp.asarray(m["area"][1:-1, None], dtype)
        return -SECONDS_PER_HOUR * div / area

    def rhs(self, u: Float[Array, "lat lon"]) -> Float[Array, "lat lon"]:
        """The autonomous part of ``∂T/∂t`` (K/h) of the field ``u`` (the temperature, K):
        transport (and relaxation towards `reference`) on the interior; on the ring 0 when
        it is observed or the box is closed, else the tendency of the ring's interior
        neighbour (zero-gradient)."""
        check_state(u, self.state_shape, "LatLonAdvectionDiffusion.rhs")
        return _rhs(self, u)

    def _rhs(self, u):
        tend = self.transport(u)
        if self.relaxation is not None:
            ref = jnp.broadcast_to(self.reference.value, self.state_shape)[1:-1, 1:-1]
            tend = tend - self.relaxation.value * (u[1:-1, 1:-1] - ref)
        if self.boundary_values is None and self.boundary == "open":
            return jnp.pad(tend, 1, mode="edge")
        return jnp.pad(tend, 1)

    def boundary_value(self, t: ScalarLike) -> tuple[Array, Array]:
        """``(T_obs(t), dT_obs/dt(t))`` on the ring (K and K/h, each of shape
        ``(n_ring,)``): the ``C¹`` cubic Hermite (Catmull–Rom) interpolant of the observed
        series at time ``t`` (hours) and its derivative; held constant (derivative 0)
        outside the series' span. Raises a `ValueError` for a model without a series."""
        if self.boundary_values is None:
            raise ValueError("this model has no boundary series; pass boundary_values=....")
        y = self.boundary_values.value
        n = y.shape[0]
        if n == 1:
            return y[0], jnp.zeros_like(y[0])
        t = jnp.asarray(t, y.dtype)
        s = (t - self.boundary_t0) / self.boundary_step
        inside = ((s >= 0) & (s <= n - 1)).astype(y.dtype)
        s = jnp.clip(s, 0, n - 1)
        k = jnp.clip(jnp.floor(s), 0, n - 2).astype(int)
        tau = s - k
        km, kp = jnp.maximum(k - 1, 0), jnp.minimum(k + 2, n - 1)
        y0, y1 = y[k], y[k + 1]
        m0 = (y1 - y[km]) / (k + 1 - km).astype(y.dtype)
        m1 = (y[kp] - y0) / (kp - k).astype(y.dtype)
        t2, t3 = tau**2, tau**3
        value = (
            (2 * t3 - 3 * t2 + 1) * y0
            + (t3 - 2 * t2 + tau) * m0
            + (-2 * t3 + 3 * t2) * y1
            + (t3 - t2) * m1
        )
        slope = (
            (6 * t2 - 6 * tau) * y0
            + (3 * t2 - 4 * tau + 1) * m0
            + (-6 * t2 + 6 * tau) * y1
            + (3 * t2 - 2 * tau) * m1
        )
        return value, inside * slope / self.boundary_step

    def source(self, t: ScalarLike, u: Float[Array, "lat lon"]) -> Float[Array, "lat lon"]:
        """The explicitly time-dependent part (K/h): on the ring, the observed series'
        derivative plus ``boundary_relaxation · (T_obs(t) - T)``; 0 on the interior, and 0
        everywhere without a series."""
        check_state(u, self.state_shape, "LatLonAdvectionDiffusion.source")
        if self.boundary_values is None:
            return jnp.zeros_like(u)
        return _source(self, jnp.asarray(t, jnp.result_type(float)), u)

    def _source(self, t, u):
        value, slope = self.boundary_value(t)
        rows, cols = self.ring_indices()
        ring = slope + self.boundary_relaxation * (value - u[rows, cols])
        return jnp.zeros(self.state_shape, ring.dtype).at[rows, cols].set(ring)

    def initial_condition(
        self, key: PRNGKeyArray, amplitude: float = 2.0
    ) -> Float[Array, "lat lon"]:
        """A smooth random field (K): a background (`reference`, else the mean of the
        observed ring at ``t = 0``, else 280 K) plus the 15 lowest cosine modes of the box
        with random Gaussian coefficients, scaled to RMS `amplitude` (K); with a series,
        the ring is set to the observation at ``t = 0``."""
        ny, nx = self.state_shape
        x = jnp.linspace(0.0, 1.0, nx)
        y = jnp.linspace(0.0, 1.0, ny)
        coef = jax.random.normal(key, (4, 4)).at[0, 0].set(0.0)
        modes = jnp.cos(jnp.pi * jnp.arange(4)[:, None] * y[None, :])  # (4, ny)
        zmodes = jnp.cos(jnp.pi * jnp.arange(4)[:, None] * x[None, :])  # (4, nx)
        field = modes.T @ coef @ zmodes
        field = amplitude * field / jnp.sqrt(jnp.mean(field**2))
        if self.reference is not None:
            base = jnp.broadcast_to(self.reference.value, self.state_shape)
        elif self.boundary_values is not None:
            base = jnp.full(self.state_shape, jnp.mean(self.boundary_value(0.0)[0]))
        else:
            base = jnp.full(self.state_shape, 280.0)
        T = base + field
        if self.boundary_values is not None:
            rows, cols = self.ring_indices()
            T = T.at[rows, cols].set(self.boundary_value(0.0)[0])
        return T

    # ------------------------------------------------------------------ stability
    def _concrete(self, x, name: str) -> float:
        if isinstance(x, jax.core.Tracer):
            raise ValueError(
                f"the stability limit needs concrete values; {name} is traced (call "
                f"max_stable_dt / check_cfl outside jit, or pass {name}=... explicitly)."
            )
        return float(x)

    def cfl(self, dt: float, u=None, v=None, kappa=None) -> dict[str, float]:
        """Dimensionless numbers of an explicit step ``dt`` (hours), the worst over the
        grid's rows: the advective Courant number ``dt (|u|/Δx + |v(φ)|/Δy)`` and the
        diffusion number ``dt κ (1/Δx² + 1/Δy²)``, with ``Δx = R cos φ Δλ`` and
        ``Δy = R Δφ``. `u`, `v`, `kappa` (m/s, m²/s) default to the model's values."""
        u = self._concrete(self.u.value if u is None else u, "u")
        v = self._concrete(self.v.value if v is None else v, "v")
        kappa = self._concrete(self.kappa.value if kappa is None else kappa, "kappa")
        m = self._metric()
        cos = m["cos"][1:-1]
        dx = self.radius * cos * m["dlam"]
        dy = self.radius * m["dphi"]
        vj = abs(v) * math.cos(math.radians(self.lat_ref)) / cos
        h = dt * SECONDS_PER_HOUR
        return {
            "advective": float(np.max(h * (abs(u) / dx + vj / dy))),
            "diffusive": float(np.max(h * kappa * (1 / dx**2 + 1 / dy**2))),
        }

    def von_neumann_eigenvalues(self, u=None, v=None, kappa=None, n_theta: int = 65) -> np.ndarray:
        """The von Neumann eigenvalues (1/h) of the semi-discrete operator on every interior
        row (the local Fourier symbol of the discretisation, with the row's own ``Δx``),
        plus ``-boundary_relaxation`` and ``-relaxation``: a complex array whose scaling by
        ``dt`` must lie in a solver's stability region. `u`, `v`, `kappa` default to the
        model's values; `n_theta` wavenumbers per direction are sampled."""
        u = self._concrete(self.u.value if u is None else u, "u")
        v = self._concrete(self.v.value if v is None else v, "v")
        kappa = self._concrete(self.kappa.value if kappa is None else kappa, "kappa")
        m = self._metric()
        R, dlam, dphi = self.radius, m["dlam"], m["dphi"]
        cos = m["cos"][1:-1]
        area = m["area"][1:-1]
        cf = m["cos_face"]
        theta = np.linspace(-np.pi, np.pi, n_theta)
        # per row: rates (1/s) of the zonal and meridional parts
        ax = abs(u) * R * dphi / area  # = |u| / Δx_j
        dxx = kappa * R * dphi / (area * R * cos * dlam)  # κ / Δx_j²
        q = abs(v) * math.cos(math.radians(self.lat_ref))
        ay = q * R * dlam / area
        dyy = kappa * dlam * (cf[:-1] + cf[1:]) / 2 / (dphi * area)
        sym = _face_symbol(theta, 1.0)
        lap = -2 * (1 - np.cos(theta))
        zx = ax[:, None] * sym[None, :] + dxx[:, None] * lap[None, :]
        zy = ay[:, None] * sym[None, :] + dyy[:, None] * lap[None, :]
        lam = (zx[:, :, None] + zy[:, None, :]).ravel() * SECONDS_PER_HOUR
        extra = []
        if self.boundary_values is not None:
            extra.append(-self.boundary_relaxation)
        if self.relaxation is not None:
            r = self._concrete(self.relaxation.value, "relaxation")
            lam = lam - r
            extra.append(-r)
        return np.concatenate([lam, np.asarray(extra, dtype=complex)])

    def max_stable_dt(
        self, u=None, v=None, kappa=None, stability: Sequence[float] | None = None
    ) -> float:
        """The largest step (hours) for which an explicit Runge–Kutta solver is linearly
        stable on this grid: the largest ``dt`` with ``|R(dt·λ)| ≤ 1`` for every
        eigenvalue λ of `von_neumann_eigenvalues`.

        **Arguments:**

        - `u`, `v`, `kappa`: the wind (m/s) and diffusivity (m²/s) to evaluate; default
          the model's current values. The limit depends on ``|u|``, ``|v|`` and ``κ``
          only, so pass the largest values a calibration may reach (e.g. ``u=20, v=20,
          kappa=1e5``) to size a step for all of them.
        - `stability`: the coefficients ``c_0 … c_s`` of the solver's stability function
          ``R(z) = Σ c_k z^k``, e.g. ``sl.solvers.stability_polynomial(diffrax.Bosh3())``;
          default Tsit5's (`TSIT5_STABILITY`), the default solver of
          `scilayers.solvers.Diffrax`.

        **Returns:** the limit in hours (``inf`` if nothing limits it).
        """
        coeffs = np.asarray(TSIT5_STABILITY if stability is None else stability, dtype=float)
        lam = self.von_neumann_eigenvalues(u, v, kappa)
        lam = lam[np.abs(lam) > 0]
        if lam.size == 0:
            return math.inf

        def stable(h: float) -> bool:
            return bool(np.all(np.abs(np.polyval(coeffs[::-1], h * lam)) <= 1 + _GROWTH_TOL))

        lo, hi = 0.0, 8.0 / float(np.max(np.abs(lam)))
        if stable(hi):  # e.g. a first-order polynomial with a huge region: widen the search
            while stable(hi) and hi < 1e12:
                lo, hi = hi, 2 * hi
            if stable(hi):
                return math.inf
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if stable(mid) else (lo, mid)
        return lo

    def check_cfl(
        self, dt: float, substeps: int = 1, stability: Sequence[float] | None = None
    ) -> None:
        """Raise a `ValueError` if an explicit step ``dt / substeps`` (hours) exceeds
        `max_stable_dt` for the model's current wind and diffusivity; the message names
        ``dt``, the limit, the Courant and diffusion numbers and the fix. (`Diffrax`
        checks the same at construction from the Jacobian, in its own words.)"""
        if not (np.ndim(dt) == 0 and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive number of hours, got {dt!r}.")
        if not (isinstance(substeps, int | np.integer) and substeps >= 1):
            raise ValueError(f"substeps must be a positive integer, got {substeps!r}.")
        limit = self.max_stable_dt(stability=stability)
        h = dt / substeps
        if h <= limit:
            return
        nums = self.cfl(h)
        need = math.ceil(dt / limit)
        raise ValueError(
            f"LatLonAdvectionDiffusion: dt={dt:g} h (substep {h:g} h) exceeds the explicit "
            f"stability limit {limit:.4g} h for u={float(self.u.value):.3g} m/s, "
            f"v={float(self.v.value):.3g} m/s, kappa={float(self.kappa.value):.3g} m^2/s on "
            f"this grid (advective Courant number {nums['advective']:.3g}, diffusion number "
            f"{nums['diffusive']:.3g}); reduce dt to at most {limit:.4g} h or take "
            f"substeps >= {need} (sl.solvers.Diffrax(model, dt, substeps={need}))."
        )


# The right-hand side as one compiled call: evaluated eagerly (the Jacobian a stepper's
# stability check forms at construction, a single call outside `jit`), ~100 small
# operations would otherwise each be dispatched and compiled on their own (seconds);
# inside `jit`, `grad` and `vmap` this is an ordinary nested call.
_rhs = eqx.filter_jit(LatLonAdvectionDiffusion._rhs)
_source = eqx.filter_jit(LatLonAdvectionDiffusion._source)
