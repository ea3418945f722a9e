"""Propagation of uncertainty over rollouts: ensemble rollouts with a temporally correlated
model-error process (AR(1)), and unscented (sigma-point) propagation of state, θ_s and
model-error uncertainty through the solver."""

from __future__ import annotations

import time
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray, PyTree

from ..metrics import EnsemblePrediction, GaussianPrediction, calibration
from ..solvers import rollout, takes_time
from ._ensemble import _batched
from ._hetero import Heteroscedastic, variance_split
from ._members import count_members, member_at, theta_gaussian, theta_vector

# ------------------------------------------------------------------------------ AR(1)


class AR1(eqx.Module):
    r"""A first-order autoregressive model-error process, per point of the state,

    $$e_{k+1} = μ + φ\,(e_k - μ) + σ\,η_k,\qquad η_k \sim \mathcal N(0, 1),$$

    stationary with mean ``μ`` and variance ``σ² / (1 - φ²)`` for ``|φ| < 1``. Added to a
    step, ``u_{k+1} = Φ(u_k) + e_{k+1}``, it is model error correlated in time with
    correlation ``φ^lag`` (``φ = 0``: white noise). `fit_ar1` estimates it from one-step
    residuals.

    **Arguments:** `phi` (``φ``), `sigma` (innovation standard deviation ``σ``, >= 0) and
    `mean` (``μ``, default 0): scalars, or arrays of the state's shape (one process per
    component).
    """

    phi: Array
    sigma: Array
    mean: Array

    def __init__(self, phi: ArrayLike, sigma: ArrayLike, mean: ArrayLike = 0.0):
        dtype = jnp.result_type(float)
        self.phi = jnp.asarray(phi, dtype)
        self.sigma = jnp.asarray(sigma, dtype)
        self.mean = jnp.asarray(mean, dtype)

    def __check_init__(self):
        concrete = not any(isinstance(x, jax.core.Tracer) for x in (self.phi, self.sigma))
        if concrete and not np.all(np.abs(np.asarray(self.phi)) < 1):
            raise ValueError(
                f"AR1 needs |phi| < 1 (a stationary process), got phi={np.asarray(self.phi)}; "
                f"residuals with phi >= 1 are not stationary: detrend them or model the drift."
            )
        if concrete and not np.all(np.asarray(self.sigma) >= 0):
            raise ValueError(f"AR1 needs sigma >= 0, got {np.asarray(self.sigma)}.")

    @property
    def stationary_std(self) -> Array:
        """The standard deviation of the stationary process, ``σ / sqrt(1 - φ²)``."""
        return self.sigma / jnp.sqrt(1 - self.phi**2)

    def initial(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        """A draw of ``e_0`` from the stationary distribution."""
        z = jax.random.normal(key, shape, dtype=jnp.result_type(float))
        return self.mean + self.stationary_std * z

    def step(self, e: Array, noise: Array) -> Array:
        """``e_{k+1}`` from ``e_k`` and a standard normal ``noise``."""
        return self.mean + self.phi * (e - self.mean) + self.sigma * noise


def one_step_residuals(model, data, t0=None) -> Array:
    """The one-step residuals ``r_k = u_{k+1} - Φ(u_k, t_k)`` of a step on trajectories
    ``data`` (shape ``(trajectories, time, *state)``; trajectory ``b`` starts at ``t0[b]``,
    default 0): shape ``(trajectories, time - 1, *state)``. A `Heteroscedastic` step gives
    the residuals of its mean. What `fit_ar1` fits."""
    data = jnp.asarray(data)
    if data.ndim < 3 or data.shape[1] < 2:
        raise ValueError(
            f"data must have shape (trajectories, time >= 2, *state), got {data.shape}."
        )
    timed = takes_time(model)
    lags = model.dt * jnp.arange(data.shape[1] - 1, dtype=jnp.result_type(float)) if timed else 0
    start = jnp.zeros(data.shape[0]) if t0 is None else jnp.broadcast_to(t0, data.shape[:1])

    def per_traj(traj, s):
        u = traj[:-1]
        if timed:
            pred = jax.vmap(model)(u, s + lags)
        else:
            pred = jax.vmap(model)(u)
        return traj[1:] - pred

    return eqx.filter_jit(jax.vmap(per_traj))(data, start)


def fit_ar1(
    residuals, *, per_component: bool = False, demean: bool = True, max_phi: float | None = None
) -> AR1:
    r"""Fit an `AR1` model-error process to one-step residuals (`one_step_residuals`) by
    conditional least squares (the conditional maximum likelihood):

    $$\hat φ = \frac{\sum_k (r_k - \hat μ)(r_{k+1} - \hat μ)}{\sum_k (r_k - \hat μ)^2},\qquad
    \hat σ^2 = \overline{\left(r_{k+1} - \hat μ - \hat φ (r_k - \hat μ)\right)^2}.$$

    **Arguments:**

    - `residuals`: shape ``(trajectories, time, *state)`` (time >= 3); several members'
      residuals are pooled by stacking them as more trajectories.
    - `per_component`: one process per state component (``phi``, ``sigma``, ``mean`` of
      the state's shape) instead of one pooled over all components (default, for
      homogeneous fields such as KS or Lorenz-96).
    - `demean`: estimate the mean ``μ`` (the model's bias); ``False`` fixes ``μ = 0``.
    - `max_phi`: clip ``|φ̂|`` to this value (< 1) before estimating ``σ``, so that a
      component whose residuals drift (``φ̂ ≥ 1``, e.g. from a short record) still gives a
      stationary process; default ``None``: such residuals are an error.
    """
    if max_phi is not None and not 0 <= max_phi < 1:
        raise ValueError(f"max_phi must lie in [0, 1), got {max_phi}.")
    r = np.asarray(residuals, dtype=np.float64)
    if r.ndim < 3 or r.shape[1] < 3:
        raise ValueError(
            f"residuals must have shape (trajectories, time >= 3, *state), got {r.shape}; "
            f"pool the residuals of several members as r.reshape(-1, *r.shape[2:])."
        )
    state_shape = r.shape[2:]
    series = r.reshape(r.shape[0], r.shape[1], -1)  # (series, time, components)
    axes = (0, 1) if per_component else (0, 1, 2)
    mu = series.mean(axis=axes, keepdims=True)
    if not demean:
        mu = np.zeros_like(mu)
    x, y = series[:, :-1] - mu, series[:, 1:] - mu
    den = np.sum(x * x, axis=axes, keepdims=True)
    if np.any(den <= 0):
        raise ValueError("residuals are constant; there is no model error to fit.")
    phi = np.sum(x * y, axis=axes, keepdims=True) / den
    if max_phi is not None:
        phi = np.clip(phi, -max_phi, max_phi)
    sigma = np.sqrt(np.mean((y - phi * x) ** 2, axis=axes, keepdims=True))
    if per_component:
        return AR1(phi.reshape(state_shape), sigma.reshape(state_shape), mu.reshape(state_shape))
    return AR1(phi.item(), sigma.item(), mu.item())


# ---------------------------------------------------------------- ensemble forecasting


class Forecast(NamedTuple):
    """Sampled rollouts of an ensemble: ``samples`` of shape ``(members, samples, [batch,]
    time, *state)``."""

    samples: Array

    def prediction(self) -> EnsemblePrediction:
        """All rollouts as one `EnsemblePrediction` (members × samples on axis 0)."""
        s = jnp.asarray(self.samples)
        return EnsemblePrediction(s.reshape(-1, *s.shape[2:]))

    def variance_split(self) -> dict[str, np.ndarray]:
        """The law of total variance over members: ``aleatoric`` (the mean within-member
        variance of the sampled noise, propagated), ``epistemic`` (the variance of the
        member means), ``total``, and the ``mean`` (`variance_split`)."""
        s = np.asarray(self.samples, dtype=np.float64)
        within = s.var(axis=1) if s.shape[1] > 1 else np.zeros_like(s[:, 0])
        return variance_split(s.mean(axis=1), within)


def _sample_path(model, u0, n: int, t0, key, error: AR1 | None, aleatoric: bool):
    """One sampled trajectory ``u_{k+1} = Φ(u_k) [+ σ(u_k) ε_k] [+ e_{k+1}]``."""
    timed = takes_time(model)
    prepare = getattr(model, "prepare", None)
    if prepare is not None:  # θ_s-dependent coefficients once per trajectory (ETDRK4)
        model = prepare()
    dtype = jnp.result_type(float)
    ke, ka, k0 = jax.random.split(key, 3)
    shape = jnp.shape(u0)
    eta_e = jax.random.normal(ke, (max(n, 1), *shape), dtype)
    eta_a = jax.random.normal(ka, (max(n, 1), *shape), dtype)
    start = jnp.zeros((), dtype) if t0 is None else jnp.asarray(t0, dtype)
    e0 = jnp.zeros(shape, dtype) if error is None else error.initial(k0, shape)

    def body(carry):
        u, e, k = carry
        t = start + k * model.dt if timed else None
        nxt = model(u, t) if timed else model(u)
        if aleatoric:
            nxt = nxt + jnp.exp(0.5 * model.log_variance(u)) * eta_a[k]
        if error is not None:
            e = error.step(e, eta_e[k])
            nxt = nxt + e
        return nxt, e, k + 1

    carry0 = (jnp.asarray(u0, dtype), e0, jnp.zeros((), jnp.int32))
    return rollout(body, carry0, n, check_finite=False)[0]


def ensemble_forecast(
    members: PyTree,
    u0,
    n: int,
    key: PRNGKeyArray,
    *,
    t0=None,
    samples: int = 1,
    error: AR1 | None = None,
    aleatoric: bool | None = None,
) -> Forecast:
    """Sampled rollouts of every member of a stacked ensemble: the predictive distribution
    at every lead time, with model error correlated in time.

    Each of the ``samples`` rollouts of a member follows ``u_{k+1} = Φ(u_k, t_k) + e_{k+1}``
    with ``e`` an `AR1` process (`error`; ``e_0`` drawn from its stationary distribution),
    plus, for `Heteroscedastic` members, the head's noise ``σ(u_k) ε_k`` (white). One
    compiled program over members, samples and initial states (``vmap`` of ``rollout``).

    **Arguments:**

    - `members`: a stacked ensemble (`train_ensemble`); for a single model use
      ``stack_members([model])``.
    - `u0`: one initial state or a batch ``(batch, *state)``; `n`: number of steps;
      `t0`: time of ``u0`` (a number, or one per batch entry).
    - `key`: PRNG key of the noise; `samples`: rollouts per member (default 1).
    - `error`: the model-error process (default ``None``: none).
    - `aleatoric`: sample a `Heteroscedastic` member's own noise (default: whenever the
      members are `Heteroscedastic`).

    **Returns:** a `Forecast`: ``samples`` of shape ``(members, samples, [batch,] n + 1,
    *state)``; ``.prediction()`` for the metrics, ``.variance_split()`` for the
    aleatoric/epistemic split.
    """
    m = count_members(members)
    if not (isinstance(samples, int | np.integer) and samples >= 1):
        raise ValueError(f"samples must be a positive integer, got {samples!r}.")
    hetero = isinstance(members, Heteroscedastic)
    aleatoric = hetero if aleatoric is None else bool(aleatoric)
    if aleatoric and not hetero:
        raise ValueError(
            "aleatoric=True samples the noise of a variance head; the members are not "
            "sl.uq.Heteroscedastic (pass error=AR1(...) for model error instead)."
        )
    if error is None and not aleatoric and samples > 1:
        raise ValueError(
            f"samples={samples} rollouts of a deterministic member are all the same; pass "
            f"error=AR1(...) (or Heteroscedastic members) or samples=1."
        )
    batched = _batched(members, u0)
    keys = jax.random.split(key, m * samples).reshape(m, samples)
    t0 = None if t0 is None else jnp.asarray(t0, jnp.result_type(float))
    out = _forecast_all(members, jnp.asarray(u0), t0, keys, error, int(n), aleatoric, batched)
    return Forecast(out)


@eqx.filter_jit
def _forecast_all(members, u0, t0, keys, error, n: int, aleatoric: bool, batched: bool):
    def per_member(model, mkeys):
        def per_sample(k):
            if not batched:
                return _sample_path(model, u0, n, t0, k, error, aleatoric)
            bkeys = jax.random.split(k, u0.shape[0])
            if t0 is None:
                return jax.vmap(lambda u, kk: _sample_path(model, u, n, None, kk, error,
                                                           aleatoric))(u0, bkeys)  # fmt: skip
            ts = jnp.broadcast_to(t0, u0.shape[:1])
            return jax.vmap(lambda u, s, kk: _sample_path(model, u, n, s, kk, error,
                                                          aleatoric))(u0, ts, bkeys)  # fmt: skip

        return jax.vmap(per_sample)(mkeys)

    return eqx.filter_vmap(per_member)(members, keys)


# ------------------------------------------------------------------- unscented transform


class Unscented(NamedTuple):
    """What `unscented_rollout` returns: ``mean`` of shape ``(n + 1, *state)`` and ``cov``
    of the flattened state, shape ``(n + 1, d, d)``."""

    mean: Array
    cov: Array

    def prediction(self) -> GaussianPrediction:
        """The marginal Gaussian of every point (``std = sqrt(diag cov)``)."""
        var = jnp.clip(jnp.diagonal(self.cov, axis1=-2, axis2=-1), 0.0, None)
        return GaussianPrediction(self.mean, jnp.sqrt(var).reshape(self.mean.shape))


def _weights(dim: int, alpha: float, beta: float, kappa: float):
    lam = alpha**2 * (dim + kappa) - dim
    c = dim + lam
    if not c > 0:
        raise ValueError(
            f"unscented scaling gives dim + lambda = {c} <= 0 (dim={dim}, alpha={alpha}, "
            f"kappa={kappa}); raise kappa or alpha."
        )
    wm = jnp.full(2 * dim + 1, 0.5 / c).at[0].set(lam / c)
    wc = wm.at[0].add(1 - alpha**2 + beta)
    return wm, wc, c


def _sigma_points(mean: Array, cov: Array, c: float) -> Array:
    """``2d + 1`` points ``m, m ± sqrt(c P)`` columns (symmetric square root, so a
    singular ``P`` is fine)."""
    w, v = jnp.linalg.eigh(0.5 * (cov + cov.T))
    root = v * jnp.sqrt(jnp.clip(w, 0.0, None) * c)[None, :]
    return jnp.concatenate([mean[None], mean[None] + root.T, mean[None] - root.T])


def _moments(points: Array, wm: Array, wc: Array) -> tuple[Array, Array]:
    mean = wm @ points
    dev = points - mean[None]
    return mean, (dev * wc[:, None]).T @ dev


def unscented_rollout(
    model: PyTree,
    mean0: ArrayLike,
    cov0: ArrayLike | None,
    n: int,
    *,
    t0=None,
    theta_cov: ArrayLike | None = None,
    error: AR1 | None = None,
    resample: bool = True,
    alpha: float = 1.0,
    beta: float = 2.0,
    kappa: float = 0.0,
) -> Unscented:
    r"""Propagate Gaussian uncertainty of the initial state, of θ_s and of an `AR1` model
    error through ``n`` steps of ``model`` with the unscented transform (Julier & Uhlmann
    2004; scaled sigma points of Wan & van der Merwe 2000).

    The uncertain vector is ``x = [u, e, θ]``: the flattened state, the model error (with
    `error`) and the unconstrained θ_s (`theta_vector`; with `theta_cov`). With
    ``resample=True`` (default) each step draws ``2L + 1`` sigma points from the current
    mean and covariance, moves them with ``u' = Φ_θ(u, t) + e'``, ``e' = μ + φ (e - μ)``,
    ``θ' = θ``, and adds the AR(1) innovation variance ``σ²`` to the ``(u, e)`` blocks (the
    prediction step of an unscented Kalman filter): ``(2L + 1)·n`` solver steps. With
    ``resample=False`` the sigma points of ``[u_0, θ]`` are rolled out whole (``2L + 1``
    rollouts), which allows no model error. Either way the mean is exact for a map that is
    a polynomial of degree up to three in the uncertain inputs, and mean and covariance are
    accurate to second order otherwise (exact for a linear map): cheap, but it degrades as
    the rollout becomes strongly nonlinear in θ_s or the state (long chaotic horizons),
    where `ensemble_forecast` is the reference.

    **Arguments:**

    - `model`: the step (one model, e.g. a trained member or `Hybrid`).
    - `mean0`: the mean initial state; `cov0`: its covariance, shape ``(d, d)`` for the
      flattened state of ``d`` points (``None``: known exactly).
    - `n`: steps; `t0`: time of the initial state (default 0).
    - `theta_cov`: covariance of the unconstrained θ_s vector (`theta_vector`), e.g. from
      `theta_gaussian` of an ensemble or `Posterior.theta_gaussian`; its mean is the
      model's current θ_s (``None``: θ_s known).
    - `error`: an `AR1` model error (only with ``resample=True``).
    - `resample`, `alpha`, `beta`, `kappa`: the scheme and the sigma-point scaling.

    **Returns:** `Unscented` with ``mean`` ``(n + 1, *state)`` and ``cov`` ``(n + 1, d, d)``.
    """
    dtype = jnp.result_type(float)
    mean0 = jnp.asarray(mean0, dtype)
    shape = tuple(mean0.shape)
    want = tuple(getattr(model, "state_shape", shape))
    if shape != want:
        raise ValueError(
            f"mean0 must be one state of shape {want}, got {shape}; for a batch use jax.vmap "
            f"(and for an ensemble pass one member, sl.uq.member(models, i), with the "
            f"ensemble's θ_s spread as theta_cov=sl.uq.theta_gaussian(models)[1])."
        )
    d = int(np.prod(shape))
    cov0 = jnp.zeros((d, d), dtype) if cov0 is None else jnp.asarray(cov0, dtype)
    if cov0.shape != (d, d):
        raise ValueError(
            f"cov0 must be the covariance of the flattened state, shape ({d}, {d}), got "
            f"{cov0.shape}; for independent points pass jnp.diag(std**2)."
        )
    p = theta_vector(model)[0].size
    if theta_cov is not None:
        theta_cov = jnp.atleast_2d(jnp.asarray(theta_cov, dtype))
        if theta_cov.shape != (p, p):
            raise ValueError(
                f"theta_cov must be ({p}, {p}) for the {p} unconstrained θ_s entries of the "
                f"model (sl.uq.theta_vector), got {theta_cov.shape}."
            )
    if error is not None and not resample:
        raise ValueError("an AR(1) model error needs resample=True (noise enters at every step).")
    if not (isinstance(n, int | np.integer) and n >= 0):
        raise ValueError(f"n must be a non-negative integer, got {n!r}.")
    dim = d + (d if error is not None else 0) + (p if theta_cov is not None else 0)
    weights = _weights(dim, alpha, beta, kappa)
    start = jnp.zeros((), dtype) if t0 is None else jnp.asarray(t0, dtype)
    mean, cov = _unscented(model, mean0, cov0, start, theta_cov, error, weights, int(n),
                           bool(resample))  # fmt: skip
    return Unscented(mean.reshape(n + 1, *shape), cov)


@eqx.filter_jit
def _unscented(model, mean0, cov0, start, theta_cov, error, weights, n: int, resample: bool):
    wm, wc, c = weights
    dtype = mean0.dtype
    shape = mean0.shape
    d = mean0.size
    theta, rebuild = theta_vector(model)
    p = 0 if theta_cov is None else theta.size
    q = 0 if error is None else d
    dim = d + q + p
    timed = takes_time(model)

    def advance(x, k):
        u = x[:d].reshape(shape)
        m = model if p == 0 else rebuild(x[d + q :])
        nxt = (m(u, start + k * model.dt) if timed else m(u)).reshape(-1)
        parts = [nxt]
        if q:
            e = x[d : d + q]
            phi = jnp.broadcast_to(error.phi, shape).reshape(-1)
            mu = jnp.broadcast_to(error.mean, shape).reshape(-1)
            e_new = mu + phi * (e - mu)
            parts = [nxt + e_new, e_new]
        if p:
            parts.append(x[d + q :])
        return jnp.concatenate(parts)

    blocks, covs = [mean0.reshape(-1)], [cov0]
    noise = jnp.zeros((dim, dim), dtype)
    if q:
        blocks.append(jnp.broadcast_to(error.mean, shape).reshape(-1).astype(dtype))
        covs.append(jnp.diag(jnp.broadcast_to(error.stationary_std**2, shape).reshape(-1)))
        # the innovation σ η enters e' and u' = Φ(u) + e' alike
        s2 = jnp.diag(jnp.broadcast_to(error.sigma**2, shape).reshape(-1))
        noise = noise.at[: 2 * d, : 2 * d].set(jnp.block([[s2, s2], [s2, s2]]))
    if p:
        blocks.append(theta.astype(dtype))
        covs.append(theta_cov)
    x0 = jnp.concatenate(blocks)
    p0 = jax.scipy.linalg.block_diag(*covs)

    if resample:

        def body(carry):
            m, cov, k = carry
            moved = jax.vmap(lambda x: advance(x, k))(_sigma_points(m, cov, c))
            m2, c2 = _moments(moved, wm, wc)
            return m2, c2 + noise, k + 1

        traj = rollout(body, (x0, p0, jnp.zeros((), jnp.int32)), n, check_finite=False)
        return traj[0][:, :d], traj[1][:, :d, :d]

    def path(x):
        def body(carry):
            y, k = carry
            return advance(y, k), k + 1

        return rollout(body, (x, jnp.zeros((), jnp.int32)), n, check_finite=False)[0]

    paths = jax.vmap(path)(_sigma_points(x0, p0, c))  # (points, n + 1, dim)
    means, covs_ = jax.vmap(lambda s: _moments(s, wm, wc), in_axes=1)(paths)
    return means[:, :d], covs_[:, :d, :d]


# ------------------------------------------------------------------------ comparison


def compare_propagation(
    members: PyTree,
    u0,
    truth,
    key: PRNGKeyArray,
    *,
    t0=None,
    error: AR1 | None = None,
    samples: int = 8,
    cov0=None,
    unscented_member: int = 0,
    resample: bool = True,
) -> dict[str, dict]:
    """Compare ensemble rollouts with AR(1) model error (`ensemble_forecast`) and unscented
    propagation (`unscented_rollout`) on cost and calibration against ``truth``.

    The unscented transform runs on one member (`unscented_member`) with the ensemble's θ_s
    spread (`theta_gaussian`, when there are 2 or more members) and the same `error`;
    both start from ``u0`` (with covariance `cov0` for the unscented transform; the
    ensemble starts from ``u0`` exactly).

    **Arguments:**

    - `members`: a stacked ensemble; `u0`: initial states ``(batch, *state)``; `truth`:
      the true trajectories ``(batch, n + 1, *state)`` from ``u0``.
    - `key`: PRNG key of the ensemble's noise; `t0`: start times (default 0).
    - `error`: the model error (`fit_ar1`); `samples`: rollouts per member.
    - `cov0`, `unscented_member`, `resample`: as in `unscented_rollout`.

    **Returns:** ``{"ensemble": {...}, "unscented": {...}}``, each with ``seconds`` (wall
    time, compilation included; ``seconds_warm`` for a second call) and the calibration
    metrics (`scilayers.metrics.calibration`) over lead times ``1 … n``, plus
    ``"spread_skill_by_step"``.
    """
    truth = jnp.asarray(truth)
    u0 = jnp.asarray(u0)
    if truth.ndim < 3 or truth.shape[0] != u0.shape[0] or truth.shape[1] < 2:
        raise ValueError(
            f"truth must have shape (batch, n + 1 >= 2, *state) with the batch of u0 "
            f"{u0.shape}, got {truth.shape}."
        )
    n = truth.shape[1] - 1
    m = count_members(members)
    out = {}

    def timed(fn):
        t = time.perf_counter()
        res = jax.block_until_ready(fn())
        first = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(fn())
        return res, first, time.perf_counter() - t

    use_samples = samples if (error is not None or isinstance(members, Heteroscedastic)) else 1

    def run_ensemble():
        return ensemble_forecast(members, u0, n, key, t0=t0, samples=use_samples, error=error)

    fc, sec, warm = timed(lambda: run_ensemble().samples)
    ens = Forecast(fc).prediction()
    out["ensemble"] = _scores(truth, ens, sec, warm)

    one = member_at(members, unscented_member)
    theta_cov = None
    if m >= 2:  # the member's network, at the ensemble's mean θ_s with its spread
        mean_theta, theta_cov = theta_gaussian(members)
        one = theta_vector(one)[1](mean_theta)
    starts = jnp.zeros(u0.shape[0]) if t0 is None else jnp.broadcast_to(t0, u0.shape[:1])

    @eqx.filter_jit
    def all_ut(model, u0, starts):
        res = jax.vmap(lambda u, s: unscented_rollout(model, u, cov0, n, t0=s,
                                                      theta_cov=theta_cov, error=error,
                                                      resample=resample))(u0, starts)  # fmt: skip
        return res.prediction()

    def run_ut():
        return all_ut(one, u0, starts)

    ut, sec, warm = timed(run_ut)
    out["unscented"] = _scores(truth, ut, sec, warm)
    return out


def _scores(truth, pred, seconds: float, warm: float) -> dict:
    if isinstance(pred, EnsemblePrediction):
        p = EnsemblePrediction(jnp.asarray(pred.samples)[:, :, 1:])
    else:
        p = GaussianPrediction(jnp.asarray(pred.mean)[:, 1:], jnp.asarray(pred.std)[:, 1:])
    scores = calibration(truth[:, 1:], p)
    by = calibration(truth[:, 1:], p, by_step=True)
    return {"seconds": seconds, "seconds_warm": warm, **scores,
            "spread_skill_by_step": by["spread_skill"]}  # fmt: skip
