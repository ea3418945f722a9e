"""The ERA5 study: splits by time, the simple baselines, the observed boundary, the clock
the closure sees, the one-line missing-file error, and (slow) a tiny end-to-end run. A
synthetic ERA5-like file written by the tests stands in for the real one; the test of the
real file skips without ``SCILAYERS_DATA_DIR``."""

import os

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from scilayers.cli import app
from scilayers.data import write_synthetic_era5
from scilayers.experiments import run_study
from scilayers.experiments.era5 import (
    HEUN_STABILITY,
    LEADS,
    PRESETS,
    ClockedStep,
    DiurnalNet,
    ERA5Study,
    _Still,
    apparent_motion,
)
from scilayers.hybrid import Hybrid
from scilayers.params import set_values, values
from scilayers.solvers import Diffrax, rollout
from scilayers.training import TrainConfig

FILE = "climate/era5-t2m-2019-03-uk.nc"
N_TIMES = 96
# hours 0–48 train (12-h chunks), 49–71 validation, 72–95 test (starts 72, 78, 84)
TINY = PRESETS["quick"].replace(
    coarsen=1, ood_coarsen=2, chunk_hours=12, train_end=48, test_start=72, val_every=3,
    test_every=6, online_every=6, corr_steps=6, main_horizon=6, horizons=(1, 3, 6), field_steps=6,
    width=4, depth=1, emulator_steps=4, checkpoint_every=0, online_window=12,
    online_steps=1, online_batch=2, online_horizon=2, online_warm_steps=2,
    train=TrainConfig(steps=4, batch_size=2, horizon=2, val_every=2),
)  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data folder with a synthetic ERA5 file that starts at 05 UTC (so UTC hours and
    model hours differ)."""
    root = tmp_path_factory.mktemp("era5data")
    write_synthetic_era5(root / FILE, n_times=N_TIMES, start="2019-03-01T05:00")
    return root


@pytest.fixture(scope="module")
def truth(data_dir):
    """The synthetic field and its UTC hours, read independently of the study."""
    da = xr.load_dataset(data_dir / FILE)["t2m"]
    return np.asarray(da.values, dtype=float), da["time"].dt.hour.values


@pytest.fixture(scope="module")
def study(data_dir):
    s = ERA5Study(TINY, data_dir=data_dir)
    s.problem(None, False)
    return s


def test_problem_splits_by_time_without_overlap(study, truth):
    fields, _ = truth
    p = study._problem
    ch = TINY.chunk_hours
    train_hours = {int(s) + k for s in p.train_t0 for k in range(ch + 1)}
    val_hours = {int(s) + k for s in p.val_t0 for k in range(p.val.shape[1])}
    es = p.eval_sets["id"]
    test_hours = {int(s) + k for s in es.t0 for k in range(es.data.shape[1])}
    assert max(train_hours) < min(val_hours) and max(val_hours) < min(test_hours)
    assert min(test_hours) == TINY.test_start and max(test_hours) <= N_TIMES - 1
    assert list(p.eval_sets) == ["id", "ood"] and "temporal shift" in es.label
    for arr, t0 in ((p.train, p.train_t0), (p.val, p.val_t0), (es.data, es.t0)):
        for traj, s in zip(arr, t0, strict=True):  # each trajectory is the field at its hours
            np.testing.assert_array_equal(traj, fields[int(s) : int(s) + traj.shape[0]])
    np.testing.assert_array_equal(es.t0, [72, 78, 84])


def test_ood_set_is_the_test_hours_on_the_coarser_grid(study, truth):
    fields, _ = truth
    p = study._problem
    es, ood = p.eval_sets["id"], p.eval_sets["ood"]
    np.testing.assert_array_equal(ood.data, es.data[:, :, ::2, ::2])
    np.testing.assert_array_equal(ood.t0, es.t0)
    assert "0.5° grid" in ood.label and "never trained on" in ood.label
    # the physics there runs on that grid, its ring driven by that grid's observations
    model = study.physics(ood).model
    rows, cols = model.ring_indices()
    np.testing.assert_array_equal(np.asarray(model.boundary_values.value),
                                  fields[:, ::2, ::2][:, rows, cols])  # fmt: skip
    # and the simple baselines are made on it from its own fields
    prev = study.extra_method("previous_day", p, 0, False)["ood"]
    np.testing.assert_array_equal(prev[0, 1], fields[72 + 1 - 24, ::2, ::2])


def test_moved_network_sees_gradients_in_training_grid_cells():
    """A closure trained on a 0.5° grid and moved to the 0.25° grid of the same box gives,
    on any field, the same output at the interior cells the grids share: its gradient and
    Laplacian stencils span one training-grid cell (two 0.25° cells), so there it reads
    exactly the 0.5° grid's inputs. Moved without that (``cell=1``) it would not. Position
    inputs are zeroed: they are normalised per grid."""
    lat_f, lon_f = np.linspace(58.0, 54.0, 17), np.linspace(-6.0, 0.0, 25)

    def stats(lat, lon):
        shape = (lat.size, lon.size)
        return {"lat": lat, "lon": lon, "utc0": 0.0, "mean": 280.0, "scale": 3.0,
                "mean_field": np.full(shape, 281.0), "diurnal": np.zeros((4, *shape))}  # fmt: skip

    coarse = DiurnalNet(stats(lat_f[::2], lon_f[::2]), clock=True, writes_ring=False, width=8,
                        depth=2, kernel=1, key=jax.random.key(3))  # fmt: skip
    w = coarse.layers[0].weight.at[:, 5:7].set(0.0)  # latitude, longitude channels
    coarse = eqx.tree_at(lambda n: n.layers[0].weight, coarse, w)
    fine = coarse.moved_to(stats(lat_f, lon_f), cell=2.0)
    lat2, lon2 = np.meshgrid(lat_f, lon_f, indexing="ij")
    rough = np.random.default_rng(0).normal(0.0, 1.5, lat2.shape)  # sub-0.5° structure
    field = 280.0 + 0.8 * (lon2 + 6.0) - 0.5 * (lat2 - 54.0) + rough  # K
    t = 7.0
    out_c = coarse(jnp.concatenate([jnp.asarray(field[::2, ::2]).ravel(), jnp.asarray([t])]))
    out_f = fine(jnp.concatenate([jnp.asarray(field).ravel(), jnp.asarray([t])]))
    assert fine.shape == (17, 25) and fine.cell == 2.0
    assert float(jnp.abs(out_c[1:-1, 1:-1]).max()) > 1e-4
    np.testing.assert_allclose(out_f[::2, ::2][1:-1, 1:-1], out_c[1:-1, 1:-1], rtol=1e-5,
                               atol=1e-9)  # fmt: skip
    naive = coarse.moved_to(stats(lat_f, lon_f), cell=1.0)
    out_n = naive(jnp.concatenate([jnp.asarray(field).ravel(), jnp.asarray([t])]))
    assert float(jnp.abs(out_n[::2, ::2][1:-1, 1:-1] - out_c[1:-1, 1:-1]).max()) > 1e-3 * float(
        jnp.abs(out_c[1:-1, 1:-1]).max()
    )


def test_trained_models_move_onto_the_ood_grid(study, truth):
    """The engine's transfer puts every kind of ERA5 model on the other grid: the hybrid
    (physics with its θ_s, closure moved), the emulator and the emulator with the clock."""
    from scilayers.experiments._engine import forecast, transfer
    from scilayers.hybrid import NeuralStepper

    fields, _ = truth
    p = study._problem
    ood = p.eval_sets["ood"]
    key = jax.random.key(0)
    phys = set_values(study.physics(), u=4.0, v=-1.5, kappa=3e4)
    models = {
        "hybrid": Hybrid(phys, study.closure(key)),
        "emulator": NeuralStepper(study.emulator(key), fields.shape[1:]),
        "emulator_clock": Hybrid(ClockedStep(_Still(fields.shape[1:]), 1.0), study.closure(key)),
    }
    for name, m in models.items():
        moved = transfer(study, m, ood)
        pred = forecast(moved, ood, 3, 1.0)
        assert pred.shape == (ood.data.shape[0], 4, *ood.state_shape), name
        assert np.isfinite(pred).all(), name
    moved = transfer(study, models["hybrid"], ood)
    assert moved.step.model.state_shape == ood.state_shape
    learned = values(moved.step)
    np.testing.assert_allclose([learned["u"], learned["v"], learned["kappa"]], [4.0, -1.5, 3e4],
                               rtol=1e-5)  # fmt: skip
    assert moved.net.shape == ood.state_shape and moved.net.cell == 0.5


def test_previous_day_and_diurnal_climatology_by_hand(study, truth):
    fields, utc = truth
    p = study._problem
    starts = [72, 78, 84]
    steps = TINY.corr_steps
    prev = study.extra_method("previous_day", p, 0, False)["id"]
    clim = study.extra_method("diurnal_climatology", p, 0, False)["id"]
    assert prev.shape == clim.shape == (3, steps + 1, *fields.shape[1:])
    past = np.arange(TINY.test_start)  # the training period: every hour before the test
    mean_at = {h: fields[past[utc[past] == h]].mean(0) for h in range(24)}
    for i, s in enumerate(starts):
        np.testing.assert_array_equal(prev[i, 0], fields[s])
        np.testing.assert_allclose(clim[i, 0], fields[s], atol=1e-12)
        for k in range(1, steps + 1):
            np.testing.assert_array_equal(prev[i, k], fields[s + k - 24])
            hand = fields[s] - mean_at[utc[s]] + mean_at[utc[s + k]]
            np.testing.assert_allclose(clim[i, k], hand, rtol=0, atol=1e-9)


def test_the_boundary_ring_is_the_observed_ring(study, truth):
    fields, _ = truth
    step = study.physics()
    model = step.model
    rows, cols = model.ring_indices()
    np.testing.assert_array_equal(np.asarray(model.boundary_values.value), fields[:, rows, cols])
    s = 72
    traj = np.asarray(rollout(step, jnp.asarray(fields[s]), 6, float(s)))
    # the physics' ring follows the observations hour by hour; the interior does not
    np.testing.assert_allclose(traj[:, rows, cols], fields[s : s + 7, rows, cols], atol=1e-3)
    assert np.abs(traj[-1, 1:-1, 1:-1] - fields[s + 6, 1:-1, 1:-1]).max() > 1e-2


def test_the_closure_sees_the_clock(study, truth):
    """The engine builds Hybrid(physics, net) without Inputs; ClockedStep hands the
    closure the time, a plain Diffrax step does not."""
    fields, _ = truth
    shape = fields.shape[1:]
    net = study.closure(jax.random.key(1))
    u = jnp.asarray(fields[0])
    clocked = Hybrid(ClockedStep(_Still(shape), 1.0), net)
    plain = Hybrid(Diffrax(_Still(shape), 1.0, diffrax.Euler(), stability_check=False), net)
    for t in (3.0, 15.0):
        hand = u + net(jnp.concatenate([u.ravel(), jnp.asarray([t])]))
        np.testing.assert_allclose(clocked(u, t), hand, rtol=0, atol=1e-12)
        np.testing.assert_allclose(plain(u, t), u + net(u), rtol=0, atol=1e-12)
    assert float(jnp.abs(clocked(u, 3.0) - clocked(u, 15.0)).max()) > 0
    # the closure leaves the observed ring alone
    g = np.asarray(net(jnp.concatenate([u.ravel(), jnp.asarray([3.0])])))
    rows, cols = study.physics().model.ring_indices()
    assert np.all(g[rows, cols] == 0) and np.abs(g[1:-1, 1:-1]).max() > 0


def test_substeps_keep_the_step_stable_at_the_bounds(study, truth):
    """The fewest substeps within 90 % of Heun's limit at the Params' bounds; a run at the
    bounds stays within the range of its data, one with half the substeps blows up."""
    fields, _ = truth
    step = study.physics()
    limit = step.model.max_stable_dt(
        u=TINY.wind_bound, v=TINY.wind_bound, kappa=TINY.kappa_max, stability=HEUN_STABILITY
    )
    n = step.substeps
    assert step.dt / n <= 0.9 * limit < step.dt / (n - 1)
    edge = 0.995 * TINY.wind_bound
    fast = set_values(step, u=edge, v=-edge, kappa=0.995 * TINY.kappa_max)
    noise = np.random.default_rng(0).normal(0.0, 1.0, fields.shape[1:])
    u0 = jnp.asarray(fields[0] + noise)
    lo, hi = fields.min() - 4, fields.max() + 4
    ok = np.asarray(rollout(fast, u0, 48, 0.0))
    assert np.all(np.isfinite(ok)) and lo < ok.min() and ok.max() < hi
    bad = np.asarray(rollout(ClockedStep(fast.model, 1.0, n // 2), u0, 48, 0.0, check_finite=False))
    assert not (np.all(np.isfinite(bad)) and lo < bad.min() and bad.max() < hi)


def test_apparent_motion_recovers_a_translation():
    """A blob moving east at 8 m/s and south at 3 m/s (no diurnal cycle)."""
    lat = np.arange(56.0, 52.0 - 1e-9, -0.25)
    lon = np.arange(-6.0, 2.0 + 1e-9, 0.25)
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    R = 6.371e6
    x = R * np.cos(np.deg2rad(54.0)) * np.deg2rad(lon2)
    y = R * np.deg2rad(lat2)
    hours = np.arange(40.0)
    u, v = 8.0, -3.0
    fields = np.stack([
        4.0 * np.exp(-((x - x.mean() + 2e5 - u * 3600 * h) ** 2
                       + (y - y.mean() - v * 3600 * h) ** 2) / (2 * 1.2e5**2))
        for h in hours
    ])  # fmt: skip
    motion = apparent_motion(fields, np.zeros((24, *fields.shape[1:])), hours, lat, lon, 0.0,
                             window=6, lag=2)  # fmt: skip
    ok = np.isfinite(motion["u"])
    assert ok.sum() > 20
    np.testing.assert_allclose(np.median(motion["u"][ok]), u, rtol=0.15)
    np.testing.assert_allclose(np.median(motion["v"][ok]), v, rtol=0.15)


def test_missing_file_is_a_one_line_error(tmp_path):
    study = ERA5Study(TINY, data_dir=tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        study.problem(None, False)
    msg = str(e.value)
    assert "\n" not in msg
    assert "era5-t2m-2019-03-uk.nc" in msg and "'t2m'" in msg
    assert "--data-dir" in msg and "SCILAYERS_DATA_DIR" in msg
    result = CliRunner().invoke(app, ["run", "era5", "--data-dir", str(tmp_path), "--out",
                                      str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert result.exit_code == 2
    line = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "era5-t2m-2019-03-uk.nc" in line[0] and "--data-dir" in line[0]


def test_extra_metrics_are_rmse_in_kelvin_and_ratio_to_persistence(study):
    es = study._problem.eval_sets["id"]
    truth = es.data[:, : TINY.corr_steps + 1]
    pred = truth + 2.0  # an error of 2 K everywhere
    m = study.extra_metrics(es, pred, truth)
    for k in (k for k in LEADS if k <= TINY.corr_steps):
        assert m[f"rmse_{k}h"] == pytest.approx(2.0) and m[f"rmse_interior_{k}h"] == pytest.approx(
            2.0
        )
        pers = np.sqrt(np.mean((truth[:, k] - truth[:, 0]) ** 2))
        assert m[f"rmse_ratio_{k}h"] == pytest.approx(2.0 / pers)


def test_real_era5_file():
    if not os.environ.get("SCILAYERS_DATA_DIR"):
        pytest.skip("SCILAYERS_DATA_DIR is not set: the real ERA5 file is not available")
    study = ERA5Study(PRESETS["quick"])
    p = study.problem(None, False)
    d = study.load()
    assert d["fields"].shape == (744, 17, 25) and d["utc0"] == 0.0
    assert p.train.shape == (19, 25, 17, 25) and p.eval_sets["id"].data.shape[0] == 36
    assert p.eval_sets["ood"].data.shape == (36, 25, 33, 49)  # the 0.25° grid
    assert 270 < d["fields"].mean() < 290
    refs = study.references()
    jan = refs["winds_850hPa"]["january"]
    assert jan["u"] > 0  # westerlies over the British Isles


@pytest.mark.slow
def test_tiny_end_to_end_run(data_dir, tmp_path):
    study = ERA5Study(TINY, data_dir=data_dir)
    res = run_study(study, [0], tmp_path, progress=False, log=lambda s: None)
    methods = res["methods"]
    for m in ("persistence", "previous_day", "diurnal_climatology", "hybrid_joint",
              "hybrid_online", "neural_emulator_clock"):  # fmt: skip
        assert methods[m]["id_rmse_6h"]["mean"] is not None, m
    for m in ("persistence", "previous_day", "hybrid_joint", "neural_emulator",
              "neural_emulator_clock", "sequential_hybrid"):  # fmt: skip
        assert methods[m]["ood_rmse_6h"]["mean"] is not None, m
    assert "ood_rmse_6h" not in methods["hybrid_online"]
    assert "pinn" not in methods
    assert set(res["references"]) >= {"kappa_literature"}
    assert len(res["online"]["history"]["0"]["u"]) == res["online"]["updates"]
    titles = [t["title"] for t in res["tables"]]
    assert any("RMSE" in t for t in titles) and any("θ_s" in t for t in titles)
    assert any(t.startswith("Out of domain") for t in titles)
    for f in res["figures"]:
        assert (tmp_path / f["file"]).is_file()
