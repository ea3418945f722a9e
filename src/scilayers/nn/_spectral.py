"""Fourier (spectral) convolution and a 1-D Fourier neural operator."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from ._conv import PeriodicConv1d


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_spectral(
    key: PRNGKeyArray, in_channels: int, out_channels: int, modes: int
) -> tuple[Array, Array]:
    """Real and imaginary weights ``(out, in, modes)``, uniform in ``±1/sqrt(in)``."""
    bound = 1.0 / math.sqrt(in_channels)
    both = jax.random.uniform(
        key, (2, out_channels, in_channels, modes), minval=-bound, maxval=bound
    )
    return both[0], both[1]


def _check_modes(owner: str, modes: int, n: int) -> None:
    if modes > n // 2 + 1:
        raise ValueError(
            f"{owner}: modes={modes} needs a grid of at least n={2 * (modes - 1)} points, "
            f"but got n={n} (which has only n//2+1={n // 2 + 1} Fourier modes); use "
            f"modes <= {n // 2 + 1} or a finer grid"
        )


class SpectralConv1d(eqx.Module):
    r"""Fourier layer: a learned linear map on the lowest Fourier modes (FNO-style).

    Computes

    $$\hat x = \mathrm{rfft}(x),\qquad
    \hat y_{o,k} = \begin{cases}\sum_c R_{o,c,k}\,\hat x_{c,k} & k < \text{modes}\\
    0 & k \ge \text{modes}\end{cases},\qquad y = \mathrm{irfft}(\hat y, n),$$

    with complex weights ``R = weight_real + i·weight_imag`` (stored as two real float
    arrays so that all parameters are real leaves). Modes at or above ``modes`` are
    discarded, so the layer is a global, band-limited convolution. It commutes exactly with
    periodic shifts and stores no grid size: the same weights act on any ``n`` with
    ``n//2 + 1 >= modes`` (otherwise a `ValueError` at trace time). For a band-limited
    input the output is the same function at every resolution (discretisation invariance).
    There is no bias (FNO adds it in the pointwise path).

    Input is one sample of shape ``(in_channels, n)``; batch with `jax.vmap`. Real and
    imaginary weights are initialised uniform in ``±1/sqrt(in_channels)``.

    **Arguments:**

    - `in_channels`, `out_channels`: channel counts (positive ints).
    - `modes`: number of retained Fourier modes ``k = 0, …, modes − 1`` (positive int).
    - `key`: a JAX PRNG key for initialisation.

    Reference: Li et al. (2021), "Fourier Neural Operator for Parametric Partial
    Differential Equations", ICLR.
    """

    weight_real: Float[Array, "out_channels in_channels modes"]
    weight_imag: Float[Array, "out_channels in_channels modes"]
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    modes: int = eqx.field(static=True)

    def __init__(self, in_channels: int, out_channels: int, modes: int, *, key: PRNGKeyArray):
        owner = "SpectralConv1d"
        self.in_channels = _checks.positive_int(owner, "in_channels", in_channels, 1)
        self.out_channels = _checks.positive_int(owner, "out_channels", out_channels, 1)
        self.modes = _checks.positive_int(owner, "modes", modes, 16)
        self.weight_real, self.weight_imag = _init_spectral(
            key, self.in_channels, self.out_channels, self.modes
        )

    def __call__(self, x: Float[Array, "in_channels n"]) -> Float[Array, "out_channels n"]:
        """Apply the Fourier layer to one sample of shape ``(in_channels, n)``."""
        x, _ = _checks.with_channels("SpectralConv1d", x, self.in_channels, 1, False)
        n = x.shape[-1]
        _check_modes("SpectralConv1d", self.modes, n)
        dtype = jnp.result_type(x, self.weight_real)
        x_hat = jnp.fft.rfft(x.astype(dtype), axis=-1)[:, : self.modes]
        weight = self.weight_real.astype(dtype) + 1j * self.weight_imag.astype(dtype)
        y_low = jnp.einsum("ock,ck->ok", weight, x_hat)
        y_hat = jnp.pad(y_low, ((0, 0), (0, n // 2 + 1 - self.modes)))
        return jnp.fft.irfft(y_hat, n=n, axis=-1)


class FNO1d(eqx.Module):
    r"""Fourier neural operator on a periodic 1-D grid, for non-local closures.

    Computes

    $$v_0 = P x,\qquad v_{l+1} = \sigma\big(K_l v_l + W_l v_l + b_l\big),\ l < \text{depth},
    \qquad y = Q v_{\text{depth}},$$

    where ``P`` (``channels_in → width``), ``W_l`` and ``Q`` (``width → channels_out``) are
    pointwise (1×1) convolutions and ``K_l`` are `SpectralConv1d` layers keeping ``modes``
    modes. Every operation commutes with periodic shifts, so the network is exactly
    translation-equivariant, and none stores a grid size: it runs on any ``n`` with
    ``n//2 + 1 >= modes`` (otherwise a `ValueError` saying how to fix it).

    Input is one sample: shape ``(n,)`` (one channel; output ``(n,)`` if
    ``channels_out == 1``, else ``(channels_out, n)``) or ``(channels_in, n)`` (output
    ``(channels_out, n)``). Batch with `jax.vmap`.

    The projection ``Q``'s initial weight and bias are multiplied by ``final_scale``
    (default ``1e-2``), so a closure starts near zero.

    **Arguments:**

    - `channels_in`, `channels_out`: channel counts (default 1).
    - `width`: channels of the hidden representation (default 32).
    - `modes`: Fourier modes kept by each spectral layer (default 16).
    - `depth`: number of Fourier blocks (default 4; at least 1).
    - `activation`: elementwise activation (default `jax.nn.gelu`).
    - `key`: a JAX PRNG key for initialisation.
    - `final_scale`: factor on the initial projection weight and bias (default 1e-2).

    Reference: Li et al. (2021), "Fourier Neural Operator for Parametric Partial
    Differential Equations", ICLR.
    """

    lift: PeriodicConv1d
    spectral: tuple[SpectralConv1d, ...]
    pointwise: tuple[PeriodicConv1d, ...]
    project: PeriodicConv1d
    activation: Callable
    channels_in: int = eqx.field(static=True)
    channels_out: int = eqx.field(static=True)
    modes: int = eqx.field(static=True)

    def __init__(
        self,
        channels_in: int = 1,
        channels_out: int = 1,
        width: int = 32,
        modes: int = 16,
        depth: int = 4,
        activation: Callable = jax.nn.gelu,
        *,
        key: PRNGKeyArray,
        final_scale: float = 1e-2,
    ):
        owner = "FNO1d"
        self.channels_in = _checks.positive_int(owner, "channels_in", channels_in, 1)
        self.channels_out = _checks.positive_int(owner, "channels_out", channels_out, 1)
        width = _checks.positive_int(owner, "width", width, 32)
        self.modes = _checks.positive_int(owner, "modes", modes, 16)
        depth = _checks.positive_int(owner, "depth", depth, 4)
        self.activation = _checks.activation(owner, activation)
        scale = _checks.final_scale(owner, final_scale)

        lkey, pkey, *bkeys = jax.random.split(key, 2 + 2 * depth)
        self.lift = PeriodicConv1d(self.channels_in, width, 1, key=lkey)
        self.spectral = tuple(
            SpectralConv1d(width, width, self.modes, key=k) for k in bkeys[:depth]
        )
        self.pointwise = tuple(PeriodicConv1d(width, width, 1, key=k) for k in bkeys[depth:])
        self.project = _checks.scale_last(
            PeriodicConv1d(width, self.channels_out, 1, key=pkey), scale
        )

    def __call__(
        self, x: Float[Array, " n"] | Float[Array, "channels_in n"]
    ) -> Float[Array, " n"] | Float[Array, "channels_out n"]:
        """Apply the operator to one sample of shape ``(n,)`` or ``(channels_in, n)``."""
        x, added = _checks.with_channels("FNO1d", x, self.channels_in, 1, True)
        _check_modes("FNO1d", self.modes, x.shape[-1])
        v = self.lift(x)
        for spectral, pointwise in zip(self.spectral, self.pointwise, strict=True):
            v = self.activation(spectral(v) + pointwise(v))
        y = self.project(v)
        return y[0] if added and self.channels_out == 1 else y
