"""`online_fit`: self-tuning as data arrive — sliding-window updates of θ_s and θ_ml along
one stream of observations, with θ_s tracked through time."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from ..models import AbstractModel
from ..params import is_param, unlearned
from ..solvers import MEMORY_POLICIES, rollout, takes_time
from ._config import TrainConfig
from ._fit import (
    FitResult,
    Stage,
    Trainable,
    TrainingDiverged,
    Trajectories,
    _check_resumable,
    _modulates,
    _Progress,
    _step_dt,
    _theta_row,
    combine_trainable,
    load_checkpoint,
    loss_weights,
    make_loss,
    make_train_step,
    read_checkpoint_meta,
    save_checkpoint,
    split_trainable,
)

ONLINE_STRATEGIES = ("joint", "fixed", "theta")

# Per-update records of `online_fit`'s history (besides ``theta/<name>``), in order.
ONLINE_FIELDS = (
    "update",
    "index",
    "time",
    "loss",
    "data",
    "physics",
    "prior",
    "closure",
    "anchor",
    "grad_norm",
    "lr_scale",
    "rejected",
    "update_seconds",
)
_PARTS = ("data", "physics", "prior", "closure", "anchor", "grad_norm")


@dataclass(frozen=True)
class OnlineConfig:
    r"""How `online_fit` updates a model as observations arrive. Plain values, saved with
    every result and checkpoint.

    Observation ``i`` of the stream is the state at time ``t0 + i·dt``. An update "at
    index ``i``" happens once observations ``0 … i`` have arrived; it trains on the
    sliding window of the latest `window` of them, ``stream[i - window + 1 : i + 1]``, and
    on nothing later.

    **Arguments:**

    - `window`: observations in the sliding window (> `horizon`).
    - `every`: new observations between two updates (1: update on every arrival).
    - `start`: index of the latest observation at the first update (``None``: ``window -
      1``, the first full window); it must be ``>= window - 1``. Data before it can serve a
      warm start (`fit` on ``stream[None, : start + 1]``, passed to `online_fit`).
    - `steps_per_update`: Adam steps per update, each on `batch_size` random windows of
      ``horizon + 1`` consecutive states drawn from the sliding window (the bounded cost:
      ``steps_per_update · batch_size · horizon`` model steps and their gradients).
    - `horizon`: unrolled model steps per training window.
    - `lr_theta`, `lr_net`: Adam learning rates for θ_s and θ_ml (constant: an online run
      has no end to decay towards). The optimiser states carry over from update to update.
    - `strategy`: ``"joint"`` (θ_s and θ_ml), ``"fixed"`` (θ_ml only, θ_s frozen) or
      ``"theta"`` (θ_s only; a `Hybrid`'s network stays on, frozen: recalibrate the physics
      of a closure trained offline).
    - `lambda_data`, `lambda_physics`, `lambda_prior`, `lambda_closure`: loss weights as in
      `TrainConfig`.
    - `lambda_anchor`: weight of a penalty ``λ_a Σ (θ̃_s − θ̃_s^prev)²`` that pulls θ_s
      towards its value at the start of the update (``θ̃``: the unconstrained coordinate a
      `Param` is stored in, e.g. ``log θ`` for a positive one). 0 (default): no anchor,
      only the warm start from the previous update; larger values trade how fast θ_s
      follows a change for how much it wanders with the noise of one window.
    - `forecast_steps`: after each update, forecast this many steps from the latest
      observation with the model as just updated (0: no forecasts). The forecast made at
      index ``i`` depends on observations ``0 … i`` only, so the skill of the online model
      on a test period is scored without look-ahead.
    - `clip_norm`, `memory`, `max_rejects`, `reject_factor`: as in `TrainConfig`
      (`max_rejects` counts consecutive non-finite gradient steps across updates).
    - `checkpoint_every`: write an atomic checkpoint every so many updates (0: only at the
      end of the run, when `online_fit` has a `checkpoint_dir`).
    - `seed`: drives the windows drawn at every update.
    """

    window: int = 48
    every: int = 1
    start: int | None = None
    steps_per_update: int = 10
    horizon: int = 6
    batch_size: int = 8
    lr_theta: float = 2e-2
    lr_net: float = 1e-3
    strategy: str = "joint"
    lambda_data: float = 1.0
    lambda_physics: float = 0.0
    lambda_prior: float = 0.0
    lambda_closure: float = 0.0
    lambda_anchor: float = 0.0
    forecast_steps: int = 0
    clip_norm: float | None = 1.0
    memory: str = "full"
    max_rejects: int = 20
    reject_factor: float = 0.5
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.strategy not in ONLINE_STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r} for online training; choose one of "
                f"{ONLINE_STRATEGIES} ('staged' belongs to fit: stage a warm start there)."
            )
        for name in ("window", "every", "steps_per_update", "horizon", "batch_size", "max_rejects"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        if self.horizon >= self.window:
            raise ValueError(
                f"horizon ({self.horizon}) must be smaller than window ({self.window}): a "
                f"training window of horizon + 1 = {self.horizon + 1} consecutive states must "
                f"fit in the sliding window. Lower the horizon or widen the window."
            )
        if self.start is not None and not (
            isinstance(self.start, int) and self.start >= self.window - 1
        ):
            raise ValueError(
                f"start must be an index >= window - 1 = {self.window - 1} (the first update "
                f"needs a full window), or None; got {self.start!r}."
            )
        for name in ("forecast_steps", "checkpoint_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}.")
        for name in (
            "lambda_data",
            "lambda_physics",
            "lambda_prior",
            "lambda_closure",
            "lambda_anchor",
            "lr_theta",
            "lr_net",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}.")
        if self.memory not in MEMORY_POLICIES:
            raise ValueError(
                f"unknown memory policy {self.memory!r}; choose one of {MEMORY_POLICIES}."
            )
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}.")
        if not 0 < self.reject_factor < 1:
            raise ValueError(f"reject_factor must be in (0, 1), got {self.reject_factor}.")

    @property
    def first_index(self) -> int:
        """The index of the latest observation at the first update."""
        return self.window - 1 if self.start is None else self.start

    def update_indices(self, n_obs: int) -> np.ndarray:
        """Indices of the latest observation at each update, for a stream of ``n_obs``."""
        return np.arange(self.first_index, n_obs, self.every)

    def train_config(self) -> TrainConfig:
        """The `TrainConfig` whose loss (`make_loss`) each gradient step minimises, plus
        the anchor."""
        return TrainConfig(
            strategy="fixed" if self.strategy == "fixed" else "joint",
            steps=self.steps_per_update,
            batch_size=self.batch_size,
            horizon=self.horizon,
            lr_theta=self.lr_theta,
            lr_net=self.lr_net,
            schedule="constant",
            lambda_data=self.lambda_data,
            lambda_physics=self.lambda_physics,
            lambda_prior=self.lambda_prior,
            lambda_closure=self.lambda_closure,
            clip_norm=self.clip_norm,
            memory=self.memory,
            max_rejects=self.max_rejects,
            reject_factor=self.reject_factor,
            seed=self.seed,
        )

    def stage(self) -> Stage:
        """The single `Stage` every update trains (which groups, network on)."""
        return Stage(
            f"online-{self.strategy}",
            self.steps_per_update,
            train_theta=self.strategy in ("joint", "theta"),
            train_net=self.strategy in ("joint", "fixed"),
            network_on=True,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OnlineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown OnlineConfig field(s) {sorted(unknown)}.")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes) -> OnlineConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class OnlineResult:
    """What `online_fit` returns.

    - `model`: the model after the last update.
    - `history`: per update (arrays of length ``updates``): ``update`` (0, 1, …),
      ``index`` (the latest observation it saw), ``time`` (``t0 + index·dt``), ``loss``
      and its parts ``data``, ``physics``, ``prior``, ``closure``, ``anchor`` (the
      unweighted ``Σ (θ̃_s − θ̃_s^prev)²``: how far θ_s has moved within the update,
      recorded whatever `lambda_anchor`), ``grad_norm`` (means over the update's accepted
      gradient steps, each on its batch before its step), ``lr_scale``, ``rejected``
      (non-finite steps rejected in the update), ``update_seconds`` (wall time, forecast
      included; the first update's includes compilation); θ_s after the update as
      ``theta/<name>`` (names as in `scilayers.params.values`, the mean for an array
      Param, as in `fit`), and for a ``parameter``-coupled `Hybrid` ``theta_eff/<name>``.
    - `forecasts`: ``(updates, forecast_steps, *state)``: ``forecasts[u, k]`` is the state
      at index ``history["index"][u] + k + 1`` as forecast right after update ``u``
      (``None`` without `forecast_steps`).
    - `forecast_rmse`: ``(updates, forecast_steps)``: the RMSE of each forecast over the
      state against the stream; NaN where the target lies beyond the stream.
    - `initial_theta`: θ_s before the first update; `config`; `seconds` (all updates,
      including those of the runs this one resumes); `resumed_from` (updates already done
      in the checkpoint this run resumed, else ``None``); `trained` (entries of θ_s and
      θ_ml the updates train); `notes` (what is not trained, in words).
    """

    model: Any
    history: dict[str, np.ndarray]
    forecasts: np.ndarray | None
    forecast_rmse: np.ndarray | None
    initial_theta: dict[str, float]
    config: OnlineConfig
    seconds: float
    resumed_from: int | None = None
    trained: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- the update


def _free_raws(model) -> list:
    """The unconstrained values of the free `Param`s of ``model``, in tree order."""
    leaves = jtu.tree_leaves(model, is_leaf=is_param)
    return [p.raw for p in leaves if is_param(p) and not p.fixed]


def _online_loss(train_config: TrainConfig, stage: Stage):
    """`make_loss` plus the anchor ``λ_a Σ (θ̃ − θ̃_prev)²``, θ̃_prev from ``hyper["anchor"]``."""
    base = make_loss(train_config, stage)

    def loss_fn(model, windows, hyper, t0=None):
        total, parts = base(model, windows, hyper, t0)
        # always computed (a few scalars), so λ_a = 0 and λ_a > 0 share one compilation
        pairs = zip(_free_raws(model), hyper["anchor"], strict=True)
        anchor = sum((jnp.sum((r - a) ** 2) for r, a in pairs), jnp.zeros(()))
        return total + hyper["lambda_anchor"] * anchor, dict(parts, anchor=anchor)

    return loss_fn


def _structural(config: OnlineConfig) -> OnlineConfig:
    """``config`` with what does not change the compiled update normalised: the seed, the
    schedule of updates, checkpointing, and each λ reduced to whether its term exists."""
    lambdas = ("lambda_data", "lambda_physics", "lambda_prior", "lambda_closure")
    return config.replace(
        seed=0,
        start=None,
        every=1,
        checkpoint_every=0,
        lambda_anchor=0.0,
        **{k: float(getattr(config, k) > 0) for k in lambdas},
    )


def _optimizers(config: OnlineConfig):
    return optax.adam(config.lr_theta), optax.adam(config.lr_net)


def _init_opt_state(config: OnlineConfig, trainable: Trainable) -> Trainable:
    opt_s, opt_ml = _optimizers(config)
    return Trainable(opt_s.init(trainable.theta_s), opt_ml.init(trainable.theta_ml))


@functools.lru_cache(maxsize=32)
def _compiled_update(config: OnlineConfig):
    """One update, jitted: `steps_per_update` train steps (`make_train_step`) over
    ``lax.scan`` on one sliding window, then the forecast. Shapes depend only on the
    config and the model, never on where in the stream the window lies, so every update of
    a run (and of every run with the same structural config) reuses one compilation."""
    train_config = config.train_config()
    stage = config.stage()
    opt_s, opt_ml = _optimizers(config)
    loss_fn = _online_loss(train_config, stage)
    step = make_train_step(train_config, stage, opt_s, opt_ml, config.horizon, loss_fn)

    @eqx.filter_jit
    def update(trainable, opt_state, static, window, t_window, key, hyper, lr_scale, rejects):
        data = Trajectories(window[None], t_window[None])
        anchor = [
            jax.lax.stop_gradient(r) for r in _free_raws(combine_trainable(trainable, static))
        ]

        def body(carry, k):
            tr, st, lr, rej = carry
            dead = rej >= config.max_rejects  # diverged: keep the state, the caller raises
            h = dict(hyper, lr_scale=lr, anchor=anchor)
            new_tr, new_st, loss, parts, ok = step(
                tr, st, static, data, jax.random.fold_in(key, k), h
            )
            ok = ok & ~dead
            tr = jtu.tree_map(lambda a, b: jnp.where(dead, b, a), new_tr, tr)
            st = jtu.tree_map(lambda a, b: jnp.where(dead, b, a), new_st, st)
            lr = jnp.where(ok | dead, lr, lr * config.reject_factor)
            rej = jnp.where(ok, 0, jnp.where(dead, rej, rej + 1))
            return (tr, st, lr, rej), (loss, parts, ok)

        carry = (trainable, opt_state, lr_scale, rejects)
        steps = jnp.arange(config.steps_per_update)
        (trainable, opt_state, lr_scale, rejects), (loss, parts, ok) = jax.lax.scan(
            body, carry, steps
        )
        n_ok = jnp.sum(ok)

        def mean_ok(x):
            return jnp.sum(jnp.where(ok, x, 0.0)) / jnp.where(n_ok > 0, n_ok, jnp.nan)

        summary = {"loss": mean_ok(loss), **{k: mean_ok(v) for k, v in parts.items()}}
        summary["rejected"] = config.steps_per_update - n_ok
        forecast = None
        if config.forecast_steps > 0:
            model = combine_trainable(trainable, static)
            t_last = t_window + _step_dt(model) * (window.shape[0] - 1)
            forecast = rollout(
                model,
                window[-1],
                config.forecast_steps,
                t_last if takes_time(model) else None,
                check_finite=False,
            )[1:]
        return trainable, opt_state, lr_scale, rejects, summary, forecast

    return update


# ----------------------------------------------------------------------------- inputs


def _check_stream(stream, model) -> np.ndarray:
    arr = np.asarray(stream, dtype=jnp.result_type(float))
    shape = getattr(model, "state_shape", None)
    if arr.ndim < 2 and shape is None:
        raise ValueError(f"stream must have shape (time, *state), got {arr.shape}.")
    if shape is not None and tuple(arr.shape[1:]) != tuple(shape):
        hint = ""
        if arr.ndim == len(shape) + 2 and tuple(arr.shape[2:]) == tuple(shape):
            hint = "; the stream is one trajectory: pass stream[0] rather than a batch of them"
        raise ValueError(
            f"stream must have shape (time, *{tuple(shape)}) (one trajectory of the model's "
            f"states), got {arr.shape}{hint}."
        )
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1))
    if bad.any():
        t, flat = np.argwhere(bad)[0]
        where = np.unravel_index(flat, arr.shape[1:])
        raise ValueError(
            f"stream contains NaN/Inf at time index {t} (state index "
            f"{tuple(int(i) for i in where)}); every observation in a sliding window is "
            f"trained on, so impute it, or begin the stream after index {t}."
        )
    return arr


def _stream_digest(stream: np.ndarray, n: int) -> str:
    return hashlib.sha256(np.ascontiguousarray(stream[:n]).tobytes()).hexdigest()


class _Digest:
    """The SHA-256 of the first ``n`` observations of a stream, for growing ``n``."""

    def __init__(self, stream: np.ndarray):
        self._stream, self._hash, self._fed = stream, hashlib.sha256(), 0

    def upto(self, n: int) -> str:
        if n < self._fed:
            return _stream_digest(self._stream, n)
        self._hash.update(np.ascontiguousarray(self._stream[self._fed : n]).tobytes())
        self._fed = n
        return self._hash.copy().hexdigest()


def _trained_and_notes(model, stage: Stage, config: OnlineConfig):
    size = lambda tree: sum(int(np.size(x)) for x in jtu.tree_leaves(tree))  # noqa: E731
    tr = split_trainable(model, stage)[0]
    trained = {"theta_s": size(tr.theta_s), "theta_ml": size(tr.theta_ml)}
    plain = unlearned(model, float_owners=(AbstractModel,))
    if trained["theta_s"] + trained["theta_ml"] == 0:
        wants = " and ".join(
            g
            for g, on in (
                ("θ_s (free sl.Param)", stage.train_theta),
                ("θ_ml (network weights)", stage.train_net),
            )
            if on
        )
        hint = ""
        if plain:
            hint = (
                f" The floating-point field(s) {plain} are frozen; wrap one in "
                f"sl.Param(...) to learn it."
            )
        raise ValueError(
            f"online_fit: nothing to train: strategy {config.strategy!r} trains {wants}, and "
            f"{type(model).__name__} has none.{hint}"
        )
    notes = []
    if stage.train_theta and not trained["theta_s"]:
        notes.append("θ_s is empty: the model has no free sl.Param; only θ_ml was updated.")
    if stage.train_net and not trained["theta_ml"]:
        notes.append("θ_ml is empty: the model has no network weights; only θ_s was updated.")
    if plain:
        notes.append(f"frozen floating-point fields (not sl.Param, not in a network): {plain}.")
    return trained, tuple(notes), plain


# ----------------------------------------------------------------------------- run state


@dataclass
class _Run:
    """What carries from update to update; all of it is in a checkpoint."""

    trainable: Trainable
    opt_state: Trainable
    lr_scale: float
    rejects: int
    done: int
    rows: dict[str, list]
    forecasts: list
    initial_theta: dict[str, float]
    seconds_before: float = 0.0
    resumed_from: int | None = None
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started


def _empty_rows(model) -> dict[str, list]:
    eff = [f"theta_eff/{k}" for k in model.modulated()] if _modulates(model) else []
    theta = [f"theta/{k}" for k in _theta_row(model)]
    return {k: [] for k in (*ONLINE_FIELDS, *theta, *eff)}


def _forecast_template(done: int, config: OnlineConfig, stream: np.ndarray):
    if config.forecast_steps == 0:
        return None
    return jnp.zeros((done, config.forecast_steps, *stream.shape[1:]), stream.dtype)


def _save(directory: Path, run: _Run, static, config, stream, digest, t0, dt) -> None:
    last = int(config.update_indices(stream.shape[0])[run.done - 1])
    forecasts = None
    if config.forecast_steps:
        forecasts = (
            jnp.asarray(np.stack(run.forecasts))
            if run.forecasts
            else _forecast_template(0, config, stream)
        )
    save_checkpoint(
        directory,
        {
            "model": combine_trainable(run.trainable, static),
            "opt": run.opt_state,
            "forecasts": forecasts,
        },
        {
            "kind": "online_fit",
            "config": config.to_dict(),
            "done": run.done,
            "lr_scale": run.lr_scale,
            "rejects": run.rejects,
            "rows": run.rows,
            "initial_theta": run.initial_theta,
            "seconds": run.seconds(),
            "stream": {
                "observations": last + 1,
                "sha256": digest.upto(last + 1),
                "t0": t0,
                "dt": dt,
                "state_shape": list(stream.shape[1:]),
            },
        },
    )


def _restore(directory: Path, model, stage, config, stream, t0, dt) -> _Run | None:
    meta = read_checkpoint_meta(directory)
    if meta is None:
        return None
    if meta.get("kind") != "online_fit":
        raise ValueError(
            f"the checkpoint in {directory} was not written by online_fit; use a "
            f"fresh checkpoint directory."
        )
    _check_resumable(meta.get("config"), config, directory)
    seen = meta["stream"]
    if (seen["t0"], seen["dt"], tuple(seen["state_shape"])) != (t0, dt, stream.shape[1:]):
        raise ValueError(
            f"the checkpoint in {directory} was trained on a stream with t0={seen['t0']}, "
            f"dt={seen['dt']}, states {tuple(seen['state_shape'])}; this one has t0={t0}, "
            f"dt={dt}, states {stream.shape[1:]}. Resume with the same stream (it may have "
            f"grown) or use a fresh directory."
        )
    n = seen["observations"]
    if stream.shape[0] < n or _stream_digest(stream, n) != seen["sha256"]:
        raise ValueError(
            f"the checkpoint in {directory} was trained on the first {n} observations of a "
            f"stream, and this stream's first {min(n, stream.shape[0])} differ from them "
            f"(or there are fewer): resuming would not continue that run. Pass the same "
            f"stream, extended with new observations, or use a fresh directory."
        )
    trainable, static = split_trainable(model, stage)
    template = {
        "model": model,
        "opt": _init_opt_state(config, trainable),
        "forecasts": _forecast_template(meta["done"], config, stream),
    }
    loaded = load_checkpoint(directory, template)
    assert loaded is not None
    tree, meta = loaded
    trainable, _ = split_trainable(tree["model"], stage)
    forecasts = [] if tree["forecasts"] is None else list(np.asarray(tree["forecasts"]))
    return _Run(
        trainable=trainable,
        opt_state=tree["opt"],
        lr_scale=meta["lr_scale"],
        rejects=meta["rejects"],
        done=meta["done"],
        rows=meta["rows"],
        forecasts=forecasts,
        initial_theta=meta["initial_theta"],
        seconds_before=meta["seconds"],
        resumed_from=meta["done"],
    )


def _forecast_rmse(forecasts: np.ndarray, indices: np.ndarray, stream: np.ndarray):
    n_obs, steps = stream.shape[0], forecasts.shape[1]
    target = indices[:, None] + np.arange(1, steps + 1)[None, :]
    inside = target < n_obs
    truth = stream[np.minimum(target, n_obs - 1)]
    err = (forecasts - truth).reshape(*target.shape, -1)
    rmse = np.sqrt(np.mean(err**2, axis=-1))
    return np.where(inside, rmse, np.nan)


def _diverged(run: _Run, index: int, when: float, directory, saved: int | None):
    where = ""
    if saved is not None:
        where = f"; the state after update {saved - 1} is checkpointed in {directory}"
    return TrainingDiverged(
        f"online training diverged at update {run.done} (latest observation {index}, time "
        f"{when:g}): loss or gradients were NaN/Inf for {run.rejects} consecutive steps even "
        f"after lowering the learning rate to {run.lr_scale:.3g}x{where}. Remedy: lower "
        f"lr_theta/lr_net or the horizon, raise lambda_anchor, reduce dt, or bound θ_s with "
        f"a constraint."
    )


# ----------------------------------------------------------------------------- online_fit


def online_fit(
    model,
    stream,
    config: OnlineConfig | None = None,
    *,
    t0: float | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    callback=None,
) -> OnlineResult:
    r"""Update ``model`` as observations arrive: sliding-window training with a bounded
    cost per update, θ_s tracked through time.

    The observations ``stream[0], stream[1], …`` (states ``dt`` apart, ``dt`` the model's
    step) arrive in order. At the indices ``i = start, start + every, …`` (`OnlineConfig`)
    the model takes `steps_per_update` Adam steps on

    $$λ_d L_\text{data} + λ_p L_\text{physics} + λ_\text{prior}(-\log p(θ_s))
      + λ_c \|\text{closure}\|^2 + λ_a \textstyle\sum (θ̃_s − θ̃_s^\text{prev})^2,$$

    each over `batch_size` windows of ``horizon + 1`` states drawn from the sliding window
    ``stream[i - window + 1 : i + 1]`` only (no look-ahead; the terms as in `fit`). Every
    update runs one compiled function (fixed shapes, so nothing recompiles as time
    advances), the Adam states carry from update to update, and non-finite steps are
    rejected and the learning rate lowered as in `fit`. After each update the model can
    forecast from the latest observation (`forecast_steps`), so the online forecast skill
    on a test period is scored with the model as it stood at each forecast's start.

    **Arguments:**

    - `model`: the model (a `Hybrid`, a stepper with free `Param`s, a `NeuralStepper`), or a
      `FitResult` whose model is the warm start (e.g. `fit` on the observations before
      `start`: ``fit(model, stream[None, : start + 1], ...)``).
    - `stream`: the observations, shape ``(time, *state)``: one trajectory, finite.
    - `config`: `OnlineConfig` (default ``OnlineConfig()``).
    - `t0`: the time of ``stream[0]`` (default ``None``: 0), so that observation ``i`` is at
      ``t0 + i·dt``: a time-dependent model is stepped as ``step(u, t)`` at those times.
    - `checkpoint_dir`: where checkpoints go: every `checkpoint_every` updates and at the
      end of the run (atomic; see `save_checkpoint`).
    - `resume`: continue from the checkpoint in `checkpoint_dir`, if there is one, with the
      same config. The stream may have grown since (new observations arrived): the run
      continues with the updates they allow; its first observations must be those the
      checkpoint was trained on (checked by hash). A resumed run ends exactly where an
      uninterrupted one ends.
    - `progress`: a Rich progress bar with the loss and θ_s while stdout is a terminal.
    - `callback`: ``callback(record, model)`` after every update, with ``record`` the
      update's history row (a dict of numbers, θ_s under ``theta/<name>``) plus its
      ``forecast`` (an array, or ``None``), and ``model`` the updated model; returning
      ``True`` stops the run there (a checkpoint is written if there is a
      `checkpoint_dir`, so that ``resume=True`` continues it).

    **Returns:** an `OnlineResult` (final model, per-update history with θ_s under
    ``theta/<name>``, forecasts and their RMSE against the stream).

    **Raises:** `ValueError` for a stream that is malformed, contains NaN/Inf (naming the
    first index) or is shorter than the window, a strategy with nothing to train, or an
    unusable checkpoint; `TrainingDiverged` after `max_rejects` consecutive non-finite
    steps.
    """
    config = OnlineConfig() if config is None else config
    if isinstance(model, FitResult):
        model = model.model
    arr = _check_stream(stream, model)
    n_obs = arr.shape[0]
    if config.window > n_obs:
        raise ValueError(
            f"the window ({config.window} observations) is longer than the stream "
            f"({n_obs} observations): no update is possible; shorten the window or wait for "
            f"more data."
        )
    if config.first_index >= n_obs:
        raise ValueError(
            f"start = {config.first_index} is beyond the stream's last index {n_obs - 1}: no "
            f"update is possible."
        )
    if t0 is not None and not (np.ndim(t0) == 0 and np.isfinite(t0)):
        raise ValueError(f"t0 must be a finite number (the time of stream[0]), got {t0!r}.")
    t0 = 0.0 if t0 is None else float(t0)
    dt = float(_step_dt(model))
    if checkpoint_dir is None and (config.checkpoint_every or resume):
        raise ValueError("checkpointing and resume need checkpoint_dir=...")
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    if directory is not None and not resume and (directory / "checkpoint.json").exists():
        raise ValueError(
            f"{directory} already holds a checkpoint; pass resume=True to continue it, or "
            f"choose an empty directory."
        )
    stage = config.stage()
    trained, notes, plain = _trained_and_notes(model, stage, config)
    if plain:
        warnings.warn(
            f"online_fit: {', '.join(plain)} not trained: a floating-point field that is "
            f"neither a sl.Param nor inside a network is frozen; wrap it in sl.Param(...) to "
            f"learn it or sl.Param(..., fixed=True) to silence this.",
            UserWarning,
            stacklevel=2,
        )

    trainable, static = split_trainable(model, stage)
    run = None
    if resume:
        run = _restore(directory, model, stage, config, arr, t0, dt)
    if run is None:
        run = _Run(
            trainable=trainable,
            opt_state=_init_opt_state(config, trainable),
            lr_scale=1.0,
            rejects=0,
            done=0,
            rows=_empty_rows(model),
            forecasts=[],
            initial_theta=_theta_row(model),
        )
    update = _compiled_update(_structural(config))
    hyper = dict(
        loss_weights(config.train_config()),
        lambda_anchor=jnp.asarray(config.lambda_anchor, dtype=float),
    )
    fdtype = jnp.result_type(float)
    base_key = jax.random.key(config.seed)
    digest = _Digest(arr)
    indices = config.update_indices(n_obs)
    saved = run.done if run.resumed_from is not None else None
    with _Progress(progress, len(indices), completed=run.done) as bar:
        while run.done < len(indices):
            began = time.perf_counter()
            i = int(indices[run.done])
            lo = i - config.window + 1
            window = jnp.asarray(arr[lo : i + 1])  # observations 0 … i only
            out = update(
                run.trainable,
                run.opt_state,
                static,
                window,
                jnp.asarray(t0 + lo * dt, fdtype),
                jax.random.fold_in(base_key, run.done),
                hyper,
                jnp.asarray(run.lr_scale, fdtype),
                jnp.asarray(run.rejects, jnp.int32),
            )
            trainable, opt_state, lr_scale, rejects, summary, forecast = out
            run.lr_scale, run.rejects = float(lr_scale), int(rejects)
            if run.rejects >= config.max_rejects:
                raise _diverged(run, i, t0 + i * dt, directory, saved)
            run.trainable, run.opt_state = trainable, opt_state
            model_now = combine_trainable(trainable, static)
            row = {"update": run.done, "index": i, "time": t0 + i * dt}
            row["loss"] = float(summary["loss"])
            for name in _PARTS:
                row[name] = float(summary[name]) if name in summary else 0.0
            row["lr_scale"] = run.lr_scale
            row["rejected"] = int(summary["rejected"])
            theta = _theta_row(model_now)
            for name, v in theta.items():
                row[f"theta/{name}"] = v
            for key in [k for k in run.rows if k.startswith("theta_eff/")]:
                row[key] = float(summary[key]) if key in summary else float("nan")
            if forecast is not None:
                forecast = np.asarray(forecast)
                run.forecasts.append(forecast)
            row["update_seconds"] = time.perf_counter() - began
            for k in run.rows:
                run.rows[k].append(row[k])
            run.done += 1
            stop = bool(callback(dict(row, forecast=forecast), model_now)) if callback else False
            last = run.done == len(indices)
            every = config.checkpoint_every
            if directory is not None and (stop or last or (every and run.done % every == 0)):
                _save(directory, run, static, config, arr, digest, t0, dt)
                saved = run.done
            if bar.active:
                info = f"loss {row['loss']:.3e} " + " ".join(
                    f"{n}={v:.4g}" for n, v in theta.items()
                )
                bar.advance(1, "online", info)
            if stop:
                break

    history = {k: np.asarray(v) for k, v in run.rows.items()}
    forecasts = rmse = None
    if config.forecast_steps:
        shape = (0, config.forecast_steps, *arr.shape[1:])
        forecasts = np.stack(run.forecasts) if run.forecasts else np.zeros(shape, arr.dtype)
        rmse = _forecast_rmse(forecasts, indices[: run.done], arr)
    return OnlineResult(
        model=combine_trainable(run.trainable, static),
        history=history,
        forecasts=forecasts,
        forecast_rmse=rmse,
        initial_theta=run.initial_theta,
        config=config,
        seconds=run.seconds(),
        resumed_from=run.resumed_from,
        trained=trained,
        notes=notes,
    )
