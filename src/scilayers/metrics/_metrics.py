"""Evaluation metrics for rollouts, parameters and physical consistency."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def mse_by_step(pred, truth) -> np.ndarray:
    """MSE at every step, averaged over trajectories and space: shape ``(time,)``.

    ``pred`` and ``truth`` have shape ``(batch, time, *state)``."""
    with np.errstate(over="ignore", invalid="ignore"):
        err = (np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)) ** 2
        err = np.where(np.isnan(err), np.inf, err)
        return err.reshape(err.shape[0], err.shape[1], -1).mean(axis=(0, 2))


def rollout_mse(pred, truth, horizon: int) -> float:
    """Mean squared error over steps ``1 … horizon`` (step 0 is the shared initial state)."""
    return float(mse_by_step(pred, truth)[1 : horizon + 1].mean())


def normalised(mse: float, truth) -> float:
    """``mse / Var(truth)``: 1 means no better than the climatological mean."""
    return float(mse / np.var(np.asarray(truth)))


def correlation(pred, truth) -> np.ndarray:
    """Spatial Pearson correlation per trajectory and step: ``(batch, time)``."""
    p = np.asarray(pred, dtype=np.float64).reshape(*np.shape(pred)[:2], -1)
    t = np.asarray(truth, dtype=np.float64).reshape(*np.shape(truth)[:2], -1)
    with np.errstate(over="ignore", invalid="ignore"):
        p = p - p.mean(-1, keepdims=True)
        t = t - t.mean(-1, keepdims=True)
        den = np.sqrt((p**2).sum(-1)) * np.sqrt((t**2).sum(-1))
        corr = (p * t).sum(-1) / np.where(den > 0, den, 1.0)
    return np.where(np.isfinite(corr), corr, np.nan)


def correlation_time(pred, truth, dt: float, threshold: float = 0.8) -> np.ndarray:
    """Per trajectory, the time until the correlation with the truth first drops below
    ``threshold`` (the full span if it never does). Non-finite predictions count as
    decorrelated."""
    corr = correlation(pred, truth)
    corr = np.where(np.isfinite(corr), corr, -1.0)
    below = corr < threshold
    first = np.where(below.any(1), below.argmax(1), corr.shape[1] - 1)
    return first * dt


def diverged_fraction(pred) -> float:
    """Fraction of trajectories ``(batch, time, *state)`` whose rollout became non-finite."""
    p = np.asarray(pred).reshape(np.shape(pred)[0], -1)
    return float((~np.isfinite(p).all(axis=1)).mean())


@eqx.filter_jit
def _residuals(model, trajectories, dt):
    return jax.vmap(lambda tr: model.residual(tr, dt))(trajectories)


def physics_residual(model, trajectories, dt: float) -> float:
    """Mean squared residual ``F(ũ; θ_s)`` of ``model`` on ``(batch, time, *state)``
    (compiled once per model structure, not per call)."""
    res = _residuals(model, jnp.asarray(trajectories), float(dt))
    return float(jnp.mean(res**2))


def relative_error(learned, true) -> float:
    """``|learned - true| / |true|``."""
    return float(abs(float(learned) - float(true)) / abs(float(true)))


def summary(per_seed) -> dict:
    """``{"mean", "std", "per_seed"}`` over seeds. A non-finite seed (a diverged rollout)
    makes the mean non-finite, written as null: a method is not averaged over its
    successes only."""
    arr = np.asarray([np.nan if v is None else v for v in per_seed], dtype=float)
    if arr.size == 0 or not np.isfinite(arr).all():
        per = [float(x) if np.isfinite(x) else None for x in arr]
        return {"mean": None, "std": None, "per_seed": per}
    return {
        "mean": float(np.mean(arr)),
        "std": float(np.std(arr)),
        "per_seed": [float(x) for x in arr],
    }
