"""Bayesian posterior over θ_s: NumPyro NUTS with the differentiable solver inside the
likelihood, priors from the `Param`s."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from ..losses import predict_windows
from ..params import AbstractPrior, LogNormal, Normal, Param, is_param, named
from ._members import _sample_prior, draw_theta, stack_members, theta_names, theta_vector

INITS = ("prior", "model")


def _numpyro():
    try:
        import numpyro
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("posterior_theta needs NumPyro: pip install 'numpyro>=0.15'.") from e
    return numpyro


def _with_prior(p: Param, prior: AbstractPrior) -> Param:
    """``p`` with another prior, its ``raw`` kept bit for bit."""
    centre = p.constraint.forward(jnp.zeros_like(p.raw))
    q = Param(centre, p.constraint, units=p.units, prior=prior, fixed=p.fixed, name=p.name)
    return eqx.tree_at(lambda q: q.raw, q, p.raw)


def _apply_priors(model, priors: Mapping[str, AbstractPrior] | None):
    by_name = named(model)
    free = {k: p for k, p in by_name.items() if not p.fixed}
    priors = dict(priors or {})
    unknown = sorted(set(priors) - set(free))
    if unknown:
        raise ValueError(
            f"priors given for {unknown}, which are not free Params of the model; the free "
            f"Params are {sorted(free)}."
        )
    missing = [k for k, p in free.items() if p.prior is None and k not in priors]
    if missing:
        raise ValueError(
            f"free Param(s) {missing} have no prior; a posterior needs one for every free "
            f"θ_s: give them prior=sl.params.Normal(...)/LogNormal(...), pass "
            f"priors={{name: prior}}, or fix them (sl.Param(..., fixed=True))."
        )
    if not free:
        raise ValueError("the model has no free Param: there is no θ_s to infer.")
    order = {id(p): k for k, p in by_name.items()}

    def swap(x):
        if is_param(x) and order.get(id(x)) in priors:
            return _with_prior(x, priors[order[id(x)]])
        return x

    return jtu.tree_map(swap, model, is_leaf=is_param)


def _physical(model) -> Array:
    """The physical values of the free Params, flattened in `theta_vector` order."""
    return jnp.concatenate(
        [jnp.ravel(p.value) for p in named(model).values() if not p.fixed] or [jnp.zeros(0)]
    )


def _log_prior(model) -> Array:
    """Σ log p(θ) over the free Params (their priors, in physical space)."""
    return sum(
        (jnp.sum(p.prior.log_prob(p.value)) for p in named(model).values() if not p.fixed),
        jnp.zeros(()),
    )


def _windows(data: Array, horizon: int, t0: Array, dt: float) -> tuple[Array, Array]:
    """Non-overlapping windows of ``horizon + 1`` states from every trajectory and their
    start times."""
    n_win = (data.shape[1] - 1) // horizon
    starts = np.arange(n_win) * horizon
    idx = starts[:, None] + np.arange(horizon + 1)[None, :]
    win = data[:, idx].reshape(-1, horizon + 1, *data.shape[2:])
    times = (t0[:, None] + dt * jnp.asarray(starts, t0.dtype)[None, :]).reshape(-1)
    return win, times


@dataclass
class Posterior:
    """What `posterior_theta` returns: NUTS draws of θ_s and their diagnostics.

    ``names`` label the entries (`theta_names`; ``"noise"`` last when the observation noise
    was inferred); ``samples`` are physical values, shape ``(chains, draws, entries)``;
    ``raw`` the unconstrained θ_s (`theta_vector`) of every draw, ``(chains, draws, p)``;
    ``r_hat`` (split Gelman–Rubin) and ``ess`` (effective sample size) per entry;
    ``divergences`` counts divergent transitions; ``seconds`` is the wall time, compilation
    included."""

    names: list[str]
    samples: np.ndarray
    raw: np.ndarray
    r_hat: np.ndarray
    ess: np.ndarray
    divergences: int
    seconds: float
    template: Any

    def _flat(self) -> np.ndarray:
        return self.samples.reshape(-1, self.samples.shape[-1])

    @property
    def mean(self) -> dict[str, float]:
        """Posterior mean per entry."""
        return dict(zip(self.names, self._flat().mean(0).tolist(), strict=True))

    @property
    def std(self) -> dict[str, float]:
        """Posterior standard deviation per entry."""
        return dict(zip(self.names, self._flat().std(0, ddof=1).tolist(), strict=True))

    def interval(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """The central credible interval per entry (posterior quantiles ``(1 ∓ level)/2``)."""
        if not 0 < level < 1:
            raise ValueError(f"level must lie strictly between 0 and 1, got {level}.")
        lo, hi = np.quantile(self._flat(), [0.5 - level / 2, 0.5 + level / 2], axis=0)
        return {k: (float(a), float(b)) for k, a, b in zip(self.names, lo, hi, strict=True)}

    def summary(self, truth: Mapping[str, float] | None = None) -> dict[str, dict]:
        """Per entry ``{"mean", "std", "ci95": [lo, hi], "r_hat", "ess"}`` (JSON-ready); with
        ``truth`` (values by name) also ``"true"`` and ``"covered"`` (the truth inside the
        95 % interval)."""
        ci, mean, std = self.interval(0.95), self.mean, self.std
        out = {}
        for i, k in enumerate(self.names):
            row = {
                "mean": mean[k],
                "std": std[k],
                "ci95": list(ci[k]),
                "r_hat": float(self.r_hat[i]),
                "ess": float(self.ess[i]),
            }
            if truth is not None and k in truth:
                row["true"] = float(truth[k])
                row["covered"] = bool(ci[k][0] <= truth[k] <= ci[k][1])
            out[k] = row
        return out

    def theta_gaussian(self) -> tuple[Array, Array]:
        """``(mean, cov)`` of the unconstrained θ_s across draws, for `unscented_rollout`."""
        raw = self.raw.reshape(-1, self.raw.shape[-1])
        return jnp.asarray(raw.mean(0)), jnp.atleast_2d(jnp.asarray(np.cov(raw, rowvar=False)))

    def models(self, count: int) -> PyTree:
        """``count`` posterior draws (evenly spaced over the pooled chains) as a stacked
        ensemble of the model (network weights as given), for `ensemble_rollout` /
        `ensemble_forecast`: the posterior predictive."""
        raw = self.raw.reshape(-1, self.raw.shape[-1])
        if not 1 <= count <= raw.shape[0]:
            raise ValueError(f"count must be in [1, {raw.shape[0]}] (the draws), got {count}.")
        rebuild = theta_vector(self.template)[1]
        pick = np.linspace(0, raw.shape[0] - 1, count).round().astype(int)
        return stack_members([rebuild(jnp.asarray(raw[i])) for i in pick])


class _Sampler:
    """NUTS over the unconstrained θ_s (and log σ) of one model: NumPyro's functional NUTS
    kernel (warmup adaptation included) in a ``lax.scan``, vmapped over chains and jitted as
    a function of the data, so that new data sets of the same shape (simulation-based
    calibration) reuse one compilation."""

    def __init__(self, model, noise, memory, settings: dict):
        _numpyro()
        from numpyro.infer.hmc import hmc

        self.model = model
        self.theta0, self.rebuild = theta_vector(model)
        self.p = self.theta0.size
        self.learn_noise = isinstance(noise, AbstractPrior)
        self.noise = noise
        self.num_chains = settings["num_chains"]
        self.num_samples = settings["num_samples"]
        num_warmup = settings["num_warmup"]
        dtype = jnp.result_type(float)
        rebuild, p = self.rebuild, self.p

        def log_jacobian(x):
            _, tangent = jax.jvp(lambda v: _physical(rebuild(v)), (x,), (jnp.ones_like(x),))
            return jnp.sum(jnp.log(jnp.abs(tangent)))

        def log_density(x, windows, times):
            m = rebuild(x[:p])
            pred = predict_windows(m, windows, memory, times)[:, 1:]
            obs = windows[:, 1:]
            if self.learn_noise:
                sigma = jnp.exp(x[p])
                lp_noise = jnp.sum(noise.log_prob(sigma)) + x[p]
            else:
                sigma, lp_noise = jnp.asarray(noise, dtype), jnp.zeros((), dtype)
            sq = jnp.sum((obs - pred) ** 2)
            n_obs = obs.size
            loglik = -0.5 * sq / sigma**2 - n_obs * (jnp.log(sigma) + 0.5 * math.log(2 * math.pi))
            logp = loglik + _log_prior(m) + log_jacobian(x[:p]) + lp_noise
            return jnp.where(jnp.isfinite(logp), logp, -jnp.inf)

        def potential_fn_gen(windows, times):
            return lambda x: -log_density(x, windows, times)

        init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")
        total = num_warmup + self.num_samples

        def chain(key, init, windows, times):
            args = (windows, times)
            state = init_kernel(
                init,
                num_warmup,
                target_accept_prob=settings["target_accept"],
                max_tree_depth=settings["max_tree_depth"],
                model_args=args,
                rng_key=key,
            )

            def body(st, _):
                st = sample_kernel(st, model_args=args)
                return st, (st.z, st.diverging)

            _, (z, diverging) = jax.lax.scan(body, state, None, length=total)
            return z[num_warmup:], jnp.sum(diverging[num_warmup:])

        self._chains = jax.jit(jax.vmap(chain, in_axes=(0, 0, None, None)))

    def inits(self, key, how: str, model=None) -> Array:
        """One starting point per chain: prior draws, or ``model``'s θ_s jittered by 1 %."""
        model = self.model if model is None else model
        theta0 = theta_vector(model)[0]
        out = []
        for c in range(self.num_chains):
            kc = jax.random.fold_in(key, c)
            if how == "prior":
                x = theta_vector(draw_theta(model, kc, "prior"))[0]
            else:
                x = theta0 + 0.01 * jax.random.normal(kc, theta0.shape, theta0.dtype)
            if self.learn_noise:
                s = _sample_prior(self.noise, jax.random.fold_in(kc, 7), ())
                s = jnp.abs(s) if isinstance(self.noise, Normal) else s
                x = jnp.concatenate([x, jnp.log(jnp.reshape(s, (1,)))])
            out.append(x)
        return jnp.stack(out)

    def run(self, key, windows, times, inits) -> tuple[Array, int]:
        """``(draws, divergences)``: draws of shape ``(chains, samples, dim)``."""
        keys = jax.random.split(key, self.num_chains)
        with jax.numpy_rank_promotion("allow"):  # NumPyro broadcasts implicitly
            x, div = self._chains(keys, inits, windows, times)
        return x, int(np.sum(np.asarray(div)))

    def physical(self, x: Array) -> np.ndarray:
        """Physical values of draws ``(..., dim)``: θ_s through the constraints, σ."""
        flat = x.reshape(-1, x.shape[-1])
        phys = jax.vmap(lambda v: _physical(self.rebuild(v[: self.p])))(flat)
        if self.learn_noise:
            phys = jnp.concatenate([phys, jnp.exp(flat[:, self.p :])], axis=-1)
        return np.asarray(phys, dtype=np.float64).reshape(*x.shape[:-1], -1)


def _prepare(model, data, noise, t0, horizon, priors, init):
    """Checks shared by `posterior_theta` and `simulation_based_calibration`."""
    if init not in INITS:
        raise ValueError(f"unknown init={init!r}; choose one of {INITS}.")
    model = _apply_priors(model, priors)
    if isinstance(noise, AbstractPrior):
        if not isinstance(noise, Normal | LogNormal):
            raise ValueError("a noise prior must be a Normal or LogNormal (on σ > 0).")
    elif not (np.ndim(noise) == 0 and float(noise) > 0):
        raise ValueError(
            f"noise must be a positive number (the known observation std) or a prior on it "
            f"(e.g. sl.params.LogNormal(0.1, 1.0)), got {noise!r}."
        )
    dtype = jnp.result_type(float)
    data = jnp.asarray(data, dtype)
    shape = tuple(getattr(model, "state_shape", data.shape[2:]))
    if data.ndim < 3 or tuple(data.shape[2:]) != shape or data.shape[1] < 2:
        raise ValueError(
            f"data must have shape (trajectories, time >= 2, *{shape}), got {data.shape}; "
            f"wrap one trajectory as data[None]."
        )
    if not bool(jnp.all(jnp.isfinite(data))):
        raise ValueError("data contain NaN/Inf; remove or impute them before inference.")
    h = data.shape[1] - 1 if horizon is None else int(horizon)
    if not 1 <= h <= data.shape[1] - 1:
        raise ValueError(f"horizon must be in [1, {data.shape[1] - 1}], got {horizon}.")
    starts = jnp.zeros(data.shape[0], dtype) if t0 is None else jnp.broadcast_to(
        jnp.asarray(t0, dtype), data.shape[:1])  # fmt: skip
    windows, times = _windows(data, h, starts, float(getattr(model, "dt", 1.0)))
    return model, windows, times


def posterior_theta(
    model: PyTree,
    data,
    key: PRNGKeyArray,
    *,
    noise: float | AbstractPrior,
    t0=None,
    horizon: int | None = None,
    priors: Mapping[str, AbstractPrior] | None = None,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    init: str = "prior",
    target_accept: float = 0.8,
    max_tree_depth: int = 8,
    memory: str = "full",
) -> Posterior:
    r"""The Bayesian posterior over θ_s with the solver inside the likelihood, by NumPyro's
    No-U-Turn sampler (Hoffman & Gelman 2014):

    $$p(θ \mid y) \propto \prod_{w,k} \mathcal N\!\left(y_{w,k} \mid
    \hat u_{w,k}(θ), σ^2\right)\ p(θ),$$

    where ``û_w(θ)`` is the rollout of ``model`` with θ_s = θ from the first state of window
    ``w`` and ``p(θ)`` the priors of its free `Param`s, in physical space. Network weights
    (θ_ml of a `Hybrid`) stay fixed at their values in ``model``. NUTS runs in the
    unconstrained coordinates of the Params (`theta_vector`) with the log-Jacobian of each
    constraint added, so a positive or bounded θ_s never leaves its support and the prior
    is the one stated on the physical value.

    **Arguments:**

    - `model`: the step whose θ_s are inferred (a solver, a trained `Hybrid`, a member).
    - `data`: observed trajectories ``(trajectories, time, *state)``; the first state of
      each window is taken as known (exact).
    - `key`: PRNG key of the sampler.
    - `noise`: the observation noise standard deviation ``σ``: a number (known), or a
      ``LogNormal`` (or ``Normal``, truncated to ``σ > 0``) prior to infer it as the entry
      ``"noise"``.
    - `t0`: start time of each trajectory (default 0).
    - `horizon`: window length in steps (default ``None``: each whole trajectory is one
      rollout). Short windows keep the likelihood well-behaved for chaotic systems; their
      first states are then noisy observations taken as exact, a mild approximation.
    - `priors`: priors by Param name that replace or supply those of the Params.
    - `num_warmup`, `num_samples`, `num_chains`: NUTS settings (chains run vectorised);
      `init`: ``"prior"`` (each chain starts at a draw from the priors; default) or
      ``"model"`` (at the model's θ_s, jittered by 1 %); `target_accept`,
      `max_tree_depth`: NUTS tuning.
    - `memory`: the rollout memory policy of the likelihood's gradient.

    **Returns:** a `Posterior` (means, 95 % credible intervals, R-hat, ESS, `summary`).
    """
    model, windows, times = _prepare(model, data, noise, t0, horizon, priors, init)
    sampler = _Sampler(model, noise, memory, _settings(locals()))
    k_init, k_run = jax.random.split(key)
    started = time.perf_counter()
    x, div = sampler.run(k_run, windows, times, sampler.inits(k_init, init))
    phys = sampler.physical(x)
    with jax.numpy_rank_promotion("allow"):
        from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

        r_hat = np.asarray(split_gelman_rubin(phys), dtype=np.float64)
        ess = np.asarray(effective_sample_size(phys), dtype=np.float64)
    return Posterior(
        names=theta_names(model) + (["noise"] if sampler.learn_noise else []),
        samples=phys,
        raw=np.asarray(x[..., : sampler.p], dtype=np.float64),
        r_hat=r_hat,
        ess=ess,
        divergences=div,
        seconds=time.perf_counter() - started,
        template=model,
    )


def _settings(args: dict) -> dict:
    keys = ("num_warmup", "num_samples", "num_chains", "target_accept", "max_tree_depth")
    for k in ("num_warmup", "num_samples", "num_chains"):
        if not (isinstance(args[k], int | np.integer) and args[k] >= 1):
            raise ValueError(f"{k} must be a positive integer, got {args[k]!r}.")
    return {k: args[k] for k in keys}


@dataclass
class SBCResult:
    """What `simulation_based_calibration` returns.

    ``names`` label the θ_s entries; ``truths`` the θ_s drawn per replication
    ``(replications, entries)``; ``ranks`` the rank of each truth among ``draws`` thinned
    posterior draws (``0 … draws``, uniform for a calibrated posterior); ``histogram`` the
    rank counts in ``bins`` equal bins per entry; ``chi2`` and ``p_value`` the χ² test of
    uniformity per entry; ``coverage`` the fraction of replications whose central
    ``level`` credible interval holds the truth; ``max_r_hat`` per replication;
    ``seconds`` the wall time."""

    names: list[str]
    truths: np.ndarray
    ranks: np.ndarray
    draws: int
    histogram: np.ndarray
    chi2: np.ndarray
    p_value: np.ndarray
    level: float
    coverage: np.ndarray
    max_r_hat: np.ndarray
    seconds: float

    def summary(self) -> dict:
        """JSON-ready: per entry the histogram, χ², p-value and coverage."""
        return {
            name: {
                "rank_histogram": self.histogram[:, i].astype(int).tolist(),
                "chi2": float(self.chi2[i]),
                "p_value": float(self.p_value[i]),
                f"coverage_{round(100 * self.level)}": float(self.coverage[i]),
                "replications": int(self.ranks.shape[0]),
            }
            for i, name in enumerate(self.names)
        }


def simulation_based_calibration(
    model: PyTree,
    u0,
    steps: int,
    key: PRNGKeyArray,
    *,
    noise: float,
    replications: int = 100,
    draws: int = 99,
    bins: int = 10,
    level: float = 0.9,
    t0=None,
    priors: Mapping[str, AbstractPrior] | None = None,
    num_warmup: int = 300,
    num_samples: int = 300,
    num_chains: int = 2,
    target_accept: float = 0.8,
    max_tree_depth: int = 8,
    memory: str = "full",
) -> SBCResult:
    """Simulation-based calibration of `posterior_theta` through the solver (Talts et al.
    2018): for each replication, draw θ_s from the priors, simulate trajectories of
    ``steps`` steps from the initial states ``u0`` with Gaussian noise ``noise``, infer the
    posterior and record the rank of the true θ_s among ``draws`` thinned posterior draws.
    If inference is exact, the ranks are uniform and a ``level`` credible interval covers the
    truth in a fraction ``level`` of replications. The sampler is compiled once and reused
    for every replication.

    **Arguments:**

    - `model`: the step (its free Params need priors, or `priors`).
    - `u0`: initial states ``(trajectories, *state)`` (known exactly); `steps`: steps per
      trajectory; `t0`: their start times.
    - `key`: PRNG key; `noise`: the observation noise std (known).
    - `replications`, `draws` (thinned posterior draws per rank, at most ``num_chains ·
      num_samples``), `bins` (of the rank histogram), `level` (of the coverage check).
    - `num_warmup`, `num_samples`, `num_chains`, `target_accept`, `max_tree_depth`,
      `memory`: as in `posterior_theta`.

    **Returns:** an `SBCResult`.
    """
    if np.ndim(noise) != 0:
        raise ValueError("simulation-based calibration needs a known noise level (a number).")
    u0 = jnp.asarray(u0, jnp.result_type(float))
    probe = jnp.zeros((u0.shape[0], steps + 1, *u0.shape[1:]), u0.dtype)
    model, windows, times = _prepare(model, probe, noise, t0, None, priors, "prior")
    settings = _settings(locals())
    if not 1 <= draws <= num_chains * num_samples:
        raise ValueError(f"draws must be in [1, {num_chains * num_samples}], got {draws}.")
    if not (isinstance(replications, int | np.integer) and replications >= 2):
        raise ValueError(f"replications must be an integer >= 2, got {replications!r}.")
    sampler = _Sampler(model, float(noise), memory, settings)
    starts = None if t0 is None else jnp.broadcast_to(jnp.asarray(t0, u0.dtype), u0.shape[:1])

    @eqx.filter_jit
    def simulate(m, k):
        clean = predict_windows(m, jnp.broadcast_to(u0[:, None], probe.shape), memory, starts)
        eps = jax.random.normal(k, clean[:, 1:].shape, clean.dtype)
        return clean.at[:, 1:].add(noise * eps)

    truths, ranks, covered, max_r_hat = [], [], [], []
    started = time.perf_counter()
    for r in range(replications):
        kr = jax.random.fold_in(key, r)
        k_theta, k_sim, k_init, k_run = jax.random.split(kr, 4)
        truth_model = draw_theta(model, k_theta, "prior")
        data = simulate(truth_model, k_sim)
        x, _ = sampler.run(k_run, data, times, sampler.inits(k_init, "prior"))
        phys = sampler.physical(x)
        true = np.asarray(_physical(truth_model), dtype=np.float64)
        pooled = phys.reshape(-1, phys.shape[-1])
        thin = pooled[np.linspace(0, pooled.shape[0] - 1, draws).round().astype(int)]
        truths.append(true)
        ranks.append(np.sum(thin < true[None], axis=0))
        lo, hi = np.quantile(pooled, [0.5 - level / 2, 0.5 + level / 2], axis=0)
        covered.append((lo <= true) & (true <= hi))
        with jax.numpy_rank_promotion("allow"):
            from numpyro.diagnostics import split_gelman_rubin

            max_r_hat.append(float(np.max(np.asarray(split_gelman_rubin(phys)))))
    ranks_arr = np.stack(ranks)
    edges = np.linspace(0, draws + 1, bins + 1)
    hist = np.stack(
        [np.histogram(ranks_arr[:, i], bins=edges)[0] for i in range(ranks_arr.shape[1])],
        axis=1,
    )
    expected = replications * np.diff(edges) / (draws + 1)
    chi2 = np.sum((hist - expected[:, None]) ** 2 / expected[:, None], axis=0)
    p_value = np.asarray(jax.scipy.special.gammaincc((bins - 1) / 2, jnp.asarray(chi2) / 2))
    return SBCResult(
        names=theta_names(model),
        truths=np.stack(truths),
        ranks=ranks_arr,
        draws=draws,
        histogram=hist,
        chi2=chi2,
        p_value=p_value.astype(np.float64),
        level=level,
        coverage=np.mean(np.stack(covered), axis=0),
        max_r_hat=np.asarray(max_r_hat),
        seconds=time.perf_counter() - started,
    )
