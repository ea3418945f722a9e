"""`scilayers.uq`: vectorised deep ensembles equal separate fits, θ_s draws from the priors,
a heteroscedastic head learns known noise, AR(1) model error is recovered, the unscented
transform matches closed forms, NUTS matches a conjugate posterior and maps constraints
correctly, and the ``uq`` block of results.json."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from scilayers.metrics import EnsemblePrediction, GaussianPrediction

# ----------------------------------------------------------------------- small problems


class Decay(sl.models.AbstractModel):
    """``du/dt = -k u - c u³`` on a small state (``c`` is a fixed 'missing physics' term)."""

    rate: sl.Param
    n: int = eqx.field(static=True, default=2)
    cubic: float = eqx.field(static=True, default=0.0)

    @property
    def state_shape(self):
        return (self.n,)

    def rhs(self, u):
        return -self.rate.value * u - self.cubic * u**3

    def initial_condition(self, key):
        return jax.random.uniform(key, (self.n,), minval=0.5, maxval=1.5)


class Drift(sl.models.AbstractModel):
    """``du/dt = v``: a rollout linear in θ_s = v, so a Normal prior is conjugate."""

    speed: sl.Param

    @property
    def state_shape(self):
        return (1,)

    def rhs(self, u):
        return jnp.broadcast_to(self.speed.value, u.shape)

    def initial_condition(self, key):
        return jnp.zeros(1)


class Oscillator(sl.models.AbstractModel):
    """A damped linear oscillator ``x'' = -x - γ x'``, state ``(x, x')``."""

    damping: sl.Param

    @property
    def state_shape(self):
        return (2,)

    def rhs(self, u):
        return jnp.stack([u[1], -u[0] - self.damping.value * u[1]])

    def initial_condition(self, key):
        return jax.random.normal(key, (2,))


class Euler(sl.solvers.AbstractStepper):
    """``u + dt f(t, u)``: a step whose powers are polynomials in θ_s (closed-form moments)."""

    model: sl.models.AbstractModel
    dt: float = eqx.field(static=True)

    def __call__(self, u, t=0.0):
        return u + self.dt * self.model.vector_field(t, u)


class RK4(sl.solvers.AbstractStepper):
    """Classical Runge–Kutta: cheap to compile, for the sampler tests."""

    model: sl.models.AbstractModel
    dt: float = eqx.field(static=True)

    def __call__(self, u, t=0.0):
        f, h = self.model.vector_field, self.dt
        k1 = f(t, u)
        k2 = f(t + h / 2, u + h / 2 * k1)
        k3 = f(t + h / 2, u + h / 2 * k2)
        k4 = f(t + h, u + h * k3)
        return u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


PRIOR = sl.params.LogNormal(0.5, 0.3)


def _build(key):
    """A member: Euler decay with a prior on the rate and an MLP closure."""
    step = Euler(Decay(sl.Param(0.5, "positive", prior=PRIOR, name="rate")), 0.1)
    net = sl.nn.MLP(2, 2, width=8, depth=1, key=key, final_scale=0.1)
    return sl.Hybrid(step, net, coupling="closure")


@pytest.fixture(scope="module")
def decay_data():
    """Trajectories of the decay with k = 0.7 and a cubic term the members lack."""
    truth = Euler(Decay(sl.Param(0.7), cubic=0.3), 0.1)
    u0 = jax.vmap(truth.model.initial_condition)(jax.random.split(jax.random.key(0), 8))
    return jax.vmap(lambda u: sl.rollout(truth, u, 30))(u0)


def _arrays(tree):
    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))


# --------------------------------------------------------------------------- ensembles


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"horizon_schedule": (2, 4)}, id="joint-horizon-schedule"),
        pytest.param({"strategy": "staged"}, id="staged", marks=pytest.mark.slow),
    ],
)
def test_vmapped_ensemble_equals_separate_fits(decay_data, changes):
    """Training M members as one vmapped program gives, member by member, what `sl.fit`
    gives with the member's seed (parameters and loss history to round-off); members start
    from different θ_s drawn from the prior and end with a θ_s spread."""
    m = 3
    members = sl.uq.init_members(_build, jax.random.key(1), m)
    start = sl.uq.theta_spread(members)["rate"]["members"]
    assert len(set(start)) == m
    cfg = sl.TrainConfig(steps=12, batch_size=4, horizon=4, lr_net=1e-2, schedule="constant",
                         seed=7, **changes)  # fmt: skip
    res = sl.uq.train_ensemble(members, decay_data, cfg)
    assert res.seeds == (7, 8, 9) and not res.diverged.any()
    assert res.history["loss"].shape == (m, 12) and res.history["theta/rate"].shape == (m, 12)
    for i in range(m):
        one = sl.fit(sl.uq.member(members, i), decay_data, cfg.replace(seed=7 + i), progress=False)
        for a, b in zip(_arrays(one.model), _arrays(sl.uq.member(res.models, i)), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(res.history["loss"][i], one.history["loss"], rtol=1e-10)
        np.testing.assert_allclose(res.history["theta/rate"][i], one.history["theta/rate"],
                                   rtol=1e-10)  # fmt: skip
    spread = res.theta["rate"]
    assert spread["std"] > 0 and len(spread["members"]) == m
    assert spread["mean"] == pytest.approx(np.mean(spread["members"]))


def test_ensemble_rollout_rolls_every_member(decay_data):
    """`ensemble_rollout` equals rolling each member out on its own, for one state and a
    batch."""
    members = sl.uq.init_members(_build, jax.random.key(2), 3)
    u0 = decay_data[:, 0]
    out = sl.uq.ensemble_rollout(members, u0, 10)
    assert out.shape == (3, 8, 11, 2)
    for i in range(3):
        want = jax.vmap(lambda u, i=i: sl.rollout(sl.uq.member(members, i), u, 10))(u0)
        np.testing.assert_allclose(out[i], want, rtol=1e-12)
    single = sl.uq.ensemble_rollout(members, u0[0], 10)
    np.testing.assert_allclose(single, out[:, 0], rtol=1e-12)


def test_theta_draws_follow_the_prior(key):
    """`init_members` from one model draws θ_s from each free Param's prior (log-values of a
    LogNormal(0.5, 0.3) have mean log 0.5 and std 0.3 within sampling error), leaves fixed
    Params alone, redraws values outside a constraint, and jitters a Param without prior."""
    model = sl.models.Lorenz96(8, forcing=sl.Param(8.0, prior=sl.params.Normal(8.0, 1.0), name="F"),
                               damping=sl.Param(1.0, "positive", prior=PRIOR))  # fmt: skip
    members = sl.uq.init_members(model, key, 400)
    vals = sl.params.values(members)
    logs = np.log(np.asarray(vals["damping"]))
    assert abs(logs.mean() - math.log(0.5)) < 4 * 0.3 / math.sqrt(400)
    assert logs.std(ddof=1) == pytest.approx(0.3, rel=0.12)
    assert np.asarray(vals["F"]).std(ddof=1) == pytest.approx(1.0, rel=0.12)
    np.testing.assert_array_equal(vals["advection"], 1.0)  # fixed: untouched
    # a Normal prior that reaches below zero on a positive Param: every draw is positive
    tight = Decay(sl.Param(0.1, "positive", prior=sl.params.Normal(0.1, 0.2), name="rate"))
    draws = np.asarray(sl.params.values(sl.uq.init_members(tight, key, 200))["rate"])
    assert np.all(draws > 0) and draws.std() > 0.05
    # no prior: a jitter of the unconstrained value (relative for a positive Param)
    plain = Decay(sl.Param(2.0, "positive", name="rate"))
    jit = np.asarray(sl.params.values(sl.uq.init_members(plain, key, 300, jitter=0.05))["rate"])
    assert np.log(jit / 2.0).std(ddof=1) == pytest.approx(0.05, rel=0.15)
    kept = sl.uq.init_members(plain, key, 2, theta="keep")
    np.testing.assert_array_equal(sl.params.values(kept)["rate"], [2.0, 2.0])


def test_members_must_share_a_structure(key):
    with pytest.raises(ValueError, match="static fields"):
        sl.uq.stack_members([Euler(Decay(sl.Param(1.0)), 0.1), Euler(Decay(sl.Param(1.0)), 0.2)])
    with pytest.raises(ValueError, match="not a stacked ensemble"):
        sl.uq.ensemble_rollout(_build(key), jnp.ones(2), 2)
    with pytest.raises(ValueError, match="theta="):
        sl.uq.init_members(_build, key, 2, theta="posterior")


# ---------------------------------------------------------------------- heteroscedastic


def test_heteroscedastic_head_learns_known_noise(key):
    """One noisy step ``u' = (1 - k dt) u + s(u) ε`` (``dt = 0.5``) with ``s(u) = 0.02 +
    0.1 u²``: trained with the Gaussian NLL (two members, one vmapped program), the head's
    standard deviation matches ``s`` within 15 % (6 % on average) over the data's range,
    and the rate is learned; `variance_split` obeys the law of total variance."""
    k_true, dt, n = 0.7, 0.5, 3000
    ku, ke = jax.random.split(key)
    u = jax.random.uniform(ku, (n, 1), minval=-2.0, maxval=2.0)

    def noise_std(x):
        return 0.02 + 0.1 * x**2

    nxt = (1 - k_true * dt) * u + noise_std(u) * jax.random.normal(ke, (n, 1))
    data = jnp.stack([u, nxt], axis=1)  # (trajectories, 2, 1): one transition each

    def build(k):
        step = Euler(Decay(sl.Param(0.3, "positive", name="rate"), n=1), dt)
        head = sl.nn.MLP(1, 1, width=16, depth=2, key=k, final_scale=0.1)
        return sl.uq.Heteroscedastic(step, head, offset=math.log(0.05**2))

    members = sl.uq.init_members(build, jax.random.key(3), 2, theta="keep")
    cfg = sl.TrainConfig(steps=1500, batch_size=256, horizon=1, lr_theta=3e-2, lr_net=1e-2,
                         clip_norm=None)  # fmt: skip
    res = sl.uq.train_ensemble(members, data, cfg, loss_fn=sl.uq.nll_loss())
    np.testing.assert_allclose(res.theta["rate"]["members"], k_true, rtol=0.03)
    grid = jnp.linspace(-1.8, 1.8, 19)[:, None]
    for i in range(2):
        model = sl.uq.member(res.models, i)
        mean, var = jax.vmap(model.predict)(grid)
        rel = np.abs(np.sqrt(var) / noise_std(grid) - 1)
        assert rel.max() < 0.15 and rel.mean() < 0.06, rel.ravel()
        np.testing.assert_allclose(mean, jax.vmap(model)(grid), rtol=1e-12)
    # the law of total variance on synthetic member moments
    means = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    var = np.array([[1.0, 0.5], [1.0, 0.5], [4.0, 0.5]])
    split = sl.uq.variance_split(means, var)
    np.testing.assert_allclose(split["aleatoric"], [2.0, 0.5])
    np.testing.assert_allclose(split["epistemic"], [8 / 3, 0.0])
    np.testing.assert_allclose(split["total"], split["aleatoric"] + split["epistemic"])


def test_heteroscedastic_noise_is_sampled_along_rollouts(key):
    """With a constant head (log-variance c) the sampled rollouts of a linear step have the
    closed-form variance ``e^c Σ_j a^{2j}`` at every lead time; the samples' variance split
    puts it in the aleatoric part."""

    class Const(eqx.Module):
        def __call__(self, u):
            return jnp.zeros_like(u)

    a, c = 0.9, math.log(0.1**2)
    model = sl.uq.Heteroscedastic(Euler(Decay(sl.Param(1.0), n=1), 0.1), Const(), offset=c)
    fc = sl.uq.ensemble_forecast(sl.uq.stack_members([model]), jnp.ones(1), 8, key,
                                 samples=20_000)  # fmt: skip
    assert fc.samples.shape == (1, 20_000, 9, 1)
    var = np.asarray(fc.samples)[0, :, :, 0].var(axis=0)
    want = [0.01 * sum(a ** (2 * j) for j in range(k)) for k in range(9)]
    np.testing.assert_allclose(var, want, rtol=0.05, atol=1e-12)
    split = fc.variance_split()
    np.testing.assert_allclose(split["aleatoric"][:, 0], var, rtol=1e-3)
    np.testing.assert_allclose(split["epistemic"], 0.0, atol=1e-14)


# ------------------------------------------------------------------ AR(1) and unscented


def test_ar1_fit_recovers_a_known_process(key):
    """Residual series generated by an AR(1) with φ = 0.8, σ = 0.3, μ = 0.1 give back φ,
    σ and μ; per component, two components with different φ are told apart; the
    residuals of the exact model on its own trajectories are zero."""
    phis = np.array([0.8, -0.3])
    ar = sl.uq.AR1(phis, 0.3, 0.1)
    k0, kn = jax.random.split(key)
    series, steps = 400, 200
    noise = jax.random.normal(kn, (steps, series, 2))

    def step(e, z):
        e = jax.vmap(ar.step)(e, z)
        return e, e

    e0 = jax.vmap(lambda k: ar.initial(k, (2,)))(jax.random.split(k0, series))
    _, r = jax.lax.scan(step, e0, noise)
    r = jnp.moveaxis(r, 0, 1)  # (series, time, 2)
    pooled = sl.uq.fit_ar1(r[..., :1])
    assert float(pooled.phi) == pytest.approx(0.8, abs=0.01)
    assert float(pooled.sigma) == pytest.approx(0.3, rel=0.01)
    assert float(pooled.mean) == pytest.approx(0.1, abs=0.02)
    per = sl.uq.fit_ar1(r, per_component=True)
    np.testing.assert_allclose(per.phi, phis, atol=0.01)
    assert float(sl.uq.AR1(0.8, 0.3).stationary_std) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="stationary"):
        sl.uq.AR1(1.0, 0.1)
    model = Euler(Decay(sl.Param(0.7)), 0.1)
    traj = jax.vmap(lambda u: sl.rollout(model, u, 6))(jnp.ones((3, 2)))
    np.testing.assert_allclose(sl.uq.one_step_residuals(model, traj), 0.0, atol=1e-15)


def _gaussian_power_moment(a: float, b: float, n: int) -> float:
    """``E[(a + b Z)^n]`` for ``Z ~ N(0, 1)`` (binomial expansion, ``E Z^j = (j-1)!!``)."""
    total = 0.0
    for j in range(0, n + 1, 2):
        total += math.comb(n, j) * a ** (n - j) * b**j * math.prod(range(j - 1, 0, -2))
    return total


def test_unscented_matches_closed_form_moments():
    """Euler decay ``u_n = (1 - k dt)^n u_0`` with ``k ~ N(0.7, 0.05²)`` and ``u_0 ~ N(1,
    0.1²)`` independent: mean and variance at every step from Gaussian moments (a
    polynomial of degree 2n in k). The unscented transform is accurate to second order: the
    one-shot and the per-step schemes match the mean to 1e-5 and the variance to 1 %
    (and exactly where the map is linear: state uncertainty alone)."""
    dt, kbar, ks, m0, p0, n = 0.1, 0.7, 0.05, 1.0, 0.01, 12
    model = Euler(Decay(sl.Param(kbar), n=1), dt)
    mean_c = np.array([_gaussian_power_moment(1 - kbar * dt, -ks * dt, j) for j in range(n + 1)])
    mean_c2 = np.array([_second(kbar, ks, dt, j) for j in range(n + 1)])
    want_mean = m0 * mean_c
    want_var = (p0 + m0**2) * mean_c2 - (m0 * mean_c) ** 2
    for resample in (False, True):
        ut = sl.uq.unscented_rollout(
            model,
            jnp.array([m0]),
            jnp.array([[p0]]),
            n,
            theta_cov=jnp.array([[ks**2]]),
            resample=resample,
        )
        np.testing.assert_allclose(ut.mean[:, 0], want_mean, rtol=1e-5)
        np.testing.assert_allclose(ut.cov[:, 0, 0], want_var, rtol=1e-2)
        np.testing.assert_allclose(ut.prediction().std[:, 0] ** 2, ut.cov[:, 0, 0], rtol=1e-12)
    exact = sl.uq.unscented_rollout(model, jnp.array([m0]), jnp.array([[p0]]), n)
    c = 1 - kbar * dt
    np.testing.assert_allclose(exact.mean[:, 0], m0 * c ** np.arange(n + 1), rtol=1e-12)
    np.testing.assert_allclose(exact.cov[:, 0, 0], p0 * c ** (2 * np.arange(n + 1)), rtol=1e-10)


def _second(kbar: float, ks: float, dt: float, j: int) -> float:
    """``E[(1 - k dt)^{2j}]``."""
    return _gaussian_power_moment(1 - kbar * dt, -ks * dt, 2 * j)


def test_ar1_error_unscented_equals_kalman_recursion_and_monte_carlo(key):
    """A linear step with AR(1) model error is linear-Gaussian, so the per-step unscented
    transform is exact: it equals the covariance recursion ``P' = A P Aᵀ + σ² g gᵀ`` of
    ``[u, e]``; AR(1) ensemble rollouts (20 000 samples) agree within sampling error."""
    dt, rate, n = 0.1, 0.5, 15
    ar = sl.uq.AR1(0.7, 0.05)
    model = Euler(Decay(sl.Param(rate), n=1), dt)
    ut = sl.uq.unscented_rollout(model, jnp.array([1.0]), None, n, error=ar)
    a = 1 - rate * dt
    big_a = np.array([[a, 0.7], [0.0, 0.7]])
    g = np.array([1.0, 1.0])
    m, p = np.array([1.0, 0.0]), np.diag([0.0, 0.05**2 / (1 - 0.49)])
    for k in range(1, n + 1):
        m = big_a @ m
        p = big_a @ p @ big_a.T + 0.05**2 * np.outer(g, g)
        assert float(ut.mean[k, 0]) == pytest.approx(m[0], rel=1e-12)
        assert float(ut.cov[k, 0, 0]) == pytest.approx(p[0, 0], rel=1e-10)
    fc = sl.uq.ensemble_forecast(sl.uq.stack_members([model]), jnp.array([1.0]), n, key,
                                 samples=20_000, error=ar)  # fmt: skip
    var = np.asarray(fc.samples)[0, :, :, 0].var(axis=0)
    np.testing.assert_allclose(var[1:], ut.cov[1:, 0, 0], rtol=0.05)


def test_compare_propagation_both_calibrated_on_a_linear_gaussian_truth(key):
    """Truth with the AR(1) error the model assumes: both propagations cover the 90 %
    interval in 85–95 % of points and report their cost."""
    dt, rate, n, batch = 0.1, 0.5, 10, 300
    ar = sl.uq.AR1(0.7, 0.05)
    model = Euler(Decay(sl.Param(rate), n=1), dt)
    k_truth, k_u0, k_ens = jax.random.split(key, 3)
    u0 = jax.random.uniform(k_u0, (batch, 1), minval=0.5, maxval=1.5)
    truth = sl.uq.ensemble_forecast(sl.uq.stack_members([model]), u0, n, k_truth,
                                    error=ar).samples[0, 0]  # fmt: skip
    out = sl.uq.compare_propagation(sl.uq.stack_members([model]), u0, truth, k_ens,
                                    error=ar, samples=200)  # fmt: skip
    for method in ("ensemble", "unscented"):
        assert 0.85 <= out[method]["picp_90"] <= 0.95, (method, out[method])
        assert 0.85 <= out[method]["spread_skill"] <= 1.15
        assert out[method]["seconds"] > 0 and len(out[method]["spread_skill_by_step"]) == n
    json.dumps(out)


# ------------------------------------------------------------------------- Bayesian


def test_nuts_matches_the_conjugate_posterior(key):
    """``du/dt = v`` with a Normal prior on ``v`` and Gaussian noise: the posterior is
    Normal in closed form; NUTS through the solver gets its mean and standard deviation
    within 5 %, R-hat < 1.05, and the true ``v`` inside the 95 % interval."""
    dt, steps, sigma, true, mu0, s0 = 0.1, 20, 0.3, 0.8, 0.0, 1.0
    tk = dt * np.arange(1, steps + 1)
    data = np.zeros((4, steps + 1, 1))  # the initial state u0 = 0 is known exactly
    data[:, 1:, 0] = true * tk + sigma * np.asarray(jax.random.normal(key, (4, steps)))
    prec = 1 / s0**2 + 4 * np.sum(tk**2) / sigma**2
    exact_mean = (mu0 / s0**2 + np.sum(tk * data[:, 1:, 0]) / sigma**2) / prec
    model = RK4(Drift(sl.Param(0.0, name="speed", prior=sl.params.Normal(mu0, s0))), dt)
    post = sl.uq.posterior_theta(model, data, jax.random.key(1), noise=sigma, num_warmup=300,
                                 num_samples=1000, num_chains=4)  # fmt: skip
    summary = post.summary({"speed": true})["speed"]
    assert summary["mean"] == pytest.approx(exact_mean, rel=0.05)
    assert summary["std"] == pytest.approx(prec**-0.5, rel=0.05)
    assert summary["r_hat"] < 1.05 and summary["covered"] and post.divergences == 0
    json.dumps(post.summary())


def test_nuts_recovers_damping_and_noise_with_constraints(key):
    """A damped oscillator with a positive damping γ (LogNormal prior) and an unknown noise
    level: the true γ and σ lie inside their 95 % intervals with R-hat < 1.05; with no
    information in the data (σ = 10⁶) the posterior is the prior, which checks the
    constraint's Jacobian (log-values of γ: mean log 0.5, std 0.5)."""
    true = RK4(Oscillator(sl.Param(0.3, "positive", name="damping")), 0.1)
    u0 = jax.random.normal(key, (3, 2))
    clean = jax.vmap(lambda u: sl.rollout(true, u, 40))(u0)
    noisy = clean.at[:, 1:].add(0.05 * jax.random.normal(jax.random.key(3), clean[:, 1:].shape))
    prior = sl.params.LogNormal(0.5, 0.5)
    model = RK4(Oscillator(sl.Param(0.5, "positive", name="damping", prior=prior)), 0.1)
    post = sl.uq.posterior_theta(model, noisy, jax.random.key(4), horizon=20,
                                 noise=sl.params.LogNormal(0.1, 1.0), num_warmup=300,
                                 num_samples=300, num_chains=4)  # fmt: skip
    s = post.summary({"damping": 0.3, "noise": 0.05})
    assert s["damping"]["covered"] and s["noise"]["covered"]
    assert max(post.r_hat) < 1.05 and min(post.ess) > 100
    flat = sl.uq.posterior_theta(model, noisy, jax.random.key(5), noise=1e6, num_warmup=300,
                                 num_samples=1000, num_chains=4)  # fmt: skip
    logs = np.log(flat.samples[..., 0]).ravel()
    assert abs(logs.mean() - math.log(0.5)) < 4 * 0.5 / math.sqrt(min(flat.ess))
    assert logs.std() == pytest.approx(0.5, rel=0.08)
    # posterior draws as an ensemble: the posterior predictive
    draws = post.models(5)
    assert sl.uq.count_members(draws) == 5
    assert sl.uq.ensemble_rollout(draws, u0, 3).shape == (5, 3, 4, 2)


def test_posterior_needs_priors():
    model = RK4(Oscillator(sl.Param(0.5, "positive", name="damping")), 0.1)
    data = np.zeros((1, 5, 2))
    with pytest.raises(ValueError, match="no prior"):
        sl.uq.posterior_theta(model, data, jax.random.key(0), noise=0.1)
    with pytest.raises(ValueError, match="not free Params"):
        sl.uq.posterior_theta(model, data, jax.random.key(0), noise=0.1,
                              priors={"gamma": sl.params.Normal(0, 1)})  # fmt: skip
    with pytest.raises(ValueError, match="noise must be"):
        sl.uq.posterior_theta(model, data, jax.random.key(0), noise=-1.0,
                              priors={"damping": PRIOR})  # fmt: skip


# ------------------------------------------------------------------------- uq block


def test_uq_block_has_the_results_json_keys(key):
    """Per set the seven documented metrics pooled over lead times 1…T, the same per lead
    time, the metrics at the main lead time and a reliability diagram; JSON-ready."""
    batch, time = 50, 6
    truth = np.array(jax.random.normal(key, (batch, time, 3)))
    truth[:, 0] = 0.0
    ens = EnsemblePrediction(np.asarray(jax.random.normal(jax.random.fold_in(key, 1),
                                                          (40, batch, time, 3))))  # fmt: skip
    gauss = GaussianPrediction(np.zeros_like(truth), np.ones_like(truth))
    block = sl.uq.uq_block({"id": (truth, ens), "ood": (truth, gauss)}, lead=3,
                           theta={"a": {"mean": 1.0}})  # fmt: skip
    for name in ("id", "ood"):
        b = block[name]
        assert set(sl.metrics.CALIBRATION_KEYS) <= set(b)
        assert b["steps"] == [1, 2, 3, 4, 5] and len(b["by_step"]["crps"]) == 5
        assert b["at_lead"]["step"] == 3
    # pooled = the calibration of steps 1..T (step 0 would be a zero-spread point)
    want = sl.metrics.calibration(truth[:, 1:], GaussianPrediction(gauss.mean[:, 1:],
                                                                    gauss.std[:, 1:]))  # fmt: skip
    assert block["ood"]["crps"] == pytest.approx(want["crps"])
    assert block["theta"] == {"a": {"mean": 1.0}}
    json.dumps(block)
    with pytest.raises(ValueError, match="outside the scored lead times"):
        sl.uq.uq_block({"id": (truth, gauss)}, lead=0)


@pytest.mark.slow
def test_simulation_based_calibration_through_lorenz96():
    """100 replications of Lorenz-96 (k = 8, Diffrax) with the forcing F drawn from its
    Normal(8, 1) prior: the ranks of the truth among 99 posterior draws are uniform (χ²
    test over 10 bins, p > 0.01) and the 90 % interval covers the truth in 85–95 % of
    replications; every replication's R-hat < 1.1."""
    model = sl.models.Lorenz96(8, forcing=sl.Param(8.0, name="F", prior=sl.params.Normal(8, 1)))
    step = sl.solvers.Diffrax(model, 0.05)
    u0 = jax.vmap(model.initial_condition)(jax.random.split(jax.random.key(0), 2))
    u0 = jax.vmap(lambda u: sl.rollout(step, u, 100)[-1])(u0)
    res = sl.uq.simulation_based_calibration(step, u0, 10, jax.random.key(1), noise=0.5,
                                             replications=100, num_warmup=200,
                                             num_samples=200, num_chains=2)  # fmt: skip
    summary = res.summary()["F"]
    assert sum(summary["rank_histogram"]) == 100
    assert summary["p_value"] > 0.01, summary
    assert 0.85 <= summary["coverage_90"] <= 0.95, summary
    assert res.max_r_hat.max() < 1.1


def test_fit_ar1_clips_a_drifting_component_when_asked():
    """Growing residuals (φ > 1) are not stationary: an error by default, clipped with
    max_phi."""
    rng = np.random.default_rng(0)
    walk = np.zeros((4, 400, 2))
    walk[..., 0] = 1.02 ** np.arange(400) * (1 + 0.01 * rng.normal(size=(4, 400)))
    walk[..., 1] = rng.normal(size=(4, 400))  # the second component is white noise
    with pytest.raises(ValueError, match="phi"):
        sl.uq.fit_ar1(walk, per_component=True)
    ar = sl.uq.fit_ar1(walk, per_component=True, max_phi=0.9)
    assert float(ar.phi[0]) == pytest.approx(0.9)
    assert abs(float(ar.phi[1])) < 0.1  # the white component is untouched
    with pytest.raises(ValueError, match="max_phi"):
        sl.uq.fit_ar1(walk, max_phi=1.0)


def _miscalibrated(rng, batch=200, members=20, heavy=False, true_sd=(1.0, 0.2, 5.0)):
    """Windows whose truth scatters about the ensemble's centre with a standard deviation
    that grows with lead time and differs by component, and an ensemble with one spread
    everywhere: the factors that fix it are known."""
    time, true_sd, ens_sd = 6, np.asarray(true_sd), 0.5
    lead_sd = np.linspace(0.0, 2.0, time)[:, None]
    centre = rng.normal(size=(batch, time, len(true_sd)))
    shape = centre.shape
    noise = rng.standard_t(3, size=shape) / np.sqrt(3) if heavy else rng.normal(size=shape)
    truth = centre + noise * lead_sd * true_sd
    z = rng.normal(size=(members, batch, time, len(true_sd)))
    ens = centre[None] + (z - z.mean(axis=0)) * ens_sd  # the ensemble mean is the centre
    # the predictive spread is sqrt(1 + 1/M) times the members' (as_gaussian)
    expected = np.outer(lead_sd[:, 0], true_sd) / (ens_sd * np.sqrt(1 + 1 / members))
    return truth, EnsemblePrediction(ens), expected


def test_spread_scale_recovers_known_factors_per_lead_and_component():
    """On Gaussian errors the minimum-CRPS factors are the ratio of the true scatter to the
    ensemble's spread, per lead time and per component; the mean is left alone and the
    recalibrated ensemble is calibrated on fresh windows."""
    rng = np.random.default_rng(0)
    truth, ens, expected = _miscalibrated(rng)
    scale = sl.uq.fit_spread_scale(truth, ens, floor=False)
    got = scale.factor(6, (3,))
    np.testing.assert_allclose(got[1:], expected[1:], rtol=0.12)
    out = scale.apply(ens)
    np.testing.assert_allclose(np.mean(out.samples, 0), np.mean(ens.samples, 0), atol=1e-9)
    fresh_truth, fresh, _ = _miscalibrated(np.random.default_rng(1))
    fixed = scale.apply(fresh)
    for k in range(1, 6):
        ss = sl.metrics.spread_skill(fresh_truth[:, k], EnsemblePrediction(fixed.samples[:, :, k]))
        cov = sl.metrics.picp(fresh_truth[:, k], EnsemblePrediction(fixed.samples[:, :, k]), 0.9)
        assert 0.85 < ss < 1.15 and 0.86 < cov < 0.94, (k, ss, cov)
    # without component factors the three components share one (wrong for each) factor
    pooled = sl.uq.fit_spread_scale(truth, ens, per_component=False)
    assert np.all(pooled.component == 1.0)


def test_spread_scale_floor_fixes_a_spread_in_the_wrong_places():
    """An ensemble whose spread varies from point to point at random (its errors do not):
    rescaling alone cannot give both coverage and spread–skill, the fitted floor does, on
    fresh windows."""

    def windows(rng, batch=400, members=20):
        centre = rng.normal(size=(batch, 4, 8))
        truth = centre + rng.normal(size=centre.shape) * np.array([0, 1, 1, 1])[:, None]
        spread = np.exp(rng.normal(size=centre.shape))  # lognormal, unrelated to the error
        z = rng.normal(size=(members, *centre.shape))
        return truth, EnsemblePrediction(centre[None] + (z - z.mean(0)) * spread)

    truth, ens = windows(np.random.default_rng(5))
    fresh_truth, fresh = windows(np.random.default_rng(6))
    # the fixed floor: here each window's spread level is noise too (8 components of a
    # lognormal spread), which the adaptive floor would follow
    with_floor = sl.uq.fit_spread_scale(truth, ens, adaptive=False)
    rescaled = sl.uq.fit_spread_scale(truth, ens, floor=False)
    assert np.all(with_floor.mix[1:] >= 0.7)  # mostly the typical spread
    for scale, ok in ((with_floor, True), (rescaled, False)):
        out = scale.apply(fresh)
        k = 3
        cov = sl.metrics.picp(fresh_truth[:, k], EnsemblePrediction(out.samples[:, :, k]), 0.9)
        ss = sl.metrics.spread_skill(fresh_truth[:, k], EnsemblePrediction(out.samples[:, :, k]))
        calibrated = 0.86 < cov < 0.94 and 0.85 < ss < 1.15
        assert calibrated == ok, (cov, ss)


def test_adaptive_floor_follows_the_forecasts_spread_level():
    """Windows in two regimes, the error twice or half the typical size; the members' spread
    at each point is noisy (unrelated to the error) but its level over the components
    follows the regime. Fitted on a mix of both, the floor that adapts to each forecast's
    level calibrates a fresh set of the wide regime alone (an out-of-domain shift); a fixed
    floor, the typical spread of the mix, under-covers it."""

    def windows(rng, regimes, batch=400, members=20, n=32):
        level = rng.choice(regimes, size=batch)[:, None, None]
        centre = rng.normal(size=(batch, 4, n))
        step = np.array([0, 1, 1, 1])[:, None]
        truth = centre + rng.normal(size=centre.shape) * level * step
        spread = level * np.exp(0.5 * rng.normal(size=centre.shape))  # noisy per point
        z = rng.normal(size=(members, *centre.shape))
        return truth, EnsemblePrediction(centre[None] + (z - z.mean(0)) * spread)

    truth, ens = windows(np.random.default_rng(21), (0.5, 2.0))
    wide_truth, wide = windows(np.random.default_rng(22), (2.0,))
    adaptive = sl.uq.fit_spread_scale(truth, ens, per_component=False)
    fixed = sl.uq.fit_spread_scale(truth, ens, per_component=False, adaptive=False)
    assert adaptive.adaptive and not fixed.adaptive
    k = 3
    for scale, ok in ((adaptive, True), (fixed, False)):
        out = EnsemblePrediction(scale.apply(wide).samples[:, :, k])
        cov = sl.metrics.picp(wide_truth[:, k], out, 0.9)
        ss = sl.metrics.spread_skill(wide_truth[:, k], out)
        assert (0.85 < cov < 0.95 and 0.85 < ss < 1.15) == ok, (ok, cov, ss)


def test_spread_scale_shrinks_component_factors_of_a_homogeneous_state():
    """Components that differ only by sampling noise get no factors of their own: from ten
    windows their raw error/spread ratios scatter by 15-30 %, the fitted factors by < 5 %."""
    rng = np.random.default_rng(2)
    centre = rng.normal(size=(10, 5, 16))
    truth = centre + rng.normal(size=centre.shape)
    x = centre[None] + rng.normal(size=(10, 10, 5, 16)) * 0.5
    scale = sl.uq.fit_spread_scale(truth, EnsemblePrediction(x))
    mean, var = x.mean(0), x.var(0, ddof=1) * 1.1
    raw = np.sqrt(((mean - truth)[:, 1:] ** 2).sum((0, 1)) / var[:, 1:].sum((0, 1)))
    raw = raw / np.exp(np.log(raw).mean())
    assert np.abs(raw - 1).max() > 0.15  # what an unshrunk factor would be
    np.testing.assert_allclose(scale.component, 1.0, atol=0.05)
    np.testing.assert_allclose(scale.lead[1:], 2.0 / np.sqrt(1.1), rtol=0.15)


def test_spread_scale_groups_keep_each_quantity_its_own_factor():
    """A state of two quantities (say pressures and flows), the ensemble three times too
    wide on one and three times too narrow on the other, seen through one window whose
    errors persist along the lead time: without labels empirical Bayes shrinks the
    component factors to one shared factor (one window cannot tell the components apart);
    labelled by quantity each group keeps its own factor, pooled over its components, and
    both quantities are calibrated on fresh windows."""
    n = 128
    ramp = np.linspace(0, 1, 21)[:, None]

    def windows(rng, batch=1):
        centre = rng.normal(size=(batch, 21, n))
        sd = np.where(np.arange(n) < n // 2, 1 / 3, 3.0) * ramp
        truth = centre + rng.normal(size=(batch, 1, n)) * sd  # one error, growing
        z = rng.normal(size=(16, *centre.shape))
        return truth, EnsemblePrediction(centre[None] + (z - z.mean(0)) * ramp)

    def ratio(scale):  # the fitted factor of the second quantity over the first's
        log = np.log(scale.component)
        return np.exp(log[n // 2 :].mean() - log[: n // 2].mean())

    truth, ens = windows(np.random.default_rng(7))
    groups = (np.arange(n) >= n // 2).astype(int)
    plain = sl.uq.fit_spread_scale(truth, ens, independent=1)
    grouped = sl.uq.fit_spread_scale(truth, ens, independent=1, groups=groups)
    assert 6.5 < ratio(grouped) < 12.5, ratio(grouped)  # truly 9
    assert abs(np.log(ratio(plain) / 9)) > 2 * abs(np.log(ratio(grouped) / 9))  # shrunk
    fresh_truth, fresh = windows(np.random.default_rng(8), batch=100)

    def spread_skill(scale, part):
        out = np.asarray(scale.apply(fresh).samples)[:, :, 10:, part]
        return sl.metrics.spread_skill(fresh_truth[:, 10:, part], EnsemblePrediction(out))

    halves = (slice(0, n // 2), slice(n // 2, n))
    assert all(0.75 < spread_skill(grouped, h) < 1.33 for h in halves)
    assert not all(0.75 < spread_skill(plain, h) < 1.33 for h in halves)
    with pytest.raises(ValueError, match="groups of shape"):
        sl.uq.fit_spread_scale(truth, ens, groups=groups[:5])


def test_spread_scale_measured_components_set_the_unmeasured_ones_factors():
    """Truth known only at a few components of each quantity (as a clinician measures two
    pressures and one flow): the fit never reads the others' truth, gives them their
    quantity's factor, and the whole state is calibrated on fresh windows."""
    n, ramp = 64, np.linspace(0, 1, 11)[:, None]
    groups = (np.arange(n) >= n // 2).astype(int)

    def windows(rng, batch):
        centre = rng.normal(size=(batch, 11, n))
        truth = centre + rng.normal(size=centre.shape) * np.where(groups, 3.0, 1 / 3) * ramp
        z = rng.normal(size=(16, *centre.shape))
        return truth, EnsemblePrediction(centre[None] + (z - z.mean(0)) * ramp)

    truth, ens = windows(np.random.default_rng(9), 40)
    measured = np.array([0, 5, 40])  # two of the first quantity, one of the second
    scale = sl.uq.fit_spread_scale(truth, ens, groups=groups, observed=measured)
    other = truth.copy()
    other[..., np.setdiff1d(np.arange(n), measured)] = np.nan  # never read
    again = sl.uq.fit_spread_scale(other, ens, groups=groups, observed=measured)
    np.testing.assert_array_equal(scale.component, again.component)
    np.testing.assert_array_equal(scale.lead, again.lead)
    ratio = scale.component[groups == 1].mean() / scale.component[groups == 0].mean()
    assert 7.0 < ratio < 11.5, ratio  # truly 9, from three measured components
    fresh_truth, fresh = windows(np.random.default_rng(10), 100)
    out = np.asarray(scale.apply(fresh).samples)
    for part in (groups == 0, groups == 1):
        ss = sl.metrics.spread_skill(fresh_truth[:, 5:, part],
                                     EnsemblePrediction(out[:, :, 5:, part]))  # fmt: skip
        assert 0.75 < ss < 1.33, ss
    with pytest.raises(ValueError, match="observed must index"):
        sl.uq.fit_spread_scale(truth, ens, observed=[n])


def test_spread_scale_takes_the_measurement_noise_off():
    """Validation truth seen through noise as large as the model error (the forecast is of
    the noise-free state): told the noise, the fit is calibrated against the clean truth
    on fresh windows; not told, it is about √2 too wide there."""
    ramp = np.linspace(0, 1, 6)[:, None]

    def windows(rng, batch=300):
        centre = rng.normal(size=(batch, 6, 8))
        clean = centre + rng.normal(size=centre.shape) * 0.5 * ramp
        z = rng.normal(size=(16, *centre.shape))
        return clean, EnsemblePrediction(centre[None] + (z - z.mean(0)) * 0.2 * ramp)

    rng = np.random.default_rng(12)
    clean, ens = windows(rng)
    measured = clean + rng.normal(size=clean.shape) * 0.5  # noise sd 0.5 = model error at lead 5
    told = sl.uq.fit_spread_scale(measured, ens, noise=0.5)
    blind = sl.uq.fit_spread_scale(measured, ens)
    fresh, fresh_ens = windows(np.random.default_rng(13))
    for scale, lo, hi in ((told, 0.9, 1.1), (blind, 1.25, 1.6)):
        out = np.asarray(scale.apply(fresh_ens).samples)[:, :, 5]
        ss = sl.metrics.spread_skill(fresh[:, 5], EnsemblePrediction(out))
        assert lo < ss < hi, (ss, lo, hi)
    out = np.asarray(told.apply(fresh_ens).samples)[:, :, 5]
    assert 0.86 < sl.metrics.picp(fresh[:, 5], EnsemblePrediction(out), 0.9) < 0.94


def test_spread_scale_matches_spread_to_skill_on_its_windows():
    """On the windows it is fitted to, the recalibrated forecast has spread–skill 1 at every
    lead time, whatever the floor's weight came out as (an ensemble whose spread is half
    informative, half noise)."""
    rng = np.random.default_rng(3)
    centre = rng.normal(size=(300, 4, 8))
    scatter = np.exp(rng.normal(size=centre.shape))  # the truth's own scatter per point
    truth = centre + rng.normal(size=centre.shape) * scatter * np.array([0, 1, 1, 1])[:, None]
    guess = np.sqrt(scatter * np.exp(rng.normal(size=centre.shape)))
    z = rng.normal(size=(20, *centre.shape))
    ens = EnsemblePrediction(centre[None] + (z - z.mean(0)) * guess * 0.3)
    scale = sl.uq.fit_spread_scale(truth, ens, per_component=False)
    out = scale.apply(ens)
    for k in (1, 2, 3):
        ss = sl.metrics.spread_skill(truth[:, k], EnsemblePrediction(out.samples[:, :, k]))
        assert 0.97 < ss < 1.03, (k, ss)
        raw = sl.metrics.spread_skill(truth[:, k], EnsemblePrediction(ens.samples[:, :, k]))
        assert raw < 0.5  # the ensemble was three times too narrow


def test_spread_scale_says_what_shape_it_needs():
    truth, ens, _ = _miscalibrated(np.random.default_rng(4), batch=5)
    with pytest.raises(ValueError, match="members, \\*truth.shape"):
        sl.uq.fit_spread_scale(truth[:, :3], ens)
    with pytest.raises(ValueError, match="at least 2 members"):
        sl.uq.fit_spread_scale(truth, EnsemblePrediction(np.asarray(ens.samples)[:1]))


@pytest.mark.slow
def test_rolling_recalibration_uses_only_forecasts_verified_before_issue():
    """Forecasts issued every hour and verified 4 h later: forecast i is recalibrated on
    those issued at least 4 h before it (none of its own or later truths), from the 6th
    verified one on; an ensemble three times too narrow is calibrated after that."""
    from scilayers.experiments._uq import _ErrorModel

    rng = np.random.default_rng(11)
    b, ramp = 60, np.linspace(0, 1, 5)[:, None]
    centre = rng.normal(size=(b, 5, 20))
    truth = centre + rng.normal(size=centre.shape) * 3 * ramp
    z = rng.normal(size=(16, *centre.shape))
    pred = EnsemblePrediction(centre[None] + (z - z.mean(0)) * ramp)
    error = object.__new__(_ErrorModel)
    error.scale, error.groups, error.observed = None, None, None
    t0 = np.arange(b, dtype=float)
    out, refits = error.recalibrate_rolling(pred, truth, t0, span=4.0, minimum=6)
    assert refits == b - 4 - 5  # forecast i has i - 3 verified ones
    np.testing.assert_array_equal(out.samples[:, :9], np.asarray(pred.samples)[:, :9])
    later = truth.copy()
    later[30:] += 100.0  # truths from forecast 30 on: unseen by forecasts up to 33
    again, _ = error.recalibrate_rolling(pred, later, t0, span=4.0, minimum=6)
    np.testing.assert_array_equal(again.samples[:, :34], out.samples[:, :34])
    assert not np.array_equal(again.samples[:, 34], out.samples[:, 34])
    tail = np.asarray(out.samples)[:, 20:, 1:]
    ss = sl.metrics.spread_skill(truth[20:, 1:], EnsemblePrediction(tail))
    raw = sl.metrics.spread_skill(
        truth[20:, 1:], EnsemblePrediction(np.asarray(pred.samples)[:, 20:, 1:])
    )
    assert raw < 0.4 and 0.85 < ss < 1.15, (raw, ss)
