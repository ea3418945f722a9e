"""`fit`: gradient-based training of θ_s and θ_ml through a differentiable solver."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from ..hybrid import Hybrid
from ..losses import closure_magnitude, physics_loss, prior_loss, rollout_loss
from ..params import is_param, network, scientific, values
from ._config import TrainConfig


class TrainingDiverged(RuntimeError):
    """Training produced non-finite losses or gradients that a lower learning rate did not
    cure; the message names the step and the remedy."""


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    train_theta: bool
    train_net: bool
    network_on: bool


@dataclass
class FitResult:
    """What `fit` returns: the trained model, its history and bookkeeping."""

    model: Any
    history: dict[str, np.ndarray]
    config: TrainConfig
    seconds: float
    resumed_from: int | None = None


def stages_for(config: TrainConfig) -> list[Stage]:
    """The stages a strategy runs, with their step counts."""
    if config.strategy == "joint":
        return [Stage("joint", config.steps, True, True, True)]
    if config.strategy == "fixed":
        return [Stage("fixed", config.steps, False, True, True)]
    fr = np.asarray(config.stage_fractions, dtype=float)
    counts = np.floor(fr / fr.sum() * config.steps).astype(int)
    counts[np.argmax(fr)] += config.steps - counts.sum()
    out = [
        Stage("calibrate", int(counts[0]), True, False, False),
        Stage("network", int(counts[1]), False, True, True),
        Stage("finetune", int(counts[2]), True, True, True),
    ]
    return [s for s in out if s.steps > 0]


def _view(model, stage: Stage):
    if not stage.network_on and isinstance(model, Hybrid):
        return model.step
    return model


def _false_like(model):
    return jtu.tree_map(lambda _: False, model, is_leaf=is_param)


def _split(model, stage: Stage):
    spec_s = scientific(model) if stage.train_theta else _false_like(model)
    spec_ml = network(model) if stage.train_net else _false_like(model)
    theta, rest = eqx.partition(model, spec_s, is_leaf=is_param)
    net, static = eqx.partition(rest, spec_ml, is_leaf=is_param)
    return (theta, net), static


def _combine(trainable, static):
    return eqx.combine(trainable[0], trainable[1], static, is_leaf=is_param)


def _tree_norm(tree):
    leaves = jtu.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in leaves)) if leaves else jnp.zeros(())


def _optimizer(lr: float, steps: int, schedule: str):
    if schedule == "cosine" and steps > 1:
        lr = optax.cosine_decay_schedule(lr, steps, alpha=0.1)
    return optax.adam(lr)


def _horizon_at(config: TrainConfig, step: int, total: int) -> int:
    sched = config.horizon_schedule or (config.horizon,)
    idx = min(len(sched) - 1, step * len(sched) // max(total, 1))
    return int(sched[idx])


def sample_windows(data, key, batch: int, horizon: int):
    """``batch`` random windows of ``horizon + 1`` consecutive states from ``data``
    (trajectories, time, *state), drawn with ``key``."""
    kt, ks = jax.random.split(key)
    n_traj, n_time = data.shape[0], data.shape[1]
    traj = jax.random.randint(kt, (batch,), 0, n_traj)
    start = jax.random.randint(ks, (batch,), 0, n_time - horizon)
    idx = start[:, None] + jnp.arange(horizon + 1)[None, :]
    return data[traj[:, None], idx]


LAMBDAS = ("lambda_data", "lambda_physics", "lambda_prior", "lambda_closure")


def loss_weights(config: TrainConfig) -> dict:
    """The loss weights of ``config`` as arrays (traced, so changing them never recompiles)."""
    return {k: jnp.asarray(getattr(config, k), dtype=float) for k in LAMBDAS}


def _structural(config: TrainConfig) -> TrainConfig:
    """``config`` with everything that does not change the compiled program normalised:
    the seed, and each λ reduced to whether its term is computed at all."""
    return config.replace(seed=0, **{k: float(getattr(config, k) > 0) for k in LAMBDAS})


def make_loss(config: TrainConfig, stage: Stage):
    """The total loss ``λ_d L_data + λ_p L_physics + λ_prior (-log p) + λ_c ||closure||²``
    of a model on a batch of windows, ``loss_fn(model, windows, weights) -> (loss, parts)``.
    A term is computed only where ``config`` gives it a positive λ; the values of the λ come
    from ``weights`` (see `loss_weights`)."""

    def loss_fn(model, windows, weights):
        view = _view(model, stage)
        data_l, pred = rollout_loss(view, windows, config.memory)
        parts = {"data": data_l}
        total = weights["lambda_data"] * data_l
        if config.lambda_physics > 0:
            parts["physics"] = physics_loss(view, pred)
            total = total + weights["lambda_physics"] * parts["physics"]
        if config.lambda_prior > 0:
            parts["prior"] = prior_loss(view)
            total = total + weights["lambda_prior"] * parts["prior"]
        if config.lambda_closure > 0:
            states = windows[:, :-1].reshape(-1, *windows.shape[2:])
            parts["closure"] = closure_magnitude(view, states)
            total = total + weights["lambda_closure"] * parts["closure"]
        return total, parts

    return loss_fn


def make_train_step(config: TrainConfig, stage: Stage, opt_theta, opt_net, horizon: int):
    """A pure step ``(trainable, opt_state, static, data, key, hyper) -> (trainable,
    opt_state, loss, parts, ok)``, with ``hyper`` holding ``lr_scale`` and the loss weights
    (`loss_weights`). A non-finite loss or gradient rejects the step (the
    returned state is the input state) and ``ok`` is false. Pure in all arguments, so an
    ensemble can ``vmap`` it over member keys and a batch can be sharded."""
    loss_fn = make_loss(config, stage)

    def step(trainable, opt_state, static, data, key, hyper):
        windows = sample_windows(data, key, config.batch_size, horizon)

        def f(tr):
            return loss_fn(_combine(tr, static), windows, hyper)

        (loss, parts), grads = jax.value_and_grad(f, has_aux=True)(trainable)
        leaves = jtu.tree_leaves(grads)
        gnorm = _tree_norm(grads)
        ok = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves] or [jnp.array(True)])
        )
        if config.clip_norm is not None:
            factor = jnp.minimum(1.0, config.clip_norm / (gnorm + 1e-12))
            grads = jtu.tree_map(lambda g: g * factor, grads)
        grads = jtu.tree_map(lambda g: jnp.where(ok, g, 0.0), grads)
        upd_t, st_t = opt_theta.update(grads[0], opt_state[0], trainable[0])
        upd_n, st_n = opt_net.update(grads[1], opt_state[1], trainable[1])
        updates = jtu.tree_map(lambda u: u * hyper["lr_scale"], (upd_t, upd_n))
        new = eqx.apply_updates(trainable, updates)
        new_state = (st_t, st_n)

        def pick(a, b):
            return jnp.where(ok, a, b)

        trainable = jtu.tree_map(pick, new, trainable)
        opt_state = jtu.tree_map(pick, new_state, opt_state)
        parts = dict(parts, grad_norm=gnorm)
        return trainable, opt_state, loss, parts, ok

    return step


def _optimizers(config: TrainConfig, stage: Stage):
    return (
        _optimizer(config.lr_theta, stage.steps, config.schedule),
        _optimizer(config.lr_net, stage.steps, config.schedule),
    )


def _init_opt_state(config: TrainConfig, stage: Stage, trainable):
    opt_t, opt_n = _optimizers(config, stage)
    return (opt_t.init(trainable[0]), opt_n.init(trainable[1]))


@functools.lru_cache(maxsize=64)
def _compiled_step(config: TrainConfig, stage: Stage, horizon: int):
    """A jitted train step, shared by every `fit` with the same config (up to the seed),
    stage and horizon, so seeds and ensemble members reuse one compilation."""
    opt_t, opt_n = _optimizers(config, stage)
    return eqx.filter_jit(make_train_step(config, stage, opt_t, opt_n, horizon))


@functools.lru_cache(maxsize=64)
def _val_loss_fn(stage: Stage, memory: str):
    @eqx.filter_jit
    def val(model, windows):
        return rollout_loss(_view(model, stage), windows, memory)[0]

    return val


# ----------------------------------------------------------------------------- checkpoints


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write_bytes(path: Path, writer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(directory: Path, tree, meta: dict) -> None:
    """Atomically write ``tree`` (leaves) and ``meta`` (JSON, with the leaves' hash)."""
    directory = Path(directory)
    leaves = directory / "checkpoint.eqx"
    _atomic_write_bytes(leaves, lambda f: eqx.tree_serialise_leaves(f, tree))
    meta = dict(meta, sha256=_sha256(leaves))
    _atomic_write_bytes(directory / "checkpoint.json", lambda f: f.write(json.dumps(meta).encode()))


def read_checkpoint_meta(directory: Path) -> dict | None:
    """The JSON metadata of the checkpoint in ``directory`` (``None`` if there is none)."""
    meta_path = Path(directory) / "checkpoint.json"
    if not meta_path.exists():
        return None
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"checkpoint {meta_path} is corrupt ({e}); delete {directory} to start afresh."
        ) from e


def load_checkpoint(directory: Path, template) -> tuple[Any, dict] | None:
    """Read a checkpoint written by `save_checkpoint` into ``template``'s structure, or
    ``None`` if there is none. A corrupt or mismatched checkpoint raises `ValueError`."""
    directory = Path(directory)
    meta_path, leaves = directory / "checkpoint.json", directory / "checkpoint.eqx"
    meta = read_checkpoint_meta(directory)
    if meta is None:
        return None
    if not leaves.exists() or _sha256(leaves) != meta.get("sha256"):
        raise ValueError(
            f"checkpoint {leaves} is missing or does not match its hash in {meta_path} "
            f"(corrupt or partially written); delete {directory} to start afresh."
        )
    try:
        tree = eqx.tree_deserialise_leaves(leaves, template)
    except Exception as e:  # noqa: BLE001 - any decoding failure means the same thing
        raise ValueError(
            f"checkpoint {leaves} does not fit this model/config ({e}); use a fresh "
            f"checkpoint directory."
        ) from e
    return tree, meta


# ----------------------------------------------------------------------------- fit


def _check_data(data, model, name: str):
    arr = np.asarray(data)
    if arr.ndim < 3:
        raise ValueError(
            f"{name} must have shape (trajectories, time, *state), got {arr.shape}; wrap a "
            f"single trajectory as data[None]."
        )
    shape = getattr(model, "state_shape", None)
    if shape is not None and tuple(arr.shape[2:]) != tuple(shape):
        raise ValueError(
            f"{name} states have shape {arr.shape[2:]} but the model expects {tuple(shape)}."
        )
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} contains NaN/Inf (first at index {tuple(int(i) for i in bad)}); remove "
            f"or impute those values before training."
        )
    return jnp.asarray(arr)


def _theta_row(model) -> dict[str, float]:
    out = {}
    for k, v in values(model).items():
        v = np.asarray(v)
        out[k] = float(v) if v.size == 1 else float(v.mean())
    return out


def fit(
    model,
    data,
    config: TrainConfig | None = None,
    *,
    val=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` (a `Hybrid`, a stepper, a `NeuralStepper`) on trajectories.

    The loss unrolls the model from random windows of ``data`` (shape
    ``(trajectories, time, *state)``) and combines data, physics, prior and closure terms
    per `TrainConfig`. θ_s and θ_ml get separate Adam optimisers and learning rates; the
    strategy decides which are trained when. Non-finite steps are rejected and the
    learning rate lowered; checkpoints are atomic and resuming from one reproduces the
    uninterrupted run.

    **Arguments:**

    - `model`: the model to train; `data`: training trajectories; `config`: `TrainConfig`.
    - `val`: optional validation trajectories for early stopping / best-state selection.
    - `checkpoint_dir`: where checkpoints go (needed for `checkpoint_every` and `resume`).
    - `resume`: continue from the checkpoint in `checkpoint_dir` if there is one.
    - `progress`: show a Rich progress bar with the loss and current θ_s.

    **Returns:** a `FitResult` with the trained `model` and `history` (per step: losses,
    θ_s values, learning-rate scale, rejected flags; per validation: val loss).
    """
    config = TrainConfig() if config is None else config
    data = _check_data(data, model, "data")
    val_arr = None if val is None else _check_data(val, model, "val")
    max_h = max(config.horizon_schedule or (config.horizon,))
    if data.shape[1] < max_h + 1:
        raise ValueError(
            f"trajectories have {data.shape[1]} states but the horizon needs {max_h + 1}; "
            f"lower the horizon or provide longer trajectories."
        )
    if (config.checkpoint_every or resume) and checkpoint_dir is None:
        raise ValueError("checkpointing and resume need checkpoint_dir=...")
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckdir is not None and not resume and (ckdir / "checkpoint.json").exists():
        raise ValueError(
            f"{ckdir} already holds a checkpoint; pass resume=True (CLI: --resume) to "
            f"continue it, or choose an empty directory."
        )

    stages = stages_for(config)
    total_steps = sum(s.steps for s in stages)
    base_key = jax.random.key(config.seed)
    hist: dict[str, list] = {
        k: []
        for k in (
            "step",
            "stage",
            "loss",
            "data",
            "physics",
            "prior",
            "closure",
            "grad_norm",
            "lr_scale",
            "rejected",
        )
    }
    theta_hist: dict[str, list] = {k: [] for k in _theta_row(model)}
    val_hist: dict[str, list] = {"step": [], "loss": []}
    lr_scale = 1.0
    start_stage, start_step, resumed_from = 0, 0, None
    elapsed_before = 0.0
    t0 = time.perf_counter()

    meta_cfg = config.to_dict()

    def state_template(stage_idx, mdl):
        st = stages[stage_idx]
        trainable, _ = _split(mdl, st)
        opt_state = _init_opt_state(config, st, trainable)
        return {"model": mdl, "opt": opt_state, "best": mdl}

    restored = None
    if resume and ckdir is not None:
        probe = read_checkpoint_meta(ckdir)
        if probe is not None:
            if probe.get("config") != meta_cfg:
                raise ValueError(
                    f"the checkpoint in {ckdir} was written with a different config; resume "
                    f"with the same config or use a fresh directory."
                )
            loaded = load_checkpoint(ckdir, state_template(probe["stage"], model))
            assert loaded is not None
            restored, meta = loaded
            model = restored["model"]
            start_stage, start_step = meta["stage"], meta["stage_step"]
            lr_scale = meta["lr_scale"]
            hist, theta_hist, val_hist = meta["history"], meta["theta"], meta["val"]
            elapsed_before = meta.get("seconds", 0.0)
            resumed_from = meta["global_step"]

    prog = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        prog = Progress(
            TextColumn("[bold]{task.fields[stage]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=True,
        )
        prog.start()
        task = prog.add_task("fit", total=total_steps, stage="", info="")
        prog.update(task, completed=sum(s.steps for s in stages[:start_stage]) + start_step)

    global_step = sum(s.steps for s in stages[:start_stage]) + start_step
    weights = loss_weights(config)
    try:
        for si in range(start_stage, len(stages)):
            stage = stages[si]
            trainable, static = _split(model, stage)
            opt_state = _init_opt_state(config, stage, trainable)
            best_model, best_val = model, np.inf
            first = 0
            if restored is not None and si == start_stage:
                opt_state = restored["opt"]
                best_model = restored["best"]
                best_val = meta.get("best_val")
                best_val = np.inf if best_val is None else best_val
                first = start_step
                restored = None
            steps_fns: dict[int, Any] = {}
            val_fn = _val_loss_fn(stage, config.memory)
            val_windows = None
            if val_arr is not None:
                val_windows = val_arr[:, : max_h + 1]
            rejects, since_best = 0, 0
            stage_key = jax.random.fold_in(base_key, si)
            for k in range(first, stage.steps):
                h = _horizon_at(config, k, stage.steps)
                if h not in steps_fns:
                    steps_fns[h] = _compiled_step(_structural(config), stage, h)
                key = jax.random.fold_in(stage_key, k)
                trainable, opt_state, loss, parts, ok = steps_fns[h](
                    trainable,
                    opt_state,
                    static,
                    data,
                    key,
                    dict(weights, lr_scale=jnp.asarray(lr_scale)),
                )
                ok = bool(ok)
                model = _combine(trainable, static)
                hist["step"].append(global_step)
                hist["stage"].append(si)
                hist["loss"].append(float(loss))
                for name in ("data", "physics", "prior", "closure", "grad_norm"):
                    hist[name].append(float(parts[name]) if name in parts else 0.0)
                hist["lr_scale"].append(lr_scale)
                hist["rejected"].append(not ok)
                row = _theta_row(model)
                for name, v in row.items():
                    theta_hist[name].append(v)
                if ok:
                    rejects = 0
                else:
                    rejects += 1
                    lr_scale *= config.reject_factor
                    if rejects >= config.max_rejects:
                        where = f" ({ckdir} holds the last good checkpoint)" if ckdir else ""
                        raise TrainingDiverged(
                            f"training diverged at step {global_step} (stage "
                            f"{stage.name!r}): loss or gradients were NaN/Inf for "
                            f"{rejects} consecutive steps even after lowering the learning "
                            f"rate to {lr_scale:.3g}x{where}. Remedy: lower lr_theta/lr_net "
                            f"or the horizon, reduce dt, or bound θ_s with a constraint."
                        )
                global_step += 1
                stop = False
                if val_windows is not None and (
                    (k + 1) % config.val_every == 0 or k + 1 == stage.steps
                ):
                    vl = float(val_fn(model, val_windows))
                    val_hist["step"].append(global_step)
                    val_hist["loss"].append(vl)
                    if vl < best_val:
                        best_val, best_model, since_best = vl, model, 0
                    else:
                        since_best += 1
                        if config.patience is not None and since_best >= config.patience:
                            stop = True
                if (
                    ckdir is not None
                    and config.checkpoint_every
                    and (global_step % config.checkpoint_every == 0)
                ):
                    save_checkpoint(
                        ckdir,
                        {"model": model, "opt": opt_state, "best": best_model},
                        {
                            "stage": si,
                            "stage_step": k + 1,
                            "global_step": global_step,
                            "lr_scale": lr_scale,
                            "best_val": best_val if np.isfinite(best_val) else None,
                            "history": hist,
                            "theta": theta_hist,
                            "val": val_hist,
                            "config": meta_cfg,
                            "seconds": elapsed_before + time.perf_counter() - t0,
                        },
                    )
                if prog is not None:
                    info = f"loss {float(loss):.3e} " + " ".join(
                        f"{n}={v:.4g}" for n, v in row.items()
                    )
                    prog.update(task, advance=1, stage=stage.name, info=info)
                if stop:
                    if prog is not None:
                        prog.update(task, advance=stage.steps - k - 1)
                    global_step += stage.steps - k - 1
                    break
            if val_windows is not None and np.isfinite(best_val):
                model = best_model
    finally:
        if prog is not None:
            prog.stop()

    history = {k: np.asarray(v) for k, v in hist.items()}
    for name, v in theta_hist.items():
        history[f"theta/{name}"] = np.asarray(v)
    history["val_step"] = np.asarray(val_hist["step"])
    history["val_loss"] = np.asarray(val_hist["loss"])
    seconds = elapsed_before + time.perf_counter() - t0
    return FitResult(model, history, config, seconds, resumed_from)
