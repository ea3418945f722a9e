"""A quick look at generated truth: space–time plots of a few trajectories."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr


def plot_spacetime(
    ds: xr.Dataset, path: str | os.PathLike, count: int = 4, variable: str = "u"
) -> Path:
    """Save a PNG with space–time plots (x across, time up) of the first ``count``
    trajectories of ``ds[variable]``; returns the path. Uses matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if variable not in ds:
        raise ValueError(f"the dataset has no variable {variable!r}; found {sorted(ds.data_vars)}.")
    u = ds[variable]
    traj_dim, time_dim, x_dim = u.dims
    count = max(1, min(count, u.sizes[traj_dim]))
    vmax = float(np.abs(u.isel({traj_dim: slice(0, count)}).values).max()) or 1.0
    t = ds[time_dim].values
    x = ds[x_dim].values
    fig, axes = plt.subplots(
        1, count, figsize=(2.4 * count + 1.2, 4.2), sharey=True, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for i, ax in enumerate(axes[0]):
        field = u.isel({traj_dim: i}).values
        mesh = ax.pcolormesh(x, t, field, cmap="RdBu_r", vmin=-vmax, vmax=vmax, shading="auto")
        label = f"{traj_dim} {i}"
        if "split" in ds and ds["split"].dims == (traj_dim,):
            label += f" ({ds['split'].values[i]})"
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("x")
    axes[0][0].set_ylabel("t")
    fig.colorbar(mesh, ax=axes[0].tolist(), shrink=0.9, label=variable)
    prefix = "ood_" if variable == "u_ood" else ""
    theta = ", ".join(f"{k}={ds.attrs[prefix + k]:g}" for k in "abcd" if prefix + k in ds.attrs)
    length = ds.attrs.get(prefix + "length", "?")
    kind = " (out-of-domain)" if prefix else ""
    fig.suptitle(f"Kuramoto–Sivashinsky{kind}, L={length:g}, {theta}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
