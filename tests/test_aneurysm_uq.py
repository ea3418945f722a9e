"""Uncertainty in the aneurysm study (issue 11 in issue 10's study): the hybrid_joint
ensemble trained as one vmapped program, its model-error term and the ``uq`` block."""

from __future__ import annotations

import numpy as np
import pytest

from scilayers import params as slp
from scilayers.experiments.aneurysm import PRESETS, AneurysmStudy, _uq
from scilayers.metrics import CALIBRATION_KEYS, GaussianPrediction, spread_skill

TINY = PRESETS["quick"].replace(
    preset="tiny", waveform="synthetic", cells_across=6, length=16e-3, period=0.2,
    steps_per_cycle=320, record_phases=8, obs_phases=4, truth_cycles=2, eval_cycles=2,
    wall_points=24, iterations=2, gn_refresh=2, spinup_cycles=1, refine=1, noise=0.03,
    ood=(), methods=("hybrid_joint",), max_seeds=1, uq="ensemble", uq_members=3,
    uq_samples=8, uq_jitter=0.15, wall="halfway", uq_error_refine=2,
)  # fmt: skip
# Halfway walls: the same training algorithm as with Bouzidi walls (the study's default),
# compiled in half the time.
IDENT = {"poorly_identified": ["mu_0", "lam"], "combinations": {"K": {"identified": True}}}


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    study = AneurysmStudy(TINY)
    truth = study.truth(tmp_path_factory.mktemp("truth"), lambda s: None)
    cases = study.cases()
    lat = study.lattice(cases[0])
    obs, _, cells = study.observations(truth["id"], lat, 0)
    block, arrays = _uq.ensemble_block(study, truth, obs, cells, cases, IDENT, 0, lambda s: None)
    return study, lat, obs, cells, block, arrays


def test_vmapped_members_have_their_own_theta_and_equal_a_member_trained_alone(ensemble):
    """Member i of the one-program ensemble is the model `train_lattice` makes from member
    i's start (θ_s by Gauss–Newton, closure by Adam): losses and θ_s history to round-off;
    and the members' θ_s differ (each has its own start and keeps its own path)."""
    study, lat, obs, cells, block, _ = ensemble
    starts = _uq.hybrid_members(study, lat, 0)
    i = 2
    alone, history, losses, _ = study.train_lattice(
        starts[i], lat, obs, cells, train_theta=True, train_net=True, seed=0,
        log=lambda s: None, tag="alone")  # fmt: skip
    np.testing.assert_allclose(block["losses"][i], losses, rtol=1e-10)
    for k, v in history.items():
        np.testing.assert_allclose(block["theta_history"][k][i], v, rtol=1e-10)
    learned = slp.values(alone.lbm.model.rheology)
    for k in ("mu_0", "mu_inf", "lam", "n"):
        members = block["theta"][k]["members"]
        assert members[i] == pytest.approx(float(learned[k]), rel=1e-10)
        assert np.ptp(members) > 1e-3 * abs(np.mean(members)), (k, members)
    assert float(np.ptp([h[0] for h in block["theta_history"]["mu_0"]])) > 0  # own starts


def test_uq_block_has_the_schema_of_the_other_studies(ensemble):
    study, _, _, _, block, arrays = ensemble
    uq = _uq.wrap(study, block, 0)
    assert uq["kind"] == "ensemble" and uq["members"] == TINY.uq_members
    assert {"lead", "trajectories", "samples_per_member", "methods"} <= set(uq)
    entry = uq["methods"]["hybrid_joint"]
    ident = entry["id"]
    for k in CALIBRATION_KEYS:
        assert k in ident and k in ident["at_lead"] and len(ident["by_step"][k]) == 8, k
    assert ident["steps"] == list(range(8))
    assert len(ident["reliability"]["nominal"]) == len(ident["reliability"]["observed"])
    assert 0.0 <= ident["picp_90"] <= 1.0 and ident["crps"] > 0
    for k in ("mu_0", "mu_inf", "lam", "n", "K", "mu(10/s)"):
        row = entry["theta"][k]
        assert {"mean", "std", "members", "ci95", "true", "covered", "identified"} <= set(row)
    assert entry["theta"]["lam"]["identified"] is False and entry["theta"]["n"]["identified"]
    t = ident["tawss"]
    assert 0.0 <= t["gaussian_90"]["picp"] <= 1.0 and t["gaussian_90"]["width_rel"] > 0
    assert t["members_range"]["nominal"] == pytest.approx(0.5)  # (M - 1)/(M + 1), M = 3
    assert entry["error_model"]["sigma"] >= 0 and entry["train_seconds"] > 0
    em = entry["error_model"]
    assert em["refine"] == 2 and "id" in em["sigma_rms_by_set"]
    assert 0.0 <= em["constant_sigma_scores"]["id"]["picp_90"] <= 1.0  # the comparison
    assert arrays["id"].shape == (4, 8) and arrays["tawss_id"].shape[0] == 7
    names = [t["name"] for t in _uq.targets({"uq": uq, "eval_sets": ["id"]})]
    assert any("PICP90 in domain" in n for n in names)
    assert any("spread/skill in domain" in n for n in names)


def test_model_error_makes_spread_skill_one_on_the_validation_data():
    """σ_m² = skill² − noise² − spread²: members plus that error, scored against the
    noise-free values the noisy validation data scatter around, have spread/skill 1."""
    rng = np.random.default_rng(0)
    true = rng.standard_normal((16, 2, 400))
    bias = 0.3 * rng.standard_normal(true.shape)  # what every member gets wrong
    members = true + bias + 0.1 * rng.standard_normal((4, *true.shape))
    noise = 0.2
    val = true + noise * rng.standard_normal(true.shape)
    err = _uq.fit_model_error(members, val, noise)
    assert err["members_only_spread_skill"] < 0.5  # the members alone under-disperse
    M = members.shape[0]
    std = np.sqrt((1 + 1 / M) * members.var(0, ddof=1) + err["sigma"] ** 2)
    ss = spread_skill(true, GaussianPrediction(members.mean(0), std))
    assert ss == pytest.approx(1.0, abs=0.03)
    lo, hi = err["sigma_1se_range"]
    assert lo < err["sigma"] < hi


def test_bayes_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="--uq bayes is not implemented"):
        PRESETS["quick"].replace(uq="bayes")
    with pytest.raises(ValueError, match="uq_members"):
        PRESETS["quick"].replace(uq="ensemble", uq_members=1)


def test_shaped_model_error_covers_where_the_error_is_large():
    """An error whose size varies over points (as the lattice's error follows the flow):
    σ_m shaped by it keeps spread/skill 1 overall and covers 90 % both where the error is
    small and where it is large; a constant σ_m of the same fit over-covers the first and
    under-covers the second."""
    rng = np.random.default_rng(1)
    true = rng.standard_normal((16, 2, 400))
    shape = np.broadcast_to(np.exp(rng.uniform(-1.5, 1.5, (16, 1, 400))), true.shape)
    bias = 0.3 * shape * rng.standard_normal(true.shape)  # what every member gets wrong
    members = true + bias + 0.02 * rng.standard_normal((4, *true.shape))
    val = true + 0.2 * rng.standard_normal(true.shape)
    M = members.shape[0]
    big = shape > np.quantile(shape, 0.75)
    small = shape < np.quantile(shape, 0.25)

    def coverage(err, sigma):
        std = np.sqrt((1 + 1 / M) * members.var(0, ddof=1) + sigma**2)
        inside = np.abs(members.mean(0) - true) <= 1.645 * std
        ss = spread_skill(true, GaussianPrediction(members.mean(0), std))
        return inside[small].mean(), inside[big].mean(), ss

    shaped = _uq.fit_model_error(members, val, 0.2, shape)
    lo, hi, ss = coverage(shaped, shaped["scale"] * shape)
    assert 0.85 <= lo <= 0.96 and 0.85 <= hi <= 0.95 and ss == pytest.approx(1.0, abs=0.1)
    flat = _uq.fit_model_error(members, val, 0.2)
    lo, hi, _ = coverage(flat, flat["sigma"])
    assert lo > 0.98 and hi < 0.8
    # the rms of the shaped σ_m is the constant one: both fit the same skill
    assert shaped["sigma"] == pytest.approx(flat["sigma"])


def test_discretisation_error_vanishes_on_the_models_own_lattice(ensemble):
    """``refine = 1``: the "finer" lattice is the coarse one, so the estimate is zero; with
    ``refine = 2`` it is not (the coarse lattice has an error to estimate)."""
    study, lat, *_ = ensemble
    rheology = _uq.mean_rheology(_uq.hybrid_members(study, lat, 0))
    case = study.cases()[0]
    assert np.abs(_uq.discretisation_error(study, rheology, case, 1)).max() == 0.0
    d = _uq.discretisation_error(study, rheology, case, 2)
    assert d.shape == (TINY.record_phases, 2, *lat.shape)
    assert np.abs(d).max() > 1e-3 * study.speed_ref
