"""Pointwise polynomial closure (the classic parameterisation of subgrid tendencies)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class Polynomial(eqx.Module):
    r"""A pointwise polynomial ``U(x) = c_0 + c_1 x + … + c_d x^d``, applied elementwise.

    The form of the deterministic subgrid parameterisations of Lorenz-96 (Wilks 2005;
    Arnold et al. 2013 use ``d = 3``). As a closure it acts on a whole state and returns a
    tendency of the same shape; its coefficients are θ_ml when trained.

    **Arguments:**

    - `coeffs`: ``(c_0, …, c_d)``, lowest degree first.
    """

    coeffs: Float[Array, " degree_plus_one"]

    def __init__(self, coeffs):
        coeffs = jnp.asarray(coeffs, dtype=jnp.result_type(float))
        if coeffs.ndim != 1 or coeffs.size < 1:
            raise ValueError(f"Polynomial needs a 1-D array of coefficients, got shape "
                             f"{coeffs.shape}.")  # fmt: skip
        self.coeffs = coeffs

    @property
    def degree(self) -> int:
        return int(self.coeffs.shape[0]) - 1

    def __call__(self, x: Array) -> Array:
        out = jnp.zeros_like(x) + self.coeffs[-1]
        for c in self.coeffs[-2::-1]:  # Horner
            out = out * x + c
        return out

    @classmethod
    def fit(cls, x, y, degree: int) -> Polynomial:
        """Least-squares fit of ``y ≈ U(x)`` over all points (any shapes, equal sizes)."""
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if x.size != y.size:
            raise ValueError(f"Polynomial.fit: x has {x.size} values but y has {y.size}.")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("Polynomial.fit: x and y must be finite (found NaN or inf).")
        if degree < 0 or x.size <= degree:
            raise ValueError(f"Polynomial.fit: degree {degree} needs more than {degree} points, "
                             f"got {x.size}.")  # fmt: skip
        vander = np.vander(x, degree + 1, increasing=True)
        coeffs, *_ = np.linalg.lstsq(vander, y, rcond=None)
        return cls(coeffs)
