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

    network_fields = ("w",)  # w is a network weight (θ_ml), not a frozen constant

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
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["global_step"] == 2  # the steps before the one that gave up
    blank = Blowup(jnp.asarray(0.0))
    stage = sl.training.stages_for(cfg)[0]
    trainable, _ = sl.training.split_trainable(blank, stage)
    assert isinstance(trainable, sl.training.Trainable) and trainable.theta_s.w is None
    opt = sl.training.init_opt_state(cfg, stage, trainable)
    template = {"model": blank, "opt": opt, "best": blank}
    tree, _ = sl.training.load_checkpoint(tmp_path, template)
    assert float(tree["model"].w) == 0.5  # intact and unchanged by the rejected steps


@pytest.mark.parametrize("checkpoint_every", [0, 100])
def test_divergence_without_a_checkpoint_claims_none(tmp_path, checkpoint_every):
    """With checkpointing off, or before the first checkpoint is due, the message must not
    point at a checkpoint that does not exist."""
    cfg = sl.TrainConfig(
        steps=30, batch_size=2, horizon=2, max_rejects=3, checkpoint_every=checkpoint_every
    )
    with pytest.raises(TrainingDiverged, match=r"diverged at step 2 .*Remedy") as err:
        sl.fit(Blowup(jnp.asarray(0.5)), _toy_data(1.0), cfg, checkpoint_dir=tmp_path,
               progress=False)  # fmt: skip
    assert "checkpoint" not in str(err.value)
    assert not (tmp_path / "checkpoint.json").exists()


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
    with pytest.raises(ValueError, match="different config") as err:
        sl.fit(
            _hybrid(key),
            ks_data,
            cfg.replace(lr_net=2e-3, batch_size=3),
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )
    assert "batch_size: 2 in the checkpoint, 3 now" in str(err.value)
    assert "lr_net: 0.001 in the checkpoint, 0.002 now" in str(err.value)
    assert "steps" not in str(err.value)


def _toy_fit(tmp_path, cfg, resume=False):
    return sl.fit(Blowup(jnp.asarray(0.5)), _toy_data(0.0), cfg, checkpoint_dir=tmp_path,
                  resume=resume, progress=False)  # fmt: skip


@pytest.mark.parametrize("strategy", sl.training.EXTENDABLE)
def test_a_finished_run_extends_to_more_steps(tmp_path, strategy):
    """Resuming a finished joint/fixed run with a larger `steps` continues from its
    checkpoint; with a constant schedule it ends where a run of that length from the start
    ends."""
    cfg = sl.TrainConfig(strategy=strategy, steps=6, batch_size=2, horizon=2, lr_net=5e-2,
                         schedule="constant", checkpoint_every=3)  # fmt: skip
    first = _toy_fit(tmp_path / "run", cfg)
    longer = _toy_fit(tmp_path / "run", cfg.replace(steps=10), resume=True)
    direct = _toy_fit(tmp_path / "direct", cfg.replace(steps=10))
    assert longer.resumed_from == 6
    np.testing.assert_array_equal(longer.history["step"], np.arange(10))
    np.testing.assert_array_equal(longer.history["loss"][:6], first.history["loss"])
    np.testing.assert_array_equal(longer.history["loss"], direct.history["loss"])
    assert float(longer.model.w) == float(direct.model.w) != float(first.model.w)
    # the extended run's checkpoints carry the new config: it resumes with that config
    again = _toy_fit(tmp_path / "run", cfg.replace(steps=10), resume=True)
    assert again.resumed_from == 9 and float(again.model.w) == float(longer.model.w)


def test_only_single_stage_runs_extend_and_only_forwards(tmp_path):
    cfg = sl.TrainConfig(strategy="staged", steps=6, batch_size=2, horizon=2, checkpoint_every=3)
    _toy_fit(tmp_path / "staged", cfg)
    with pytest.raises(ValueError, match=r"steps: 6 in the checkpoint, 9 now.*'staged'"):
        _toy_fit(tmp_path / "staged", cfg.replace(steps=9), resume=True)
    joint = cfg.replace(strategy="joint")
    _toy_fit(tmp_path / "joint", joint)
    with pytest.raises(ValueError, match=r"steps: 6 in the checkpoint, 4 now.*may only grow"):
        _toy_fit(tmp_path / "joint", joint.replace(steps=4), resume=True)
    with pytest.raises(ValueError, match=r"seed: 0 in the checkpoint, 1 now; steps: 6"):
        _toy_fit(tmp_path / "joint", joint.replace(steps=9, seed=1), resume=True)


def test_progress_is_silent_off_a_terminal(capsys, monkeypatch):
    """Redirected output (a log file, a pipe) gets no progress bar: Rich would only leave a
    blank line per `fit` there. On a terminal the bar is drawn."""
    for var in ("TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)
    cfg = sl.TrainConfig(steps=3, batch_size=2, horizon=2)
    sl.fit(Blowup(jnp.asarray(0.5)), _toy_data(0.0), cfg, progress=True)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    sl.fit(Blowup(jnp.asarray(0.5)), _toy_data(0.0), cfg, progress=True)
    assert "3/3" in capsys.readouterr().out


_CHILD = textwrap.dedent(
    """
    import sys, time, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import scilayers as sl
    from scilayers._compile_cache import use_compilation_cache
    if {cache!r}:  # the suite's cache: the resumed run loads what the first one compiled
        use_compilation_cache({cache!r})
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
        cache=jax.config.jax_compilation_cache_dir or "",
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


@pytest.mark.slow
def test_public_step_api_reproduces_fits_first_step(ks_data, key):
    """`split_trainable`, `init_opt_state`, `compiled_train_step` and `loss_weights` (what
    the benchmarks drive) take the same step as `fit`; `Trainable` labels the groups."""
    cfg = sl.TrainConfig(steps=1, batch_size=4, horizon=3, seed=5)
    model = _hybrid(key)
    stage = sl.training.stages_for(cfg)[0]
    trainable, static = sl.training.split_trainable(model, stage)
    assert sl.params.values(trainable.theta_s)  # θ_s: the Params' raw values ...
    assert not sl.params.named(trainable.theta_ml)  # ... θ_ml: network arrays only
    opt = sl.training.init_opt_state(cfg, stage, trainable)
    step = sl.training.compiled_train_step(cfg, stage, cfg.horizon)
    hyper = dict(sl.training.loss_weights(cfg), lr_scale=jnp.asarray(1.0))
    stage_key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
    new, _, loss, _, ok = step(trainable, opt, static, ks_data, jax.random.fold_in(stage_key, 0),
                               hyper)  # fmt: skip
    res = sl.fit(model, ks_data, cfg, progress=False)
    assert bool(ok) and float(loss) == res.history["loss"][0]
    got = jax.tree_util.tree_leaves(sl.training.combine_trainable(new, static))
    want = jax.tree_util.tree_leaves(res.model)
    for x, y in zip(got, want, strict=True):
        np.testing.assert_array_equal(x, y)


def test_bench_uses_public_names_only():
    """The benchmark suite drives training through its public API and does not depend on
    a study module (experiments/ changes independently)."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(sl.__file__).parent / "_bench.py").read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            parts = (node.module or "").split(".")
            private = [a.name for a in node.names if a.name.startswith("_") and a.name[1] != "_"]
            if any(p.startswith("_") for p in parts) or private or "experiments" in parts:
                bad.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''}")
    assert bad == []


@pytest.mark.slow
def test_observed_components_are_all_the_data_loss_sees(ks_data):
    """An observation operator: with ``observed`` the loss compares only those components,
    so corrupting the others (after the first state, which every window starts from: the
    windows span whole trajectories here) changes nothing, and θ_s is still recovered from
    8 of 32 grid points."""
    obs = tuple(range(0, 32, 4))
    corrupt = np.array(ks_data)
    hidden = np.setdiff1d(np.arange(32), obs)
    corrupt[:, 1:, hidden] += np.random.default_rng(0).normal(size=corrupt[:, 1:, hidden].shape)
    cfg = sl.TrainConfig(steps=80, batch_size=6, horizon=ks_data.shape[1] - 1, lr_theta=3e-2,
                         schedule="constant", observed=obs)  # fmt: skip
    step = sl.solvers.ETDRK4(_ks(0.85, 1.15), 0.25)
    clean = sl.fit(step, ks_data, cfg, progress=False)
    dirty = sl.fit(step, jnp.asarray(corrupt), cfg, progress=False)
    np.testing.assert_allclose(clean.history["loss"], dirty.history["loss"], rtol=1e-6)
    got = sl.params.values(clean.model)
    assert abs(float(got["a"]) - 1.1) < 0.02 and abs(float(got["b"]) - 0.9) < 0.02
    # without the operator the corrupted components do enter the loss
    whole = cfg.replace(observed=None, steps=1)
    bad = sl.fit(step, jnp.asarray(corrupt), whole, progress=False).history["loss"][0]
    good = sl.fit(step, ks_data, whole, progress=False).history["loss"][0]
    assert bad - good > 0.5  # the unit-variance noise on 24 of 32 components: ≈ 0.75
    with pytest.raises(ValueError, match="observed"):
        sl.TrainConfig(observed=(0, -1))


def test_a_checkpoint_from_before_a_new_config_field_resumes(ks_data, tmp_path):
    """A field added to TrainConfig since a checkpoint was written, left at its default,
    does not block resuming it."""
    step = sl.solvers.ETDRK4(_ks(0.85, 1.15), 0.25)
    cfg = sl.TrainConfig(steps=4, batch_size=4, horizon=3, checkpoint_every=2)
    sl.fit(step, ks_data, cfg, progress=False, checkpoint_dir=tmp_path)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    del meta["config"]["observed"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    res = sl.fit(step, ks_data, cfg, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert len(res.history["loss"]) == 4


def test_a_kill_inside_a_checkpoint_write_leaves_a_readable_pair(tmp_path, monkeypatch):
    """A kill after the new JSON is written but before the new leaves replace the old
    ones (the window that made a resumed run refuse its checkpoint) is completed on load;
    a kill before the JSON leaves the previous checkpoint intact."""
    from scilayers.training import _fit

    old, new = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
    _fit.save_checkpoint(tmp_path, old, {"step": 1})
    real_replace = os.replace

    def killed(src, dst):  # the process dies at the final move
        if str(src).endswith("checkpoint.next.eqx"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(_fit.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _fit.save_checkpoint(tmp_path, new, {"step": 2})
    monkeypatch.setattr(_fit.os, "replace", real_replace)
    tree, meta = _fit.load_checkpoint(tmp_path, old)
    assert meta["step"] == 2 and np.all(np.asarray(tree["w"]) == 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.eqx", "checkpoint.json"]
    # a kill before the JSON: the pending leaves are ignored, the last pair is read
    (tmp_path / "checkpoint.next.eqx").write_bytes(b"partial")
    tree, meta = _fit.load_checkpoint(tmp_path, old)
    assert meta["step"] == 2 and np.all(np.asarray(tree["w"]) == 1)
