"""The leading Lyapunov exponent (Benettin): exact on linear maps, the literature value for
Kuramoto–Sivashinsky at L = 22, and zero-ish for a travelling wave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from scilayers.metrics import lyapunov_exponent


def test_linear_map_gives_its_largest_rate():
    """For u -> diag(exp(r_i dt)) u the exponent is max r_i, exactly."""
    rates = jnp.asarray([0.3, -0.5, 0.1])
    dt = 0.1

    def step(u):
        return u * jnp.exp(rates * dt)

    lam = lyapunov_exponent(step, jnp.ones((2, 3)), steps=400, dt=dt, transient=2000)
    np.testing.assert_allclose(lam, 0.3, rtol=1e-6)


def test_renormalisation_interval_does_not_change_the_rate():
    dt = 0.05

    def step(u):  # a rotation with growth: exponent 0.2 whatever the phase
        c, s = jnp.cos(0.3), jnp.sin(0.3)
        return jnp.exp(0.2 * dt) * jnp.stack([c * u[0] - s * u[1], s * u[0] + c * u[1]])

    a = lyapunov_exponent(step, jnp.ones((1, 2)), steps=200, dt=dt, renormalise_every=1)
    b = lyapunov_exponent(step, jnp.ones((1, 2)), steps=200, dt=dt, renormalise_every=20)
    np.testing.assert_allclose(a, 0.2, rtol=1e-6)
    np.testing.assert_allclose(b, 0.2, rtol=1e-6)


def test_kuramoto_sivashinsky_l22_matches_the_literature():
    """Plain KS at L = 22: λ₁ ≈ 0.043–0.048 (Cvitanović, Davidchack & Siminos 2010;
    Edson et al. 2019). Averaged over 6 trajectories of 1000 time units."""
    ks = sl.models.KuramotoSivashinsky(22.0, 64)
    step = sl.solvers.Repeated(sl.solvers.ETDRK4(ks, 0.05), 5)
    keys = jax.random.split(jax.random.key(3), 6)
    u0 = jax.vmap(ks.initial_condition)(keys)
    u0 = jax.vmap(lambda u: sl.solvers.Repeated(step, 400)(u))(u0)  # 100 time units burn-in
    lam = np.asarray(lyapunov_exponent(step, u0, steps=4000, transient=200))
    assert 0.038 < lam.mean() < 0.055, lam


def test_dispersive_ks_is_a_travelling_wave():
    """The study's first truth (d = 0.3 u_xxx) is not chaotic: λ₁ ≈ 0."""
    ks = sl.models.KuramotoSivashinsky(22.0, 64, d=0.3)
    step = sl.solvers.Repeated(sl.solvers.ETDRK4(ks, 0.05), 5)
    u0 = jax.vmap(ks.initial_condition)(jax.random.split(jax.random.key(1), 2))
    u0 = jax.vmap(lambda u: sl.solvers.Repeated(step, 800)(u))(u0)
    lam = np.asarray(lyapunov_exponent(step, u0, steps=1600, transient=200))
    assert np.all(np.abs(lam) < 0.012), lam


def test_bad_arguments():
    with pytest.raises(ValueError, match="dt"):
        lyapunov_exponent(lambda u: u, jnp.ones((1, 2)), steps=4)
    with pytest.raises(ValueError, match="multiple"):
        lyapunov_exponent(lambda u: u, jnp.ones((1, 2)), steps=5, dt=1.0, renormalise_every=2)


def test_the_ks_study_truth_is_chaotic():
    """The KS study's truth (L = 44, e = 0.02 (u_x²)_x) has λ₁ well above 0.02."""
    from scilayers.experiments.ks import PRESETS

    c = PRESETS["quick"]
    ks = sl.models.KuramotoSivashinsky(c.length, c.n_fine, e=c.e_true)
    step = sl.solvers.Repeated(sl.solvers.ETDRK4(ks, c.dt / c.fine_substeps), c.fine_substeps)
    u0 = jax.vmap(ks.initial_condition)(jax.random.split(jax.random.key(2), 2))
    u0 = jax.vmap(lambda u: sl.solvers.Repeated(step, 400)(u))(u0)
    lam = np.asarray(lyapunov_exponent(step, u0, steps=1600, transient=200))
    assert np.all(lam > 0.04), lam


def test_shift_mismatch_detects_translated_copies():
    """The study's independence check: 0 for shifted copies, O(1) for independent states."""
    from scilayers.experiments.ks import _min_shift_mismatch

    rng = np.random.default_rng(0)
    u = rng.normal(size=64)
    copies = np.stack([u, np.roll(u, 5), rng.normal(size=64)])
    assert _min_shift_mismatch(copies) < 1e-10
    assert _min_shift_mismatch(rng.normal(size=(4, 64))) > 0.3
