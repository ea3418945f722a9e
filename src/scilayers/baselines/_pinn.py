"""Physics-informed neural network (PINN) forecasting baseline for 1-D periodic PDEs.

A PINN represents one trajectory as a network ``u(x, t)`` and is fitted to the observed
window (data loss) while the model's pointwise PDE residual (`pde_residual`), evaluated
by automatic differentiation at collocation points over the whole time span, is driven to
zero (physics loss). θ_s is held fixed at the model's values: no parameter is adapted.
The residual beyond the observed window is the only thing that shapes the forecast.

Training follows the field's practice: Adam with a cosine-decayed learning rate, then
full-batch L-BFGS (zoom line search) on a fixed collocation set until a stated
convergence criterion holds.

Reference: Raissi, Perdikaris & Karniadakis (2019), J. Comput. Phys. 378, 686–707.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .._typing import ScalarLike
from ..models._base import AbstractSpectralModel


@dataclass(frozen=True)
class PINNConfig:
    r"""Hyperparameters of the PINN baseline.

    **Arguments:**

    - `width`: units per hidden layer (default 48).
    - `depth`: number of hidden layers (default 4), each followed by ``tanh``.
    - `fourier_modes`: ``M`` in the periodic embedding ``sin/cos(2π m x / L)``,
      ``m = 1 … M`` (default 8); periodicity in ``x`` is exact.
    - `adam_steps`: Adam steps of the first phase (default 3000; 0 skips it).
    - `lr`: initial Adam learning rate (default 5e-3), decayed along a cosine to
      ``lr · lr_final_fraction`` at the last Adam step.
    - `lr_final_fraction`: final Adam learning rate as a fraction of `lr` (default 0.01).
    - `n_collocation`: physics collocation points of the Adam phase, redrawn uniformly over
      ``[0, L) × [0, T]`` at every step (default 256).
    - `lbfgs_steps`: maximum L-BFGS iterations of the second phase (default 1000;
      0 gives Adam only).
    - `n_collocation_lbfgs`: collocation points of the L-BFGS phase, drawn uniformly once
      per trajectory and then FIXED, so that the objective is deterministic, as L-BFGS and
      its line search require (default 2048; with 1024 the KS fits over-fitted the set:
      residual on unseen points up to 10x that on the set, and a worse forecast).
    - `lbfgs_memory`: number of curvature pairs L-BFGS keeps (default 20).
    - `tol`, `tol_window`: the convergence criterion. L-BFGS stops for a trajectory at the
      first iteration ``k >= tol_window`` with

      $$\frac{\mathcal{L}_{k - w} - \mathcal{L}_k}{|\mathcal{L}_{k - w}|} < \text{tol},
        \qquad w = \text{tol\_window},$$

      i.e. when the loss fell by less than the fraction `tol` over the last `tol_window`
      iterations (defaults 1e-2 and 50); that trajectory is then reported as converged.
      A trajectory that reaches `lbfgs_steps` first, or whose line search produces a
      non-finite loss (the step is discarded), is reported as not converged. ``tol = 0``
      always runs `lbfgs_steps` iterations.
    - `lbfgs_batch`: trajectories run through L-BFGS together under ``jax.vmap``
      (default 1: one after another). The result does not depend on it (up to rounding):
      under ``vmap`` a stopped trajectory is frozen. But there every member pays for both
      branches of the line search's conditionals and waits for the slowest member, which
      made L-BFGS about 3-4x slower per trajectory on a CPU; raise it on an accelerator.
    - `lambda_data`, `lambda_physics`: loss weights (default 1, 1); ``lambda_physics=0``
      gives a plain data fit, ``lambda_data=0`` a pure residual fit.
    - `seed`: seed of the initialisation and collocation keys (default 0).
    """

    width: int = 48
    depth: int = 4
    fourier_modes: int = 8
    adam_steps: int = 3000
    lr: float = 5e-3
    lr_final_fraction: float = 0.01
    n_collocation: int = 256
    lbfgs_steps: int = 1000
    n_collocation_lbfgs: int = 2048
    lbfgs_memory: int = 20
    tol: float = 1e-2
    tol_window: int = 50
    lbfgs_batch: int = 1
    lambda_data: float = 1.0
    lambda_physics: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in (
            "width",
            "depth",
            "fourier_modes",
            "n_collocation",
            "n_collocation_lbfgs",
            "lbfgs_memory",
            "tol_window",
            "lbfgs_batch",
        ):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 1):
                raise ValueError(f"PINNConfig.{name} must be a positive integer, got {v!r}.")
        for name in ("adam_steps", "lbfgs_steps"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 0):
                raise ValueError(f"PINNConfig.{name} must be an integer >= 0, got {v!r}.")
        if self.adam_steps == 0 and self.lbfgs_steps == 0:
            raise ValueError(
                "PINNConfig: adam_steps and lbfgs_steps are both 0, so nothing is trained; "
                "make at least one positive."
            )
        if not _is_int(self.seed):
            raise ValueError(f"PINNConfig.seed must be an integer, got {self.seed!r}.")
        if not (_is_real(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"PINNConfig.lr must be a finite number > 0, got {self.lr!r}.")
        f = self.lr_final_fraction
        if not (_is_real(f) and 0 < f <= 1):
            raise ValueError(f"PINNConfig.lr_final_fraction must be in (0, 1], got {f!r}.")
        if not (_is_real(self.tol) and math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"PINNConfig.tol must be a finite number >= 0, got {self.tol!r}.")
        for name in ("lambda_data", "lambda_physics"):
            v = getattr(self, name)
            if not (_is_real(v) and math.isfinite(v) and v >= 0):
                raise ValueError(f"PINNConfig.{name} must be a finite number >= 0, got {v!r}.")
        if self.lambda_data == 0 and self.lambda_physics == 0:
            raise ValueError(
                "PINNConfig: lambda_data and lambda_physics are both 0, so nothing is fitted; "
                "make at least one positive."
            )

    @property
    def criterion(self) -> str:
        """The L-BFGS stopping rule in words, for reports."""
        if self.lbfgs_steps == 0:
            return "no L-BFGS phase"
        if self.tol == 0:
            return f"no convergence test (tol = 0): all {self.lbfgs_steps} L-BFGS iterations"
        return (
            f"L-BFGS stops (converged) once the loss falls by less than {self.tol:.3g} "
            f"(relative) over {self.tol_window} iterations"
        )


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


class PINN(eqx.Module):
    r"""A network ``u(x, t)`` for one trajectory on a periodic domain.

    The input is the exactly periodic embedding
    ``[sin(2π m x / L), cos(2π m x / L)]_{m=1…M}`` together with the normalised time
    ``2 t / T - 1`` (``T`` = `t_span`); an MLP with ``depth`` hidden ``tanh`` layers of
    ``width`` units and a linear scalar output maps it to ``u``. ``tanh`` is smooth, so
    the fourth ``x``-derivative of the KS residual exists everywhere.

    **Arguments:**

    - `length`: domain length ``L``.
    - `t_span`: length ``T > 0`` of the time interval the network is fitted on.
    - `width`, `depth`, `fourier_modes`: as in `PINNConfig`.
    - `key`: PRNG key for the weights (``equinox.nn.Linear`` initialisation).
    """

    layers: tuple[eqx.nn.Linear, ...]
    length: float = eqx.field(static=True)
    t_span: float = eqx.field(static=True)
    fourier_modes: int = eqx.field(static=True)

    def __init__(
        self,
        length: float,
        t_span: float,
        width: int = 48,
        depth: int = 4,
        fourier_modes: int = 8,
        *,
        key: PRNGKeyArray,
    ):
        for name, v in (("length", length), ("t_span", t_span)):
            if not (_is_real(v) and math.isfinite(v) and v > 0):
                raise ValueError(f"PINN: {name} must be a finite number > 0, got {v!r}.")
        for name, v in (("width", width), ("depth", depth), ("fourier_modes", fourier_modes)):
            if not (isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"PINN: {name} must be a positive integer, got {v!r}.")
        self.length = float(length)
        self.t_span = float(t_span)
        self.fourier_modes = int(fourier_modes)
        sizes = [2 * self.fourier_modes + 1] + [int(width)] * int(depth) + [1]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(i, o, key=k) for i, o, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )

    def __call__(self, x: ScalarLike, t: ScalarLike) -> Float[Array, ""]:
        """``u(x, t)`` at one point; vmap for many."""
        x, t = _scalars("PINN", x, t)
        h = self._features(x, t)[0]
        for layer in self.layers[:-1]:
            h = jnp.tanh(layer(h))
        return self.layers[-1](h)[0]

    def derivatives(self, x: ScalarLike, t: ScalarLike) -> Float[Array, "6"]:
        r"""``(u, u_x, u_xx, u_xxx, u_xxxx, u_t)`` at one point, by Taylor-mode forward AD.

        The derivatives are pushed through the network alongside the value, as rows of one
        ``(6, width)`` array: the embedding's derivatives are closed-form, an affine layer
        maps every row with one matmul (the bias only enters the value row), and ``tanh``
        applies Faà di Bruno's formula with ``σ' = 1 - σ²``, ``σ'' = -2σσ'``, … . One pass
        costs about six forward passes, against the ``2⁴`` of nested ``jax.jvp``; the
        result is the same (checked in the tests).
        """
        x, t = _scalars("PINN.derivatives", x, t)
        h = self._features(x, t)
        value_row = (jnp.arange(6) == 0).astype(h.dtype)[:, None]
        for layer in self.layers[:-1]:
            h = _tanh_taylor(h @ layer.weight.T + value_row * layer.bias[None, :])
        last = self.layers[-1]
        return (h @ last.weight.T + value_row * last.bias[None, :])[:, 0]

    def _features(self, x, t) -> Float[Array, "6 features"]:
        """Embedding rows ``(φ, φ_x, φ_xx, φ_xxx, φ_xxxx, φ_t)`` of ``[sin, cos, t̂]``."""
        m = jnp.arange(1, self.fourier_modes + 1, dtype=x.dtype)
        k = (2 * jnp.pi / self.length) * m
        s, c = jnp.sin(k * x), jnp.cos(k * x)
        zero = jnp.zeros_like(m)
        # d^j/dx^j of (sin, cos) cycles through (s, c) -> (c, -s) -> (-s, -c) -> (-c, s).
        x_rows = [
            jnp.concatenate([k**j * sj, k**j * cj])
            for j, (sj, cj) in enumerate([(s, c), (c, -s), (-s, -c), (-c, s), (s, c)])
        ]
        t_rows = [2.0 * t / self.t_span - 1.0] + [jnp.zeros_like(t)] * 4 + [2.0 / self.t_span]
        t_col = jnp.stack([jnp.asarray(v, dtype=x.dtype) for v in t_rows])[:, None]
        xs = jnp.stack(x_rows + [jnp.concatenate([zero, zero])])
        return jnp.concatenate([xs, t_col], axis=1)


def _tanh_taylor(z: Float[Array, "6 width"]) -> Float[Array, "6 width"]:
    """Rows ``(y, y_x, …, y_xxxx, y_t)`` of ``y = tanh(z)`` from those of ``z`` (Faà di Bruno)."""
    z0, z1, z2, z3, z4, zt = z
    s = jnp.tanh(z0)
    d1 = 1 - s**2
    d2 = -2 * s * d1
    d3 = -2 * d1**2 - 2 * s * d2
    d4 = -6 * d1 * d2 - 2 * s * d3
    y1 = d1 * z1
    y2 = d2 * z1**2 + d1 * z2
    y3 = d3 * z1**3 + 3 * d2 * z1 * z2 + d1 * z3
    y4 = d4 * z1**4 + 6 * d3 * z1**2 * z2 + d2 * (4 * z1 * z3 + 3 * z2**2) + d1 * z4
    return jnp.stack([s, y1, y2, y3, y4, d1 * zt])


def _scalars(where: str, x, t) -> tuple[Array, Array]:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    t = jnp.asarray(t, dtype=x.dtype)
    if x.shape != () or t.shape != ():
        raise ValueError(
            f"{where} expects scalar x and t, got shapes {x.shape} and {t.shape}; "
            "for many points use jax.vmap."
        )
    return x, t


def pinn_applicable(model) -> bool:
    """Whether `fit_pinn` can use `model`, without tracing anything.

    True for a 1-D periodic model with ``length``, ``n``, ``grid()`` and an implemented
    pointwise residual ``pde_residual`` (one that overrides the raising default of
    `AbstractSpectralModel`), e.g. `KuramotoSivashinsky` and `Burgers`.
    """
    return _missing(model) is None


def _missing(model) -> str | None:
    """Why `model` cannot be used by the PINN, or None if it can."""
    name = type(model).__name__
    absent = [a for a in ("length", "n", "grid", "pde_residual") if not hasattr(model, a)]
    if absent:
        return (
            f"needs a 1-D periodic model with length, n, grid() and pde_residual; "
            f"{name} lacks {', '.join(absent)}"
        )
    if getattr(type(model), "pde_residual", None) is AbstractSpectralModel.pde_residual:
        return (
            f"model {name} has no pointwise residual; implement pde_residual to use the PINN "
            "baseline"
        )
    return None


def _check_model(model, where: str) -> None:
    why = _missing(model)
    if why is not None:
        raise ValueError(f"{where}: {why}.")


def pointwise_residual(
    u: Callable[[Array, Array], Array], model, x: ScalarLike, t: ScalarLike
) -> Float[Array, ""]:
    r"""The model's PDE residual of a function ``u(x, t)`` at one point.

    $$r = u_t - f(u, u_x, u_{xx}, u_{xxx}, u_{xxxx}; θ_s)$$

    as given by ``model.pde_residual`` (e.g. for `KuramotoSivashinsky`
    ``u_t + c u u_x + a u_xx + b u_xxxx + d u_xxx``). For a `PINN` the derivatives come
    from its Taylor-mode pass (`PINN.derivatives`); for any other callable from nested
    forward-mode ``jax.jvp`` in ``x`` (four levels) and one ``jvp`` in ``t``. Gradients flow
    to the network and, unless the caller stops them, to θ_s.

    **Arguments:**

    - `u`: a `PINN`, or any differentiable callable ``(x, t) -> scalar`` (e.g. a closed
      form, for testing).
    - `model`: a model with `pde_residual` (see `pinn_applicable`).
    - `x`, `t`: scalar position and time; vmap for many points.

    **Returns:** the scalar residual (0 for an exact solution).
    """
    _check_model(model, "pointwise_residual")
    x, t = _scalars("pointwise_residual", x, t)
    derivs = u.derivatives(x, t) if isinstance(u, PINN) else _derivatives_jvp(u, x, t)
    return model.pde_residual(tuple(derivs))


def _derivatives_jvp(u, x, t) -> tuple[Array, ...]:
    """``(u, u_x, u_xx, u_xxx, u_xxxx, u_t)`` of a generic callable by nested ``jax.jvp``."""
    one = jnp.ones_like(x)

    def dx(f):
        return lambda x_: jax.jvp(f, (x_,), (one,))[1]

    def f0(x_):
        return jnp.asarray(u(x_, t))

    f2 = dx(dx(f0))
    u0, u1 = jax.jvp(f0, (x,), (one,))
    u2, u3 = jax.jvp(f2, (x,), (one,))
    u4 = dx(dx(f2))(x)
    ut = jax.jvp(lambda t_: jnp.asarray(u(x, t_)), (t,), (jnp.ones_like(t),))[1]
    return u0, u1, u2, u3, u4, ut


def _validate(model, observed, dt, horizon) -> tuple[jax.Array, float, int]:
    _check_model(model, "fit_pinn")
    observed = jnp.asarray(observed)
    if observed.ndim != 3 or observed.shape[-1] != model.n:
        hint = "; for a single trajectory pass observed[None]" if observed.ndim == 2 else ""
        raise ValueError(
            f"fit_pinn expects observed of shape (batch, t_obs, {model.n}), "
            f"got {observed.shape}{hint}."
        )
    if observed.shape[0] < 1:
        raise ValueError("fit_pinn: observed holds no trajectories (batch = 0).")
    if observed.shape[1] < 2:
        raise ValueError(
            f"fit_pinn needs t_obs >= 2 observed states per trajectory, got {observed.shape[1]}."
        )
    if not jnp.issubdtype(observed.dtype, jnp.floating):
        observed = observed.astype(jnp.result_type(float))
    if not bool(jnp.all(jnp.isfinite(observed))):
        raise ValueError("fit_pinn: observed contains NaN or inf; clean or mask the data first.")
    try:
        numeric = np.ndim(dt) == 0 and not isinstance(dt, bool | str | bytes)
        dt_value = float(dt) if numeric else math.nan
    except (TypeError, ValueError):  # not a number, or a traced value
        dt_value = math.nan
    if not (math.isfinite(dt_value) and dt_value > 0):
        raise ValueError(f"fit_pinn needs a finite time step dt > 0 (a Python float), got {dt!r}.")
    if not (isinstance(horizon, int | np.integer) and not isinstance(horizon, bool)):
        raise ValueError(f"fit_pinn: horizon must be an integer >= 0, got {horizon!r}.")
    if horizon < 0:
        raise ValueError(f"fit_pinn: horizon must be an integer >= 0, got {horizon}.")
    return observed, dt_value, int(horizon)


def fit_pinn(
    model,
    observed: Float[Array, "batch t_obs n"],
    dt: float,
    horizon: int,
    config: PINNConfig = PINNConfig(),
) -> tuple[Float[Array, "batch t_obs+horizon n"], dict]:
    r"""Fit one PINN per trajectory with θ_s fixed, and forecast ``horizon`` steps.

    Each trajectory gets its own `PINN` on the span ``[0, T]``, ``T = (t_obs - 1 +
    horizon)·dt``, trained to minimise

    $$\mathcal{L} = \lambda_d\,\tfrac{1}{t_{obs} n}\sum_{k<t_{obs}, j}
      (u(x_j, k\,dt) - o_{kj})^2 + \lambda_p\,\tfrac{1}{N_c}\sum_{i} r(x_i, t_i)^2,$$

    where ``r`` is ``model.pde_residual`` at θ_s as given by `model` (never adapted), in
    two phases:

    1. Adam for ``config.adam_steps`` steps, learning rate cosine-decayed from
       ``config.lr`` to ``config.lr · config.lr_final_fraction``, with ``N_c =
       config.n_collocation`` points redrawn uniformly in ``[0, L) × [0, T]`` every step;
    2. L-BFGS (``optax.lbfgs``, zoom line search) for at most ``config.lbfgs_steps``
       iterations on ``N_c = config.n_collocation_lbfgs`` points drawn once and fixed,
       stopped per trajectory by the criterion of `PINNConfig` (relative loss decrease
       below ``tol`` over ``tol_window`` iterations).

    The physics term over ``t > (t_obs-1)·dt`` is what makes the network forecast. All
    trajectories train in one compiled program: the Adam phase under ``jax.vmap`` over the
    batch (``lax.scan`` over the steps); the L-BFGS phase as a ``lax.while_loop`` per
    trajectory, ``config.lbfgs_batch`` trajectories at a time under ``jax.vmap``
    (``lax.map`` over the groups). Under ``vmap`` the loop runs until every member has
    stopped and a stopped one is frozen (its update is masked out), so each trajectory's
    result is what it would get alone (up to rounding), whatever ``lbfgs_batch``.
    Trajectory ``i`` uses keys ``fold_in(key(config.seed), i)``. The learning rate, its
    decay, ``tol`` and the loss weights are traced, so changing them does not recompile;
    the architecture, step counts, collocation sizes, ``dt`` and the shapes do.

    **Arguments:**

    - `model`: any 1-D periodic model with ``length``, ``n``, ``grid()`` and an
      implemented ``pde_residual`` (`KuramotoSivashinsky`, `Burgers`; see
      `pinn_applicable`); anything else raises `ValueError`.
    - `observed`: observed windows, shape ``(batch, t_obs, n)``, ``t_obs >= 2``, on
      ``model.grid()`` at times ``k·dt``; for one trajectory pass ``observed[None]``.
    - `dt`: time between consecutive states (> 0).
    - `horizon`: number of steps to forecast after the window (>= 0).
    - `config`: a `PINNConfig`.

    **Returns:** ``(predictions, info)``: ``predictions`` of shape
    ``(batch, t_obs + horizon, n)``, the trained PINNs on ``model.grid()`` at times
    ``k·dt``, ``k = 0 … t_obs+horizon-1`` (the first ``t_obs`` reproduce the window, the
    rest are the forecast); ``info`` with, per trajectory (arrays of shape ``(batch,)``):

    - ``"final_loss"``: ``\mathcal{L}`` at the end, on the fixed L-BFGS collocation set
      (``= λ_d·final_data_loss + λ_p·final_physics_loss``);
    - ``"adam_loss"``: the same objective after the Adam phase, before L-BFGS;
    - ``"final_data_loss"``: mean squared misfit on the window;
    - ``"final_physics_loss"``: mean squared residual on the fixed collocation set;
    - ``"grid_physics_loss"``: mean squared residual on the prediction grid (window and
      forecast), points L-BFGS never saw (a check of over-fitting the fixed set);
    - ``"lbfgs_iterations"``: L-BFGS iterations used (int);
    - ``"converged"``: whether the convergence criterion stopped L-BFGS (bool);

    and ``"seconds"`` (float, wall time of the whole batch including compilation).

    Reference: the Adam-then-L-BFGS schedule is that of Raissi et al. (2019) and of most
    PINN benchmarks since (e.g. Krishnapriyan et al., NeurIPS 2021).
    """
    observed, dt, horizon = _validate(model, observed, dt, horizon)
    start = time.perf_counter()
    batch = observed.shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), i))(jnp.arange(batch))
    # The architecture, step counts and set sizes shape the program; the rates, tolerance
    # and weights are traced, so sweeping them (or switching the physics off) reuses one
    # compilation.
    arch = (
        config.width,
        config.depth,
        config.fourier_modes,
        config.adam_steps,
        config.n_collocation,
        config.lbfgs_steps,
        config.n_collocation_lbfgs,
        config.lbfgs_memory,
        config.tol_window,
        config.lbfgs_batch,
    )
    traced = (
        config.lr,
        config.lr_final_fraction,
        config.tol,
        config.lambda_data,
        config.lambda_physics,
    )
    traced = jnp.asarray(traced, observed.dtype)
    preds, info = _fit(model, observed, keys, traced, dt, horizon, arch)
    preds = jax.block_until_ready(preds)
    info = dict(info)
    info["seconds"] = time.perf_counter() - start
    return preds, info


@eqx.filter_jit
def _fit(model, observed, keys, traced, dt: float, horizon: int, arch: tuple[int, ...]):
    """Train one PINN per window of `observed`; returns (predictions, info of (batch,))."""
    width, depth, modes, adam_steps, n_coll, lbfgs_steps, n_coll_lbfgs, memory, window, chunk = arch
    lr, lr_final_fraction, tol, lambda_data, lambda_physics = traced
    _, t_obs, n = observed.shape
    dtype = observed.dtype
    t_span = (t_obs - 1 + horizon) * dt
    # θ_s is fixed: the coefficients enter as constants, outside the differentiated tree.
    model = jax.lax.stop_gradient(model)

    def init(key):
        pinn = PINN(model.length, t_span, width, depth, modes, key=key)
        pinn = jax.tree_util.tree_map(
            lambda p: p.astype(dtype) if eqx.is_inexact_array(p) else p, pinn
        )
        return eqx.partition(pinn, eqx.is_inexact_array)

    _, static = init(jax.random.key(0))  # the non-array part, shared by every trajectory

    grid = jnp.asarray(model.grid()).astype(dtype)
    times = jnp.arange(t_obs + horizon, dtype=dtype) * dt
    xs_obs = jnp.broadcast_to(grid[None, :], (t_obs, n))
    ts_obs = jnp.broadcast_to(times[:t_obs, None], (t_obs, n))
    xs_all = jnp.broadcast_to(grid[None, :], (times.shape[0], n))
    ts_all = jnp.broadcast_to(times[:, None], (times.shape[0], n))

    def field(p, xs, ts):
        net = eqx.combine(p, static)
        return jax.vmap(jax.vmap(net))(xs, ts)

    def data_loss(p, obs):
        return jnp.mean((field(p, xs_obs, ts_obs) - obs) ** 2)

    def physics_loss(p, xs, ts):
        net = eqx.combine(p, static)
        r = jax.vmap(lambda x, t: model.pde_residual(net.derivatives(x, t)))(xs.ravel(), ts.ravel())
        return jnp.mean(r**2)

    def loss(p, obs, xc, tc):
        return lambda_data * data_loss(p, obs) + lambda_physics * physics_loss(p, xc, tc)

    def draw(k, size):
        kx, kt = jax.random.split(k)
        xc = jax.random.uniform(kx, (size,), dtype, 0.0, model.length)
        tc = jax.random.uniform(kt, (size,), dtype, 0.0, t_span)
        return xc, tc

    # Phase 1, all trajectories under vmap: Adam on a cosine-decayed rate, collocation
    # points redrawn every step; then the fixed collocation set of phase 2 is drawn.
    def adam_phase(obs, key):
        init_key, adam_key, fixed_key = jax.random.split(key, 3)
        params = init(init_key)[0]
        if adam_steps > 0:
            schedule = optax.cosine_decay_schedule(lr, adam_steps, alpha=lr_final_fraction)
            adam = optax.adam(schedule)

            def step(carry, k):
                p, state = carry
                grads = jax.grad(loss)(p, obs, *draw(k, n_coll))
                updates, state = adam.update(grads, state, p)
                return (optax.apply_updates(p, updates), state), None

            (params, _), _ = jax.lax.scan(
                step, (params, adam.init(params)), jax.random.split(adam_key, adam_steps)
            )
        return params, draw(fixed_key, n_coll_lbfgs)

    params, fixed = jax.vmap(adam_phase)(observed, keys)

    # Phase 2, `chunk` trajectories at a time under vmap (lax.map over the chunks):
    # L-BFGS on the fixed set, a deterministic objective.
    def lbfgs_phase(args):
        p, obs, (xc, tc) = args

        def objective(q):
            return loss(q, obs, xc, tc)

        adam_loss = objective(p)
        p, iterations, converged = _lbfgs(objective, p, adam_loss, lbfgs_steps, memory, window, tol)
        return p, adam_loss, iterations, converged

    params, adam_loss, iterations, converged = jax.lax.map(
        lbfgs_phase, (params, observed, fixed), batch_size=None if chunk == 1 else chunk
    )

    def evaluate(p, obs, xc_tc):
        d_loss, p_loss = data_loss(p, obs), physics_loss(p, *xc_tc)
        return field(p, xs_all, ts_all), d_loss, p_loss, physics_loss(p, xs_all, ts_all)

    preds, d_loss, p_loss, grid_loss = jax.vmap(evaluate)(params, observed, fixed)
    info = {
        "final_loss": lambda_data * d_loss + lambda_physics * p_loss,
        "adam_loss": adam_loss,
        "final_data_loss": d_loss,
        "final_physics_loss": p_loss,
        "grid_physics_loss": grid_loss,
        "lbfgs_iterations": iterations,
        "converged": converged,
    }
    return preds, info


def _lbfgs(
    objective: Callable,
    params,
    value0: Float[Array, ""],
    max_steps: int,
    memory: int,
    window: int,
    tol: Float[Array, ""],
) -> tuple[object, Int[Array, ""], Bool[Array, ""]]:
    """Minimise a deterministic `objective` by L-BFGS from `params`, with the stopping
    rule of `PINNConfig` (relative decrease below `tol` over `window` iterations).

    Returns ``(params, iterations, converged)``. Written for one trajectory; under
    ``jax.vmap`` the ``while_loop`` runs until every member stops and freezes (selects the
    old carry of) those that already have.
    """
    if max_steps == 0:
        return params, jnp.zeros((), jnp.int32), jnp.zeros((), bool)
    opt = optax.lbfgs(memory_size=memory)
    tiny = jnp.finfo(value0.dtype).tiny
    # history[j % window] holds the loss after iteration j, so at iteration k the slot
    # read before it is overwritten holds the loss of iteration k - window.
    history = jnp.full((window,), jnp.inf, value0.dtype).at[0].set(value0)
    # The value and gradient at the current point are carried (the line search returns
    # them at the accepted point), so each iteration differentiates the objective only
    # inside the line search.
    init = (
        params,
        opt.init(params),
        jax.grad(objective)(params),
        jnp.zeros((), jnp.int32),
        history,
        jnp.zeros((), bool),
        jnp.zeros((), bool),
    )

    def cond(carry):
        _, _, _, k, _, stopped, _ = carry
        return (~stopped) & (k < max_steps)

    def body(carry):
        p, state, grad, k, history, _, _ = carry
        value = history[k % window]
        updates, new_state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        new_p = optax.apply_updates(p, updates)
        new_value = otu.tree_get(new_state, "value")
        new_grad = otu.tree_get(new_state, "grad")
        k = k + 1
        finite = jnp.isfinite(new_value) & jnp.isfinite(otu.tree_norm(updates))
        old = history[k % window]
        decrease = (old - new_value) / jnp.maximum(jnp.abs(old), tiny)
        converged = finite & (k >= window) & (decrease < tol)
        # A non-finite step is discarded and stops this trajectory, unconverged.
        p, state, grad = jax.tree_util.tree_map(
            lambda a, b: jnp.where(finite, a, b), (new_p, new_state, new_grad), (p, state, grad)
        )
        history = history.at[k % window].set(jnp.where(finite, new_value, value))
        return p, state, grad, k, history, converged | ~finite, converged

    params, _, _, iterations, _, _, converged = jax.lax.while_loop(cond, body, init)
    return params, iterations, converged


__all__ = ["PINN", "PINNConfig", "fit_pinn", "pinn_applicable", "pointwise_residual"]
