"""Calibration of probabilistic predictions: interval coverage and width, CRPS, Gaussian
NLL, spread–skill ratio, PIT and reliability, pooled or per lead time."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from jaxtyping import Array, ArrayLike

# The levels of the central prediction intervals reported by `calibration`.
LEVELS = (0.5, 0.9, 0.95)
# The keys of `calibration` (and of the ``uq`` block of ``results.json``), in order.
CALIBRATION_KEYS = ("picp_50", "picp_90", "picp_95", "mpiw_90", "crps", "nll", "spread_skill")


class GaussianPrediction(NamedTuple):
    """A Gaussian predictive distribution ``N(mean, std²)`` per point; ``mean`` and ``std``
    have the shape of the truth (e.g. ``(batch, time, *state)``). A pytree, so it passes
    through ``jax`` transforms."""

    mean: ArrayLike
    std: ArrayLike


class EnsemblePrediction(NamedTuple):
    """An ensemble (or any set of samples) of predictions, members on axis 0: ``samples``
    of shape ``(members, *truth.shape)``. A pytree, so it passes through ``jax``
    transforms."""

    samples: ArrayLike

    @property
    def members(self) -> int:
        return int(np.shape(self.samples)[0])


Prediction = GaussianPrediction | EnsemblePrediction


def _check(truth, pred) -> tuple[np.ndarray, Prediction]:
    """``truth`` as float64 and ``pred`` with float64 arrays, shapes checked."""
    truth = np.asarray(truth, dtype=np.float64)
    if isinstance(pred, GaussianPrediction):
        mean = np.asarray(pred.mean, dtype=np.float64)
        std = np.asarray(pred.std, dtype=np.float64)
        if mean.shape != truth.shape or std.shape != truth.shape:
            raise ValueError(
                f"GaussianPrediction mean {mean.shape} and std {std.shape} must both have the "
                f"truth's shape {truth.shape}; broadcast them first (e.g. "
                f"jnp.broadcast_to(std, truth.shape))."
            )
        if np.any(std < 0):
            raise ValueError("GaussianPrediction std must be >= 0 (a standard deviation, not a "
                             "variance or a log-variance).")  # fmt: skip
        return truth, GaussianPrediction(mean, std)
    if isinstance(pred, EnsemblePrediction):
        samples = np.asarray(pred.samples, dtype=np.float64)
        if samples.shape[1:] != truth.shape:
            raise ValueError(
                f"EnsemblePrediction samples have shape {samples.shape}; expected (members, "
                f"*{truth.shape}) with the members on axis 0 (use jnp.moveaxis to put them "
                f"there)."
            )
        return truth, EnsemblePrediction(samples)
    raise ValueError(
        f"a prediction must be a GaussianPrediction(mean, std) or an "
        f"EnsemblePrediction(samples), got {type(pred).__name__}; wrap an array of samples "
        f"(members first) as EnsemblePrediction(samples)."
    )


def _need_members(pred: EnsemblePrediction, minimum: int, what: str) -> None:
    if pred.members < minimum:
        raise ValueError(
            f"{what} needs an ensemble of at least {minimum} members, got {pred.members}."
        )


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(
            f"an interval level must lie strictly between 0 and 1 (0.9 for a 90 % interval), "
            f"got {level}."
        )
    return float(level)


def _reduce(values: np.ndarray, by_step: bool) -> float | np.ndarray:
    """The mean of ``values`` over everything (a float), or over every axis but axis 1
    (shape ``(time,)``) when ``by_step``."""
    if not by_step:
        return float(np.mean(values))
    if values.ndim < 2:
        raise ValueError(
            f"by_step=True needs data of shape (batch, time, *state), got {values.shape}; "
            f"for one trajectory add a batch axis (truth[None])."
        )
    return np.moveaxis(values, 1, 0).reshape(values.shape[1], -1).mean(axis=1)


def as_gaussian(pred: Prediction) -> GaussianPrediction:
    """A Gaussian predictive distribution from an ensemble by moment matching: the ensemble
    mean, and the standard deviation of a new draw from the ensemble's distribution,
    ``sqrt((1 + 1/M) s²)`` with ``s²`` the unbiased member variance (``M >= 2``). A
    `GaussianPrediction` is returned unchanged.

    What to use for a small deep ensemble (5–10 members), whose empirical quantiles are
    too coarse for a 90 % or 95 % interval."""
    if isinstance(pred, GaussianPrediction):
        return pred
    if not isinstance(pred, EnsemblePrediction):
        _check(np.zeros(()), pred)  # raises the standard message
    _need_members(pred, 2, "as_gaussian")
    samples = jnp.asarray(pred.samples)
    m = samples.shape[0]
    var = jnp.var(samples, axis=0, ddof=1) * (1.0 + 1.0 / m)
    return GaussianPrediction(jnp.mean(samples, axis=0), jnp.sqrt(var))


def moments(pred: Prediction) -> tuple[Array, Array]:
    """``(mean, variance)`` of a prediction per point; for an ensemble, the member mean and
    the predictive variance of `as_gaussian`."""
    g = as_gaussian(pred)
    return jnp.asarray(g.mean), jnp.asarray(g.std) ** 2


# ----------------------------------------------------------------------- pointwise scores


def crps_gaussian(truth: ArrayLike, mean: ArrayLike, std: ArrayLike) -> Array:
    r"""The CRPS of ``N(mean, std²)`` at ``truth``, pointwise, in closed form
    (Gneiting & Raftery 2007):

    $$\mathrm{CRPS} = σ\left[z\,(2Φ(z) - 1) + 2φ(z) - \frac{1}{\sqrt{π}}\right],
    \qquad z = \frac{y - μ}{σ}.$$

    At ``std = 0`` it is ``|truth - mean|`` (the CRPS of a point forecast). Differentiable,
    so it also serves as a training loss."""
    y, mu, sigma = jnp.asarray(truth), jnp.asarray(mean), jnp.asarray(std)
    safe = jnp.where(sigma > 0, sigma, 1.0)
    z = (y - mu) / safe
    pdf = jnp.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    val = safe * (z * (2 * jsp.ndtr(z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    return jnp.where(sigma > 0, val, jnp.abs(y - mu))


def crps_ensemble(truth: ArrayLike, samples: ArrayLike, fair: bool = True) -> Array:
    r"""The CRPS of an ensemble (members on axis 0 of ``samples``) at ``truth``, pointwise:

    $$\mathrm{CRPS} = \frac{1}{M}\sum_i |x_i - y| - \frac{1}{2M(M-1)}\sum_{i,j}|x_i - x_j|$$

    in the fair form (``fair=True``, default; Ferro 2014: unbiased for the CRPS of the
    distribution the members are drawn from, needs ``M >= 2``), or with ``1/(2M²)`` for the
    CRPS of the empirical distribution of the members (``fair=False``). The double sum is
    computed exactly in ``O(M log M)`` from the sorted members,
    ``Σ_{i,j}|x_i - x_j| = 2 Σ_k (2k - M + 1) x_(k)``."""
    x = jnp.asarray(samples)
    y = jnp.asarray(truth)
    m = x.shape[0]
    if fair and m < 2:
        raise ValueError(f"the fair CRPS needs at least 2 members, got {m}; or pass fair=False.")
    spread_w = 2 * jnp.arange(m, dtype=x.dtype) - m + 1
    xs = jnp.sort(x, axis=0)
    pair_sum = 2 * jnp.tensordot(spread_w, xs, axes=(0, 0))
    skill = jnp.mean(jnp.abs(x - y[None]), axis=0)
    denom = 2 * m * (m - 1) if fair else 2 * m * m
    return skill - pair_sum / denom


def gaussian_nll(truth: ArrayLike, mean: ArrayLike, var: ArrayLike) -> Array:
    r"""The Gaussian negative log-likelihood pointwise,
    ``½ [log(2π σ²) + (y - μ)² / σ²]`` (nats), ``var = σ²``. Differentiable: the loss of
    a heteroscedastic head (`scilayers.uq.Heteroscedastic`)."""
    y, mu, v = jnp.asarray(truth), jnp.asarray(mean), jnp.asarray(var)
    return 0.5 * (jnp.log(2 * math.pi * v) + (y - mu) ** 2 / v)


def pit(truth: ArrayLike, pred: Prediction) -> np.ndarray:
    """The probability integral transform of ``truth`` under ``pred``, pointwise: ``Φ(z)``
    for a Gaussian, the fraction of members below the truth for an ensemble (ties count
    half). Uniform on [0, 1] for a calibrated prediction; its histogram is the rank
    histogram."""
    truth, pred = _check(truth, pred)
    if isinstance(pred, GaussianPrediction):
        z = (truth - pred.mean) / np.where(pred.std > 0, pred.std, np.inf)
        return np.asarray(jsp.ndtr(jnp.asarray(z)), dtype=np.float64)
    below = np.mean(pred.samples < truth[None], axis=0)
    ties = np.mean(pred.samples == truth[None], axis=0)
    return below + 0.5 * ties


# ---------------------------------------------------------------------- summary metrics


def interval(pred: Prediction, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """The central ``level`` prediction interval ``(lower, upper)`` per point: ``mean ±
    z std`` (``z`` the standard normal ``(1 + level)/2`` quantile) for a Gaussian; for an
    ensemble of ``M`` draws, the order statistics at ranks ``(M + 1)(1 ∓ level)/2``
    (interpolated between neighbours; NumPy's ``"weibull"`` quantiles).

    Those ranks make the interval's expected coverage of a new draw from the ensemble's
    distribution exactly ``level`` for any ``M`` (the k-th of M exchangeable draws lies
    below a new one with probability ``k/(M + 1)``). The usual linear-interpolation
    quantiles do not: with ``M = 20`` their 90 % interval covers 0.81 and their 50 %
    interval 0.45 of a calibrated truth. Where ``(M + 1)(1 - level)/2 < 1`` the ensemble is
    too small for the level: the interval is ``[min, max]``, covering ``(M - 1)/(M + 1)``
    (e.g. 95 % needs ``M >= 39``)."""
    level = _check_level(level)
    if isinstance(pred, GaussianPrediction):
        z = NormalDist().inv_cdf(0.5 + level / 2)
        mean, std = np.asarray(pred.mean, np.float64), np.asarray(pred.std, np.float64)
        return mean - z * std, mean + z * std
    if isinstance(pred, EnsemblePrediction):
        s = np.asarray(pred.samples, np.float64)
        q = [0.5 - level / 2, 0.5 + level / 2]
        lo, hi = np.quantile(s, q, axis=0, method="weibull")
        return lo, hi
    return interval(_check(np.zeros(()), pred)[1], level)  # raises the standard message


def picp(
    truth: ArrayLike, pred: Prediction, level: float = 0.9, *, by_step: bool = False
) -> float | np.ndarray:
    """Prediction-interval coverage probability: the fraction of truth values inside the
    central ``level`` interval of ``pred`` (`interval`). A calibrated prediction covers
    ``level``; less is over-confident, more under-confident.

    **Arguments:**

    - `truth`: the observed values, shape ``(batch, time, *state)`` for ``by_step``, any
      shape otherwise.
    - `pred`: a `GaussianPrediction` or an `EnsemblePrediction` of the truth's shape.
    - `level`: the nominal coverage of the interval (default 0.9).
    - `by_step`: return one value per lead time (axis 1), shape ``(time,)``, instead of one
      over everything.
    """
    truth, pred = _check(truth, pred)
    lo, hi = interval(pred, level)
    return _reduce(((truth >= lo) & (truth <= hi)).astype(np.float64), by_step)


def mpiw(pred: Prediction, level: float = 0.9, *, by_step: bool = False) -> float | np.ndarray:
    """Mean prediction-interval width of the central ``level`` interval (`interval`), in
    the units of the data; per lead time (axis 1) with ``by_step``."""
    lo, hi = interval(pred, level)
    return _reduce(hi - lo, by_step)


def crps(
    truth: ArrayLike, pred: Prediction, *, by_step: bool = False, fair: bool = True
) -> float | np.ndarray:
    """Mean continuous ranked probability score (lower is better; equals the mean absolute
    error for a point forecast), in the units of the data: `crps_gaussian` for a Gaussian,
    `crps_ensemble` (``fair`` form by default) for an ensemble; per lead time (axis 1) with
    ``by_step``."""
    truth, pred = _check(truth, pred)
    if isinstance(pred, GaussianPrediction):
        vals = crps_gaussian(truth, pred.mean, pred.std)
    else:
        vals = crps_ensemble(truth, pred.samples, fair)
    return _reduce(np.asarray(vals, dtype=np.float64), by_step)


def nll(truth: ArrayLike, pred: Prediction, *, by_step: bool = False) -> float | np.ndarray:
    """Mean Gaussian negative log-likelihood (`gaussian_nll`, nats per point) of the truth;
    an ensemble is taken as the Gaussian of `as_gaussian`. Infinite where the predicted
    standard deviation is zero; per lead time (axis 1) with ``by_step``."""
    truth, pred = _check(truth, pred)
    g = as_gaussian(pred)
    std = np.asarray(g.std, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.asarray(gaussian_nll(truth, g.mean, std**2), dtype=np.float64)
    vals = np.where(std > 0, vals, np.inf)
    return _reduce(vals, by_step)


def spread_skill(
    truth: ArrayLike, pred: Prediction, *, by_step: bool = False
) -> float | np.ndarray:
    r"""The spread–skill ratio ``sqrt(mean σ²) / RMSE(mean)``: 1 for a calibrated
    prediction, below 1 over-confident (too little spread), above 1 under-confident.

    For an ensemble of ``M`` members the spread is ``σ² = (1 + 1/M) s²`` (``s²`` the unbiased
    member variance; Fortin et al. 2014), so that a finite ensemble of a calibrated
    distribution scores 1 in expectation. Per lead time (axis 1) with ``by_step``."""
    truth, pred = _check(truth, pred)
    g = as_gaussian(pred)
    var = np.asarray(g.std, np.float64) ** 2
    err = (np.asarray(g.mean, np.float64) - truth) ** 2
    spread, skill = _reduce(var, by_step), _reduce(err, by_step)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(spread) / np.sqrt(skill) if by_step else math.sqrt(spread / skill)


def reliability(
    truth: ArrayLike, pred: Prediction, levels: ArrayLike | None = None
) -> dict[str, list[float]]:
    """The data of a reliability diagram: for each nominal level of a central interval
    (default 0.05, 0.10, …, 0.95) the observed coverage `picp`. A calibrated prediction lies
    on the diagonal; below it is over-confident.

    **Returns:** ``{"nominal": [...], "observed": [...]}``, plain floats (JSON-ready)."""
    levels = np.linspace(0.05, 0.95, 19) if levels is None else np.asarray(levels, dtype=float)
    truth, pred = _check(truth, pred)
    observed = [picp(truth, pred, float(p)) for p in levels]
    return {"nominal": [float(p) for p in levels], "observed": [float(o) for o in observed]}


def calibration(
    truth: ArrayLike, pred: Prediction, *, by_step: bool = False
) -> dict[str, float | list[float]]:
    """All calibration metrics of ``pred`` against ``truth``, under the keys of the ``uq``
    block of ``results.json`` (`CALIBRATION_KEYS`): ``picp_50``, ``picp_90``, ``picp_95``
    (`picp`), ``mpiw_90`` (`mpiw`), ``crps``, ``nll`` and ``spread_skill``.

    **Returns:** a dict of floats, or with ``by_step`` of lists (one value per lead time,
    axis 1 of ``truth``); non-finite values become ``None`` (JSON null)."""
    truth, pred = _check(truth, pred)
    out: dict = {}
    for level in LEVELS:
        out[f"picp_{round(100 * level)}"] = picp(truth, pred, level, by_step=by_step)
    out["mpiw_90"] = mpiw(pred, 0.9, by_step=by_step)
    out["crps"] = crps(truth, pred, by_step=by_step)
    out["nll"] = nll(truth, pred, by_step=by_step)
    out["spread_skill"] = spread_skill(truth, pred, by_step=by_step)

    def clean(v):
        if by_step:
            return [float(x) if np.isfinite(x) else None for x in np.asarray(v)]
        return float(v) if np.isfinite(v) else None

    return {k: clean(out[k]) for k in CALIBRATION_KEYS}
