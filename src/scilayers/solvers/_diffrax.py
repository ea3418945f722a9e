"""Any ODE model through Diffrax."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array

from .._typing import ScalarLike
from ..models import AbstractModel
from ._base import AbstractStepper
from ._stability import check_explicit_stability


def direct_adjoint(tree):
    """``tree`` (a stepper, a `Hybrid`, any pytree) with every Diffrax adjoint in it replaced
    by ``diffrax.DirectAdjoint()``, which supports forward-mode autodiff and so second
    derivatives (``jax.hessian``) as well as reverse mode, at a higher compile cost than the
    default ``RecursiveCheckpointAdjoint``. `scilayers.training.theta_hessian` applies it."""

    def is_adjoint(x):
        return isinstance(x, diffrax.AbstractAdjoint)

    return jtu.tree_map(
        lambda x: diffrax.DirectAdjoint() if is_adjoint(x) else x, tree, is_leaf=is_adjoint
    )


def _vector_field(s, y, args):
    model, t = args  # the model travels as `args` (not a closure) so every adjoint works
    return model.vector_field(t + s, y)


class Diffrax(AbstractStepper):
    r"""Advance an ODE model ``du/dt = f(t, u; θ_s)`` by ``dt`` with a Diffrax solver.

    ``step(u, t)`` integrates from ``t`` to ``t + dt``. Diffrax runs on the local time
    ``s ∈ [0, dt]`` and the vector field is evaluated at ``f(t + s, u)`` (the model's
    `vector_field`), so every solver stage sees its own time, the internal step sizes are
    exactly ``dt / substeps`` whatever ``t`` is, and an autonomous model gets the same map
    at every ``t``.

    **Arguments:**

    - `model`: any `AbstractModel` (its ``vector_field(t, u)`` is integrated).
    - `dt`: the step of the returned map (> 0).
    - `solver`: a Diffrax solver (default ``diffrax.Tsit5()``).
    - `substeps`: fixed internal steps per ``dt`` (default 1); ignored with a
      `stepsize_controller` other than constant.
    - `adjoint`: how gradients are computed: ``diffrax.RecursiveCheckpointAdjoint()``
      (default, discretise-then-optimise, reverse mode only), ``diffrax.DirectAdjoint()``
      or ``diffrax.BacksolveAdjoint()`` (continuous adjoint). Forward-mode derivatives
      (``jax.jvp``, ``jax.jacfwd``) and so second derivatives (``jax.hessian`` of a loss
      with respect to θ_s, as a Laplace approximation needs) need
      ``adjoint=diffrax.DirectAdjoint()`` (or `direct_adjoint` on a whole model, or
      `scilayers.training.theta_hessian`, which does it for you); a step called directly
      under forward mode with another adjoint raises a `ValueError` that says so (inside
      ``lax.scan``, e.g. `rollout`, JAX raises its own ``TypeError`` "can't apply
      forward-mode autodiff (jvp) to a custom_vjp function" first).
    - `stepsize_controller`: default ``diffrax.ConstantStepSize()``.
    - `max_steps`: cap on internal steps for adaptive controllers.
    - `stability_check`: (default ``True``) for a fixed step (``ConstantStepSize``) of an
      explicit Runge–Kutta solver (``Euler``, ``Heun``, ``Midpoint``, ``Ralston``,
      ``Bosh3``, ``Tsit5``, ``Dopri5``, ``Dopri8``), check at construction that the internal
      step ``dt/substeps`` is inside the solver's linear stability region at the model's
      initial state ``initial_condition(jax.random.key(0))`` and raise a `ValueError`
      naming the stable ``dt`` otherwise (`check_stability`; an explicit scheme beyond
      its limit returns finite garbage, not NaN). Skipped for adaptive controllers,
      implicit solvers and a model built from traced values.
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
    stability_check: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}.")
        dt_ok = np.ndim(self.dt) == 0 and np.isfinite(self.dt) and self.dt > 0
        traced = any(isinstance(x, jax.core.Tracer) for x in jtu.tree_leaves(self.model))
        if self.stability_check and dt_ok and not traced:
            self.check_stability()

    def check_stability(self, u: Array | None = None) -> None:
        """Raise a `ValueError` if a fixed step of an explicit solver is linearly unstable
        at the state ``u`` (default: ``model.initial_condition(jax.random.key(0))``); a
        no-op for adaptive controllers and solvers that are not explicit Runge–Kutta.

        The test compares the solver's stability function ``R`` at ``h·λ`` (``h =
        dt/substeps``, λ the eigenvalues of ``∂f/∂u`` at ``u``, ``t = 0``) with the growth
        of the exact flow; see `scilayers.solvers.check_explicit_stability` for the
        criterion and its approximations."""
        if not isinstance(self.stepsize_controller, diffrax.ConstantStepSize):
            return
        if u is None:
            u = self.model.initial_condition(jax.random.key(0))
        self.check(u)
        check_explicit_stability(
            lambda x: self.model.vector_field(0.0, x),
            u,
            self.solver,
            self.dt / self.substeps,
            self.substeps,
        )

    def __call__(self, u: Array, t: ScalarLike = 0.0) -> Array:
        self.check(u)
        try:
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(_vector_field),
                self.solver,
                t0=0.0,
                t1=self.dt,
                dt0=self.dt / self.substeps,
                y0=u,
                # t as an array: diffeqsolve (jitted) then compiles once for every float t
                args=(self.model, jnp.asarray(t, jnp.result_type(float))),
                adjoint=self.adjoint,
                stepsize_controller=self.stepsize_controller,
                max_steps=self.max_steps,
                saveat=diffrax.SaveAt(t1=True),
            )
        except TypeError as e:
            if "forward-mode" not in str(e) or "custom_vjp" not in str(e):
                raise
            raise ValueError(
                f"forward-mode differentiation (jax.jvp, jax.jacfwd, and so jax.hessian, "
                f"e.g. second derivatives of a loss with respect to θ_s) cannot pass through "
                f"Diffrax with adjoint={type(self.adjoint).__name__}(); use "
                f"adjoint=diffrax.DirectAdjoint() for second derivatives: "
                f"sl.solvers.Diffrax(model, dt, adjoint=diffrax.DirectAdjoint())."
            ) from e
        return sol.ys[-1]
