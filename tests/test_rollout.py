"""`rollout`: memory policies, gradients against finite differences, vmap, errors."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from scilayers.models import Burgers, KuramotoSivashinsky, Lorenz96
from scilayers.solvers import ETDRK4, MEMORY_POLICIES, Diffrax, StrangSplitting

# 37 steps in blocks of 5: "checkpoint" has 7 full blocks and a remainder of 2;
# "recursive" nests blocks of 25 and 5 with remainders at both levels.
N_STEPS, EVERY, DT = 37, 5, 0.05
KS_PARAMS = {"a": 1.1, "b": 0.9, "d": 0.3}


def _ks_loss(model, u0, memory="full"):
    traj = sl.rollout(
        ETDRK4(model, DT, dealias=2 / 3), u0, N_STEPS, memory=memory, checkpoint_every=EVERY
    )
    return jnp.mean(traj**2), traj


_ks_value = eqx.filter_jit(lambda model, u0: _ks_loss(model, u0)[0])
_ks_value_and_grad = jax.value_and_grad(_ks_loss, argnums=(0, 1), has_aux=True)


@functools.cache
def _ks_setup():
    """The model, a batch of two initial states, and a unit direction in state space."""
    model = KuramotoSivashinsky(22.0, 32, **KS_PARAMS)
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    batch = jnp.stack([model.initial_condition(k1), model.initial_condition(k2, amplitude=0.5)])
    direction = jax.random.normal(k3, (32,))
    return model, batch, direction / jnp.linalg.norm(direction)


@functools.cache
def _ks_results(memory):
    """Loss, trajectory and reverse-mode gradients (model, u0) for one memory policy,
    computed for the whole batch under jax.vmap (one compilation per policy)."""
    model, batch, _ = _ks_setup()
    batched = jax.vmap(_ks_value_and_grad, in_axes=(None, 0, None))
    (value, traj), (g_model, g_u0) = eqx.filter_jit(batched)(model, batch, memory)
    return value, traj, g_model, g_u0


@functools.cache
def _ks_finite_differences():
    """Central differences of the loss of the first initial state in the *physical*
    a, b, d, and along a direction in state space."""
    model, batch, direction = _ks_setup()
    u0 = batch[0]
    fd = {}
    for name, v in KS_PARAMS.items():
        h = 1e-5 * max(1.0, abs(v))
        up = _ks_value(sl.params.set_values(model, **{name: v + h}), u0)
        down = _ks_value(sl.params.set_values(model, **{name: v - h}), u0)
        fd[name] = float(up - down) / (2 * h)
    eps = 1e-5
    up, down = _ks_value(model, u0 + eps * direction), _ks_value(model, u0 - eps * direction)
    fd["u0"] = float(up - down) / (2 * eps)
    return fd


@pytest.mark.parametrize("memory", MEMORY_POLICIES)
def test_ks_gradients_match_finite_differences(memory):
    _, _, direction = _ks_setup()
    fd = _ks_finite_differences()
    _, _, g_model, g_u0 = _ks_results(memory)
    # a and b are Positive (raw = log value): dL/draw = value · dL/dvalue; d is unconstrained.
    chain = {"a": KS_PARAMS["a"], "b": KS_PARAMS["b"], "d": 1.0}
    for name in KS_PARAMS:
        ad = float(getattr(g_model, name).raw[0]) / chain[name]
        assert abs(fd[name]) > 1e-4, (name, fd[name])  # not a trivially zero derivative
        assert ad == pytest.approx(fd[name], rel=1e-6), name
    assert float(jnp.vdot(g_u0[0], direction)) == pytest.approx(fd["u0"], rel=1e-6)
    assert abs(fd["u0"]) > 1e-4


def test_memory_policies_agree():
    ref_value, ref_traj, ref_gm, ref_gu = _ks_results("full")
    assert ref_traj.shape == (2, N_STEPS + 1, 32)
    for memory in ("checkpoint", "recursive"):
        value, traj, gm, gu = _ks_results(memory)
        np.testing.assert_allclose(traj, ref_traj, rtol=0, atol=1e-14)
        np.testing.assert_allclose(value, ref_value, rtol=1e-14)
        for name in ("a", "b", "c", "d"):
            want = getattr(ref_gm, name).raw
            np.testing.assert_allclose(getattr(gm, name).raw, want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gu, ref_gu, rtol=0, atol=1e-13 * float(jnp.abs(ref_gu).max()))


def test_rollout_under_vmap_matches_single_states():
    """The vmapped values and gradients (used above) equal unbatched calls, state by state."""
    model, batch, _ = _ks_setup()
    value, traj, g_model, g_u0 = _ks_results("full")
    single = eqx.filter_jit(_ks_value_and_grad)
    for i in range(batch.shape[0]):
        (v, tr), (gm, gu) = single(model, batch[i], "full")
        assert float(v) == pytest.approx(float(value[i]), rel=1e-14)
        np.testing.assert_allclose(tr, traj[i], rtol=0, atol=1e-14)
        np.testing.assert_allclose(gu, g_u0[i], rtol=0, atol=1e-14 * float(jnp.abs(gu).max()))
        for name in ("a", "b", "c", "d"):
            got = float(getattr(g_model, name).raw[i])
            assert got == pytest.approx(float(getattr(gm, name).raw), rel=1e-12)
    # The two states really differ (a batch of copies would prove little).
    assert float(jnp.abs(traj[0] - traj[1]).max()) > 0.1


def _count_remat(jaxpr) -> int:
    """Number of checkpoint (remat) equations, including nested ones."""
    total = 0
    for eqn in jaxpr.eqns:
        if "remat" in eqn.primitive.name or "checkpoint" in eqn.primitive.name:
            total += 1
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                total += _count_remat(inner)
    return total


@pytest.mark.parametrize(("memory", "expected"), [("full", 0), ("checkpoint", 1), ("recursive", 3)])
def test_memory_policies_checkpoint_structure(memory, expected):
    """Count the jax.checkpoint (remat) regions in the traced rollout of 37 steps in blocks
    of 5: none for `full`; one block body for `checkpoint`; for `recursive`, a block of 25
    with a nested block of 5 inside, plus a block of 5 for the remainder of 12."""
    model, batch, _ = _ks_setup()
    jaxpr = jax.make_jaxpr(lambda u: _ks_loss(model, u, memory)[0])(batch[0]).jaxpr
    assert _count_remat(jaxpr) == expected


def test_gradient_wrt_strang_parameters():
    """The Strang path also carries gradients to θ_s (here the Burgers viscosity)."""
    nu = 0.2
    model = Burgers(n=32, nu=nu)
    u0 = jnp.sin(model.grid()) + 0.2

    @eqx.filter_jit
    def loss(m):
        traj = sl.rollout(StrangSplitting(m, 0.05), u0, 20)
        return jnp.mean(traj[-1] ** 2)

    h = 1e-6
    fd = (
        loss(sl.params.set_values(model, nu=nu + h)) - loss(sl.params.set_values(model, nu=nu - h))
    ) / (2 * h)
    g = eqx.filter_grad(loss)(model)
    assert float(g.nu.raw) / nu == pytest.approx(float(fd), rel=1e-6)
    assert float(fd) < 0  # more viscosity, less energy


def test_lorenz96_forcing_gradient_through_diffrax():
    forcing = 8.0
    model = Lorenz96(k=8, forcing=forcing)
    u0 = model.initial_condition(jax.random.key(3)) + jnp.linspace(-1.0, 1.0, 8)

    @eqx.filter_jit
    def loss(m):
        traj = sl.rollout(Diffrax(m, 0.05, substeps=2), u0, 20)
        return jnp.mean(traj**2)

    h = 1e-5
    up = loss(sl.params.set_values(model, F=forcing + h))
    down = loss(sl.params.set_values(model, F=forcing - h))
    fd = float(up - down) / (2 * h)
    g = eqx.filter_grad(loss)(model)
    assert abs(fd) > 1e-2
    assert float(g.forcing.raw) == pytest.approx(fd, rel=1e-6)


# --------------------------------------------------------------------------------------
# rollout on arbitrary steps and pytrees
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("memory", MEMORY_POLICIES)
@pytest.mark.parametrize("n", [0, 1, 23])
def test_rollout_of_pytree_state(memory, n):
    """Any function u -> u over any pytree: [u0, u1, …, un] stacked on axis 0."""
    step = lambda s: {"x": 2.0 * s["x"], "t": s["t"] + 1.0}  # noqa: E731
    u0 = {"x": jnp.array([1.0, -3.0]), "t": jnp.zeros(())}
    traj = sl.rollout(step, u0, n, memory=memory, checkpoint_every=3)
    np.testing.assert_array_equal(traj["t"], np.arange(n + 1.0))
    np.testing.assert_array_equal(traj["x"], 2.0 ** np.arange(n + 1.0)[:, None] * [1.0, -3.0])


@pytest.mark.parametrize("memory", ["checkpoint", "recursive"])
def test_default_block_sizes_agree_with_full(memory):
    step = lambda u: jnp.sin(u) + 0.1 * u  # noqa: E731
    u0 = jnp.linspace(-2.0, 2.0, 5)
    full = jax.grad(lambda u: jnp.sum(sl.rollout(step, u, 70) ** 2))(u0)
    other = jax.grad(lambda u: jnp.sum(sl.rollout(step, u, 70, memory=memory) ** 2))(u0)
    np.testing.assert_allclose(other, full, rtol=1e-13)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


@pytest.fixture
def ks_step():
    return ETDRK4(KuramotoSivashinsky(22.0, 64), 0.1)


def test_unknown_memory_policy(ks_step):
    with pytest.raises(ValueError, match=r"unknown memory policy 'none'; choose one of \('full'"):
        sl.rollout(ks_step, jnp.zeros(64), 3, memory="none")


@pytest.mark.parametrize("bad", [-1, 2.5])
def test_bad_number_of_steps(ks_step, bad):
    with pytest.raises(ValueError, match="non-negative integer number of steps"):
        sl.rollout(ks_step, jnp.zeros(64), bad)


def test_bad_checkpoint_every(ks_step):
    with pytest.raises(ValueError, match="checkpoint_every must be >= 2"):
        sl.rollout(ks_step, jnp.zeros(64), 3, memory="checkpoint", checkpoint_every=1)


def test_batched_initial_state_says_vmap(ks_step):
    with pytest.raises(ValueError, match=r"got \(32, 64\); for a batch of states use jax\.vmap"):
        sl.rollout(ks_step, jnp.zeros((32, 64)), 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_initial_state(ks_step, bad):
    u0 = jnp.zeros(64).at[5].set(bad)
    with pytest.raises(ValueError, match="initial state contains NaN or Inf; clean or impute"):
        sl.rollout(ks_step, u0, 3)
    # Also for a pytree state through an arbitrary step function.
    with pytest.raises(ValueError, match="initial state contains NaN or Inf"):
        sl.rollout(lambda s: s, {"a": jnp.ones(2), "b": u0}, 3)


def test_non_finite_initial_state_inside_jit(ks_step):
    u0 = jnp.zeros(64).at[5].set(np.nan)
    with pytest.raises(
        eqx.EquinoxRuntimeError, match="initial state contains NaN or Inf; clean or impute"
    ):
        eqx.filter_jit(lambda u: sl.rollout(ks_step, u, 3))(u0)


def test_blow_up_names_the_step_and_the_fix():
    """Strang with dt far above the explicit stability limit of the nonlinear stage."""
    model = Burgers(n=64, nu=0.01)
    step = StrangSplitting(model, 0.5)
    u0 = 3.0 * jnp.sin(model.grid())
    traj = np.asarray(sl.rollout(step, u0, 50, check_finite=False))
    first_bad = int(np.flatnonzero(~np.isfinite(traj).all(axis=1))[0])
    assert 0 < first_bad < 50
    with pytest.raises(
        ValueError, match=rf"blew up \(NaN/Inf\) at step {first_bad} of 50; reduce dt"
    ):
        sl.rollout(step, u0, 50)
    # A stable dt runs to the end.
    assert np.isfinite(np.asarray(sl.rollout(StrangSplitting(model, 0.01), u0, 50))).all()


def test_float32_state_with_float64_parameters_is_promoted(key):
    """Data stored as float32 (netCDF) rolled out by a float64 model: the trajectory has the
    step's dtype instead of failing on a carry dtype mismatch inside lax.scan."""
    import scilayers as sl

    ks = sl.models.KuramotoSivashinsky(22.0, 32)
    u0 = ks.initial_condition(key).astype(jnp.float32)
    for step in (sl.solvers.ETDRK4(ks, 0.25), sl.solvers.StrangSplitting(ks, 0.25)):
        traj = sl.rollout(step, u0, 5)
        assert traj.dtype == jnp.float64
        np.testing.assert_allclose(traj[-1], sl.rollout(step, u0.astype(jnp.float64), 5)[-1])


@pytest.mark.parametrize("dealias", [None, 2 / 3])
@pytest.mark.parametrize("memory", ["full", "checkpoint"])
def test_theta_gradient_of_a_batch_loss_with_a_real_symbol(memory, dealias):
    """The gradient of a loss over a vmapped batch of rollouts, taken outside the vmap (as
    training does), for KS with a real symbol (d=None: ETDRK4's real-arithmetic stage
    combinations with their custom JVP, a dealiasing mask folded into the coefficients,
    θ_s cotangents accumulated per trajectory and reduced once): it matches central
    finite differences in a, b, c, and the sum of the per-trajectory gradients."""
    model = KuramotoSivashinsky(22.0, 32, a=1.1, b=0.9, c=1.2, d=None)
    keys = jax.random.split(jax.random.key(3), 3)
    pairs = zip(keys, (1.0, 0.5, 0.8), strict=True)
    batch = jnp.stack([model.initial_condition(k, amplitude=s) for k, s in pairs])

    def loss(m, u0s):
        step = ETDRK4(m, 0.1, dealias=dealias)
        trajs = jax.vmap(lambda u: sl.rollout(step, u, 20, memory=memory, checkpoint_every=4))(u0s)
        return jnp.mean(trajs**2)

    grad = eqx.filter_jit(eqx.filter_grad(loss))(model, batch)
    singles = [eqx.filter_grad(loss)(model, batch[i : i + 1]) for i in range(len(batch))]
    value = eqx.filter_jit(loss)
    for name, v in {"a": 1.1, "b": 0.9, "c": 1.2}.items():
        h = 1e-5
        fd = (value(sl.params.set_values(model, **{name: v + h}), batch)
              - value(sl.params.set_values(model, **{name: v - h}), batch)) / (2 * h)  # fmt: skip
        chain = v if name in ("a", "b") else 1.0  # a, b are Positive: raw = log value
        ad = float(getattr(grad, name).raw) / chain
        assert abs(float(fd)) > 1e-4, name
        assert ad == pytest.approx(float(fd), rel=1e-6), name
        per = sum(float(getattr(g, name).raw) for g in singles) / len(batch)
        assert float(getattr(grad, name).raw) == pytest.approx(per, rel=1e-10), name
