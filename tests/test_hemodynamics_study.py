"""The hemodynamics study: scaled arterial physics as an engine stepper, the closure
coupling, virtual patients, the truth's extra physics, splits and waveform metrics; an
end-to-end tiny run (slow)."""

import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scilayers.experiments import get_study, run_study
from scilayers.experiments._engine import transfer
from scilayers.experiments.hemodynamics import (
    PRESETS,
    ArterialStep,
    Closure,
    HemodynamicsStudy,
    LocalClosure,
    _scaled_case,
    _visco_matrix,
)
from scilayers.hybrid import Hybrid
from scilayers.params import named, set_values, values
from scilayers.solvers import ArterialMUSCL
from scilayers.training import TrainConfig

TINY = PRESETS["quick"].replace(
    preset="tiny", n_cells=8, refine=2, warmup_cycles=2, train_cycles=1, val_cycles=1,
    test_cycles=2, samples_per_cycle=20, corr_steps=10, main_horizon=5, horizons=(2, 5),
    field_steps=10, test_starts=2, width=8, depth=1, closure_variants=("orthogonal",),
    lambda_sweep=(0.0,), data_sizes=(), ablation_seeds=1, emulator_steps=4,
    train=TrainConfig(steps=4, batch_size=2, horizon=2, val_every=2),
)  # fmt: skip


def _data_dir() -> Path:
    value = os.environ.get("SCILAYERS_DATA_DIR")
    if not value or not (Path(value) / "hemodynamics").is_dir():
        pytest.skip("no real data: SCILAYERS_DATA_DIR with hemodynamics/ is unset")
    return Path(value)


@pytest.fixture(scope="module")
def study():
    return HemodynamicsStudy(TINY, data_dir=_data_dir())


@pytest.fixture(scope="module")
def problem(study):
    return study.problem(None, progress=False)


def test_registered_and_dt_is_the_observation_interval(study):
    assert get_study("hemodynamics") is HemodynamicsStudy
    assert study.cfg.dt == pytest.approx(study.case().period / TINY.samples_per_cycle)
    step = study.physics()
    assert isinstance(step, ArterialStep) and step.dt == pytest.approx(study.cfg.dt)
    free = {k for k, p in named(step).items() if not p.fixed}
    assert free == {"E", "R1", "C", "R2"} and set(values(step)) == free | {"inflow"}
    # every evaluation set's physics is one program: only the (data) inflow differs
    for es_name in ("hr0_75", "exercise"):
        shifted = study.physics_on(**study._context(es_name))
        assert jax.tree.structure(shifted) == jax.tree.structure(step)


def test_scaling_round_trips_and_step_is_the_muscl_steps(study):
    step = study.physics()
    flow = step.model
    u = flow.network.initial_state("mean")
    u = u.at[flow.network.n_cells + 3].add(1e-6)  # some flow
    np.testing.assert_allclose(flow.to_physical(flow.from_physical(u)), u, rtol=1e-12)
    s = flow.from_physical(u)

    @eqx.filter_jit
    def muscl(solver, v):
        return jax.lax.fori_loop(0, step.substeps, lambda i, w: solver(w, 0.1 + i * solver.dt), v)

    v = muscl(flow.solver, u)
    np.testing.assert_allclose(eqx.filter_jit(step)(s, 0.1), flow.from_physical(v), rtol=1e-10,
                               atol=1e-12)  # fmt: skip


def test_closure_is_added_once_per_interval(study, key):
    step = study.physics()
    s = step.model.initial_condition()
    net = HemodynamicsStudy(TINY.replace(closure="mlp"), data_dir=_data_dir()).closure(key)
    assert isinstance(net, Closure)
    hyb = Hybrid(step, net, coupling="closure")
    phys = eqx.filter_jit(step)(s, 0.2)
    np.testing.assert_allclose(eqx.filter_jit(hyb)(s, 0.2), phys + step.dt * net(s), rtol=1e-9,
                               atol=1e-12)  # fmt: skip
    # orthogonal: the term loses its component along the θ_s sensitivities of the rates
    orth = Hybrid(step, net, coupling="closure", identifiable="orthogonal")
    g = (eqx.filter_jit(orth)(s, 0.2) - phys) / step.dt
    assert np.all(np.isfinite(g)) and 0 < np.linalg.norm(g) < np.linalg.norm(net(s))


def test_patients_are_seeded_draws_around_the_benchmark(study):
    case = study.case()
    bench = {"E": case.vessels[0].E, "R1": case.outlets[0].R1, "C": case.outlets[0].C,
             "R2": case.outlets[0].R2}  # fmt: skip
    a, b = study.patient_theta(0), study.patient_theta(1)
    for k, v in bench.items():
        assert abs(a[k][0] / v - 1) <= TINY.spread
        assert a[k][0] != b[k][0]
    np.testing.assert_array_equal(study.patient_theta(0)["E"], a["E"])
    prior = values(study.physics())
    assert float(prior["E"][0]) == pytest.approx(bench["E"])  # the prior is the case file's


@pytest.mark.slow  # builds the fine-grid truth
def test_splits_times_and_ood_sets(study, problem):
    L = TINY.samples_per_cycle
    assert problem.train.shape == (TINY.train_cycles, L + 1, study._n())
    assert list(problem.eval_sets) == ["id", "hr0_75", "hr1_3", "exercise"]
    for es in problem.eval_sets.values():
        assert es.data.shape[1:] == (TINY.context_steps + TINY.corr_steps, study._n())
        assert np.all(np.isfinite(es.data)) and es.t0.shape == (es.data.shape[0],)
    assert problem.eval_sets["hr0_75"].context["period"] == 0.75
    assert problem.eval_sets["exercise"].context["amplitude"] == TINY.amplitude
    # the training data are noisy measurements: not on the clean truth's trajectory
    val_next = problem.val[0, 1:]
    assert np.std(np.diff(problem.train[0], axis=0)) > 0 and np.all(np.isfinite(val_next))


@pytest.mark.slow  # builds the fine-grid truth
def test_truth_holds_physics_the_model_lacks_and_prior_is_off(study, problem):
    """With the patient's true θ_s the coarse physics still misses the truth (wall
    viscosity, profile, grid); with the prior θ_s it misses it by more."""
    from scilayers.experiments._engine import forecast

    es = problem.eval_sets["id"]
    truth = es.data[:, es.start : es.start + 6]
    err = {}
    for name, model in (("true", study.physics_on(patient=TINY.patient,
                                                  gamma=TINY.gamma_true)),
                        ("prior", study.physics())):  # fmt: skip
        pred = forecast(model, es, 5, study.cfg.dt)
        err[name] = float(np.mean((pred - truth) ** 2))
    assert 0 < err["true"] < err["prior"]


@pytest.mark.slow  # builds the fine-grid truth
def test_waveform_metrics_in_clinical_units(study, problem):
    es = problem.eval_sets["id"]
    truth = es.data[:, :6]
    assert all(v == 0 for v in study.extra_metrics(es, truth, truth).values())
    pred = truth.copy()
    pred[..., : TINY.n_cells] += 0.1  # 0.1 x 20 mmHg in every cell's pressure
    m = study.extra_metrics(es, pred, truth)
    assert m["p_dist_rmse_mmhg"] == pytest.approx(2.0, rel=1e-4)
    assert m["systolic_error_mmhg"] == pytest.approx(2.0, rel=1e-4)
    assert m["q_in_rmse_mls"] == 0
    p = study._waveforms(truth)["p_prox"]
    assert 40 < p.min() and p.max() < 200  # aortic pressures, mmHg


@pytest.mark.slow  # builds the fine-grid truth
def test_transfer_keeps_learned_theta_on_another_heart_rate(study, problem):
    step = study.physics()
    learned = set_values(step, E=np.array([5.0e5]), R2=np.array([9.0e7]))
    moved = transfer(study, learned, problem.eval_sets["hr0_75"])
    assert float(values(moved)["E"][0]) == pytest.approx(5.0e5)
    assert float(values(moved)["R1"][0]) == pytest.approx(float(values(step)["R1"][0]))
    assert moved.model.network.case.period == pytest.approx(0.75 * study.case().period)
    assert isinstance(moved.model.solver, ArterialMUSCL)


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    st = HemodynamicsStudy(TINY, data_dir=_data_dir())
    res = run_study(st, [0], tmp_path, progress=False, log=lambda *_: None)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["experiment"] == "hemodynamics"
    for m in ("pure_physics", "hybrid_joint", "neural_emulator", "pure_physics_calibrated"):
        assert m in res["methods"]
        assert res["methods"][m]["hr0_75_p_dist_rmse_mmhg"]["mean"] is not None
    th = res["methods"]["hybrid_joint"]["theta"]
    assert set(th) == {"E", "R1", "C", "R2"} and all("true" in v for v in th.values())
    assert res["tables"][0]["rows"]
    assert any(t["name"].startswith("hybrid_joint heart-rate") for t in res["targets"])
    assert jnp.isfinite(res["wall_seconds"])


def test_training_sees_only_the_clinical_measurements(study, problem):
    """Proximal and distal pressure of vessel 1 and the inlet flow are the measurements;
    the engine hands them to every trained method as the observation operator."""
    n = TINY.n_cells
    assert problem.observed == (0, n - 1, n)
    wave = study._waveforms(problem.train[0])
    flat = problem.train[0].reshape(problem.train.shape[1], -1)
    p_ref, p_scale, _ = study._scales()
    np.testing.assert_allclose((p_ref + p_scale * flat[:, 0]) / 133.322, wave["p_prox"],
                               rtol=1e-3)  # fmt: skip
    assert HemodynamicsStudy(TINY.replace(sparse=False), data_dir=_data_dir()).observed() is None


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_training_windows_see_the_outflow_decay(preset):
    """Config guard (issue 9): 4-step windows (a tenth of a cycle) see E but hardly the
    Windkessel's decay, and biased R2 by ~10 % for every θ_s-learning method; the presets
    train every method on windows of at least a quarter of the cardiac cycle."""
    cfg = PRESETS[preset]
    h = cfg.train.longest_horizon
    assert h >= cfg.samples_per_cycle / 4


def _local(key, cells=(16,), n_out=1, **kw):
    return LocalClosure(cells, n_out, width=8, depth=2, key=key, **kw)


def test_local_closure_is_one_stencil_network_shared_by_every_cell(key):
    """Translation equivariance: shifting the interior of a vessel by one cell shifts the
    term by one cell (away from the reflecting ends); the capacitor pressures get none."""
    net = _local(key)
    m = 16
    x = np.linspace(0, 3, m + 1)
    p, q = np.sin(x), np.cos(1.3 * x) + 0.2 * x  # cells 0..m (one extra to shift)
    s0 = jnp.asarray(np.concatenate([p[:m], q[:m], [0.3]]))
    s1 = jnp.asarray(np.concatenate([p[1:], q[1:], [-0.7]]))
    g0, g1 = net(s0), net(s1)
    np.testing.assert_allclose(g1[1 : m - 2], g0[2 : m - 1], rtol=1e-5, atol=1e-7)  # p
    np.testing.assert_allclose(g1[m + 1 : 2 * m - 2], g0[m + 2 : 2 * m - 1], rtol=1e-5,
                               atol=1e-7)  # fmt: skip
    assert g0[-1] == 0 and g1[-1] == 0
    assert not np.allclose(g0[:m], g0[0])  # and it does depend on the cell's state
    with pytest.raises(ValueError, match="flat state of 33"):
        net(jnp.zeros(30))


def test_local_closure_wall_is_the_truths_viscoelastic_step(study):
    """With ``kappa = ν_w / Δx²`` the closure's implicit wall step is exactly the truth's
    Kelvin–Voigt step on the physics' grid (`_visco_matrix`), so the structure can
    represent the wall the physics lacks; with a tiny ``kappa`` it does nothing."""
    cfg = study.cfg
    case = _scaled_case(study.case(), n_cells=cfg.n_cells)
    v = case.vessels[0]
    r = 0.5 * (v.r_prox + v.r_dist)
    nu = (2 / 3) * np.sqrt(np.pi) * cfg.wall_viscosity * v.h0 / (case.rho * np.sqrt(np.pi) * r)
    kappa = nu / (v.length / cfg.n_cells) ** 2
    net = _local(jax.random.key(0), cells=(cfg.n_cells,), kappa0=kappa)
    assert float(net.kappa[0]) == pytest.approx(kappa, rel=1e-5)
    dt = 1e-3
    q = jnp.asarray(np.random.default_rng(0).standard_normal(cfg.n_cells))
    want = _visco_matrix(case, dt, cfg.wall_viscosity) @ np.asarray(q)
    np.testing.assert_allclose(net.wall(dt)(q), want, rtol=1e-4, atol=1e-6)
    weak = _local(jax.random.key(0), cells=(cfg.n_cells,), kappa0=1e-6)
    np.testing.assert_allclose(weak.wall(dt)(q), q, rtol=1e-6, atol=1e-8)


def test_local_closure_fits_friction_and_a_viscous_stencil(key):
    """The per-cell network learns, from random states, a flow tendency made of a
    pressure-dependent friction and ``c ∂²_x Q`` (the two terms the truth adds)."""
    import optax

    m = 16
    net = _local(key, cells=(m,), n_out=0)
    rng = np.random.default_rng(1)
    x = np.linspace(0, 1, m)
    k = rng.uniform(0.5, 3.0, (256, 1))
    ph = rng.uniform(0, 6, (256, 1))
    q = np.cos(k * x + ph) * rng.uniform(0.3, 1.0, (256, 1))
    p = rng.uniform(-1, 1, (256, 1)) + 0.3 * np.sin(2 * x + ph)
    states = jnp.asarray(np.concatenate([p, q], 1))
    d2q = np.concatenate([q[:, 1:2] - q[:, :1], q[:, 2:] - 2 * q[:, 1:-1] + q[:, :-2],
                          q[:, -2:-1] - q[:, -1:]], 1)  # fmt: skip
    target = jnp.asarray(0.2 * q * (1 - 0.3 * p) + 2.0 * m**2 * d2q / 100)

    def loss(n):
        return jnp.mean((jax.vmap(n)(states)[:, m:] - target) ** 2)

    opt = optax.adam(1e-2)
    state = opt.init(eqx.filter(net, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(n, st):
        g = eqx.filter_grad(loss)(n)
        upd, st = opt.update(g, st)
        return eqx.apply_updates(n, upd), st

    before = float(loss(net))
    for _ in range(600):
        net, state = step(net, state)
    rel = float(loss(net)) / float(jnp.mean(target**2))
    assert rel < 0.02, (before, rel)
    assert float(loss(net)) < 0.05 * before


def test_structured_hybrid_applies_the_wall_per_muscl_step(study, key):
    """A `Hybrid` with the `LocalClosure`: the wall step after every MUSCL step, the local
    term once per interval; with no wall viscosity it is the plain closure splitting."""
    step = study.physics()
    s = step.model.initial_condition()
    weak = _local(key, cells=(TINY.n_cells,), kappa0=1e-9)
    phys = eqx.filter_jit(step)(s, 0.2)
    np.testing.assert_allclose(
        eqx.filter_jit(Hybrid(step, weak, coupling="closure"))(s, 0.2),
        phys + step.dt * weak(s), rtol=1e-6, atol=1e-8)  # fmt: skip
    strong = _local(key, cells=(TINY.n_cells,), kappa0=1e3)
    core = step.model
    want = core.advance(s, 0.2, step.substeps, strong.wall(core.solver.dt)) + step.dt * strong(s)
    got = eqx.filter_jit(Hybrid(step, strong, coupling="closure"))(s, 0.2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    assert not np.allclose(got, phys + step.dt * strong(s), atol=1e-4)
    orth = Hybrid(step, strong, coupling="closure", identifiable="orthogonal")
    g = eqx.filter_jit(orth)(s, 0.2)
    assert np.all(np.isfinite(g))


def test_presets_use_the_structured_closure_and_check_the_choice():
    """Issue 9: the structured closure is the default of both presets (the whole-state MLP
    stays available as closure="mlp"); an unknown closure is a clear error."""
    for preset in ("quick", "full"):
        assert PRESETS[preset].closure == "structured"
    with pytest.raises(ValueError, match="choose one of"):
        PRESETS["quick"].replace(closure="cnn")
