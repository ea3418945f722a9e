"""`rollout`: trajectories from a step function over `lax.scan`, with memory policies."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jaxtyping import PyTree

from .._typing import ScalarLike
from ._base import AbstractStepper

MEMORY_POLICIES = ("full", "checkpoint", "recursive")


class Repeated(AbstractStepper):
    """Apply a stepper ``substeps`` times: a step of ``substeps · inner.dt``
    (Exponax's ``RepeatedStepper``); ``step(u, t)`` runs the inner steps from
    ``t, t + inner.dt, …``."""

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

    def __call__(self, u, t: ScalarLike = 0.0):
        self.check(u)
        dt = self.inner.dt
        return jax.lax.fori_loop(0, self.substeps, lambda i, v: self.inner(v, t + i * dt), u)


def takes_time(step) -> bool:
    """Whether `rollout` passes time to ``step`` (``step(u, t)``): true for every scilayers
    stepper (`AbstractStepper`, which includes `Hybrid`), false for a plain function
    ``u -> u``."""
    return isinstance(step, AbstractStepper)


def _scan(step, u, n: int, out=None, ts=None):
    """``n`` steps of ``step(carry, t)`` over ``lax.scan``, ``t`` from ``ts`` (or ``None``)."""

    def body(carry, t):
        nxt = step(carry, t)
        return nxt, (nxt if out is None else out(nxt))

    return jax.lax.scan(body, u, ts, length=n)


def _blocked(step, u, n: int, blocks: tuple[int, ...], out=None, ts=None):
    """Roll ``n`` steps in checkpointed blocks; ``blocks`` lists block sizes, outer first.

    Only block boundaries are kept for the backward pass; each block is recomputed (and,
    with more than one level, recursively checkpointed again) when its gradient is needed.
    ``ts`` (shape ``(n,)`` or ``None``) are the start times of the steps.
    """
    if not blocks or n <= blocks[-1]:
        return _scan(step, u, n, out, ts)
    size, inner = blocks[0], blocks[1:]
    if n < size:
        return _blocked(step, u, n, inner, out, ts)
    q, r = divmod(n, size)

    @jax.checkpoint
    def block(carry, tb):
        return _blocked(step, carry, size, inner, out, tb)

    xs = None if ts is None else ts[: q * size].reshape(q, size)
    u, ys = jax.lax.scan(block, u, xs, length=q)
    ys = jtu.tree_map(lambda y: y.reshape(q * size, *y.shape[2:]), ys)
    if r:
        u, rest = _blocked(step, u, r, inner, out, None if ts is None else ts[q * size :])
        ys = jtu.tree_map(lambda a, b: jnp.concatenate([a, b]), ys, rest)
    return u, ys


def _untimed(step):
    """A plain ``u -> u`` as the ``(u, t) -> u`` the scan calls (``t`` is ``None``)."""

    def body(u, _):
        return step(u)

    return body


def _recursive_blocks(n: int, base: int) -> tuple[int, ...]:
    levels = max(1, math.ceil(math.log(max(n, 2)) / math.log(base)) - 1)
    return tuple(base**i for i in range(levels, 0, -1))


@jax.custom_jvp
def _per_trajectory(x, like):
    """``x`` itself, with a tangent that depends on the trajectory (see
    `_per_trajectory_tangents`)."""
    return x


def _per_trajectory_jvp(primals, tangents):
    x, like = primals
    dx, _ = tangents
    if type(dx) is SymbolicZero:  # not differentiated: nothing to accumulate
        return x, dx
    zero = jnp.where(like == like, 0, 0).astype(dx.dtype)  # a zero that depends on `like`
    return x, dx + zero


_per_trajectory.defjvp(_per_trajectory_jvp, symbolic_zeros=True)


def _per_trajectory_tangents(step, u0):
    """``step`` with the same values, but each small array leaf's tangent made to depend on
    the trajectory ``u0``.

    Under ``jax.vmap`` over trajectories, a parameter shared by the batch (θ_s, a spectral
    stepper's coefficients) gets its cotangent reduced over the batch at every step of the
    backward scan: several small reductions per step, which dominate the cost of a θ_s
    gradient at moderate batch sizes. With a per-trajectory tangent, the backward scan
    accumulates each trajectory's cotangent elementwise (fused with the rest of the step's
    backward pass) and the batch reduction happens once, after the scan. Only the primal
    computation of a differentiated rollout changes shape (the shared parameters are
    broadcast to the batch once); an undifferentiated rollout is untouched.

    Only vectors and scalars no larger than one state are tagged: accumulating network
    weights per trajectory would cost ``batch × size`` memory and turn the weight gradient
    of a convolution into per-trajectory convolutions.
    """
    leaves = [x for x in jtu.tree_leaves(u0) if eqx.is_inexact_array(x) and x.size]
    if not leaves or not isinstance(step, eqx.Module):
        return step
    like = jnp.ravel(leaves[0])[0]
    size = sum(x.size for x in leaves)

    def tag(x):
        if eqx.is_inexact_array(x) and x.ndim <= 1 and x.size <= size:
            return _per_trajectory(x, like)
        return x

    return jtu.tree_map(tag, step)


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
    t0: ScalarLike | None = None,
    *,
    memory: str = "full",
    checkpoint_every: int | None = None,
    check_finite: bool = True,
) -> PyTree:
    r"""Iterate ``step`` ``n`` times from ``u0``: returns ``[u0, u1, …, un]`` stacked on axis 0.

    Built on ``lax.scan`` (never a Python loop around a jitted step). Works on a single
    state and under ``jax.vmap`` for batches (also over ``t0``).

    Time: ``u0`` is the state at time ``t0`` and ``u_k`` the state at ``t0 + k·dt``. A
    scilayers stepper (`AbstractStepper`, `Hybrid`; see `takes_time`) is called as
    ``step(u_k, t0 + k·dt)``; the times are computed as ``t0 + k·dt`` (not summed step by
    step), so they carry no accumulated round-off. A plain function is called as
    ``step(u)``.

    **Arguments:**

    - `step`: a stepper or a `Hybrid` (``(u, t) -> u``), or any function ``u -> u``.
    - `u0`: the initial state (array or pytree).
    - `n`: number of steps (>= 0).
    - `t0`: the time of ``u0`` (default ``None``: 0), a scalar (traced is fine); only for
      a step that takes time — a plain function with a `t0` is an error.
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
    timed = takes_time(step)
    if timed:
        step.check(u0)
    if t0 is not None:
        if not timed:
            raise ValueError(
                f"rollout got t0 but step {type(step).__name__} is a plain function u -> u "
                f"that takes no time; use a scilayers stepper (an AbstractStepper or a "
                f"Hybrid), which is called as step(u, t), or leave t0 out."
            )
        if jnp.ndim(t0) != 0:
            raise ValueError(
                f"rollout expects a scalar t0, got shape {jnp.shape(t0)}; for a batch of "
                f"start times use jax.vmap over u0 and t0 together."
            )

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
    out, ts = None, None
    prepare = getattr(step, "prepare", None)
    if prepare is not None:  # θ_s-dependent coefficients once per trajectory, not per step
        step = prepare()
    step = _per_trajectory_tangents(step, u0)  # cheaper θ_s gradients of vmapped rollouts
    if timed:
        dtype = jnp.result_type(float)
        start = jnp.zeros((), dtype) if t0 is None else jnp.asarray(t0, dtype)
        ts = start + step.dt * jnp.arange(n, dtype=dtype)
        body = step
    else:
        body = _untimed(step)
    # start in the dtype a step produces (e.g. float32 data with float64 θ_s), so the scan
    # carry keeps one type and nothing is computed in the lower precision
    probe = None if ts is None else jax.ShapeDtypeStruct((), ts.dtype)
    u0 = jtu.tree_map(lambda x, t: x.astype(t.dtype), u0, jax.eval_shape(body, u0, probe))
    carry0 = u0
    if hasattr(step, "init_carry"):  # e.g. ETDRK4 carries (û, u): fewer FFTs per step
        body, carry0, out = step.step_carry, step.init_carry(u0), step.carry_output
    if memory == "full":
        _, ys = _scan(body, carry0, n, out, ts)
    elif memory == "checkpoint":
        k = checkpoint_every or max(2, math.isqrt(n - 1) + 1)
        _, ys = _blocked(body, carry0, n, (k,), out, ts)
    else:
        blocks = _recursive_blocks(n, checkpoint_every or 8)
        _, ys = _blocked(body, carry0, n, blocks, out, ts)
    traj = jtu.tree_map(lambda a, b: jnp.concatenate([a[None], b]), u0, ys)

    if check_finite and concrete and not isinstance(jtu.tree_leaves(traj)[0], jax.core.Tracer):
        bad = _first_nonfinite(traj)
        if bad is not None:
            raise ValueError(
                f"the solution blew up (NaN/Inf) at step {bad} of {n}; reduce dt, or check "
                f"that θ_s is physical (e.g. positive diffusion)."
            )
    return traj
