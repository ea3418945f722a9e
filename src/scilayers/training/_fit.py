"""`fit`: gradient-based training of θ_s and θ_ml through a differentiable solver."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, PyTree

from .. import distributed
from ..hybrid import Hybrid
from ..losses import closure_magnitude, physics_loss, prior_loss, rollout_loss
from ..models import AbstractModel
from ..params import is_param, network, scientific, unlearned, values
from ._config import EXECUTION_FIELDS, TrainConfig
from ._memory import MemoryPlan, plan_memory, state_struct, step_memory


class TrainingDiverged(RuntimeError):
    """Training produced non-finite losses or gradients that a lower learning rate did not
    cure; the message names the step and the remedy."""


@dataclass(frozen=True)
class Stage:
    """One stage of a strategy (`stages_for`): its name, its number of steps, which groups
    it trains (θ_s, θ_ml) and whether a `Hybrid`'s network is applied at all."""

    name: str
    steps: int
    train_theta: bool
    train_net: bool
    network_on: bool


@dataclass
class FitResult:
    """What `fit` returns: the trained model, its history and bookkeeping.

    ``trained`` counts, per stage name, the entries of θ_s and θ_ml that stage trains
    (``{"joint": {"theta_s": 2, "theta_ml": 0}}``); ``notes`` says in words what was not
    trained (an empty group, frozen floating-point fields). ``memory`` holds the number
    of ``devices`` the batch was split over and, under ``steps``, per compiled step
    (``"<stage>/<horizon>"``) the rollout memory ``plan`` (`MemoryPlan.to_dict`: policy,
    estimates, budget) and the ``measured`` memory of the compiled step (`step_memory`,
    MiB per device); `peak_memory_mb` is the largest measured peak."""

    model: Any
    history: dict[str, np.ndarray]
    config: TrainConfig
    seconds: float
    resumed_from: int | None = None
    trained: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def peak_memory_mb(self) -> float | None:
        """The largest peak memory of a compiled training step of this run, in MiB (XLA's
        ``memory_analysis``, per device; ``None`` where the backend does not report it)."""
        peaks = [m["measured"]["peak"] for m in self.memory.get("steps", {}).values()
                 if m.get("measured")]  # fmt: skip
        return max(peaks) if peaks else None


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


class Trainable(NamedTuple):
    """A pair of trees, one per parameter group: θ_s (the raw values of free `Param`s) and
    θ_ml (network arrays). Each is a partial copy of the model with ``None`` elsewhere, as
    ``eqx.partition`` gives. The gradients, updates and optimiser states of a stage come
    in the same pair; a NamedTuple is a pytree, so ``jax`` transforms see straight through."""

    theta_s: PyTree
    theta_ml: PyTree


def _false_like(model):
    return jtu.tree_map(lambda _: False, model, is_leaf=is_param)


def split_trainable(model, stage: Stage) -> tuple[Trainable, PyTree]:
    """Split ``model`` into what ``stage`` trains and the rest: ``(Trainable, static)``.
    A group the stage does not train is an all-``None`` tree (it lands in ``static``);
    `combine_trainable` undoes the split."""
    spec_s = scientific(model) if stage.train_theta else _false_like(model)
    spec_ml = network(model) if stage.train_net else _false_like(model)
    theta_s, rest = eqx.partition(model, spec_s, is_leaf=is_param)
    theta_ml, static = eqx.partition(rest, spec_ml, is_leaf=is_param)
    return Trainable(theta_s, theta_ml), static


def combine_trainable(trainable: Trainable, static: PyTree):
    """The model again, from `split_trainable`'s ``(trainable, static)``."""
    return eqx.combine(trainable.theta_s, trainable.theta_ml, static, is_leaf=is_param)


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


class Trajectories(NamedTuple):
    """Training trajectories with their start times: ``states`` of shape
    ``(trajectories, time, *state)``, states ``dt`` (the model's step) apart, and ``t0`` of
    shape ``(trajectories,)``, the time of each trajectory's first state. A train step
    (`make_train_step`) takes this or the bare ``states`` array (every trajectory then
    starts at ``t = 0``)."""

    states: Array
    t0: Array


def _unpack(data) -> tuple[Array, Array | None]:
    if isinstance(data, Trajectories):
        return data.states, data.t0
    return data, None


def sample_timed_windows(data, key, batch: int, horizon: int, dt: float = 1.0):
    """``(windows, t_start)``: ``batch`` random windows of ``horizon + 1`` consecutive
    states from ``data`` (an array of shape ``(trajectories, time, *state)`` or
    `Trajectories`), drawn with ``key``, and the time of each window's first state,
    ``t0[i] + s·dt`` for a window from index ``s`` of trajectory ``i`` (``t0 = 0`` for a
    bare array). The same windows as `sample_windows` for the same key."""
    states, t0 = _unpack(data)
    kt, ks = jax.random.split(key)
    n_traj, n_time = states.shape[0], states.shape[1]
    traj = jax.random.randint(kt, (batch,), 0, n_traj)
    start = jax.random.randint(ks, (batch,), 0, n_time - horizon)
    idx = start[:, None] + jnp.arange(horizon + 1)[None, :]
    dtype = jnp.result_type(float)
    t_start = dt * start.astype(dtype)
    if t0 is not None:
        t_start = jnp.asarray(t0, dtype)[traj] + t_start
    return states[traj[:, None], idx], t_start


def sample_windows(data, key, batch: int, horizon: int):
    """``batch`` random windows of ``horizon + 1`` consecutive states from ``data``
    (trajectories, time, *state), drawn with ``key`` (`sample_timed_windows` also gives
    their start times)."""
    return sample_timed_windows(data, key, batch, horizon)[0]


def _step_dt(model) -> float:
    """The time between consecutive data states: the model's step ``dt`` (1 without one)."""
    dt = getattr(model, "dt", None)
    return 1.0 if dt is None else dt


LAMBDAS = ("lambda_data", "lambda_physics", "lambda_prior", "lambda_closure")


def loss_weights(config: TrainConfig) -> dict:
    """The loss weights of ``config`` as arrays (traced, so changing them never recompiles)."""
    return {k: jnp.asarray(getattr(config, k), dtype=float) for k in LAMBDAS}


def _structural(config: TrainConfig) -> TrainConfig:
    """``config`` with everything that does not change the compiled program normalised:
    the seed, and each λ reduced to whether its term is computed at all."""
    return config.replace(seed=0, **{k: float(getattr(config, k) > 0) for k in LAMBDAS})


def _devices(config: TrainConfig) -> int:
    return distributed.batch_mesh().size if config.shard else 1


def memory_plan(config: TrainConfig, step, windows) -> MemoryPlan:
    """The rollout memory policy of a training step of ``step`` on ``windows`` (shape
    ``(batch, time, *state)``; arrays or tracers) under ``config``'s `memory` and
    `memory_budget_mb` (`plan_memory`), for the part of the batch one device holds."""
    batch = windows.shape[0] // _devices(config)
    horizon = windows.shape[1] - 1
    return plan_memory(step, state_struct(windows), horizon, batch, config.memory,
                       config.memory_budget_mb)  # fmt: skip


def make_loss(config: TrainConfig, stage: Stage):
    """The total loss ``λ_d L_data + λ_p L_physics + λ_prior (-log p) + λ_c ||closure||²``
    of a model on a batch of windows, ``loss_fn(model, windows, weights, t0=None) ->
    (loss, parts)``; window ``b`` starts at time ``t0[b]`` (``None``: 0). A term is
    computed only where ``config`` gives it a positive λ; the values of the λ come from
    ``weights`` (see `loss_weights`). The rollout memory policy is ``config.memory``, or
    chosen from ``config.memory_budget_mb`` when it is ``"auto"`` (`memory_plan`)."""

    def loss_fn(model, windows, weights, t0=None):
        view = _view(model, stage)
        memory = config.memory if config.memory != "auto" else memory_plan(config, view,
                                                                            windows).policy
        data_l, pred = rollout_loss(view, windows, memory, t0, config.observed)
        parts = {"data": data_l}
        total = weights["lambda_data"] * data_l
        if config.lambda_physics > 0:
            parts["physics"] = physics_loss(view, pred, t0)
            total = total + weights["lambda_physics"] * parts["physics"]
        if config.lambda_prior > 0:
            parts["prior"] = prior_loss(view)
            total = total + weights["lambda_prior"] * parts["prior"]
        if config.lambda_closure > 0:
            states = windows[:, :-1].reshape(-1, *windows.shape[2:])
            times = None
            if t0 is not None:
                lags = _step_dt(view) * jnp.arange(windows.shape[1] - 1, dtype=t0.dtype)
                times = (t0[:, None] + lags[None, :]).reshape(-1)
            parts["closure"] = closure_magnitude(view, states, times)
            total = total + weights["lambda_closure"] * parts["closure"]
        if _modulates(view):
            # the θ_s a 'parameter' coupling used, averaged over the batch's states
            states = windows[:, :-1].reshape(-1, *windows.shape[2:])
            eff = jax.vmap(view.effective_theta)(jax.lax.stop_gradient(states))
            for name in view.modulated():
                parts[f"theta_eff/{name}"] = jnp.mean(eff[name])
        return total, parts

    return loss_fn


def make_train_step(
    config: TrainConfig, stage: Stage, opt_theta, opt_net, horizon: int, loss_fn=None
):
    """A pure step ``(trainable, opt_state, static, data, key, hyper) -> (trainable,
    opt_state, loss, parts, ok)``. ``trainable`` and ``opt_state`` are `Trainable` pairs
    (`split_trainable`, `init_opt_state`); ``hyper`` holds ``lr_scale`` and the loss weights
    (`loss_weights`). ``data`` is an array of trajectories or `Trajectories` (with start
    times); windows start at their times (`sample_timed_windows`). A non-finite loss or
    gradient rejects the step (the returned state is the input state) and ``ok`` is false.
    Pure in all arguments, so an ensemble can ``vmap`` it over member keys. With
    ``config.shard`` the windows are laid out split over `scilayers.distributed.batch_mesh`
    (``with_sharding_constraint``); with replicated parameters, XLA partitions the rollouts
    by trajectory and inserts the all-reduce of the gradient itself. ``loss_fn`` (default
    `make_loss` of ``config`` and ``stage``) is called as ``loss_fn(model, windows, hyper,
    t0) -> (loss, parts)``, so any extra inputs it needs travel (traced) in ``hyper``."""
    loss_fn = make_loss(config, stage) if loss_fn is None else loss_fn
    mesh = distributed.batch_mesh() if config.shard else None
    if mesh is not None:
        distributed.check_divisible(config.batch_size, mesh, "TrainConfig.batch_size")

    def step(trainable, opt_state, static, data, key, hyper):
        dt = _step_dt(combine_trainable(trainable, static))
        windows, t_start = sample_timed_windows(data, key, config.batch_size, horizon, dt)
        if mesh is not None:  # the batch split over the devices; XLA partitions the rest
            windows, t_start = distributed.constrain_batch((windows, t_start), mesh)

        def f(tr):
            return loss_fn(combine_trainable(tr, static), windows, hyper, t_start)

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
        upd_s, st_s = opt_theta.update(grads.theta_s, opt_state.theta_s, trainable.theta_s)
        upd_ml, st_ml = opt_net.update(grads.theta_ml, opt_state.theta_ml, trainable.theta_ml)
        updates = jtu.tree_map(lambda u: u * hyper["lr_scale"], Trainable(upd_s, upd_ml))
        new = eqx.apply_updates(trainable, updates)
        new_state = Trainable(st_s, st_ml)

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


def init_opt_state(config: TrainConfig, stage: Stage, trainable: Trainable) -> Trainable:
    """Fresh Adam states for ``trainable`` (one per group, as a `Trainable`) with the
    learning rates and schedule of ``config`` over the steps of ``stage``."""
    opt_s, opt_ml = _optimizers(config, stage)
    return Trainable(opt_s.init(trainable.theta_s), opt_ml.init(trainable.theta_ml))


@functools.lru_cache(maxsize=64)
def _compiled_step(config: TrainConfig, stage: Stage, horizon: int):
    opt_s, opt_ml = _optimizers(config, stage)
    return eqx.filter_jit(make_train_step(config, stage, opt_s, opt_ml, horizon))


def compiled_train_step(config: TrainConfig, stage: Stage, horizon: int):
    """`make_train_step` with ``config``'s optimisers, jitted and shared by every `fit` with
    the same config up to the seed and the λ values (those are traced), stage and horizon,
    so seeds and ensemble members reuse one compilation."""
    return _compiled_step(_structural(config), stage, horizon)


@functools.lru_cache(maxsize=64)
def _val_loss_fn(stage: Stage, memory: str, observed: tuple[int, ...] | None = None):
    @eqx.filter_jit
    def val(model, windows):
        windows, t0 = windows  # the first states of the validation trajectories, and t0
        return rollout_loss(_view(model, stage), windows, memory, t0, observed)[0]

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
    """Write ``tree`` (leaves) and ``meta`` (JSON, with the leaves' hash) so that a kill at
    any instant leaves a readable pair: the new leaves go to ``checkpoint.next.eqx`` first,
    then the JSON that names their hash, then the leaves take the place of the old ones;
    `load_checkpoint` completes that last move if the kill came before it."""
    directory = Path(directory)
    leaves, pending = directory / "checkpoint.eqx", directory / "checkpoint.next.eqx"
    _atomic_write_bytes(pending, lambda f: eqx.tree_serialise_leaves(f, tree))
    meta = dict(meta, sha256=_sha256(pending))
    _atomic_write_bytes(directory / "checkpoint.json", lambda f: f.write(json.dumps(meta).encode()))
    os.replace(pending, leaves)


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
    pending = directory / "checkpoint.next.eqx"
    if pending.exists() and (not leaves.exists() or _sha256(leaves) != meta.get("sha256")):
        if _sha256(pending) == meta.get("sha256"):  # killed between the JSON and the move
            os.replace(pending, leaves)
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


def _check_t0(t0, data, name: str):
    """``t0`` as an array of one start time per trajectory of ``data`` (``None`` stays)."""
    if t0 is None:
        return None
    arr = np.asarray(t0, dtype=float)
    if arr.ndim == 0:
        arr = np.full(data.shape[0], float(arr))
    if arr.shape != (data.shape[0],) or not np.isfinite(arr).all():
        raise ValueError(
            f"{name} must be a finite number or one start time per trajectory, shape "
            f"({data.shape[0]},), got {np.shape(t0)}."
        )
    return jnp.asarray(arr, jnp.result_type(float))


def _modulates(model) -> bool:
    return isinstance(model, Hybrid) and model.coupling == "parameter"


def _theta_row(model) -> dict[str, float]:
    out = {}
    for k, v in values(model).items():
        v = np.asarray(v)
        out[k] = float(v.mean())  # a (1,)-shaped Param too (float() of it is an error)
    return out


# The per-step records of `fit`'s history (and of a checkpoint's "history"), in order.
HISTORY_FIELDS = (
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
_LOSS_PARTS = ("data", "physics", "prior", "closure", "grad_norm")

# Strategies with a single stage, whose runs can be extended by resuming with more `steps`.
EXTENDABLE = ("joint", "fixed")


@dataclass
class _History:
    """What `fit` records, as plain lists (a checkpoint's JSON holds them as they are):
    per step in ``steps`` (`HISTORY_FIELDS`) and ``theta`` (θ_s by name), per validation in
    ``val`` (``step``, ``loss``)."""

    steps: dict[str, list]
    theta: dict[str, list]
    val: dict[str, list]

    @classmethod
    def empty(cls, model) -> _History:
        eff = [f"theta_eff/{k}" for k in model.modulated()] if _modulates(model) else []
        return cls(
            {k: [] for k in (*HISTORY_FIELDS, *eff)},
            {k: [] for k in _theta_row(model)},
            {"step": [], "loss": []},
        )

    @classmethod
    def from_meta(cls, meta: dict) -> _History:
        return cls(meta["history"], meta["theta"], meta["val"])

    def to_meta(self) -> dict:
        return {"history": self.steps, "theta": self.theta, "val": self.val}

    def record_step(self, global_step, stage_idx, loss, parts, lr_scale, ok, model) -> dict:
        """Append one optimiser step; returns the θ_s row it recorded."""
        h = self.steps
        h["step"].append(global_step)
        h["stage"].append(stage_idx)
        h["loss"].append(float(loss))
        for name in _LOSS_PARTS:
            h[name].append(float(parts[name]) if name in parts else 0.0)
        h["lr_scale"].append(lr_scale)
        h["rejected"].append(not ok)
        row = _theta_row(model)
        for name, v in row.items():
            self.theta[name].append(v)
        for key in [k for k in h if k.startswith("theta_eff/")]:
            # a stage with the network off runs the base θ_s
            name = key.removeprefix("theta_eff/")
            v = float(parts[key]) if key in parts else row.get(name, float("nan"))
            h[key].append(v)
            row = dict(row, **{f"{name}_eff": v})
        return row

    def record_val(self, global_step: int, loss: float) -> None:
        self.val["step"].append(global_step)
        self.val["loss"].append(loss)

    def arrays(self) -> dict[str, np.ndarray]:
        """`FitResult.history`: the step records, ``theta/<name>``, ``theta_eff/<name>``
        (``parameter`` coupling), ``val_step``, ``val_loss``."""
        out = {k: np.asarray(v) for k, v in self.steps.items()}
        for name, v in self.theta.items():
            out[f"theta/{name}"] = np.asarray(v)
        out["val_step"] = np.asarray(self.val["step"])
        out["val_loss"] = np.asarray(self.val["loss"])
        return out


@dataclass
class _RunState:
    """Where a run stands and what carries across steps and stages; all of it is what a
    checkpoint holds. ``opt``/``best``/``best_val`` are a restored stage's optimiser state
    and best validated state, consumed when that stage starts."""

    model: Any
    history: _History
    stage: int = 0
    stage_step: int = 0
    global_step: int = 0
    lr_scale: float = 1.0
    seconds_before: float = 0.0
    resumed_from: int | None = None
    opt: Any = None
    best: Any = None
    best_val: float = np.inf
    started: float = dataclasses.field(default_factory=time.perf_counter)
    memory: dict[str, dict] = dataclasses.field(default_factory=dict)

    def seconds(self) -> float:
        """Training time so far, including that of the runs this one resumes."""
        return self.seconds_before + time.perf_counter() - self.started

    def take_restored(self):
        """``(opt, best, best_val)`` restored for the current stage, once; ``None`` after."""
        if self.opt is None:
            return None
        out = (self.opt, self.best, self.best_val)
        self.opt, self.best, self.best_val = None, None, np.inf
        return out


@dataclass
class _Validation:
    """Best-state tracking within one stage: the validation loss on fixed ``windows`` every
    ``every`` steps and at the stage's last step; the best state is kept, and the stage stops
    after ``patience`` evaluations without improvement (``None``: never). Without
    validation windows nothing is evaluated and a stage ends on its last state."""

    loss_fn: Any
    windows: Any
    every: int
    patience: int | None
    best_model: Any
    best_val: float = np.inf
    since_best: int = 0

    def after_step(self, model, k: int, stage_steps: int, global_step: int, history) -> bool:
        """Validate after stage step ``k`` if due; returns whether the stage should stop."""
        if self.windows is None or not ((k + 1) % self.every == 0 or k + 1 == stage_steps):
            return False
        loss = float(self.loss_fn(model, self.windows))
        history.record_val(global_step, loss)
        if loss < self.best_val:
            self.best_val, self.best_model, self.since_best = loss, model, 0
            return False
        self.since_best += 1
        return self.patience is not None and self.since_best >= self.patience

    def final(self, model):
        """The model the stage hands on: its best validated state if it validated any."""
        validated = self.windows is not None and np.isfinite(self.best_val)
        return self.best_model if validated else model


def _check_resumable(saved: dict | None, config: TrainConfig, directory: Path) -> None:
    """Refuse a checkpoint written with another config, naming each differing field with
    its old and new value. Allowed: only `steps` grown, for a strategy in `EXTENDABLE`;
    `EXECUTION_FIELDS` (memory policy and budget, sharding) are free: they change how a
    step is computed, not its result."""
    current = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_FIELDS}
    saved = {} if saved is None else {k: v for k, v in saved.items() if k not in EXECUTION_FIELDS}
    defaults = TrainConfig().to_dict()  # a field added since the checkpoint: its default
    saved = {**{k: v for k, v in defaults.items() if k in current and k not in saved}, **saved}
    missing = "(absent)"
    diff = {
        k: (saved.get(k, missing), current.get(k, missing))
        for k in sorted(set(saved) | set(current))
        if saved.get(k, missing) != current.get(k, missing)
    }
    if not diff:
        return
    if (
        set(diff) == {"steps"}
        and config.strategy in EXTENDABLE
        and isinstance(saved["steps"], int)
        and config.steps > saved["steps"]
    ):
        return
    changes = "; ".join(
        f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in diff.items()
    )
    hint = ""
    if "steps" in diff:
        hint = (
            f" (`steps` may only grow, and only for the {' and '.join(map(repr, EXTENDABLE))} "
            f"strategies, with every other field unchanged: 'staged' splits `steps` into "
            f"stages, so its stage boundaries would move.)"
        )
    raise ValueError(
        f"the checkpoint in {directory} was written with a different config ({changes}); "
        f"resume with the same config or use a fresh directory.{hint}"
    )


@dataclass
class _Checkpoints:
    """The checkpoints of one `fit` in ``directory`` (``None``: none): one every ``every``
    steps (0: never). ``step`` is the global step of the newest one of this run on disk,
    written or resumed from (``None`` while there is none)."""

    directory: Path | None
    every: int
    config: TrainConfig
    step: int | None = None

    @classmethod
    def open(cls, directory, config: TrainConfig, resume: bool) -> _Checkpoints:
        if (config.checkpoint_every or resume) and directory is None:
            raise ValueError("checkpointing and resume need checkpoint_dir=...")
        directory = None if directory is None else Path(directory)
        if directory is not None and not resume and (directory / "checkpoint.json").exists():
            raise ValueError(
                f"{directory} already holds a checkpoint; pass resume=True (CLI: --resume) to "
                f"continue it, or choose an empty directory."
            )
        return cls(directory, config.checkpoint_every, config)

    def due(self, global_step: int) -> bool:
        return self.directory is not None and self.every > 0 and global_step % self.every == 0

    def save(self, run: _RunState, opt_state, validation: _Validation) -> None:
        """Write the run state; every process gathers it to host memory (a collective for
        state split over processes), process 0 alone writes."""
        best_val = validation.best_val
        tree = distributed.to_host(
            {"model": run.model, "opt": opt_state, "best": validation.best_model}
        )
        self.step = run.global_step
        if not distributed.is_writer():
            return
        save_checkpoint(
            self.directory,
            tree,
            {
                "stage": run.stage,
                "stage_step": run.stage_step,
                "global_step": run.global_step,
                "lr_scale": run.lr_scale,
                "best_val": best_val if np.isfinite(best_val) else None,
                **run.history.to_meta(),
                "config": self.config.to_dict(),
                "seconds": run.seconds(),
            },
        )

    def restore(self, model, stages: list[Stage]) -> _RunState | None:
        """The run state saved in ``directory`` (``None`` if there is no checkpoint)."""
        probe = read_checkpoint_meta(self.directory)
        if not distributed.agree(probe is not None):  # process 0's view of the folder
            return None
        if probe is None:
            raise ValueError(
                f"process {jax.process_index()} cannot read the checkpoint in {self.directory} "
                f"that process 0 found: in a multi-process run the checkpoint folder must be "
                f"on a file system every process shares."
            )
        _check_resumable(probe.get("config"), self.config, self.directory)
        stage = stages[probe["stage"]]
        opt = init_opt_state(self.config, stage, split_trainable(model, stage)[0])
        loaded = load_checkpoint(self.directory, {"model": model, "opt": opt, "best": model})
        assert loaded is not None
        tree, meta = loaded
        self.step = meta["global_step"]
        best_val = meta.get("best_val")
        return _RunState(
            model=tree["model"],
            history=_History.from_meta(meta),
            stage=meta["stage"],
            stage_step=meta["stage_step"],
            global_step=sum(s.steps for s in stages[: meta["stage"]]) + meta["stage_step"],
            lr_scale=meta["lr_scale"],
            seconds_before=meta.get("seconds", 0.0),
            resumed_from=meta["global_step"],
            opt=tree["opt"],
            best=tree["best"],
            best_val=np.inf if best_val is None else best_val,
        )


class _Progress:
    """`fit`'s progress display: a Rich bar with the loss and θ_s while stdout is a
    terminal; nothing otherwise (redrawing a bar into a log file or a pipe only leaves
    blank lines there; `FitResult.history` has every value)."""

    def __init__(self, enabled: bool, total: int, completed: int):
        self._bar = None
        if not enabled:
            return
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.fields[stage]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
        )
        self._task = self._bar.add_task("fit", total=total, stage="", info="")
        self._bar.update(self._task, completed=completed)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, steps: int, stage: str, info: str | None = None) -> None:
        if self._bar is not None:
            fields = {"stage": stage} if info is None else {"stage": stage, "info": info}
            self._bar.update(self._task, advance=steps, **fields)


def _diverged(run: _RunState, stage: Stage, rejects: int, checkpoints: _Checkpoints):
    where = ""
    if checkpoints.step is not None:
        where = (
            f"; the last good state, at step {checkpoints.step}, is checkpointed in "
            f"{checkpoints.directory}"
        )
    return TrainingDiverged(
        f"training diverged at step {run.global_step} (stage {stage.name!r}): loss or "
        f"gradients were NaN/Inf for {rejects} consecutive steps even after lowering the "
        f"learning rate to {run.lr_scale:.3g}x{where}. Remedy: lower lr_theta/lr_net or the "
        f"horizon, reduce dt, or bound θ_s with a constraint."
    )


def _memory_report(config, stage, model, data, horizon: int, jitted, args) -> dict:
    """The memory plan and the measured memory of one compiled training step."""
    states = _unpack(data)[0]
    windows = jax.ShapeDtypeStruct((config.batch_size, horizon + 1, *states.shape[2:]),
                                   states.dtype)  # fmt: skip
    plan = memory_plan(config, _view(model, stage), windows)
    return {"plan": plan.to_dict(), "measured": step_memory(jitted, *args)}


def _memory_notes(memory: dict) -> list[str]:
    notes = []
    for where, m in memory.items():
        plan, measured = m["plan"], m["measured"]
        if not plan["fits"]:
            est = plan["estimates_mb"][plan["policy"]]
            fix = (
                "lower the horizon or batch_size, or shard the batch over more devices"
                if plan["chosen"]
                else "use memory='auto' to choose a policy that fits"
            )
            notes.append(
                f"step {where}: memory={plan['policy']!r} is estimated at {est:.1f} MiB per "
                f"device, over memory_budget_mb={plan['budget_mb']:g}; {fix}."
            )
        elif plan["budget_mb"] is not None and measured and measured["peak"] > plan["budget_mb"]:
            notes.append(
                f"step {where}: XLA's measured peak of the step is {measured['peak']:.1f} MiB "
                f"per device, over memory_budget_mb={plan['budget_mb']:g} (the estimate, "
                f"{plan['estimates_mb'][plan['policy']]:.1f} MiB, counts what the rollouts "
                f"store); lower the budget by that margin to stay under it."
            )
    return notes


def _train_stage(run, stages, config, data, val_windows, checkpoints, bar, mesh=None) -> None:
    """Train stage ``run.stage`` from ``run.stage_step`` to its end or early stop, updating
    ``run`` in place; ``run.model`` ends as the stage's best validated state. With a
    ``mesh`` (``config.shard``) the run state lives replicated on it."""
    si = run.stage
    stage = stages[si]
    trainable, static = split_trainable(run.model, stage)
    validation = _Validation(
        _val_loss_fn(stage, "full" if config.memory == "auto" else config.memory,
                     config.observed),
        val_windows,
        config.val_every,
        config.patience,
        best_model=run.model,
    )
    restored = run.take_restored()
    if restored is None:
        opt_state = init_opt_state(config, stage, trainable)
    else:
        opt_state, validation.best_model, validation.best_val = restored
    if mesh is not None:
        opt_state = distributed.replicate(opt_state, mesh)
    weights = loss_weights(config)
    stage_key = jax.random.fold_in(jax.random.key(config.seed), si)
    step_fns: dict[int, Any] = {}
    rejects = 0
    for k in range(run.stage_step, stage.steps):
        h = _horizon_at(config, k, stage.steps)
        hyper = dict(weights, lr_scale=jnp.asarray(run.lr_scale))
        key = jax.random.fold_in(stage_key, k)
        if h not in step_fns:
            step_fns[h] = compiled_train_step(config, stage, h)
            args = (trainable, opt_state, static, data, key, hyper)
            run.memory.setdefault(
                f"{stage.name}/{h}",
                _memory_report(config, stage, run.model, data, h, step_fns[h], args),
            )
        trainable, opt_state, loss, parts, ok = step_fns[h](
            trainable, opt_state, static, data, key, hyper
        )
        ok = bool(ok)
        run.model = combine_trainable(trainable, static)
        row = run.history.record_step(run.global_step, si, loss, parts, run.lr_scale, ok, run.model)
        rejects = 0 if ok else rejects + 1
        if not ok:
            run.lr_scale *= config.reject_factor
            if rejects >= config.max_rejects:
                raise _diverged(run, stage, rejects, checkpoints)
        run.global_step += 1
        run.stage_step = k + 1
        stop = validation.after_step(run.model, k, stage.steps, run.global_step, run.history)
        if checkpoints.due(run.global_step):
            checkpoints.save(run, opt_state, validation)
        if bar.active:
            info = f"loss {float(loss):.3e} " + " ".join(f"{n}={v:.4g}" for n, v in row.items())
            bar.advance(1, stage.name, info)
        if stop:
            bar.advance(stage.steps - k - 1, stage.name)
            run.global_step += stage.steps - k - 1
            break
    run.model = validation.final(run.model)


def _what_is_trained(model, stages: list[Stage], config: TrainConfig):
    """``(trained, notes, plain)``: per stage the θ_s and θ_ml entries it trains, sentences
    on what is not trained, and the paths of frozen floating-point fields (`unlearned`).
    Raises `ValueError` when the strategy would train nothing at all."""
    plain = unlearned(model, float_owners=(AbstractModel,))
    size = lambda tree: sum(int(np.size(x)) for x in jtu.tree_leaves(tree))  # noqa: E731
    trained, idle = {}, []
    for stage in stages:
        tr = split_trainable(model, stage)[0]
        n_s, n_ml = size(tr.theta_s), size(tr.theta_ml)
        trained[stage.name] = {"theta_s": n_s, "theta_ml": n_ml}
        if n_s + n_ml == 0:
            wants = " and ".join(
                g for g, on in (("θ_s (free sl.Param)", stage.train_theta),
                                ("θ_ml (network weights)", stage.train_net)) if on
            )  # fmt: skip
            idle.append((stage, wants))
    if len(idle) == len(stages):
        stage, wants = idle[0]
        fix = (
            "add a free sl.Param or a network (sl.Hybrid(step, net))"
            if stage.train_theta and stage.train_net
            else "use strategy='joint', which trains whichever group the model has"
        )
        hint = ""
        if plain:
            hint = (
                f" The floating-point field(s) {plain} are frozen because they are neither "
                f"a sl.Param nor inside a network; wrap one in sl.Param(...) to learn it."
            )
        raise ValueError(
            f"fit: nothing to train: strategy {config.strategy!r} trains {wants}, and "
            f"{type(model).__name__} has none; {fix}.{hint}"
        )
    notes = [
        f"stage {stage.name!r} trained nothing: it trains {wants} and the model has none; "
        f"its {stage.steps} steps left the model unchanged."
        for stage, wants in idle
    ]
    if not any(t["theta_s"] for t in trained.values()):
        notes.append("θ_s is empty: the model has no free sl.Param; only θ_ml was trained.")
    if not any(t["theta_ml"] for t in trained.values()):
        notes.append("θ_ml is empty: the model has no network weights; only θ_s was trained.")
    if plain:
        notes.append(f"frozen floating-point fields (not sl.Param, not in a network): {plain}.")
    return trained, tuple(notes), plain


def fit(
    model,
    data,
    config: TrainConfig | None = None,
    *,
    val=None,
    t0=None,
    val_t0=None,
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
    - `t0`: the time of each training trajectory's first state: a number, or one per
      trajectory (shape ``(trajectories,)``); default ``None``: every trajectory starts at
      ``t = 0``. Consecutive states are assumed ``dt`` apart (the model's step), so a
      window drawn from index ``s`` of trajectory ``i`` starts at ``t0[i] + s·dt``: what a
      time-dependent model (`scilayers.models.AbstractForcedModel`) or a closure that sees
      time needs; an autonomous model ignores it. `val_t0`: the same for `val`.
    - `checkpoint_dir`: where checkpoints go (needed for `checkpoint_every` and `resume`).
    - `resume`: continue from the checkpoint in `checkpoint_dir` if there is one. The
      config must be the one the checkpoint was written with (the error names each field
      that differs), with one exception that extends a run: for the single-stage
      strategies ``"joint"`` and ``"fixed"``, `steps` may be larger than before (all other
      fields equal), and training continues from the checkpoint to the new `steps`. The
      learning-rate and horizon schedules are laid over the new length: with
      ``schedule="constant"`` and no `horizon_schedule` the extended run equals one trained
      for the larger `steps` from the start; a cosine schedule restarts its decay from a
      higher rate. (``"staged"`` splits `steps` into stages, so it cannot be extended.)
    - `progress`: show a Rich progress bar with the loss and current θ_s while stdout is a
      terminal (nothing is written otherwise).

    What is trained: θ_s are the raw values of the free `Param`s, θ_ml the weights of
    network modules (see `scilayers.params.network`); every other floating-point array
    (and a Python float field of a scientific model) is frozen, and `fit` warns once,
    naming the fields. Strategies choose among the two groups; a strategy with nothing to
    train is an error, and a stage that trains nothing or a group that is empty
    throughout is said in `FitResult.notes`.

    **Returns:** a `FitResult` with the trained `model`, `history`, `trained` (entries per
    group and stage) and `notes`. ``history`` holds per step ``step``, ``stage``, ``loss``
    and its parts (``data``, ``physics``, ``prior``, ``closure``), ``grad_norm``,
    ``lr_scale``, ``rejected``; the θ_s after the step as ``theta/<name>`` (names as in
    `scilayers.params.values`, the mean for an array Param); for a ``parameter``-coupled
    `Hybrid` the effective θ_s averaged over the states of the step's batch (before its
    update) as ``theta_eff/<name>`` (names as in `Hybrid.modulated`); per validation
    ``val_step`` and ``val_loss``.

    **Warns:** `UserWarning` when the model holds floating-point fields that are neither
    a `Param` nor inside a network (frozen; wrap them in ``sl.Param``).

    **Raises:** `ValueError` for malformed data, a strategy with nothing to train, or an
    unusable checkpoint;
    `TrainingDiverged` after `max_rejects` consecutive non-finite steps (naming the last
    checkpoint if this run has one).
    """
    config = TrainConfig() if config is None else config
    data = _check_data(data, model, "data")
    val_arr = None if val is None else _check_data(val, model, "val")
    max_h = config.longest_horizon
    if data.shape[1] < max_h + 1:
        raise ValueError(
            f"trajectories have {data.shape[1]} states but the horizon needs {max_h + 1}; "
            f"lower the horizon or provide longer trajectories."
        )
    t0 = _check_t0(t0, data, "t0")
    if t0 is not None:
        data = Trajectories(data, t0)
    val_windows = None
    if val_arr is not None:
        val_t0 = _check_t0(val_t0, val_arr, "val_t0")
        if val_t0 is None:
            val_t0 = jnp.zeros(val_arr.shape[0], jnp.result_type(float))
        val_windows = (val_arr[:, : max_h + 1], val_t0)
    mesh = None
    if config.shard:
        mesh = distributed.batch_mesh()
        distributed.check_divisible(config.batch_size, mesh, "TrainConfig.batch_size")
        data = distributed.replicate(data, mesh)
        val_windows = distributed.replicate(val_windows, mesh)
    checkpoints = _Checkpoints.open(checkpoint_dir, config, resume)
    stages = stages_for(config)
    trained, notes, plain = _what_is_trained(model, stages, config)
    if plain:
        warnings.warn(
            f"fit: {', '.join(plain)} not trained: a floating-point field that is neither a "
            f"sl.Param nor inside a network is frozen; wrap it in sl.Param(...) to learn it "
            f"or sl.Param(..., fixed=True) to silence this.",
            UserWarning,
            stacklevel=2,
        )

    run = checkpoints.restore(model, stages) if resume else None
    if run is None:
        run = _RunState(model, _History.empty(model))
    if mesh is not None:  # parameters, optimiser state and best state: whole on every device
        run.model, run.opt, run.best = distributed.replicate((run.model, run.opt, run.best), mesh)
    total = sum(s.steps for s in stages)
    with _Progress(progress, total, completed=run.global_step) as bar:
        while run.stage < len(stages):
            _train_stage(run, stages, config, data, val_windows, checkpoints, bar, mesh)
            run.stage, run.stage_step = run.stage + 1, 0
    if mesh is not None:  # an ordinary single-device model again, the same on every process
        run.model = distributed.to_local(run.model)
    return FitResult(
        run.model,
        run.history.arrays(),
        config,
        run.seconds(),
        run.resumed_from,
        trained,
        (*notes, *_memory_notes(run.memory)),
        {"devices": 1 if mesh is None else mesh.size, "steps": run.memory},
    )
