"""Evaluation metrics for rollouts, parameters and physical consistency."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mse_by_step(pred, truth) -> np.ndarray:
    """MSE at every step, averaged over trajectories and space: shape ``(time,)``.

    ``pred`` and ``truth`` have shape ``(batch, time, *state)``."""
    err = (np.asarray(pred) - np.asarray(truth)) ** 2
    return err.reshape(err.shape[0], err.shape[1], -1).mean(axis=(0, 2))


def rollout_mse(pred, truth, horizon: int) -> float:
    """Mean squared error over steps ``1 … horizon`` (step 0 is the shared initial state)."""
    return float(mse_by_step(pred, truth)[1 : horizon + 1].mean())


def normalised(mse: float, truth) -> float:
    """``mse / Var(truth)``: 1 means no better than the climatological mean."""
    return float(mse / np.var(np.asarray(truth)))


def correlation(pred, truth) -> np.ndarray:
    """Spatial Pearson correlation per trajectory and step: ``(batch, time)``."""
    p = np.asarray(pred).reshape(*np.shape(pred)[:2], -1)
    t = np.asarray(truth).reshape(*np.shape(truth)[:2], -1)
    p = p - p.mean(-1, keepdims=True)
    t = t - t.mean(-1, keepdims=True)
    den = np.sqrt((p**2).sum(-1) * (t**2).sum(-1))
    return (p * t).sum(-1) / np.where(den > 0, den, 1.0)


def correlation_time(pred, truth, dt: float, threshold: float = 0.8) -> np.ndarray:
    """Per trajectory, the time until the correlation with the truth first drops below
    ``threshold`` (the full span if it never does). Non-finite predictions count as
    decorrelated."""
    corr = correlation(pred, truth)
    corr = np.where(np.isfinite(corr), corr, -1.0)
    below = corr < threshold
    first = np.where(below.any(1), below.argmax(1), corr.shape[1] - 1)
    return first * dt


def physics_residual(model, trajectories, dt: float) -> float:
    """Mean squared residual ``F(ũ; θ_s)`` of ``model`` on ``(batch, time, *state)``."""
    res = jax.jit(jax.vmap(lambda tr: model.residual(tr, dt)))(jnp.asarray(trajectories))
    return float(jnp.mean(res**2))


def relative_error(learned, true) -> float:
    """``|learned - true| / |true|``."""
    return float(abs(float(learned) - float(true)) / abs(float(true)))


def summary(per_seed) -> dict:
    """``{"mean", "std", "per_seed"}`` over seeds (NaN-safe; null where all are NaN)."""
    arr = np.asarray(per_seed, dtype=float)
    if arr.size == 0 or not np.isfinite(arr).any():
        return {"mean": None, "std": None, "per_seed": [None] * arr.size}
    return {
        "mean": float(np.nanmean(arr)),
        "std": float(np.nanstd(arr)),
        "per_seed": [float(x) if np.isfinite(x) else None for x in arr],
    }
