"""`LatLonAdvectionDiffusion` (transport of temperature on the sphere) and the ERA5 loaders.

The model is checked against closed forms: a spherical harmonic decays at
``l(l+1) κ / R²`` (second-order convergence in the grid spacing), a zonal wind moves a
profile by ``u t / (R cos φ)`` in longitude (a different distance on every row), a closed
box conserves its area-weighted heat, a uniform field stays uniform under any wind, and an
observed boundary is followed. Gradients with respect to u, v, κ are checked against
central finite differences, and u, v, κ are recovered from a synthetic ERA5-like file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import xarray as xr
from scipy.special import lpmv

import scilayers as sl
from scilayers.data import (
    DATA_DIR_ENV,
    hours_since,
    load_era5_t2m,
    load_reference_winds,
    write_synthetic_era5,
)
from scilayers.models import LatLonAdvectionDiffusion

R = 6.371e6
TRUTH = {"u": 6.0, "v": -2.0, "kappa": 2e4}  # the wind and diffusivity of the fixture


def _grid(lat0, lat1, lon0, lon1, d):
    """Cell centres every ``d`` degrees, latitudes descending as in ERA5."""
    n_lat = round(abs(lat1 - lat0) / d) + 1
    n_lon = round(abs(lon1 - lon0) / d) + 1
    return np.linspace(lat0, lat1, n_lat), np.linspace(lon0, lon1, n_lon)


def _interior(x):
    return np.asarray(x)[..., 1:-1, 1:-1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic ERA5-like file of pure transport (no diurnal cycle), 13 × 17 × 48 h."""
    path = tmp_path_factory.mktemp("era5") / "synthetic-t2m.nc"
    return write_synthetic_era5(path, diurnal_amplitude=0.0, seed=1, **TRUTH)


# ------------------------------------------------------------------ the scheme
def test_tsit5_stability_constant_matches_diffrax():
    """The model's default stability polynomial is Tsit5's, read from its tableau."""
    from scilayers.models._advection_diffusion import TSIT5_STABILITY

    expected = sl.solvers.stability_polynomial(diffrax.Tsit5())
    np.testing.assert_allclose(TSIT5_STABILITY, expected[: len(TSIT5_STABILITY)], atol=1e-14)
    assert np.all(expected[len(TSIT5_STABILITY) :] == 0)


@pytest.mark.parametrize("boundary", ["open", "observed"])
def test_uniform_field_is_steady_under_any_wind(boundary):
    """A uniform temperature is a steady state of the open model for any (u, v, κ): the
    wind is non-divergent, so the flux form has no spurious compression heating (a
    meridional wind uniform in m/s would warm the box by T v tan φ / R ≈ 2 K/h at
    v = 10 m/s). (A closed box is different: its walls stop the wind's flux, so heat piles
    up downwind.)"""
    lat, lon = _grid(58, 50, -10, 2, 0.5)
    kw = {}
    if boundary == "observed":
        kw["boundary_values"] = np.full((3, lat.size, lon.size), 283.0)
    model = LatLonAdvectionDiffusion(lat, lon, u=-12.0, v=17.0, kappa=3e4, **kw)
    T = jnp.full(model.state_shape, 283.0)
    for t in (0.0, 1.5):
        np.testing.assert_allclose(model.vector_field(t, T), 0.0, atol=1e-10)
    relaxed = LatLonAdvectionDiffusion(lat, lon, u=-12.0, v=17.0, relaxation=0.1, reference=280.0)
    np.testing.assert_allclose(_interior(relaxed.rhs(T)), -0.1 * 3.0, rtol=1e-10)


def test_zero_gradient_ring_copies_its_interior_neighbour():
    """Open boundaries without a series: the ring's tendency is its interior neighbour's,
    and the fluxes see the interior's edge values, not the (stale) ring."""
    lat, lon = _grid(56, 54, -5, -2, 0.25)
    model = LatLonAdvectionDiffusion(lat, lon, u=7.0, v=-4.0, kappa=1e4)
    T = model.initial_condition(jax.random.key(0))
    f = np.asarray(model.rhs(T))
    np.testing.assert_array_equal(f[0, 1:-1], f[1, 1:-1])
    np.testing.assert_array_equal(f[1:-1, -1], f[1:-1, -2])
    np.testing.assert_array_equal(f[-1, -1], f[-2, -2])
    stale = T.at[0].add(50.0)  # the ring's values are not used
    np.testing.assert_array_equal(model.rhs(stale), f)


def test_vmap_over_parameters_under_jit():
    """Models built from traced θ_s inside ``jit(vmap(...))`` give the same tendency as
    models built one by one, and the diffusive tendency is linear in κ."""
    lat, lon = _grid(56, 54, -5, -2, 0.25)
    T = LatLonAdvectionDiffusion(lat, lon).initial_condition(jax.random.key(1))
    kappas = jnp.array([1e3, 1e4, 5e4])

    @jax.jit
    @jax.vmap
    def rates(kappa):
        return LatLonAdvectionDiffusion(lat, lon, u=0.0, v=0.0, kappa=kappa).rhs(T)

    batch = rates(kappas)
    for k, r in zip(kappas, batch, strict=True):
        model = LatLonAdvectionDiffusion(lat, lon, u=0.0, v=0.0, kappa=float(k))
        np.testing.assert_allclose(r, model.rhs(T), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(batch[2], 50 * batch[0], rtol=1e-9, atol=1e-12)


def _harmonic(lat, lon, l, m):
    phi, lam = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    return lpmv(m, l, np.sin(phi)) * np.cos(m * lam)


def test_diffusion_of_a_spherical_harmonic_decays_analytically_with_second_order():
    """Pure diffusion of ``Y = P_l^m(sin φ) cos(mλ)`` (an eigenfunction of the spherical
    Laplacian, so it tests the cos φ metric factors) decays as ``exp(-l(l+1) κ t / R²)``.
    On a 4° box driven at its boundary by the exact solution, the error after 24 h falls by
    4× per halving of the grid spacing (second order) and the amplitude matches the
    analytic decay to 0.2 % on the finer grid."""
    l, m, kappa, hours = 60, 45, 1e5, 24.0
    rate = l * (l + 1) * kappa / R**2 * 3600.0  # 1/h, about 1/31 h
    scale = np.abs(_harmonic(np.linspace(52, 56, 81), np.linspace(-6, -2, 81), l, m)).max()
    times = np.arange(0.0, hours + 0.01, 0.5)
    errors, amplitudes = [], []
    for d in (0.5, 0.25):
        lat, lon = _grid(56, 52, -6, -2, d)
        mode = 5.0 * _harmonic(lat, lon, l, m) / scale
        exact = 280.0 + mode[None] * np.exp(-rate * times)[:, None, None]
        model = LatLonAdvectionDiffusion(
            lat, lon, u=0.0, v=0.0, kappa=kappa, boundary_values=exact, boundary_times=times
        )
        n = math.ceil(hours / (0.8 * model.max_stable_dt()))
        step = sl.solvers.Diffrax(model, hours / n, stability_check=False)
        final = np.asarray(sl.rollout(step, jnp.asarray(exact[0]), n)[-1])
        errors.append(np.abs(final - exact[-1]).max())
        amplitudes.append(np.sum((final - 280.0) * mode) / np.sum(mode**2))
    order = math.log2(errors[0] / errors[1])
    assert 1.8 < order < 2.3, (errors, order)
    assert errors[1] < 5e-3  # K, of a 5 K mode
    decay = math.exp(-rate * hours)  # 0.459
    assert amplitudes[1] == pytest.approx(decay, rel=2e-3)
    assert abs(amplitudes[1] - decay) < abs(amplitudes[0] - decay) / 3


def test_uniform_zonal_wind_translates_by_u_t_over_r_cos_phi():
    """A zonal wind of 15 m/s moves a north–south band by ``u t / (R cos φ)`` in longitude
    in 6 h: 4.6° at 50.25N but 5.4° at 57.75N. The profile matches the exactly translated
    one to 4 % of its amplitude and its centroid to 0.03° on every row."""
    lat, lon = _grid(58, 50, -10, 2, 0.25)
    u, hours = 15.0, 6.0
    model = LatLonAdvectionDiffusion(lat, lon, u=u, v=0.0, kappa=1e-6)
    lat2, lon2 = model.grid()

    def profile(x):
        return 3.0 * np.exp(-((x + 7.0) ** 2) / (2 * 0.8**2))

    n = math.ceil(hours / (0.8 * model.max_stable_dt()))
    step = sl.solvers.Diffrax(model, hours / n, stability_check=False)
    final = np.asarray(sl.rollout(step, jnp.asarray(280.0 + profile(lon2)), n)[-1]) - 280.0
    shift = np.rad2deg(u * hours * 3600.0 / (R * np.cos(np.deg2rad(lat))))
    exact = profile(lon2 - shift[:, None])
    assert shift[1] - shift[-2] > 0.8  # rows really move by different distances (lat descends)
    assert np.abs(final - exact)[1:-1, 1:-1].max() < 0.12

    def centroid(a):
        return (a * lon2).sum(axis=1) / a.sum(axis=1)

    np.testing.assert_allclose(centroid(final)[1:-1], centroid(exact)[1:-1], atol=0.03)


def test_closed_box_conserves_area_weighted_heat():
    """With no-flux walls and no source, ``Σ A T`` over the interior is constant to
    round-off under wind and diffusion (the finite-volume fluxes telescope with the exact
    spherical cell areas), though the field itself changes a lot."""
    lat, lon = _grid(58, 50, -10, 2, 0.5)
    model = LatLonAdvectionDiffusion(lat, lon, u=8.0, v=-5.0, kappa=3e4, boundary="closed")
    T0 = model.initial_condition(jax.random.key(3))
    step = sl.solvers.Diffrax(model, 0.5, stability_check=False)
    traj = np.asarray(sl.rollout(step, T0, 40))
    heat = (traj * model.area_weights()).sum(axis=(1, 2))
    np.testing.assert_allclose(heat, heat[0], rtol=1e-13)
    assert np.abs(traj[-1] - traj[0])[1:-1, 1:-1].max() > 0.5
    # the tendency's area integral vanishes for any batch of fields (vmap)
    batch = jax.vmap(model.initial_condition)(jax.random.split(jax.random.key(4), 3))
    rates = jax.vmap(model.vector_field, in_axes=(None, 0))(0.0, batch)
    total = jnp.sum(rates * model.area_weights()[None], axis=(1, 2))
    np.testing.assert_allclose(total, 0.0, atol=1e-12)


def test_boundary_follows_the_observed_series():
    """The ring equals the hourly observations at every step (to below the 2e-5 K
    resolution of float32 ERA5), from any start time; a ring that starts 2 K off is pulled
    onto the observations at the `boundary_relaxation` rate (1/h); the residual of the
    rolled-out trajectory is small only with its true start time."""
    lat, lon = _grid(56, 54, -5, -2, 0.25)
    hours = np.arange(0.0, 25.0)
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    obs = (
        280.0
        + 0.5 * (lat2 - 55.0)[None]
        + 3.0 * np.sin(2 * np.pi * (hours[:, None, None] - lon2[None] / 15.0) / 24.0)
        + 0.1 * hours[:, None, None]
    )
    model = LatLonAdvectionDiffusion(
        lat, lon, u=8.0, v=3.0, kappa=2e4, boundary_values=obs, boundary_times=hours
    )
    rows, cols = model.ring_indices()
    step = sl.solvers.Diffrax(model, 0.5, stability_check=False)
    start = jnp.asarray(obs[5]).at[1:-1, 1:-1].add(1.0)
    traj = np.asarray(sl.rollout(step, start, 16, t0=5.0))
    np.testing.assert_allclose(traj[::2][:, rows, cols], obs[5:14][:, rows, cols], atol=1e-5)
    res = np.abs(np.asarray(model.residual(jnp.asarray(traj), 0.5, t0=5.0)))
    wrong = np.abs(np.asarray(model.residual(jnp.asarray(traj), 0.5, t0=0.0)))
    assert res[:, rows, cols].max() < 0.02 < 0.5 < wrong[:, rows, cols].max()

    off = jnp.asarray(obs[0]).at[rows, cols].add(2.0)
    traj = np.asarray(sl.rollout(step, off, 8))
    gap = np.abs(traj[::2][:, rows, cols] - obs[:5][:, rows, cols]).max(axis=1)
    np.testing.assert_allclose(gap, 2.0 * np.exp(-np.arange(5.0)), rtol=0.02)


def test_time_is_in_hours():
    """The tendency is in K/h: a wind of 10 m/s across a known gradient warms a cell by
    u ∂T/∂x · 3600 s per hour."""
    lat, lon = _grid(55.5, 54.5, -4, 0, 0.25)
    model = LatLonAdvectionDiffusion(lat, lon, u=10.0, v=0.0, kappa=1e-6)
    _, lon2 = model.grid()
    T = jnp.asarray(280.0 - 0.01 * lon2)  # warmer to the west
    dx = R * np.cos(np.deg2rad(lat[2])) * np.deg2rad(1.0)  # m per degree of longitude
    expected = 10.0 * 0.01 / dx * 3600.0  # K/h
    np.testing.assert_allclose(_interior(model.rhs(T))[1, 2:-2], expected, rtol=1e-4)


# ------------------------------------------------------------------ stability
def test_max_stable_dt_scales_with_wind_and_diffusivity():
    """The limit is ``∝ 1/κ`` for pure diffusion and ``∝ 1/|u|`` for pure advection, does
    not depend on the wind's sign; for a zonal wind the Courant number at the limit is
    Tsit5's 1-D limit for the upwind-biased scheme, 2.301."""
    lat, lon = _grid(58, 50, -10, 2, 0.25)

    def limit(**kw):
        return LatLonAdvectionDiffusion(lat, lon, **kw).max_stable_dt()

    diff = limit(u=0.0, v=0.0, kappa=1e5)
    assert limit(u=0.0, v=0.0, kappa=5e4) == pytest.approx(2 * diff, rel=1e-6)
    adv = limit(u=20.0, v=0.0, kappa=1e-6)
    assert limit(u=10.0, v=0.0, kappa=1e-6) == pytest.approx(2 * adv, rel=1e-6)
    assert limit(u=-20.0, v=0.0, kappa=1e-6) == pytest.approx(adv, rel=1e-9)
    zonal = LatLonAdvectionDiffusion(lat, lon, u=20.0, v=0.0, kappa=1e-6)
    assert zonal.cfl(zonal.max_stable_dt())["advective"] == pytest.approx(2.301, rel=1e-3)
    model = LatLonAdvectionDiffusion(lat, lon, u=20.0, v=20.0, kappa=1e-6)
    assert 1.0 < model.cfl(model.max_stable_dt())["advective"] < 2.31
    bosh3 = sl.solvers.stability_polynomial(diffrax.Bosh3())
    assert model.max_stable_dt(stability=bosh3) < model.max_stable_dt()


def test_too_large_dt_is_a_clear_error_and_really_unstable():
    """On the UK grid a step above the limit is refused by `check_cfl` (naming dt, the
    limit and the fix) and by `Diffrax` at construction (its Jacobian check agrees with
    `max_stable_dt` to within 20 %); one below passes both; and the limit is real: noise
    decays over 200 steps at 0.9 times it and grows without bound at twice it."""
    lat, lon = _grid(58, 50, -10, 2, 0.25)
    model = LatLonAdvectionDiffusion(
        lat, lon, u=20.0, v=-20.0, kappa=1e5, boundary_values=np.full((2, 33, 49), 280.0)
    )
    limit = model.max_stable_dt()
    model.check_cfl(0.9 * limit)
    model.check_cfl(2.5 * limit, substeps=3)
    sl.solvers.Diffrax(model, 0.9 * limit)
    with pytest.raises(ValueError, match=r"dt=.* exceeds the explicit stability limit") as e:
        model.check_cfl(2.5 * limit)
    assert f"{limit:.4g} h" in str(e.value) and "substeps >= 3" in str(e.value)
    with pytest.raises(ValueError, match=r"dt=.*exceeds the explicit stability limit.*Reduce dt"):
        sl.solvers.Diffrax(model, 1.2 * limit)
    noise = 0.1 * jax.random.normal(jax.random.key(0), model.state_shape)
    start = 280.0 + noise * model.interior_mask()
    for factor, bounded in ((0.9, True), (2.0, False)):
        step = sl.solvers.Diffrax(model, factor * limit, stability_check=False)
        end = sl.rollout(step, start, 200, check_finite=False)[-1]
        deviation = float(jnp.abs(end - 280.0).max())  # K, from noise of at most ~0.4 K
        assert deviation < 1.0 if bounded else deviation > 1e3, (factor, deviation)


def test_uk_grid_limit_for_the_largest_plausible_transport():
    """On the 0.25° UK grid, |u|, |v| ≤ 20 m/s and κ ≤ 10⁵ m²/s are stable with Tsit5 for
    steps up to about 0.19 h (so an hourly step needs 6 substeps)."""
    lat, lon = _grid(58, 50, -10, 2, 0.25)
    limits = [
        LatLonAdvectionDiffusion(lat, lon, u=su * 20.0, v=sv * 20.0, kappa=1e5).max_stable_dt()
        for su in (1, -1)
        for sv in (1, -1)
    ]
    assert 0.17 < min(limits) < 0.21
    assert math.ceil(1.0 / min(limits)) == 6


# ------------------------------------------------------------------ learning
H, SUBSTEPS = 6, 2


@eqx.filter_jit
def _value_and_grad(theta, rest, data, starts):
    """Mean squared error (interior, K²) of ``H``-hour forecasts from each start hour, and
    its gradient with respect to the free `Param`s' raw values."""

    def loss(th):
        model = sl.params.combine(th, rest)
        step = sl.solvers.Diffrax(model, 1.0, substeps=SUBSTEPS)

        def one(s):
            pred = sl.rollout(step, data[s], H, t0=s.astype(data.dtype))
            target = jax.lax.dynamic_slice_in_dim(data, s, H + 1)
            return jnp.mean((pred - target)[:, 1:-1, 1:-1] ** 2)

        return jnp.mean(jax.vmap(one)(starts))

    return eqx.filter_value_and_grad(loss)(theta)


def _forecast_setup(path, **theta):
    da = load_era5_t2m(file=path)
    data = jnp.asarray(da.values, jnp.result_type(float))
    model = LatLonAdvectionDiffusion(
        da.latitude.values,
        da.longitude.values,
        boundary_values=da.values,
        boundary_times=hours_since(da.time.values),
        **theta,
    )
    starts = jnp.arange(0, data.shape[0] - H, 8)
    return model, data, starts


def test_gradients_match_finite_differences(synthetic):
    """∂L/∂u, ∂L/∂v, ∂L/∂κ of a multi-window forecast loss through Diffrax and `rollout`
    (autodiff through the raw coordinates and the constraints) agree with central
    differences in the physical values to 1e-5."""
    model, data, starts = _forecast_setup(synthetic, u=4.0, v=1.0, kappa=1e4)
    theta, _, rest = sl.params.partition(model)
    _, grads = _value_and_grad(theta, rest, data, starts)
    eps = {"u": 1e-4, "v": 1e-4, "kappa": 1e-1}
    for name, h in eps.items():
        p = getattr(model, name)
        dvalue_draw = jax.grad(lambda r, p=p: p.constraint.forward(r))(p.raw)
        auto = float(getattr(grads, name).raw / dvalue_draw)

        def at(x, name=name):
            th, _, rs = sl.params.partition(sl.params.set_values(model, **{name: x}))
            return float(_value_and_grad(th, rs, data, starts)[0])

        value = float(p.value)
        fd = (at(value + h) - at(value - h)) / (2 * h)
        assert auto == pytest.approx(fd, rel=1e-5), name
        assert abs(auto) > 0


@pytest.mark.optimized  # run-bound: compiled with optimisation (conftest.py)
def test_recovers_wind_and_diffusivity_from_synthetic_data(synthetic):
    """Adam on the raw θ_s from a wrong start (u = 2, v = 1 m/s, κ = 5·10³ m²/s) recovers
    the fixture's u = 6, v = −2 m/s to 2 % and κ = 2·10⁴ m²/s to 10 %, forecasting 6 h
    from the observed field with the observed boundary."""
    model, data, starts = _forecast_setup(synthetic, u=2.0, v=1.0, kappa=5e3)
    theta, _, rest = sl.params.partition(model)
    opt = optax.adam(0.08)
    state = opt.init(theta)
    update = eqx.filter_jit(lambda g, s, th: opt.update(g, s, th))
    for _ in range(150):
        loss, grads = _value_and_grad(theta, rest, data, starts)
        updates, state = update(grads, state, theta)
        theta = eqx.apply_updates(theta, updates)
    learned = sl.params.values(sl.params.combine(theta, rest))
    assert float(learned["u"]) == pytest.approx(TRUTH["u"], rel=0.02)
    assert float(learned["v"]) == pytest.approx(TRUTH["v"], rel=0.02)
    assert float(learned["kappa"]) == pytest.approx(TRUTH["kappa"], rel=0.1)
    assert float(loss) < 1e-3  # K², from about 0.2 at the start


# ------------------------------------------------------------------ construction errors
def test_invalid_construction_names_the_fix():
    lat, lon = _grid(56, 54, -5, -2, 0.25)
    M = LatLonAdvectionDiffusion
    with pytest.raises(ValueError, match="regularly spaced"):
        M(np.array([50.0, 50.25, 50.75]), lon)
    with pytest.raises(ValueError, match="longitudes must increase"):
        M(lat, lon[::-1])
    with pytest.raises(ValueError, match="off the poles"):
        M(np.linspace(89.0, 90.0, 5), lon)
    with pytest.raises(ValueError, match="closed box takes no boundary series"):
        M(lat, lon, boundary="closed", boundary_values=np.zeros((2, 9, 13)) + 280)
    with pytest.raises(ValueError, match=r"shape \(n_times, 9, 13\) or \(n_times, 40\)"):
        M(lat, lon, boundary_values=np.zeros((2, 9, 12)))
    bad = np.full((3, 9, 13), 280.0)
    bad[1, 0, :2] = np.nan
    with pytest.raises(ValueError, match="2 NaN/Inf value"):
        M(lat, lon, boundary_values=bad)
    with pytest.raises(ValueError, match="regularly spaced"):
        M(lat, lon, boundary_values=np.full((3, 9, 13), 280.0), boundary_times=[0.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="needs a reference"):
        M(lat, lon, relaxation=0.1)
    with pytest.raises(ValueError, match="violates its constraint"):
        M(lat, lon, u=60.0)
    with pytest.raises(ValueError, match=r"expected a state of shape \(9, 13\).*jax.vmap"):
        M(lat, lon).rhs(jnp.zeros((2, 9, 13)))
    ring = M(lat, lon, boundary_values=np.full((1, 9, 13), 280.0))
    assert ring.boundary_values.value.shape == (1, 40) and ring.boundary_values.fixed
    assert set(sl.params.values(ring)) >= {"u", "v", "kappa", "boundary_values"}


# ------------------------------------------------------------------ loaders
def test_missing_file_is_one_line_naming_file_variable_and_option(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        load_era5_t2m(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    for part in (str(tmp_path / "climate/era5-t2m-2019-03-uk.nc"), "'t2m'", "--data-dir"):
        assert part in msg
    assert DATA_DIR_ENV in msg
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match=r"'t2m'.*era5-t2m-2019-03-uk.nc.*--data-dir") as e:
        load_era5_t2m()
    assert DATA_DIR_ENV in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_era5_t2m(tmp_path / "nowhere")


def test_missing_variable_nans_and_units_are_reported(tmp_path):
    base = xr.DataArray(
        np.full((2, 3, 4), 280.0, dtype=np.float32),
        dims=("time", "latitude", "longitude"),
        attrs={"units": "K"},
    )
    sl.data.save_dataset(base.to_dataset(name="tp"), tmp_path / "tp.nc")
    with pytest.raises(ValueError, match=r"tp.nc has no variable 't2m' \(found \['tp'\]\)"):
        load_era5_t2m(tmp_path, "tp.nc")
    nan = base.copy()
    nan[0, 1, :3] = np.nan
    sl.data.save_dataset(nan.to_dataset(name="t2m"), tmp_path / "nan.nc")
    with pytest.raises(ValueError, match="'t2m' has 3 NaN value"):
        load_era5_t2m(tmp_path, "nan.nc")
    assert int(load_era5_t2m(tmp_path, "nan.nc", allow_nan=True).isnull().sum()) == 3
    celsius = base.assign_attrs(units="degC")
    sl.data.save_dataset(celsius.to_dataset(name="t2m"), tmp_path / "c.nc")
    with pytest.raises(ValueError, match="units 'degC'"):
        load_era5_t2m(tmp_path, "c.nc")


def test_synthetic_file_round_trip_and_structure(synthetic, tmp_path):
    """The fixture reads back like the ERA5 file (dims, descending latitudes, hourly
    datetimes, K), stores its truth, and its diurnal cycle is exactly the documented
    land-weighted cosine on top of the same transported field."""
    da = load_era5_t2m(file=synthetic)
    assert da.dims == ("time", "latitude", "longitude") and da.shape == (48, 13, 17)
    assert da.dtype == np.float32 and da.attrs["units"] == "K"
    assert np.all(np.diff(da.latitude.values) < 0) and np.all(np.diff(da.longitude) > 0)
    np.testing.assert_allclose(hours_since(da.time.values), np.arange(48.0))
    attrs = xr.open_dataset(synthetic).attrs
    assert {k: attrs[k] for k in TRUTH} == TRUTH
    assert 265.0 < float(da.min()) < float(da.max()) < 295.0

    cycle = write_synthetic_era5(tmp_path / "cycle.nc", diurnal_amplitude=3.0, seed=1, **TRUTH)
    diff = load_era5_t2m(file=cycle).values.astype(float) - da.values
    hour = np.arange(48.0) % 24
    lon = da.longitude.values
    land = 1 / (1 + np.exp(-(lon - lon.mean()) / (0.1 * np.ptp(lon))))
    expected = 3.0 * np.cos(2 * np.pi * (hour - 15) / 24)[:, None, None] * land[None, None]
    np.testing.assert_allclose(diff, np.broadcast_to(expected, diff.shape), atol=1e-4)


def test_reference_winds_box_mean_with_0_360_longitudes(tmp_path):
    """A box across the Greenwich meridian (10W–2E) on a 0..360 grid takes both sides:
    with u equal to the signed longitude, its box mean is the mean of −10…2."""
    lat = np.arange(60.0, 45.0, -0.75)
    lon = np.arange(0.0, 360.0, 0.75)
    signed = (lon + 180.0) % 360.0 - 180.0
    u = np.broadcast_to(signed, (2, 2, lat.size, lon.size)).copy()
    v = np.ones_like(u) * np.array([1.0, -3.0])[:, None, None, None]
    ds = xr.Dataset(
        {k: (("month", "level", "latitude", "longitude"), x) for k, x in (("u", u), ("v", v))},
        coords={"month": [1, 7], "level": [500, 850], "latitude": lat, "longitude": lon},
    )
    sl.data.save_dataset(ds, tmp_path / "climate" / "eraint_uvz.nc")
    winds = load_reference_winds(tmp_path, box=(50.0, 58.0, -10.0, 2.0), level=850)
    inside = signed[(signed >= -10) & (signed <= 2)]
    np.testing.assert_allclose(winds["u"].values, inside.mean(), rtol=1e-12)
    np.testing.assert_allclose(winds["v"].values, [1.0, -3.0])
    same = load_reference_winds(tmp_path, box=(50.0, 58.0, 350.0, 2.0))
    np.testing.assert_allclose(same["u"].values, winds["u"].values)
    with pytest.raises(ValueError, match=r"no level 200 hPa \(it has \[500, 850\]\)"):
        load_reference_winds(tmp_path, level=200)


# ------------------------------------------------------------------ real data
def _real_data_dir() -> Path:
    if not os.environ.get(DATA_DIR_ENV):
        pytest.skip(f"{DATA_DIR_ENV} is not set: the real ERA5 files are not available")
    return sl.data.data_dir()


def test_real_era5_t2m_and_reference_winds():
    """The real March 2019 UK file: 744 h × 33 × 49 in K within a plausible range, a
    regular grid the model accepts; the ERA-Interim 850 hPa box-mean winds are westerly."""
    root = _real_data_dir()
    da = load_era5_t2m(root)
    assert da.shape == (744, 33, 49) and da.attrs["units"] == "K"
    assert 255.0 < float(da.min()) < 275.0 < 285.0 < float(da.max()) < 300.0
    assert da.latitude.values[0] == 58.0 and da.longitude.values[0] == -10.0
    np.testing.assert_allclose(hours_since(da.time.values), np.arange(744.0))
    model = LatLonAdvectionDiffusion(
        da.latitude.values, da.longitude.values, boundary_values=da.values[:3]
    )
    assert model.state_shape == (33, 49)
    winds = load_reference_winds(root)
    assert np.all(winds["u"].values > 0) and np.all(np.abs(winds["v"].values) < 10)
