"""θ_s priors and identifiability of the aneurysm study: the log-space prior, the Fisher
block (Cramér–Rao), the power-law consistency and viscosities with their gradients."""

from __future__ import annotations

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from ... import params as slp
from ...models import Carreau
from ...params import LogNormal
from ._config import CARREAU, SHEAR_RATES


# ====================================================================== helpers
def _log_space_prior(rheology) -> jax.Array:
    """``½ Σ ((log θ − log median)/σ)²`` over the free Params with a log-normal prior: the
    negative log prior of log θ (MAP in the coordinates the optimiser uses)."""
    total = jnp.zeros(())
    for p in slp.named(rheology).values():
        if p.fixed or not isinstance(p.prior, LogNormal):
            continue
        z = (jnp.log(p.value) - math.log(p.prior.median)) / p.prior.sigma
        total = total + 0.5 * jnp.sum(z * z)
    return total


def fisher_block(J: np.ndarray, sigma: float, names, values, threshold: float = 0.1) -> dict:
    """The ``identifiability`` block from sensitivities ``J`` (observations × log θ_s)."""
    F = J.T @ J / sigma**2
    lam, vec = np.linalg.eigh(0.5 * (F + F.T))
    lam_c = np.maximum(lam, lam[-1] * 1e-16)
    cov = (vec / lam_c) @ vec.T  # a direction the data do not see has a huge variance
    rel = np.sqrt(np.maximum(np.diag(cov), 0.0))  # std of log θ = relative std
    corr = cov / np.outer(rel, rel)
    poorly = [n for n, r in zip(names, rel, strict=True) if not r <= threshold]
    combos = {}
    if list(names) == list(CARREAU):  # quantities the data may see better than θ_s
        theta = dict(zip(names, values, strict=True))
        grads = {
            "K": (
                _consistency_gradient(theta),
                "(mu_0 - mu_inf) lam^(n-1), Pa s^n (power-law consistency)",
            )
        }
        for g in SHEAR_RATES:
            grads[f"mu({g:g}/s)"] = (_viscosity_gradient(theta, g),
                                     f"the viscosity at a shear rate of {g:g}/s")  # fmt: skip
        for key, (grad, text) in grads.items():
            std = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
            combos[key] = {"definition": text, "relative_std": std,
                           "identified": bool(std <= threshold)}  # fmt: skip
    return {
        "params": list(names),
        "values": dict(zip(names, values, strict=True)),
        "fisher": F.tolist(),
        "eigenvalues": lam.tolist(),
        "eigenvectors": vec.tolist(),
        "condition_number": float(lam_c[-1] / lam_c[0]),
        "relative_std": dict(zip(names, rel.tolist(), strict=True)),
        "correlation": corr.tolist(),
        "poorly_identified": poorly,
        "combinations": combos,
        "noise_std": sigma,
        "n_observations": int(J.shape[0]),
        "method": "forward-mode sensitivities of the observations over one cycle, log θ_s",
    }


def _prior_vectors(theta_s) -> tuple[np.ndarray, np.ndarray]:
    """Precision ``1/σ²`` and mean ``log median`` of the log-normal priors of the raw θ_s,
    in the order `jax.flatten_util.ravel_pytree` puts them (0, 0 without a prior)."""

    def one(p, which):
        ok = isinstance(p.prior, LogNormal) and not p.fixed
        if which == 0:
            return jnp.full_like(p.raw, 1.0 / p.prior.sigma**2 if ok else 0.0)
        return jnp.full_like(p.raw, math.log(p.prior.median) if ok else 0.0)

    out = []
    for which in (0, 1):
        tree = jax.tree_util.tree_map(lambda p, w=which: one(p, w), theta_s, is_leaf=slp.is_param)
        out.append(np.asarray(jax.flatten_util.ravel_pytree(tree)[0], float))
    return out[0], out[1]


def power_law_consistency(theta: dict) -> float:
    """``K = (μ0 − μ∞) λ^(n−1)`` (Pa sⁿ): at shear rates ``γ̇ ≫ 1/λ`` Carreau is
    ``μ∞ + K γ̇^(n−1)``, so data at such shear rates see μ0 and λ only through ``K``."""
    return (theta["mu_0"] - theta["mu_inf"]) * theta["lam"] ** (theta["n"] - 1.0)


def _consistency_gradient(theta: dict) -> np.ndarray:
    """``∂ log K / ∂ log θ`` for θ = (μ0, μ∞, λ, n)."""
    d = theta["mu_0"] - theta["mu_inf"]
    return np.array([theta["mu_0"] / d, -theta["mu_inf"] / d, theta["n"] - 1.0,
                     theta["n"] * math.log(theta["lam"])])  # fmt: skip


def _viscosity_gradient(theta: dict, shear_rate: float) -> np.ndarray:
    """``∂ log μ(γ̇) / ∂ log θ`` for θ = (μ0, μ∞, λ, n) (Carreau)."""

    def log_mu(log_theta):
        return jnp.log(Carreau(*jnp.exp(log_theta)).viscosity(shear_rate))

    x = jnp.log(jnp.asarray([theta[k] for k in CARREAU], dtype=jnp.result_type(float)))
    return np.asarray(jax.grad(log_mu)(x), float)


def viscosity(theta: dict, shear_rate: float) -> float:
    """μ(γ̇) (Pa s) of a Carreau (``mu_0, mu_inf, lam, n``) or Newtonian (``mu``) θ_s."""
    if "mu" in theta:
        return float(theta["mu"])
    return float(Carreau(**theta).viscosity(shear_rate))
