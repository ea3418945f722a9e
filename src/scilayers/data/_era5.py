"""ERA5 2 m temperature and ERA-Interim reference winds: validated loaders, and a synthetic
stand-in with the same structure."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..models import LatLonAdvectionDiffusion
from ..solvers import Diffrax, rollout
from ._io import DATA_DIR_ENV, data_dir, save_dataset

ERA5_T2M_FILE = "climate/era5-t2m-2019-03-uk.nc"
ERAINT_FILE = "climate/eraint_uvz.nc"
UK_BOX = (50.0, 58.0, -10.0, 2.0)  # lat_min, lat_max, lon_min, lon_max of the ERA5 file
_DIMS = ("time", "latitude", "longitude")
_OPTION = f"--data-dir DIR or {DATA_DIR_ENV}=DIR"


def _resolve(data_dir_value, file: str | os.PathLike, variable: str) -> Path:
    """The path of ``file``: itself if absolute, else under the data directory; the errors
    name the file, the variable and the option that sets the directory (one line)."""
    file = Path(file)
    if file.is_absolute():
        path = file
    else:
        try:
            path = data_dir(data_dir_value) / file
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"cannot read {variable!r} from {file}: {e}") from None
    if not path.is_file():
        what = "is a directory, not a netCDF file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"data file {path} (variable {variable!r}) {what}; point {_OPTION} at the folder "
            f"that holds {file} (e.g. ../shared/data), or write a synthetic stand-in with "
            f"scilayers.data.write_synthetic_era5."
        )
    return path


def _load(path: Path, variable: str) -> xr.Dataset:
    try:
        with warnings.catch_warnings():
            # ERA-Interim declares a NaN _FillValue, which xarray drops with a warning
            warnings.simplefilter("ignore", xr.SerializationWarning)
            ds = xr.load_dataset(path, engine="netcdf4")
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path} is not a readable netCDF file ({e}); cannot read {variable!r} from it."
        ) from e
    return ds


def _variable(ds: xr.Dataset, name: str, path: Path, dims: tuple[str, ...]) -> xr.DataArray:
    if name not in ds.data_vars:
        raise ValueError(
            f"{path} has no variable {name!r} (found {sorted(ds.data_vars)}); pass the file "
            f"that holds it."
        )
    da = ds[name]
    if tuple(da.dims) != dims:
        raise ValueError(
            f"{path}: variable {name!r} has dimensions {tuple(da.dims)}, expected {dims}."
        )
    return da


def load_era5_t2m(
    data_dir: str | os.PathLike | None = None,
    file: str | os.PathLike = ERA5_T2M_FILE,
    *,
    allow_nan: bool = False,
) -> xr.DataArray:
    """Load ERA5 2 m temperature ``t2m`` (K) as a ``(time, latitude, longitude)``
    `xarray.DataArray`, validated.

    **Arguments:**

    - `data_dir`: the data folder (the CLI's ``--data-dir``); default the environment
      variable ``SCILAYERS_DATA_DIR`` (see `scilayers.data.data_dir`).
    - `file`: the file, relative to the data folder (default
      ``climate/era5-t2m-2019-03-uk.nc``: hourly, March 2019, 33 × 49 cells of 0.25° over
      58N–50N, 10W–2E), or an absolute path (then no data folder is needed).
    - `allow_nan`: keep NaN values (default: a `ValueError` that counts them).

    **Returns:** the DataArray ``t2m`` in memory (file closed), with its coordinates
    ``time`` (datetime64), ``latitude`` and ``longitude`` (degrees) and attributes.

    **Raises:** `FileNotFoundError` for a missing file and `ValueError` for no data folder,
    an unreadable file, a missing variable, wrong dimensions, units other than K, or NaNs;
    each message is one line and names the file, the variable and what to do.
    """
    path = _resolve(data_dir, file, "t2m")
    ds = _load(path, "t2m")
    da = _variable(ds, "t2m", path, _DIMS)
    units = da.attrs.get("units", "K")
    if units != "K":
        raise ValueError(
            f"{path}: 't2m' has units {units!r}, expected 'K'; convert the file to kelvin."
        )
    bad = int(da.isnull().sum())
    if bad and not allow_nan:
        raise ValueError(
            f"{path}: 't2m' has {bad} NaN value(s) of {da.size}; fill them (e.g. "
            f"da.interpolate_na('time')) or pass allow_nan=True."
        )
    return da


def _normalise_lon(lon):
    """Longitudes in ``[-180, 180)``."""
    return (np.asarray(lon, dtype=float) + 180.0) % 360.0 - 180.0


def load_reference_winds(
    data_dir: str | os.PathLike | None = None,
    box: tuple[float, float, float, float] = UK_BOX,
    level: int = 850,
    file: str | os.PathLike = ERAINT_FILE,
) -> xr.Dataset:
    """Box-mean ERA-Interim monthly-mean winds ``u``, ``v`` (m/s) per month: the reference
    for a learned large-scale wind.

    **Arguments:**

    - `data_dir`, `file`: as in `load_era5_t2m` (default ``climate/eraint_uvz.nc``,
      months 1 and 7, levels 200/500/850 hPa, 0.75° global).
    - `box`: ``(lat_min, lat_max, lon_min, lon_max)`` in degrees, cell centres inside it
      (edges included) are averaged; longitudes in either convention (``-10`` or
      ``350``); a box with ``lon_min > lon_max`` crosses the date line. Default the ERA5
      UK box.
    - `level`: pressure level in hPa (default 850).

    The file's longitudes may run over ``0..360`` or ``-180..180``; both are handled. The
    mean is area-weighted (``cos φ``).

    **Returns:** an `xarray.Dataset` with ``u`` and ``v`` (m/s) indexed by ``month``, and
    attributes ``level``, ``box``, ``cells`` (grid points averaged) and ``source``.
    """
    lat_min, lat_max, lon_min, lon_max = (float(x) for x in box)
    if not lat_min <= lat_max:
        raise ValueError(f"box latitudes must satisfy lat_min <= lat_max, got {box}.")
    path = _resolve(data_dir, file, "u, v")
    ds = _load(path, "u, v")
    for name in ("u", "v"):
        _variable(ds, name, path, ("month", "level", "latitude", "longitude"))
    levels = [int(x) for x in ds["level"].values]
    if level not in levels:
        raise ValueError(f"{path} has no level {level} hPa (it has {levels}); pick one of them.")
    ds = ds.sel(level=level)
    lon = _normalise_lon(ds["longitude"].values)
    lo, hi = _normalise_lon(lon_min), _normalise_lon(lon_max)
    if lon_max - lon_min >= 360.0:
        in_lon = np.ones(lon.shape, dtype=bool)
    elif lo <= hi:
        in_lon = (lon >= lo) & (lon <= hi)
    else:  # crosses the date line
        in_lon = (lon >= lo) | (lon <= hi)
    lat = np.asarray(ds["latitude"].values, dtype=float)
    in_lat = (lat >= lat_min) & (lat <= lat_max)
    if not (in_lon.any() and in_lat.any()):
        raise ValueError(
            f"{path}: the box {box} holds no grid point of the file's grid; widen the box."
        )
    sub = ds.isel(latitude=np.flatnonzero(in_lat), longitude=np.flatnonzero(in_lon))
    weights = xr.DataArray(np.cos(np.deg2rad(lat[in_lat])), dims="latitude")
    out = xr.Dataset(
        {
            name: sub[name].weighted(weights).mean(("latitude", "longitude")).astype(float)
            for name in ("u", "v")
        }
    )
    out["u"].attrs["units"] = out["v"].attrs["units"] = "m s**-1"
    return out.assign_attrs(
        level=int(level),
        box=[lat_min, lat_max, lon_min, lon_max],
        cells=int(in_lat.sum() * in_lon.sum()),
        source=str(path),
    )


def hours_since(times, t_ref=None) -> np.ndarray:
    """Times (datetime64, e.g. ``da.time``) as float hours since ``t_ref`` (default the
    first time): the time axis `LatLonAdvectionDiffusion` and `rollout` use."""
    times = np.asarray(times, dtype="datetime64[ns]")
    ref = times[0] if t_ref is None else np.datetime64(t_ref, "ns")
    return (times - ref) / np.timedelta64(1, "h")


# compiled once per grid and length, whatever the wind (θ_s is traced)
_run = eqx.filter_jit(rollout)


def _synthetic_initial(lat2, lon2, rng) -> np.ndarray:
    """A background meridional gradient (cooler to the north) plus a few warm and cold
    Gaussian blobs, in K."""
    lat_c, lon_c = lat2.mean(), lon2.mean()
    field = 280.0 - 0.6 * (lat2 - lat_c)
    span = max(np.ptp(lat2), np.ptp(lon2))
    for _ in range(6):
        y0 = lat_c + rng.uniform(-0.5, 0.5) * np.ptp(lat2)
        x0 = lon_c + rng.uniform(-0.5, 0.5) * np.ptp(lon2)
        width = rng.uniform(0.12, 0.25) * span
        amp = rng.choice([-1.0, 1.0]) * rng.uniform(1.5, 3.0)
        field = field + amp * np.exp(-((lat2 - y0) ** 2 + (lon2 - x0) ** 2) / (2 * width**2))
    return field


def write_synthetic_era5(
    path: str | os.PathLike,
    *,
    lat=None,
    lon=None,
    n_times: int = 48,
    u: float = 6.0,
    v: float = -2.0,
    kappa: float = 2e4,
    diurnal_amplitude: float = 3.0,
    seed: int = 0,
    start: str = "2019-03-01T00:00",
    pad: int = 6,
) -> Path:
    """Write a small synthetic ERA5-like netCDF file (``t2m`` in K, hourly, ``time ×
    latitude × longitude``, latitudes descending) with a known answer; returns the path.

    The field is a background gradient with warm and cold blobs, advected by the wind
    (``u``, ``v``) and diffused with ``κ`` by `LatLonAdvectionDiffusion` itself (Tsit5,
    steps inside the stability limit) on a grid ``pad`` cells larger on every side with
    zero-gradient boundaries, then cut to ``lat × lon``, so the boundary of the file is the
    inflow a forecast model must be driven by; plus a diurnal cycle ``diurnal_amplitude ·
    land · cos(2π (hour − 15)/24)`` over "land" (a smooth step from 0 in the west to 1 in
    the east), which transport alone cannot produce. The true ``u``, ``v``, ``kappa``,
    ``diurnal_amplitude`` and ``seed`` are stored as attributes. Same structure as
    ``climate/era5-t2m-2019-03-uk.nc``, for tests and for users without the data; it is
    read back by `load_era5_t2m` (pass the absolute path as ``file``).

    **Arguments:**

    - `path`: the netCDF file to write (atomically; folders are created).
    - `lat`, `lon`: cell centres in degrees, regular; default 55N–52N (13 rows, 0.25°,
      descending) × 4W–0E (17 columns).
    - `n_times`: hourly fields (default 48).
    - `u`, `v` (m/s), `kappa` (m²/s): the true transport (``v`` at the grid's centre
      latitude, see `LatLonAdvectionDiffusion`).
    - `diurnal_amplitude`: K (default 3; 0 for pure transport).
    - `seed`: the blobs' positions, sizes and signs.
    - `start`: the first time (ISO 8601).
    - `pad`: cells added on each side for the generating run (default 6).
    """
    lat = np.arange(55.0, 51.99, -0.25) if lat is None else np.asarray(lat, dtype=float)
    lon = np.arange(-4.0, 0.01, 0.25) if lon is None else np.asarray(lon, dtype=float)
    if not (isinstance(n_times, int | np.integer) and n_times >= 2):
        raise ValueError(f"n_times must be an integer >= 2, got {n_times!r}.")
    if not (isinstance(pad, int | np.integer) and pad >= 1):
        raise ValueError(f"pad must be an integer >= 1, got {pad!r}.")
    if lat.ndim != 1 or lon.ndim != 1 or lat.size < 3 or lon.size < 3:
        raise ValueError(f"lat and lon must be 1-D with >= 3 points, got {lat.shape}, {lon.shape}.")
    dlat, dlon = lat[1] - lat[0], lon[1] - lon[0]
    big_lat = lat[0] + dlat * np.arange(-pad, lat.size + pad)
    big_lon = lon[0] + dlon * np.arange(-pad, lon.size + pad)
    model = LatLonAdvectionDiffusion(
        big_lat, big_lon, u=u, v=v, kappa=kappa, lat_ref=float(np.mean(lat))
    )
    substeps = max(1, math.ceil(1.0 / (0.8 * model.max_stable_dt())))
    step = Diffrax(model, 1.0, substeps=substeps, stability_check=False)
    lat2, lon2 = model.grid()
    rng = np.random.default_rng(seed)
    u0 = jnp.asarray(_synthetic_initial(lat2, lon2, rng), jnp.result_type(float))
    traj = np.asarray(_run(step, u0, int(n_times) - 1))
    traj = traj[:, pad:-pad, pad:-pad]

    times = np.datetime64(start, "ns") + np.arange(n_times) * np.timedelta64(1, "h")
    hour = (times - times.astype("datetime64[D]")) / np.timedelta64(1, "h")
    span = max(float(np.ptp(lon)), 1e-9)
    land = 1.0 / (1.0 + np.exp(-(lon - lon.mean()) / (0.1 * span)))
    cycle = np.cos(2 * np.pi * (hour - 15.0) / 24.0)
    traj = traj + diurnal_amplitude * cycle[:, None, None] * land[None, None, :]

    t2m = xr.DataArray(
        traj.astype(np.float32),
        dims=_DIMS,
        coords={"time": times, "latitude": lat, "longitude": lon},
        attrs={"units": "K", "long_name": "2 metre temperature"},
        name="t2m",
    )
    ds = t2m.to_dataset().assign_attrs(
        synthetic=1,
        u=float(u),
        v=float(v),
        kappa=float(kappa),
        diurnal_amplitude=float(diurnal_amplitude),
        seed=int(seed),
        description=(
            "synthetic ERA5-like t2m: blobs advected by (u, v) m/s and diffused by kappa "
            "m^2/s (LatLonAdvectionDiffusion, zero-gradient boundaries on a padded grid), "
            "plus a diurnal cycle of amplitude diurnal_amplitude K over land (east)"
        ),
    )
    return save_dataset(ds, path)
