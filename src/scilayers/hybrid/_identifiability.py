"""Practical identifiability of θ_s on training data: Fisher information and its spectrum."""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..models import AbstractModel
from ._hybrid import Hybrid
from ._sensitivity import forward_mode, free_names, sensitivity, value_form

METHODS = ("step", "rhs")
# a parameter whose squared loading on the sloppy eigenvectors exceeds this is flagged
_LOADING = 0.1


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Identifiability:
    r"""How well training data determine the free θ_s of a model (see `identifiability`).

    All matrices are ``p × p`` over the free `Param` entries, in the order of `names`.

    - `names`, `values`: parameter names and their physical values θ.
    - `fisher`: the Gauss–Newton / Fisher information ``F = Σ_t J_tᵀ J_t / σ²`` over the
      physical values (units ``1/θ_i θ_j``).
    - `scales`: ``s_i = |θ_i|`` (1 for a parameter at 0, whose errors are then absolute).
    - `eigenvalues` (ascending) and `eigenvectors` (columns) of the scaled information
      ``F̃ = S F S``, ``S = diag(s)``: the information about relative changes of θ.
    - `condition_number`: ``λ_max / λ_min`` of ``F̃`` (eigenvalues below
      ``λ_max · 2.2e-16`` are clipped there, so it stays finite unless ``F = 0``).
    - `relative_std`: ``sqrt(diag F̃⁻¹) = std(θ_i)/s_i``, the Cramér–Rao bound of the
      relative standard error.
    - `correlations`: the correlation matrix of the estimates, from ``F⁻¹``.
    - `poorly_identified`: names whose `relative_std` exceeds the threshold, or that load
      (squared loading > 0.1) on an eigenvector with ``λ < λ_max / max_condition``.
    - `noise_std`: the ``σ`` used; `n_states`: states summed over; `method`: ``"step"`` or
      ``"rhs"``.
    """

    names: tuple[str, ...]
    values: np.ndarray
    fisher: np.ndarray
    scales: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    condition_number: float
    relative_std: np.ndarray
    correlations: np.ndarray
    poorly_identified: tuple[str, ...]
    noise_std: float
    n_states: int
    method: str

    def to_dict(self) -> dict:
        """A JSON-ready dict (non-finite numbers become ``None``)."""

        def arr(a):
            return [
                arr(x) if np.ndim(x) else _finite_or_none(x) for x in np.asarray(a, dtype=float)
            ]

        return {
            "params": list(self.names),
            "values": dict(zip(self.names, arr(self.values), strict=True)),
            "fisher": arr(self.fisher),
            "eigenvalues": arr(self.eigenvalues),
            "condition_number": _finite_or_none(self.condition_number),
            "relative_std": dict(zip(self.names, arr(self.relative_std), strict=True)),
            "correlation": arr(self.correlations),
            "poorly_identified": list(self.poorly_identified),
            "noise_std": _finite_or_none(self.noise_std),
            "n_states": int(self.n_states),
            "method": self.method,
        }


def _parts(step):
    """``(physics, predictor)``: the part whose θ_s sensitivities are taken, and the part
    whose residuals estimate σ."""
    if isinstance(step, Hybrid):
        return step.step, step
    return step, step


def _rhs_prediction(step, physics):
    """``(u, t) -> du/dt`` predicted by ``step`` (physics plus a closure's term)."""
    model = physics if isinstance(physics, AbstractModel) else physics.model
    if isinstance(step, Hybrid) and step.coupling == "closure":
        return lambda u, t: model.vector_field(t, u) + step.network_term(u, t)
    return lambda u, t: model.vector_field(t, u)


@eqx.filter_jit
def _accumulate(physics, predictor, states, times, targets, method, batch_size, observed=None):
    """``(Σ_t J_tᵀ J_t, Σ_t |r_t|²)`` over ``states`` (at ``times``), on the ``observed``
    components (flat indices) only when given."""
    idx = None if observed is None else jnp.asarray(observed)
    if method == "step":
        sens_tree = forward_mode(physics)

        def sens(u, t):
            return sensitivity(sens_tree, lambda s: s(u, t))

        pred = predictor
    else:
        model = physics if isinstance(physics, AbstractModel) else physics.model

        def sens(u, t):
            return sensitivity(model, lambda m: m.vector_field(t, u))

        pred = _rhs_prediction(predictor, physics)

    def one(x):
        u, t, target = x
        jac = sens(u, t)
        jm = jac.reshape(-1, jac.shape[-1])
        r = (target - pred(u, t)).reshape(-1)
        tg = target.reshape(-1)
        if idx is not None:
            jm, r, tg = jm[idx], r[idx], tg[idx]
        return jm.T @ jm, jnp.sum(r**2), jnp.sum(tg**2)

    gram, res, tgt = jax.lax.map(one, (states, times, targets), batch_size=batch_size)
    return gram.sum(0), res.sum(), tgt.sum()


def identifiability(
    step,
    trajectories: Float[Array, "batch time *state"],
    *,
    method: str = "step",
    dt: float | None = None,
    noise_std: float | None = None,
    threshold: float = 0.1,
    max_condition: float = 1e6,
    batch_size: int = 64,
    t0=None,
    observed=None,
) -> Identifiability:
    r"""Fisher information of the free θ_s on training data, and what it says about them.

    With the sensitivities ``J_t = ∂ŷ(u_t; θ)/∂θ`` of a prediction ``ŷ`` at every state
    of the data, and Gaussian errors of variance ``σ²``, the Gauss–Newton approximation of
    the Fisher information is

    $$F = \frac{1}{\sigma^2} \sum_t J_t^\top J_t,$$

    whose inverse bounds the covariance of any unbiased estimate of θ (Cramér–Rao). Its
    spectrum in relative coordinates tells which combinations of θ_s the data determine:
    a large condition number with a parameter loading on the smallest eigenvector means
    that parameter trades off against others (e.g. only a product ``a·b`` is seen).

    - ``method="step"`` (default): ``ŷ = Φ_dt(u_t)``, the one-step prediction, compared
      with ``u_{t+1}``; works for every stepper (ETDRK4, StrangSplitting, Diffrax,
      Repeated; Diffrax is differentiated in forward mode).
    - ``method="rhs"``: ``ŷ = f(u_t)``, the right-hand side, compared with the central
      difference ``(u_{t+1} − u_{t−1}) / (2 dt)`` at interior times; cheaper, and works for
      a bare model.

    ``J`` is always the sensitivity of the physics (for a `Hybrid`, its stepper); ``σ²`` is
    the residual variance ``Σ|r_t|² / (N − p)`` of the model passed (for a `Hybrid`, its
    full prediction, so model error the network explains is not counted as noise), floored
    at ``2.2e-16 · mean(target²)`` so that noise-free data give a finite ``F``.

    **Arguments:**

    - `step`: a stepper, a `Hybrid`, or an `AbstractModel` (then ``method="rhs"`` and `dt`
      are required).
    - `trajectories`: shape ``(batch, time, *state)`` (or ``(time, *state)``), states
      ``dt`` apart.
    - `method`: ``"step"`` or ``"rhs"``; `dt`: sampling interval for ``"rhs"`` (default
      the step's ``dt``).
    - `noise_std`: a known observation noise ``σ`` (default: estimated as above).
    - `threshold`: largest acceptable relative standard error (default 0.1).
    - `max_condition`: condition number of the scaled information above which the
      eigenvectors with ``λ < λ_max / max_condition`` count as unidentified (default 1e6).
    - `batch_size`: states per vectorised chunk (memory ``batch_size · N · p``).
    - `t0`: the time of each trajectory's first state (a number or one per trajectory;
      default 0); state ``k`` is at ``t0 + k·dt``. Matters for a time-dependent model.
    - `observed`: flat indices of the measured components (the observation operator of
      `TrainConfig.observed`; default ``None``: all): only they inform θ_s.

    **Returns:** an `Identifiability` (with ``to_dict()`` for JSON).

    Reference: Raue et al. (2009), Bioinformatics 25(15); Gutenkunst et al. (2007),
    PLoS Comput. Biol. 3(10) ("sloppy" parameter combinations).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}.")
    physics, predictor = _parts(step)
    if isinstance(physics, AbstractModel):
        if method != "rhs" or dt is None:
            raise ValueError(
                "identifiability of a bare model needs method='rhs' and the sampling "
                "interval dt=...; or pass a stepper for the one-step method."
            )
        state_shape = tuple(physics.state_shape)
    else:
        if not hasattr(physics, "model"):
            raise ValueError(
                f"identifiability needs a stepper, a Hybrid or a model, got {type(step).__name__}."
            )
        state_shape = tuple(physics.state_shape)
        dt = physics.dt if dt is None else dt
    data = jnp.asarray(trajectories)
    if data.ndim == len(state_shape) + 1:
        data = data[None]
    if data.ndim != len(state_shape) + 2 or tuple(data.shape[2:]) != state_shape:
        raise ValueError(
            f"identifiability expects trajectories of shape (batch, time, *{state_shape}), "
            f"got {tuple(jnp.shape(trajectories))}."
        )
    need = 2 if method == "step" else 3
    if data.shape[1] < need:
        raise ValueError(f"method={method!r} needs trajectories of at least {need} states.")
    theta, _ = value_form(physics)
    if theta is None:
        raise ValueError("the model has no free Param: there is nothing to identify.")
    names = free_names(physics)

    ftype = jnp.result_type(float)
    start = jnp.asarray(0.0 if t0 is None else t0, ftype)
    if start.shape not in ((), data.shape[:1]):
        raise ValueError(
            f"t0 must be a number or one start time per trajectory, shape {data.shape[:1]}, "
            f"got {start.shape}."
        )
    start = jnp.broadcast_to(start, data.shape[:1])
    times = start[:, None] + dt * jnp.arange(data.shape[1], dtype=ftype)[None, :]
    if method == "step":
        states, targets, times = data[:, :-1], data[:, 1:], times[:, :-1]
    else:
        states, targets = data[:, 1:-1], (data[:, 2:] - data[:, :-2]) / (2.0 * dt)
        times = times[:, 1:-1]
    states = states.reshape(-1, *state_shape)
    targets = targets.reshape(-1, *state_shape)
    times = times.reshape(-1)
    gram, res, tgt = _accumulate(physics, predictor, states, times, targets, method, batch_size,
                                 None if observed is None else tuple(observed))  # fmt: skip
    gram, res, tgt = np.asarray(gram, float), float(res), float(tgt)

    p, n_states = theta.shape[0], states.shape[0]
    n_values = n_states * (math.prod(state_shape) if observed is None else len(observed))
    if noise_std is None:
        var = max(res / max(n_values - p, 1), np.finfo(float).eps * tgt / n_values)
    else:
        var = float(noise_std) ** 2
    fisher = gram / var

    values = np.asarray(theta, float)
    scales = np.where(values != 0, np.abs(values), 1.0)
    scaled = fisher * np.outer(scales, scales)
    lam, vec = np.linalg.eigh(0.5 * (scaled + scaled.T))
    lam_max = float(lam[-1])
    if not (math.isfinite(lam_max) and lam_max > 0):
        inf = np.full(p, np.inf)
        return Identifiability(
            names, values, fisher, scales, lam, vec, math.inf, inf,
            np.full((p, p), np.nan), names, math.sqrt(var), n_states, method,
        )  # fmt: skip
    clipped = np.maximum(lam, lam_max * np.finfo(float).eps)
    cond = lam_max / float(clipped[0])
    cov = (vec / clipped[None, :]) @ vec.T
    rel_std = np.sqrt(np.diag(cov))
    corr = cov / np.outer(rel_std, rel_std)
    sloppy = lam < lam_max / max_condition
    loading = np.sum(vec[:, sloppy] ** 2, axis=1)
    flagged = tuple(
        name
        for name, sd, load in zip(names, rel_std, loading, strict=True)
        if sd > threshold or load > _LOADING
    )
    return Identifiability(
        names=names,
        values=values,
        fisher=fisher,
        scales=scales,
        eigenvalues=lam,
        eigenvectors=vec,
        condition_number=cond,
        relative_std=rel_std,
        correlations=corr,
        poorly_identified=flagged,
        noise_std=math.sqrt(var),
        n_states=n_states,
        method=method,
    )
