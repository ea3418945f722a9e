"""The library never trains, drops or misreports a parameter without saying so (issue 7).

Already covered elsewhere and kept there: `TrainingDiverged` with ``checkpoint_every=0``
claims no checkpoint (`test_training.py::test_divergence_without_a_checkpoint_claims_none`),
and resuming with a changed config names each field
(`test_training.py::test_corrupt_checkpoint_is_reported`).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import scilayers as sl


class DrivenPendulum(sl.models.AbstractModel):
    r"""``θ' = ω``, ``ω' = −γ ω − sin θ + drive``; state ``(θ, ω)``. ``drive`` may be a
    `Param`, an array or a float, to show what happens to each."""

    gamma: sl.Param
    drive: object

    @property
    def state_shape(self):
        return (2,)

    def rhs(self, u):
        drive = sl.params.resolve(self.drive)
        return jnp.stack([u[1], -self.gamma.value * u[1] - jnp.sin(u[0]) + drive])

    def initial_condition(self, key):
        return jnp.array([0.5, 0.0]) + 0.3 * jax.random.normal(key, (2,))


def _pendulum(drive=None, gamma=None):
    gamma = sl.Param(0.3, "positive") if gamma is None else gamma
    return DrivenPendulum(gamma, sl.Param(0.9, fixed=True) if drive is None else drive)


@pytest.fixture(scope="module")
def data():
    step = _step(_pendulum(gamma=sl.Param(0.5, "positive")))
    u0 = jax.vmap(step.model.initial_condition)(jax.random.split(jax.random.key(1), 4))
    return jax.vmap(lambda u: sl.rollout(step, u, 8))(u0)


def _step(model):
    """A cheap-to-compile Diffrax stepper (explicit Euler, one internal step)."""
    return sl.solvers.Diffrax(model, 0.1, solver=diffrax.Euler(), max_steps=1)


CFG = sl.TrainConfig(steps=3, batch_size=4, horizon=2, lr_net=1e-2, val_every=1000)


def _residual_hybrid(model):
    net = eqx.nn.MLP(2, 2, 8, 1, key=jax.random.key(0))
    return sl.Hybrid(_step(model), net, coupling="residual")


# --------------------------------------------------------- 4. what is trained, and saying so


class Gain(eqx.Module):
    w: jax.Array

    def __call__(self, u):
        return self.w * u


class Holder(eqx.Module):
    network_fields = ("mine",)

    lin: eqx.nn.Linear  # an equinox.nn layer: a network
    mine: Gain  # a custom module declared a network by the owner
    loose: jax.Array  # a plain array: frozen
    k: sl.Param


def test_theta_ml_is_network_weights_only(key):
    h = Holder(eqx.nn.Linear(2, 2, key=key), Gain(jnp.ones(2)), jnp.asarray(0.9), sl.Param(1.0))
    theta_s, theta_ml, frozen = sl.params.partition(h)
    ids = lambda t: {id(x) for x in jax.tree_util.tree_leaves(t)}  # noqa: E731
    assert ids(theta_s) == {id(h.k.raw)}
    assert ids(theta_ml) == {id(h.lin.weight), id(h.lin.bias), id(h.mine.w)}
    assert id(h.loose) in ids(frozen) and id(h.loose) not in ids(theta_ml)
    assert sl.params.unlearned(h) == ["loose"]
    assert sl.params.is_network(h.lin) and not sl.params.is_network(h.mine)


@pytest.mark.parametrize("drive", [jnp.asarray(0.9), 0.9], ids=["array", "float"])
def test_a_plain_coefficient_is_frozen_and_named_once(data, drive):
    """A driven pendulum's drive stored as a plain array used to be trained as θ_ml even
    with strategy='fixed' (0.9 → 0.9004); a plain float was silently not learned."""
    hyb = _residual_hybrid(_pendulum(drive))
    with pytest.warns(UserWarning, match=r"step\.model\.drive not trained") as record:
        res = sl.fit(hyb, data, CFG.replace(strategy="fixed"), progress=False)
    assert len(record) == 1
    assert "sl.Param(...) to learn it or sl.Param(..., fixed=True) to silence" in str(
        record[0].message
    )
    assert float(res.model.step.model.drive) == 0.9  # frozen, bit for bit
    assert res.model.step.model.gamma.raw == hyb.step.model.gamma.raw  # θ_s frozen (fixed)
    assert not np.array_equal(res.model.net.layers[0].weight, hyb.net.layers[0].weight)
    assert any("frozen floating-point fields" in n for n in res.notes)


def test_wrapping_in_a_param_silences(data):
    # fixed=True: a declared constant, no warning (pytest turns any warning into an error);
    # a free Param is θ_s and learned (see test_fit_records_the_effective_theta)
    res = sl.fit(_residual_hybrid(_pendulum()), data, CFG, progress=False)
    assert float(res.model.step.model.drive.value) == 0.9
    assert res.trained == {"joint": {"theta_s": 1, "theta_ml": 2 * 8 + 8 + 8 * 2 + 2}}
    assert res.notes == ()


def test_nothing_to_train_is_an_error(data):
    physics = sl.solvers.Diffrax(_pendulum(), 0.1)
    with pytest.raises(ValueError, match=r"nothing to train: strategy 'fixed' trains θ_ml"):
        sl.fit(physics, data, CFG.replace(strategy="fixed"), progress=False)
    frozen = sl.solvers.Diffrax(_pendulum(gamma=sl.Param(0.3, fixed=True)), 0.1)
    with pytest.raises(ValueError, match=r"nothing to train.*add a free sl\.Param or a network"):
        sl.fit(frozen, data, CFG, progress=False)
    # the frozen plain array is named where it explains the error
    with pytest.raises(ValueError, match=r"\['model\.drive'\] are frozen"):
        sl.fit(sl.solvers.Diffrax(_pendulum(jnp.asarray(0.9)), 0.1), data,
               CFG.replace(strategy="fixed"), progress=False)  # fmt: skip


def test_an_empty_group_or_stage_is_reported(data):
    res = sl.fit(_step(_pendulum()), data, CFG, progress=False)
    assert res.trained == {"joint": {"theta_s": 1, "theta_ml": 0}}
    assert res.notes == ("θ_ml is empty: the model has no network weights; only θ_s was trained.",)
    emulator = sl.hybrid.NeuralStepper(eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0)), (2,))
    cfg = CFG.replace(strategy="staged", steps=2, stage_fractions=(0.5, 0.5, 0.0))
    res = sl.fit(emulator, data, cfg, progress=False)
    assert res.trained == {
        "calibrate": {"theta_s": 0, "theta_ml": 0},
        "network": {"theta_s": 0, "theta_ml": 4 * 2 + 4 + 4 * 2 + 2},
    }
    assert res.notes[0].startswith("stage 'calibrate' trained nothing: it trains θ_s")
    assert res.notes[1].startswith("θ_s is empty")


def test_as_param_is_public():
    p = sl.params.as_param(2.0, "positive", name="k", units="1/s")
    assert isinstance(p.constraint, sl.Positive) and p.name == "k" and p.units == "1/s"
    assert float(p.value) == pytest.approx(2.0, rel=1e-15)
    q = sl.Param(3.0, fixed=True)
    assert sl.params.as_param(q, "positive") is q


# ------------------------------------------------ 5. the 'parameter' coupling's effective θ_s


def _parameter_hybrid(params=("gamma",)):
    model = _pendulum(sl.Param(0.9))  # two free Params: gamma, drive
    net = eqx.nn.Linear(2, 1 if params else 2, key=jax.random.key(2))
    return sl.Hybrid(_step(model), net, coupling="parameter", params=params)


def test_effective_theta_is_public_and_params_chooses_what_is_modulated():
    hyb = _parameter_hybrid()
    u = jnp.array([0.4, -0.3])
    assert hyb.modulated() == ("gamma",)
    eff = hyb.effective_theta(u)
    offset = float(hyb.net(u)[0])
    assert float(eff["gamma"]) == pytest.approx(0.3 * np.exp(offset), rel=1e-13)  # Positive
    assert float(eff["drive"]) == 0.9  # not modulated
    same = _step(sl.params.set_values(hyb.step.model, gamma=eff["gamma"]))
    np.testing.assert_allclose(hyb(u), same(u), rtol=0, atol=1e-13)
    # default: every free Param, in the order of sl.params.named(step)
    both = _parameter_hybrid(params=None)
    assert both.modulated() == ("gamma", "drive")
    out = both.net(u)
    eff = both.effective_theta(u)
    assert float(eff["drive"]) == pytest.approx(0.9 + float(out[1]), rel=1e-13)
    with pytest.raises(ValueError, match=r"unknown or fixed: \['omega'\].*\['gamma', 'drive'\]"):
        _parameter_hybrid(params=("omega",))
    with pytest.raises(ValueError, match="effective_theta needs coupling='parameter'"):
        _residual_hybrid(_pendulum()).effective_theta(u)


def test_fit_records_the_effective_theta(data):
    hyb = _parameter_hybrid()
    cfg = CFG.replace(seed=3)
    res = sl.fit(hyb, data, cfg, progress=False)
    eff = res.history["theta_eff/gamma"]
    assert eff.shape == (cfg.steps,)
    # step 0: the mean over the batch's states of the initial model's effective γ
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), 0), 0)
    windows = sl.training.sample_windows(data, key, cfg.batch_size, cfg.horizon)
    states = windows[:, :-1].reshape(-1, 2)
    want = jnp.mean(jax.vmap(hyb.effective_theta)(states)["gamma"])
    assert eff[0] == pytest.approx(float(want), rel=1e-12)
    assert abs(eff[0] - res.history["theta/gamma"][0]) > 1e-3  # not the base θ_s
    assert float(res.model.step.model.drive.value) != 0.9  # a free Param: learned as θ_s
    assert "theta/<name>" in sl.fit.__doc__ and "theta_eff/<name>" in sl.fit.__doc__


# ----------------------------------------------------------- 6. solver error paths


class Decay(sl.models.AbstractModel):
    r"""``u' = −k u + b u² / (1 + u²)``: stiff for large ``k``."""

    k: sl.Param
    b: sl.Param

    @property
    def state_shape(self):
        return (3,)

    def rhs(self, u):
        return -self.k.value * u + self.b.value * u**2 / (1 + u**2)

    def initial_condition(self, key):
        return jnp.array([1.0, -0.5, 0.25])


def test_stability_polynomials_from_the_tableaux():
    poly = sl.solvers.stability_polynomial
    np.testing.assert_allclose(poly(diffrax.Euler()), [1.0, 1.0])
    np.testing.assert_allclose(poly(diffrax.Heun()), [1.0, 1.0, 0.5])
    taylor = [1 / np.prod(np.arange(1, k + 1)) for k in range(6)]
    np.testing.assert_allclose(poly(diffrax.Tsit5())[:6], taylor, rtol=1e-12)  # order 5
    assert poly(diffrax.Kvaerno5()) is None


def test_explicit_step_beyond_its_stability_limit_raises():
    stiff = Decay(sl.Param(50.0, "positive"), sl.Param(0.1))
    u0 = stiff.initial_condition(None)
    # Euler: |1 − 50 h| ≤ 1.01 needs h ≤ 0.0402; dt = 0.1 gave finite garbage before
    garbage = sl.solvers.Diffrax(stiff, 0.1, solver=diffrax.Euler(), stability_check=False)
    assert float(jnp.abs(sl.rollout(garbage, u0, 6)[-1, 0])) > 1e3
    msg = (r"dt=0\.1 exceeds the explicit stability limit ≈ 0\.040.*Reduce dt.*"
           r"diffrax\.Tsit5 with a PIDController, or diffrax\.Kvaerno5")  # fmt: skip
    with pytest.raises(ValueError, match=msg):
        sl.solvers.Diffrax(stiff, 0.1, solver=diffrax.Euler())
    with pytest.raises(ValueError, match=r"limit ≈ 0\.0[67].*Tsit5"):
        sl.solvers.Diffrax(stiff, 0.1)  # Tsit5's real-axis limit is about 3.5 / k
    sl.solvers.Diffrax(stiff, 0.1, solver=diffrax.Euler(), substeps=5)  # h = 0.02: stable
    sl.solvers.Diffrax(stiff, 0.1, stepsize_controller=diffrax.PIDController(1e-6, 1e-8))
    sl.solvers.Diffrax(stiff, 0.1, solver=diffrax.Kvaerno5())  # implicit: no limit
    # an oscillation under Euler grows by sqrt(1 + (hω)²) per step: tolerated while small
    sl.solvers.Diffrax(_pendulum(gamma=sl.Param(1e-3, "positive")), 0.05, solver=diffrax.Euler())
    with pytest.raises(ValueError, match="exceeds the explicit stability limit"):
        sl.solvers.Diffrax(_pendulum(gamma=sl.Param(1e-3, "positive")), 0.5,
                           solver=diffrax.Euler())  # fmt: skip


def test_second_derivatives_need_direct_adjoint():
    model = Decay(sl.Param(1.3, "positive"), sl.Param(0.7))
    u0 = model.initial_condition(None)
    # the default adjoint is reverse-mode only; max_steps=1 (= substeps) keeps the
    # DirectAdjoint compile small
    step = sl.solvers.Diffrax(model, 0.1, solver=diffrax.Heun(), max_steps=1)
    theta_s, rest, frozen = sl.params.partition(step)
    x0, unravel = ravel_pytree(theta_s)

    def one_step(x):
        return jnp.sum(sl.params.combine(unravel(x), rest, frozen)(u0) ** 2)

    with pytest.raises(ValueError, match=r"use adjoint=diffrax\.DirectAdjoint\(\) for second"):
        jax.hessian(one_step)(x0)

    def loss(s):
        return jnp.sum(sl.rollout(s, u0, 3) ** 2)

    hess = sl.training.theta_hessian(loss, step)  # swaps in DirectAdjoint itself
    assert hess.labels == ("k", "b")
    np.testing.assert_array_equal(hess.raw, x0)
    direct = sl.solvers.direct_adjoint(step)
    assert isinstance(direct.adjoint, diffrax.DirectAdjoint)

    theta_d, rest_d, frozen_d = sl.params.partition(direct)
    unravel_d = ravel_pytree(theta_d)[1]

    def flat(x):
        return loss(sl.params.combine(unravel_d(x), rest_d, frozen_d))

    grad = jax.jit(jax.grad(flat))
    h = 1e-5
    fd = np.stack(
        [(grad(x0 + h * e) - grad(x0 - h * e)) / (2 * h) for e in np.eye(x0.size)], axis=1
    )
    np.testing.assert_allclose(hess.matrix, fd, rtol=1e-6, atol=1e-10)
    assert np.abs(hess.matrix).min() > 1e-4  # not vacuous: every entry is non-zero


def test_a_horizon_schedule_longer_than_the_data_is_named(data):
    """The longest window of a schedule (not its first, nor `horizon`) must fit the data:
    9 states of a trajectory hold windows of at most 8 steps."""
    tc = CFG.replace(horizon=2, horizon_schedule=(2, 4, 12))
    assert tc.longest_horizon == 12
    with pytest.raises(ValueError, match="have 9 states but the horizon needs 13"):
        sl.fit(_step(_pendulum()), data, tc, progress=False)
