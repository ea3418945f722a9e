"""The KS study end to end at a tiny size: every method, results format, report, resume."""

import dataclasses
import json

import numpy as np
import pytest

from scilayers.experiments import ks
from scilayers.training import TrainConfig

TINY = dataclasses.replace(
    ks.PRESETS["quick"],
    preset="tiny",
    trajectories=30,
    traj_steps=40,
    burn_in=20.0,
    n_test=2,
    n_ood=2,
    main_horizon=8,
    horizons=(2, 8),
    corr_steps=30,
    spacetime_steps=10,
    pinn_window=4,
    pinn_steps=3,
    pinn_collocation=16,
    pinn_width=8,
    lambda_sweep=(0.0, 0.1),
    lambda_closure_sweep=(1.0,),
    checkpoint_every=2,
    train=TrainConfig(steps=4, batch_size=2, horizon=3, val_every=2),
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("ks-tiny")
    results = ks.run_study(TINY, [0, 1], out, progress=False, log=lambda *_: None)
    return out, results


def test_results_follow_the_documented_format(study):
    out, results = study
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == "ks" and on_disk["seeds"] == [0, 1]
    assert list(on_disk["methods"]) == list(ks.METHODS)
    for name, m in on_disk["methods"].items():
        for key in ("id_mse", "ood_mse", "physics_residual", "train_seconds"):
            assert set(m[key]) == {"mean", "std", "per_seed"}, (name, key)
            assert len(m[key]["per_seed"]) == 2
    assert set(on_disk["ablations"]) == {"strategy", "lambda_physics", "theta", "closure"}
    assert set(on_disk["ablations"]["lambda_physics"]) == {"0", "0.1"}
    assert on_disk["config"]["train"]["steps"] == 4
    assert {t["name"] for t in on_disk["targets"]}  # computed, not hard-coded


def test_fixed_theta_stays_at_the_prior_and_joint_moves(study):
    _, results = study
    fixed = results["methods"]["hybrid_fixed_theta"]["theta"]
    assert fixed["a"]["learned"] == [TINY.a_prior] * 2
    assert fixed["b"]["learned"] == [TINY.b_prior] * 2
    joint = results["methods"]["hybrid_joint"]["theta"]
    assert all(v != TINY.a_prior for v in joint["a"]["learned"])
    assert results["methods"]["neural_emulator"]["theta"] == {}


def test_seeds_differ_but_a_rerun_reproduces(study, tmp_path):
    out, results = study
    per_seed = results["methods"]["hybrid_joint"]["id_mse"]["per_seed"]
    assert per_seed[0] != per_seed[1]
    again = ks.run_study(TINY, [0], tmp_path, progress=False, log=lambda *_: None)
    np.testing.assert_allclose(
        again["methods"]["hybrid_joint"]["id_mse"]["per_seed"][0], per_seed[0], rtol=1e-6
    )


def test_resume_reuses_finished_runs(study):
    out, results = study
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    again = ks.run_study(TINY, [0, 1], out, resume=True, progress=False, log=lambda *_: None)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == stamp
    assert again["methods"]["hybrid_joint"]["id_mse"] == results["methods"]["hybrid_joint"][
        "id_mse"
    ]


def test_bad_preset_and_seeds():
    with pytest.raises(ValueError, match="unknown preset"):
        ks.main(preset="huge")
    with pytest.raises(ValueError, match="seeds"):
        ks.main(seeds=0)
    with pytest.raises(ValueError, match="traj_steps"):
        dataclasses.replace(TINY, traj_steps=10)
