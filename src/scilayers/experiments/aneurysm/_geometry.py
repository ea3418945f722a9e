"""Geometry helpers of the aneurysm study: restriction of the fine truth to the coarse
lattice, distance to the analytic wall, the closure's static features."""

from __future__ import annotations

import math

import numpy as np

from ...models import SidewallAneurysm
from ._config import Lattice


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
