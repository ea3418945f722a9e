"""The study engine end to end on the example Burgers study at a tiny size: every method,
the results format, θ_s read from the Params, resume, reproducibility, the registry."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from scilayers import metrics as M
from scilayers.baselines import PINNConfig
from scilayers.experiments import STUDIES, get_study, main, run_study
from scilayers.experiments._common import RunCache, config_stamp
from scilayers.experiments._engine import METHODS, REFERENCE, transfer
from scilayers.experiments.burgers import PRESETS, BurgersStudy
from scilayers.params import values
from scilayers.training import TrainConfig

TINY = PRESETS["quick"].replace(
    preset="tiny",
    trajectories=24,
    context_steps=3,
    corr_steps=10,
    main_horizon=5,
    horizons=(2, 5),
    field_steps=6,
    data_sizes=(2,),
    data_seeds=1,
    lambda_sweep=(0.0, 0.1),
    closure_variants=("unrestricted", "orthogonal"),
    pinn=PINNConfig(width=8, depth=2, adam_steps=5, lbfgs_steps=3, n_collocation=16,
                    n_collocation_lbfgs=16),  # fmt: skip
    pinn_trajectories=2,
    pinn_seeds=None,
    checkpoint_every=2,
    train=TrainConfig(steps=4, batch_size=2, horizon=3, val_every=2),
)


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("burgers-tiny")
    results = run_study(BurgersStudy(TINY), [0, 1], out, progress=False, log=quiet)
    return out, results


@pytest.mark.slow
def test_results_follow_the_documented_format(study):
    out, results = study
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == "burgers" and on_disk["seeds"] == [0, 1]
    assert on_disk["eval_sets"] == ["id", "ood"]
    assert list(on_disk["methods"]) == [*REFERENCE, *METHODS]
    for name, m in on_disk["methods"].items():
        for key in ("id_mse", "ood_mse", "train_seconds"):
            assert set(m[key]) == {"mean", "std", "per_seed"}, (name, key)
            assert len(m[key]["per_seed"]) == 2
    assert all(on_disk["methods"][r]["reference"] for r in REFERENCE)
    assert {"strategy", "lambda_physics", "identifiability", "data_efficiency"} <= set(
        on_disk["ablations"]
    )
    assert set(on_disk["ablations"]["lambda_physics"]) == {"0", "0.1"}
    de = on_disk["data_efficiency"]
    assert de["sizes"][0] == 2 and de["sizes"][-1] == 16  # 70 % of 24 trajectories train
    assert set(de["methods"]) == set(TINY.data_methods)
    assert on_disk["identifiability"]["params"] == ["nu"]
    assert on_disk["config"]["train"]["steps"] == 4
    for name in ("pure_physics_calibrated", "hybrid_joint", "neural_emulator"):
        conv = on_disk["methods"][name]["convergence"]
        assert conv["criterion"] and len(conv["converged"]) == 2
        # two validations cannot show a plateau: one extension round of 4 steps each
        assert conv["steps"]["per_seed"] == [8, 8], name
        assert (out / "checkpoints" / name / "seed1" / "extend1" / "checkpoint.json").exists()
    assert on_disk["ablations"]["lambda_physics"]  # ablations keep the equal budget:
    assert not list((out / "checkpoints").glob("abl_*/seed0/extend1"))
    assert (out / "report.md").exists() is False  # run_study leaves the report to main()


def test_convergence_of_an_extended_run_is_judged_on_its_last_round():
    """After extension rounds, the verdict compares the last round's best validation loss
    with the best before it: 4 % better is a plateau, 6 % better is not; without rounds,
    the last quarter of the validations against the rest."""
    from scilayers.experiments._engine import _convergence

    def hist(val, rounds=None):
        h = {"val_loss": val, "val_step": list(range(len(val))), "step": list(range(10))}
        return h if rounds is None else {**h, "val_round": rounds}

    assert _convergence(hist([4, 2, 1.0, 0.96], [0, 0, 0, 1]), False)["converged"]
    assert not _convergence(hist([4, 2, 1.0, 0.94], [0, 0, 0, 1]), False)["converged"]
    assert not _convergence(hist([4, 2, 1.0, 0.99, 0.94], [0, 0, 1, 1, 2]), False)["converged"]
    assert _convergence(hist([4, 3, 2, 1.0, 0.99, 0.98, 0.97, 0.96]), False)["converged"]
    assert not _convergence(hist([4, 3, 2, 1.5, 1.4, 1.3, 1.2, 1.0]), False)["converged"]
    out = _convergence(hist([4, 2, 1.0, 0.96], [0, 0, 0, 1]), False)
    assert out["extensions"] == 1 and out["final_loss"] == 0.96
    # two fits in a row (the sequential hybrid: calibration, then its net), then extension
    # rounds: the net's validations only, judged by the round rule (the last round is 1 %
    # better: a plateau; the quarter rule would read 0.79 against 0.85 as none)
    two = {"val_loss": [9, 8, 7, 6, 2.0, 1.5, 1.2, 1.0, 0.9, 0.85, 0.8, 0.79],
           "val_step": [1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8], "val_round": [0] * 10 + [1, 2],
           "step": list(range(10))}  # fmt: skip
    out = _convergence(two, False)
    assert out["converged"] and out["extensions"] == 2 and out["final_loss"] == 0.79
    worse = {**two, "val_loss": two["val_loss"][:-1] + [0.7]}  # the last round 12 % better
    assert not _convergence(worse, False)["converged"]


@pytest.mark.slow
def test_theta_is_read_from_the_params(study):
    _, results = study
    prior, truth = values(BurgersStudy(TINY).physics()), values(BurgersStudy(TINY).truth_model())
    for name in ("hybrid_fixed_theta", "hybrid_joint", "pure_physics_calibrated"):
        nu = results["methods"][name]["theta"]["nu"]
        assert nu["initial"] == pytest.approx(float(prior["nu"]))
        assert nu["true"] == pytest.approx(float(truth["nu"]))
        assert len(nu["learned"]) == 2
    fixed = results["methods"]["hybrid_fixed_theta"]["theta"]["nu"]["learned"]
    assert fixed == pytest.approx([TINY.nu_prior] * 2)
    joint = results["methods"]["hybrid_joint"]["theta"]["nu"]["learned"]
    assert all(v != pytest.approx(TINY.nu_prior) for v in joint)
    hist = results["methods"]["hybrid_joint"]["theta_history"]["nu"]
    assert len(hist) == 2 and len(hist[0]) == 2 * TINY.train.steps  # + one extension round
    assert results["methods"]["neural_emulator"]["theta"] == {}


@pytest.mark.slow
def test_reference_forecasts_are_what_they_say(study):
    """The persistence row equals an MSE computed by hand from the evaluation data."""
    _, results = study
    problem = BurgersStudy(TINY).problem(None, False)
    es = problem.eval_sets["id"]
    s = es.start
    truth = es.data[:, s : s + TINY.corr_steps + 1]
    pers = np.repeat(truth[:, :1], truth.shape[1], axis=1)
    expected = M.rollout_mse(pers, truth, TINY.main_horizon)
    assert results["methods"]["persistence"]["id_mse"]["mean"] == pytest.approx(expected)


@pytest.mark.slow
def test_transfer_carries_the_learned_theta(study):
    study_ = BurgersStudy(TINY)
    problem = study_.problem(None, False)
    from scilayers.params import set_values

    trained = set_values(study_.physics(), nu=0.123)
    moved = transfer(study_, trained, problem.eval_sets["ood"])
    assert float(values(moved)["nu"]) == pytest.approx(0.123)


@pytest.mark.slow
def test_seeds_differ_but_a_rerun_reproduces(study, tmp_path):
    _, results = study
    per_seed = results["methods"]["hybrid_joint"]["id_mse"]["per_seed"]
    assert per_seed[0] != per_seed[1]
    cfg = TINY.replace(data_sizes=(), lambda_sweep=(0.0,), closure_variants=("orthogonal",),
                       pinn=None)  # fmt: skip
    again = run_study(BurgersStudy(cfg), [0], tmp_path, progress=False, log=quiet)
    np.testing.assert_allclose(
        again["methods"]["hybrid_joint"]["id_mse"]["per_seed"][0], per_seed[0], rtol=1e-6
    )
    assert "pinn" not in again["methods"]  # no PINN config: the row is left out, not faked


def test_worker_processes_give_the_same_results(tmp_path):
    """`run_study(jobs=2)` trains the (run, seed) pairs, and the UQ ensembles, on two
    spawned worker processes: every method's per-seed metrics and learned θ_s, the
    ablations and the UQ block equal those of the one-process run."""
    cfg = TINY.replace(data_sizes=(), lambda_sweep=(0.0,), closure_variants=("orthogonal",),
                       pinn=None, uq="ensemble", uq_members=2, uq_samples=2,
                       uq_windows=1)  # fmt: skip
    lines: list[str] = []
    one = run_study(BurgersStudy(cfg), [0, 1], tmp_path / "one", progress=False, log=quiet)
    two = run_study(BurgersStudy(cfg), [0, 1], tmp_path / "two", progress=False,
                    log=lines.append, jobs=2)  # fmt: skip
    assert any("on 2 worker processes" in line for line in lines)
    assert list(two["methods"]) == list(one["methods"])
    for name, m in one["methods"].items():
        for key in ("id_mse", "ood_mse"):
            assert two["methods"][name][key]["per_seed"] == m[key]["per_seed"], (name, key)
        assert two["methods"][name]["theta"] == m["theta"], name
    def untimed(block):
        if isinstance(block, dict):
            return {k: untimed(v) for k, v in block.items() if "seconds" not in k}
        return block

    assert untimed(two["ablations"]) == untimed(one["ablations"])
    assert any("uq ensemble: hybrid_joint, neural_emulator on 2 worker" in ln for ln in lines)
    assert untimed(two["uq"]) == untimed(one["uq"])
    cached = sorted(p.name for p in (tmp_path / "two" / "runs").glob("*__seed*.json"))
    assert cached == sorted(p.name for p in (tmp_path / "one" / "runs").glob("*__seed*.json"))


@pytest.mark.slow
def test_resume_reuses_finished_runs(study):
    out, results = study
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*__seed*.json")}
    again = run_study(BurgersStudy(TINY), [0, 1], out, resume=True, progress=False, log=quiet)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*__seed*.json")} == stamp
    assert again["invocations"] == 2 and again["wall_seconds_total"] > again["wall_seconds"]
    assert again["methods"]["hybrid_joint"]["id_mse"] == results["methods"]["hybrid_joint"][
        "id_mse"
    ]


def test_a_cached_run_made_with_another_config_is_not_reused(tmp_path):
    """`--resume` after a config change recomputes what the change touches: the stamp
    covers what a run computes, not which runs exist; results from before stamps are
    reused."""
    base = PRESETS["quick"]
    stamp = config_stamp(base)
    assert config_stamp(base.replace(closure_variants=("unrestricted",), data_sizes=(2,),
                                     uq="ensemble", uq_members=7)) == stamp  # fmt: skip
    assert config_stamp(base.replace(train=base.train.replace(steps=7))) != stamp
    assert config_stamp(base.replace(identifiable="unrestricted")) != stamp
    assert config_stamp(base, uq=True) != config_stamp(base.replace(uq_members=7), uq=True)
    arrays = {"id": np.zeros(3)}
    RunCache(tmp_path, stamp).put("hybrid_joint", 0, {"id_mse": 1.0}, arrays)
    metrics, _ = RunCache(tmp_path, stamp).get("hybrid_joint", 0)
    assert metrics == {"id_mse": 1.0}  # the stamp is not a metric
    other = RunCache(tmp_path, config_stamp(base.replace(identifiable="unrestricted")))
    assert other.get("hybrid_joint", 0) is None and other.stale == ["hybrid_joint (seed 0)"]
    RunCache(tmp_path).put("pinn", 0, {"id_mse": 2.0}, arrays)  # written without a stamp
    assert RunCache(tmp_path, stamp).get("pinn", 0)[0] == {"id_mse": 2.0}


def test_every_registered_study_implements_the_protocol():
    import os

    no_data = not os.environ.get("SCILAYERS_DATA_DIR")
    for name in STUDIES:
        cls = get_study(name)
        assert cls.name == name and cls.presets and "quick" in cls.presets
        study = cls(cls.presets["quick"])
        try:
            step = study.physics()
        except ValueError as e:  # a study on real data, without the data: a one-line error
            assert no_data and "SCILAYERS_DATA_DIR" in str(e) and "\n" not in str(e), (name, e)
            continue
        assert values(step), f"{name}: the physics has no θ_s"
        net = study.closure(__import__("jax").random.key(0))
        u = jnp.zeros(step.state_shape)
        if callable(getattr(study, "run", None)):  # own runner: the closure is its own kind
            assert net(u).shape[1:] == u.shape[1:], name  # (a field on the same grid)
            continue
        assert net(u).shape == u.shape


def test_bad_study_preset_and_seeds():
    with pytest.raises(ValueError, match="unknown study"):
        get_study("nope")
    with pytest.raises(ValueError, match="unknown preset"):
        main("burgers", preset="huge")
    with pytest.raises(ValueError, match="seeds"):
        main("burgers", seeds=0)
    with pytest.raises(ValueError, match="main_horizon"):
        TINY.replace(main_horizon=100)


class _WithBaselines(BurgersStudy):
    """The Burgers study with two study baselines (one a model, one bare forecasts), a
    model-level metric and an extra results block: the engine's study hooks."""

    def extra_methods(self):
        return {"prior_again": "the physics prior, as a study baseline",
                "zero_forecast": "forecasts of zero"}  # fmt: skip

    def extra_method(self, name, problem, seed, progress):
        if name == "prior_again":
            return self.physics()
        return {k: np.zeros((es.data.shape[0], self.cfg.corr_steps + 1, *es.state_shape))
                for k, es in problem.eval_sets.items()}  # fmt: skip

    def model_metrics(self, name, eval_set, model, seed):
        u0 = jnp.asarray(eval_set.data[0, eval_set.start])
        return {"one_step_norm": float(jnp.linalg.norm(model(u0)))}

    def study_results(self, problem, results):
        return {"extra_block": {"n_methods": len(results["methods"])}}


@pytest.mark.slow
def test_study_baselines_and_model_metrics(tmp_path):
    cfg = TINY.replace(data_sizes=(), lambda_sweep=(0.0,), closure_variants=("orthogonal",),
                       pinn=None)  # fmt: skip
    res = run_study(_WithBaselines(cfg), [0], tmp_path, progress=False, log=quiet)
    methods = res["methods"]
    assert list(methods)[-2:] == ["prior_again", "zero_forecast"]
    assert methods["zero_forecast"]["label"] == "forecasts of zero"
    # a baseline that is a model is evaluated like the standard ones
    assert methods["prior_again"]["id_mse"] == methods["pure_physics"]["id_mse"]
    # bare forecasts are scored as given: zero against the truth is the mean square
    problem = BurgersStudy(cfg).problem(None, False)
    es = problem.eval_sets["id"]
    truth = es.data[:, es.start : es.start + cfg.corr_steps + 1]
    expected = M.rollout_mse(np.zeros_like(truth), truth, cfg.main_horizon)
    assert methods["zero_forecast"]["id_mse"]["mean"] == pytest.approx(expected)
    # model metrics for every model (not references, not bare forecasts), per set
    for m in ("pure_physics", "hybrid_joint", "prior_again"):
        for s in ("id", "ood"):
            assert methods[m][f"{s}_one_step_norm"]["mean"] > 0
    assert "id_one_step_norm" not in methods["persistence"]
    assert "id_one_step_norm" not in methods["zero_forecast"]
    assert res["extra_block"]["n_methods"] == len(methods)


def test_forecasts_start_at_the_set_time():
    """A set with start times: rollouts see t0 + start·dt (a time-dependent model)."""
    from scilayers.experiments import EvalSet
    from scilayers.experiments._engine import forecast
    from scilayers.solvers import AbstractStepper

    class Clock(AbstractStepper):
        model: object = None
        dt: float = 0.5

        @property
        def state_shape(self):
            return (1,)

        def __call__(self, u, t=0.0):
            return u * 0 + t + self.dt  # the state becomes the time reached

    es = EvalSet("id", np.zeros((2, 5, 1)), start=2, t0=np.array([10.0, 20.0]))
    pred = forecast(Clock(), es, 3, dt=0.5)
    np.testing.assert_allclose(pred[:, -1, 0], [10.0 + 1.0 + 1.5, 20.0 + 1.0 + 1.5])


@pytest.mark.slow
def test_uq_ensemble_block_and_report(tmp_path):
    """``--uq ensemble``: a vectorised ensemble per UQ method, scored per set and lead time,
    with the θ_s spread across members against the truth, and the report's UQ section."""
    from scilayers.report import build_report

    cfg = TINY.replace(uq="ensemble", uq_members=3, uq_samples=2, lambda_sweep=(0.0,),
                       data_sizes=(30,), closure_variants=("orthogonal",), pinn=None,
                       uq_windows=2)  # fmt: skip
    res = run_study(BurgersStudy(cfg), [0], tmp_path, progress=False, log=quiet)
    uq = json.loads((tmp_path / "results.json").read_text())["uq"]
    assert uq["windows_per_trajectory"] == 2
    assert uq["kind"] == "ensemble" and set(uq["methods"]) == {"hybrid_joint", "neural_emulator"}
    joint = uq["methods"]["hybrid_joint"]
    for s in res["eval_sets"]:
        at = joint[s]["at_lead"]
        assert at["step"] == cfg.main_horizon
        assert 0 <= at["picp_50"] <= at["picp_90"] <= at["picp_95"] <= 1
        assert at["crps"] > 0 and at["mpiw_90"] > 0
        assert len(joint[s]["by_step"]["crps"]) == cfg.main_horizon
    nu = joint["theta"]["nu"]
    assert len(nu["members"]) == 3 and nu["std"] > 0  # members start and end apart
    assert nu["true"] == pytest.approx(float(values(BurgersStudy(cfg).truth_model())["nu"]))
    arrays = np.load(tmp_path / "arrays.npz")
    shown = arrays["uq__hybrid_joint__id"]
    assert shown.shape == (4, cfg.main_horizon + 1)
    assert np.all(shown[2] <= shown[1] + 1e-6) and np.all(shown[1] <= shown[3] + 1e-6)
    text = build_report(tmp_path).read_text()
    assert "## Uncertainty quantification" in text and "PICP 90 %" in text
    for fig in ("uq_reliability", "uq_lead_time", "uq_intervals", "uq_theta"):
        assert (tmp_path / "figures" / f"{fig}.png").is_file()
    # the ensemble is cached with the other runs: a resumed study does not retrain it
    again = run_study(BurgersStudy(cfg), [0], tmp_path, resume=True, progress=False, log=quiet)
    assert again["uq"]["methods"]["hybrid_joint"]["train_seconds"] == joint["train_seconds"]


def test_uq_forecast_windows_fit_inside_the_set():
    """Forecasts are issued every main_horizon steps from the set's start, as many as
    ``uq_windows`` asks and whole windows fit, never fewer than one."""
    from scilayers.experiments import EvalSet
    from scilayers.experiments._uq import _issue_steps

    es = EvalSet("id", np.zeros((2, 23, 1)), start=2)  # 20 steps after the start
    cfg = TINY.replace(main_horizon=5)
    assert _issue_steps(cfg, es) == [2]
    assert _issue_steps(cfg.replace(uq_windows=3), es) == [2, 7, 12]
    assert _issue_steps(cfg.replace(uq_windows=9), es) == [2, 7, 12, 17]
    assert _issue_steps(cfg.replace(uq_windows=9, main_horizon=10), es) == [2, 12]
    with pytest.raises(ValueError, match="uq_windows"):
        cfg.replace(uq_windows=0)


def test_poorly_identified_entries_of_an_array_param_mark_the_param():
    """The identifiability diagnostic names the entries of an array Param (``E[0]``); the
    θ_s block is keyed by Param, so either spelling marks it, and no other Param."""
    from scilayers.experiments._engine import _theta_block

    study = BurgersStudy(TINY)
    per_seed = [{"theta": {"nu": 0.12}}]
    for poorly in ({"nu"}, {"nu[0]"}):
        assert _theta_block(study, per_seed, poorly)["nu"]["identifiable"] is False
    for poorly in (set(), {"nux[0]"}):
        assert "identifiable" not in _theta_block(study, per_seed, poorly)["nu"]


def test_uq_targets_read_the_block_at_the_main_lead():
    """PICP90 and spread/skill of hybrid_joint in domain against their bands, and its CRPS
    against the emulator's on each shifted set; no block, no targets."""
    from scilayers.experiments._uq import uq_targets

    def at(picp, ss, crps):
        return {"at_lead": {"picp_90": picp, "spread_skill": ss, "crps": crps}}

    uq = {"kind": "ensemble", "methods": {
        "hybrid_joint": {"id": at(0.9, 1.0, 0.1), "ood": at(0.7, 0.6, 0.3), "theta": {}},
        "neural_emulator": {"id": at(0.9, 1.0, 0.05), "ood": at(0.9, 1.0, 0.2)},
    }}  # fmt: skip
    got = {t["name"]: t["pass"] for t in uq_targets(uq)}
    assert got == {"uq (ensemble): hybrid_joint PICP90 in domain": True,
                   "uq (ensemble): hybrid_joint spread/skill in domain": True,
                   "uq (ensemble), ood: hybrid_joint CRPS below neural_emulator": False}
    uq["methods"]["hybrid_joint"]["id"] = at(0.81, 1.3, 0.1)
    assert not any(t["pass"] for t in uq_targets(uq))
    assert uq_targets(None) == [] and uq_targets({"methods": {}}) == []


@pytest.mark.slow
def test_hybrid_train_is_the_hybrids_and_their_ensembles_budget_only(tmp_path):
    """`StudyConfig.hybrid_train` is the budget of the hybrids (main rows and ablations) and
    of the --uq hybrid ensembles (train_config's default); the calibration, the emulator and
    its ensemble keep the shared one; unset, every run keeps the shared one."""
    from scilayers.experiments._engine import _train, train_config, train_runs
    from scilayers.experiments._uq import _members

    hybrid_tc = TINY.train.replace(steps=6, batch_size=2, lr_net=1e-3)
    cfg = TINY.replace(hybrid_train=hybrid_tc, extend_rounds=0, checkpoint_every=0,
                       emulator_steps=5)  # fmt: skip
    study = BurgersStudy(cfg)
    problem = study.problem(tmp_path / "cache", False)
    runs = train_runs(study, int(problem.train.shape[0]))
    tcs = {name: _train(study, problem, name, runs[name], 0, tmp_path / name, False,
                        False).config
           for name in ("hybrid_joint", "abl_lambda_0.1", "pure_physics_calibrated",
                        "neural_emulator")}  # fmt: skip
    steps = {k: (v.steps, v.batch_size, v.lr_net) for k, v in tcs.items()}
    shared = (TINY.train.batch_size, TINY.train.lr_net)
    assert steps == {"hybrid_joint": (6, 2, 1e-3), "abl_lambda_0.1": (6, 2, 1e-3),
                     "pure_physics_calibrated": (4, *shared),
                     "neural_emulator": (5, *shared)}  # fmt: skip
    assert _members(study, problem, "hybrid_joint", 0)[1].batch_size == 2
    emulator = _members(study, problem, "neural_emulator", 0)[1]
    assert (emulator.steps, emulator.batch_size) == (5, TINY.train.batch_size)
    assert train_config(study, problem, 0, hybrid=False).steps == 4
    assert train_config(BurgersStudy(TINY), problem, 0).steps == 4
    with pytest.raises(ValueError, match="hybrid_train"):
        TINY.replace(hybrid_train={"steps": 6})
