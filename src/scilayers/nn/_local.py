"""A closure split into a pointwise (local) network and a small non-local correction."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from ._conv import PeriodicCNN1d


class LocalNonlocal1d(eqx.Module):
    r"""A local closure ``L(x_i)`` plus a non-local correction ``N(x)_i`` on a periodic 1-D grid.

    $$y_i = L(x_i) + N(x)_i,$$

    ``L`` is a `PeriodicCNN1d` with one-tap convolutions: one small network applied at
    every grid point to that point's value alone (a learned ``U(x_i)``, like the cubic
    closure of Arnold et al. 2013, so it extrapolates as a function of ``x_i`` when the
    climate shifts). ``N`` is a narrower `PeriodicCNN1d` with ``kernel_size`` taps that
    sees ``(depth + 1)(kernel_size − 1) + 1`` neighbouring points, for what the local part
    cannot say (e.g. the phase of a passing wave). Both commute with periodic shifts, so
    the sum does too, and neither stores a grid size. Making ``N`` narrower than ``L``
    (`nonlocal_width` < `width`) keeps most of the closure local.

    Input is one sample of shape ``(n,)``; output ``(n,)``. Batch with `jax.vmap`.

    **Arguments:**

    - `width`: hidden channels of the local network (default 16).
    - `nonlocal_width`: hidden channels of the non-local network (default 8).
    - `depth`: hidden layers of each (default 2).
    - `kernel_size`: taps of the non-local network's convolutions (default 3).
    - `activation`: elementwise activation of both (default `jax.nn.gelu`).
    - `key`: a JAX PRNG key for initialisation.
    - `final_scale`: factor on both last layers' initial weights (default 1e-2, so the
      closure starts near zero).
    - `use_bias`: if false, no layer has a bias; with an odd activation the closure is
      odd (`is_odd`).
    """

    local: PeriodicCNN1d
    nonlocal_net: PeriodicCNN1d

    def __init__(
        self,
        width: int = 16,
        nonlocal_width: int = 8,
        depth: int = 2,
        kernel_size: int = 3,
        activation: Callable = jax.nn.gelu,
        *,
        key: PRNGKeyArray,
        final_scale: float = 1e-2,
        use_bias: bool = True,
    ):
        owner = "LocalNonlocal1d"
        _checks.positive_int(owner, "nonlocal_width", nonlocal_width, 8)
        k_local, k_nonlocal = jax.random.split(key)
        common = dict(depth=depth, activation=activation, final_scale=final_scale,
                      use_bias=use_bias)  # fmt: skip
        self.local = PeriodicCNN1d(width=width, kernel_size=1, key=k_local, **common)
        self.nonlocal_net = PeriodicCNN1d(
            width=nonlocal_width, kernel_size=kernel_size, key=k_nonlocal, **common
        )

    @property
    def is_odd(self) -> bool:
        """Whether ``y(-x) = -y(x)`` holds by construction (both parts odd)."""
        return self.local.is_odd and self.nonlocal_net.is_odd

    def __call__(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        """Apply the closure to one sample of shape ``(n,)``."""
        if jnp.ndim(x) != 1:
            raise ValueError(
                f"LocalNonlocal1d: expected one sample of shape (n,), got {jnp.shape(x)}; for a "
                "batch use jax.vmap"
            )
        return self.local(x) + self.nonlocal_net(x)
