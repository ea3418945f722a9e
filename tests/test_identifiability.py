"""Identifiability of θ_s: the orthogonal closure and the Fisher-information diagnostic."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from _operators import SpectralOperator
from scilayers.hybrid import orthogonalize
from scilayers.params import set_values


def _ks(n=32, **kw):
    return sl.models.KuramotoSivashinsky(22.0, n, **kw)


def _fd(fn, model, names, h):
    """Central finite differences ``∂ fn(model)/∂θ`` over the named Params, as columns."""
    vals = sl.params.values(model)
    cols = [
        (fn(set_values(model, **{k: vals[k] + h})) - fn(set_values(model, **{k: vals[k] - h})))
        / (2 * h)
        for k in names
    ]
    return jnp.stack(cols, axis=-1)


def _cos(x, y):
    return float(jnp.abs(jnp.vdot(x, y)) / (jnp.linalg.norm(x) * jnp.linalg.norm(y)))


def _trajectories(step, key, count=2, steps=40, warmup=100):
    """``count`` trajectories of ``steps`` steps on the attractor (one compiled rollout)."""
    u0 = jax.vmap(step.model.initial_condition)(jax.random.split(key, count))
    return jax.vmap(lambda u: sl.rollout(step, u, warmup + steps))(u0)[:, warmup:]


# --------------------------------------------------------------- orthogonal closure (KS)


def test_orthogonal_closure_is_orthogonal_to_every_sensitivity_and_idempotent(key):
    ks = _ks(n=64)  # free a, b, c, d
    net = sl.nn.PeriodicCNN1d(width=8, depth=1, key=key, final_scale=1.0)
    hyb = sl.Hybrid(sl.solvers.ETDRK4(ks, 0.25), net, identifiable="orthogonal")
    u = ks.initial_condition(jax.random.fold_in(key, 1))
    # KS is linear in θ_s: central differences are exact up to rounding
    jac = _fd(lambda m: m.rhs(u), ks, ("a", "b", "c", "d"), 0.5)
    g = net(u)
    g_perp = hyb.network_term(u)
    assert float(jnp.linalg.norm(g_perp)) > 0.1 * float(jnp.linalg.norm(g))  # not trivial
    for i in range(4):
        assert _cos(g_perp, jac[:, i]) < 1e-10
    np.testing.assert_allclose(g_perp, orthogonalize(g, jac), rtol=0, atol=1e-10)
    np.testing.assert_allclose(orthogonalize(g_perp, jac), g_perp, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: sl.solvers.ETDRK4(m, 0.25),
        lambda m: sl.solvers.Repeated(sl.solvers.ETDRK4(m, 0.125), 2),
        lambda m: sl.solvers.StrangSplitting(m, 0.05),
    ],
    ids=["etdrk4", "repeated", "strang"],
)
def test_a_closure_along_a_sensitivity_is_removed_inside_every_stage(make, key):
    """``-0.2 u_xx`` is what raising ``a`` by 0.2 adds: the orthogonal closure drops it, so
    the hybrid integrates exactly the physics."""
    ks = _ks(a=0.8)
    net = SpectralOperator(jnp.array([0.0, 0.0, -0.2]), 22.0)
    step = make(ks)
    u0 = ks.initial_condition(key)
    assert float(jnp.max(jnp.abs(net(u0)))) > 1e-2
    ortho = sl.Hybrid(step, net, identifiable="orthogonal")
    assert float(jnp.max(jnp.abs(ortho.network_term(u0)))) < 1e-12
    physics = sl.rollout(step, u0, 20)
    np.testing.assert_allclose(sl.rollout(ortho, u0, 20), physics, rtol=0, atol=1e-11)


def test_a_term_orthogonal_to_the_sensitivities_passes_unchanged(key):
    # free a, b only: their sensitivities -u_xx, -u_xxxx are even-order, so every odd-order
    # derivative is exactly orthogonal to them on a periodic grid
    ks = _ks(n=64, c=sl.Param(1.0, fixed=True), d=None)
    u = ks.initial_condition(key)
    net = SpectralOperator(jnp.array([0.0, 0.3, 0.0, -0.5]), 22.0)  # 0.3 u_x - 0.5 u_xxx
    step = sl.solvers.ETDRK4(ks, 0.25)
    hyb = sl.Hybrid(step, net, identifiable="orthogonal")
    np.testing.assert_allclose(hyb.network_term(u), net(u), rtol=0, atol=1e-12)
    # inside the stages too (there the projection runs on Fourier coefficients)
    np.testing.assert_allclose(
        sl.rollout(hyb, u, 10), sl.rollout(sl.Hybrid(step, net), u, 10), rtol=0, atol=1e-11
    )


def test_residual_correction_is_orthogonal_to_the_one_step_sensitivities(key):
    ks = _ks()
    step = sl.solvers.ETDRK4(ks, 0.25)
    net = sl.nn.PeriodicCNN1d(width=8, depth=1, key=key, final_scale=1.0)
    hyb = sl.Hybrid(step, net, coupling="residual", identifiable="orthogonal")
    u = ks.initial_condition(jax.random.fold_in(key, 1))
    corr = hyb.network_term(u)
    np.testing.assert_allclose(hyb(u) - step(u), corr, rtol=0, atol=1e-12)
    sens = _fd(lambda m: sl.solvers.ETDRK4(m, 0.25)(u), ks, ("a", "b", "c", "d"), 1e-4)
    assert float(jnp.linalg.norm(corr)) > 0.1 * float(jnp.linalg.norm(net(step(u))))
    for i in range(4):
        assert _cos(corr, sens[:, i]) < 1e-6  # finite differences are O(h²) accurate


def test_orthogonal_closure_recovers_theta_where_an_unrestricted_closure_drifts(key):
    """Truth: KS with a = b = 1 and a dispersion ``0.5 u_xxx`` the coarse model lacks.
    Coarse: a = 0.8, b = 1.25, no dispersion. The closure can express ``u_xx`` and
    ``u_xxxx`` as well as ``u_xxx``, so without a restriction the data cannot tell θ_s from
    the closure: both fits reach the same tiny loss, only the orthogonal one at the true
    θ_s."""
    truth = _ks(d=0.5)
    data = _trajectories(sl.solvers.ETDRK4(truth, 0.25), key)
    coarse = _ks(a=0.8, b=1.25, c=sl.Param(1.0, fixed=True), d=None)
    cfg = sl.TrainConfig(
        steps=100, batch_size=16, horizon=2, lr_theta=5e-2, lr_net=5e-2, val_every=1000
    )
    fitted = {}
    for mode in ("orthogonal", None):
        hyb = sl.Hybrid(
            sl.solvers.ETDRK4(coarse, 0.25),
            SpectralOperator(jnp.zeros(5), 22.0),
            identifiable=mode,
        )
        res = sl.fit(hyb, data, cfg, progress=False)
        theta = sl.params.values(res.model.step.model)
        fitted[mode] = (float(theta["a"]), float(theta["b"]), res.model.net.weights)
        assert res.history["data"][-1] < 1e-5  # both explain the data
    a, b, w = fitted["orthogonal"]
    assert abs(a - 1.0) < 0.02 and abs(b - 1.0) < 0.02
    assert abs(float(w[3]) + 0.5) < 0.01  # the closure learned the missing -0.5 u_xxx
    a_free, b_free, w_free = fitted[None]
    assert max(abs(a_free - 1.0), abs(b_free - 1.0)) > 0.05  # θ_s drifted …
    assert abs(float(w_free[2])) > 0.05  # … because the closure absorbed part of a·u_xx


# -------------------------------------------------------------------- ODE states (Diffrax)


class Pendulum(sl.models.AbstractModel):
    r"""Damped pendulum ``θ' = ω``, ``ω' = -ω0² sin θ - γ ω``; state ``(θ, ω)``."""

    gamma: sl.Param
    omega0: float = eqx.field(static=True, default=1.0)

    @property
    def state_shape(self):
        return (2,)

    def rhs(self, u):
        theta, omega = u[0], u[1]
        return jnp.stack([omega, -(self.omega0**2) * jnp.sin(theta) - self.gamma.value * omega])

    def initial_condition(self, key):
        return jnp.array([1.0, 0.0]) + 0.3 * jax.random.normal(key, (2,))


class StateNet(eqx.Module):
    """A fixed nonlinear map of the pendulum state to both components."""

    w: jax.Array

    def __call__(self, u):
        return jnp.stack([self.w[0] * jnp.sin(u[1]), self.w[1] * u[0] * u[1] + self.w[2]])


class Damping(eqx.Module):
    """Adds ``-δ ω`` (linear, what a change of γ does) or ``-δ ω|ω|`` (quadratic drag)."""

    delta: jax.Array
    quadratic: bool = eqx.field(static=True, default=False)

    def __call__(self, u):
        w = u[1] * jnp.abs(u[1]) if self.quadratic else u[1]
        return jnp.stack([jnp.zeros_like(w), -self.delta * w])


@pytest.mark.slow
def test_orthogonal_closure_on_ode_states(key):
    model = Pendulum(sl.Param(0.3, "positive"))
    step = sl.solvers.Diffrax(model, 0.1)
    u = jnp.array([0.7, -0.4])
    # ∂f/∂γ = (0, -ω): the projection removes the ω-equation's part, keeps the θ-equation's
    net = StateNet(jnp.array([0.5, 0.8, 0.2]))
    g = sl.Hybrid(step, net, identifiable="orthogonal").network_term(u)
    np.testing.assert_allclose(g, jnp.stack([net(u)[0], 0.0]), rtol=0, atol=1e-14)

    # a closure along ∂f/∂γ is removed inside the Diffrax stages: the physics, exactly
    u0 = jnp.array([1.0, 0.0])
    lin = Damping(jnp.array(0.2))
    run = eqx.filter_jit(lambda s: sl.rollout(s, u0, 30))  # one compile per structure
    physics = run(step)
    ortho = run(sl.Hybrid(step, lin, identifiable="orthogonal"))
    np.testing.assert_allclose(ortho, physics, rtol=0, atol=1e-13)
    # unrestricted, the same closure is a change of γ: the data cannot tell them apart
    free = run(sl.Hybrid(step, lin))
    np.testing.assert_allclose(free, run(sl.solvers.Diffrax(Pendulum(sl.Param(0.5)), 0.1)))
    assert float(jnp.max(jnp.abs(free - physics))) > 1e-2

    # gradients through the Diffrax stages with the projection are finite and reach θ_ml
    hyb = sl.Hybrid(step, net, identifiable="orthogonal")
    grads = jax.grad(lambda h: jnp.sum(sl.rollout(h, u0, 3) ** 2))(hyb)
    assert np.all(np.isfinite(grads.net.w)) and float(jnp.abs(grads.net.w[0])) > 0
    assert float(jnp.abs(grads.step.model.gamma.raw)) > 0

    # the limit of pointwise orthogonality on a 2-component state: quadratic drag is
    # parallel to ∂f/∂γ at every state, so the orthogonal closure cannot express it
    drag = Damping(jnp.array(0.2), quadratic=True)
    term = sl.Hybrid(step, drag, identifiable="orthogonal").network_term(u)
    assert float(jnp.max(jnp.abs(term))) < 1e-14


# ------------------------------------------------------------- identifiability diagnostic


class Relaxation(sl.models.AbstractModel):
    r"""``u' = c - a b u``: only the product ``a·b`` is seen, so ``a`` and ``b`` are not
    identifiable separately while ``c`` is."""

    a: sl.Param
    b: sl.Param
    c: sl.Param

    @property
    def state_shape(self):
        return (4,)

    def rhs(self, u):
        return self.c.value - self.a.value * self.b.value * u

    def initial_condition(self, key):
        return jax.random.uniform(key, (4,), minval=-2.0, maxval=2.0)


def test_identifiability_flags_redundant_params(key):
    model = Relaxation(sl.Param(1.5), sl.Param(0.8), sl.Param(0.5))
    step = sl.solvers.Diffrax(model, 0.1)
    u0 = jax.vmap(model.initial_condition)(jax.random.split(key, 6))
    data = jax.vmap(lambda u: sl.rollout(step, u, 15))(u0)
    data = data + 1e-3 * jax.random.normal(jax.random.fold_in(key, 9), data.shape)
    report = sl.identifiability(step, data)
    assert report.names == ("a", "b", "c")
    assert report.condition_number > 1e10
    assert report.poorly_identified == ("a", "b")
    assert report.correlations[0, 1] < -0.99  # a and b trade off one for one
    assert report.relative_std[2] < 0.1  # c is determined
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["poorly_identified"] == ["a", "b"] and d["condition_number"] > 1e10


def test_identifiability_of_ks_matches_the_closed_form_and_works_for_a_hybrid(key):
    ks = _ks()
    step = sl.solvers.ETDRK4(ks, 0.25)
    data = _trajectories(step, key, count=3, steps=20)
    # rhs method with known noise: F_aa = Σ_t |∂f/∂a|² / σ² = Σ_t |u_xx|² / σ²
    sigma = 0.01
    report = sl.identifiability(step, data, method="rhs", noise_std=sigma)
    interior = data[:, 1:-1].reshape(-1, 32)
    f_aa = float(jnp.sum(jax.vmap(lambda v: ks.derivative(v, 2))(interior) ** 2)) / sigma**2
    np.testing.assert_allclose(report.fisher[0, 0], f_aa, rtol=1e-10)
    assert report.names == ("a", "b", "c", "d") and report.n_states == 3 * 19

    noisy = data + 1e-3 * jax.random.normal(jax.random.fold_in(key, 1), data.shape)
    report = sl.identifiability(step, noisy)
    assert report.condition_number < 1e4 and report.poorly_identified == ()
    assert np.all(report.relative_std < 0.01)
    # one-step residuals see the noise of u_t (damped by the step) and of u_{t+1}
    assert 1e-3 < report.noise_std < 1.5e-3
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["poorly_identified"] == [] and set(d["relative_std"]) == {"a", "b", "c", "d"}
    # a Hybrid is assessed through its physics; a zero network changes nothing
    zero = sl.nn.PeriodicCNN1d(width=4, depth=0, key=key, final_scale=0.0)
    hybrid = sl.identifiability(sl.Hybrid(step, zero), noisy)
    np.testing.assert_allclose(hybrid.fisher, report.fisher, rtol=1e-10)

    with pytest.raises(ValueError, match="method='rhs'"):
        sl.identifiability(ks, data)
    with pytest.raises(ValueError, match=r"trajectories of shape \(batch, time, \*\(32,\)\)"):
        sl.identifiability(step, data[..., :16])


def test_identifiability_counts_only_the_observed_components(key):
    """With an observation operator the Fisher information is the sum over the measured
    components only: all of them reproduce the full diagnostic, and KS seen at one grid
    point holds far less information (and a smaller sum) than seen everywhere."""
    ks = _ks()
    step = sl.solvers.ETDRK4(ks, 0.25)
    data = _trajectories(step, key, count=3, steps=20)
    data = data + 1e-3 * jax.random.normal(jax.random.fold_in(key, 1), data.shape)
    full = sl.identifiability(step, data, noise_std=1e-3)
    every = sl.identifiability(step, data, noise_std=1e-3, observed=tuple(range(32)))
    np.testing.assert_allclose(every.fisher, full.fisher, rtol=1e-10)
    one = sl.identifiability(step, data, noise_std=1e-3, observed=(5,))
    halves = [sl.identifiability(step, data, noise_std=1e-3, observed=tuple(i))
              for i in (range(0, 32, 2), range(1, 32, 2))]  # fmt: skip
    np.testing.assert_allclose(halves[0].fisher + halves[1].fisher, full.fisher, rtol=1e-8)
    assert np.trace(one.fisher) < 0.2 * np.trace(full.fisher)
    assert np.all(one.relative_std > full.relative_std)
