"""Time steppers: convergence order, exact solutions, peer cross-checks, conservation."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from scilayers.models import Burgers, KuramotoSivashinsky, Lorenz96
from scilayers.solvers import ETDRK4, Diffrax, Repeated, StrangSplitting

SPLITTINGS = ("rk2", "rk3", "rk4")


def _final(stepper, u0, t_end):
    steps = round(t_end / stepper.dt)
    assert math.isclose(steps * stepper.dt, t_end, rel_tol=1e-12)
    return sl.rollout(stepper, u0, steps)[-1]


def _order(dts, errors):
    """Least-squares slope of log(error) against log(dt)."""
    return np.polyfit(np.log(dts), np.log(errors), 1)[0]


# --------------------------------------------------------------------------------------
# Convergence order on Kuramoto–Sivashinsky (self-convergence against a tiny-dt run)
# --------------------------------------------------------------------------------------

KS_T = 2.0


@pytest.fixture(scope="module")
def ks_problem():
    """KS on L = 22 with n = 64 and the smooth IC of Kassam & Trefethen (2005), plus a
    reference at t = 2 from ETDRK4 with dt = T/8192 (truncation error ~1e-15; its
    accumulated round-off, ~1e-12, is what limits how small a dt can be tested)."""
    model = KuramotoSivashinsky(22.0, 64)
    x = model.grid()
    u0 = jnp.cos(2 * jnp.pi * x / 22.0) * (1 + jnp.sin(2 * jnp.pi * x / 22.0))
    ref = _final(ETDRK4(model, KS_T / 8192), u0, KS_T)
    return model, u0, ref


# ETDRK4 (Cox–Matthews) shows the stiff order reduction analysed by Hochbruck &
# Ostermann (2005) while dt·|L_k| is large for the resolved high modes: on this problem the
# local rate climbs from ~2.7 at dt = T/16 through 3.6, 3.8 to ~3.9 at dt = T/1024
# (errors 3e-8 … 1e-11), and the fitted slope over dt = T/128 … T/1024 is ~3.78.
@pytest.mark.parametrize(
    ("make", "divisions", "lo", "hi"),
    [
        (lambda m, dt: ETDRK4(m, dt), (128, 256, 512, 1024), 3.6, 4.6),
        *[
            (lambda m, dt, nl=nl: StrangSplitting(m, dt, nonlinear=nl), (64, 128, 256), 1.8, 2.3)
            for nl in SPLITTINGS
        ],
    ],
    ids=["etdrk4", *(f"strang-{nl}" for nl in SPLITTINGS)],
)
def test_ks_convergence_order(ks_problem, make, divisions, lo, hi):
    model, u0, ref = ks_problem
    dts = [KS_T / m for m in divisions]
    errors = [float(jnp.max(jnp.abs(_final(make(model, dt), u0, KS_T) - ref))) for dt in dts]
    assert all(e > 5e-12 for e in errors), errors  # well above the reference's round-off
    order = _order(dts, errors)
    assert lo <= order <= hi, (order, errors)


# --------------------------------------------------------------------------------------
# Exact solutions
# --------------------------------------------------------------------------------------

STEPPERS = {
    "etdrk4": lambda m, dt: ETDRK4(m, dt),
    **{
        f"strang-{nl}": (lambda m, dt, nl=nl: StrangSplitting(m, dt, nonlinear=nl))
        for nl in SPLITTINGS
    },
}


# With c = 0 the Runge–Kutta stage of Strang splitting integrates N = 0, so one of its
# `nonlinear` options stands for all three.
@pytest.mark.parametrize("scheme", ["etdrk4", "strang-rk3"])
@pytest.mark.parametrize("d", [0.0, 0.7])
def test_linear_modes_are_exact(scheme, d):
    """With c = 0, û_k(t) = exp(λ_k t) û_k(0), λ_k = a k² - b k⁴ + i d k³, for any dt.

    The initial state superposes modes 1 (grows), 3 (grows slowly) and 5 (decays) on
    L = 22 with different phases; with d ≠ 0 each also travels at its own speed:
    u_j = e^{Re λ t} cos(k x + d k³ t + θ_j).
    """
    L, n, a, b, t_end, dt = 22.0, 32, 1.1, 0.9, 2.0, 0.25
    model = KuramotoSivashinsky(L, n, a=a, b=b, c=0.0, d=d)
    x = np.asarray(model.grid())
    modes = [(1, 1.0, 0.0), (3, 0.5, 1.0), (5, 2.0, -2.0)]  # (j, amplitude, phase)

    def exact(t):
        u = np.zeros(n)
        for j, amp, phase in modes:
            k = 2 * np.pi * j / L
            lam = a * k**2 - b * k**4 + 1j * d * k**3
            u += amp * np.real(np.exp(lam * t + 1j * (k * x + phase)))
        return u

    traj = sl.rollout(STEPPERS[scheme](model, dt), jnp.asarray(exact(0.0)), round(t_end / dt))
    want = np.stack([exact(t) for t in dt * np.arange(traj.shape[0])])
    np.testing.assert_allclose(traj, want, rtol=0, atol=1e-12)


def _cole_hopf(x, t, nu, a0=2.0, a1=1.0):
    """u = -2ν φ_x / φ with φ = a0 + a1 e^{-ν t} cos x solves u_t + u u_x = ν u_xx."""
    e = a1 * np.exp(-nu * t)
    return 2 * nu * e * np.sin(x) / (a0 + e * np.cos(x))


# (scheme, tolerance at dt = 1/40, order window from dt = 1/20 -> 1/40). With n = 64 the
# Cole–Hopf profile is resolved to ~1e-16 (its Fourier modes decay like e^{-1.32 j}).
COLE_HOPF = [
    ("etdrk4", 1e-9, (3.6, 4.4)),
    *[(f"strang-{nl}", 6e-6, (1.9, 2.1)) for nl in SPLITTINGS],
]


@pytest.mark.parametrize(("scheme", "tol", "window"), COLE_HOPF, ids=[c[0] for c in COLE_HOPF])
def test_burgers_cole_hopf(scheme, tol, window):
    nu = 0.5
    model = Burgers(n=64, nu=nu)
    x = np.asarray(model.grid())
    u0 = jnp.asarray(_cole_hopf(x, 0.0, nu))
    exact = _cole_hopf(x, 1.0, nu)
    errors = [
        float(np.abs(_final(STEPPERS[scheme](model, dt), u0, 1.0) - exact).max())
        for dt in (1 / 20, 1 / 40)
    ]
    assert errors[1] < tol, errors
    rate = math.log2(errors[0] / errors[1])
    assert window[0] <= rate <= window[1], (rate, errors)


# --------------------------------------------------------------------------------------
# Cross-checks against independent implementations of an ETDRK4 KS step
# --------------------------------------------------------------------------------------


def _np_phi(z, order):
    """φ_order(z) = Σ_m z^m / (m + order)!: Taylor series for |z| < 1, else the recurrence
    φ_{p+1} = (φ_p - 1/p!)/z from φ_0 = e^z (independent of the contour integral)."""
    z = np.asarray(z, dtype=complex)
    series = sum(z**m / math.factorial(m + order) for m in range(30))
    phi = np.exp(np.where(np.abs(z) < 1, 0, z))
    for p in range(order):
        phi = (phi - 1 / math.factorial(p)) / np.where(np.abs(z) < 1, 1, z)
    return np.where(np.abs(z) < 1, series, phi)


class _NumpyETDRK4:
    """Reference ETDRK4 (Cox & Matthews 2002, eqs. 26-29) for the generalised KS equation
    û_t = (a k² - b k⁴ + i d k³) û - (c/2) i k (u²)^, written from the paper in NumPy
    float64 with φ-functions from series/recurrence (no contour integral), a mask on the
    input of the nonlinearity, and the rfft layout used by scilayers."""

    def __init__(self, length, n, dt, a, b, c, d, dealias):
        k = 2 * np.pi / length * np.arange(n // 2 + 1)
        lin = a * k**2 - b * k**4 + 1j * d * k**3
        z = dt * lin
        self.n, self.k, self.c = n, k, c
        self.e, self.e2 = np.exp(z), np.exp(z / 2)
        self.q = dt / 2 * _np_phi(z / 2, 1)
        phi1, phi2, phi3 = (_np_phi(z, p) for p in (1, 2, 3))
        self.f1 = dt * (phi1 - 3 * phi2 + 4 * phi3)
        self.f2 = dt * (phi2 - 2 * phi3)
        self.f3 = dt * (-phi2 + 4 * phi3)
        j = np.arange(n // 2 + 1)
        self.mask = np.ones(j.size) if dealias is None else (j <= dealias * (n // 2)) * 1.0

    def nonlinear(self, v):
        u = np.fft.irfft(v * self.mask, self.n)
        return -0.5j * self.c * self.k * np.fft.rfft(u * u)

    def __call__(self, u):
        v = np.fft.rfft(u)
        nv = self.nonlinear(v)
        a = self.e2 * v + self.q * nv
        na = self.nonlinear(a)
        b = self.e2 * v + self.q * na
        nb = self.nonlinear(b)
        c = self.e2 * a + self.q * (2 * nb - nv)
        nc = self.nonlinear(c)
        v = self.e * v + self.f1 * nv + 2 * self.f2 * (na + nb) + self.f3 * nc
        return np.fft.irfft(v, self.n)


@pytest.mark.parametrize(
    ("coeffs", "dealias", "points"),
    [((1.0, 1.0, 1.0, 0.0), 2 / 3, 32), ((0.8, 1.3, 0.6, 0.45), None, 16)],
    ids=["ks-dealiased", "generalised-ks"],
)
def test_etdrk4_matches_numpy_reference(key, coeffs, dealias, points):
    a, b, c, d = coeffs
    L, n, dt, steps = 22.0, 64, 0.1, 50
    model = KuramotoSivashinsky(L, n, a=a, b=b, c=c, d=d)
    u0 = model.initial_condition(key)
    got = sl.rollout(ETDRK4(model, dt, dealias=dealias, contour_points=points), u0, steps)
    ref_step = _NumpyETDRK4(L, n, dt, a, b, c, d, dealias)
    want = [np.asarray(u0)]
    for _ in range(steps):
        want.append(ref_step(want[-1]))
    np.testing.assert_allclose(got, np.stack(want), rtol=0, atol=1e-10)
    assert np.abs(want[-1] - want[0]).max() > 0.5  # the dynamics did something


def test_etdrk4_coefficients_and_phi1_match_phi_functions():
    lin = np.array([0.0, 1e-8, -0.3, 2.0, -50.0, -3000.0, 1.5 + 2.0j, -40 - 30j])
    dt = 0.1
    got = sl.solvers.etdrk4_coefficients(jnp.asarray(lin), dt)
    z = dt * lin
    phi1, phi2, phi3 = (_np_phi(z, p) for p in (1, 2, 3))
    want = (
        np.exp(z),
        np.exp(z / 2),
        dt / 2 * _np_phi(z / 2, 1),
        dt * (phi1 - 3 * phi2 + 4 * phi3),
        dt * (phi2 - 2 * phi3),
        dt * (-phi2 + 4 * phi3),
    )
    for g, w, name in zip(got, want, ("E", "E2", "Q", "f1", "f2", "f3"), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15 * dt, err_msg=name)
    np.testing.assert_allclose(
        sl.solvers.phi1(jnp.asarray(lin), dt), dt * phi1, rtol=1e-13, atol=1e-15 * dt
    )
    # A real symbol gives real coefficients.
    assert not jnp.iscomplexobj(sl.solvers.phi1(jnp.asarray(lin.real[:6]), dt))
    assert not jnp.iscomplexobj(sl.solvers.etdrk4_coefficients(jnp.asarray(lin.real[:6]), dt)[3])


def _exponax_trajectory(exponax, u0, dt, steps, fraction):
    with jax.numpy_rank_promotion("allow"):  # exponax broadcasts (1, m) against (1, 1, m)
        stepper = exponax.stepper.KuramotoSivashinskyConservative(
            1, 22.0, u0.shape[0], dt, order=4, num_circle_points=16, dealiasing_fraction=fraction
        )
        return np.asarray(exponax.rollout(stepper, steps, include_init=True)(u0[None])[:, 0])


def test_etdrk4_matches_exponax_without_dealiasing(key):
    """Exponax's KuramotoSivashinskyConservative (u_t + ½(u²)_x + u_xx + u_xxxx = 0 on
    [0, L), ETDRK4 with 16 contour points) is our KS with a = b = c = 1, d = 0."""
    exponax = pytest.importorskip("exponax")
    model = KuramotoSivashinsky(22.0, 64)
    u0 = model.initial_condition(key)
    got = sl.rollout(ETDRK4(model, 0.1, contour_points=16), u0, 50)
    want = _exponax_trajectory(exponax, u0, 0.1, 50, None)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_etdrk4_matches_exponax_with_dealiasing(key):
    """With dealiasing the conventions differ in two ways:

    - exponax keeps modes j <= f·(n/2) - 1 (j <= 20 for n = 64, f = 2/3), Orszag's rule
      as implemented here keeps j <= f·(n/2) (j <= 21); dealias=0.64 keeps j <= 20;
    - exponax also zeroes the nonlinear term above the cutoff (post-dealiasing); we only
      mask its input. Our modes above the cutoff are then forced but never fed back, so
      the kept modes agree to round-off and the rest differ at the forcing's size.
    """
    exponax = pytest.importorskip("exponax")
    model = KuramotoSivashinsky(22.0, 64)
    u0 = model.initial_condition(key)
    got = np.asarray(sl.rollout(ETDRK4(model, 0.1, dealias=0.64, contour_points=16), u0, 50))
    want = _exponax_trajectory(exponax, u0, 0.1, 50, 2 / 3)
    kept = np.arange(33) <= 20
    low = lambda u: np.fft.irfft(np.fft.rfft(u) * kept, 64)  # noqa: E731
    np.testing.assert_allclose(low(got), low(want), rtol=0, atol=1e-10)
    high = np.abs(got - want).max()
    assert 1e-9 < high < 1e-5, high  # the honest full-state gap: slaved high modes only


# --------------------------------------------------------------------------------------
# Conservation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda m: ETDRK4(m, 0.1, dealias=2 / 3),
        lambda m: ETDRK4(m, 0.1),
        lambda m: StrangSplitting(m, 0.05),
    ],
    ids=["etdrk4-dealiased", "etdrk4", "strang"],
)
def test_ks_mean_is_conserved(key, make):
    model = KuramotoSivashinsky(22.0, 64)
    means = jnp.array([0.0, 0.7, -1.3])
    u0 = model.initial_condition(key)[None, :] + means[:, None]
    # t = 100 (Strang) or 200: well into the chaotic regime.
    traj = jax.vmap(lambda u: sl.rollout(make(model), u, 2000))(u0)
    np.testing.assert_allclose(
        np.asarray(traj).mean(axis=-1),
        np.broadcast_to(means[:, None], traj.shape[:2]),
        rtol=0,
        atol=1e-12,
    )
    changed = np.abs(traj[:, -1] - traj[:, 0]).max(axis=-1)
    assert changed.min() > 0.5  # the fields themselves evolved


def test_burgers_mean_is_conserved(key):
    model = Burgers(n=64, nu=0.05)
    u0 = model.initial_condition(key) + 0.3
    traj = sl.rollout(ETDRK4(model, 0.02, dealias=2 / 3), u0, 500)
    np.testing.assert_allclose(np.asarray(traj).mean(axis=1), 0.3, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------
# Repeated
# --------------------------------------------------------------------------------------


def test_repeated_equals_subsampled_rollout(key):
    model = KuramotoSivashinsky(22.0, 32)
    inner = ETDRK4(model, 0.05)
    rep = Repeated(inner, 4)
    assert rep.dt == pytest.approx(0.2) and rep.model is model
    u0 = model.initial_condition(key)
    np.testing.assert_allclose(
        sl.rollout(rep, u0, 5), sl.rollout(inner, u0, 20)[::4], rtol=0, atol=1e-13
    )


# --------------------------------------------------------------------------------------
# Prepared ETDRK4: cached coefficients never go stale
# --------------------------------------------------------------------------------------


def _ks_learnable():
    return KuramotoSivashinsky(22.0, 32, a=sl.Param(1.0, "positive"), b=sl.Param(1.0, "positive"))


CHANGES = {
    "set_values": lambda s: sl.params.set_values(s, a=1.3),
    "tree_at": lambda s: eqx.tree_at(lambda t: t.model.b, s, sl.Param(0.7, "positive")),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_prepared_etdrk4_follows_a_change_of_theta(key, change):
    """θ_s changed after `prepare()`: a step, a rollout and a re-prepare all give the
    unprepared stepper's result for the new θ_s; stepping it inside jit or driving its
    carry by hand raises instead of using the stale coefficients."""
    step = ETDRK4(_ks_learnable(), 0.25)
    u = step.model.initial_condition(key)
    prepared = step.prepare()
    np.testing.assert_array_equal(prepared(u), step(u))
    changed = CHANGES[change](prepared)
    fresh = ETDRK4(changed.model, 0.25)
    assert float(jnp.max(jnp.abs(fresh(u) - step(u)))) > 1e-3  # the change matters
    np.testing.assert_allclose(changed(u), fresh(u), rtol=0, atol=1e-14)
    np.testing.assert_allclose(changed.prepare()(u), fresh(u), rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        sl.rollout(changed, u, 6), sl.rollout(fresh, u, 6), rtol=0, atol=1e-13
    )
    with pytest.raises(ValueError, match=r"call prepare\(\) again"):
        changed.init_carry(u)
    with pytest.raises(RuntimeError, match=r"call prepare\(\) again"):
        jax.block_until_ready(eqx.filter_jit(lambda s, v: s(v))(changed, u))


def test_prepared_etdrk4_keeps_its_cache_when_the_symbol_is_unchanged(key):
    """Inside jit (traced values) and after swapping in a model with the same linear part
    (what a closure `Hybrid` does every step), the cached coefficients are used; their
    gradient is the unprepared stepper's."""
    step = ETDRK4(_ks_learnable(), 0.25)
    u = step.model.initial_condition(key)
    prepared = step.prepare()
    np.testing.assert_allclose(
        eqx.filter_jit(lambda s, v: s(v))(prepared, u), step(u), rtol=0, atol=1e-14
    )
    # mark the cache (scale E = e^{hL}), then swap in an equal model: the marked cache is
    # what steps, eagerly and under jit, so nothing was recomputed
    marked = eqx.tree_at(lambda s: s.coefficients[0], prepared, 1.01 * prepared.coefficients[0])
    same = eqx.tree_at(lambda s: s.model, marked, _ks_learnable())
    expected = ETDRK4.carry_output(
        sl.solvers._etdrk._etdrk4_step(step.model, None, marked.coefficients, step.init_carry(u))
    )
    assert float(jnp.max(jnp.abs(expected - step(u)))) > 1e-3
    np.testing.assert_array_equal(same(u), expected)
    np.testing.assert_allclose(
        eqx.filter_jit(lambda s, v: s(v))(same, u), expected, rtol=0, atol=1e-14
    )

    def loss(s, prep):
        return jnp.sum((s.prepare() if prep else s)(u) ** 2)

    g_prep = eqx.filter_grad(loss)(step, True)
    g_plain = eqx.filter_grad(loss)(step, False)
    for name in ("a", "b"):
        np.testing.assert_allclose(
            getattr(g_prep.model, name).raw, getattr(g_plain.model, name).raw, rtol=1e-12
        )


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------

ALL_STEPPERS = {
    "etdrk4": lambda dt: ETDRK4(KuramotoSivashinsky(22.0, 64), dt),
    "strang": lambda dt: StrangSplitting(KuramotoSivashinsky(22.0, 64), dt),
    "diffrax": lambda dt: Diffrax(Lorenz96(k=64), dt),
}


@pytest.mark.parametrize("name", list(ALL_STEPPERS))
@pytest.mark.parametrize("dt", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_dt_raises(name, dt):
    with pytest.raises(ValueError, match=r"dt must be a positive finite number, got"):
        ALL_STEPPERS[name](dt)


@pytest.mark.parametrize("name", list(ALL_STEPPERS))
def test_batched_state_to_step_says_vmap(name):
    step = ALL_STEPPERS[name](0.1)
    with pytest.raises(
        ValueError, match=r"expected a state of shape \(64,\), got \(32, 64\).*jax\.vmap"
    ):
        step(jnp.zeros((32, 64)))
    with pytest.raises(ValueError, match=r"got \(63,\)"):
        step(jnp.zeros(63))


def test_unknown_splitting_integrator():
    with pytest.raises(
        ValueError, match=r"unknown nonlinear integrator 'euler'; choose one of \['rk2'"
    ):
        StrangSplitting(KuramotoSivashinsky(), 0.1, nonlinear="euler")


@pytest.mark.parametrize("cls", [ETDRK4, StrangSplitting])
def test_spectral_steppers_reject_ode_models(cls):
    with pytest.raises(ValueError, match="spectral model"):
        cls(Lorenz96(), 0.1)


def test_other_construction_errors():
    ks = KuramotoSivashinsky()
    with pytest.raises(ValueError, match=r"dealias must be in \(0, 1\] or None"):
        ETDRK4(ks, 0.1, dealias=1.5)
    with pytest.raises(ValueError, match="substeps must be >= 1"):
        Diffrax(Lorenz96(), 0.1, substeps=0)
    with pytest.raises(ValueError, match="substeps must be >= 1"):
        Repeated(ETDRK4(ks, 0.1), 0)
