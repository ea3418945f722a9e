"""Abstract time stepper: a module mapping one state to the next."""

from __future__ import annotations

import abc

import equinox as eqx
import numpy as np
from jaxtyping import Array

from .._typing import ScalarLike
from ..models import check_state


class AbstractStepper(eqx.Module):
    """A differentiable one-step map ``u(t + dt) = Φ_dt(u(t), t; θ_s)``.

    A stepper holds its `model` (and so its θ_s) as a field; all coefficients derived from
    θ_s are computed inside ``__call__`` so gradients reach the parameters.

    Time contract: ``stepper(u, t)`` advances the state ``u`` at time ``t`` to time
    ``t + dt``; ``t`` defaults to 0 and is ignored by an autonomous model (so
    ``stepper(u)`` is the step of an autonomous model, as before). `rollout` passes
    ``t = t0 + k·dt`` to step ``k``. Every solver evaluates a time-dependent model at its
    own stage times inside ``[t, t + dt]``.
    """

    # Subclasses provide `model: AbstractModel` and `dt: float`, as fields or (for wrappers
    # such as `Repeated`) as properties; they are not declared here so that both work.

    def __check_init__(self):
        dt = self.dt
        if not (np.ndim(dt) == 0 and np.isfinite(dt) and float(dt) > 0):
            raise ValueError(
                f"{type(self).__name__}: dt must be a positive finite number, got {dt!r}."
            )

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self.model.state_shape

    def check(self, u: Array) -> None:
        """Raise a `ValueError` if ``u`` is not a single state of the model."""
        check_state(u, self.state_shape, type(self).__name__)

    @abc.abstractmethod
    def __call__(self, u: Array, t: ScalarLike = 0.0) -> Array:
        """Advance ``u``, the state at time ``t`` (default 0), by one step ``dt``."""
