"""`fit`: recovery of known θ_s, strategies, NaN guard, checkpoints and exact resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from scilayers.training import TrainingDiverged


def _ks(a=1.0, b=1.0, n=32):
    return sl.models.KuramotoSivashinsky(
        22.0, n, a=sl.Param(a, "positive"), b=sl.Param(b, "positive")
    )


@pytest.fixture(scope="module")
def ks_data():
    """Trajectories of KS with a = 1.1, b = 0.9 (n = 32, dt = 0.25), past the transient."""
    model = _ks(1.1, 0.9)
    step = sl.solvers.ETDRK4(model, 0.25)
    u0 = jax.vmap(model.initial_condition)(jax.random.split(jax.random.key(3), 6))
    warm = jax.vmap(lambda u: sl.rollout(step, u, 200)[-1])(u0)
    return jax.vmap(lambda u: sl.rollout(step, u, 40))(warm)


def test_calibration_recovers_known_theta(ks_data):
    step = sl.solvers.ETDRK4(_ks(0.85, 1.15), 0.25)
    cfg = sl.TrainConfig(steps=150, batch_size=8, horizon=5, lr_theta=5e-2, schedule="constant")
    res = sl.fit(step, ks_data, cfg, progress=False)
    got = sl.params.values(res.model)
    assert abs(float(got["a"]) - 1.1) < 0.01 and abs(float(got["b"]) - 0.9) < 0.01
    assert res.history["theta/a"].shape == (150,)
    assert res.history["loss"][-1] < 1e-3 * res.history["loss"][0]


def _hybrid(key, a=0.85):
    net = sl.nn.PeriodicCNN1d(width=4, depth=1, key=key)
    return sl.Hybrid(sl.solvers.ETDRK4(_ks(a, 1.0), 0.25), net, coupling="closure")


def test_strategies_train_the_right_groups(ks_data, key):
    model = _hybrid(key)
    theta0, net0, _ = sl.params.partition(model)

    def changed(tree_a, tree_b):
        la, lb = jax.tree_util.tree_leaves(tree_a), jax.tree_util.tree_leaves(tree_b)
        return any(not np.array_equal(x, y) for x, y in zip(la, lb, strict=True))

    for strategy, theta_moves, net_moves in (
        ("fixed", False, True),
        ("joint", True, True),
        ("staged", True, True),
    ):
        cfg = sl.TrainConfig(strategy=strategy, steps=9, batch_size=4, horizon=3)
        res = sl.fit(model, ks_data, cfg, progress=False)
        theta, net, _ = sl.params.partition(res.model)
        assert changed(theta, theta0) == theta_moves, strategy
        assert changed(net, net0) == net_moves, strategy
    # staged: the network is untouched during the calibration stage
    cfg = sl.TrainConfig(
        strategy="staged", steps=10, batch_size=4, horizon=3, stage_fractions=(1.0, 0.0, 0.0)
    )
    res = sl.fit(model, ks_data, cfg, progress=False)
    assert not changed(sl.params.partition(res.model)[1], net0)
    assert changed(sl.params.partition(res.model)[0], theta0)


def test_fit_is_reproducible_from_config_and_seed(ks_data, key):
    cfg = sl.TrainConfig(steps=6, batch_size=4, horizon=3, seed=7)
    a = sl.fit(_hybrid(key), ks_data, cfg, progress=False)
    b = sl.fit(_hybrid(key), ks_data, cfg, progress=False)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    c = sl.fit(_hybrid(key), ks_data, cfg.replace(seed=8), progress=False)
    assert not np.array_equal(a.history["loss"], c.history["loss"])


class Blowup(eqx.Module):
    """``u ↦ w·u``, NaN for states whose first entry exceeds a threshold."""

    w: jax.Array
    state_shape: tuple = eqx.field(static=True, default=(4,))

    def __call__(self, u):
        return jnp.where(u[0] > 50.0, jnp.nan, self.w * u)


def _toy_data(poison_fraction):
    rng = np.random.default_rng(0)
    u0 = rng.normal(size=(20, 4))
    traj = np.stack([u0 * 0.9**t for t in range(6)], axis=1)
    n_bad = int(poison_fraction * 20)
    traj[:n_bad, :, 0] = 100.0
    return traj


def test_nan_guard_rejects_bad_steps_and_keeps_training():
    cfg = sl.TrainConfig(
        steps=60,
        batch_size=1,
        horizon=2,
        lr_net=5e-2,
        clip_norm=None,
        schedule="constant",
        max_rejects=50,
        reject_factor=0.8,
    )
    res = sl.fit(Blowup(jnp.asarray(0.5)), _toy_data(0.2), cfg, progress=False)
    assert res.history["rejected"].any() and not res.history["rejected"].all()
    assert np.isfinite(float(res.model.w))
    assert abs(float(res.model.w) - 0.9) < 0.05  # learned from the good windows
    assert res.history["lr_scale"][-1] < 1.0


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = sl.TrainConfig(steps=30, batch_size=2, horizon=2, max_rejects=3, checkpoint_every=1)
    data = _toy_data(1.0)  # every window poisons the loss
    with pytest.raises(TrainingDiverged, match=r"diverged at step 2 .*Remedy"):
        sl.fit(Blowup(jnp.asarray(0.5)), data, cfg, checkpoint_dir=tmp_path, progress=False)
    template = {"model": Blowup(jnp.asarray(0.0)), "opt": None, "best": None}
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["global_step"] == 2  # the steps before the one that gave up
    stepper = sl.training._fit._init_opt_state(
        cfg,
        sl.training.stages_for(cfg)[0],
        sl.training._fit._split(template["model"], sl.training.stages_for(cfg)[0])[0],
    )
    template.update(opt=stepper, best=template["model"])
    tree, _ = sl.training.load_checkpoint(tmp_path, template)
    assert float(tree["model"].w) == 0.5  # intact and unchanged by the rejected steps


def test_bad_inputs(ks_data, key, tmp_path):
    model = _hybrid(key)
    with pytest.raises(ValueError, match="lambda_physics must be"):
        sl.TrainConfig(lambda_physics=-1.0)
    with pytest.raises(ValueError, match="unknown strategy"):
        sl.TrainConfig(strategy="greedy")
    bad = np.asarray(ks_data).copy()
    bad[1, 3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sl.fit(model, bad, sl.TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="expects"):
        sl.fit(model, np.zeros((3, 10, 16)), sl.TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="horizon"):
        sl.fit(model, ks_data[:, :4], sl.TrainConfig(steps=1, horizon=10), progress=False)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        sl.fit(model, ks_data, sl.TrainConfig(steps=1, checkpoint_every=1), progress=False)


def test_corrupt_checkpoint_is_reported(ks_data, key, tmp_path):
    cfg = sl.TrainConfig(steps=4, batch_size=2, horizon=2, checkpoint_every=2)
    sl.fit(_hybrid(key), ks_data, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        sl.fit(_hybrid(key), ks_data, cfg, checkpoint_dir=tmp_path, progress=False)
    raw = (tmp_path / "checkpoint.eqx").read_bytes()
    (tmp_path / "checkpoint.eqx").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        sl.fit(_hybrid(key), ks_data, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="different config"):
        sl.fit(
            _hybrid(key),
            ks_data,
            cfg.replace(steps=5),
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )


_CHILD = textwrap.dedent(
    """
    import sys, time, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import scilayers as sl
    sys.path.insert(0, {tests!r})
    from test_training import _hybrid, _child_data, _child_config
    res = sl.fit(_hybrid(jax.random.key(0)), _child_data(), _child_config(),
                 checkpoint_dir={ckpt!r}, resume={resume}, progress=False)
    np.save({out!r}, np.concatenate([np.ravel(x) for x in
            jax.tree_util.tree_leaves(sl.params.partition(res.model)[:2])]))
    """
)


def _child_data():
    model = _ks(1.1, 0.9)
    step = sl.solvers.ETDRK4(model, 0.25)
    u0 = jax.vmap(model.initial_condition)(jax.random.split(jax.random.key(3), 4))
    return jax.vmap(lambda u: sl.rollout(step, u, 20))(u0)


def _child_config():
    return sl.TrainConfig(
        strategy="staged", steps=400, batch_size=2, horizon=3, checkpoint_every=10, val_every=1000
    )


def _spawn(tmp_path, name, resume):
    script = _CHILD.format(
        tests=os.path.dirname(__file__),
        ckpt=str(tmp_path / name),
        resume=resume,
        out=str(tmp_path / f"{name}-{resume}.npy"),
    )
    log = open(tmp_path / f"{name}-{resume}.log", "wb")  # noqa: SIM115 - closed by the OS
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    return proc


def _log(tmp_path, name, resume):
    return (tmp_path / f"{name}-{resume}.log").read_text()[-2000:]


def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    """A training run killed with SIGKILL mid-way and resumed from its checkpoint ends with
    the same parameters as a run that was never interrupted."""
    ref = _spawn(tmp_path, "ref", False)
    victim = _spawn(tmp_path, "victim", False)
    meta = tmp_path / "victim" / "checkpoint.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if meta.exists():
            try:
                step = json.loads(meta.read_text())["global_step"]
            except (json.JSONDecodeError, KeyError):
                step = 0
            if step >= 150:  # inside the second (network) stage
                break
        if victim.poll() is not None:
            pytest.fail("the run finished before it could be killed; lengthen it")
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = json.loads(meta.read_text())["global_step"]
    assert 0 < killed_at < 400
    resumed = _spawn(tmp_path, "victim", True)
    assert resumed.wait(timeout=300) == 0, _log(tmp_path, "victim", True)
    assert ref.wait(timeout=300) == 0, _log(tmp_path, "ref", False)
    a = np.load(tmp_path / "ref-False.npy")
    b = np.load(tmp_path / "victim-True.npy")
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
