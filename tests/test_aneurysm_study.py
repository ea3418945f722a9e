"""The aneurysm study (issue 10 §2): a tiny run end to end (results format, report,
calibration towards the truth, resume from cached runs) and its building blocks
(restriction of the fine truth to coarse cells, the wall closure, the Fisher block). The
tiny run is slow (`make test-all`), like the other studies' end-to-end runs."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scilayers.experiments import get_study
from scilayers.experiments.aneurysm import (
    PRESETS,
    AneurysmStudy,
    fisher_block,
    restrict,
    wall_distance,
)
from scilayers.models import SidewallAneurysm
from scilayers.report import build_report

TINY = PRESETS["quick"].replace(
    preset="tiny", waveform="synthetic", cells_across=6, length=16e-3, period=0.4,
    steps_per_cycle=640, record_phases=8, obs_phases=4, truth_cycles=3, eval_cycles=2,
    wall_points=24, iterations=8, spinup_cycles=1, refine=1, noise=0.0, ood=(),
    methods=("pure_physics", "carreau_prior", "pure_physics_calibrated", "obs_mean"),
    max_seeds=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("aneurysm") / "run"
    lines: list[str] = []
    results = AneurysmStudy(TINY).run([0, 1], out, log=lines.append)
    return out, results, lines


@pytest.mark.slow  # the tiny run: 70 s of compiling on 2 cores
def test_tiny_study_writes_results_that_the_report_renders(tiny_run):
    out, results, _ = tiny_run
    assert results["seeds"] == [0]  # max_seeds=1 of the two asked for, and said so
    assert any("at most 1 seed" in n for n in results["notes"])
    on_disk = json.loads((out / "results.json").read_text())
    for key in ("experiment", "preset", "config", "environment", "eval_sets", "methods",
                "identifiability", "targets", "notes", "figures", "tables", "wall_seconds"):
        assert key in on_disk, key  # fmt: skip
    m = on_disk["methods"]
    assert list(m) == list(TINY.methods)
    assert m["obs_mean"]["reference"] is True and "id_tawss_err" not in m["obs_mean"]
    for name in ("pure_physics", "carreau_prior", "pure_physics_calibrated"):
        for key in ("id_mse", "id_rmse_obs", "id_tawss_err", "id_osi_err"):
            stat = m[name][key]
            assert set(stat) == {"mean", "std", "per_seed"} and np.isfinite(stat["mean"])
    theta = m["pure_physics_calibrated"]["theta"]["mu_inf"]
    assert set(theta) >= {"true", "initial", "learned", "rel_error", "identifiable"}
    report = build_report(out).read_text()
    assert "## Study figures" in report and "## Identifiability of θ_s" in report
    for fig in on_disk["figures"]:
        assert (out / fig["file"]).is_file(), fig["file"]
    assert (out / "figures" / "snapshots_id.png").is_file()  # from arrays.npz


@pytest.mark.slow  # the tiny run: 70 s of compiling on 2 cores
def test_calibration_moves_the_identified_viscosity_towards_the_truth(tiny_run):
    """Noise-free, the truth on the models' own lattice: from the Cho & Kensey prior the
    calibrated blood's viscosity at the shear rates of the flow (10 and 100 /s) moves to
    within a third of the prior's error — what the data identify (the Fisher block says
    so: those viscosities have the smallest relative std) — and the data misfit falls.
    The four Carreau parameters themselves are not asserted: the data see them in
    combination."""
    _, results, _ = tiny_run
    combos = results["identifiability"]["combinations"]
    rel = results["identifiability"]["relative_std"]
    for g in ("10", "100"):
        assert combos[f"mu({g}/s)"]["relative_std"] < min(rel.values()), (g, combos, rel)
    m = results["methods"]
    for g in ("10", "100"):
        prior = m["carreau_prior"][f"visc_err_{g}"]["mean"]
        calibrated = m["pure_physics_calibrated"][f"visc_err_{g}"]["mean"]
        assert prior > 0.2 and calibrated < prior / 3, (g, prior, calibrated)
    assert m["pure_physics_calibrated"]["id_mse"]["mean"] < m["carreau_prior"]["id_mse"]["mean"]


@pytest.mark.slow  # the tiny run: 70 s of compiling on 2 cores
def test_resume_reuses_the_cached_runs(tiny_run):
    out, results, _ = tiny_run
    lines: list[str] = []
    again = AneurysmStudy(TINY).run([0], out, resume=True, log=lines.append)
    assert not any("training" in s for s in lines), lines
    assert sum("cached" in s for s in lines) == len(TINY.methods)
    assert any("truth from cache" in s for s in lines)
    for name in TINY.methods:
        assert again["methods"][name]["id_mse"] == results["methods"][name]["id_mse"]


def test_restriction_puts_the_fine_vessel_on_the_coarse_cells():
    """Both lattices put the lower wall at y = dx of their own: averaged to coarse cells,
    the fine mask is exactly 1 on every coarse vessel cell and 0 on the solid row below."""
    geo = SidewallAneurysm(4e-3, 16e-3, 3e-3, 4e-3)
    dx = 4e-3 / 6
    coarse = geo.mask(dx)
    for r in (2, 3):
        frac = restrict(geo.mask(dx / r).astype(float), r, coarse.shape)
        np.testing.assert_allclose(frac[:, 1:7], 1.0)
        np.testing.assert_allclose(frac[:, 0], 0.0)
        away = np.r_[0:7, 18:24]  # columns away from the sac: solid above the vessel
        np.testing.assert_allclose(frac[away][:, 7:], 0.0)


def test_wall_distance_and_normals():
    geo = SidewallAneurysm(4e-3, 16e-3, 3e-3, 4e-3)
    x = np.array([2e-3, 2e-3, 8e-3, 8e-3])
    y = np.array([1e-3, 3.5e-3, 1e-3, 4e-3 + np.sqrt(9e-6 - 4e-6) + 2.5e-3])
    d, nx, ny = wall_distance(geo, x, y)
    np.testing.assert_allclose(d, [1e-3, 0.5e-3, 1e-3, 0.5e-3], rtol=1e-9)
    np.testing.assert_allclose(np.c_[nx, ny], [[0, 1], [0, -1], [0, 1], [0, -1]], atol=1e-12)


def test_wall_closure_starts_off_and_vanishes_at_rest():
    study = AneurysmStudy(TINY)
    closure = study.closure(jax.random.key(0))
    lbm = study.physics()
    assert np.all(np.asarray(closure(lbm.initial_state())) == 0.0)
    # with a trained-looking (random) last layer: no force at rest, a force in motion
    last = closure.mlp.layers[-1]
    closure = eqx.tree_at(lambda c: c.mlp.layers[-1].weight, closure,
                          jax.random.normal(jax.random.key(1), last.weight.shape))  # fmt: skip
    assert np.allclose(np.asarray(closure(lbm.initial_state())), 0.0)
    vel = jnp.zeros((2,) + lbm.model.shape).at[0].set(0.05)
    moving = lbm.initial_state(velocity=vel)
    f = np.asarray(closure(moving)).reshape(2, -1)
    outside = np.ones(f.shape[1], bool)
    outside[np.asarray(closure.cells)] = False  # cells more than 3 dx from the wall
    assert outside.any() and np.abs(f).max() > 0 and np.all(f[:, outside] == 0)


def test_fisher_block_flags_a_combination_the_data_cannot_split():
    """Two parameters seen only through their sum: both flagged, correlation −1, one
    eigenvalue 0; a third seen alone is identified with std σ/|J|."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(200)
    b = rng.standard_normal(200)
    b -= (a @ b) / (a @ a) * a  # seen independently of p and q
    J = np.c_[a, a, 10 * b]
    block = fisher_block(J, 0.1, ["p", "q", "r"], [1.0, 2.0, 3.0])
    assert set(block["poorly_identified"]) == {"p", "q"}
    assert block["relative_std"]["r"] == pytest.approx(0.1 / np.linalg.norm(10 * b), rel=1e-6)
    assert block["eigenvalues"][0] == pytest.approx(0.0, abs=1e-6 * block["eigenvalues"][-1])


def test_registered_and_presets_are_valid():
    cls = get_study("aneurysm")
    assert cls is AneurysmStudy and set(cls.presets) == {"quick", "full"}
    with pytest.raises(ValueError, match="bayes is not implemented"):
        TINY.replace(uq="bayes")
    assert TINY.replace(uq="ensemble").uq == "ensemble"
    with pytest.raises(ValueError, match="sequential_hybrid needs"):
        TINY.replace(methods=("sequential_hybrid",))
    with pytest.raises(ValueError, match="must divide"):
        TINY.replace(obs_phases=3)


def test_observations_are_the_recorded_phases_the_training_cycle_sees():
    """Observation ``k`` of ``obs_phases`` is taken at ``(k + 1)/obs_phases`` of the cycle
    (where `train_lattice` compares it), i.e. recorded phase ``(k + 1)·every − 1``; with
    ``obs_phases = record_phases`` (the quick preset's 16) every recorded phase is
    observed. The noise has the stated standard deviation."""
    assert PRESETS["quick"].obs_phases == PRESETS["quick"].record_phases == 16
    P = TINY.record_phases
    for phases in (P, P // 2):
        cfg = TINY.replace(obs_phases=phases, noise=0.05)
        study = AneurysmStudy(cfg)
        lat = study.lattice(study.cases()[0])
        vel = np.broadcast_to(np.arange(P, dtype=float)[:, None, None, None],
                              (P, 2, *lat.shape)).copy()  # fmt: skip
        noisy, clean, cells = study.observations({"vel": vel}, lat, 0)
        every = P // phases
        expect = (np.arange(phases) + 1) * every - 1
        assert clean.shape == (phases, 2, len(cells))
        np.testing.assert_array_equal(clean[:, 0, 0], expect)
        sd = np.std(noisy - clean)
        assert sd == pytest.approx(0.05 * study.speed_ref, rel=0.1)


def test_lattice_step_with_a_force_field_equals_the_models_body_force():
    """`LatticeBoltzmann(..., force=)` (what the closure uses): a uniform field equal to a
    model's constant body force gives the same step, velocity and WSS as that model."""
    from scilayers.models import Channel, IncompressibleFlow2D, Newtonian
    from scilayers.solvers import LatticeBoltzmann

    geo = Channel(8.0, 6.0)
    with_force = LatticeBoltzmann(IncompressibleFlow2D(Newtonian(0.1), geo, 1.0, rho=1.0,
                                                       force=(1e-4, 2e-5)), 1.0)  # fmt: skip
    plain = LatticeBoltzmann(IncompressibleFlow2D(Newtonian(0.1), geo, 1.0, rho=1.0), 1.0)
    field = jnp.broadcast_to(jnp.array([1e-4, 2e-5])[:, None, None], (2,) + plain.model.shape)
    u = with_force.initial_state()
    a, b = u, u
    for _ in range(20):
        a, b = with_force(a), plain(b, 0.0, field)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(with_force.velocity(a)),
                               np.asarray(plain.velocity(b, 0.0, field)), rtol=1e-12)  # fmt: skip
    wall = geo.walls(1.0, 4)["bottom"]
    np.testing.assert_allclose(np.asarray(with_force.wall_shear_stress(a, wall)),
                               np.asarray(plain.wall_shear_stress(b, wall, 0.0, field)),
                               rtol=1e-10)  # fmt: skip
    with pytest.raises(ValueError, match="body-force field of shape"):
        plain(u, 0.0, jnp.zeros((2, 3, 3)))
