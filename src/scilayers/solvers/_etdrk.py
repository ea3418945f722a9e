"""Exponential time differencing Runge–Kutta 4 (Cox–Matthews, Kassam–Trefethen)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Complex, Float

from .._typing import ScalarLike
from ..models import AbstractSpectralModel
from ._base import AbstractStepper


def _contour(hl, points: int, radius: float):
    """``points`` nodes on a circle of ``radius`` around each ``hl``: shape ``(m, points)``."""
    theta = 2 * jnp.pi * (jnp.arange(points) + 0.5) / points
    return hl[:, None] + radius * jnp.exp(1j * theta)[None, :]


def etdrk4_coefficients(
    lin: Complex[Array, " m"], dt: float, points: int = 32, radius: float = 1.0
):
    r"""ETDRK4 coefficients for a diagonal linear symbol ``lin``, by contour integrals.

    Returns ``(E, E2, Q, f1, f2, f3)`` with ``E = e^{hL}``, ``E2 = e^{hL/2}``,
    ``Q = h φ_1(hL/2)/2`` and the three φ-combinations of Cox & Matthews (2002). Each
    φ-function is evaluated as the mean over ``points`` nodes of a circle of ``radius``
    centred at ``hL`` (Kassam & Trefethen 2005), which is accurate also where ``hL → 0``
    and differentiable in ``lin``.
    """
    hl = dt * lin
    lr = _contour(hl, points, radius)
    elr = jnp.exp(lr)
    elr2 = jnp.exp(lr / 2)
    lr3 = lr**3
    q = dt * jnp.mean((elr2 - 1) / lr, axis=-1)
    f1 = dt * jnp.mean((-4 - lr + elr * (4 - 3 * lr + lr**2)) / lr3, axis=-1)
    f2 = dt * jnp.mean((2 + lr + elr * (-2 + lr)) / lr3, axis=-1)
    f3 = dt * jnp.mean((-4 - 3 * lr - lr**2 + elr * (4 - lr)) / lr3, axis=-1)
    if not jnp.iscomplexobj(lin):
        q, f1, f2, f3 = (jnp.real(z) for z in (q, f1, f2, f3))
    return jnp.exp(hl), jnp.exp(hl / 2), q, f1, f2, f3


def _stage_coefficients(coefficients: tuple) -> tuple:
    """The coefficients one ETDRK4 step multiplies by, from `etdrk4_coefficients`'
    ``(E, E2, Q, f1, f2, f3)``: ``(E, E2, Q, f1, 2 f2, f3, E2 Q - Q)``.

    The last one writes the third stage ``c = E2 a + Q (2 N_b - N_v)`` as
    ``E v + (E2 Q - Q) N_v + 2 Q N_b`` (``E2 a = E v + E2 Q N_v``), so that no stage value
    has to be kept for a later stage and a dealiasing mask can be folded into each stage's
    coefficients. Computed once per trajectory (`ETDRK4.prepare`), not per step.
    """
    e, e2, q, f1, f2, f3 = coefficients
    return e, e2, q, f1, 2 * f2, f3, e2 * q - q


def _lincomb(*terms):
    """``Σ c_i ⊙ z_i`` of complex spectra ``z_i``.

    With real coefficients (a real linear symbol) the sums are taken on the real and
    imaginary parts separately: XLA would otherwise promote each real coefficient to a
    complex number and pay a full complex product (four products and two sums instead of
    two products). These combinations are most of a step's work besides the FFTs.
    """
    coefficients, spectra = zip(*terms, strict=True)
    if any(jnp.iscomplexobj(c) for c in coefficients):
        return sum(c * z for c, z in terms)
    return _real_lincomb(coefficients, spectra)


@jax.custom_jvp
def _real_lincomb(coefficients, spectra):
    re = sum(c * jnp.real(z) for c, z in zip(coefficients, spectra, strict=True))
    im = sum(c * jnp.imag(z) for c, z in zip(coefficients, spectra, strict=True))
    return jax.lax.complex(re, im)


def _real_lincomb_jvp(primals, tangents):
    # The tangent in complex arithmetic: its linearisation keeps each spectrum ``z_i``
    # (one complex array) for the backward pass, where the real-arithmetic primal would
    # keep ``Re z_i`` and ``Im z_i`` separately — twice the residual arrays to store per
    # step. The primal stays the cheap real-arithmetic one.
    coefficients, spectra = primals
    dcoefficients, dspectra = tangents
    out = _real_lincomb(coefficients, spectra)
    pairs = zip(dcoefficients, spectra, strict=True)
    terms = [dc * z for dc, z in pairs if type(dc) is not SymbolicZero]
    pairs = zip(coefficients, dspectra, strict=True)
    terms += [c * dz for c, dz in pairs if type(dz) is not SymbolicZero]
    dout = sum(terms) if terms else jnp.zeros_like(out)
    return out, dout.astype(out.dtype)


_real_lincomb.defjvp(_real_lincomb_jvp, symbolic_zeros=True)


def _etdrk4_step(model, dealias, coefficients, carry, t=0.0, dt=None):
    """One ETDRK4 step of ``model`` from time ``t`` on the carried ``(û, u)`` with the
    coefficients of `_stage_coefficients`. The non-stiff part ``N(t, u)`` is evaluated at
    the stage times of Cox & Matthews: ``t`` (at ``u_n``), ``t + dt/2`` (at ``a`` and
    ``b``) and ``t + dt`` (at ``c``); an autonomous model ignores them (and ``dt`` may then
    be left out).

    Work per step: four nonlinear evaluations (for KS one inverse and one forward real FFT
    each, the first on the carried ``u``) and one inverse FFT for the new ``u``, which is
    the next step's first evaluation point: 8 real FFTs; one more with dealiasing. Between
    the FFTs, one fused combination per stage, in real arithmetic for a real symbol.
    """
    if dt is None:
        if not model.autonomous:
            raise ValueError(
                f"_etdrk4_step needs dt for the stage times of the time-dependent model "
                f"{type(model).__name__}."
            )
        dt = 0.0
    v, u = carry
    e, e2, q, f1, f2x2, f3, qc = coefficients
    mask = None if dealias is None else model.dealias_mask(dealias)
    ea, e2a, qa, qca = e, e2, q, qc
    stage_mask = mask
    if mask is not None and model.autonomous:
        # An autonomous nonlinearity sees only the dealiased stage value
        # (N̂(ŵ, mask) = N̂(mask ⊙ ŵ)): fold the mask into the stage coefficients, so each
        # stage value is formed dealiased. A time-dependent source sees the whole stage
        # value, so for such a model the stage value stays whole and the mask is passed on.
        ea, e2a, qa, qca = mask * e, mask * e2, mask * q, mask * qc
        stage_mask = None
    nv = model.nonlinear_hat_at(t, v, mask, u)
    a = _lincomb((e2a, v), (qa, nv))
    na = model.nonlinear_hat_at(t + 0.5 * dt, a, stage_mask)
    b = _lincomb((e2a, v), (qa, na))
    nb = model.nonlinear_hat_at(t + 0.5 * dt, b, stage_mask)
    c = _lincomb((ea, v), (qca, nv), (2 * qa, nb))
    nc = model.nonlinear_hat_at(t + dt, c, stage_mask)
    v = _lincomb((e, v), (f1, nv), (f2x2, na + nb), (f3, nc))
    return v, jnp.fft.irfft(v, model.n)


def _init_carry(u):
    return jnp.fft.rfft(u), u


class ETDRK4(AbstractStepper):
    r"""Fourth-order exponential time differencing Runge–Kutta for ``u_t = L u + N(t, u)``.

    ``step(u, t)`` advances from ``t`` to ``t + dt``. ``N(t, u)`` is the model's
    nonlinear part plus, for an `AbstractForcedSpectralModel`, its time-dependent source
    (`AbstractSpectralModel.nonlinear_hat_at`), evaluated at the stage times ``t``,
    ``t + dt/2``, ``t + dt/2``, ``t + dt``: the scheme keeps its fourth order with explicit
    time dependence. The linear part is integrated exactly; the φ-function coefficients
    are built from the model's current θ_s on every call (so ``jax.grad`` reaches e.g.
    KS's ``a, b, c, d``).
    A call ``step(u, t)`` does ten real FFTs for KS (one into and one out of Fourier
    space, two per nonlinear evaluation); `rollout` carries ``(û, u)`` between steps
    (`init_carry`), which makes it eight — the two of each of the four nonlinear
    evaluations, nothing else (nine with dealiasing) — and computes the coefficients once
    per trajectory (`prepare`).

    **Arguments:**

    - `model`: an `AbstractSpectralModel` (KS, Burgers).
    - `dt`: time step (> 0).
    - `dealias`: fraction of modes kept before nonlinear products (``2/3`` is Orszag's
      rule; ``None`` disables dealiasing, the default).
    - `contour_points`, `contour_radius`: contour-integral resolution.

    Reference: Cox & Matthews (2002), J. Comput. Phys. 176; Kassam & Trefethen (2005).
    """

    model: AbstractSpectralModel
    dt: float = eqx.field(static=True)
    dealias: float | None = eqx.field(static=True, default=None)
    contour_points: int = eqx.field(static=True, default=32)
    contour_radius: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if not isinstance(self.model, AbstractSpectralModel):
            raise ValueError(
                f"ETDRK4 needs a spectral model (KuramotoSivashinsky, Burgers), got "
                f"{type(self.model).__name__}; use sl.solvers.Diffrax for ODE models."
            )
        if self.dealias is not None and not 0 < self.dealias <= 1:
            raise ValueError(f"dealias must be in (0, 1] or None, got {self.dealias}.")

    def coefficients_for(self, lin: Complex[Array, " m"]) -> tuple:
        """The ETDRK4 coefficients (`etdrk4_coefficients`) of this stepper for the linear
        symbol ``lin``."""
        return etdrk4_coefficients(lin, self.dt, self.contour_points, self.contour_radius)

    def prepare(self) -> _PreparedETDRK4:
        """This stepper with its θ_s-dependent coefficients computed once, for the model's
        current linear symbol.

        `rollout` calls it before the time loop, inside the differentiated function, so a
        trajectory computes the contour integrals once instead of once per step and
        gradients still reach θ_s. The result remembers the symbol its coefficients were
        built from: if θ_s changes afterwards it does not silently step with stale ones
        (see `_PreparedETDRK4`).
        """
        lin = self.model.linear_operator()
        return _PreparedETDRK4(self, lin, _stage_coefficients(self.coefficients_for(lin)))

    def init_carry(self, u):
        """The state carried between steps by `rollout`: ``(û, u)``, so that no step needs
        a forward FFT of its input (8 real FFTs per step instead of 10)."""
        return _init_carry(u)

    @staticmethod
    def carry_output(carry):
        """The physical state(s) inside a carry (works on stacked carries too)."""
        return carry[1]

    def step_carry(self, carry, t: ScalarLike = 0.0):
        """One step from time ``t`` on the carried ``(û, u)``; returns the new carry."""
        coefficients = _stage_coefficients(self.coefficients_for(self.model.linear_operator()))
        return _etdrk4_step(self.model, self.dealias, coefficients, carry, t, self.dt)

    def __call__(self, u: Float[Array, " n"], t: ScalarLike = 0.0) -> Float[Array, " n"]:
        self.check(u)
        return self.step_carry(self.init_carry(u), t)[1]


_STALE = (
    "this prepared ETDRK4 holds coefficients computed for other θ_s (its model changed "
    "after prepare()); call prepare() again on the updated stepper, or step the unprepared "
    "stepper (`prepared.stepper`)"
)


def _same_symbol(lin, symbol):
    """Whether two linear symbols agree to a few ulps (traced: a boolean array)."""
    tol = 16 * jnp.finfo(jnp.result_type(lin, symbol)).eps
    scale = jnp.maximum(jnp.max(jnp.abs(symbol)), jnp.finfo(jnp.result_type(symbol)).tiny)
    return jnp.max(jnp.abs(lin - symbol)) <= tol * scale


class _PreparedETDRK4(AbstractStepper):
    """An `ETDRK4` with its coefficients computed once (`ETDRK4.prepare`), together with
    the linear symbol they were computed for.

    The model can still be replaced (``eqx.tree_at``, `sl.params.set_values`; a `Hybrid`
    swaps in a model with a closure term, which keeps the symbol), so every use checks that
    the model's current symbol is the remembered one. Outside ``jit`` a mismatch makes
    `__call__` recompute the coefficients (the step is then that of the unprepared
    stepper) and `init_carry` raise; under ``jit`` it raises at run time
    (``eqx.error_if``). `prepare` and `rollout` always rebuild from the current model.
    The check costs one evaluation of the symbol per call of `__call__` and per
    trajectory in `rollout` — never a contour integral.
    """

    stepper: ETDRK4
    symbol: Array
    coefficients: tuple

    @property
    def model(self) -> AbstractSpectralModel:
        return self.stepper.model

    @property
    def dt(self) -> float:
        return self.stepper.dt

    def prepare(self) -> _PreparedETDRK4:
        """Prepared afresh for the model's current θ_s."""
        return self.stepper.prepare()

    def _check(self, x, lin):
        """``x``, guarded at run time by the symbol check (traced values only)."""
        return eqx.error_if(x, ~_same_symbol(lin, self.symbol), _STALE + ".")

    def _stale(self, lin) -> bool | None:
        """Whether the cache is stale, or ``None`` when that is only known at run time."""
        if jnp.shape(lin) != jnp.shape(self.symbol):
            return True  # e.g. a model on another grid: known at trace time
        if any(isinstance(x, jax.core.Tracer) for x in (lin, self.symbol)):
            return None
        return not bool(_same_symbol(lin, self.symbol))

    def init_carry(self, u):
        """As `ETDRK4.init_carry`, after checking that the coefficients are current."""
        lin = self.model.linear_operator()
        stale = self._stale(lin)
        if stale:
            raise ValueError(_STALE + "; `rollout` does the former.")
        carry = _init_carry(u)
        return carry if stale is False else self._check(carry, lin)

    @staticmethod
    def carry_output(carry):
        return carry[1]

    def step_carry(self, carry, t: ScalarLike = 0.0):
        """One step from time ``t`` with the cached coefficients (`init_carry` checked
        them)."""
        return _etdrk4_step(self.model, self.stepper.dealias, self.coefficients, carry, t, self.dt)

    def __call__(self, u: Float[Array, " n"], t: ScalarLike = 0.0) -> Float[Array, " n"]:
        self.check(u)
        lin = self.model.linear_operator()
        stale = self._stale(lin)
        if stale is None:
            coefficients = self._check(self.coefficients, lin)
        else:
            coefficients = (
                _stage_coefficients(self.stepper.coefficients_for(lin))
                if stale
                else self.coefficients
            )
        carry = _init_carry(u)
        return _etdrk4_step(self.model, self.stepper.dealias, coefficients, carry, t, self.dt)[1]


def phi1(lin: Complex[Array, " m"], dt: float, points: int = 32, radius: float = 1.0):
    r"""``dt · φ_1(dt L) = (e^{dt L} - 1) / L`` by the same contour integral as `ETDRK4`.

    The exact response of ``u_t = L u + g`` to a forcing ``g`` held constant over a step.
    """
    lr = _contour(dt * lin, points, radius)
    out = dt * jnp.mean((jnp.exp(lr) - 1) / lr, axis=-1)
    return out if jnp.iscomplexobj(lin) else jnp.real(out)
