"""Linear stability of fixed-step explicit Runge–Kutta steps (used by `Diffrax`)."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

# Tolerated spurious growth per internal step, relative to the exact solution of the
# linearisation (see `check_explicit_stability`).
GROWTH_TOL = 1e-2
# Up to this many state entries the Jacobian is formed and its eigenvalues computed; above,
# its spectral radius is estimated by power iteration with JVPs.
DENSE_MAX = 1024


def stability_polynomial(solver) -> np.ndarray | None:
    """Coefficients ``c_0 … c_s`` of the stability function ``R(z) = Σ c_k z^k`` of an
    explicit Runge–Kutta solver (``u_{n+1} = R(hλ) u_n`` for ``u' = λu``), or ``None`` for a
    solver that is not one (implicit, IMEX, SDE, reversible solvers).

    From the Butcher tableau, ``R(z) = 1 + z bᵀ(I − zA)⁻¹𝟙 = 1 + Σ_k z^{k+1} bᵀA^k𝟙``
    (Hairer & Wanner, *Solving ODEs II*, IV.2), exact for every ``diffrax.AbstractERK``
    (Heun, Midpoint, Ralston, Bosh3, Tsit5, Dopri5, Dopri8) and ``diffrax.Euler``."""
    if isinstance(solver, diffrax.Euler):
        return np.array([1.0, 1.0])
    if not isinstance(solver, diffrax.AbstractERK):
        return None
    tableau = solver.tableau
    b = np.asarray(tableau.b_sol, dtype=float)
    s = b.size
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a_lower):
        a[i + 1, : i + 1] = np.asarray(row, dtype=float)
    coeffs, v = [1.0], np.ones(s)
    for _ in range(s):
        coeffs.append(float(b @ v))
        v = a @ v
    return np.array(coeffs)


def _spectrum(f, u) -> tuple[np.ndarray, bool]:
    """Eigenvalues of ``∂f/∂u`` at ``u`` (exact: ``True``), or, for a large state, the
    estimate ``−ρ`` of the spectral radius ρ by power iteration (``False``)."""
    shape = jnp.shape(u)
    flat = jnp.ravel(u)

    def g(x):
        return jnp.ravel(f(x.reshape(shape)))

    if flat.size <= DENSE_MAX:
        jac = np.asarray(jax.jacfwd(g)(flat))
        return np.linalg.eigvals(jac.astype(complex)), True
    v = jax.random.normal(jax.random.key(0), flat.shape, flat.dtype)
    rho = 0.0
    for _ in range(30):
        w = jax.jvp(g, (flat,), (v / jnp.linalg.norm(v),))[1]
        rho, v = float(jnp.linalg.norm(w)), w
        if rho == 0.0:
            break
    return np.array([-rho], dtype=complex), False


def _growth(coeffs: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``|R(z)| / max(1, |e^z|)``: per-step growth of the scheme beyond that of the exact
    solution of ``u' = λu`` (``z = hλ``), where the exact solution does not itself grow."""
    with np.errstate(over="ignore", invalid="ignore"):
        amp = np.abs(np.polyval(coeffs[::-1], z))
        exact = np.exp(np.minimum(z.real, 700.0))
        out = amp / np.maximum(1.0, exact)
    return np.where(np.isfinite(out), out, np.inf)


def check_explicit_stability(f, u, solver, h: float, substeps: int, where: str = "Diffrax") -> None:
    """Raise a `ValueError` if one fixed step ``h`` of the explicit ``solver`` is linearly
    unstable for ``u' = f(u)`` near ``u``; do nothing for a solver `stability_polynomial`
    does not know.

    The test: the eigenvalues λ of the Jacobian ``∂f/∂u(u)`` (formed for states of up to
    `DENSE_MAX` entries) and the stability function ``R`` of the solver; the step is
    unstable if ``|R(hλ)| > (1 + GROWTH_TOL) · max(1, |e^{hλ}|)`` for some λ, i.e. if the
    scheme amplifies a mode by more than 1 % per step beyond what the exact flow does
    (modes that grow in the exact flow, such as those of a chaotic system, are not held
    against the scheme; a pure-imaginary mode under Euler or a 2-stage method grows
    slowly, and is let through while that growth stays under 1 % per step). This is a
    linearisation at one state, an approximation for a nonlinear model whose Jacobian
    changes along the trajectory. Above `DENSE_MAX` entries only the spectral radius ρ is
    estimated (power iteration) and the dominant eigenvalue taken as ``−ρ``, the
    diffusive case (for RK4-like methods the real-axis limit is ``hρ ≈ 2.79``, the
    imaginary-axis one ``≈ 2.83``, so the estimate holds to a few per cent for either)."""
    coeffs = stability_polynomial(solver)
    if coeffs is None:
        return
    lam, exact = _spectrum(f, u)
    growth = _growth(coeffs, h * lam)
    if not np.any(growth > 1.0 + GROWTH_TOL):
        return
    lo, hi = 0.0, 1.0  # largest fraction of h that is stable, by bisection along the ray
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.any(_growth(coeffs, mid * h * lam) > 1.0 + GROWTH_TOL):
            hi = mid
        else:
            lo = mid
    worst = int(np.argmax(growth))
    dt = h * substeps
    name = type(solver).__name__
    how = "eigenvalue" if exact else "estimated dominant eigenvalue (power iteration)"
    raise ValueError(
        f"{where}: dt={dt:g} exceeds the explicit stability limit ≈ {lo * dt:.3g} of "
        f"diffrax.{name} with substeps={substeps} for this model: at the initial state the "
        f"Jacobian ∂f/∂u has the {how} λ = {complex(lam[worst]):.4g}, and one step "
        f"multiplies that mode by |R(hλ)| = {abs(np.polyval(coeffs[::-1], h * lam[worst])):.3g}"
        f" (h = dt/substeps = {h:g}). Reduce dt (or raise substeps) or use an "
        f"adaptive/implicit solver (e.g. diffrax.Tsit5 with a PIDController, or "
        f"diffrax.Kvaerno5); stability_check=False skips this check."
    )
