"""Memory of a training step: the rollout memory policy chosen from a budget, and the peak
memory of a compiled step as XLA reports it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ..solvers import MEMORY_POLICIES, rollout

MIB = 2**20
# the innermost block of `rollout(..., memory="recursive")` (its default checkpoint_every)
_RECURSIVE_BASE = 8


def _nbytes(tree) -> int:
    leaves = [x for x in jtu.tree_leaves(tree) if hasattr(x, "shape") and hasattr(x, "dtype")]
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)


def _stored(step, state: jax.ShapeDtypeStruct, n: int, policy: str) -> int:
    """Bytes the backward pass of ``rollout(step, u0, n, memory=policy)`` keeps: the
    residuals of its VJP, found by tracing (``jax.eval_shape``), nothing is run."""
    if n < 1:
        return 0

    def residuals(model, u):
        return jax.vjp(lambda v: rollout(model, v, n, memory=policy, check_finite=False), u)[1]

    return _nbytes(eqx.filter_eval_shape(residuals, step, state))


def _carry_bytes(step, state: jax.ShapeDtypeStruct) -> int:
    init = getattr(step, "init_carry", None)
    if init is None:
        return _nbytes(state)
    return _nbytes(eqx.filter_eval_shape(lambda s, u: s.init_carry(u), step, state))


def _checkpoint_block(n: int) -> int:
    return max(2, math.isqrt(n - 1) + 1)  # `rollout`'s default block for "checkpoint"


def _recursive_blocks(n: int) -> tuple[int, ...]:
    base = _RECURSIVE_BASE
    levels = max(1, math.ceil(math.log(max(n, 2)) / math.log(base)) - 1)
    return tuple(base**i for i in range(levels, 0, -1))


def rollout_memory(step, state: jax.ShapeDtypeStruct, horizon: int, policy: str) -> int:
    """Estimated peak bytes, per trajectory, that the backward pass of an unrolled loss of
    ``horizon`` steps holds under a memory ``policy``:

    - what the forward pass keeps for the backward (the residuals of its VJP, by tracing;
      for ``"full"`` every step's intermediates, for the checkpointed policies the
      states at block boundaries), plus
    - what recomputing one block adds while its gradient is taken (``"checkpoint"``: the
      intermediates of one block of ⌈√horizon⌉ steps; ``"recursive"``: the boundaries of
      each inner level and the intermediates of one innermost block of 8 steps), plus
    - the predicted trajectory the data loss compares (``horizon`` states).

    An estimate of what the compiled program needs (XLA may fuse or reuse buffers); the
    measured peak of a compiled step is `step_memory`.
    """
    if policy not in MEMORY_POLICIES:
        raise ValueError(f"unknown memory policy {policy!r}; choose one of {MEMORY_POLICIES}.")
    out = horizon * _nbytes(state)
    stored = _stored(step, state, horizon, policy)
    if policy == "full":
        return out + stored
    if policy == "checkpoint":
        k = _checkpoint_block(horizon)
        return out + stored + (_stored(step, state, k, "full") if horizon > k else 0)
    blocks = _recursive_blocks(horizon)
    if horizon <= blocks[-1]:
        return out + stored
    inner = (len(blocks) - 1) * _RECURSIVE_BASE * _carry_bytes(step, state)
    return out + stored + inner + _stored(step, state, blocks[-1], "full")


@dataclass(frozen=True)
class MemoryPlan:
    """The rollout memory policy of a training step and why: ``policy``; ``estimates_mb``,
    the estimated peak of each policy (MiB, for the whole batch on one device,
    `rollout_memory`); ``budget_mb``; ``fits``, whether the chosen policy fits it;
    ``chosen``, whether the policy was chosen from the budget (``memory="auto"``) rather
    than given."""

    policy: str
    estimates_mb: dict[str, float]
    budget_mb: float | None
    fits: bool
    chosen: bool
    horizon: int
    batch: int

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "estimates_mb": dict(self.estimates_mb),
            "budget_mb": self.budget_mb,
            "fits": self.fits,
            "chosen": self.chosen,
            "horizon": self.horizon,
            "batch": self.batch,
        }


def plan_memory(
    step,
    state: jax.ShapeDtypeStruct,
    horizon: int,
    batch: int,
    memory: str = "auto",
    budget_mb: float | None = None,
) -> MemoryPlan:
    """The memory policy for unrolling ``step`` ``horizon`` steps from ``batch`` states of
    shape/dtype ``state`` under ``memory`` and ``budget_mb`` (`TrainConfig` fields).

    With ``memory="auto"``: ``"full"`` without a budget; with one, the fastest of
    ``"full"``, ``"checkpoint"``, ``"recursive"`` (in that order of compute) whose
    estimated peak (`rollout_memory` × ``batch``) fits, else ``"recursive"`` (the
    smallest), with ``fits=False``. An explicit policy is kept and only checked.
    Tracing only (``jax.eval_shape``): cheap, and possible inside ``jit``."""
    if memory != "auto" and memory not in MEMORY_POLICIES:
        raise ValueError(f"unknown memory {memory!r}; choose 'auto' or one of {MEMORY_POLICIES}.")
    if memory == "auto" and budget_mb is None:
        return MemoryPlan("full", {}, None, True, True, horizon, batch)
    candidates = MEMORY_POLICIES if memory == "auto" else (memory,)
    est = {p: batch * rollout_memory(step, state, horizon, p) / MIB for p in candidates}
    if memory != "auto":
        fits = budget_mb is None or est[memory] <= budget_mb
        return MemoryPlan(memory, est, budget_mb, fits, False, horizon, batch)
    for p in MEMORY_POLICIES:
        if est[p] <= budget_mb:
            return MemoryPlan(p, est, budget_mb, True, True, horizon, batch)
    return MemoryPlan("recursive", est, budget_mb, False, True, horizon, batch)


def state_struct(windows) -> jax.ShapeDtypeStruct:
    """The shape and dtype of one state of a batch of windows ``(batch, time, *state)``."""
    return jax.ShapeDtypeStruct(tuple(windows.shape[2:]), jnp.result_type(windows.dtype))


def step_memory(jitted, *args) -> dict[str, float] | None:
    """The memory of the compiled program ``jitted(*args)`` as XLA reports it
    (``lower(...).compile().memory_analysis()``), in MiB: ``arguments``, ``outputs``,
    ``temporaries`` (the largest set of intermediate buffers alive at once) and ``peak``
    (their sum less the outputs that reuse argument buffers). ``None`` where the backend
    does not report it. The compilation is JAX's cached one: calling ``jitted`` afterwards
    compiles nothing again."""
    try:
        compiled = jitted.lower(*args).compile()
        stats = compiled.memory_analysis() if hasattr(compiled, "memory_analysis") else (
            compiled.compiled.memory_analysis()
        )  # fmt: skip
    except (AttributeError, NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    if stats is None:
        return None
    arg, out = stats.argument_size_in_bytes, stats.output_size_in_bytes
    tmp, alias = stats.temp_size_in_bytes, stats.alias_size_in_bytes
    return {
        "arguments": arg / MIB,
        "outputs": out / MIB,
        "temporaries": tmp / MIB,
        "peak": (arg + out + tmp - alias) / MIB,
    }
