"""ERA5 2 m temperature over the British Isles: a self-calibrating transport model on real
data, and self-tuning as the hours arrive.

Data: ERA5 hourly 2 m temperature ``t2m`` (K), March 2019, 33 × 49 cells of 0.25° over
58N–50N, 10W–2E (`scilayers.data.load_era5_t2m`; ``--data-dir`` or
``SCILAYERS_DATA_DIR``). The ``quick`` preset keeps every second grid point (17 × 25 at
0.5°), ``full`` the whole grid. Model time is hours since the first field (2019-03-01 00 UTC).

Task: forecast the field 1–24 h ahead from the current one. Training: the first 19 days
(hourly, cut into daily trajectories), validation: the next two days, test: the last ten
days (forecast starts every few hours) — a temporal shift nothing is tuned on.

Scientific layer: `LatLonAdvectionDiffusion` (spherical finite volumes, wind in m/s, κ in
m²/s, time in hours) with a learnable uniform wind ``(u, v)`` and eddy diffusivity ``κ``
from a practitioner's prior (no wind, ``κ = 10⁴ m²/s``), its boundary ring driven by the
observed ring (lateral boundary conditions from observations, as a limited-area model gets
them from its driving model). Neural adaptation: a small CNN closure that sees the field,
position, a land–sea proxy and the clock (local solar time, the training period's mean
diurnal cycle) and supplies what transport lacks — diurnal heating and cooling, land–sea
contrast, unresolved sources.

Baselines besides the standard methods: the same hour of the previous day, the training
period's mean diurnal cycle added to the current anomaly, the emulator's network with the
clock (the engine's emulator sees the field only), and ``hybrid_online``: the hybrid updated
on a sliding window as every hour arrives through the whole month (`online_fit`), its test
forecasts made by the model as updated up to each start.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..data import hours_since, load_era5_t2m, load_reference_winds
from ..data._era5 import ERA5_T2M_FILE, UK_BOX
from ..hybrid import Hybrid, Inputs
from ..models import AbstractModel, LatLonAdvectionDiffusion
from ..params import Bounded, LogNormal, Normal, Param, values
from ..solvers import AbstractStepper, Diffrax
from ..training import OnlineConfig, TrainConfig, fit, online_fit
from ._common import RunCache
from ._study import AbstractStudy, EvalSet, Problem, StudyConfig

#: Horizontal eddy diffusivities used for atmospheric transport at this grid scale (m²/s).
KAPPA_LITERATURE = (1e3, 1e5)
#: Forecast leads (hours) of the study's RMSE columns.
LEADS = (1, 6, 12, 24)


@dataclass(frozen=True)
class ERA5Config(StudyConfig):
    """The ERA5 study's fields (shared fields: `StudyConfig`; ``dt`` is 1 h).

    - `file`: the ERA5 file, relative to the data folder (or absolute).
    - `coarsen`: keep every `coarsen`-th grid point in latitude and longitude (1: 0.25°).
    - `chunk_hours`: training trajectories are consecutive chunks of ``chunk_hours + 1``
      hourly fields (sharing their end points); `train_end`: the last training hour (a
      multiple of `chunk_hours`); validation windows start after it, every `val_every`
      hours, and end before `test_start`, the first hour of the test period, whose forecast
      starts are `test_every` hours apart (the last one leaves `corr_steps` hours).
    - `u_prior`, `v_prior` (m/s), `kappa_prior` (m²/s): the practitioner's prior θ_s;
      `wind_bound` (m/s) and `kappa_max` (m²/s) bound them (the solver's substeps are sized
      for the bounds, so training can never leave the stable range).
    - `harmonics`: diurnal harmonics of the training period's mean cycle the closure sees.
    - `width`, `depth`, `kernel_size`: the CNN (hidden channels, hidden layers, kernel).
    - `online_*`: the online run (`OnlineConfig`): window (hours), updates every
      `online_every` hours (must divide `test_every`), Adam steps, batch and horizon per
      update, learning rates; warm start: `online_warm_steps` of `fit` on the first
      `online_window` hours.
    """

    file: str = ERA5_T2M_FILE
    coarsen: int = 1
    chunk_hours: int = 24
    train_end: int = 456
    test_start: int = 504
    val_every: int = 3
    test_every: int = 3
    u_prior: float = 0.0
    v_prior: float = 0.0
    kappa_prior: float = 1e4
    wind_bound: float = 20.0
    kappa_max: float = 1e5
    harmonics: int = 2
    width: int = 16
    depth: int = 2
    kernel_size: int = 3
    online_window: int = 48
    online_every: int = 3
    online_steps: int = 4
    online_batch: int = 8
    online_horizon: int = 6
    online_lr_theta: float = 2e-2
    online_lr_net: float = 1e-3
    online_warm_steps: int = 60

    def __post_init__(self):
        super().__post_init__()
        if self.dt != 1.0:
            raise ValueError(f"the ERA5 study steps hourly fields: dt must be 1.0 h, got {self.dt}.")
        if self.context_steps != 1:
            raise ValueError("the ERA5 forecasts start from the current field: context_steps=1.")
        if not (self.coarsen >= 1 and self.chunk_hours >= 2):
            raise ValueError("coarsen must be >= 1 and chunk_hours >= 2.")
        if self.train_end % self.chunk_hours or self.train_end < self.chunk_hours:
            raise ValueError(
                f"train_end={self.train_end} must be a positive multiple of chunk_hours="
                f"{self.chunk_hours} (training trajectories are whole chunks)."
            )
        if self.test_start <= self.train_end + 1:
            raise ValueError("test_start must leave validation hours after train_end.")
        if self.test_every % self.online_every:
            raise ValueError(
                f"online_every={self.online_every} must divide test_every={self.test_every}, "
                f"so the online model is updated at every test forecast start."
            )
        if self.online_horizon >= self.online_window:
            raise ValueError("online_horizon must be shorter than online_window.")


_QUICK_TRAIN = TrainConfig(
    steps=150,
    batch_size=8,
    horizon=6,
    horizon_schedule=(3, 6),
    lr_theta=3e-2,
    lr_net=3e-3,
    val_every=25,
)
PRESETS = {
    "quick": ERA5Config(
        dt=1.0,
        context_steps=1,
        corr_steps=24,
        main_horizon=24,
        horizons=tuple(range(1, 25)),
        field_steps=24,
        coarsen=2,
        test_every=6,
        online_every=6,
        closure_variants=("unrestricted",),
        lambda_sweep=(0.0,),
        data_sizes=(),
        ablation_seeds=1,
        pinn=None,
        checkpoint_every=50,
        emulator_steps=300,
        width=12,
        online_steps=3,
        online_warm_steps=40,
        train=_QUICK_TRAIN,
    ),
}
PRESETS["full"] = PRESETS["quick"].replace(
    preset="full",
    coarsen=1,
    test_every=3,
    online_every=3,
    closure_variants=("unrestricted", "orthogonal"),
    lambda_sweep=(0.0, 1e-2),
    data_sizes=(4, 10),
    data_seeds=1,
    ablation_seeds=None,
    emulator_steps=2000,
    width=16,
    online_steps=4,
    online_warm_steps=100,
    train=_QUICK_TRAIN.replace(steps=600, horizon=12, horizon_schedule=(3, 6, 12)),
)


# ------------------------------------------------------------------------ the layers


class _Still(AbstractModel):
    """``du/dt = 0`` on a field: the physics of a model that has none (an emulator)."""

    shape: tuple[int, ...] = eqx.field(static=True)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self.shape

    def rhs(self, u):
        return jnp.zeros_like(u)

    def initial_condition(self, key):
        del key
        return jnp.zeros(self.shape)


def _with_clock(model):
    """``model`` with the clock handed to its closure term: a `Hybrid` with closure
    coupling wraps the stepper's model as ``(inner, term)``, and a term built without
    `Inputs` gives its network the field alone; here it gets ``[field.ravel(), t]``
    (`Inputs(time=True)`). Anything else is returned unchanged."""
    term = getattr(model, "term", None)
    if term is None or not hasattr(term, "inputs") or term.inputs is not None:
        return model
    return eqx.tree_at(lambda m: m.term.inputs, model, Inputs(time=True), is_leaf=lambda x: x is None)


class ClockedStep(AbstractStepper):
    r"""One step ``dt`` (hours) of an ODE model with Diffrax, whose closure network — when a
    `Hybrid` puts one into the model — sees the time as well as the field.

    Same map as ``Diffrax(model, dt, solver, substeps=substeps)``. The difference is for a
    closure: the study engine builds ``Hybrid(physics, net, coupling="closure")`` without
    `Inputs`, so the network would see the field only; diurnal heating needs the clock, so
    this step hands the closure term ``Inputs(time=True)`` (the network input is then the
    flat vector ``[u.ravel(), t]``). A model without a closure is stepped as it is.

    The stability of the explicit step is checked by the study with the model's
    `check_cfl` at the bounds of the wind and κ (not at construction).

    **Arguments:** `model`, `dt` (hours), `substeps` (fixed internal steps), `solver`
    (default Tsit5), `adjoint` (as in `Diffrax`).
    """

    model: AbstractModel
    dt: float = eqx.field(static=True)
    substeps: int = eqx.field(static=True, default=1)
    solver: diffrax.AbstractSolver = eqx.field(default_factory=diffrax.Tsit5)
    adjoint: diffrax.AbstractAdjoint = eqx.field(default_factory=diffrax.RecursiveCheckpointAdjoint)

    def __call__(self, u, t=0.0):
        self.check(u)
        step = Diffrax(
            _with_clock(self.model),
            self.dt,
            self.solver,
            substeps=self.substeps,
            adjoint=self.adjoint,
            stability_check=False,
        )
        return step(u, t)


class DiurnalCNN(eqx.Module):
    r"""A small CNN on the lat–lon field that sees position, a land–sea proxy and the clock:
    the ERA5 hybrid's closure (a tendency in K/h) and emulator (an increment in K).

    Input channels (each normalised): the field ``(T − T̄)/σ``, its anomaly from the
    training period's mean field ``(T − M(x))/σ``, latitude, longitude, ``M(x)``, the
    amplitude of the mean diurnal cycle (a land–sea proxy: large over land); with the clock
    (`clock`): the anomaly from the mean diurnal cycle ``(T − M − D(t, x))/σ``, ``D(t, x)``
    and ``∂_t D`` (the cycle's first `harmonics` harmonics in UTC time), and the sine and
    cosine of the local solar time ``t_UTC + λ/15``. Then `depth` hidden
    ``Conv2d`` layers (`width` channels, SAME padding, GELU) and a last ``Conv2d`` to one
    channel, initialised ×0.01 so the network starts near zero.

    The input is the field ``(ny, nx)`` or, with the clock, the flat vector
    ``[T.ravel(), t]`` (``t`` in hours since the data's first field); a clocked network
    given a bare field (a residual network, which the engine gives no clock) sees zeros in
    the clock channels. With `writes_ring` false the output is zero on the boundary ring
    (the ring follows the observations).

    The fixed fields are `Param`s with ``fixed=True``: constants, never trained.
    """

    layers: tuple[eqx.nn.Conv2d, ...]
    fields: Param
    diurnal: Param
    shape: tuple[int, int] = eqx.field(static=True)
    lon: tuple[float, ...] = eqx.field(static=True)
    utc0: float = eqx.field(static=True)
    mean: float = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    clim_scale: float = eqx.field(static=True)
    tend_scale: float = eqx.field(static=True)
    clock: bool = eqx.field(static=True)
    writes_ring: bool = eqx.field(static=True)

    def __init__(self, stats: dict, *, clock: bool, writes_ring: bool, width: int, depth: int,
                 kernel_size: int, key):  # fmt: skip
        lat, lon = np.asarray(stats["lat"]), np.asarray(stats["lon"])
        ny, nx = lat.size, lon.size
        self.shape, self.lon = (ny, nx), tuple(float(x) for x in lon)
        self.utc0 = float(stats["utc0"])
        self.mean, self.scale = float(stats["mean"]), float(stats["scale"])
        mfield = np.asarray(stats["mean_field"], dtype=float)
        coef = np.asarray(stats["diurnal"], dtype=float)  # (2K, ny, nx)
        amp = np.sqrt((coef**2).reshape(-1, 2, ny, nx).sum(1)).sum(0)
        lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")

        def norm(a):
            a = np.asarray(a, dtype=float)
            return (a - a.mean()) / (a.std() if a.std() > 0 else 1.0)

        fields = np.stack([norm(lat2), norm(lon2), (mfield - self.mean) / self.scale, norm(amp)])
        self.fields = Param(fields, fixed=True, name="cnn_fields")
        self.diurnal = Param(coef, fixed=True, name="cnn_diurnal")
        self.clim_scale = float(stats.get("clim_scale") or 1.0)
        self.tend_scale = float(stats.get("tend_scale") or 1.0)
        self.clock, self.writes_ring = bool(clock), bool(writes_ring)
        channels = 2 + fields.shape[0] + (5 if clock else 0)
        keys = jax.random.split(key, depth + 1)
        sizes = [channels] + [width] * depth + [1]
        layers = [
            eqx.nn.Conv2d(a, b, kernel_size, padding="SAME", key=k)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        ]
        last = layers[-1]
        last = eqx.tree_at(lambda c: (c.weight, c.bias), last,
                           (0.01 * last.weight, jnp.zeros_like(last.bias)))  # fmt: skip
        self.layers = (*layers[:-1], last)

    def diurnal_cycle(self, t):
        """``(D(t, x), ∂_t D(t, x))`` in K and K/h: the training period's mean diurnal
        cycle (its first harmonics, UTC) at time ``t`` (hours since the first field)."""
        coef = self.diurnal.value
        k = jnp.arange(1, coef.shape[0] // 2 + 1, dtype=coef.dtype)
        w = 2 * jnp.pi * k / 24.0
        ph = w * (jnp.asarray(t, coef.dtype) + self.utc0)
        a, b = coef[0::2], coef[1::2]
        d = jnp.tensordot(jnp.cos(ph), a, 1) + jnp.tensordot(jnp.sin(ph), b, 1)
        dd = jnp.tensordot(w * -jnp.sin(ph), a, 1) + jnp.tensordot(w * jnp.cos(ph), b, 1)
        return d, dd

    def __call__(self, x):
        ny, nx = self.shape
        if x.shape == (ny * nx + 1,):
            u, t = x[:-1].reshape(ny, nx), x[-1]
        elif x.shape == (ny, nx):
            u, t = x, None
        else:
            raise ValueError(
                f"DiurnalCNN: expected a field of shape {self.shape} or the flat vector "
                f"[field.ravel(), t] of shape ({ny * nx + 1},), got {x.shape}."
            )
        fixed = self.fields.value
        dtype = jnp.result_type(u, fixed)
        u = u.astype(dtype)
        mfield = fixed[2] * self.scale + self.mean
        chans = [(u - self.mean) / self.scale, (u - mfield) / self.scale, *fixed]
        if self.clock:
            if t is None:
                chans += [jnp.zeros_like(u)] * 5
            else:
                d, dd = self.diurnal_cycle(t)
                lst = 2 * jnp.pi * (t + self.utc0 + jnp.asarray(self.lon, dtype) / 15.0) / 24.0
                ones = jnp.ones((ny, 1), dtype)
                chans += [(u - mfield - d) / self.scale, d / self.clim_scale,
                          dd / self.tend_scale, ones * jnp.sin(lst)[None], ones * jnp.cos(lst)[None]]  # fmt: skip
        h = jnp.stack(chans)
        for layer in self.layers[:-1]:
            h = jax.nn.gelu(layer(h))
        y = self.layers[-1](h)[0]
        if not self.writes_ring:
            y = jnp.pad(y[1:-1, 1:-1], 1)
        return y


# ------------------------------------------------------------------------- the study


def _engine_key(name: str, seed: int):
    """The key the engine initialises method ``name``'s networks with for ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) % (2**31))


def hourly_climatology(fields: np.ndarray, hours: np.ndarray, utc0: float) -> np.ndarray:
    """The mean field at each UTC hour of the day, ``(24, ny, nx)``, of hourly ``fields``
    at ``hours`` (hours since a time whose UTC hour is ``utc0``)."""
    h = np.rint(np.asarray(hours) + utc0).astype(int) % 24
    missing = sorted(set(range(24)) - set(h.tolist()))
    if missing:
        raise ValueError(f"the training period lacks the UTC hour(s) {missing}.")
    return np.stack([fields[h == k].mean(0) for k in range(24)])


def previous_day_forecast(fields: np.ndarray, starts, steps: int) -> np.ndarray:
    """Forecasts ``(len(starts), 1 + steps, ny, nx)`` that repeat the same hour of the
    previous day: the lead-``k`` forecast from hour ``s`` is ``fields[s + k − 24]`` (for
    ``k ≤ 24`` already observed at ``s``); lead 0 is the start field."""
    if steps > 24:
        raise ValueError(f"the previous day covers leads up to 24 h, got {steps}.")
    out = []
    for s in starts:
        if steps and s < 23:
            raise ValueError(f"start hour {s} has no previous day in the data (needs >= 23).")
        lead = [fields[s]] + [fields[s + k - 24] for k in range(1, steps + 1)]
        out.append(np.stack(lead))
    return np.stack(out)


def diurnal_forecast(fields: np.ndarray, clim: np.ndarray, starts, steps: int,
                     utc0: float) -> np.ndarray:  # fmt: skip
    """Forecasts ``(len(starts), 1 + steps, ny, nx)``: the current anomaly from the mean
    diurnal cycle ``clim`` (24 hourly mean fields, UTC) kept, the cycle added,
    ``T̂(s + k) = T(s) − C(h(s)) + C(h(s + k))``."""
    out = []
    for s in starts:
        h = (int(round(s + utc0)) + np.arange(steps + 1)) % 24
        out.append(fields[s] - clim[h[0]] + clim[h])
    return np.stack(out)


def _harmonics(fields: np.ndarray, hours: np.ndarray, utc0: float, k: int):
    """Per-cell least-squares fit ``T ≈ c0 + Σ_j a_j cos(jωt) + b_j sin(jωt)`` (UTC time,
    ``ω = 2π/24``): ``(c0, coef)`` with ``coef`` of shape ``(2k, ny, nx)`` ordered
    ``a_1, b_1, a_2, …``."""
    t = np.asarray(hours, dtype=float) + utc0
    cols = [np.ones_like(t)]
    for j in range(1, k + 1):
        w = 2 * np.pi * j / 24.0
        cols += [np.cos(w * t), np.sin(w * t)]
    design = np.stack(cols, axis=1)
    n, ny, nx = fields.shape
    sol, *_ = np.linalg.lstsq(design, fields.reshape(n, -1).astype(float), rcond=None)
    return sol[0].reshape(ny, nx), sol[1:].reshape(2 * k, ny, nx)


def apparent_motion(fields: np.ndarray, clim: np.ndarray, hours: np.ndarray, lat, lon,
                    utc0: float, window: int = 24, lag: int = 3) -> dict:  # fmt: skip
    r"""The apparent motion (m/s) of the 2 m temperature anomaly: a field-derived proxy of the
    advecting wind, since the data directory holds no hourly wind.

    The anomaly ``a = T − C(hour)`` (mean diurnal cycle removed) is fitted, over a sliding
    window of `window` hours ending at each hour, by a uniform translation:
    least squares of ``a(t + lag) − a(t) = −lag·(u ∂a/∂x + v ∂a/∂y)`` on the interior cells
    (centred differences on the sphere). Heating, mixing and fronts also change the
    anomaly, so this is a proxy, not a measurement.

    **Returns:** ``{"time": hours, "u": …, "v": …}`` (NaN for the first hours).
    """
    h = (np.rint(np.asarray(hours) + utc0).astype(int)) % 24
    a = fields - clim[h]
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    R = 6.371e6
    dx = R * np.cos(np.deg2rad(lat))[:, None] * np.deg2rad(lon[1] - lon[0])
    dy = R * np.deg2rad(lat[1] - lat[0])
    ax = (a[:, 1:-1, 2:] - a[:, 1:-1, :-2]) / (2 * dx[1:-1])
    ay = (a[:, 2:, 1:-1] - a[:, :-2, 1:-1]) / (2 * dy)
    da = (a[lag:, 1:-1, 1:-1] - a[:-lag, 1:-1, 1:-1]) / (lag * 3600.0)
    n = fields.shape[0]
    u = np.full(n, np.nan)
    v = np.full(n, np.nan)
    for end in range(window + lag, n):
        sl = slice(end - lag - window + 1, end - lag + 1)
        gx, gy, y = ax[sl].ravel(), ay[sl].ravel(), -da[sl].ravel()
        m = np.array([[gx @ gx, gx @ gy], [gx @ gy, gy @ gy]])
        if np.linalg.cond(m) < 1e8:
            u[end], v[end] = np.linalg.solve(m, [gx @ y, gy @ y])
    return {"time": np.asarray(hours, dtype=float), "u": u, "v": v}
