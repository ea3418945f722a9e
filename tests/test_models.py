"""Scientific models: right-hand sides against independent formulas and loops."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from scilayers.models import Burgers, KuramotoSivashinsky, Lorenz96, Lorenz96TwoScale


def _band_limited(n, length, modes, seed):
    """A real field on the grid with random Fourier modes 1..modes (no mean)."""
    rng = np.random.default_rng(seed)
    x = np.arange(n) * length / n
    u = np.zeros(n)
    for j in range(1, modes + 1):
        k = 2 * np.pi * j / length
        u += rng.normal() * np.cos(k * x) + rng.normal() * np.sin(k * x)
    return u


def _np_derivative(u, length, order):
    """∂_x^order with a full complex FFT (independent of the model's rfft path)."""
    k = 2 * np.pi * np.fft.fftfreq(u.size, d=length / u.size)
    return np.real(np.fft.ifft((1j * k) ** order * np.fft.fft(u)))


# --------------------------------------------------------------------------------------
# Kuramoto–Sivashinsky and Burgers
# --------------------------------------------------------------------------------------


def test_ks_linear_symbol():
    L, n, a, b, d = 17.0, 32, 0.7, 1.3, 0.4
    m = KuramotoSivashinsky(L, n, a=a, b=b, d=d)
    k = 2 * np.pi * np.arange(n // 2 + 1) / L
    np.testing.assert_allclose(m.linear_operator(), a * k**2 - b * k**4 + 1j * d * k**3, rtol=1e-14)
    np.testing.assert_allclose(m.wavenumbers(), k, rtol=1e-15)
    np.testing.assert_allclose(m.grid(), np.arange(n) * L / n, rtol=1e-15)


@pytest.mark.parametrize(("a", "b", "c", "d"), [(1.0, 1.0, 1.0, 0.0), (0.6, 1.7, -0.8, 0.45)])
def test_ks_rhs_matches_pde(a, b, c, d):
    """rhs = -c u u_x - a u_xx - b u_xxxx - d u_xxx, evaluated independently.

    The field has modes <= n/4, so u² is resolved and the conservative form used by the
    model equals the advective form used here.
    """
    L, n = 22.0, 64
    u = _band_limited(n, L, 8, seed=1)
    m = KuramotoSivashinsky(L, n, a=a, b=b, c=c, d=d)
    der = lambda k: _np_derivative(u, L, k)  # noqa: E731
    expected = -c * u * der(1) - a * der(2) - b * der(4) - d * der(3)
    np.testing.assert_allclose(m.rhs(jnp.asarray(u)), expected, atol=1e-11 * np.abs(expected).max())


def test_burgers_rhs_matches_pde():
    n, nu = 64, 0.3
    L = 2 * np.pi
    u = _band_limited(n, L, 10, seed=2)
    m = Burgers(n=n, nu=nu)
    expected = -u * _np_derivative(u, L, 1) + nu * _np_derivative(u, L, 2)
    np.testing.assert_allclose(m.rhs(jnp.asarray(u)), expected, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(m.linear_operator(), -nu * np.arange(n // 2 + 1) ** 2, atol=1e-13)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_spectral_derivative_of_a_mode(order):
    L, n, j = 5.0, 32, 3
    m = KuramotoSivashinsky(L, n)
    x = np.arange(n) * L / n
    k = 2 * np.pi * j / L
    # d^p/dx^p sin(kx) = k^p sin(kx + p π/2)
    expected = k**order * np.sin(k * x + order * np.pi / 2)
    got = m.derivative(jnp.sin(k * jnp.asarray(x)), order)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * k**order)


def test_dealias_mask_keeps_two_thirds():
    m = KuramotoSivashinsky(22.0, 64)
    mask = np.asarray(m.dealias_mask())
    assert mask.shape == (33,)
    # Orszag's rule: keep |j| <= (2/3)(n/2) = 21.33, i.e. modes 0..21.
    np.testing.assert_array_equal(mask, (np.arange(33) <= 21).astype(float))
    assert np.asarray(m.dealias_mask(0.5)).sum() == 17


def test_ks_initial_condition_properties(key):
    m = KuramotoSivashinsky(22.0, 64)
    u = np.asarray(m.initial_condition(key, modes=5, amplitude=0.7))
    assert abs(u.mean()) < 1e-15
    assert np.sqrt(np.mean(u**2)) == pytest.approx(0.7, rel=1e-13)
    spec = np.abs(np.fft.rfft(u))
    assert np.all(spec[6:] < 1e-13) and np.all(spec[1:6] > 1e-3)
    # Different keys give different fields.
    v = np.asarray(m.initial_condition(jax.random.split(key)[0], modes=5, amplitude=0.7))
    assert np.abs(u - v).max() > 0.1


def test_residual_is_second_order_on_exact_solution():
    """The residual of the exact linear KS mode solution is O(dt²) (central difference)."""
    L, n, j = 22.0, 32, 4
    m = KuramotoSivashinsky(L, n, c=0.0, d=0.3)
    k = 2 * np.pi * j / L
    lam = k**2 - k**4 + 1j * 0.3 * k**3
    x = np.asarray(m.grid())

    def worst(dt):
        t = dt * np.arange(5)[:, None]
        traj = np.real(np.exp(lam * t) * np.exp(1j * k * x)[None, :])
        res = m.residual(jnp.asarray(traj), dt)
        assert res.shape == (3, n)
        return float(jnp.abs(res).max())

    r1, r2 = worst(1e-2), worst(5e-3)
    assert r1 < 1e-2
    assert np.log2(r1 / r2) == pytest.approx(2.0, abs=0.05)


def test_residual_rejects_bad_trajectory():
    m = KuramotoSivashinsky(22.0, 16)
    with pytest.raises(ValueError, match=r"time >= 3.*jax.vmap"):
        m.residual(jnp.zeros((2, 16)), 0.1)
    with pytest.raises(ValueError, match="jax.vmap"):
        m.residual(jnp.zeros((4, 5, 16)), 0.1)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: KuramotoSivashinsky(22.0, 63), "n must be an even integer >= 4"),
        (lambda: KuramotoSivashinsky(22.0, 2), "n must be an even integer >= 4"),
        (lambda: KuramotoSivashinsky(-1.0, 64), "length must be positive and finite"),
        (lambda: Burgers(np.inf, 64), "length must be positive and finite"),
        (lambda: KuramotoSivashinsky(b=-1.0), "violates its constraint"),
        (lambda: Burgers(nu=0.0), "violates its constraint"),
        (lambda: Lorenz96(k=3), "k >= 4"),
        (lambda: Lorenz96TwoScale(k=8, j=0), "k >= 4 and j >= 1"),
    ],
)
def test_model_construction_errors(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_check_state_message():
    with pytest.raises(
        ValueError,
        match=r"expected a state of shape \(64,\), got \(32, 64\); "
        r"for a batch of states use jax.vmap",
    ):
        sl.models.check_state(jnp.zeros((32, 64)), (64,), "here")
    with pytest.raises(ValueError, match=r"got \(2, 3, 64\); for batched inputs use jax.vmap"):
        sl.models.check_state(jnp.zeros((2, 3, 64)), (64,), "here")
    with pytest.raises(ValueError, match=r"got \(63,\)\.$"):
        sl.models.check_state(jnp.zeros(63), (64,), "here")


# --------------------------------------------------------------------------------------
# Lorenz-96
# --------------------------------------------------------------------------------------


def _l96_loop(x, forcing):
    k = x.size
    out = np.empty(k)
    for i in range(k):
        out[i] = (x[(i + 1) % k] - x[(i - 2) % k]) * x[(i - 1) % k] - x[i] + forcing
    return out


def _l96_two_scale_loop(x, y, forcing, h, b, c):
    """Lorenz (1996) eqs. (3.1)-(3.2); Y_{j,k} with j fastest, the fast ring wrapping
    into the next sector: Y_{J+1,k} = Y_{1,k+1}, Y_{0,k} = Y_{J,k-1}."""
    K, J = y.shape

    def Y(j, k):
        k = (k + j // J) % K  # carry j overflow/underflow into the sector index
        return y[k, j % J]

    dx = np.empty(K)
    dy = np.empty((K, J))
    for k in range(K):
        dx[k] = (
            x[(k - 1) % K] * (x[(k + 1) % K] - x[(k - 2) % K])
            - x[k]
            + forcing
            - h * c / b * sum(y[k, j] for j in range(J))
        )
        for j in range(J):
            dy[k, j] = (
                -c * b * Y(j + 1, k) * (Y(j + 2, k) - Y(j - 1, k)) - c * y[k, j] + h * c / b * x[k]
            )
    return dx, dy


def test_lorenz96_rhs_matches_loop(key):
    m = Lorenz96(k=9, forcing=7.3)
    u = np.asarray(jax.random.normal(key, (9,))) * 3
    np.testing.assert_allclose(m.rhs(jnp.asarray(u)), _l96_loop(u, 7.3), rtol=1e-14, atol=1e-13)


def test_lorenz96_fixed_point():
    F = 8.0
    m = Lorenz96(k=40, forcing=F)
    u = jnp.full(40, F)
    assert np.array_equal(np.asarray(m.rhs(u)), np.zeros(40))
    # Not vacuous: a perturbed state is not stationary.
    assert float(jnp.abs(m.rhs(u.at[3].add(0.1))).max()) > 0.05
    traj = sl.rollout(sl.solvers.Diffrax(m, 0.05, substeps=2), u, 40)
    assert np.array_equal(np.asarray(traj), np.full((41, 40), F))


def test_lorenz96_two_scale_rhs_matches_loop(key):
    K, J = 5, 3
    F, h, b, c = 9.0, 0.7, 5.0, 4.0
    m = Lorenz96TwoScale(k=K, j=J, forcing=F, h=h, b=b, c=c)
    kx, ky = jax.random.split(key)
    x = np.asarray(jax.random.normal(kx, (K,))) * 4
    y = np.asarray(jax.random.normal(ky, (K, J)))
    u = jnp.concatenate([jnp.asarray(x), jnp.asarray(y).reshape(-1)])
    got_x, got_y = m.split(m.rhs(u))
    want_x, want_y = _l96_two_scale_loop(x, y, F, h, b, c)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-13, atol=1e-12)
    # split is the inverse of the flat layout.
    sx, sy = m.split(u)
    np.testing.assert_array_equal(sx, x)
    np.testing.assert_array_equal(sy, y)
    assert m.state_shape == (K * (J + 1),)


def test_lorenz96_two_scale_decoupled_fast_ring_is_one_ring():
    """With h = 0 and X = 0 the fast variables are a one-scale ring of length K·J."""
    K, J, b, c = 4, 3, 2.0, 3.0
    m = Lorenz96TwoScale(k=K, j=J, forcing=0.0, h=0.0, b=b, c=c)
    y = np.random.default_rng(0).normal(size=K * J)
    u = jnp.concatenate([jnp.zeros(K), jnp.asarray(y)])
    _, dy = m.split(m.rhs(u))
    # Reverse the ring: with z_i = y_{-i}, dz/dt = c b (z_{i+1}-z_{i-2}) z_{i-1} - c z_i,
    # i.e. a scaled one-scale Lorenz-96 in time c, amplitude b.
    z = y[::-1]
    dz = c * (_l96_loop(b * z, 0.0) + b * z) / b - c * z
    np.testing.assert_allclose(np.asarray(dy).reshape(-1)[::-1], dz, rtol=1e-13, atol=1e-13)


def test_diffrax_stepper_matches_scipy(key):
    """One Diffrax step of Lorenz-96 agrees with scipy's DOP853 at tight tolerance."""
    scipy_integrate = pytest.importorskip("scipy.integrate")
    m = Lorenz96(k=10, forcing=8.0)
    u0 = np.asarray(m.initial_condition(key)) + np.linspace(-1, 1, 10)
    step = sl.solvers.Diffrax(
        m,
        0.5,
        solver=diffrax.Dopri8(),
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
    )
    got = step(jnp.asarray(u0))
    ref = scipy_integrate.solve_ivp(
        lambda t, x: _l96_loop(x, 8.0), (0, 0.5), u0, method="DOP853", rtol=1e-13, atol=1e-13
    ).y[:, -1]
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_physics_residual_metric_follows_the_params_of_each_model(key):
    """`metrics.physics_residual` is compiled once per model structure; the θ_s of each
    model passed still count (they are traced, not baked into the compiled program)."""
    from scilayers import metrics as M
    from scilayers.params import Param

    traj = jax.random.normal(key, (3, 6, 16))
    for a in (1.0, 2.0):
        m = KuramotoSivashinsky(22.0, 16, a=Param(a, "positive"))
        by_hand = np.mean([np.mean(np.asarray(m.residual(t, 0.1)) ** 2) for t in traj])
        assert M.physics_residual(m, traj, 0.1) == pytest.approx(by_hand, rel=1e-5)
    one = M.physics_residual(KuramotoSivashinsky(22.0, 16, a=Param(1.0, "positive")), traj, 0.1)
    two = M.physics_residual(KuramotoSivashinsky(22.0, 16, a=Param(2.0, "positive")), traj, 0.1)
    assert abs(one - two) > 1e-3 * one
