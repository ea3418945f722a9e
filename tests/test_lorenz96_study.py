"""Two-scale Lorenz-96 closure study: the pieces (coarse model, polynomial and a-priori
closures, the truth's subgrid tendency, climate statistics) and the study end to end at a
tiny size through the engine's study-baseline and model-metric hooks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from scilayers.experiments import run_study
from scilayers.experiments.lorenz96 import PRESETS, Lorenz96Study
from scilayers.training import TrainConfig

TINY = PRESETS["quick"].replace(
    preset="tiny", j=4, dt=0.02, truth_substeps=10, climate_every=5, spinup=1.0,
    trajectories=20, ood_trajectories=4,
    corr_steps=12, main_horizon=6, horizons=(3, 6, 12), field_steps=6, data_sizes=(4,),
    climate_members=4, climate_time=2.0, climate_transient=0.2, twin_time=1.0,
    benettin_steps=20, emulator_steps=4, checkpoint_every=0,
    train=TrainConfig(steps=4, batch_size=4, horizon=3, val_every=2),
)  # fmt: skip


def test_coarse_lorenz96_has_effective_advection_and_damping(key):
    x = jax.random.normal(key, (8,))
    m = sl.models.Lorenz96(8, forcing=20.0, advection=0.7, damping=1.9)
    adv = (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1)
    np.testing.assert_allclose(m.rhs(x), 0.7 * adv - 1.9 * x + 20.0, rtol=1e-12)
    # the defaults are Lorenz's model, held fixed (only F is learned)
    free = [k for k, p in sl.params.named(sl.models.Lorenz96(8)).items() if not p.fixed]
    assert free == ["F"]
    with pytest.raises(ValueError, match="violates its constraint"):
        sl.models.Lorenz96(8, damping=-1.0)


def test_two_scale_slow_tendency_is_one_scale_plus_subgrid(key):
    """The study's subgrid tendency is exactly what the slow equations lack."""
    study = Lorenz96Study(TINY)
    fine = study._fine(20.0)
    u = jax.random.normal(key, fine.state_shape)
    coarse = sl.models.Lorenz96(TINY.k, forcing=20.0)
    u_sub = study.subgrid(np.asarray(u[TINY.k :]))
    np.testing.assert_allclose(fine.rhs(u)[: TINY.k], coarse.rhs(u[: TINY.k]) + u_sub,
                               rtol=1e-12, atol=1e-12)  # fmt: skip


def test_polynomial_closure_fit_recovers_coefficients(key):
    x = jax.random.normal(key, (500,)) * 5
    true = np.array([-0.8, -1.1, 0.01, 0.003])
    y = np.polynomial.polynomial.polyval(np.asarray(x), true)
    p = sl.nn.Polynomial.fit(x, y, 3)
    np.testing.assert_allclose(p.coeffs, true, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(p(jnp.asarray([2.0])), np.polynomial.polynomial.polyval(2.0, true))
    with pytest.raises(ValueError, match="finite"):
        sl.nn.Polynomial.fit(np.array([1.0, np.nan, 2.0]), np.ones(3), 1)
    with pytest.raises(ValueError, match="values"):
        sl.nn.Polynomial.fit(np.ones(4), np.ones(3), 1)


def test_a_priori_closure_learns_a_known_tendency(key):
    """Offline regression: a network learns U(x) = -x + 0.5 from samples (the loss falls
    by orders of magnitude), and bad inputs are refused."""
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (256, 8))
    u = -x + 0.5
    net = sl.nn.PeriodicCNN1d(width=8, depth=1, kernel_size=1, key=kn, final_scale=1.0)
    cfg = TrainConfig(steps=300, batch_size=32, lr_net=1e-2, val_every=50)
    before = float(jnp.mean((jax.vmap(net)(x) - u) ** 2))
    trained, hist = sl.baselines.a_priori_closure(net, x, u, cfg, val=(x[:32], u[:32]))
    after = float(jnp.mean((jax.vmap(trained)(x) - u) ** 2))
    assert after < 1e-2 * before and hist["val_loss"].min() < 1e-2 * before
    with pytest.raises(ValueError, match="same shape"):
        sl.baselines.a_priori_closure(net, x, u[:, :4], cfg)
    with pytest.raises(ValueError, match="finite"):
        sl.baselines.a_priori_closure(net, x.at[0, 0].set(jnp.nan), u, cfg)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # the whole study, tiny: minutes on 2 cores (slow tests only)
    out = tmp_path_factory.mktemp("l96-tiny")
    study = Lorenz96Study(TINY)
    results = run_study(study, [0], out, progress=False, log=lambda *_: None)
    return study, results


@pytest.mark.slow
def test_study_runs_its_baselines_and_long_runs(tiny):
    study, res = tiny
    methods = res["methods"]
    for m in ("cubic_closure", "linear_closure", "a_priori_closure", "hybrid_joint"):
        assert m in methods, m
        for s in ("id", "ood_f16", "ood_f24"):
            assert methods[m][f"{s}_mse"]["mean"] is not None
            assert 0.0 <= methods[m][f"{s}_climate_hellinger"]["mean"] <= 1.0
    assert "id_climate_hellinger" not in methods["persistence"]  # no model: no free runs
    # the cubic fit of the true subgrid tendency is recorded, four coefficients
    assert len(res["subgrid"]["cubic_coefficients"]) == 4
    # no true θ_s is claimed for effective coefficients
    assert "true" not in methods["hybrid_joint"]["theta"]["damping"]
    titles = [t["title"] for t in res["tables"]]
    assert any("Long free runs" in t for t in titles)
    assert any("A priori" in t for t in titles)
    assert res["truth"]["lyapunov_exponent"]["id"] > 0


def test_climate_statistics_score_what_they_claim():
    """The truth against itself scores 0; runs that blew up are counted, never dropped,
    and push the Hellinger distance up."""
    from scilayers.experiments import Problem

    study = Lorenz96Study(TINY)
    rng = np.random.default_rng(0)
    truth = 3.0 + 5.0 * rng.standard_normal((8, 400, TINY.k))
    sets = {"id": sl.experiments.EvalSet("id", truth[:, :10], 0)}
    study._problem = Problem(truth[:2], truth[:1], sets, {"climate": {"id": truth}})
    same = study.climate_stats("id", truth)
    assert same["hellinger"] == pytest.approx(0.0, abs=1e-7) and same["blown_up"] == 0
    broken = truth.copy()
    broken[: len(broken) // 2, truth.shape[1] // 2 :] = np.nan
    bad = study.climate_stats("id", broken)
    assert bad["blown_up"] == len(broken) // 2
    assert bad["hellinger"] > 0.2
    shifted = study.climate_stats("id", truth + 3 * truth.std())
    assert shifted["hellinger"] > 0.5 and shifted["drifted"] == len(truth)


@pytest.mark.slow
def test_cubic_baseline_is_the_fitted_polynomial(tiny):
    study, res = tiny
    model = study.extra_method("cubic_closure", study._problem, 0, False)
    np.testing.assert_allclose(model.net.coeffs, res["subgrid"]["cubic_coefficients"])
    assert sl.params.values(model.step)["damping"] == pytest.approx(1.0)


def test_transfer_keeps_the_sets_forcing_and_carries_learned_theta():
    """Moving a trained coarse model to F = 16 keeps F = 16 (a known input, fixed) and
    carries the learned damping (a regression: the trained F used to overwrite it)."""
    from scilayers.experiments._engine import transfer
    from scilayers.params import set_values, values

    study = Lorenz96Study(TINY)
    trained = set_values(study.physics(), damping=1.9)
    ood = sl.experiments.EvalSet("ood_f16", np.zeros((1, 3, TINY.k)), 0, {"forcing": 16.0})
    moved = values(transfer(study, trained, ood))
    assert float(moved["F"]) == 16.0 and float(moved["damping"]) == pytest.approx(1.9)
    hybrid = sl.Hybrid(trained, study.closure(jax.random.key(0)), coupling="closure")
    assert float(values(transfer(study, hybrid, ood))["F"]) == 16.0


def test_local_nonlocal_closure_splits_into_pointwise_and_banded_parts(key):
    """`LocalNonlocal1d`: the local part's output at X_k depends on X_k alone (diagonal
    Jacobian), the non-local part on X_{k-3} … X_{k+3} only (depth 2, kernel 3), the
    closure is their sum, and it commutes with periodic shifts."""
    kx, kn = jax.random.split(key)
    n = 16
    x = 3.0 * jax.random.normal(kx, (n,))
    net = sl.nn.LocalNonlocal1d(width=6, nonlocal_width=4, depth=2, kernel_size=3, key=kn,
                                final_scale=1.0)  # fmt: skip
    j_loc = np.asarray(jax.jacfwd(net.local)(x))
    off = ~np.eye(n, dtype=bool)
    assert np.all(j_loc[off] == 0.0) and np.all(np.abs(np.diag(j_loc)) > 0)
    j_nl = np.asarray(jax.jacfwd(net.nonlocal_net)(x))
    dist = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    dist = np.minimum(dist, n - dist)  # periodic distance between k and k'
    assert np.all(j_nl[dist > 3] == 0.0) and np.all(np.abs(j_nl[dist == 3]) > 0)
    np.testing.assert_allclose(net(x), net.local(x) + net.nonlocal_net(x), rtol=1e-12)
    np.testing.assert_allclose(net(jnp.roll(x, 5)), jnp.roll(net(x), 5), rtol=1e-10, atol=1e-12)
    odd = sl.nn.LocalNonlocal1d(activation=jnp.tanh, use_bias=False, key=kn, final_scale=1.0)
    assert odd.is_odd and not net.is_odd
    np.testing.assert_allclose(odd(-x), -odd(x), rtol=1e-12)
    with pytest.raises(ValueError, match="jax.vmap"):
        net(jnp.ones((2, n)))
    with pytest.raises(ValueError, match="nonlocal_width"):
        sl.nn.LocalNonlocal1d(nonlocal_width=0, key=kn)


@pytest.mark.slow
def test_a_priori_baseline_is_the_hybrids_closure_architecture(tiny):
    """The a-priori network is the hybrid's closure at equal size (same class, same
    parameter shapes); the emulator stays a plain CNN."""
    from scilayers.experiments._engine import hybrid

    study, _ = tiny
    prior = study.extra_method("a_priori_closure", study._problem, 0, False).net
    joint = hybrid(study, jax.random.key(0), study.cfg.identifiable).net
    assert isinstance(prior, sl.nn.LocalNonlocal1d)
    shapes = [a.shape for a in jax.tree.leaves(eqx.filter(prior, eqx.is_array))]
    assert shapes == [a.shape for a in jax.tree.leaves(eqx.filter(joint, eqx.is_array))]
    assert isinstance(study.emulator(jax.random.key(0)), sl.nn.PeriodicCNN1d)
