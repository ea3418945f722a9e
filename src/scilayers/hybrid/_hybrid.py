"""`Hybrid`: a scientific stepper coupled with a neural network."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array

from ..models import AbstractModel, AbstractSpectralModel
from ..params import is_param, partition
from ..solvers import AbstractStepper, Repeated
from ._projections import AbstractProjection
from ._sensitivity import forward_mode, orthogonalize, orthogonalize_rfft, sensitivity

COUPLINGS = ("closure", "residual", "parameter")
IDENTIFIABLE = (None, "orthogonal")


def _check_output(net, u) -> None:
    """Raise at trace time if ``net`` does not map the state ``u`` to its own shape."""
    out = eqx.filter_eval_shape(net, u)
    shape = getattr(out, "shape", None)
    if shape != u.shape:
        raise ValueError(
            f"the closure/residual network maps a state of shape {u.shape} to "
            f"{shape if shape is not None else type(out).__name__}; it must return the "
            f"state's shape {u.shape} (e.g. channels_out=1 for a PeriodicCNN1d, or an MLP "
            f"with out_size={u.size} reshaped to the state)."
        )


class _Term(eqx.Module):
    """``scale · P⊥(Π(N)(u))``: the network, its projection Π (optional) and the removal of
    the θ_s sensitivities P⊥ (when given)."""

    net: Callable
    projection: AbstractProjection | None
    scale: float = eqx.field(static=True)

    def raw(self, u: Array) -> Array:
        """``Π(N)(u)``, checked to have the state's shape."""
        _check_output(self.net, u)
        g = self.net(u) if self.projection is None else self.projection(self.net, u)
        if g.shape != u.shape:
            raise ValueError(
                f"{type(self.projection).__name__} returned shape {g.shape} for a state of "
                f"shape {u.shape}."
            )
        return g

    def __call__(self, u: Array, sens: Callable[[], Array | None] | None = None) -> Array:
        g = self.raw(u)
        if sens is not None:
            g = orthogonalize(g, sens())
        return self.scale * g


class _ClosedSpectral(AbstractSpectralModel):
    """A spectral model whose nonlinear part also holds a closure term."""

    inner: AbstractSpectralModel
    term: _Term
    orthogonal: bool = eqx.field(static=True)
    length: float = eqx.field(static=True)
    n: int = eqx.field(static=True)

    def __init__(self, inner, term, orthogonal):
        self.inner, self.term, self.orthogonal = inner, term, orthogonal
        self.length, self.n = inner.length, inner.n

    def linear_operator(self):
        return self.inner.linear_operator()

    def nonlinear_hat(self, u_hat, mask=None, u=None):
        u = jnp.fft.irfft(u_hat, self.n) if u is None else u
        g_hat = jnp.fft.rfft(self.term.raw(u))
        if self.orthogonal:
            # sensitivities of the stage's right-hand side L û + N̂(û), in Fourier space:
            # for KS every column is an elementwise product, so no extra FFT is needed
            def stage_rhs(m):
                return m.linear_operator() * u_hat + m.nonlinear_hat(u_hat, mask, u)

            g_hat = orthogonalize_rfft(g_hat, sensitivity(self.inner, stage_rhs), self.n)
        return self.inner.nonlinear_hat(u_hat, mask, u) + self.term.scale * g_hat


class _ClosedODE(AbstractModel):
    """An ODE model whose right-hand side also holds a closure term."""

    inner: AbstractModel
    term: _Term
    orthogonal: bool = eqx.field(static=True)

    @property
    def state_shape(self):
        return self.inner.state_shape

    def rhs(self, u):
        def sens():
            return sensitivity(self.inner, lambda m: m.rhs(u))

        return self.inner.rhs(u) + self.term(u, sens if self.orthogonal else None)

    def initial_condition(self, key):
        return self.inner.initial_condition(key)


def _closed(model, term: _Term, orthogonal: bool):
    if isinstance(model, AbstractSpectralModel):
        return _ClosedSpectral(model, term, orthogonal)
    return _ClosedODE(model, term, orthogonal)


def _with_model(step, change):
    """``step`` with its model replaced by ``change(model)`` (through `Repeated`)."""
    if isinstance(step, Repeated):
        return eqx.tree_at(lambda s: s.inner, step, _with_model(step.inner, change))
    return eqx.tree_at(lambda s: s.model, step, change(step.model))


class Hybrid(eqx.Module):
    r"""A scientific stepper ``Φ_dt(·; θ_s)`` coupled with a network ``N(·; θ_ml)``.

    Couplings:

    - ``"closure"``: the network adds a term to the equation itself,
      ``u_t = L u + N_phys(u; θ_s) + scale · g(u; θ_ml)`` (a universal differential
      equation), and the stepper integrates the sum: for ETDRK4 the term joins the
      nonlinear part at every stage, so it is integrated at the scheme's order.
    - ``"residual"``: the network corrects the solver output,
      ``u_{n+1} = v + scale · g(v)`` with ``v = Φ_dt(u_n)``.
    - ``"parameter"``: the network maps a context ``context(u_n)`` (default the state) to
      offsets of the unconstrained θ_s, which then drive the solver:
      ``u_{n+1} = Φ_dt(u_n; θ_s + g(context))``.

    Keeping θ_s identifiable (closure and residual couplings). A flexible network can
    imitate a change of θ_s, and then the data no longer determine θ_s. Two remedies:

    - ``projection=``: an `AbstractProjection` that restricts the network to a class of
      operators no θ_s can express, e.g. `OddSignReflection()` for KS and Burgers
      (``g = Π(N)``).
    - ``identifiable="orthogonal"``: at every state where the term is evaluated, remove its
      least-squares component along the sensitivities of the physics,
      ``g⊥ = g − J (JᵀJ + εI)⁻¹ Jᵀ g`` (see `orthogonalize`), so that no change of θ_s can be
      absorbed locally, for any model and without knowing what the physics misses. For
      ``closure``, ``J_i(u) = ∂f(u; θ_s)/∂θ_i`` is the sensitivity of the right-hand side
      the stage evaluates (``L û + N̂(û)`` for a spectral model, projected on Fourier
      coefficients with the fields' inner product, so no extra FFT; ``rhs(u)`` for an
      ODE), so the projection happens inside every solver stage; on KS (n = 64, CNN
      closure) a training step costs about 1.1x the unrestricted one. For ``residual``,
      ``J_i = ∂Φ_dt(u_n; θ_s)/∂θ_i``, the sensitivity of the one-step map from the step's
      start state (exact for stiff problems, where ``dt·∂f/∂θ`` is not). ``J`` comes from
      forward-mode JAX over the values of the free `Param`s (``p`` JVPs sharing one
      primal) and is computed at stop-gradient θ_s: the projection is a constraint on the
      network's function space at the current θ_s, θ_s is learned only through the
      physics terms, and gradients with respect to the state still pass through ``J``
      (exact gradients for models linear in θ_s, such as KS and Burgers). Pointwise
      orthogonality removes ``p`` directions per state: for a state of only a few
      components (a pendulum) it can remove a missing term that is collinear with a
      sensitivity at each state (quadratic drag vs. linear damping).

    With both, the projection is applied first. A `Hybrid` is a step function like any
    other: `rollout`, losses and `fit` work unchanged.

    **Arguments:**

    - `step`: a stepper (`ETDRK4`, `StrangSplitting`, `Diffrax`, `Repeated`).
    - `net`: an Equinox network mapping a state to a state (``closure``/``residual``) or a
      context to a vector with one entry per free `Param` (``parameter``).
    - `coupling`: one of ``"closure"``, ``"residual"``, ``"parameter"``.
    - `scale`: multiplies the network's output (default 1).
    - `projection`: an `AbstractProjection` (default ``None``).
    - `context`: for ``"parameter"``, a function of the state giving the network input.
    - `identifiable`: ``None`` (default) or ``"orthogonal"``.
    - `symmetry`: removed; ``"ks-odd"`` is now ``projection=OddSignReflection()``.
    """

    step: AbstractStepper
    net: eqx.Module
    coupling: str = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    projection: AbstractProjection | None
    context: Callable | None = eqx.field(static=True)
    identifiable: str | None = eqx.field(static=True)

    def __init__(
        self,
        step: AbstractStepper,
        net: eqx.Module,
        coupling: str = "closure",
        scale: float = 1.0,
        projection: AbstractProjection | None = None,
        context: Callable | None = None,
        *,
        identifiable: str | None = None,
        symmetry: None = None,
    ):
        if symmetry is not None:
            raise ValueError(
                f"Hybrid(symmetry={symmetry!r}) was removed: pass "
                f"projection=sl.hybrid.OddSignReflection() (what 'ks-odd' did), or "
                f"identifiable='orthogonal' for any model."
            )
        self.step, self.net, self.coupling, self.scale = step, net, coupling, scale
        self.projection, self.context, self.identifiable = projection, context, identifiable

    def __check_init__(self):
        if self.coupling not in COUPLINGS:
            raise ValueError(f"unknown coupling {self.coupling!r}; choose one of {COUPLINGS}.")
        if not isinstance(self.step, AbstractStepper):
            raise ValueError(
                f"Hybrid needs a scilayers stepper as `step`, got {type(self.step).__name__}."
            )
        if self.identifiable not in IDENTIFIABLE:
            raise ValueError(
                f"unknown identifiable={self.identifiable!r}; choose one of {IDENTIFIABLE}."
            )
        if isinstance(self.projection, str):
            raise ValueError(
                f"projection={self.projection!r}: projections are objects now; for 'ks-odd' "
                f"pass projection=sl.hybrid.OddSignReflection()."
            )
        if self.projection is not None and not isinstance(self.projection, AbstractProjection):
            raise ValueError(
                f"projection must be an AbstractProjection (e.g. OddSignReflection()), got "
                f"{type(self.projection).__name__}."
            )
        if self.coupling == "parameter" and (
            self.projection is not None or self.identifiable is not None
        ):
            raise ValueError(
                "projection and identifiable act on a state-valued network term; they apply "
                "to the 'closure' and 'residual' couplings, not 'parameter'."
            )
        if self.projection is not None:
            self.projection.check(self.step.model)

    @property
    def model(self) -> AbstractModel:
        return self.step.model

    @property
    def dt(self) -> float:
        return self.step.dt

    @property
    def state_shape(self):
        return self.step.state_shape

    def check(self, u):
        self.step.check(u)

    def prepare(self) -> Hybrid:
        """The hybrid over a prepared stepper (coefficients computed once per rollout).

        Only for ``closure`` and ``residual``; with ``parameter`` θ_s changes every step,
        and with ``residual`` + ``identifiable="orthogonal"`` the one-step sensitivities
        need the coefficients as functions of θ_s (the step is then left unprepared)."""
        prep = getattr(self.step, "prepare", None)
        if prep is None or self.coupling == "parameter":
            return self
        if self.coupling == "residual" and self.identifiable is not None:
            return self
        return eqx.tree_at(lambda h: h.step, self, prep())

    def _term(self) -> _Term:
        return _Term(self.net, self.projection, self.scale)

    def _closed_step(self):
        orthogonal = self.identifiable == "orthogonal"
        return _with_model(self.step, lambda m: _closed(m, self._term(), orthogonal))

    def _correction(self, u: Array, v: Array) -> Array:
        """The residual correction added to ``v = Φ_dt(u)``."""

        def sens():
            return sensitivity(forward_mode(self.step, reverse=True), lambda s: s(u))

        return self._term()(v, sens if self.identifiable == "orthogonal" else None)

    def network_term(self, u: Array) -> Array:
        """What the network adds at the state ``u``: for ``closure`` the term added to
        ``du/dt`` (``scale · g(u)``, projected as configured); for ``residual`` the
        correction added to the step from ``u``, ``Hybrid(u) − Φ_dt(u)``."""
        if self.coupling == "parameter":
            raise ValueError("a 'parameter' coupling adds no state-valued network term.")
        self.check(u)
        if self.coupling == "residual":
            return self._correction(u, self.step(u))

        def sens():
            return sensitivity(self.step.model, lambda m: m.rhs(u))

        return self._term()(u, sens if self.identifiable == "orthogonal" else None)

    def __call__(self, u: Array) -> Array:
        self.check(u)
        if self.coupling == "residual":
            v = self.step(u)
            return v + self._correction(u, v)
        if self.coupling == "closure":
            return self._closed_step()(u)
        # parameter coupling
        ctx = u if self.context is None else self.context(u)
        offsets = self.net(ctx)
        return _with_offsets(self.step, offsets)(u)


def _with_offsets(step, offsets: Array):
    """``step`` with each free `Param`'s raw value shifted by one entry of ``offsets``."""
    theta_s, rest, frozen = partition(step)
    leaves, treedef = jtu.tree_flatten(theta_s, is_leaf=is_param)
    params = [p for p in leaves if is_param(p)]
    n_free = sum(int(jnp.size(p.raw)) for p in params)
    if offsets.shape != (n_free,):
        raise ValueError(
            f"a 'parameter' coupling network must output one value per free Param entry "
            f"({n_free}), got shape {offsets.shape}."
        )
    new, i = [], 0
    for leaf in leaves:
        if is_param(leaf):
            size = int(jnp.size(leaf.raw))
            delta = offsets[i : i + size].reshape(jnp.shape(leaf.raw))
            leaf = eqx.tree_at(lambda p: p.raw, leaf, leaf.raw + delta)
            i += size
        new.append(leaf)
    theta_s = jtu.tree_unflatten(treedef, new)
    return eqx.combine(theta_s, rest, frozen, is_leaf=is_param)


class NeuralStepper(eqx.Module):
    """A pure network time stepper ``u_{n+1} = u_n + scale · net(u_n)`` (no physics)."""

    net: eqx.Module
    state_shape: tuple[int, ...] = eqx.field(static=True)
    dt: float = eqx.field(static=True, default=1.0)
    scale: float = eqx.field(static=True, default=1.0)

    def check(self, u):
        if tuple(jnp.shape(u)) != tuple(self.state_shape):
            raise ValueError(
                f"NeuralStepper: expected a state of shape {self.state_shape}, got "
                f"{jnp.shape(u)}; for a batch use jax.vmap."
            )

    def __call__(self, u: Array) -> Array:
        self.check(u)
        return u + self.scale * self.net(u)
