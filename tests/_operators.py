"""Exact test "networks" shared by the hybrid and identifiability tests."""

import equinox as eqx
import jax
import jax.numpy as jnp


class SpectralOperator(eqx.Module):
    """A linear "network" ``u ↦ Σ_p w_p ∂_x^p u`` (exact, to test projections)."""

    weights: jax.Array
    length: float = eqx.field(static=True)

    def __call__(self, u):
        n = u.shape[-1]
        ik = 1j * 2 * jnp.pi / self.length * jnp.arange(n // 2 + 1)
        sym = sum(w * ik**p for p, w in enumerate(self.weights))
        return jnp.fft.irfft(sym * jnp.fft.rfft(u), n)
