"""Recalibration of an ensemble forecast's spread on held-out data, in the form of
ensemble model output statistics (EMOS; Gneiting et al. 2005): per lead time, the predictive
variance ``c² [(1 − r) S² + r S̄²]`` — the ensemble's own variance ``S²`` at the point and
its typical variance ``S̄²`` for that component — with ``c`` and ``r`` chosen so that the
validation forecasts have spread–skill 1 and nominal coverage, after per-component factors
(shrunk towards none by empirical Bayes) where the state mixes quantities the ensemble
sizes differently."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike

from ..metrics import EnsemblePrediction, GaussianPrediction, moments, picp

_MIX = np.linspace(0.0, 1.0, 11)  # the weights r of the floor tried at every lead time


class SpreadScale(NamedTuple):
    """A recalibration of an ensemble forecast, fitted by `fit_spread_scale` on validation
    forecasts and applied to test forecasts by `apply`: each draw becomes

    ``x̄ + c_l (√(1 − r_l) b_j (x_i − x̄) + √r_l ρ_l S̄_lj ε_i)``,  ``ε_i ~ N(0, 1)``,

    so the predictive variance at lead ``l``, component ``j`` is
    ``c_l² [(1 − r_l) b_j² S² + r_l ρ_l² S̄_lj²]``. ``S̄_lj`` is the root-mean-square of
    ``b_j S`` for that component at that lead on the validation windows (a floor under the
    point's own spread ``S``, which a small ensemble can put in the wrong places); ``r_l =
    0`` is a pure rescaling. With ``adaptive`` (the default of `fit_spread_scale`), ``ρ_l``
    is the forecast's own spread level against the validation windows' — the
    root-mean-square of ``b_j S`` over its components at that lead, divided by that of
    ``S̄_l`` — so the floor keeps the typical pattern over components but grows and shrinks
    with what the members say about this forecast (wider where they disagree more, e.g.
    out of domain); ``ρ_l = 1`` without.

    The mean forecast is unchanged, so are its errors; only the spread (and with it every
    interval, the CRPS and the spread–skill ratio) changes. Lead times past the fitted ones
    keep the last fitted values; a state of another shape (another grid) gets no component
    factors and a floor pooled over components."""

    lead: np.ndarray  # c_l, (time,): lead 0 (the known initial state) is 1
    mix: np.ndarray  # r_l, (time,)
    floor: np.ndarray  # S̄_lj, (time, *state)
    component: np.ndarray  # b_j, (*state): ones where the state is pooled
    adaptive: bool = False  # ρ_l: the floor scaled to each forecast's own spread level

    def _leads(self, time: int) -> np.ndarray:
        return np.minimum(np.arange(time), len(self.lead) - 1)

    def factor(self, time: int, state_shape: tuple[int, ...]) -> np.ndarray:
        """The factors ``c_l b_j`` on the deviations, ``(time, *state_shape)``, for
        ``r = 0``."""
        lead = np.asarray(self.lead, np.float64)[self._leads(time)]
        return lead.reshape(time, *(1,) * len(state_shape)) * self._component(state_shape)

    def _component(self, state_shape) -> np.ndarray:
        comp = np.asarray(self.component, np.float64)
        return comp if comp.shape == tuple(state_shape) else np.ones(())

    def _floor(self, time: int, state_shape) -> np.ndarray:
        floor = np.asarray(self.floor, np.float64)[self._leads(time)]
        if floor.shape[1:] != tuple(state_shape):  # another grid: the pooled floor
            axes = tuple(range(1, floor.ndim))
            floor = np.sqrt(np.mean(floor**2, axis=axes))
            floor = floor.reshape(time, *(1,) * len(state_shape))
        return floor

    def apply(self, pred: EnsemblePrediction, seed: int = 0) -> EnsemblePrediction:
        """``pred`` recalibrated; samples ``(members, batch, time, *state)``. The floor's
        draws ``ε`` come from ``numpy.random.default_rng(seed)``."""
        x = np.asarray(pred.samples, np.float64)
        if x.ndim < 3:
            raise ValueError(
                f"SpreadScale.apply needs samples (members, batch, time, *state), got shape "
                f"{x.shape}."
            )
        time, state = x.shape[2], x.shape[3:]
        shape = (time, *(1,) * len(state))
        idx = self._leads(time)
        c = np.asarray(self.lead, np.float64)[idx].reshape(shape)
        r = np.asarray(self.mix, np.float64)[idx].reshape(shape)
        mean = x.mean(axis=0, keepdims=True)
        out = mean + c * self._component(state) * np.sqrt(1 - r) * (x - mean)
        if np.any(r > 0):
            eps = np.random.default_rng(seed).standard_normal(x.shape)
            floor = self._floor(time, state)
            if self.adaptive:
                _, var = moments(EnsemblePrediction(x))
                var = np.asarray(var, np.float64) * self._component(state) ** 2
                floor = floor * _level(var, floor**2, len(state))
            out = out + c * np.sqrt(r) * floor * eps
        return EnsemblePrediction(out.astype(np.asarray(pred.samples).dtype))


def _level(var: np.ndarray, typical2: np.ndarray, state_ndim: int) -> np.ndarray:
    """``ρ``: each forecast's spread level over its components against the typical one,
    ``√(mean_j var / mean_j S̄²)`` per forecast and lead, shaped to broadcast against
    ``(batch, time, *state)``; 1 where there is no typical spread."""
    axes = tuple(range(var.ndim - state_ndim, var.ndim))
    num = np.mean(var, axis=axes)  # (batch, time)
    den = np.mean(np.broadcast_to(typical2, var.shape[1:]), axis=tuple(range(1, var.ndim - 1)))
    rho = np.where(den > 0, np.sqrt(num / np.where(den > 0, den, 1.0)), 1.0)
    return rho.reshape(*rho.shape, *(1,) * state_ndim)


def _trigamma(x: float) -> float:
    """ψ'(x), the variance of ``log Gamma(x, 1)``: by the recurrence ψ'(x) = ψ'(x + 1) +
    1/x² up to x ≥ 6, then the asymptotic series (error below 1e-8)."""
    out = 0.0
    while x < 6.0:
        out += 1.0 / (x * x)
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    return out + inv + inv2 / 2 + inv * inv2 * (1 / 6 - inv2 * (1 / 30 - inv2 / 42))


def _component_factors(miss, var, lead_q, independent: int, groups=None, noise2=0.0):
    """Per-component factors from the ratios of squared error to predictive variance
    (pooled over windows and lead times after the per-lead level ``lead_q``), shrunk towards
    their mean on the log scale by empirical Bayes: the sampling variance of a log ratio
    of ``n`` squared Gaussian errors is ψ'(n/2) (``≈ 2/n`` for large ``n``; 4.93 for one),
    the spread of the true log ratios is what the observed spread exceeds it by.
    ``n`` counts the independent errors behind one ratio: ``independent`` windows times the
    ``L`` lead times, discounted for the lag-1 correlation ρ of the standardised errors
    along the lead time, ``n = independent · L (1 − ρ)/(1 + ρ)`` (at least ``independent``).
    With ``groups`` (an integer label per component: the quantity it is), each component is
    shrunk towards its group's mean instead, and the groups keep their own levels (each
    pooled over all its components, not shrunk).

    ``noise2``: the measurement noise variance of each component, taken off its squared
    errors.

    Returns the factors and ``{group: factor}``, the factor of a component of that group
    not among these (unmeasured; ``None``: the mean level, factor 1)."""
    leads = var.shape[1]
    err2 = miss**2
    scaled = var * lead_q.reshape(1, -1, *(1,) * (var.ndim - 2))
    num = np.maximum(err2.sum(axis=(0, 1)) - np.size(err2[..., 0]) * noise2, 0.0)
    den = scaled.sum(axis=(0, 1))
    ok = (num > 0) & (den > 0)
    if ok.sum() < 2:
        return np.ones(err2.shape[2:]), {}
    z = np.where(scaled > 0, miss / np.sqrt(np.where(scaled > 0, scaled, 1.0)), 0.0)
    rho = float(np.sum(z[:, 1:] * z[:, :-1]) / max(np.sum(z[:, :-1] ** 2), 1e-300))
    rho = min(max(rho, 0.0), 1.0)
    b = max(int(independent), 1)
    n = min(max(b * leads * (1 - rho) / (1 + rho), b), b * leads)
    x = np.zeros_like(num)
    x[ok] = np.log(num[ok] / den[ok])
    centre = x[ok].mean()
    level = np.full_like(x, centre)  # what each component is shrunk towards
    by_group = {}
    if groups is not None:
        for g in np.unique(groups):
            members = (groups == g) & ok
            if members.any():
                level[groups == g] = np.log(num[members].sum() / den[members].sum())
                by_group[g.item()] = float(np.exp(0.5 * (level[members][0] - centre)))
    noise = _trigamma(n / 2)
    signal = max(float(np.mean((x[ok] - level[ok]) ** 2)) - noise, 0.0)
    weight = signal / (signal + noise)
    factors = np.where(ok, np.exp(0.5 * (level - centre) + 0.5 * weight * (x - level)), 1.0)
    return factors, by_group


def fit_spread_scale(
    truth: ArrayLike,
    pred: EnsemblePrediction,
    *,
    per_component: bool = True,
    floor: bool = True,
    level: float = 0.9,
    independent: int | None = None,
    groups: ArrayLike | None = None,
    observed: ArrayLike | None = None,
    noise: ArrayLike | None = None,
    bounds: tuple[float, float] = (1 / 16, 16),
    adaptive: bool = True,
) -> SpreadScale:
    """Fit a `SpreadScale` on validation forecasts, so that on them the forecast has the
    two properties a calibrated one has: its spread matches its error (spread–skill 1 at
    every lead time) and its central ``level`` interval covers ``level`` of the truth.
    Spreads are those of the moment-matched Gaussian (`scilayers.metrics.as_gaussian`, the
    same for any number of members).

    1. Per component (``per_component``): factors ``b_j`` that make each component's
       squared error and predictive variance agree over the windows and lead times, shrunk
       to 1 unless the components differ by more than the windows' sampling noise.
    2. Per lead time, for each weight ``r`` of 0, 0.1, …, 1 of the floor in the variance
       ``c² [(1 − r) S² + r S̄²]`` (``S̄`` the component's typical spread at that lead),
       the ``c`` of spread–skill 1; of those, the ``r`` whose ``level`` coverage is
       nearest ``level`` (the least ``r`` on ties; ``r = 0`` is a pure rescaling).

    Why the floor: a small ensemble's spread varies from point to point more than its
    errors do, and the points it is sure about are not the ones it gets right. Then no
    rescaling serves both properties — matching the RMSE under-covers, covering is too
    wide — while a share of the typical spread under every point can. With
    ``floor=False`` only ``c`` is fitted.

    **Arguments:**

    - `truth`: ``(batch, time, *state)``, the validation windows (lead 0 is their start).
    - `pred`: their ensemble forecast, samples ``(members, batch, time, *state)``,
      ``members >= 2``.
    - `per_component`: fit component factors (default true).
    - `floor`: fit the floor's weight (default true).
    - `level`: the interval whose coverage chooses the floor's weight (default 0.9).
    - `independent`: how many of the windows are independent, for the component factors'
      shrinkage (default: all of them; pass the number of trajectories when several
      windows are cut from each).
    - `groups`: an integer label per state component, ``state``-shaped, naming the
      quantity it is (e.g. 0 for pressures, 1 for flows): each group keeps its own factor,
      fitted on all its components, and components are shrunk towards their group's
      (default: one group).
    - `observed`: flat indices of the components whose truth is measured (default: all).
      Only those are compared with the truth; an unmeasured component gets its group's
      factor (1 without `groups`) and the floor of its own typical spread, which needs no
      truth.
    - `noise`: the standard deviation of the measurement noise in `truth` (a number, or
      one per state component; default none). The forecast is of the noise-free state,
      so it is fitted as the predictive distribution of a measurement (forecast plus
      noise) and the noise taken off again: squared errors less ``noise²`` set the
      factors, and the coverage is that of the forecast widened by the noise.
    - `bounds`: the range of each factor (default ``1/16 … 16``).
    - `adaptive`: scale the floor to each forecast's own spread level (`SpreadScale`'s
      ``ρ``; default true), in the fit as in `SpreadScale.apply`. Without it the floor is
      the same for every forecast, so a shift that makes the members disagree more (out of
      domain) widens only the ``1 − r`` share of the spread.

    **Returns:** a `SpreadScale`.
    """
    y = np.asarray(truth, np.float64)
    x = np.asarray(pred.samples, np.float64)
    if x.ndim < 3 or x.shape[1:] != y.shape:
        raise ValueError(
            f"fit_spread_scale: samples {x.shape} must be (members, *truth.shape) with truth "
            f"(batch, time, *state) = {y.shape}."
        )
    if x.shape[0] < 2:
        raise ValueError(f"fit_spread_scale needs at least 2 members, got {x.shape[0]}.")
    mean, var = (np.asarray(v, np.float64) for v in moments(EnsemblePrediction(x)))
    batch, time, state = y.shape[0], y.shape[1], y.shape[2:]
    size = int(np.prod(state))
    # components flat; the truth is read only where it was measured
    y, mean, var = (a.reshape(batch, time, size) for a in (y, mean, var))
    obs = np.arange(size) if observed is None else np.asarray(observed, dtype=int).reshape(-1)
    if obs.size == 0 or obs.min() < 0 or obs.max() >= size:
        raise ValueError(
            f"fit_spread_scale: observed must index the {size} state components, got "
            f"{observed!r}."
        )
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != tuple(state):
            raise ValueError(
                f"fit_spread_scale: groups of shape {groups.shape} must label every state "
                f"component, shape {tuple(state)}."
            )
        groups = groups.reshape(size)
    miss = y[:, :, obs] - mean[:, :, obs]
    sd = np.broadcast_to(np.asarray(0.0 if noise is None else noise, np.float64), state)
    n2 = sd.reshape(size)[obs] ** 2  # the noise variance of each measured component
    comp = np.ones(size)
    if per_component and size > 1 and time > 1:
        lead_q = np.ones(time)
        for k in range(1, time):
            v = var[:, k, obs].sum()
            lead_q[k] = max((miss[:, k] ** 2 - n2).sum(), 0.0) / v if v > 0 else 1.0
        b = batch if independent is None else independent
        labels = None if groups is None else groups[obs]
        comp[obs], by_group = _component_factors(miss[:, 1:], var[:, 1:, obs], lead_q[1:], b,
                                                 labels, n2)  # fmt: skip
        if obs.size < size:  # unmeasured components: their quantity's factor
            rest = np.setdiff1d(np.arange(size), obs)
            comp[rest] = [1.0 if groups is None else by_group.get(groups[j].item(), 1.0)
                          for j in rest]  # fmt: skip
    var = var * comp**2
    typical = np.sqrt(var.mean(axis=0))  # S̄ per lead and component, (time, components)
    # ρ² per window and lead (1 without `adaptive`): the floor each window gets
    rho2 = _level(var, typical**2, 1)[..., 0] ** 2 if adaptive else np.ones((batch, time))
    lead, mix = np.ones(time), np.zeros(time)
    lo, hi = bounds
    for k in range(1, time):
        if not np.any(var[:, k, obs]):
            continue  # no spread to scale (e.g. the members agree exactly)
        m = miss[:, k]
        best = None
        for r in _MIX if floor else _MIX[:1]:
            base = (1 - r) * var[:, k, obs] + r * rho2[:, k, None] * typical[k, obs] ** 2
            skill2 = max(float(np.mean(m**2 - n2)), 1e-300)  # the noise-free error
            c = float(np.clip(np.sqrt(skill2 / np.mean(base)), lo, hi))
            scale = np.sqrt(c**2 * base + n2)  # a measurement's predictive spread
            cover = picp(m, GaussianPrediction(np.zeros_like(m), scale), level)
            gap = abs(cover - level)
            if best is None or gap < best[0] - 1e-12:  # ties: the least floor
                best = (gap, c, r)
        lead[k], mix[k] = best[1], best[2]
    typical, comp = typical.reshape(time, *state), comp.reshape(state)
    return SpreadScale(lead, mix, typical, comp, adaptive)
