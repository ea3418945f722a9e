"""Time-dependent models through every solver, `rollout`, `Hybrid` and `fit`, and closures
told what to see (`Inputs`) and what to write (`outputs`)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import scilayers as sl
from scilayers.hybrid import Inputs, OddSignReflection
from scilayers.losses import physics_loss
from scilayers.training import Trajectories, sample_timed_windows

OMEGA = 2 / 3  # drive frequency of the pendulum


class ForcedBurgers(sl.models.AbstractForcedSpectralModel):
    r"""``u_t = ν u_xx - c u u_x + A sin(x) cos(w t)`` on ``[0, 2π)``; ``c = 0`` is a forced
    heat equation with a closed form."""

    length: float = eqx.field(static=True)
    n: int = eqx.field(static=True)
    nu: sl.Param
    amp: sl.Param
    c: float = eqx.field(static=True)
    w: float = eqx.field(static=True)

    def __init__(self, n=32, nu=0.5, amp=1.0, c=1.0, w=3.0):
        self.length, self.n = 2 * np.pi, n
        self.nu, self.amp = sl.Param(nu, "positive"), sl.Param(amp)
        self.c, self.w = c, w

    def linear_operator(self):
        return -self.nu.value * self.wavenumbers() ** 2

    def nonlinear_hat(self, u_hat, mask=None, u=None):
        if mask is not None:
            u_hat = u_hat * mask
        if u is None or mask is not None:
            u = jnp.fft.irfft(u_hat, self.n)
        return -0.5j * self.c * self.wavenumbers() * jnp.fft.rfft(u * u)

    def source_hat(self, t, u_hat, mask=None, u=None):
        return self.amp.value * jnp.cos(self.w * t) * jnp.fft.rfft(jnp.sin(self.grid()))


def _heat_closed_form(m, t0, t1):
    """Forced heat (c = 0) from ``u0 = ½ sin x + 0.2 cos 2x`` at ``t0``, evaluated at ``t1``:
    ``a' = -ν a + A cos(w t)`` for the sin mode, free decay of the cos 2x mode."""
    nu, amp, w = float(m.nu.value), float(m.amp.value), m.w

    def particular(t):
        return amp * (nu * np.cos(w * t) + w * np.sin(w * t)) / (nu**2 + w**2)

    a = (0.5 - particular(t0)) * np.exp(-nu * (t1 - t0)) + particular(t1)
    x = np.asarray(m.grid())
    return a * np.sin(x) + 0.2 * np.exp(-4 * nu * (t1 - t0)) * np.cos(2 * x)


def _u0(m):
    x = m.grid()
    return 0.5 * jnp.sin(x) + 0.2 * jnp.cos(2 * x)


def _pendulum_reference(gamma, omega0, amp, u0, t0, times):
    def f(t, y):
        return [y[1], -gamma * y[1] - omega0**2 * np.sin(y[0]) + amp * np.cos(OMEGA * t)]

    sol = solve_ivp(f, (t0, times[-1]), np.asarray(u0), "DOP853", times, rtol=1e-13, atol=1e-13)
    return sol.y.T


def _order(dts, errors):
    return float(np.polyfit(np.log(dts), np.log(errors), 1)[0])


# ------------------------------------------------------------------------ solvers and time


def test_driven_pendulum_matches_scipy_and_converges_at_tsit5_order():
    """Diffrax(Tsit5) through `rollout` from t0 = 1.3: fifth order in the internal step
    against scipy's DOP853 at 1e-13, and within 1e-9 of it at the finest step. Fails if a
    stage saw a wrong time (the error would stall at the size of the drive's phase
    error)."""
    model = sl.models.DrivenPendulum(gamma=0.5, omega0=1.0, amplitude=1.1)
    u0, t0, dt, n = jnp.array([0.4, -0.2]), 1.3, 0.5, 16
    ref = _pendulum_reference(0.5, 1.0, 1.1, u0, t0, t0 + dt * np.arange(n + 1))
    substeps = (2, 4, 8)
    errors = [
        float(np.abs(sl.rollout(sl.solvers.Diffrax(model, dt, substeps=k), u0, n, t0) - ref).max())
        for k in substeps
    ]
    assert 4.5 < _order([dt / k for k in substeps], errors) < 6.5  # Tsit5: order 5
    assert errors[-1] < 1e-8
    # an adaptive controller gets the same trajectory
    adaptive = sl.solvers.Diffrax(
        model, dt, stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11)
    )
    assert float(np.abs(sl.rollout(adaptive, u0, n, t0) - ref).max()) < 1e-9


SCHEMES = {  # scheme, expected order, bounds on the fitted slope
    "etdrk4": (lambda m, dt: sl.solvers.ETDRK4(m, dt), 3.7, 4.4),
    "strang-rk3": (lambda m, dt: sl.solvers.StrangSplitting(m, dt), 1.8, 2.3),
    "strang-rk4": (lambda m, dt: sl.solvers.StrangSplitting(m, dt, nonlinear="rk4"), 1.8, 2.3),
}


@pytest.fixture(scope="module")
def burgers_reference():
    """Forced Burgers from t0 = 0.7 to 2.7 by Diffrax (Tsit5, rtol 1e-12) on the model's
    `vector_field`, a peer of the spectral steppers' `nonlinear_hat_at` path."""
    m = ForcedBurgers(c=1.0)
    step = sl.solvers.Diffrax(
        m,
        2.0,
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
        max_steps=100_000,
    )
    return np.asarray(step(_u0(m), 0.7))


CONVERGENCE = [("etdrk4", "heat"), ("etdrk4", "burgers"), ("strang-rk3", "heat")]
CONVERGENCE += [("strang-rk4", "burgers")]


@pytest.mark.parametrize(("scheme", "problem"), CONVERGENCE)
def test_forced_spectral_convergence_order(scheme, problem, burgers_reference):
    """ETDRK4 stays fourth order and Strang splitting second order with a forcing
    ``A sin(x) cos(3t)``, from t0 = 0.7: against the closed form (forced heat) and a
    Diffrax reference (forced Burgers). With the ETDRK4 stages all at ``t`` the order drops
    to one."""
    make, lo, hi = SCHEMES[scheme]
    m = ForcedBurgers(c=0.0 if problem == "heat" else 1.0)
    t0, span = 0.7, 2.0
    ref = _heat_closed_form(m, t0, t0 + span) if problem == "heat" else burgers_reference
    counts = (8, 16, 32, 64)
    errors = [
        float(np.abs(sl.rollout(make(m, span / k), _u0(m), k, t0)[-1] - ref).max()) for k in counts
    ]
    assert lo < _order([span / k for k in counts], errors) < hi


def test_autonomous_models_ignore_time_and_time_defaults_to_zero(key):
    """``step(u, t)`` of an autonomous model is bitwise the same map at every ``t``, and
    ``step(u)`` is ``step(u, 0)`` for a forced one."""
    ks = sl.models.KuramotoSivashinsky(22.0, 16)
    u = ks.initial_condition(key)
    step = sl.solvers.ETDRK4(ks, 0.25)
    assert np.array_equal(sl.rollout(step, u, 5, 2.0), sl.rollout(step, u, 5))
    l96 = sl.solvers.Diffrax(sl.models.Lorenz96(8), 0.05)
    v = l96.model.initial_condition(key)
    assert np.array_equal(l96(v, 3.0), l96(v))
    forced = sl.solvers.ETDRK4(ForcedBurgers(), 0.1)
    w = _u0(forced.model)
    assert np.array_equal(forced(w), forced(w, 0.0))
    assert not np.allclose(forced(w, 1.0), forced(w))
    assert ks.autonomous and not forced.model.autonomous


@pytest.mark.parametrize("memory", sl.solvers.MEMORY_POLICIES)
def test_rollout_t0_is_a_time_shift(memory):
    """Rolling from state k of a trajectory with ``t0 = k·dt`` continues that trajectory,
    under every memory policy; starting it at another time does not."""
    m = ForcedBurgers()
    step = sl.solvers.ETDRK4(m, 0.1)
    full = sl.rollout(step, _u0(m), 30, 0.4, memory=memory, checkpoint_every=4)
    tail = sl.rollout(step, full[12], 18, 0.4 + 12 * 0.1, memory=memory, checkpoint_every=4)
    np.testing.assert_allclose(tail, full[12:], rtol=0, atol=1e-12)
    other = sl.rollout(step, full[12], 18, 0.4, memory=memory, checkpoint_every=4)
    assert float(jnp.abs(other - full[12:]).max()) > 1e-2


def test_rollout_t0_errors():
    step = sl.solvers.ETDRK4(ForcedBurgers(), 0.1)
    u0 = _u0(step.model)
    with pytest.raises(ValueError, match=r"scalar t0, got shape \(2,\).*jax.vmap"):
        sl.rollout(step, u0, 3, jnp.zeros(2))
    with pytest.raises(ValueError, match="plain function u -> u that takes no time"):
        sl.rollout(lambda u: u, u0, 3, 1.0)
    # a batch of start times through jax.vmap
    batch = jax.vmap(lambda t: sl.rollout(step, u0, 3, t))(jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(batch[1], sl.rollout(step, u0, 3, 1.0), rtol=0, atol=1e-14)


def test_repeated_steps_from_its_substep_times():
    """`Repeated` runs its inner steps at ``t, t + dt_inner, …``."""
    inner = sl.solvers.ETDRK4(ForcedBurgers(), 0.05)
    u = _u0(inner.model)
    want = inner(inner(inner(u, 1.0), 1.05), 1.1)
    np.testing.assert_allclose(sl.solvers.Repeated(inner, 3)(u, 1.0), want, rtol=0, atol=1e-14)


def test_residual_of_a_forced_model_needs_the_right_start_time():
    """The equation residual of a forced trajectory is O(dt²) at its own times and O(A) at
    shifted ones; the physics loss passes each trajectory's t0."""
    m = ForcedBurgers()
    traj = sl.rollout(sl.solvers.ETDRK4(m, 0.01), _u0(m), 40, 0.7)
    assert float(jnp.abs(m.residual(traj, 0.01, 0.7)).max()) < 1e-3
    assert float(jnp.abs(m.residual(traj, 0.01, 0.0)).max()) > 0.1
    step = sl.solvers.ETDRK4(m, 0.01)
    assert float(physics_loss(step, traj[None], jnp.array([0.7]))) < 1e-6
    assert float(physics_loss(step, traj[None])) > 1e-2


# ------------------------------------------------------------------------ gradients


def _pendulum_step(amp, adjoint=None):
    model = sl.models.DrivenPendulum(gamma=0.4, omega0=1.0, amplitude=amp)
    kw = {} if adjoint is None else {"adjoint": adjoint}
    return sl.solvers.Diffrax(model, 0.3, substeps=3, **kw)


def _forced_step(amp):
    return sl.solvers.ETDRK4(ForcedBurgers(amp=amp), 0.1)


GRADIENT_CASES = {  # make(amp), initial state, memory, rtol against finite differences
    "pendulum-full": (_pendulum_step, jnp.array([0.3, 0.1]), "full", 1e-6),
    # the continuous adjoint matches the discrete forward map to its discretisation error
    "pendulum-backsolve": (
        lambda a: _pendulum_step(a, diffrax.BacksolveAdjoint()),
        jnp.array([0.3, 0.1]),
        "full",
        1e-3,
    ),
    "burgers-full": (_forced_step, None, "full", 1e-6),
    "burgers-recursive": (_forced_step, None, "recursive", 1e-6),
}


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_gradient_wrt_forcing_amplitude_and_initial_state_match_finite_differences(case):
    make, u0, memory, rtol = GRADIENT_CASES[case]
    u0 = _u0(ForcedBurgers()) if u0 is None else u0
    weights = jnp.sin(1.3 * jnp.arange(u0.size) + 0.4)  # a generic linear functional

    @jax.jit
    def loss(amp, v):
        traj = sl.rollout(make(amp), v, 12, 0.9, memory=memory, checkpoint_every=3)
        return jnp.sum(traj[-1] ** 2) + jnp.sum(weights * traj[6])

    amp = 0.8
    g_amp, g_u = jax.grad(loss, argnums=(0, 1))(amp, u0)
    h = 1e-5
    fd_amp = (loss(amp + h, u0) - loss(amp - h, u0)) / (2 * h)
    np.testing.assert_allclose(g_amp, fd_amp, rtol=rtol)
    assert abs(float(g_amp)) > 1e-3  # the amplitude matters
    e = jnp.zeros_like(u0).at[1].set(1.0)
    fd_u = (loss(amp, u0 + h * e) - loss(amp, u0 - h * e)) / (2 * h)
    np.testing.assert_allclose(g_u[1], fd_u, rtol=rtol)


# ------------------------------------------------------------------------ fit


@pytest.fixture(scope="module")
def pendulum_data():
    """Six trajectories of the driven pendulum (γ = 0.3, A = 1.0), starting at times 0, 2,
    …, 10, 31 states 0.3 apart."""
    truth = sl.solvers.Diffrax(
        sl.models.DrivenPendulum(gamma=0.3, omega0=1.0, amplitude=1.0), 0.3, substeps=3
    )
    u0 = jax.vmap(truth.model.initial_condition)(jax.random.split(jax.random.key(3), 6))
    t0 = 2.0 * jnp.arange(6.0)
    data = jax.vmap(lambda u, t: sl.rollout(truth, u, 30, t))(u0, t0)
    return data, t0, truth


def test_sampled_windows_know_their_start_times(pendulum_data):
    """Windows drawn by `fit` start at ``t0[i] + s·dt``: the true model rolled from each
    window's first state at that time reproduces the window."""
    data, t0, truth = pendulum_data
    windows, t_start = sample_timed_windows(Trajectories(data, t0), jax.random.key(0), 8, 5, 0.3)
    pred = jax.vmap(lambda w, t: sl.rollout(truth, w, 5, t))(windows[:, 0], t_start)
    np.testing.assert_allclose(pred, windows, rtol=0, atol=1e-12)
    plain = sample_timed_windows(data, jax.random.key(0), 8, 5, 0.3)
    assert np.array_equal(plain[0], windows)  # same windows, times from t = 0
    assert float(jnp.abs(plain[1] - t_start).max()) > 1.0


def test_fit_recovers_damping_of_a_driven_pendulum(pendulum_data):
    """`fit` on trajectories that start at t0 = 0, 2, …, 10 (given as ``t0``) recovers the
    damping γ = 0.3 from a prior of 0.1 (ω0 and A known)."""
    data, t0, _ = pendulum_data
    model = sl.models.DrivenPendulum(
        gamma=0.1, omega0=sl.Param(1.0, fixed=True), amplitude=sl.Param(1.0, fixed=True)
    )
    step = sl.solvers.Diffrax(model, 0.3, substeps=3)
    cfg = sl.TrainConfig(steps=120, batch_size=8, horizon=4, lr_theta=0.05, clip_norm=None)
    res = sl.fit(step, data, cfg, t0=t0, progress=False)
    assert abs(float(res.model.model.gamma.value) - 0.3) < 3e-3
    with pytest.raises(ValueError, match=r"t0 must be .* shape \(6,\)"):
        sl.fit(step, data, cfg, t0=jnp.zeros(4), progress=False)


def test_identifiability_of_a_forced_model_uses_the_start_times(pendulum_data):
    """The Fisher diagnostic compares ``f(t, u)`` with the data at each state's own time:
    without the trajectories' t0 the drive is out of phase and the residual noise
    estimate grows by more than 5x."""
    data, t0, truth = pendulum_data
    right = sl.identifiability(truth.model, data, method="rhs", dt=0.3, t0=t0)
    wrong = sl.identifiability(truth.model, data, method="rhs", dt=0.3)
    assert right.names == ("gamma", "omega0", "amplitude")
    assert wrong.noise_std > 5 * right.noise_std
    with pytest.raises(ValueError, match=r"t0 must be .* shape \(6,\), got \(2,\)"):
        sl.identifiability(truth.model, data, method="rhs", dt=0.3, t0=jnp.zeros(2))


class Linear(eqx.Module):
    """``x ↦ W x``: a linear network."""

    w: jax.Array

    def __call__(self, x):
        return self.w @ x


@pytest.mark.slow
def test_fit_learns_a_drive_through_a_closure_that_sees_the_forcing(pendulum_data):
    """The physics lacks the drive (A = 0); a closure that sees only the known forcing
    ``cos(Ω t)`` and writes only ω learns its amplitude while γ is recovered jointly."""
    data, t0, _ = pendulum_data
    physics = sl.models.DrivenPendulum(
        gamma=0.1, omega0=sl.Param(1.0, fixed=True), amplitude=sl.Param(0.0, fixed=True)
    )
    hybrid = sl.Hybrid(
        sl.solvers.Diffrax(physics, 0.3, substeps=3),
        Linear(jnp.zeros((1, 1))),
        inputs=Inputs(state=(), forcing=lambda t: jnp.cos(OMEGA * t)),
        outputs=(1,),
    )
    cfg = sl.TrainConfig(
        steps=150, batch_size=8, horizon=4, lr_theta=0.1, lr_net=0.1, clip_norm=None
    )
    res = sl.fit(hybrid, data, cfg, t0=t0, progress=False)
    assert abs(float(res.model.net.w[0, 0]) - 1.0) < 5e-3
    assert abs(float(res.model.model.gamma.value) - 0.3) < 3e-3


# ------------------------------------------------------------------------ closures: inputs, outputs


class Probe(eqx.Module):
    """Returns ``W x`` for a fixed ``W``: its output shows what it was given."""

    w: jax.Array

    def __call__(self, x):
        return self.w @ x


def test_closure_sees_its_inputs_and_writes_only_its_outputs():
    step = sl.solvers.Diffrax(sl.models.DrivenPendulum(), 0.1)
    w = jnp.array([[1.0, 10.0, 100.0]])
    hyb = sl.Hybrid(
        step,
        Probe(w),
        inputs=Inputs(state=(1,), time=True, forcing=lambda t: jnp.sin(t)),
        outputs=(1,),
        scale=2.0,
    )
    u, t = jnp.array([0.7, -0.4]), 0.25
    want = 2.0 * (-0.4 + 10.0 * 0.25 + 100.0 * np.sin(0.25))
    np.testing.assert_allclose(hyb.network_term(u, t), [0.0, want], rtol=1e-14)
    # inside the step: the undriven pendulum plus a closure that writes the drive it sees
    # as a known forcing is the driven pendulum
    drive = sl.Hybrid(
        sl.solvers.Diffrax(sl.models.DrivenPendulum(amplitude=0.0), 0.1),
        Probe(jnp.array([[0.0, 0.0, 1.0]])),
        inputs=Inputs(state=(1,), time=True, forcing=lambda s: 0.9 * jnp.cos(OMEGA * s)),
        outputs=(1,),
    )
    np.testing.assert_allclose(
        sl.rollout(drive, u, 20, 1.5), sl.rollout(step, u, 20, 1.5), rtol=0, atol=1e-14
    )


class TimeForcing(eqx.Module):
    """``x ↦ A cos(w x[-1]) sin(grid)``: a closure that uses only the time input."""

    amp: jax.Array
    grid: jax.Array
    w: float = eqx.field(static=True)

    def __call__(self, x):
        return self.amp * jnp.cos(self.w * x[-1]) * jnp.sin(self.grid)


@pytest.mark.parametrize("scheme", ["etdrk4", "strang-rk4"])
def test_closure_that_sees_time_is_evaluated_at_the_stage_times(scheme):
    """A closure ``A sin(x) cos(3t)`` of an unforced model reproduces the forced model's
    trajectory to round-off: every stage hands the closure its own time."""
    make = SCHEMES[scheme][0]
    forced = ForcedBurgers(amp=0.8)
    unforced = sl.models.Burgers(2 * np.pi, 32, nu=0.5)
    net = TimeForcing(jnp.asarray(0.8), forced.grid(), 3.0)
    hyb = sl.Hybrid(make(unforced, 0.1), net, inputs=Inputs(time=True))
    u0 = _u0(forced)
    a, b = sl.rollout(hyb, u0, 20, 0.7), sl.rollout(make(forced, 0.1), u0, 20, 0.7)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


def test_orthogonal_closure_restricted_to_its_outputs(key):
    """With ``identifiable="orthogonal"`` and ``outputs``, the term stays zero off the
    written components and is orthogonal to the sensitivity (Lorenz-96: ∂f/∂F = 1)."""
    model = sl.models.Lorenz96(8)
    step = sl.solvers.Diffrax(model, 0.05)
    net = Probe(jax.random.normal(key, (3, 8)))
    hyb = sl.Hybrid(step, net, outputs=(0, 3, 5), identifiable="orthogonal")
    u = model.initial_condition(jax.random.fold_in(key, 1)) + jnp.arange(8.0)
    g = hyb.network_term(u)
    raw = net(u)
    assert np.array_equal(np.flatnonzero(np.asarray(g)), [0, 3, 5])
    assert abs(float(jnp.sum(g))) < 1e-12 * float(jnp.abs(raw).max())
    np.testing.assert_allclose(g[jnp.array([0, 3, 5])], raw - raw.mean(), rtol=1e-12)


class Rotating(sl.models.AbstractForcedModel):
    """``u' = -k u + A (cos t, sin t)``: a drive whose direction turns with time."""

    k: sl.Param
    amp: sl.Param

    @property
    def state_shape(self):
        return (2,)

    def rhs(self, u):
        return -self.k.value * u

    def source(self, t, u):
        return self.amp.value * jnp.stack([jnp.cos(t), jnp.sin(t)])

    def initial_condition(self, key):
        return jax.random.normal(key, (2,))


def test_orthogonal_closure_removes_the_time_dependent_sensitivity():
    """The sensitivity to a drive's amplitude, ``(cos t, sin t)``, turns with time: the
    projection uses the state's own time, in `network_term` and inside the solver."""
    model = Rotating(sl.Param(1.0, fixed=True), sl.Param(0.5))
    net = Probe(jnp.array([[0.3, 1.0], [1.0, -2.0]]))
    hyb = sl.Hybrid(sl.solvers.Diffrax(model, 0.1), net, identifiable="orthogonal")
    u = jnp.array([0.7, -0.4])
    size = float(jnp.linalg.norm(net(u)))
    term = eqx.filter_jit(hyb.network_term)
    for t in (0.0, 1.1, 2.9):
        g = term(u, t)
        assert abs(float(g @ jnp.array([jnp.cos(t), jnp.sin(t)]))) < 1e-12 * size
        assert float(jnp.linalg.norm(g)) > 0.1 * size
    # inside every solver stage: a closure that writes exactly along the drive direction
    # at the stage's time is removed entirely, so the hybrid is the physics
    along = sl.Hybrid(
        sl.solvers.Diffrax(model, 0.1),
        Probe(jnp.eye(2)),
        inputs=Inputs(state=(), forcing=lambda t: jnp.stack([jnp.cos(t), jnp.sin(t)])),
        identifiable="orthogonal",
    )
    assert float(jnp.abs(along.net(along.inputs(0.3, u))).max()) > 0.5
    hyb_traj = sl.rollout(along, u, 10, 0.3)
    np.testing.assert_allclose(hyb_traj, sl.rollout(along.step, u, 10, 0.3), atol=1e-14)


def test_projection_applies_to_a_closure_that_sees_time(key):
    """`OddSignReflection` acts on the adapted network as a map of the state at fixed t."""
    ks = sl.models.KuramotoSivashinsky(22.0, 32)
    w = jax.random.normal(key, (32, 33)) / 6
    hyb = sl.Hybrid(
        sl.solvers.ETDRK4(ks, 0.25),
        Probe(w),
        inputs=Inputs(time=True),
        projection=OddSignReflection(),
    )
    u = ks.initial_condition(jax.random.fold_in(key, 1))
    g = hyb.network_term(u, 1.7)
    np.testing.assert_allclose(hyb.network_term(-u, 1.7), -g, atol=1e-14)
    assert float(jnp.abs(g).max()) > 1e-3


def test_wrong_network_output_for_the_written_components_is_a_clear_error():
    step = sl.solvers.Diffrax(sl.models.DrivenPendulum(), 0.1)
    u = jnp.array([0.1, 0.2])
    two = sl.Hybrid(step, Probe(jnp.ones((2, 2))), outputs=(1,))
    msg = r"input of shape \(2,\).*to \(2,\); with outputs=\(1,\) it must return shape \(1,\)"
    with pytest.raises(ValueError, match=msg):
        two(u)
    with pytest.raises(ValueError, match=msg):
        eqx.filter_jit(two)(u, 0.3)
    with pytest.raises(ValueError, match=msg):
        two.network_term(u)
    seen = sl.Hybrid(step, Probe(jnp.ones((1, 2))), inputs=Inputs(state=(0,), time=True))
    with pytest.raises(ValueError, match=r"to \(1,\); it must return the state's shape \(2,\)"):
        seen(u)


def test_invalid_inputs_and_outputs_are_rejected_when_the_hybrid_is_built():
    step = sl.solvers.Diffrax(sl.models.DrivenPendulum(), 0.1)
    net = Probe(jnp.ones((1, 1)))
    with pytest.raises(ValueError, match=r"outputs=\(2,\) must be distinct .* in \[0, 2\)"):
        sl.Hybrid(step, net, outputs=(2,))
    with pytest.raises(ValueError, match=r"outputs=\(1, 1\) must be distinct"):
        sl.Hybrid(step, net, outputs=(1, 1))
    with pytest.raises(ValueError, match=r"Inputs\(state\)=\(0, 5\) must be .* in \[0, 2\)"):
        sl.Hybrid(step, net, inputs=Inputs(state=(0, 5)))
    with pytest.raises(ValueError, match="gives the network nothing to see"):
        Inputs(state=())
    with pytest.raises(ValueError, match="must be a sl.hybrid.Inputs"):
        sl.Hybrid(step, net, inputs=(1,))
    with pytest.raises(ValueError, match="For 'parameter' pass context"):
        sl.Hybrid(step, net, coupling="parameter", outputs=(1,))
    ks = sl.solvers.ETDRK4(sl.models.KuramotoSivashinsky(22.0, 16), 0.25)
    with pytest.raises(ValueError, match="cannot be combined with outputs"):
        sl.Hybrid(ks, net, outputs=(0,), projection=OddSignReflection())
    # OddSignReflection still rejects states that are not periodic fields
    with pytest.raises(ValueError, match="1-D periodic field"):
        sl.Hybrid(step, net, projection=OddSignReflection())
    with pytest.raises(ValueError, match="not another Hybrid|scilayers stepper"):
        sl.Hybrid(sl.Hybrid(step, net, outputs=(1,)), net)
