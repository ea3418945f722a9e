"""A closure trained *a priori*: regression on instantaneous subgrid tendencies."""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..params import network
from ..training import TrainConfig


def a_priori_closure(
    net,
    states,
    tendencies,
    config: TrainConfig,
    *,
    val: tuple | None = None,
) -> tuple[eqx.Module, dict]:
    r"""Train ``net`` offline to reproduce known subgrid tendencies, ``net(x) ≈ U``.

    The *a priori* way a closure is usually trained (e.g. Rasp et al. 2018): a regression
    of the true unresolved tendency on the resolved state, one instant at a time, without
    the solver. Its counterpart, training through the solver on multi-step trajectories
    (*a posteriori*), is `scilayers.fit` on a `Hybrid`. Uses the network's learning rate
    ``config.lr_net``, ``config.steps`` Adam steps on minibatches of ``config.batch_size``
    states (seeded by ``config.seed``), the same cosine/constant schedule and gradient
    clipping; with ``val`` the best validated weights are kept.

    **Arguments:**

    - `net`: the network (state → tendency of the same shape).
    - `states`, `tendencies`: arrays ``(samples, *state)``.
    - `config`: the training budget (`TrainConfig`).
    - `val`: optional ``(states, tendencies)`` for validation every ``config.val_every``.

    Returns ``(trained net, history)`` with ``step``, ``loss`` and, with ``val``,
    ``val_step`` and ``val_loss``.
    """
    x = jnp.asarray(states)
    y = jnp.asarray(tendencies)
    if x.shape != y.shape:
        raise ValueError(f"a_priori_closure: states {x.shape} and tendencies {y.shape} must "
                         "have the same shape (samples, *state).")  # fmt: skip
    if not (np.isfinite(np.asarray(x)).all() and np.isfinite(np.asarray(y)).all()):
        raise ValueError("a_priori_closure: states and tendencies must be finite.")
    n = x.shape[0]
    batch = min(config.batch_size, n)
    sched = (optax.cosine_decay_schedule(config.lr_net, config.steps, alpha=0.1)
             if config.schedule == "cosine" else config.lr_net)  # fmt: skip
    opt = optax.chain(
        optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
        optax.adam(sched),
    )
    params, static = eqx.partition(net, network(net))
    state = opt.init(params)

    def loss_fn(p, xb, yb):
        pred = jax.vmap(eqx.combine(p, static))(xb)
        return jnp.mean((pred - yb) ** 2)

    @eqx.filter_jit
    def update(p, s, key):
        idx = jax.random.randint(key, (batch,), 0, n)
        loss, g = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    val_loss = None
    if val is not None:
        vx, vy = jnp.asarray(val[0]), jnp.asarray(val[1])
        val_loss = eqx.filter_jit(lambda p: loss_fn(p, vx, vy))
    key = jax.random.key(config.seed)
    hist: dict = {"step": [], "loss": [], "val_step": [], "val_loss": []}
    best, best_params = np.inf, params
    t0 = time.perf_counter()
    for i in range(config.steps):
        params, state, loss = update(params, state, jax.random.fold_in(key, i))
        hist["step"].append(i)
        hist["loss"].append(float(loss))
        if val_loss is not None and ((i + 1) % config.val_every == 0 or i + 1 == config.steps):
            v = float(val_loss(params))
            hist["val_step"].append(i + 1)
            hist["val_loss"].append(v)
            if v < best:
                best, best_params = v, params
    if val_loss is None:
        best_params = params
    hist["seconds"] = time.perf_counter() - t0
    return eqx.combine(best_params, static), {k: np.asarray(v) for k, v in hist.items()}
