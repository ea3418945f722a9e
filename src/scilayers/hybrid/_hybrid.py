"""`Hybrid`: a scientific stepper coupled with a neural network."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array

from .._typing import ScalarLike
from ..models import (
    AbstractForcedModel,
    AbstractForcedSpectralModel,
    AbstractModel,
    AbstractSpectralModel,
)
from ..params import is_param, named, values
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


def _check_indices(indices, size: int | None, what: str) -> None:
    """Raise if ``indices`` are not distinct integers in ``[0, size)`` (``size`` ``None``:
    any non-negative integer)."""
    bad = [
        i
        for i in indices
        if not isinstance(i, int | np.integer) or i < 0 or (size is not None and i >= size)
    ]
    if bad or len(set(indices)) != len(indices):
        where = "non-negative" if size is None else f"in [0, {size})"
        of = "" if size is None else f", which has {size} components"
        raise ValueError(
            f"{what}={tuple(indices)} must be distinct component indices {where} of the "
            f"(flattened) state{of}."
        )


class Inputs(eqx.Module):
    r"""What a closure or residual network sees (`Hybrid(..., inputs=Inputs(...))`).

    By default a network sees the whole state ``u`` with its own shape (what a
    convolutional closure on a field needs). Otherwise its input is one flat vector,

    ``x = [u[state], t (if time), forcing(t) (if given)]``,

    in that order, in the state's dtype. ``state`` indexes the flattened state.

    A closure that should depend on time is usually better off seeing a known, bounded
    function of it (the drive ``cos(Ω t)``) than ``t`` itself, which grows without bound
    and leaves the range the network was trained on.

    **Arguments:**

    - `state`: indices of the state components the network sees (``None``, the default:
      all of them; ``()``: none).
    - `time`: whether the network also sees the time ``t`` of the state (default false).
    - `forcing`: a known function ``t -> array`` (e.g. ``lambda t: jnp.cos(2 * t / 3)``)
      whose values, flattened, are appended (default ``None``).
    """

    state: tuple[int, ...] | None = eqx.field(static=True, default=None)
    time: bool = eqx.field(static=True, default=False)
    forcing: Callable | None = None

    def __init__(self, state=None, time: bool = False, forcing: Callable | None = None):
        if state is not None:
            if isinstance(state, int | np.integer):
                state = (state,)
            state = tuple(int(i) if isinstance(i, int | np.integer) else i for i in state)
        self.state, self.time, self.forcing = state, bool(time), forcing

    def __check_init__(self):
        if self.state is not None:
            _check_indices(self.state, None, "Inputs(state)")
        if self.forcing is not None and not callable(self.forcing):
            raise ValueError(
                f"Inputs(forcing=...) must be a function of time t -> array, got "
                f"{type(self.forcing).__name__}."
            )
        if self.state == () and not self.time and self.forcing is None:
            raise ValueError(
                "Inputs(state=()) with no time and no forcing gives the network nothing to "
                "see; select state components, time=True or a forcing."
            )

    @property
    def whole_state(self) -> bool:
        """Whether the network sees the state itself, unchanged (the default)."""
        return self.state is None and not self.time and self.forcing is None

    def check(self, state_shape: tuple[int, ...]) -> None:
        """Raise a `ValueError` if `state` indexes outside a state of ``state_shape``."""
        if self.state is not None:
            _check_indices(self.state, math.prod(state_shape), "Inputs(state)")

    def __call__(self, t: ScalarLike, u: Array) -> Array:
        """The network input at the state ``u`` at time ``t``."""
        if self.whole_state:
            return u
        dtype = jnp.result_type(u)
        flat = u.reshape(-1)
        parts = [flat if self.state is None else flat[np.asarray(self.state, dtype=int)]]
        if self.time:
            parts.append(jnp.reshape(jnp.asarray(t, dtype), (1,)))
        if self.forcing is not None:
            parts.append(jnp.ravel(jnp.asarray(self.forcing(t), dtype)))
        return jnp.concatenate(parts)


class _Term(eqx.Module):
    """``scale · P⊥(Π(W ∘ N ∘ I))(t, u)``: the network ``N`` seeing the inputs ``I``
    (`Inputs`, optional), writing the components ``W`` (`outputs`, optional; zero
    elsewhere), its projection Π (optional) and the removal of the θ_s sensitivities P⊥
    restricted to the written components (when given)."""

    net: Callable
    projection: AbstractProjection | None
    scale: float = eqx.field(static=True)
    inputs: Inputs | None = None
    outputs: tuple[int, ...] | None = eqx.field(static=True, default=None)

    @property
    def plain(self) -> bool:
        """Whether the network maps the state to the state directly (no adapters)."""
        return (self.inputs is None or self.inputs.whole_state) and self.outputs is None

    def _write(self, y: Array, u: Array) -> Array:
        """The network output ``y`` as a state-shaped term (zero off `outputs`)."""
        if self.outputs is None:
            return y
        idx = np.asarray(self.outputs, dtype=int)
        full = jnp.zeros(u.size, jnp.result_type(y, u)).at[idx].set(y)
        return full.reshape(u.shape)

    def _check_adapted(self, x: Array, u: Array) -> None:
        """Raise at trace time if the network does not give what the adapters need."""
        out = eqx.filter_eval_shape(self.net, x)
        shape = getattr(out, "shape", None)
        want = u.shape if self.outputs is None else (len(self.outputs),)
        if shape == want:
            return
        got = shape if shape is not None else type(out).__name__
        if self.outputs is None:
            need = (
                f"it must return the state's shape {u.shape}, or choose the components it "
                f"writes with outputs=(...)"
            )
        else:
            need = (
                f"with outputs={self.outputs} it must return shape {want}, one value per "
                f"written component (e.g. an MLP with out_size={want[0]})"
            )
        seen = "the state" if self.inputs is None else repr(self.inputs)
        raise ValueError(
            f"the closure/residual network maps its input of shape {x.shape} (from {seen}) "
            f"to {got}; {need}."
        )

    def raw(self, t: ScalarLike, u: Array) -> Array:
        """``Π(W ∘ N ∘ I)(t, u)``, checked to have the state's shape."""
        if self.plain:
            _check_output(self.net, u)
            g = self.net(u) if self.projection is None else self.projection(self.net, u)
        else:
            self._check_adapted(self.inputs(t, u) if self.inputs is not None else u, u)

            def field(v):  # the network as a map of the state, at time t
                x = v if self.inputs is None else self.inputs(t, v)
                return self._write(self.net(x), v)

            g = field(u) if self.projection is None else self.projection(field, u)
        if g.shape != u.shape:
            raise ValueError(
                f"{type(self.projection).__name__} returned shape {g.shape} for a state of "
                f"shape {u.shape}."
            )
        return g

    def remove(self, g: Array, jac: Array | None) -> Array:
        """``g`` without its least-squares component along the sensitivities ``jac``
        (shape ``(*state, p)``), within the written components: for ``g`` zero off
        `outputs`, ``⟨g_⊥, J_i⟩ = 0`` and ``g_⊥`` stays zero there."""
        if jac is None or self.outputs is None:
            return orthogonalize(g, jac)
        idx = np.asarray(self.outputs, dtype=int)
        gw = g.reshape(-1)[idx]
        jw = jac.reshape(-1, jac.shape[-1])[idx]
        return self._write(orthogonalize(gw, jw), g)

    def __call__(
        self, t: ScalarLike, u: Array, sens: Callable[[], Array | None] | None = None
    ) -> Array:
        g = self.raw(t, u)
        if sens is not None:
            g = self.remove(g, sens())
        return self.scale * g


class _ClosedSpectral(AbstractForcedSpectralModel):
    """A spectral model whose non-stiff part also holds a closure term (as a source, since
    the closure may see time)."""

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
        return self.inner.nonlinear_hat(u_hat, mask, u)

    def source_hat(self, t, u_hat, mask=None, u=None):
        u = jnp.fft.irfft(u_hat, self.n) if u is None else u

        # sensitivities of the stage's right-hand side L û + N̂(t, û), in Fourier space
        def stage_rhs(m):
            return m.linear_operator() * u_hat + m.nonlinear_hat_at(t, u_hat, mask, u)

        if self.term.outputs is None:
            g_hat = jnp.fft.rfft(self.term.raw(t, u))
            if self.orthogonal:
                # for KS every column is an elementwise product, so no extra FFT is needed
                sens = sensitivity(self.inner, stage_rhs)
                g_hat = orthogonalize_rfft(g_hat, sens, self.n)
            g_hat = self.term.scale * g_hat
        else:  # written components are grid points: project on the grid

            def sens():
                return sensitivity(self.inner, lambda m: jnp.fft.irfft(stage_rhs(m), self.n))

            g_hat = jnp.fft.rfft(self.term(t, u, sens if self.orthogonal else None))
        if self.inner.autonomous:
            return g_hat
        return self.inner.source_hat(t, u_hat, mask, u) + g_hat


class _ClosedODE(AbstractForcedModel):
    """An ODE model whose right-hand side also holds a closure term (as a source, since
    the closure may see time)."""

    inner: AbstractModel
    term: _Term
    orthogonal: bool = eqx.field(static=True)

    @property
    def state_shape(self):
        return self.inner.state_shape

    def rhs(self, u):
        return self.inner.rhs(u)

    def source(self, t, u):
        def sens():
            return sensitivity(self.inner, lambda m: m.vector_field(t, u))

        g = self.term(t, u, sens if self.orthogonal else None)
        return g if self.inner.autonomous else self.inner.source(t, u) + g

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


class Hybrid(AbstractStepper):
    r"""A scientific stepper ``Φ_dt(·; θ_s)`` coupled with a network ``N(·; θ_ml)``.

    A `Hybrid` is itself a stepper: ``hybrid(u, t)`` advances the state ``u`` at time
    ``t`` (default 0) by ``dt``, and `rollout` passes it the time of every step.

    Couplings:

    - ``"closure"``: the network adds a term to the equation itself,
      ``u_t = L u + N_phys(t, u; θ_s) + scale · g(t, u; θ_ml)`` (a universal differential
      equation), and the stepper integrates the sum: for ETDRK4 the term joins the
      non-stiff part at every stage (at the stage's time), so it is integrated at the
      scheme's order.
    - ``"residual"``: the network corrects the solver output,
      ``u_{n+1} = v + scale · g(v)`` with ``v = Φ_dt(u_n, t_n)`` (the network sees ``v``
      at its time ``t_n + dt``).
    - ``"parameter"``: the network maps a context ``context(u_n)`` (default the state) to
      offsets of the unconstrained θ_s, which then drive the solver:
      ``u_{n+1} = Φ_dt(u_n; θ_s + g(context))``. The network's outputs are, in order, the
      entries of the modulated Params (`modulated`: the free Params of
      ``sl.params.named(step)`` in that order, or those named in ``params``), each
      flattened; the other Params stay as they are. `effective_theta` gives the θ_s the
      solver uses at a state, and `fit` records their batch average as
      ``theta_eff/<name>``.

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

    What the network sees and writes (closure and residual couplings). By default it maps
    the whole state to a state-shaped term. ``inputs=Inputs(state=(1,), time=True)``
    gives it instead the flat vector ``[u[1], t]`` (any subset of the flattened state's
    components, the time, a known ``forcing(t)``; see `Inputs`), and ``outputs=(1,)``
    says which components of the flattened state it writes: it then returns one value per
    written component (shape ``(len(outputs),)``) and the term is zero elsewhere. A wrong
    output shape is a `ValueError` at trace time. With ``identifiable="orthogonal"`` the
    sensitivities are removed within the written components (the term stays zero
    elsewhere and is still orthogonal to every ``J_i``); a `projection` sees the adapted
    network as a map of the state at fixed ``t`` and cannot be combined with `outputs`
    (a reflection moves values between components).

    **Arguments:**

    - `step`: a stepper (`ETDRK4`, `StrangSplitting`, `Diffrax`, `Repeated`).
    - `net`: an Equinox network mapping a state to a state (``closure``/``residual``) or a
      context to a vector with one entry per free `Param` (``parameter``).
    - `coupling`: one of ``"closure"``, ``"residual"``, ``"parameter"``.
    - `scale`: multiplies the network's output (default 1).
    - `projection`: an `AbstractProjection` (default ``None``).
    - `context`: for ``"parameter"``, a function of the state giving the network input.
    - `identifiable`: ``None`` (default) or ``"orthogonal"``.
    - `params`: for ``"parameter"``, the names (as in ``sl.params.named(step)``) of the
      free Params the network modulates; default ``None``: all free Params.
    - `inputs`: for ``closure``/``residual``, an `Inputs` choosing what the network sees
      (default ``None``: the whole state, unchanged).
    - `outputs`: for ``closure``/``residual``, the indices of the (flattened) state's
      components the network writes (default ``None``: all, in the state's shape).
    - `symmetry`: removed; ``"ks-odd"`` is now ``projection=OddSignReflection()``.
    """

    network_fields = ("net",)  # `net` is θ_ml (see `scilayers.params.network`)

    step: AbstractStepper
    net: eqx.Module
    coupling: str = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    projection: AbstractProjection | None
    context: Callable | None = eqx.field(static=True)
    identifiable: str | None = eqx.field(static=True)
    params: tuple[str, ...] | None = eqx.field(static=True)
    inputs: Inputs | None
    outputs: tuple[int, ...] | None = eqx.field(static=True)

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
        params: tuple[str, ...] | None = None,
        inputs: Inputs | None = None,
        outputs: tuple[int, ...] | None = None,
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
        self.params = None if params is None else tuple(params)
        self.inputs = inputs
        if isinstance(outputs, int | np.integer):
            outputs = (outputs,)
        self.outputs = None if outputs is None else tuple(outputs)

    def __check_init__(self):
        if self.coupling not in COUPLINGS:
            raise ValueError(f"unknown coupling {self.coupling!r}; choose one of {COUPLINGS}.")
        if not isinstance(self.step, AbstractStepper) or isinstance(self.step, Hybrid):
            raise ValueError(
                f"Hybrid needs a scilayers stepper (ETDRK4, StrangSplitting, Diffrax, "
                f"Repeated) as `step`, got {type(self.step).__name__}."
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
        self._check_adapters()
        if self.params is not None:
            if self.coupling != "parameter":
                raise ValueError(
                    f"params={self.params!r} chooses the Params a 'parameter' coupling "
                    f"modulates; it has no meaning for coupling={self.coupling!r}."
                )
            free = [k for k, p in named(self.step).items() if not p.fixed]
            unknown = [k for k in self.params if k not in free]
            if unknown or not self.params or len(set(self.params)) != len(self.params):
                raise ValueError(
                    f"params={self.params!r}: each entry must name a distinct free Param of "
                    f"the stepper; unknown or fixed: {unknown}; the free Params are {free}."
                )

    @property
    def model(self) -> AbstractModel:
        return self.step.model

    @property
    def dt(self) -> float:
        return self.step.dt

    def _check_adapters(self) -> None:
        """Validate `inputs` and `outputs` against the coupling and the state."""
        if self.inputs is None and self.outputs is None:
            return
        if self.coupling == "parameter":
            raise ValueError(
                "inputs and outputs choose what a state-valued network term sees and writes; "
                "they apply to the 'closure' and 'residual' couplings. For 'parameter' pass "
                "context=... (a function of the state giving the network input)."
            )
        if self.inputs is not None:
            if not isinstance(self.inputs, Inputs):
                raise ValueError(
                    f"inputs must be a sl.hybrid.Inputs (e.g. Inputs(state=(1,), time=True)), "
                    f"got {type(self.inputs).__name__}."
                )
            self.inputs.check(tuple(self.state_shape))
        if self.outputs is not None:
            _check_indices(self.outputs, math.prod(self.state_shape), "outputs")
            if not self.outputs:
                raise ValueError("outputs=() writes no component; leave outputs out to write all.")
            if self.projection is not None:
                raise ValueError(
                    f"{type(self.projection).__name__} maps whole states (it moves values "
                    f"between components), so it cannot be combined with outputs="
                    f"{self.outputs}; drop one of them."
                )

    def prepare(self) -> Hybrid:
        """The hybrid over a prepared stepper (coefficients computed once per rollout), and
        a prepared projection where it has state-independent coefficients.

        Only for ``closure`` and ``residual``; with ``parameter`` θ_s changes every step,
        and with ``residual`` + ``identifiable="orthogonal"`` the one-step sensitivities
        need the coefficients as functions of θ_s (the step is then left unprepared)."""
        out = self
        pprep = getattr(self.projection, "prepare", None)
        if pprep is not None and self.coupling != "parameter" and self._term().plain:
            # a projection whose coefficients depend on the network only (DataOrthogonal)
            out = eqx.tree_at(lambda h: h.projection, out, pprep(self.net))
        prep = getattr(self.step, "prepare", None)
        if prep is None or self.coupling == "parameter":
            return out
        if self.coupling == "residual" and self.identifiable is not None:
            return out
        return eqx.tree_at(lambda h: h.step, out, prep())

    def _term(self) -> _Term:
        return _Term(self.net, self.projection, self.scale, self.inputs, self.outputs)

    def _closed_step(self):
        orthogonal = self.identifiable == "orthogonal"
        return _with_model(self.step, lambda m: _closed(m, self._term(), orthogonal))

    def _correction(self, u: Array, v: Array, t: ScalarLike) -> Array:
        """The residual correction added to ``v = Φ_dt(u, t)`` (the state at ``t + dt``)."""

        def sens():
            return sensitivity(forward_mode(self.step, reverse=True), lambda s: s(u, t))

        orthogonal = self.identifiable == "orthogonal"
        return self._term()(t + self.dt, v, sens if orthogonal else None)

    def network_term(self, u: Array, t: ScalarLike = 0.0) -> Array:
        """What the network adds at the state ``u`` at time ``t`` (default 0): for
        ``closure`` the term added to ``du/dt`` (``scale · g(t, u)``, adapted and projected
        as configured); for ``residual`` the correction added to the step from ``u``,
        ``Hybrid(u, t) − Φ_dt(u, t)``."""
        if self.coupling == "parameter":
            raise ValueError("a 'parameter' coupling adds no state-valued network term.")
        self.check(u)
        if self.coupling == "residual":
            return self._correction(u, self.step(u, t), t)

        def sens():
            return sensitivity(self.step.model, lambda m: m.vector_field(t, u))

        return self._term()(t, u, sens if self.identifiable == "orthogonal" else None)

    def modulated(self) -> tuple[str, ...]:
        """For ``"parameter"``: the names of the Params the network modulates, in the order
        of its outputs (names as in ``sl.params.named(step)``)."""
        if self.coupling != "parameter":
            raise ValueError(f"coupling={self.coupling!r} modulates no Params.")
        return _modulated(self.step, self.params)

    def _offset_step(self, u: Array):
        ctx = u if self.context is None else self.context(u)
        return _with_offsets(self.step, self.net(ctx), self.params)

    def effective_theta(self, u: Array) -> dict[str, Array]:
        """For ``"parameter"``: the θ_s the solver uses at the state ``u``, by name.

        Every Param of the stepper (names as in ``sl.params.named(step)``), resolved through
        its constraint; the modulated ones (`modulated`) with the network's offsets for the
        context of ``u`` added to their raw values, the others as they are. One state; for
        a batch use ``jax.vmap``. ``sl.params.values(hybrid)`` gives the base θ_s, without
        the offsets."""
        if self.coupling != "parameter":
            raise ValueError(
                f"effective_theta needs coupling='parameter'; with {self.coupling!r} the "
                f"solver uses sl.params.values(hybrid) at every state."
            )
        self.check(u)
        return values(self._offset_step(u))

    def __call__(self, u: Array, t: ScalarLike = 0.0) -> Array:
        self.check(u)
        if self.coupling == "residual":
            v = self.step(u, t)
            return v + self._correction(u, v, t)
        if self.coupling == "closure":
            return self._closed_step()(u, t)
        return self._offset_step(u)(u, t)  # parameter coupling


def _modulated(step, names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The names of ``step``'s free Params in tree order, or of those in ``names``."""
    free = tuple(k for k, p in named(step).items() if not p.fixed)
    return free if names is None else tuple(k for k in free if k in names)


def _with_offsets(step, offsets: Array, names: tuple[str, ...] | None = None):
    """``step`` with the raw value of each modulated `Param` (`_modulated`) shifted by its
    entries of ``offsets`` (in tree order, each Param flattened)."""
    chosen = _modulated(step, names)
    by_name = named(step)
    n_free = sum(int(jnp.size(by_name[k].raw)) for k in chosen)
    if jnp.shape(offsets) != (n_free,):
        raise ValueError(
            f"a 'parameter' coupling network must output one value per free Param entry "
            f"it modulates, of {list(chosen)} in this order ({n_free} in all), got shape "
            f"{jnp.shape(offsets)}."
        )
    leaves, treedef = jtu.tree_flatten(step, is_leaf=is_param)
    names_in_order = iter(by_name)  # `named` lists the Params in this same tree order
    new, i = [], 0
    for leaf in leaves:
        if is_param(leaf) and next(names_in_order) in chosen:
            size = int(jnp.size(leaf.raw))
            delta = offsets[i : i + size].reshape(jnp.shape(leaf.raw))
            leaf = eqx.tree_at(lambda p: p.raw, leaf, leaf.raw + delta)
            i += size
        new.append(leaf)
    return jtu.tree_unflatten(treedef, new)


class NeuralStepper(eqx.Module):
    """A pure network time stepper ``u_{n+1} = u_n + scale · net(u_n)`` (no physics)."""

    network_fields = ("net",)  # `net` is θ_ml (see `scilayers.params.network`)

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
