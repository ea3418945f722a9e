"""KS truth generation, splits, netCDF files, the cache and the data directory."""

import ast
import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import scilayers as sl
from scilayers.data import (
    SPLITS,
    KSDataConfig,
    assign_splits,
    cached,
    data_dir,
    generate_ks,
    ks_model,
    load_ks,
    save_dataset,
    select_split,
    steady_trajectories,
)

# Small but real: 24 trajectories past a burn-in of 50 time units, 160 saved steps of 0.25.
CFG = KSDataConfig(trajectories=24, steps=160, burn_in=50.0, batch_size=4, seed=3, ood_fraction=0.1)


@pytest.fixture(scope="module")
def ds():
    return generate_ks(CFG, progress=False)


@pytest.fixture(scope="module")
def ds_batch7():
    return generate_ks(dataclasses.replace(CFG, batch_size=7), progress=False)


@eqx.filter_jit
def _advance(model, u, dt: float, substeps: int):
    """One saved step (``substeps`` ETDRK4 steps of ``dt``) for a batch of states; θ_s is
    traced, so models that differ only in θ_s share one compilation."""
    step = sl.solvers.Repeated(sl.solvers.ETDRK4(model, dt=dt), substeps)
    return jax.vmap(step)(u)


# ------------------------------------------------------------------------- generation
def test_independent_of_batch_size(ds, ds_batch7):
    np.testing.assert_array_equal(ds["u"].values, ds_batch7["u"].values)
    np.testing.assert_array_equal(ds["u_ood"].values, ds_batch7["u_ood"].values)
    np.testing.assert_array_equal(ds["split"].values, ds_batch7["split"].values)


def test_trajectory_depends_only_on_seed_and_index(ds):
    # fewer trajectories: the first four are the same; another seed: different
    fewer = generate_ks(dataclasses.replace(CFG, trajectories=4, ood_fraction=0.0), progress=False)
    np.testing.assert_array_equal(fewer["u"].values, ds["u"].values[:4])
    assert "u_ood" not in fewer
    other = generate_ks(
        dataclasses.replace(CFG, trajectories=4, ood_fraction=0.0, seed=4), progress=False
    )
    assert np.abs(other["u"].values - ds["u"].values[:4]).max() > 0.5


def test_layout_dtype_and_attrs(ds):
    assert ds["u"].dims == ("trajectory", "time", "x")
    assert ds["u"].shape == (24, 161, 64)
    assert ds["u"].dtype == np.float32 and ds["u_ood"].dtype == np.float32
    np.testing.assert_allclose(np.diff(ds["time"].values), 0.25)
    np.testing.assert_allclose(np.diff(ds["x"].values), 22.0 / 64)
    a = ds.attrs
    assert (a["a"], a["b"], a["c"], a["d"]) == (1.0, 1.0, 1.0, 0.0)
    assert (a["length"], a["n"], a["dt_save"], a["seed"]) == (22.0, 64, 0.25, 3)
    assert a["dt"] == pytest.approx(0.05) and a["substeps"] == 5 and a["burn_in"] == 50.0
    assert a["scilayers_version"] == sl.__version__
    assert KSDataConfig.from_json(a["config"]) == CFG


def test_ood_group_has_longer_domain_at_same_dx(ds):
    assert ds["u_ood"].dims == ("trajectory_ood", "time", "x_ood")
    assert ds.sizes["trajectory_ood"] == 2 and ds.sizes["x_ood"] == 128
    assert ds.attrs["ood_length"] == pytest.approx(44.0) and ds.attrs["ood_n"] == 128
    np.testing.assert_allclose(np.diff(ds["x_ood"].values), 22.0 / 64)
    # and its dynamics are those of the longer domain
    model = ks_model(44.0, 128, CFG.ood_theta)
    u = jnp.asarray(ds["u_ood"].values[0, 10:30], dtype=float)
    nxt = np.asarray(_advance(model, u, CFG.dt, CFG.substeps))
    np.testing.assert_allclose(nxt[:-1], ds["u_ood"].values[0, 11:30], atol=1e-4)


def test_saved_states_satisfy_the_dynamics(ds):
    """Five ETDRK4 steps of dt = 0.05 from a saved state give the next saved state."""
    u = jnp.asarray(ds["u"].values[:, 20:40], dtype=float)  # (traj, 20, x)
    flat = u.reshape(-1, 64)

    def error(theta):
        pred = np.asarray(_advance(ks_model(22.0, 64, theta), flat, CFG.dt, CFG.substeps))
        return np.abs(pred.reshape(u.shape)[:, :-1] - np.asarray(u[:, 1:])).max()

    err = error(CFG.theta)
    assert err < 1e-4 * np.abs(ds["u"].values).max()  # float32 storage is the only error
    # the check has power: a 5% error in θ_s is seen
    assert error(dict(CFG.theta, a=1.05)) > 100 * err


def test_mean_zero_and_past_the_transient(ds):
    u = ds["u"].values.astype(np.float64)
    assert np.abs(u.mean(axis=-1)).max() < 1e-4  # KS conserves the (zero) mean
    energy = (u**2).mean(axis=-1)  # (trajectory, time)
    first, second = energy[:, :80].mean(), energy[:, 81:].mean()
    # statistically stationary: the two halves (20 time units each) agree to within 15%
    # (seeds 0-5 give at most 8%); on the L=22 attractor <u^2> is about 1.4
    assert abs(first - second) < 0.15 * (first + second) / 2
    assert 1.1 < energy.mean() < 1.8
    # and no trajectory has settled on a steady state, in-domain or OOD (L = 44)
    assert ds.attrs["steady_trajectories"] == 0 and ds.attrs["ood_steady_trajectories"] == 0


def test_steady_states_are_flagged():
    x = np.linspace(0, 22, 64, endpoint=False)
    t = 0.25 * np.arange(161)
    wave = np.sin(2 * np.pi * 3 * (x[None, :] - 0.3 * t[:, None]) / 22)  # travelling wave
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(161, 64)) * (1 + np.sin(t)[:, None])  # changing spectrum
    flags = steady_trajectories(np.stack([wave, 2 * wave, noisy]), dt_save=0.25)
    assert flags.tolist() == [True, True, False]
    assert steady_trajectories(np.stack([wave[:20]]), dt_save=0.25) is None  # too short


def test_arbitrary_theta_with_dispersion():
    # the grid and sizes of the OOD group above, so the compiled simulation is reused
    cfg = dataclasses.replace(
        CFG, trajectories=2, batch_size=2, n=128, length=44.0, a=1.2, b=0.9, c=0.8, d=0.4,
        ood_fraction=0.0, seed=1,
    )  # fmt: skip
    ds = generate_ks(cfg, progress=False)
    assert (ds.attrs["a"], ds.attrs["d"], ds.attrs["n"]) == (1.2, 0.4, 128)
    u = jnp.asarray(ds["u"].values[0, 10:30], dtype=float)

    def error(theta):
        pred = np.asarray(_advance(ks_model(44.0, 128, theta), u, cfg.dt, cfg.substeps))
        return np.abs(pred[:-1] - np.asarray(u[1:])).max()

    assert error(cfg.theta) < 1e-4
    assert error(dict(cfg.theta, d=0.0)) > 1e-2


def test_blow_up_is_reported_with_a_fix():
    # a convection 100x too strong for dt = 0.05 (same shapes as CFG: no new compilation)
    cfg = dataclasses.replace(CFG, trajectories=4, c=100.0, ood_fraction=0.0)
    with pytest.raises(ValueError, match="blew up.*during the burn-in.*raise substeps"):
        generate_ks(cfg, progress=False)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"trajectories": 0}, "trajectories"),
        ({"steps": -1}, "steps"),
        ({"n": 63}, "even"),
        ({"a": -1.0}, "a must be > 0"),
        ({"burn_in": 0.07}, "multiple of the inner step"),
        ({"dt_save": 0.0}, "dt_save"),
        ({"train_fraction": 0.95, "val_fraction": 0.1}, "train"),
        ({"trajectories": 2.5}, "integer"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        KSDataConfig(**kw)


def test_config_serialisation_and_fingerprint():
    cfg = KSDataConfig(d=0.3, ood_a=1.5)
    assert KSDataConfig.from_json(cfg.to_json()) == cfg
    assert cfg.ood_theta == {"a": 1.5, "b": 1.0, "c": 1.0, "d": 0.3, "e": None}  # e: no OOD shift
    assert cfg.dt == pytest.approx(0.05) and cfg.burn_in_steps == 2000 and cfg.ood_n == 128
    # batch_size does not change the values, so neither does it change the fingerprint
    assert cfg.fingerprint() == dataclasses.replace(cfg, batch_size=7).fingerprint()
    assert cfg.fingerprint() != dataclasses.replace(cfg, seed=1).fingerprint()
    with pytest.raises(ValueError, match="unknown KSDataConfig field"):
        KSDataConfig.from_dict({"trajectorys": 3})


# --------------------------------------------------------------------------- splits
def test_splits_partition_with_the_right_fractions():
    labels = assign_splits(1000, seed=0)
    counts = {s: int((labels == s).sum()) for s in SPLITS}
    assert counts == {"train": 800, "val": 100, "test": 100}
    assert np.array_equal(labels, assign_splits(1000, seed=0))
    assert not np.array_equal(labels, assign_splits(1000, seed=1))
    # a seeded permutation, not blocks: every decile of indices has train trajectories
    assert all((labels[i : i + 100] == "train").sum() > 50 for i in range(0, 1000, 100))


def test_dataset_splits(ds):
    labels = ds["split"].values
    assert set(labels) <= set(SPLITS)
    np.testing.assert_array_equal(labels, assign_splits(24, seed=3))
    parts = [select_split(ds, s) for s in SPLITS]
    assert [p.sizes["trajectory"] for p in parts] == [19, 2, 3]  # round(19.2), round(2.4)
    ids = np.concatenate([p["trajectory"].values for p in parts])
    assert sorted(ids) == list(range(24))
    assert parts[0].sizes["trajectory_ood"] == 2  # OOD is never split
    with pytest.raises(ValueError, match="unknown split"):
        select_split(ds, "training")


# ----------------------------------------------------------------------------- files
def test_netcdf_round_trip(ds, tmp_path):
    path = save_dataset(ds, tmp_path / "sub" / "ks.nc")
    back = load_ks(path)
    for name in ("u", "u_ood"):
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name].values, ds[name].values)
    for name in ("time", "x", "x_ood", "trajectory"):
        np.testing.assert_array_equal(back[name].values, ds[name].values)
    np.testing.assert_array_equal(back["split"].values, ds["split"].values)
    assert back.attrs.keys() == ds.attrs.keys()
    for k, v in ds.attrs.items():
        assert back.attrs[k] == v, k
    assert os.listdir(tmp_path / "sub") == ["ks.nc"]  # no temporary file left behind
    save_dataset(ds.isel(trajectory=slice(0, 2)), path)  # atomic replace of an existing file
    assert load_ks(path).sizes["trajectory"] == 2


def test_load_missing_file_says_how_to_make_it(tmp_path):
    path = tmp_path / "nope.nc"
    with pytest.raises(FileNotFoundError, match=r"nope\.nc.*scilayers data ks --out"):
        load_ks(path)


def test_load_rejects_wrong_contents(ds, tmp_path):
    wrong = tmp_path / "wrong.nc"
    save_dataset(xr.Dataset({"v": ("t", np.zeros(3))}), wrong)
    with pytest.raises(ValueError, match=r"wrong\.nc has no variable 'u'.*scilayers data ks"):
        load_ks(wrong)
    no_attrs = tmp_path / "no_attrs.nc"
    save_dataset(ds.drop_attrs(), no_attrs)
    with pytest.raises(ValueError, match=r"lacks the attribute\(s\).*'a'"):
        load_ks(no_attrs)
    text = tmp_path / "text.nc"
    text.write_text("not a netCDF file")
    with pytest.raises(ValueError, match="not a readable netCDF file"):
        load_ks(text)
    transposed = tmp_path / "transposed.nc"
    save_dataset(ds.transpose("x", "time", "trajectory", ...), transposed)
    with pytest.raises(ValueError, match="dimensions"):
        load_ks(transposed)


def test_save_refuses_a_directory(ds, tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        save_dataset(ds, tmp_path)


def test_cached_makes_once_and_checks_the_fingerprint(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return xr.Dataset({"u": ("t", np.arange(4.0) + len(calls))})

    path = tmp_path / "c.nc"
    first = cached(path, make, fingerprint="abc")
    second = cached(path, make, fingerprint="abc")
    assert len(calls) == 1 and second.attrs["cache_fingerprint"] == "abc"
    np.testing.assert_array_equal(first["u"].values, second["u"].values)
    third = cached(path, make, fingerprint="other")
    assert len(calls) == 2 and third["u"].values[0] == 2.0
    path.write_text("corrupt")
    cached(path, make, fingerprint="other")
    assert len(calls) == 3


# ---------------------------------------------------------------------- data directory
def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("SCILAYERS_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="--data-dir DIR or set SCILAYERS_DATA_DIR"):
        data_dir()
    assert data_dir(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("SCILAYERS_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    other = tmp_path / "cli"
    other.mkdir()
    assert data_dir(other) == other.resolve()  # the CLI value wins
    with pytest.raises(FileNotFoundError, match=r"missing.*--data-dir"):
        data_dir(tmp_path / "missing")
    monkeypatch.setenv("SCILAYERS_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="SCILAYERS_DATA_DIR"):
        data_dir()


def test_shared_data_dir_when_configured():
    """CI sets SCILAYERS_DATA_DIR to the shared real-data folder; once set, it must resolve."""
    if not os.environ.get("SCILAYERS_DATA_DIR"):
        pytest.skip("no real data: SCILAYERS_DATA_DIR is unset (no ../shared/data found)")
    path = data_dir()
    assert path.is_dir() and path.is_absolute()


_MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    ("shared", "configured", "expected"),
    [
        (False, None, "<unset>"),  # a fresh clone anywhere: no default to a missing folder
        (True, None, "../shared/data"),
        (False, "/elsewhere", "/elsewhere"),
        (True, "/elsewhere", "/elsewhere"),  # an explicit setting wins
    ],
)
def test_make_test_points_at_real_data_only_where_it_exists(tmp_path, shared, configured, expected):
    """`make test` in a clone with stand-ins for the venv's python and pytest: the data
    directory it hands pytest."""
    clone = tmp_path / "clone"
    (clone / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(_MAKEFILE, clone / "Makefile")
    fakes = {"python": "exit 0", "pytest": 'echo "data_dir=${SCILAYERS_DATA_DIR-<unset>}"'}
    for name, body in fakes.items():
        tool = clone / ".venv" / "bin" / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    if shared:
        (tmp_path / "shared" / "data").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env.pop("SCILAYERS_DATA_DIR", None)
    if configured is not None:
        env["SCILAYERS_DATA_DIR"] = configured
    out = subprocess.run(
        ["make", "-s", "test"], cwd=clone, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"data_dir={expected}"


_DATA_MODULES = sorted(p.name for p in (Path(sl.__file__).parent / "data").glob("*.py"))


@pytest.mark.parametrize("module", _DATA_MODULES)
def test_data_imports_only_the_layers_below_it(module):
    """data/ sits beside solvers in the layering: it may import params, models, solvers and
    distributed (which depends on nothing), never the package root (which pulls in
    training, hybrid, ...) or a layer above."""
    allowed = {"params", "models", "solvers", "distributed", "_typing"}
    tree = ast.parse((Path(sl.__file__).parent / "data" / module).read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 2:
            target = (node.module or "").split(".")[0]
            if node.level > 2 or target not in allowed:
                bad.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''}")
        elif isinstance(node, ast.Import):
            if any(a.name.split(".")[0] == "scilayers" for a in node.names):
                bad.append(f"line {node.lineno}: import scilayers")
    assert bad == []
