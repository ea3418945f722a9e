"""`online_fit`: tracking a parameter that changes, no look-ahead, one compilation, exact
resume (also on a stream that has grown), time-dependent models, and clear errors."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from scilayers.training import OnlineConfig, TrainingDiverged, online_fit

DT = 0.05
SWITCH = 200  # index of the last observation made with F = 8; F = 10 from there on
TRACES = [0]  # how many times `Euler.__call__` has been traced or run


class Euler(sl.solvers.AbstractStepper):
    """Forward Euler, ``u + dt f(t, u)``: the cheapest stepper to compile. Counts its
    calls, so that a test can see how often the online update is traced."""

    model: sl.models.AbstractModel
    dt: float = eqx.field(static=True)

    def __call__(self, u, t=0.0):
        TRACES[0] += 1
        return u + self.dt * self.model.vector_field(t, u)


def _l96(forcing, solver="diffrax"):
    model = sl.models.Lorenz96(k=8, forcing=sl.Param(forcing, name="F"))
    return sl.solvers.Diffrax(model, DT) if solver == "diffrax" else Euler(model, DT)


@pytest.fixture(scope="module")
def switching_stream():
    """Lorenz-96 (k = 8) observed every 0.05 time units, 401 states: forcing F = 8 up to
    index 200, then F = 10 (the truth changes under the model's feet)."""
    u0 = _l96(8.0).model.initial_condition(jax.random.key(0))
    spun_up = sl.rollout(_l96(8.0), u0, SWITCH)[-1]  # every rollout 200 steps: one compile
    first = sl.rollout(_l96(8.0), spun_up, SWITCH)
    second = sl.rollout(_l96(10.0), first[-1], SWITCH)[1:]
    return np.concatenate([np.asarray(first), np.asarray(second)])


TRACK = OnlineConfig(
    window=20,
    every=10,
    steps_per_update=10,
    horizon=4,
    batch_size=8,
    lr_theta=0.1,
    clip_norm=None,
    forecast_steps=10,
)


def test_online_estimate_follows_a_switch_that_a_single_fit_misses(switching_stream):
    """F switches from 8 to 10 halfway. Updated every 10 observations on the latest 20,
    the online F sits at 8 before the switch and at 10 within a few updates after it, and
    its forecasts stay skilful; `fit` once on the first half keeps F = 8 and loses skill."""
    stream = switching_stream
    res = online_fit(_l96(7.0), stream, TRACK, progress=False)
    h = res.history
    np.testing.assert_array_equal(h["index"], np.arange(19, 401, 10))
    np.testing.assert_allclose(h["time"], DT * h["index"])
    F = h["theta/F"]
    before = (h["index"] > 100) & (h["index"] <= SWITCH)
    after = h["index"] >= SWITCH + 50  # from the 4th update after the first window past it
    assert np.abs(F[before] - 8.0).max() < 0.1
    assert np.abs(F[after] - 10.0).max() < 0.1
    assert abs(F[-1] - 10.0) < 0.01 and res.initial_theta["F"] == 7.0
    assert abs(float(sl.params.values(res.model)["F"]) - F[-1]) < 1e-12

    cfg = sl.TrainConfig(
        steps=60, batch_size=8, horizon=4, lr_theta=0.1, schedule="constant", clip_norm=None
    )
    once = sl.fit(_l96(7.0), stream[None, : SWITCH + 1], cfg, progress=False)
    assert abs(float(sl.params.values(once.model)["F"]) - 8.0) < 0.05  # right for then
    # forecast skill over the second half, 10 steps ahead, from the same start states
    starts = h["index"][after & (h["index"] + 10 < len(stream))]
    online_err = res.forecast_rmse[np.isin(h["index"], starts), -1]
    fc = jax.vmap(lambda u: sl.rollout(once.model, u, 10)[-1])(jnp.asarray(stream[starts]))
    once_err = np.sqrt(np.mean((np.asarray(fc) - stream[starts + 10]) ** 2, axis=-1))
    assert online_err.mean() < 0.1 * once_err.mean()
    # the forecasts are the model's: rolled from the latest observation at that update
    u = h["update"][-5]
    np.testing.assert_allclose(
        res.forecast_rmse[u],
        np.sqrt(
            np.mean(
                (res.forecasts[u] - stream[h["index"][u] + 1 : h["index"][u] + 11]) ** 2, axis=-1
            )
        ),
    )
    assert np.isnan(res.forecast_rmse[-1, 1:]).all()  # targets beyond the stream


SMALL = OnlineConfig(
    window=16, every=3, steps_per_update=4, horizon=3, batch_size=4, lr_theta=0.05, forecast_steps=5
)


def _hybrid(key):
    net = sl.nn.MLP(8, 8, width=8, depth=1, key=key, final_scale=1e-2)
    return sl.Hybrid(_l96(7.0, "euler"), net, coupling="residual")


def _leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]


def _same_history(a, b, n=None):
    """``a`` and ``b`` agree bit for bit on their first ``n`` updates (wall times aside)."""
    assert set(a) == set(b)
    for k in a:
        if k != "update_seconds":
            np.testing.assert_array_equal(a[k][:n], b[k][:n], err_msg=k)


def test_no_look_ahead(switching_stream, key):
    """Changing the observations after index t leaves every update at indices <= t, its
    θ_s, θ_ml, loss and forecast, exactly as it was; the updates after t do change. The
    run on the stream cut at t ends with the model the full run had at t."""
    t = 99  # an update index: 15 + 3k
    stream = switching_stream[:160]
    changed = stream.copy()
    changed[t + 1 :] += np.random.default_rng(0).normal(size=changed[t + 1 :].shape)
    models = []
    full = online_fit(
        _hybrid(key), stream, SMALL, progress=False, callback=lambda row, m: models.append(m)
    )
    other = online_fit(_hybrid(key), changed, SMALL, progress=False)
    cut = online_fit(_hybrid(key), stream[: t + 1], SMALL, progress=False)
    n = int(np.sum(full.history["index"] <= t))
    assert full.history["index"][n - 1] == t and n < len(full.history["index"])
    _same_history(full.history, other.history, n)
    np.testing.assert_array_equal(full.forecasts[:n], other.forecasts[:n])
    assert full.history["loss"][n] != other.history["loss"][n]
    assert full.history["theta/F"][n] != other.history["theta/F"][n]
    _same_history(full.history, cut.history, n)
    assert len(cut.history["index"]) == n
    for x, y in zip(_leaves(cut.model), _leaves(models[n - 1]), strict=True):
        np.testing.assert_array_equal(x, y)


def test_every_update_reuses_one_compilation(switching_stream):
    """The update function is traced once, in the first update; later updates, and runs
    that differ only in the seed, the schedule of updates, the λ values or the stream's
    length, reuse it."""
    cfg = SMALL.replace(steps_per_update=3)  # a compilation no other test shares
    counts = []
    res = online_fit(
        _l96(7.0, "euler"),
        switching_stream[:200],
        cfg,
        progress=False,
        callback=lambda row, m: counts.append(TRACES[0]),
    )
    assert len(counts) == len(res.history["update"]) > 60
    assert counts[0] > 0 and counts[-1] == counts[0]
    for other in (
        cfg.replace(seed=5),
        cfg.replace(every=7, start=40),
        cfg.replace(lambda_data=2.0),
    ):
        online_fit(_l96(7.0, "euler"), switching_stream[:120], other, progress=False)
    assert TRACES[0] == counts[0]
    before = TRACES[0]
    online_fit(_l96(7.0, "euler"), switching_stream[:40], cfg.replace(horizon=2), progress=False)
    assert TRACES[0] > before  # and a count that can move: a new horizon is a new program


class Killed(Exception):
    """Stands for the process dying."""


def test_killed_run_resumes_to_the_uninterrupted_result(switching_stream, key, tmp_path):
    """A run that dies between checkpoints, resumed, ends bit for bit where a run that
    never stopped ends: model, Adam states (θ_s and θ_ml), history and forecasts."""
    cfg = SMALL.replace(checkpoint_every=4)
    ref = online_fit(
        _hybrid(key), switching_stream, cfg, checkpoint_dir=tmp_path / "ref", progress=False
    )

    def die(row, model):
        if row["update"] == 10:
            raise Killed

    with pytest.raises(Killed):
        online_fit(
            _hybrid(key),
            switching_stream,
            cfg,
            checkpoint_dir=tmp_path / "run",
            progress=False,
            callback=die,
        )
    res = online_fit(
        _hybrid(key),
        switching_stream,
        cfg,
        checkpoint_dir=tmp_path / "run",
        resume=True,
        progress=False,
    )
    assert res.resumed_from == 8  # the last checkpoint before the update that died
    _same_history(ref.history, res.history)
    np.testing.assert_array_equal(ref.forecasts, res.forecasts)
    for x, y in zip(_leaves(ref.model), _leaves(res.model), strict=True):
        np.testing.assert_array_equal(x, y)
    assert res.trained["theta_s"] == 1 and res.trained["theta_ml"] > 0


def test_stopped_run_resumes_on_a_grown_stream(switching_stream, key, tmp_path):
    """Observations arrive after a run stopped (by its callback, or because the stream
    ended): resuming on the longer stream continues it exactly. A stream whose past has
    changed is refused."""
    cfg = SMALL
    ref = online_fit(_hybrid(key), switching_stream, cfg, progress=False)
    part = online_fit(
        _hybrid(key),
        switching_stream,
        cfg,
        checkpoint_dir=tmp_path,
        progress=False,
        callback=lambda row, m: row["update"] == 5,
    )
    assert len(part.history["update"]) == 6
    grown = online_fit(
        _hybrid(key),
        switching_stream[:250],
        cfg,
        checkpoint_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert grown.resumed_from == 6 and grown.history["index"][-1] == 249
    res = online_fit(
        _hybrid(key), switching_stream, cfg, checkpoint_dir=tmp_path, resume=True, progress=False
    )
    _same_history(ref.history, res.history)
    for x, y in zip(_leaves(ref.model), _leaves(res.model), strict=True):
        np.testing.assert_array_equal(x, y)
    edited = switching_stream.copy()
    edited[3] += 1.0
    with pytest.raises(ValueError, match="first 400 observations .* differ"):
        online_fit(_hybrid(key), edited, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="lr_theta: 0.05 in the checkpoint, 0.1 now"):
        online_fit(
            _hybrid(key),
            switching_stream,
            cfg.replace(lr_theta=0.1),
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        online_fit(_hybrid(key), switching_stream, cfg, checkpoint_dir=tmp_path, progress=False)


def test_strategies_and_the_anchor(switching_stream, key):
    """``theta`` leaves the network alone and ``fixed`` leaves θ_s alone; a strong anchor
    slows θ_s down after the switch."""
    stream = switching_stream[150:260]
    before = _leaves(_hybrid(key).net)
    res = online_fit(_hybrid(key), stream, SMALL.replace(strategy="theta"), progress=False)
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(res.model.net), before, strict=True))
    assert res.history["theta/F"][-1] != 7.0
    res = online_fit(_hybrid(key), stream, SMALL.replace(strategy="fixed"), progress=False)
    assert (res.history["theta/F"] == 7.0).all()
    assert not all(
        np.array_equal(x, y) for x, y in zip(_leaves(res.model.net), before, strict=True)
    )
    free = online_fit(_l96(8.0, "euler"), stream, SMALL, progress=False)
    held = online_fit(_l96(8.0, "euler"), stream, SMALL.replace(lambda_anchor=1e3), progress=False)
    late = free.history["index"] > 100  # 50 states after the switch
    assert held.history["anchor"][late].max() > 0 and free.history["anchor"][late].max() > 0
    assert (
        np.abs(held.history["theta/F"][late] - 8.0).max()
        < 0.5 * np.abs(free.history["theta/F"][late] - 8.0).min()
    )


def test_time_dependent_model_trains_and_forecasts_at_the_stream_times():
    """A driven pendulum observed from t0 = 5: with the true parameters, training windows
    and forecasts reproduce the stream only when `t0` is passed (the drive is
    ``A cos(Ω t)``)."""
    truth = Euler(sl.models.DrivenPendulum(gamma=0.3, amplitude=1.2), 0.1)
    stream = np.asarray(sl.rollout(truth, jnp.array([0.3, 0.0]), 120, 5.0))
    model = Euler(
        sl.models.DrivenPendulum(
            gamma=0.3, omega0=sl.Param(1.0, fixed=True), amplitude=sl.Param(1.2, fixed=True)
        ),
        0.1,
    )
    cfg = OnlineConfig(
        window=12,
        every=9,
        steps_per_update=2,
        horizon=5,
        batch_size=4,
        lr_theta=0.0,
        forecast_steps=4,
    )
    right = online_fit(model, stream, cfg, t0=5.0, progress=False)
    wrong = online_fit(model, stream, cfg, progress=False)
    np.testing.assert_allclose(right.history["time"], 5.0 + 0.1 * right.history["index"])
    assert right.history["loss"].max() < 1e-20
    assert np.nanmax(right.forecast_rmse) < 1e-12
    assert wrong.history["loss"].min() > 1e-6 and np.nanmin(wrong.forecast_rmse) > 1e-4


class NaNStep(eqx.Module):
    """``u ↦ w·u·NaN``: every loss is NaN."""

    network_fields = ("w",)
    w: jax.Array
    state_shape: tuple = eqx.field(static=True, default=(8,))

    def __call__(self, u):
        return self.w * u * jnp.nan


def test_diverging_updates_are_reported(switching_stream):
    """Non-finite losses in every step are rejected, across updates, until `max_rejects`
    in a row raise `TrainingDiverged` naming the update and the observation."""
    model = NaNStep(jnp.asarray(0.5))
    cfg = SMALL.replace(max_rejects=6)  # 4 steps per update: the second update gives up
    with pytest.raises(TrainingDiverged, match=r"diverged at update 1 \(latest observation 18"):
        online_fit(model, switching_stream, cfg, progress=False)


def test_clear_errors(switching_stream):
    stream, model = switching_stream, _l96(7.0, "euler")
    with pytest.raises(
        ValueError,
        match=r"window \(500 observations\) is longer than the "
        r"stream \(401",
    ):
        online_fit(model, stream, SMALL.replace(window=500), progress=False)
    with pytest.raises(ValueError, match=r"horizon \(16\) must be smaller than window \(16\)"):
        SMALL.replace(horizon=16)
    bad = stream.copy()
    bad[123, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN/Inf at time index 123 \(state index \(5,\)\)"):
        online_fit(model, bad, SMALL, progress=False)
    with pytest.raises(ValueError, match=r"pass stream\[0\]"):
        online_fit(model, stream[None], SMALL, progress=False)
    with pytest.raises(ValueError, match=r"shape \(time, \*\(8,\)\)"):
        online_fit(model, stream[:, :5], SMALL, progress=False)
    with pytest.raises(ValueError, match=r"start must be an index >= window - 1 = 15"):
        SMALL.replace(start=3)
    with pytest.raises(ValueError, match="start = 401 is beyond"):
        online_fit(model, stream, SMALL.replace(start=401), progress=False)
    with pytest.raises(ValueError, match="'staged' belongs to fit"):
        SMALL.replace(strategy="staged")
    with pytest.raises(ValueError, match="checkpoint_dir"):
        online_fit(model, stream, SMALL.replace(checkpoint_every=2), progress=False)
    frozen = sl.solvers.Diffrax(sl.models.Lorenz96(k=8, forcing=sl.Param(8.0, fixed=True)), DT)
    with pytest.raises(ValueError, match="nothing to train: strategy 'joint'"):
        online_fit(frozen, stream, SMALL, progress=False)


def test_config_round_trips_and_warm_start_from_fit(switching_stream):
    cfg = SMALL.replace(start=40, lambda_anchor=0.5)
    assert OnlineConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    assert OnlineConfig.from_dict(json.loads(cfg.to_json())) == cfg
    warm = sl.fit(
        _l96(7.0, "euler"),
        switching_stream[None, :41],
        sl.TrainConfig(steps=5, batch_size=4, horizon=3),
        progress=False,
    )
    res = online_fit(warm, switching_stream[:80], cfg, progress=False)
    assert res.initial_theta["F"] == warm.history["theta/F"][-1]
    assert res.history["index"][0] == 40
