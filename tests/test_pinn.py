"""PINN baseline: residual by AD against closed forms, extrapolation through the physics
loss on an exact linear-KS mode, and input validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scilayers.baselines._pinn import PINN, PINNConfig, _derivatives_jvp, fit_pinn, ks_residual
from scilayers.models import Burgers, KuramotoSivashinsky

# ---------------------------------------------------------------------------------------
# The residual against closed forms
# ---------------------------------------------------------------------------------------

# u = A sin(k x + φ) e^{-σ t}, with k = 2π m / L: every derivative is closed-form.
A, PHI, SIGMA = 1.3, 0.4, 0.7


def _mode(length, m):
    k = 2 * math.pi * m / length

    def u(x, t):
        return A * jnp.sin(k * x + PHI) * jnp.exp(-SIGMA * t)

    def residual(x, t, a, b, c, d):
        s, co, e = np.sin(k * x + PHI), np.cos(k * x + PHI), np.exp(-SIGMA * t)
        u0, ux = A * s * e, A * k * co * e
        uxx, uxxx, uxxxx = -(k**2) * u0, -(k**3) * A * co * e, k**4 * u0
        return -SIGMA * u0 + c * u0 * ux + a * uxx + b * uxxxx + d * uxxx

    return u, residual


@pytest.mark.parametrize(
    "length, m, a, b, c, d",
    [
        (22.0, 3, 1.0, 1.0, 1.0, 0.0),
        (22.0, 2, 0.8, 1.25, 1.0, 0.5),
        (2 * math.pi, 1, 0.3, 2.0, -1.7, -0.9),
    ],
)
def test_ks_residual_matches_closed_form(length, m, a, b, c, d):
    model = KuramotoSivashinsky(length, 16, a=a, b=b, c=c, d=d)
    u, exact = _mode(length, m)
    xs = np.linspace(0.0, length, 7, endpoint=False) + 0.13
    ts = np.linspace(0.0, 2.0, 7)
    residual = jax.jit(jax.vmap(lambda x, t: ks_residual(u, model, x, t)))
    got = residual(jnp.asarray(xs), jnp.asarray(ts))
    want = exact(xs, ts, a, b, c, d)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-10)


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
        # ks_residual takes the fast path for a PINN, the generic one for a plain callable.
        r_fast = jax.vmap(lambda x, t: ks_residual(pinn, model, x, t))(xs, ts)
        generic = lambda x_, t_: pinn(x_, t_)  # noqa: E731
        r_ref = jax.vmap(lambda x, t: ks_residual(generic, model, x, t))(xs, ts)
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
        width=16, depth=2, fourier_modes=2, steps=600, lr=1e-2, n_collocation=96, lambda_data=10.0
    )
    preds, info = fit_pinn(model, observed, dt, horizon, PINNConfig(**base))
    blind, blind_info = fit_pinn(
        model, observed, dt, horizon, PINNConfig(**base, lambda_physics=0.0)
    )

    assert preds.shape == truth.shape
    assert set(info) == {"final_data_loss", "final_physics_loss", "seconds"}
    assert info["final_data_loss"].shape == (2,) and info["final_physics_loss"].shape == (2,)

    def rmse(p, q):
        return float(jnp.sqrt(jnp.mean((p - q) ** 2)))

    # Both fit the window; only the physics-informed one satisfies the equation.
    assert rmse(preds[:, :t_obs], observed) < 0.02
    assert rmse(blind[:, :t_obs], observed) < 0.02
    assert np.all(np.asarray(info["final_physics_loss"]) < 0.05)
    assert np.all(np.asarray(blind_info["final_physics_loss"]) > 1.0)
    # And only it forecasts: the amplitude at t = 2 is e ≈ 2.7.
    err = rmse(preds[:, t_obs:], truth[:, t_obs:])
    err_blind = rmse(blind[:, t_obs:], truth[:, t_obs:])
    assert err < 0.05, err
    assert err_blind > 0.2, err_blind
    assert err < 0.25 * err_blind, (err, err_blind)


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

TINY = PINNConfig(width=4, depth=1, fourier_modes=1, steps=1, n_collocation=4)


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


def test_fit_pinn_rejects_a_model_that_is_not_ks():
    with pytest.raises(ValueError, match="KuramotoSivashinsky"):
        fit_pinn(Burgers(n=16), jnp.zeros((1, 3, 16)), 0.1, 1, TINY)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("width", 0, "width must be a positive integer"),
        ("depth", -1, "depth must be a positive integer"),
        ("fourier_modes", 2.0, "fourier_modes must be a positive integer"),
        ("steps", True, "steps must be a positive integer"),
        ("n_collocation", 0, "n_collocation must be a positive integer"),
        ("lr", 0.0, "lr must be a finite number > 0"),
        ("lambda_data", -1.0, "lambda_data must be a finite number >= 0"),
        ("lambda_physics", math.nan, "lambda_physics must be a finite number >= 0"),
        ("seed", 0.5, "seed must be an integer"),
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        PINNConfig(**{field: value})


def test_config_rejects_all_zero_weights():
    with pytest.raises(ValueError, match="nothing is fitted"):
        PINNConfig(lambda_data=0.0, lambda_physics=0.0)


def test_scalar_inputs_only():
    pinn = PINN(22.0, 1.0, width=4, depth=1, fourier_modes=1, key=jax.random.key(0))
    model = KuramotoSivashinsky(22.0, 16)
    with pytest.raises(ValueError, match="use jax.vmap"):
        ks_residual(pinn, model, jnp.zeros(3), 0.0)
    with pytest.raises(ValueError, match="use jax.vmap"):
        pinn(0.0, jnp.zeros(2))
