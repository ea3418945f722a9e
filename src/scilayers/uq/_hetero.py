"""Heteroscedastic output: a per-point log-variance head trained with the Gaussian NLL, and
the split of predictive variance into aleatoric and epistemic parts."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._typing import ScalarLike
from ..metrics import gaussian_nll
from ..solvers import AbstractStepper, takes_time


class Heteroscedastic(AbstractStepper):
    r"""A step (solver, `Hybrid`, `NeuralStepper`) with a head that predicts the variance of
    its one-step error, point by point:

    $$u_{n+1} \sim \mathcal N\!\left(Φ(u_n, t_n),\ \exp(c + h(u_n))\right),$$

    where ``Φ`` is the wrapped step (the mean; its θ_s and θ_ml are trained as usual) and
    ``h`` the head network (θ_ml), whose output is a log-variance of the state's shape
    (``c`` = `offset`). Called like the wrapped step, it returns the mean, so `rollout`,
    `fit` and the ensemble functions work unchanged; train the head with `nll_loss`
    (``train_ensemble(..., loss_fn=nll_loss(config))``), after which `predict` gives mean
    and variance. The variance is the aleatoric (data-noise) part; an ensemble of such
    models adds the epistemic part (`variance_split`). `ensemble_forecast` samples it along
    rollouts.

    **Arguments:**

    - `step`: the mean step ``Φ`` (``step(u, t)`` or ``step(u)``).
    - `head`: a network mapping a state to a state-shaped log-variance (e.g.
      ``sl.nn.MLP`` for a small state, a ``PeriodicCNN1d`` for a field).
    - `offset`: a constant added to the head's output (default 0); start it near the log of
      the expected error variance (``log(1e-2)`` for errors of about 0.1) so training begins
      where it should end.

    Reference: Nix & Weigend (1994); Lakshminarayanan et al. (2017).
    """

    network_fields = ("head",)  # `head` is θ_ml (see `scilayers.params.network`)

    step: Callable
    head: eqx.Module
    offset: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        if not callable(self.step) or not callable(self.head):
            raise ValueError("Heteroscedastic needs a callable step and a callable head network.")

    @property
    def model(self):
        """The scientific model inside the step (``None`` for a pure network)."""
        return getattr(self.step, "model", None)

    @property
    def dt(self) -> float:
        return getattr(self.step, "dt", 1.0)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self.step.state_shape)

    def prepare(self) -> Heteroscedastic:
        """The same model over a prepared step (coefficients computed once per rollout; see
        `scilayers.solvers.ETDRK4.prepare`)."""
        prep = getattr(self.step, "prepare", None)
        return self if prep is None else Heteroscedastic(prep(), self.head, self.offset)

    def _mean(self, u: Array, t: ScalarLike) -> Array:
        return self.step(u, t) if takes_time(self.step) else self.step(u)

    def log_variance(self, u: Array) -> Array:
        """The log-variance of the one-step error from the state ``u``."""
        out = self.head(u)
        if jnp.shape(out) != jnp.shape(u):
            raise ValueError(
                f"the variance head maps a state of shape {jnp.shape(u)} to "
                f"{jnp.shape(out)}; it must return the state's shape (one log-variance per "
                f"point)."
            )
        return self.offset + out

    def predict(self, u: Array, t: ScalarLike = 0.0) -> tuple[Array, Array]:
        """``(mean, variance)`` of the next state from the state ``u`` at time ``t``."""
        self.check(u)
        return self._mean(u, t), jnp.exp(self.log_variance(u))

    def __call__(self, u: Array, t: ScalarLike = 0.0) -> Array:
        self.check(u)
        return self._mean(u, t)


def nll_loss(config=None) -> Callable:
    """The Gaussian negative log-likelihood of one-step transitions, as a ``loss_fn`` for
    `train_ensemble` (and `scilayers.training.make_train_step`): for `Heteroscedastic`
    models, ``mean_{b,k,i} ½ [log σ² + (u_{k+1} - μ)² / σ² + log 2π]`` with ``(μ, σ²) =
    model.predict(u_k, t_k)`` over every consecutive pair of every window (teacher forced:
    each step starts from the data). Mean and variance are trained together, θ_s and the
    mean network through the solver. ``config`` is accepted for symmetry with
    `scilayers.training.make_loss` and unused; the loss is scaled by ``lambda_data``."""
    del config

    def loss_fn(model, windows, hyper, t0=None):
        if not isinstance(model, Heteroscedastic):
            raise ValueError(
                f"nll_loss trains a Heteroscedastic model (a step with a variance head), got "
                f"{type(model).__name__}; wrap it: sl.uq.Heteroscedastic(step, head)."
            )
        u, y = windows[:, :-1], windows[:, 1:]
        steps = u.shape[1]
        lags = model.dt * jnp.arange(steps, dtype=jnp.result_type(float))
        start = jnp.zeros(u.shape[0], lags.dtype) if t0 is None else t0
        times = start[:, None] + lags[None, :]
        mean, var = jax.vmap(jax.vmap(model.predict))(u, times)
        nll = jnp.mean(gaussian_nll(y, mean, var))
        return hyper["lambda_data"] * nll, {"data": nll}

    return loss_fn


def variance_split(means, variances=None) -> dict[str, np.ndarray]:
    """The law of total variance across ensemble members (members on axis 0):
    ``Var = E_m[σ²_m] + Var_m[μ_m]``, the aleatoric part (the members' mean predicted
    variance) and the epistemic part (the spread of their means, ``ddof=0``).

    **Arguments:**

    - `means`: the members' predicted means, shape ``(members, ...)``.
    - `variances`: the members' predicted variances (e.g. from `Heteroscedastic.predict`),
      same shape; ``None``: no aleatoric part (a plain ensemble).

    **Returns:** ``{"mean", "aleatoric", "epistemic", "total"}``, arrays of shape ``(...)``.
    """
    mu = np.asarray(means, dtype=np.float64)
    if variances is None:
        var = np.zeros_like(mu)
    else:
        var = np.asarray(variances, dtype=np.float64)
        if var.shape != mu.shape:
            raise ValueError(
                f"variances {var.shape} must have the shape of means {mu.shape}, members first."
            )
    aleatoric, epistemic = var.mean(axis=0), mu.var(axis=0)
    return {
        "mean": mu.mean(axis=0),
        "aleatoric": aleatoric,
        "epistemic": epistemic,
        "total": aleatoric + epistemic,
    }
