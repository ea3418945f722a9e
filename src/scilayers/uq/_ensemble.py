"""Deep ensembles: M members trained as one compiled program, vectorised over members."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from .. import distributed
from ..params import values as param_values
from ..solvers import rollout, takes_time
from ..training import (
    TrainConfig,
    Trajectories,
    combine_trainable,
    init_opt_state,
    loss_weights,
    make_train_step,
    split_trainable,
    stages_for,
)
from ..training._fit import _horizon_at, _optimizers, _structural
from ._members import count_members, theta_spread


@dataclass
class EnsembleResult:
    """What `train_ensemble` returns.

    ``models`` is the trained ensemble, stacked (every array has a leading member axis; see
    `member`, `ensemble_rollout`). ``history`` holds per member and step (shape
    ``(members, steps)``) ``loss``, ``rejected`` and ``theta/<name>`` (the θ_s after the
    step, the mean for an array Param), and ``stage`` (shape ``(steps,)``). ``seeds`` are
    the members' training seeds; ``diverged`` marks members that hit `max_rejects`
    consecutive non-finite steps (they keep their last good state and stop training);
    ``seconds`` is the wall time of training, compilation included."""

    models: Any
    history: dict[str, np.ndarray]
    config: TrainConfig
    seeds: tuple[int, ...]
    seconds: float
    diverged: np.ndarray
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def theta(self) -> dict[str, dict]:
        """The spread of the learned θ_s across members (`theta_spread`)."""
        return theta_spread(self.models)


def _check_data(data, members) -> Array:
    arr = np.asarray(data)
    shape = getattr(members, "state_shape", None)
    if arr.ndim < 3:
        raise ValueError(
            f"data must have shape (trajectories, time, *state), got {arr.shape}; wrap a "
            f"single trajectory as data[None]."
        )
    if shape is not None and tuple(arr.shape[2:]) != tuple(shape):
        raise ValueError(f"data states have shape {arr.shape[2:]} but the model expects {shape}.")
    if not np.isfinite(arr).all():
        raise ValueError("data contain NaN/Inf; remove or impute them before training.")
    return jnp.asarray(arr)


def _theta_means(model) -> dict[str, Array]:
    return {k: jnp.mean(v) for k, v in param_values(model).items()}


def _segments(config: TrainConfig, steps: int) -> list[tuple[int, int, int]]:
    """``(start, stop, horizon)`` runs of the stage's steps with one horizon each."""
    out: list[tuple[int, int, int]] = []
    for k in range(steps):
        h = _horizon_at(config, k, steps)
        if out and out[-1][2] == h:
            out[-1] = (out[-1][0], k + 1, h)
        else:
            out.append((k, k + 1, h))
    return out


@functools.lru_cache(maxsize=32)
def _segment_program(config: TrainConfig, si: int, stage, horizon: int, loss_fn):
    """The compiled program of one segment of steps with one horizon: every member scans
    its steps, vmapped over members. Cached like `compiled_train_step`, so ensembles with
    the same structural config share one compilation."""
    opt_s, opt_ml = _optimizers(config, stage)
    step = make_train_step(config, stage, opt_s, opt_ml, horizon, loss_fn)
    reject, max_rejects = config.reject_factor, config.max_rejects

    def one_member(carry, static, seed, ks, data, weights):
        def body(c, k):
            tr, opt, lr, rejects, dead = c
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), si), k)
            new_tr, new_opt, loss, _, ok = step(tr, opt, static, data, key,
                                                dict(weights, lr_scale=lr))  # fmt: skip
            keep = ~dead
            tr = jtu.tree_map(lambda a, b: jnp.where(keep, a, b), new_tr, tr)
            opt = jtu.tree_map(lambda a, b: jnp.where(keep, a, b), new_opt, opt)
            applied = ok & keep
            rejects = jnp.where(applied, 0, rejects + jnp.where(keep, 1, 0))
            lr = jnp.where(ok | dead, lr, lr * reject)
            dead = dead | (rejects >= max_rejects)
            theta = _theta_means(combine_trainable(tr, static))
            return (tr, opt, lr, rejects, dead), (loss, ~applied, theta)

        return jax.lax.scan(body, carry, ks)

    mapped = (eqx.if_array(0), eqx.if_array(0), 0, None, None, None)

    @eqx.filter_jit
    def run(carry, static, seeds, ks, data, weights):
        return eqx.filter_vmap(one_member, in_axes=mapped)(carry, static, seeds, ks, data, weights)

    return run


def train_ensemble(
    members: PyTree,
    data,
    config: TrainConfig | None = None,
    *,
    t0=None,
    seeds=None,
    loss_fn=None,
) -> EnsembleResult:
    """Train a deep ensemble: every member (θ_s and θ_ml) trained as by `scilayers.fit`,
    all members in one compiled program vectorised over them (``vmap`` of
    `scilayers.training.make_train_step` inside ``lax.scan``), not a Python loop.

    Member ``i`` is trained exactly as ``sl.fit(member(members, i), data,
    config.replace(seed=seeds[i]))`` would train it (same windows, same steps, to
    round-off), without validation, early stopping or checkpoints. Members differ in their
    initialisation (`init_members`: network weights and a θ_s draw) and their data order
    (their seeds): the deep ensemble of Lakshminarayanan et al. (2017), over θ_s and θ_ml.

    **Arguments:**

    - `members`: the initial ensemble, stacked (`init_members`, `stack_members`).
    - `data`: training trajectories, shape ``(trajectories, time, *state)``.
    - `config`: a `TrainConfig` (strategy, steps, horizon, learning rates, λs); `val_every`,
      `patience` and `checkpoint_every` do not apply. With `shard`, the *members* are
      split over the devices (`scilayers.distributed.shard_members`; padded to a multiple
      of the device count with copies that are trained and dropped): each device trains
      its members, with no communication between them; each member's batch stays whole.
    - `t0`: start time of each trajectory (a number or shape ``(trajectories,)``), as in
      `fit`; default ``None``: 0.
    - `seeds`: one training seed per member (default ``config.seed + i``).
    - `loss_fn`: an alternative loss ``(model, windows, hyper, t0) -> (loss, parts)`` (as
      `make_train_step` takes; e.g. `nll_loss` for `Heteroscedastic` members); default
      the loss of `fit` (`scilayers.training.make_loss`).

    **Returns:** an `EnsembleResult` (stacked `models`, per-member `history`, θ_s spread
    in `theta`).
    """
    config = TrainConfig() if config is None else config
    m = count_members(members)
    data = _check_data(data, members)
    max_h = config.longest_horizon
    if data.shape[1] < max_h + 1:
        raise ValueError(
            f"trajectories have {data.shape[1]} states but the horizon needs {max_h + 1}; "
            f"lower the horizon or provide longer trajectories."
        )
    if t0 is not None:
        t0 = jnp.broadcast_to(jnp.asarray(t0, jnp.result_type(float)), data.shape[:1])
        data = Trajectories(data, t0)
    seeds = tuple(range(config.seed, config.seed + m)) if seeds is None else tuple(seeds)
    if len(seeds) != m or not all(isinstance(s, int | np.integer) for s in seeds):
        raise ValueError(f"seeds must be {m} integers, one per member, got {seeds!r}.")
    seed_arr = jnp.asarray(seeds, dtype=jnp.uint32)
    weights = loss_weights(config)
    started = time.perf_counter()
    models = members
    mesh = distributed.batch_mesh() if config.shard else None
    if mesh is not None:  # members (and their seeds) split over the devices
        (models, seed_arr), _ = distributed.shard_members((models, seed_arr), mesh)
        data, weights = distributed.replicate((data, weights), mesh)
    n_run = count_members(models)  # m, or m padded to a multiple of the device count
    hist: dict[str, list] = {"loss": [], "rejected": [], "stage": []}
    thetas: dict[str, list] = {}
    dead = jnp.zeros(n_run, dtype=bool)
    notes = []
    for si, stage in enumerate(stages_for(config)):
        trainable, static = split_trainable(models, stage)
        if not jtu.tree_leaves(trainable):
            notes.append(f"stage {stage.name!r} trained nothing (the model has no such group).")
            continue
        opt = eqx.filter_vmap(lambda tr, st=stage: init_opt_state(config, st, tr))(trainable)
        lr = jnp.ones(n_run, dtype=jnp.result_type(float))
        rejects = jnp.zeros(n_run, dtype=jnp.int32)
        carry = (trainable, opt, lr, rejects, dead)
        if mesh is not None:
            carry = distributed.shard_batch(distributed.to_host(carry), mesh)
        # each member's windows stay whole on its device: the members are what is split
        structural = _structural(config).replace(shard=False)
        for start, stop, h in _segments(config, stage.steps):
            run = _segment_program(structural, si, stage, h, loss_fn)
            ks = jnp.arange(start, stop)
            carry, out = run(carry, static, seed_arr, ks, data, weights)
            loss, rejected, theta = distributed.unpad(distributed.to_host(out), m)
            hist["loss"].append(loss)
            hist["rejected"].append(rejected)
            hist["stage"].append(np.full(stop - start, si))
            for k, v in theta.items():
                thetas.setdefault(k, []).append(v)
        trainable, _, _, _, dead = carry
        models = combine_trainable(trainable, static)
    if mesh is not None:  # ordinary single-device arrays, the padding dropped
        models, dead = distributed.unpad(distributed.to_local((models, dead)), m)
    jax.block_until_ready(jtu.tree_leaves(models))
    seconds = time.perf_counter() - started
    history = {k: np.concatenate(v, axis=-1) if v else np.zeros((m, 0)) for k, v in hist.items()}
    for k, v in thetas.items():
        history[f"theta/{k}"] = np.concatenate(v, axis=-1)
    diverged = np.asarray(dead)
    if diverged.any():
        notes.append(
            f"members {np.flatnonzero(diverged).tolist()} diverged (non-finite loss or "
            f"gradients for {config.max_rejects} consecutive steps) and kept their last good "
            f"state; lower lr_theta/lr_net or the horizon, or bound θ_s with a constraint."
        )
    return EnsembleResult(models, history, config, seeds, seconds, diverged, tuple(notes))


def _batched(members, u0) -> bool:
    shape = tuple(members.state_shape)
    got = tuple(jnp.shape(u0))
    if got == shape:
        return False
    if got[1:] == shape:
        return True
    raise ValueError(
        f"u0 must be one state of shape {shape} or a batch of shape (batch, *{shape}), got {got}."
    )


@eqx.filter_jit
def _rollout_all(members, u0, t0, n: int, memory: str, batched: bool):
    timed = takes_time(members)

    def one(model, u, s):
        return rollout(model, u, n, s if timed else None, memory=memory, check_finite=False)

    def per_member(model):
        if not batched:
            return one(model, u0, t0)
        if t0 is None:
            return jax.vmap(lambda u: one(model, u, None))(u0)
        return jax.vmap(lambda u, s: one(model, u, s))(u0, jnp.broadcast_to(t0, u0.shape[:1]))

    return eqx.filter_vmap(per_member)(members)


def ensemble_rollout(
    members: PyTree, u0, n: int, t0=None, *, memory: str = "full", shard: bool = False
) -> Array:
    """Roll every member of a stacked ensemble out from the same initial state(s), all
    members in one compiled program.

    **Arguments:**

    - `members`: a stacked ensemble (`train_ensemble`, `init_members`).
    - `u0`: one state (shape ``state``) or a batch (``(batch, *state)``).
    - `n`: number of steps; `t0`: time of ``u0`` (a number, or one per batch entry;
      default ``None``: 0).
    - `memory`: the rollout memory policy (matters only under differentiation).
    - `shard`: split the members over every device (`scilayers.distributed.shard_members`,
      padded to a multiple of the device count); the result is the same, gathered whole
      onto this process's default device.

    **Returns:** trajectories of shape ``(members, n + 1, *state)``, or ``(members, batch,
    n + 1, *state)`` for a batch; ``EnsemblePrediction(out)`` makes them a prediction for
    `scilayers.metrics`.
    """
    count_members(members)
    batched = _batched(members, u0)
    t0 = None if t0 is None else jnp.asarray(t0, jnp.result_type(float))
    if not shard:
        return _rollout_all(members, jnp.asarray(u0), t0, int(n), memory, batched)
    mesh = distributed.batch_mesh()
    placed, m = distributed.shard_members(members, mesh)
    u0, t0 = distributed.replicate((jnp.asarray(u0), t0), mesh)
    out = _rollout_all(placed, u0, t0, int(n), memory, batched)
    return distributed.unpad(distributed.to_local(out), m)
