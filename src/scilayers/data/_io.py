"""Files: atomic netCDF writes, validated loading, an on-disk cache and the data directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from ._splits import SPLITS

DATA_DIR_ENV = "SCILAYERS_DATA_DIR"

KS_REQUIRED_ATTRS = (
    "a",
    "b",
    "c",
    "d",
    "length",
    "n",
    "dt_save",
    "dt",
    "substeps",
    "burn_in",
    "seed",
    "scilayers_version",
)
KS_OOD_REQUIRED_ATTRS = ("ood_a", "ood_b", "ood_c", "ood_d", "ood_length", "ood_n")


def save_dataset(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to the netCDF-4 file ``path`` atomically; returns the path.

    The data go to a temporary file in the same folder, which then replaces ``path`` with
    ``os.replace``: a reader never sees a half-written file, and an interrupted write leaves
    any previous file intact. Parent folders are created.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass a file name such as {path / 'ks.nc'}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the folder {path.parent} for {path}: {e.strerror}.") from e
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"cannot write {path}: the folder {path.parent} is not writable.")
    encoding = {
        name: {"_FillValue": None}
        for name, var in ds.variables.items()
        if np.issubdtype(var.dtype, np.floating)
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, format="NETCDF4", engine="netcdf4", encoding=encoding)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _open(path: Path, fix: str) -> xr.Dataset:
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist; {fix}.")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a netCDF file; {fix}.")
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable netCDF file ({e}); {fix}.") from e
    for name in list(ds.variables):
        if ds[name].dtype == object:
            ds[name] = ds[name].astype(str)
    return ds


def _check_dims(ds: xr.Dataset, name: str, dims: tuple[str, ...], path: Path, fix: str) -> None:
    if name not in ds:
        raise ValueError(
            f"{path} has no variable {name!r} (found {sorted(ds.data_vars)}); it is not a "
            f"scilayers KS file; {fix}."
        )
    if ds[name].dims != dims:
        raise ValueError(
            f"{path}: variable {name!r} has dimensions {ds[name].dims}, expected {dims}; {fix}."
        )


def load_ks(path: str | os.PathLike) -> xr.Dataset:
    """Load a KS truth file written by `generate_ks` / `scilayers data ks`, and validate it.

    Checks the variable ``u (trajectory, time, x)``, the per-trajectory ``split`` labels, the
    attributes that describe θ_s and the grid, and, if present, ``u_ood (trajectory_ood,
    time, x_ood)`` with its attributes.

    **Raises:** `FileNotFoundError` if the file is missing, `ValueError` if it is unreadable or
    lacks what a KS file holds; both messages name the file and the command that makes it.
    """
    path = Path(path)
    fix = f"create it with `scilayers data ks --out {path}`"
    ds = _open(path, fix)
    _check_dims(ds, "u", ("trajectory", "time", "x"), path, fix)
    for coord in ("time", "x", "split"):
        if coord not in ds.variables:
            raise ValueError(f"{path} has no {coord!r} coordinate; {fix}.")
    if ds["split"].dims != ("trajectory",):
        raise ValueError(f"{path}: 'split' must be indexed by trajectory; {fix}.")
    bad = set(np.unique(ds["split"].values)) - set(SPLITS)
    if bad:
        raise ValueError(f"{path}: unknown split label(s) {sorted(bad)}; {fix}.")
    missing = [a for a in KS_REQUIRED_ATTRS if a not in ds.attrs]
    if "u_ood" in ds:
        _check_dims(ds, "u_ood", ("trajectory_ood", "time", "x_ood"), path, fix)
        missing += [a for a in KS_OOD_REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise ValueError(f"{path} lacks the attribute(s) {missing}; {fix}.")
    if ds.sizes["x"] != int(ds.attrs["n"]):
        raise ValueError(
            f"{path}: u has {ds.sizes['x']} grid points but attrs say n={ds.attrs['n']}; {fix}."
        )
    return ds


def cached(
    path: str | os.PathLike,
    make_fn: Callable[[], xr.Dataset],
    *,
    fingerprint: str | None = None,
) -> xr.Dataset:
    """Return the dataset cached at ``path``, or make it with ``make_fn()`` and cache it.

    Meant for seeded synthetic truth, which is a pure function of its config. With a
    ``fingerprint`` (e.g. `KSDataConfig.fingerprint`), a cached file is used only if its
    ``cache_fingerprint`` attribute matches; otherwise (or if the file is unreadable) the data
    are made again and the file replaced atomically.
    """
    path = Path(path)
    if path.exists():
        try:
            ds = xr.load_dataset(path, engine="netcdf4")
        except (OSError, ValueError, RuntimeError):
            ds = None
        if ds is not None and (
            fingerprint is None or ds.attrs.get("cache_fingerprint") == fingerprint
        ):
            for name in list(ds.variables):
                if ds[name].dtype == object:
                    ds[name] = ds[name].astype(str)
            return ds
    ds = make_fn()
    if fingerprint is not None:
        ds = ds.assign_attrs(cache_fingerprint=fingerprint)
    save_dataset(ds, path)
    return ds


def data_dir(cli_value: str | os.PathLike | None = None) -> Path:
    """The folder holding real data: ``cli_value`` (``--data-dir``) if given, else the
    environment variable ``SCILAYERS_DATA_DIR``.

    **Raises:** `ValueError` if neither is set, `FileNotFoundError` if the folder does not
    exist; both say how to fix it.
    """
    source = "--data-dir"
    value = cli_value
    if value is None or str(value) == "":
        value = os.environ.get(DATA_DIR_ENV) or None
        source = DATA_DIR_ENV
    if value is None:
        raise ValueError(
            f"no data directory given; pass --data-dir DIR or set {DATA_DIR_ENV}=DIR "
            f"(in this repository: ../shared/data)."
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data directory {path} (from {source}) does not exist; point {source} at the "
            f"folder that holds the real data (e.g. ../shared/data)."
        )
    return path.resolve()
