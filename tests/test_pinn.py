"""PINN baseline: model-supplied pointwise residuals against closed forms, the Adam then
L-BFGS training and its convergence criterion, extrapolation through the physics loss on
an exact linear-KS mode, and input validation."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scilayers.baselines import PINN, PINNConfig, fit_pinn, pinn_applicable, pointwise_residual
from scilayers.baselines._pinn import _derivatives_jvp
from scilayers.models import AbstractSpectralModel, Burgers, KuramotoSivashinsky, Lorenz96

# ---------------------------------------------------------------------------------------
# The residual against closed forms
# ---------------------------------------------------------------------------------------

# u = A sin(k x + φ) e^{-σ t}, with k = 2π m / L: every derivative is closed-form.
A, PHI, SIGMA = 1.3, 0.4, 0.7


def _mode(length, m):
    k = 2 * math.pi * m / length

    def u(x, t):
        return A * jnp.sin(k * x + PHI) * jnp.exp(-SIGMA * t)

    def residual(x, t, a, b, c, d, e):
        s, co, g = np.sin(k * x + PHI), np.cos(k * x + PHI), np.exp(-SIGMA * t)
        u0, ux = A * s * g, A * k * co * g
        uxx, uxxx, uxxxx = -(k**2) * u0, -(k**3) * A * co * g, k**4 * u0
        # (u_x²)_x = 2 u_x u_xx
        return -SIGMA * u0 + c * u0 * ux + a * uxx + b * uxxxx + d * uxxx - 2 * e * ux * uxx

    return u, residual


@pytest.mark.parametrize(
    "length, m, a, b, c, d, e",
    [
        (22.0, 3, 1.0, 1.0, 1.0, 0.0, None),
        (22.0, 2, 0.8, 1.25, 1.0, 0.5, None),
        (2 * math.pi, 1, 0.3, 2.0, -1.7, -0.9, None),
        (22.0, 1, 1.0, 1.0, 1.0, None, None),
        (44.0, 4, 1.0, 1.0, 1.0, None, 0.6),
    ],
)
def test_ks_residual_matches_closed_form(length, m, a, b, c, d, e):
    model = KuramotoSivashinsky(length, 16, a=a, b=b, c=c, d=d, e=e)
    u, exact = _mode(length, m)
    xs = np.linspace(0.0, length, 7, endpoint=False) + 0.13
    ts = np.linspace(0.0, 2.0, 7)
    residual = jax.jit(jax.vmap(lambda x, t: pointwise_residual(u, model, x, t)))
    got = residual(jnp.asarray(xs), jnp.asarray(ts))
    want = exact(xs, ts, a, b, c, 0.0 if d is None else d, 0.0 if e is None else e)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-10)


def test_pde_residual_by_hand():
    """A constant is a KS solution; a hand-picked point gives the hand-computed value."""
    model = KuramotoSivashinsky(22.0, 16, a=0.5, b=2.0, c=3.0, d=-0.25)
    assert float(model.pde_residual((1.7, 0.0, 0.0, 0.0, 0.0, 0.0))) == 0.0
    # u, u_x, u_xx, u_xxx, u_xxxx, u_t = 2, -1, 4, 8, 0.5, 3:
    # 3 + 3·2·(-1) + 0.5·4 + 2·0.5 - 0.25·8 = -2.
    derivs = jnp.asarray([2.0, -1.0, 4.0, 8.0, 0.5, 3.0])
    assert float(model.pde_residual(derivs)) == pytest.approx(-2.0, abs=1e-14)
    assert float(model.pde_residual(tuple(derivs))) == pytest.approx(-2.0, abs=1e-14)
    # With e (u_x²)_x = 2 e u_x u_xx on the right-hand side, e = 0.5: -2 - 2·0.5·(-1)·4 = 2.
    with_e = KuramotoSivashinsky(22.0, 16, a=0.5, b=2.0, c=3.0, d=-0.25, e=0.5)
    assert float(with_e.pde_residual(derivs)) == pytest.approx(2.0, abs=1e-14)
    # Burgers (KdV–Burgers with δ): 3 + 2·(-1) - 0.1·4 + 0.2·8 = 2.2.
    burgers = Burgers(n=16, nu=0.1, delta=0.2)
    assert float(burgers.pde_residual(derivs)) == pytest.approx(2.2, abs=1e-14)


def _burgers_cole_hopf(nu, k, a0, a1, speed):
    r"""Exact periodic viscous Burgers solution by Cole–Hopf, moved at speed ``speed``.

    ``φ = a0 + a1 e^{-ν k² t} cos(k x)`` solves the heat equation, so
    ``v = -2ν φ_x / φ`` solves ``v_t + v v_x = ν v_xx``, and by Galilean invariance so does
    ``u(x, t) = speed + v(x - speed·t, t)``.
    """

    def u(x, t):
        xi = x - speed * t
        e = a1 * jnp.exp(-nu * k**2 * t)
        return speed + 2 * nu * k * e * jnp.sin(k * xi) / (a0 + e * jnp.cos(k * xi))

    return u


@pytest.mark.parametrize("nu, m, speed", [(0.1, 1, 0.0), (0.05, 2, 0.7), (0.3, 1, -1.2)])
def test_burgers_residual_vanishes_on_an_exact_solution(nu, m, speed):
    length = 2 * math.pi
    model = Burgers(length, 16, nu=nu)
    u = _burgers_cole_hopf(nu, 2 * math.pi * m / length, 1.0, 0.8, speed)
    xs = jnp.linspace(0.0, length, 11, endpoint=False) + 0.05
    ts = jnp.linspace(0.0, 3.0, 11)
    got = jax.jit(jax.vmap(lambda x, t: pointwise_residual(u, model, x, t)))(xs, ts)
    # The convective term is ten orders above the tolerance: a zero residual is a real
    # cancellation.
    d = jax.vmap(lambda x, t: jnp.stack(_derivatives_jvp(u, x, t)))(xs, ts)
    assert float(jnp.max(jnp.abs(d[:, 0] * d[:, 1]))) > 0.02
    np.testing.assert_allclose(np.asarray(got), 0.0, atol=1e-12)
    # A wrong viscosity is detected: the residual is then (ν - ν') u_xx ≠ 0.
    wrong = Burgers(length, 16, nu=2 * nu)
    bad = jax.vmap(lambda x, t: pointwise_residual(u, wrong, x, t))(xs, ts)
    assert float(jnp.max(jnp.abs(bad))) > 1e-3


def test_pde_residual_rejects_wrong_shapes():
    model = KuramotoSivashinsky(22.0, 16)
    with pytest.raises(ValueError, match=r"\(u, u_x, u_xx, u_xxx, u_xxxx, u_t\).*jax.vmap"):
        model.pde_residual(jnp.zeros((3, 6)))
    with pytest.raises(ValueError, match="5 entries"):
        Burgers(n=16).pde_residual((0.0,) * 5)


def test_pinn_taylor_derivatives_match_nested_jvp():
    """The PINN's Taylor-mode pass equals nested forward-mode AD of its plain forward."""
    pinn = PINN(22.0, 3.0, width=8, depth=2, fourier_modes=3, key=jax.random.key(0))
    model = KuramotoSivashinsky(22.0, 16, a=0.8, b=1.25, c=1.0, d=0.4)
    xs = jax.random.uniform(jax.random.key(1), (9,), maxval=22.0)
    ts = jax.random.uniform(jax.random.key(2), (9,), maxval=3.0)

    @jax.jit
    def evaluate(xs, ts):
        fast = jax.vmap(pinn.derivatives)(xs, ts)
        ref = jnp.stack(jax.vmap(lambda x, t: _derivatives_jvp(pinn, x, t))(xs, ts), axis=-1)
        # pointwise_residual takes the fast path for a PINN, the generic one otherwise.
        r_fast = jax.vmap(lambda x, t: pointwise_residual(pinn, model, x, t))(xs, ts)
        generic = lambda x_, t_: pinn(x_, t_)  # noqa: E731
        r_ref = jax.vmap(lambda x, t: pointwise_residual(generic, model, x, t))(xs, ts)
        return fast, ref, jax.vmap(pinn)(xs, ts), r_fast, r_ref

    fast, ref, value, r_fast, r_ref = evaluate(xs, ts)
    np.testing.assert_allclose(fast, ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fast[:, 0], value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r_fast, r_ref, rtol=1e-10, atol=1e-10)


def test_pinn_is_exactly_periodic():
    length = 22.0
    pinn = PINN(length, 1.0, width=8, depth=2, fourier_modes=3, key=jax.random.key(3))
    ts = jnp.linspace(0.0, 1.0, 5)
    ends = jax.jit(jax.vmap(jax.vmap(pinn.derivatives, (None, 0)), (0, None)))
    left, right = ends(jnp.asarray([0.0, length]), ts)
    np.testing.assert_allclose(left, right, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Which models the PINN accepts
# ---------------------------------------------------------------------------------------


class _Heat(AbstractSpectralModel):
    """A periodic model that does not implement `pde_residual`."""

    length: float = eqx.field(static=True)
    n: int = eqx.field(static=True)

    def __init__(self, length=2 * math.pi, n=16):
        self.length, self.n = length, n

    def linear_operator(self):
        return -(self.wavenumbers() ** 2)

    def nonlinear_hat(self, u_hat, mask=None, u=None):
        return jnp.zeros_like(u_hat)


def test_pinn_applicable_reports_which_models_have_a_residual():
    assert pinn_applicable(KuramotoSivashinsky(22.0, 16))
    assert pinn_applicable(Burgers(n=16))
    assert not pinn_applicable(_Heat())
    assert not pinn_applicable(Lorenz96(8))


def test_a_model_without_a_residual_raises_the_clear_error():
    msg = "model _Heat has no pointwise residual; implement pde_residual to use the PINN"
    with pytest.raises(NotImplementedError, match=msg):
        _Heat().pde_residual((0.0,) * 6)
    with pytest.raises(ValueError, match=msg):
        fit_pinn(_Heat(), jnp.zeros((1, 3, 16)), 0.1, 1, TINY)
    with pytest.raises(ValueError, match=msg):
        pointwise_residual(lambda x, t: x * t, _Heat(), 0.0, 0.0)
    with pytest.raises(ValueError, match="Lorenz96 lacks length, n, grid, pde_residual"):
        fit_pinn(Lorenz96(16), jnp.zeros((1, 3, 16)), 0.1, 1, TINY)


# ---------------------------------------------------------------------------------------
# Training: Adam, then L-BFGS to the convergence criterion
# ---------------------------------------------------------------------------------------


def _burgers_problem():
    """Two Cole–Hopf Burgers windows (ν = 0.1) of 4 states, forecasting 4 more."""
    nu, dt, t_obs, horizon = 0.1, 0.25, 4, 4
    model = Burgers(2 * math.pi, 16, nu=nu)
    x = model.grid()
    times = jnp.arange(t_obs + horizon) * dt
    truth = jnp.stack(
        [
            jax.vmap(lambda t, s=s: _burgers_cole_hopf(nu, 1.0, 1.0, 0.6, s)(x, t))(times)
            for s in (0.0, 0.5)
        ]
    )
    return model, truth, dt, t_obs, horizon


SMALL = PINNConfig(
    width=12,
    depth=2,
    fourier_modes=2,
    adam_steps=50,
    n_collocation=32,
    lbfgs_steps=300,
    n_collocation_lbfgs=96,
    tol_window=10,
    lbfgs_batch=2,  # both trajectories under vmap: the case where freezing matters
)


@pytest.fixture(scope="module")
def burgers_fits():
    """Two fits on one compiled program (tol is traced): tol = 0 never stops; tol = 0.1
    stops each trajectory once its loss falls by < 10 % over 10 iterations."""
    model, truth, dt, t_obs, horizon = _burgers_problem()
    observed = truth[:, :t_obs]
    full = fit_pinn(model, observed, dt, horizon, dataclasses.replace(SMALL, tol=0.0))
    early = fit_pinn(model, observed, dt, horizon, dataclasses.replace(SMALL, tol=1e-1))
    return (model, observed, dt, horizon), full, early


def test_lbfgs_lowers_the_loss_below_adam_alone(burgers_fits):
    """L-BFGS starts from the Adam result, whose loss is ``adam_loss``; it must end far
    below it (it would equal it if L-BFGS did nothing)."""
    _, (preds, info), _ = burgers_fits
    np.testing.assert_allclose(
        info["final_loss"], info["final_data_loss"] + info["final_physics_loss"], rtol=1e-12
    )
    assert np.all(info["final_loss"] < 1e-2 * info["adam_loss"]), (
        info["final_loss"],
        info["adam_loss"],
    )
    # tol = 0 never triggers: every trajectory uses the whole budget and is unconverged.
    np.testing.assert_array_equal(info["lbfgs_iterations"], [300, 300])
    np.testing.assert_array_equal(info["converged"], [False, False])
    assert info["converged"].dtype == bool
    assert np.all(np.isfinite(preds))


def test_convergence_criterion_stops_each_trajectory(burgers_fits):
    _, (_, full), (_, early) = burgers_fits
    its = np.asarray(early["lbfgs_iterations"])
    np.testing.assert_array_equal(early["converged"], [True, True])
    assert np.all((its >= 10) & (its < 300)), its
    # Same Adam phase; stopping early leaves the loss at or above the full-budget one.
    assert np.all(early["final_loss"] >= full["final_loss"])
    np.testing.assert_allclose(early["adam_loss"], full["adam_loss"], rtol=1e-12)


def test_a_stopped_trajectory_is_frozen_under_vmap(burgers_fits):
    """Trajectory 0 is fitted next to two partners that stop at other iterations, one of
    them after it: the same result both times, so it was frozen while that partner ran."""
    (model, observed, dt, horizon), _, (preds, info) = burgers_fits
    its = np.asarray(info["lbfgs_iterations"])
    partner = observed[:1] * 1.3  # trajectory 1 of the new batch: a different window
    preds2, info2 = fit_pinn(
        model,
        jnp.concatenate([observed[:1], partner]),
        dt,
        horizon,
        dataclasses.replace(SMALL, tol=1e-1),
    )
    its2 = np.asarray(info2["lbfgs_iterations"])
    assert its[0] == its2[0] and its[0] < max(its[1], its2[1]), (its, its2)
    assert its2[1] != its[1], (its, its2)
    np.testing.assert_allclose(preds2[0], preds[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(info2["final_loss"][0], info["final_loss"][0], rtol=1e-9)


def test_lbfgs_batch_does_not_change_the_result(burgers_fits):
    """One trajectory after another (``lbfgs_batch=1``, the default: real conditionals,
    no vmap) gives what both together under vmap give, up to rounding: batched and
    unbatched float64 arithmetic differ in the last bits, and ~100 L-BFGS iterations
    amplify that to ~1e-6 here (the field is of order 0.1)."""
    (model, observed, dt, horizon), _, (preds, info) = burgers_fits
    cfg = dataclasses.replace(SMALL, tol=1e-1, lbfgs_batch=1)
    preds1, info1 = fit_pinn(model, observed, dt, horizon, cfg)
    np.testing.assert_array_equal(info1["lbfgs_iterations"], info["lbfgs_iterations"])
    np.testing.assert_array_equal(info1["converged"], info["converged"])
    np.testing.assert_allclose(preds1, preds, atol=1e-4)
    np.testing.assert_allclose(info1["final_loss"], info["final_loss"], rtol=1e-2)


# ---------------------------------------------------------------------------------------
# Extrapolation through the physics loss
# ---------------------------------------------------------------------------------------


def test_physics_loss_makes_the_pinn_extrapolate_a_linear_ks_mode():
    """Linear KS (c = d = 0) on [0, 2π): u = sin(x + φ) e^{λt}, λ = a k² - b k⁴ = 0.5.

    Fitted on four states (t ∈ [0, 0.6]) and forecasting seven more (to t = 2, where the
    mode has grown e-fold), the PINN whose residual is enforced beyond the window follows
    the growth; the same network without the physics term cannot know it.
    """
    a, b, k = 1.0, 0.5, 1.0
    lam = a * k**2 - b * k**4
    model = KuramotoSivashinsky(2 * math.pi, 16, a=a, b=b, c=0.0, d=0.0)
    dt, t_obs, horizon = 0.2, 4, 7
    x = model.grid()
    times = jnp.arange(t_obs + horizon) * dt
    phases = jnp.asarray([0.3, 1.9])
    truth = jnp.sin(k * x[None, None, :] + phases[:, None, None]) * jnp.exp(
        lam * times[None, :, None]
    )
    observed = truth[:, :t_obs]

    base = dict(
        width=16,
        depth=2,
        fourier_modes=2,
        adam_steps=600,
        lbfgs_steps=0,  # Adam alone suffices here (and compiles fast); L-BFGS is tested above
        lr=2e-2,
        lr_final_fraction=0.1,
        n_collocation=96,
        n_collocation_lbfgs=192,
        lambda_data=10.0,
    )
    preds, info = fit_pinn(model, observed, dt, horizon, PINNConfig(**base))
    blind, blind_info = fit_pinn(
        model, observed, dt, horizon, PINNConfig(**base, lambda_physics=0.0)
    )

    assert preds.shape == truth.shape
    assert set(info) == {
        "final_loss",
        "adam_loss",
        "final_data_loss",
        "final_physics_loss",
        "grid_physics_loss",
        "lbfgs_iterations",
        "converged",
        "seconds",
    }
    for name in set(info) - {"seconds"}:
        assert info[name].shape == (2,), name

    def rmse(p, q):
        return float(jnp.sqrt(jnp.mean((p - q) ** 2)))

    # Both fit the window; only the physics-informed one satisfies the equation.
    assert rmse(preds[:, :t_obs], observed) < 0.02
    assert rmse(blind[:, :t_obs], observed) < 0.02
    assert np.all(np.asarray(info["grid_physics_loss"]) < 0.05)
    assert np.all(np.asarray(blind_info["grid_physics_loss"]) > 1.0)
    # And only it forecasts: the amplitude at t = 2 is e ≈ 2.7.
    err = rmse(preds[:, t_obs:], truth[:, t_obs:])
    err_blind = rmse(blind[:, t_obs:], truth[:, t_obs:])
    assert err < 0.05, err
    assert err_blind > 0.2, err_blind
    assert err < 0.25 * err_blind, (err, err_blind)


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

TINY = PINNConfig(width=4, depth=1, fourier_modes=1, adam_steps=1, lbfgs_steps=0, n_collocation=4)


@pytest.mark.parametrize(
    "shape, fill, dt, horizon, match",
    [
        ((4, 16), 0.0, 0.1, 2, r"\(batch, t_obs, 16\).*observed\[None\]"),
        ((1, 4, 8), 0.0, 0.1, 2, r"shape \(batch, t_obs, 16\)"),
        ((1, 1, 16), 0.0, 0.1, 2, "t_obs >= 2"),
        ((1, 4, 16), math.nan, 0.1, 2, "NaN"),
        ((1, 4, 16), math.inf, 0.1, 2, "NaN or inf"),
        ((1, 4, 16), 0.0, 0.0, 2, "dt > 0"),
        ((1, 4, 16), 0.0, -0.1, 2, "dt > 0"),
        ((1, 4, 16), 0.0, "0.1", 2, "dt > 0"),
        ((1, 4, 16), 0.0, math.inf, 2, "dt > 0"),
        ((1, 4, 16), 0.0, 0.1, -1, "horizon must be an integer >= 0"),
        ((1, 4, 16), 0.0, 0.1, 1.5, "horizon must be an integer >= 0"),
    ],
)
def test_fit_pinn_rejects_bad_inputs(shape, fill, dt, horizon, match):
    model = KuramotoSivashinsky(22.0, 16)
    observed = jnp.zeros(shape).at[..., 0, 0].set(fill)
    with pytest.raises(ValueError, match=match):
        fit_pinn(model, observed, dt, horizon, TINY)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("width", 0, "width must be a positive integer"),
        ("depth", -1, "depth must be a positive integer"),
        ("fourier_modes", 2.0, "fourier_modes must be a positive integer"),
        ("adam_steps", True, "adam_steps must be an integer >= 0"),
        ("adam_steps", -1, "adam_steps must be an integer >= 0"),
        ("lbfgs_steps", 1.0, "lbfgs_steps must be an integer >= 0"),
        ("n_collocation", 0, "n_collocation must be a positive integer"),
        ("n_collocation_lbfgs", 0, "n_collocation_lbfgs must be a positive integer"),
        ("lbfgs_memory", 0, "lbfgs_memory must be a positive integer"),
        ("tol_window", 0, "tol_window must be a positive integer"),
        ("lr", 0.0, "lr must be a finite number > 0"),
        ("lr_final_fraction", 0.0, r"lr_final_fraction must be in \(0, 1\]"),
        ("lr_final_fraction", 1.5, r"lr_final_fraction must be in \(0, 1\]"),
        ("tol", -1e-3, "tol must be a finite number >= 0"),
        ("tol", math.inf, "tol must be a finite number >= 0"),
        ("lambda_data", -1.0, "lambda_data must be a finite number >= 0"),
        ("lambda_physics", math.nan, "lambda_physics must be a finite number >= 0"),
        ("seed", 0.5, "seed must be an integer"),
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        PINNConfig(**{field: value})


def test_config_states_its_criterion():
    assert "less than 0.01 (relative) over 50 iterations" in PINNConfig().criterion
    assert PINNConfig(lbfgs_steps=0).criterion == "no L-BFGS phase"
    assert "tol = 0" in PINNConfig(tol=0.0).criterion


def test_config_rejects_all_zero_weights_or_steps():
    with pytest.raises(ValueError, match="nothing is fitted"):
        PINNConfig(lambda_data=0.0, lambda_physics=0.0)
    with pytest.raises(ValueError, match="nothing is trained"):
        PINNConfig(adam_steps=0, lbfgs_steps=0)


def test_scalar_inputs_only():
    pinn = PINN(22.0, 1.0, width=4, depth=1, fourier_modes=1, key=jax.random.key(0))
    model = KuramotoSivashinsky(22.0, 16)
    with pytest.raises(ValueError, match="use jax.vmap"):
        pointwise_residual(pinn, model, jnp.zeros(3), 0.0)
    with pytest.raises(ValueError, match="use jax.vmap"):
        pinn(0.0, jnp.zeros(2))
