"""Typed training configuration."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

STRATEGIES = ("joint", "staged", "fixed")
SCHEDULES = ("constant", "cosine")
#: `TrainConfig.memory`: a rollout memory policy, or "auto" (chosen from the budget).
MEMORY_CHOICES = ("auto", "full", "checkpoint", "recursive")
#: Fields that change how a step is computed but not its result (beyond round-off): a
#: checkpoint may be resumed with other values of these.
EXECUTION_FIELDS = ("memory", "memory_budget_mb", "shard")


@dataclass(frozen=True)
class TrainConfig:
    """How `fit` trains a model. All fields are plain values; saved with every result.

    **Arguments:**

    - `strategy`: ``"joint"`` (θ_s and θ_ml from the start), ``"staged"`` (calibrate θ_s
      with the network off, then fit θ_ml with θ_s frozen, then optionally fine-tune both;
      split by `stage_fractions`) or ``"fixed"`` (θ_s frozen at its initial value).
    - `steps`: optimiser steps in total; `batch_size`: windows per step.
    - `horizon`: unrolled steps per window; `horizon_schedule`: optional increasing
      horizons used over equal parts of training (e.g. ``(5, 10, 20)``).
    - `lr_theta`, `lr_net`: Adam learning rates for θ_s and θ_ml; `schedule`:
      ``"constant"`` or ``"cosine"`` (decay to 10 %).
    - `lambda_data`, `lambda_physics`, `lambda_prior`, `lambda_closure`: loss weights
      (``λ_d L_data + λ_p L_physics - λ_prior log p(θ_s) + λ_c ||closure||²``), all >= 0.
    - `clip_norm`: global gradient-norm clip (``None`` disables).
    - `stage_fractions`: fraction of `steps` for calibrate / network / fine-tune stages.
    - `val_every`: evaluate the validation loss every so many steps; `patience`: stop a
      stage after this many evaluations without improvement (``None``: never); the best
      validated state of each stage is kept.
    - `checkpoint_every`: write an atomic checkpoint every so many steps (0: never).
    - `memory`: what the backward pass of the unrolled loss stores (`scilayers.rollout`):
      ``"full"``, ``"checkpoint"`` or ``"recursive"``, used as given; or ``"auto"``
      (default): ``"full"`` without a `memory_budget_mb`, else the fastest policy whose
      estimated memory (`scilayers.training.plan_memory`) fits the budget.
    - `memory_budget_mb`: memory for one training step's rollouts, in MiB (``None``: no
      limit). With an explicit `memory` the budget is only checked, and `fit` notes it
      when the estimate exceeds it.
    - `shard`: split each step's batch of windows over every device (a one-axis mesh,
      `scilayers.distributed.batch_mesh`; parameters and data replicated, the gradient
      reduction left to XLA); `batch_size` must be a multiple of the device count. The
      same program runs on one CPU, several local devices and several processes (after
      `scilayers.distributed.initialize`); results do not depend on the device count
      beyond round-off. Like `memory`, it may differ when resuming a checkpoint.
    - `max_rejects`: consecutive non-finite steps tolerated (each halves the learning
      rate, `reject_factor`) before training stops with a message.
    - `seed`: drives data order and any randomness of training.
    - `observed`: the observation operator of sparse measurements: flat indices (into a
      state raveled in C order) of the components the data loss compares (``None``: all).
      Windows still start from full states; only these components of the rollout are
      fitted, as when a clinician measures pressure at one site and flow at the inlet.
    """

    strategy: str = "joint"
    steps: int = 500
    batch_size: int = 32
    horizon: int = 20
    horizon_schedule: tuple[int, ...] = ()
    lr_theta: float = 2e-2
    lr_net: float = 1e-3
    schedule: str = "cosine"
    lambda_data: float = 1.0
    lambda_physics: float = 0.0
    lambda_prior: float = 0.0
    lambda_closure: float = 0.0
    clip_norm: float | None = 1.0
    stage_fractions: tuple[float, float, float] = (0.3, 0.5, 0.2)
    val_every: int = 50
    patience: int | None = None
    checkpoint_every: int = 0
    memory: str = "auto"
    memory_budget_mb: float | None = None
    shard: bool = False
    max_rejects: int = 20
    reject_factor: float = 0.5
    seed: int = 0
    observed: tuple[int, ...] | None = None

    @property
    def longest_horizon(self) -> int:
        """The longest window training unrolls: the largest of `horizon_schedule`, else
        `horizon` (trajectories must hold ``longest_horizon + 1`` states)."""
        return int(max(self.horizon_schedule or (self.horizon,)))

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}.")
        for name in ("lambda_data", "lambda_physics", "lambda_prior", "lambda_closure"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}.")
        for name in ("steps", "batch_size", "horizon", "val_every", "max_rejects"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        for name in ("lr_theta", "lr_net"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite learning rate >= 0, got {v}.")
        if self.observed is not None:
            obs = tuple(self.observed)
            if not obs or not all(isinstance(i, int) and i >= 0 for i in obs):
                raise ValueError(
                    f"observed must be a non-empty tuple of flat component indices >= 0 (or "
                    f"None for all), got {self.observed!r}."
                )
            object.__setattr__(self, "observed", obs)
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}.")
        if any(h < 1 for h in self.horizon_schedule):
            raise ValueError(f"horizon_schedule entries must be >= 1: {self.horizon_schedule}.")
        fr = self.stage_fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or sum(fr) <= 0:
            raise ValueError(f"stage_fractions must be three non-negative numbers, got {fr}.")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}.")
        if self.memory not in MEMORY_CHOICES:
            raise ValueError(f"unknown memory {self.memory!r}; choose one of {MEMORY_CHOICES}.")
        if self.memory_budget_mb is not None and not (
            math.isfinite(self.memory_budget_mb) and self.memory_budget_mb > 0
        ):
            raise ValueError(
                f"memory_budget_mb must be a positive number of MiB or None, got "
                f"{self.memory_budget_mb}."
            )
        if not 0 < self.reject_factor < 1:
            raise ValueError(f"reject_factor must be in (0, 1), got {self.reject_factor}.")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["horizon_schedule"] = list(self.horizon_schedule)
        d["stage_fractions"] = list(self.stage_fractions)
        if self.observed is not None:
            d["observed"] = list(self.observed)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {sorted(unknown)}.")
        d = dict(d)
        for k in ("horizon_schedule", "stage_fractions"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)
