"""The programs `test_distributed.py` runs in subprocesses (the device count of a process is
fixed by ``XLA_FLAGS`` before JAX starts, so every multi-device check needs its own
process).

``python _distributed_worker.py checks OUT.json``: with 4 forced host devices, sharded vs
unsharded training, ensembles, rollouts and truth generation, written to ``OUT.json``.

``python _distributed_worker.py fit CKPT STEPS OUT.json``: one process of a multi-process
run (`scilayers.distributed.initialize` reads ``SCILAYERS_COORDINATOR`` & co.): a sharded
`fit` with checkpoints in CKPT, resumed if CKPT holds one; process 0 writes OUT.json. With
``DIE_AT_CHECKPOINT=K`` process 1 kills itself (SIGKILL) once process 0 has written the
checkpoint of step K: a process lost mid-run.

``python _distributed_worker.py study OUT [--resume]``: one process of a multi-process
run of the (tiny) Burgers study through the engine; every process writes its methods'
in-domain MSE to ``OUT/process<i>.json`` (results go to OUT as in any run).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402

import scilayers as sl  # noqa: E402

N = 32
CONFIG = sl.TrainConfig(steps=4, batch_size=8, horizon=5, val_every=100, schedule="constant",
                        checkpoint_every=2)  # fmt: skip


def truth() -> np.ndarray:
    """6 KS trajectories (a = b = 1) of 31 states."""
    model = sl.models.KuramotoSivashinsky(length=22.0, n=N, a=1.0, b=1.0)
    step = sl.solvers.ETDRK4(model, dt=0.25)
    u0 = jax.vmap(model.initial_condition)(jax.random.split(jax.random.key(0), 6))
    return np.asarray(jax.vmap(lambda u: sl.rollout(step, u, 30, check_finite=False))(u0))


def problem(data=None):
    """``(model, data)``: a KS hybrid (θ_s a, b mis-specified; a residual MLP) and the
    `truth` trajectories: ``data`` if given, else read from the ``.npy`` file
    ``WORKER_DATA`` names (made once by the test, not compiled again in every process),
    else made here."""
    path = os.environ.get("WORKER_DATA")
    if data is None:
        data = truth() if path is None else np.load(path)
    physics = sl.models.KuramotoSivashinsky(length=22.0, n=N, a=sl.Param(0.8), b=sl.Param(1.2))
    net = sl.nn.MLP(N, N, width=16, depth=1, key=jax.random.key(1), final_scale=0.01)
    return sl.Hybrid(sl.solvers.ETDRK4(physics, dt=0.25), net, coupling="residual"), data


def flat(model) -> np.ndarray:
    """Every array of ``model`` in one vector."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    return np.concatenate([np.ravel(np.asarray(x)) for x in leaves])


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(flat(a) - flat(b))))


def _all_reduces(config, model, data) -> int:
    """How many all-reduce ops the compiled training step of ``config`` holds (the
    compiler's gradient reduction over the batch split); inputs laid out as `fit` lays
    them, so the compilation is `fit`'s (cached)."""
    stage = sl.training.stages_for(config)[0]
    tr, static = sl.training.split_trainable(model, stage)
    opt = sl.training.init_opt_state(config, stage, tr)
    args = (tr, opt, static, jax.numpy.asarray(data))
    if config.shard:
        args = sl.distributed.replicate(args)
    hyper = dict(sl.training.loss_weights(config), lr_scale=jax.numpy.asarray(1.0))
    fn = sl.training.compiled_train_step(config, stage, config.horizon)
    compiled = fn.lower(*args, jax.random.key(0), hyper).compile()
    return compiled.compiled.as_text().count("all-reduce(")


def checks(out: Path) -> None:
    res: dict = {"devices": jax.device_count()}
    model, data = problem()
    t = time.perf_counter()
    cfg = CONFIG.replace(checkpoint_every=0)
    plain = sl.fit(model, data, cfg, progress=False)
    sharded = sl.fit(model, data, cfg.replace(shard=True), progress=False)
    res["fit"] = {
        "max_diff": _max_diff(plain.model, sharded.model),
        "loss_diff": float(np.max(np.abs(plain.history["loss"] - sharded.history["loss"]))),
        "theta_moved": float(abs(sl.params.values(sharded.model)["a"] - 0.8)),
        "devices": sharded.memory["devices"],
        "all_reduce_sharded": _all_reduces(cfg.replace(shard=True), model, data),
        "all_reduce_plain": _all_reduces(cfg, model, data),
        "seconds": time.perf_counter() - t,
    }
    try:
        sl.fit(model, data, CONFIG.replace(batch_size=6, shard=True), progress=False)
        res["indivisible"] = None
    except ValueError as e:
        res["indivisible"] = str(e)

    t = time.perf_counter()
    build = lambda k: eqx.tree_at(  # noqa: E731
        lambda h: h.net, model, sl.nn.MLP(N, N, width=16, depth=1, key=k, final_scale=0.01)
    )
    members = sl.uq.init_members(build, jax.random.key(3), 6, theta="jitter")
    cfg = CONFIG.replace(steps=2, batch_size=4, checkpoint_every=0)
    ens = sl.uq.train_ensemble(members, data, cfg)
    ens_sharded = sl.uq.train_ensemble(members, data, cfg.replace(shard=True))
    roll = sl.uq.ensemble_rollout(ens.models, data[:3, 0], 10)
    roll_sharded = sl.uq.ensemble_rollout(ens.models, data[:3, 0], 10, shard=True)
    res["ensemble"] = {
        "members": len(ens_sharded.theta["a"]["members"]),
        "max_diff": _max_diff(ens.models, ens_sharded.models),
        "theta_spread": float(np.std(ens_sharded.theta["a"]["members"])),
        "loss_diff": float(np.max(np.abs(ens.history["loss"] - ens_sharded.history["loss"]))),
        "rollout_diff": float(np.max(np.abs(np.asarray(roll) - np.asarray(roll_sharded)))),
        "seconds": time.perf_counter() - t,
    }

    t = time.perf_counter()
    step = model.step
    u0 = np.concatenate([data[:, 0], data[:1, 3]])  # 7 states: padded to 8 on 4 devices
    rollouts = sl.distributed.sharded_map(_truth_rollout(step), u0)
    reference = jax.vmap(_truth_rollout(step))(u0)
    cfg = sl.data.KSDataConfig(trajectories=6, steps=8, n=N, burn_in=1.0, batch_size=5,
                               ood_fraction=0.0)  # fmt: skip
    ds = sl.data.generate_ks(cfg, progress=False)
    res["generation"] = {
        "rollout_diff": float(np.max(np.abs(rollouts - np.asarray(reference)))),
        "shape": list(rollouts.shape),
        "ks": np.asarray(ds["u"].values, dtype=float).tolist(),
        "seconds": time.perf_counter() - t,
    }
    out.write_text(json.dumps(res))


class _truth_rollout(eqx.Module):
    """The rollout of one initial state (a Module, so `sharded_map` compiles it once)."""

    step: eqx.Module

    def __call__(self, u0):
        return sl.rollout(self.step, u0, 12, check_finite=False)


def _die_at(k: int, ckpt: Path) -> None:
    """On process 1: SIGKILL itself right after the checkpoint of global step ``k`` is on
    disk (process 0 writes it; process 1 only gathers)."""
    from scilayers.training import _fit

    save = _fit._Checkpoints.save

    def patched(self, run, opt_state, validation):
        save(self, run, opt_state, validation)
        if run.global_step == k and jax.process_index() == 1:
            meta = ckpt / "checkpoint.json"
            for _ in range(2000):
                if meta.exists() and json.loads(meta.read_text())["global_step"] == k:
                    break
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)

    _fit._Checkpoints.save = patched


def fit(ckpt: Path, steps: int, out: Path) -> None:
    sl.distributed.initialize()
    if os.environ.get("DIE_AT_CHECKPOINT"):
        _die_at(int(os.environ["DIE_AT_CHECKPOINT"]), ckpt)
    model, data = problem()
    cfg = CONFIG.replace(steps=steps, shard=True)
    t = time.perf_counter()
    res = sl.fit(model, data, cfg, checkpoint_dir=ckpt, resume=True, progress=False)
    if sl.distributed.is_writer():
        out.write_text(json.dumps({
            "params": flat(res.model).tolist(),
            "resumed_from": res.resumed_from,
            "processes": jax.process_count(),
            "devices": jax.device_count(),
            "mesh_devices": res.memory["devices"],
            "seconds": time.perf_counter() - t,
        }))  # fmt: skip


def study(out: Path, resume: bool) -> None:
    sl.distributed.initialize()
    from scilayers.baselines import PINNConfig
    from scilayers.experiments import run_study
    from scilayers.experiments.burgers import PRESETS, BurgersStudy

    tiny = PRESETS["quick"].replace(
        preset="tiny", trajectories=24, context_steps=3, corr_steps=10, main_horizon=5,
        horizons=(2, 5), field_steps=6, data_sizes=(), lambda_sweep=(0.0,),
        closure_variants=("unrestricted",), pinn_trajectories=2, checkpoint_every=2,
        pinn=PINNConfig(width=8, depth=2, adam_steps=5, lbfgs_steps=3, n_collocation=16,
                        n_collocation_lbfgs=16),
        train=sl.TrainConfig(steps=4, batch_size=4, horizon=3, val_every=2),
    )  # fmt: skip
    t = time.perf_counter()
    res = run_study(BurgersStudy(tiny), [0], out, resume=resume, progress=False,
                    log=lambda *_: None)  # fmt: skip
    mine = {k: v["id_mse"]["mean"] for k, v in res["methods"].items()}
    record = {"id_mse": mine, "seconds": time.perf_counter() - t}
    (out / f"process{jax.process_index()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    if sys.argv[1] == "checks":
        checks(Path(sys.argv[2]))
    elif sys.argv[1] == "fit":
        fit(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    elif sys.argv[1] == "study":
        study(Path(sys.argv[2]), "--resume" in sys.argv[3:])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
