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


@pytest.mark.slow  # the ensemble fixture: 65 s of compiling on 2 cores
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


@pytest.mark.slow  # the ensemble fixture: 65 s of compiling on 2 cores
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
    for alt in ("constant_sigma_scores", "point_scale_scores"):  # the comparisons
        assert 0.0 <= em[alt]["id"]["picp_90"] <= 1.0
    assert em["variance_se"] > 0 and em["shape_rms"] > 0
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


@pytest.mark.slow  # the ensemble fixture: 65 s of compiling on 2 cores
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


def test_sigma_draws_follow_the_truncated_posterior():
    """σ_m² ~ N(v̂, se²) truncated at 0: its mean is v̂ + se·φ(a)/(1 − Φ(a)), a = −v̂/se,
    including in the tail (a ≥ 1, where the draws come from a rejection sampler); with
    se = 0 every draw is the point estimate."""
    from scipy.stats import norm

    jax = pytest.importorskip("jax")
    for v, se in ((1.0, 1.4), (1.0, 0.2), (-0.5, 1.0), (-1.5, 1.0), (-6.0, 1.0)):
        s = _uq.draw_sigma({"variance": v, "variance_se": se, "sigma": 0.0}, 200_000,
                           jax.random.key(0))  # fmt: skip
        a = -v / se
        exact = v + se * norm.pdf(a) / norm.sf(a)
        assert np.all(s >= 0)
        assert np.mean(s**2) == pytest.approx(exact, rel=0.03), (v, se)
    s = _uq.draw_sigma({"variance": 2.0, "variance_se": 0.0, "sigma": 2**0.5}, 5,
                       jax.random.key(0))  # fmt: skip
    assert np.all(s == 2**0.5)


def test_propagating_the_scale_uncertainty_restores_coverage():
    """A model error of σ_m = 1 seen through a validation scan whose noise is 7 times
    larger (as in the aneurysm study): over repeated scans, the 90 % interval with σ_m at
    its point estimate covers far less than 90 % on average (the estimate is often much too
    small, or clipped to 0), while propagating σ_m's uncertainty (`draw_sigma`) keeps the
    average coverage at or above the nominal level."""
    from scipy.stats import norm

    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(2)
    noise, members = 7.0, np.zeros((2, 1, 2, 1000))  # 2000 validation values, no spread
    point, propagated = [], []
    for r in range(100):
        val = rng.standard_normal(members.shape[1:]) + noise * rng.standard_normal(
            members.shape[1:])  # fmt: skip
        err = _uq.fit_model_error(members, val, noise)
        e = rng.standard_normal(2000)  # the model's errors on a test set
        point.append(np.mean(np.abs(e) <= norm.ppf(0.95) * err["sigma"]))
        s = np.maximum(_uq.draw_sigma(err, 400, jax.random.key(r)), 1e-300)
        lo, hi = 0.0, 50.0  # the predictive's 90 % half-width, by bisection
        for _ in range(60):
            c = 0.5 * (lo + hi)
            lo, hi = (lo, c) if np.mean(2 * norm.cdf(c / s) - 1) > 0.9 else (c, hi)
        propagated.append(np.mean(np.abs(e) <= c))
    assert np.mean(point) < 0.8
    assert 0.88 <= np.mean(propagated) <= 0.98


def test_neural_field_ensemble_is_scored_where_a_field_applies(tmp_path):
    """The data-only baseline as an ensemble: M fields trained as one vmapped program, each
    its own (different losses), with the same validation-fitted model error; scored on the
    sets of the training geometry (here in domain and another heart rate), and the CRPS
    target of the study then compares hybrid_joint against it."""
    cfg = TINY.replace(ood=("hr",), ood_period=0.16, methods=("hybrid_joint", "neural_field"),
                       nf_iterations=20, nf_width=16, nf_depth=2)  # fmt: skip
    study = AneurysmStudy(cfg)
    truth = study.truth(tmp_path, lambda s: None)
    cases = study.cases()
    lat = study.lattice(cases[0])
    obs, _, cells = study.observations(truth["id"], lat, 0)
    block, arrays = _uq.field_block(study, truth, obs, cells, cases, 0, lambda s: None)
    assert block["members"] == cfg.uq_members and {"id", "ood_hr"} <= set(block)
    assert len(set(block["losses"])) == cfg.uq_members  # each member its own
    for s in ("id", "ood_hr"):
        assert 0.0 <= block[s]["at_lead"]["picp_90"] <= 1.0 and block[s]["crps"] > 0
        assert 0.0 <= block["error_model"]["constant_sigma_scores"][s]["picp_90"] <= 1.0
        assert arrays[s].shape == (4, cfg.record_phases)
    hybrid = {s: {"at_lead": {"crps": 0.5 * block[s]["crps"], "picp_90": 0.9,
                              "spread_skill": 1.0}} for s in ("id", "ood_hr")}  # fmt: skip
    uq = _uq.wrap(study, {"members": 3, "error_model": {"sigma": 1e-4}, **hybrid}, 0, block)
    assert uq["baseline_method"] == "neural_field" and "neural_field" in uq["methods"]
    (crps,) = [t for t in _uq.targets({"uq": uq, "eval_sets": ["id", "ood_hr"]})
               if "CRPS below neural_field" in t["name"]]  # fmt: skip
    assert crps["pass"] is True
