"""Any ODE model through Diffrax."""

from __future__ import annotations

import diffrax
import equinox as eqx
from jaxtyping import Array

from ..models import AbstractModel
from ._base import AbstractStepper


def _vector_field(t, y, model):
    return model.rhs(y)


class Diffrax(AbstractStepper):
    r"""Advance an ODE model ``du/dt = f(u; θ_s)`` by ``dt`` with a Diffrax solver.

    **Arguments:**

    - `model`: any `AbstractModel` (its ``rhs`` is the vector field).
    - `dt`: the step of the returned map (> 0).
    - `solver`: a Diffrax solver (default ``diffrax.Tsit5()``).
    - `substeps`: fixed internal steps per ``dt`` (default 1); ignored with a
      `stepsize_controller` other than constant.
    - `adjoint`: how gradients are computed: ``diffrax.RecursiveCheckpointAdjoint()``
      (default, discretise-then-optimise), ``diffrax.DirectAdjoint()`` or
      ``diffrax.BacksolveAdjoint()`` (continuous adjoint).
    - `stepsize_controller`: default ``diffrax.ConstantStepSize()``.
    - `max_steps`: cap on internal steps for adaptive controllers.
    """

    model: AbstractModel
    dt: float = eqx.field(static=True)
    solver: diffrax.AbstractSolver = eqx.field(default_factory=diffrax.Tsit5)
    substeps: int = eqx.field(static=True, default=1)
    adjoint: diffrax.AbstractAdjoint = eqx.field(default_factory=diffrax.RecursiveCheckpointAdjoint)
    stepsize_controller: diffrax.AbstractStepSizeController = eqx.field(
        default_factory=diffrax.ConstantStepSize
    )
    max_steps: int = eqx.field(static=True, default=4096)

    def __check_init__(self):
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}.")

    def __call__(self, u: Array) -> Array:
        self.check(u)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_vector_field),
            self.solver,
            t0=0.0,
            t1=self.dt,
            dt0=self.dt / self.substeps,
            y0=u,
            args=self.model,
            adjoint=self.adjoint,
            stepsize_controller=self.stepsize_controller,
            max_steps=self.max_steps,
            saveat=diffrax.SaveAt(t1=True),
        )
        return sol.ys[-1]
