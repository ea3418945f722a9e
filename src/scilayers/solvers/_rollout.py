"""`rollout`: trajectories from a step function over `lax.scan`, with memory policies."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from ._base import AbstractStepper

MEMORY_POLICIES = ("full", "checkpoint", "recursive")


class Repeated(AbstractStepper):
    """Apply a stepper ``substeps`` times: a step of ``substeps · inner.dt``
    (Exponax's ``RepeatedStepper``)."""

    inner: AbstractStepper
    substeps: int = eqx.field(static=True)

    def __check_init__(self):
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}.")

    @property
    def model(self):
        return self.inner.model

    @property
    def dt(self):
        return self.inner.dt * self.substeps

    def prepare(self) -> Repeated:
        """`Repeated` over the prepared inner stepper (see `ETDRK4.prepare`)."""
        prep = getattr(self.inner, "prepare", None)
        return self if prep is None else Repeated(prep(), self.substeps)

    def __call__(self, u):
        self.check(u)
        return jax.lax.fori_loop(0, self.substeps, lambda _, v: self.inner(v), u)


def _scan(step, u, n: int, out=None):
    def body(carry, _):
        nxt = step(carry)
        return nxt, (nxt if out is None else out(nxt))

    return jax.lax.scan(body, u, None, length=n)


def _blocked(step, u, n: int, blocks: tuple[int, ...], out=None):
    """Roll ``n`` steps in checkpointed blocks; ``blocks`` lists block sizes, outer first.

    Only block boundaries are kept for the backward pass; each block is recomputed (and,
    with more than one level, recursively checkpointed again) when its gradient is needed.
    """
    if not blocks or n <= blocks[-1]:
        return _scan(step, u, n, out)
    size, inner = blocks[0], blocks[1:]
    if n < size:
        return _blocked(step, u, n, inner, out)
    q, r = divmod(n, size)

    @jax.checkpoint
    def block(carry):
        return _blocked(step, carry, size, inner, out)

    u, ys = jax.lax.scan(lambda c, _: block(c), u, None, length=q)
    ys = jtu.tree_map(lambda y: y.reshape(q * size, *y.shape[2:]), ys)
    if r:
        u, rest = _blocked(step, u, r, inner, out)
        ys = jtu.tree_map(lambda a, b: jnp.concatenate([a, b]), ys, rest)
    return u, ys


def _recursive_blocks(n: int, base: int) -> tuple[int, ...]:
    levels = max(1, math.ceil(math.log(max(n, 2)) / math.log(base)) - 1)
    return tuple(base**i for i in range(levels, 0, -1))


def _first_nonfinite(traj) -> int | None:
    leaves = [np.asarray(x) for x in jtu.tree_leaves(traj)]
    bad = np.zeros(leaves[0].shape[0], dtype=bool)
    for x in leaves:
        bad |= ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    idx = np.flatnonzero(bad)
    return int(idx[0]) if idx.size else None


def rollout(
    step: Callable[[PyTree], PyTree],
    u0: PyTree,
    n: int,
    *,
    memory: str = "full",
    checkpoint_every: int | None = None,
    check_finite: bool = True,
) -> PyTree:
    r"""Iterate ``step`` ``n`` times from ``u0``: returns ``[u0, u1, …, un]`` stacked on axis 0.

    Built on ``lax.scan`` (never a Python loop around a jitted step). Works on a single
    state and under ``jax.vmap`` for batches.

    **Arguments:**

    - `step`: any function ``u -> u`` (a stepper, a `Hybrid`, a closure).
    - `u0`: the initial state (array or pytree).
    - `n`: number of steps (>= 0).
    - `memory`: what the backward pass keeps:
        - ``"full"`` stores every intermediate of every step (fastest, O(n) memory);
        - ``"checkpoint"`` stores the state every `checkpoint_every` steps
          (default ``⌈√n⌉``) and recomputes inside a block, O(n/k + k) memory;
        - ``"recursive"`` nests checkpointed blocks of sizes ``k^L, …, k`` (``k`` =
          `checkpoint_every`, default 8), O(k log_k n) memory at O(n log_k n) compute.
      All three give the same values and gradients.
    - `check_finite`: outside ``jit``, raise a `ValueError` naming the first step whose
      state is not finite (an unstable time step or non-physical θ_s); inside ``jit`` the
      initial state is checked with ``eqx.error_if``.
    """
    if memory not in MEMORY_POLICIES:
        raise ValueError(f"unknown memory policy {memory!r}; choose one of {MEMORY_POLICIES}.")
    if not (isinstance(n, int | np.integer) and n >= 0):
        raise ValueError(f"rollout needs a non-negative integer number of steps, got {n!r}.")
    if checkpoint_every is not None and checkpoint_every < 2:
        raise ValueError(f"checkpoint_every must be >= 2, got {checkpoint_every}.")
    if isinstance(step, AbstractStepper):
        step.check(u0)

    leaves = jtu.tree_leaves(u0)
    concrete = not any(isinstance(x, jax.core.Tracer) for x in leaves)
    if check_finite:
        if concrete:
            if not all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves):
                raise ValueError(
                    "the initial state contains NaN or Inf; clean or impute the data before "
                    "the rollout."
                )
        else:
            ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
            u0 = eqx.error_if(
                u0,
                ~ok,
                "the initial state contains NaN or Inf; clean or impute the data before the "
                "rollout.",
            )

    if n == 0:
        return jtu.tree_map(lambda x: x[None], u0)
    out = None
    prepare = getattr(step, "prepare", None)
    if prepare is not None:  # θ_s-dependent coefficients once per trajectory, not per step
        step = prepare()
    # start in the dtype a step produces (e.g. float32 data with float64 θ_s), so the scan
    # carry keeps one type and nothing is computed in the lower precision
    u0 = jtu.tree_map(lambda x, t: x.astype(t.dtype), u0, jax.eval_shape(step, u0))
    body, carry0 = step, u0
    if hasattr(step, "init_carry"):  # e.g. ETDRK4 carries (û, u): fewer FFTs per step
        body, carry0, out = step.step_carry, step.init_carry(u0), step.carry_output
    if memory == "full":
        _, ys = _scan(body, carry0, n, out)
    elif memory == "checkpoint":
        k = checkpoint_every or max(2, math.isqrt(n - 1) + 1)
        _, ys = _blocked(body, carry0, n, (k,), out)
    else:
        _, ys = _blocked(body, carry0, n, _recursive_blocks(n, checkpoint_every or 8), out)
    traj = jtu.tree_map(lambda a, b: jnp.concatenate([a[None], b]), u0, ys)

    if check_finite and concrete and not isinstance(jtu.tree_leaves(traj)[0], jax.core.Tracer):
        bad = _first_nonfinite(traj)
        if bad is not None:
            raise ValueError(
                f"the solution blew up (NaN/Inf) at step {bad} of {n}; reduce dt, or check "
                f"that θ_s is physical (e.g. positive diffusion)."
            )
    return traj
