"""Periodic (circularly padded) convolutions and small translation-equivariant CNNs."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_conv(
    key: PRNGKeyArray, in_channels: int, out_channels: int, kernel: tuple[int, ...]
) -> tuple[Array, Array]:
    """Weight ``(out, in, *kernel)`` and bias ``(out,)``, uniform in ``±1/sqrt(fan_in)``.

    One draw per layer, jitted, so that building a network compiles one small program per
    layer shape rather than one per random call and slice.
    """
    bound = 1.0 / math.sqrt(in_channels * math.prod(kernel))
    n_weight = out_channels * in_channels * math.prod(kernel)
    flat = jax.random.uniform(key, (n_weight + out_channels,), minval=-bound, maxval=bound)
    weight = flat[:n_weight].reshape(out_channels, in_channels, *kernel)
    return weight, flat[n_weight:]


def _circular_conv(
    x: Float[Array, " c *spatial"],
    weight: Float[Array, " o c *kernel"],
    bias: Float[Array, " o"],
    dilation: tuple[int, ...],
) -> Float[Array, " o *spatial"]:
    """Cross-correlation with periodic wrap-around, same spatial size as ``x``.

    ``y[o, i] = b[o] + Σ_{c, j} w[o, c, j] · x[c, (i + d·j − p) mod n`` per spatial axis,
    with ``p = (d·(k − 1)) // 2`` (centred for odd ``k``; one extra tap to the right for
    even ``k``).
    """
    nd = len(dilation)
    pads = [(0, 0)]
    for k, d in zip(weight.shape[2:], dilation, strict=True):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    dtype = jnp.result_type(x, weight)
    x = jnp.pad(x.astype(dtype), pads, mode="wrap")
    y = lax.conv_general_dilated(
        x[None],
        weight.astype(dtype),
        window_strides=(1,) * nd,
        padding="VALID",
        rhs_dilation=dilation,
    )[0]
    return y if bias is None else y + bias.astype(dtype).reshape((-1,) + (1,) * nd)


class PeriodicConv1d(eqx.Module):
    r"""1-D convolution with circular (periodic) padding.

    Computes the cross-correlation

    $$y_{o,i} = b_o + \sum_{c}\sum_{j=0}^{k-1} w_{o,c,j}\, x_{c,\,(i + d j - p) \bmod n},
    \qquad p = \lfloor d(k-1)/2 \rfloor,$$

    so the output has the input's grid size ``n`` and commutes exactly with periodic shifts
    (``roll(x, s) ↦ roll(y, s)``). Any ``n`` works; the layer stores no grid size. Input is
    a single sample of shape ``(in_channels, n)``; batch with `jax.vmap`.

    Weights and bias are initialised uniform in ``±1/sqrt(in_channels·kernel_size)``.

    **Arguments:**

    - `in_channels`, `out_channels`: channel counts (positive ints).
    - `kernel_size`: number of taps ``k`` (positive int).
    - `key`: a JAX PRNG key for initialisation.
    - `dilation`: spacing ``d`` between taps (default 1).
    """

    weight: Float[Array, "out_channels in_channels kernel_size"]
    bias: Float[Array, " out_channels"] | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: int = eqx.field(static=True)
    dilation: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        key: PRNGKeyArray,
        dilation: int = 1,
        use_bias: bool = True,
    ):
        owner = "PeriodicConv1d"
        self.in_channels = _checks.positive_int(owner, "in_channels", in_channels, 1)
        self.out_channels = _checks.positive_int(owner, "out_channels", out_channels, 1)
        self.kernel_size = _checks.positive_int(owner, "kernel_size", kernel_size, 3)
        self.dilation = _checks.positive_int(owner, "dilation", dilation, 1)
        self.weight, self.bias = _init_conv(
            key, self.in_channels, self.out_channels, (self.kernel_size,)
        )
        if not use_bias:
            self.bias = None

    def __call__(self, x: Float[Array, "in_channels n"]) -> Float[Array, "out_channels n"]:
        """Convolve one sample of shape ``(in_channels, n)``."""
        x, _ = _checks.with_channels("PeriodicConv1d", x, self.in_channels, 1, False)
        return _circular_conv(x, self.weight, self.bias, (self.dilation,))


class PeriodicConv2d(eqx.Module):
    r"""2-D convolution with circular (periodic) padding on both axes.

    Computes

    $$y_{o,i,l} = b_o + \sum_{c,j,m} w_{o,c,j,m}\,
    x_{c,\,(i + d_h j - p_h) \bmod H,\,(l + d_w m - p_w) \bmod W},
    \qquad p_\ast = \lfloor d_\ast(k_\ast - 1)/2 \rfloor,$$

    the 2-D analogue of `PeriodicConv1d`: output of the input's grid size ``(H, W)``, exact
    equivariance under periodic shifts along either axis, no grid size stored. Input is a
    single sample of shape ``(in_channels, H, W)``; batch with `jax.vmap`.

    **Arguments:**

    - `in_channels`, `out_channels`: channel counts (positive ints).
    - `kernel_size`: taps per axis, an int or a pair ``(k_h, k_w)``.
    - `key`: a JAX PRNG key for initialisation.
    - `dilation`: tap spacing, an int or a pair ``(d_h, d_w)`` (default 1).
    """

    weight: Float[Array, "out_channels in_channels kh kw"]
    bias: Float[Array, " out_channels"] | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, int] = eqx.field(static=True)
    dilation: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        key: PRNGKeyArray,
        dilation: int | tuple[int, int] = 1,
        use_bias: bool = True,
    ):
        owner = "PeriodicConv2d"
        self.in_channels = _checks.positive_int(owner, "in_channels", in_channels, 1)
        self.out_channels = _checks.positive_int(owner, "out_channels", out_channels, 1)
        self.kernel_size = _checks.positive_int_tuple(owner, "kernel_size", kernel_size, 2, 3)
        self.dilation = _checks.positive_int_tuple(owner, "dilation", dilation, 2, 1)
        self.weight, self.bias = _init_conv(
            key, self.in_channels, self.out_channels, self.kernel_size
        )
        if not use_bias:
            self.bias = None

    def __call__(
        self, x: Float[Array, "in_channels height width"]
    ) -> Float[Array, "out_channels height width"]:
        """Convolve one sample of shape ``(in_channels, H, W)``."""
        x, _ = _checks.with_channels("PeriodicConv2d", x, self.in_channels, 2, False)
        return _circular_conv(x, self.weight, self.bias, self.dilation)


_ODD_ACTIVATIONS = (jnp.tanh, jax.nn.tanh, jnp.sin, jax.nn.soft_sign)


def _cnn_layers(
    conv, channels_in, channels_out, width, depth, kernel_size, scale, key, use_bias=True
):
    """``depth + 1`` convolutions ``channels_in → width → … → channels_out``, the last one's
    initial weights scaled by ``scale``."""
    sizes = [channels_in] + [width] * depth + [channels_out]
    keys = jax.random.split(key, len(sizes) - 1)
    layers = [
        conv(c_in, c_out, kernel_size, key=k, use_bias=use_bias)
        for c_in, c_out, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
    ]
    layers[-1] = _checks.scale_last(layers[-1], scale)
    return tuple(layers)


def _cnn_apply(owner, layers, activation, channels_in, channels_out, spatial_ndim, x):
    x, added = _checks.with_channels(owner, x, channels_in, spatial_ndim, True)
    for layer in layers[:-1]:
        x = activation(layer(x))
    y = layers[-1](x)
    return y[0] if added and channels_out == 1 else y


class PeriodicCNN1d(eqx.Module):
    r"""Translation-equivariant CNN on a periodic 1-D grid, for local closures.

    Computes ``y = C_depth ∘ σ ∘ C_{depth-1} ∘ … ∘ σ ∘ C_0 (x)`` with `PeriodicConv1d`
    layers ``C_i`` of ``kernel_size`` taps: ``channels_in → width``, ``depth − 1`` layers
    ``width → width``, then ``width → channels_out`` (no activation on the output;
    ``depth=0`` is one convolution ``channels_in → channels_out``). Every layer commutes
    with periodic shifts, so the network does too, exactly: ``N(roll(x, s)) =
    roll(N(x), s)``. The receptive field is ``(depth + 1)(kernel_size − 1) + 1`` points;
    the network stores no grid size and runs on any ``n``.

    Input is one sample: shape ``(n,)`` (one channel; then the output is ``(n,)`` if
    ``channels_out == 1``, else ``(channels_out, n)``) or ``(channels_in, n)`` (output
    ``(channels_out, n)``). Batch with `jax.vmap`.

    The last layer's initial weight and bias are multiplied by ``final_scale`` (default
    ``1e-2``), so a closure starts near zero.

    **Arguments:**

    - `channels_in`, `channels_out`: channel counts (default 1).
    - `width`: hidden channels (default 32).
    - `depth`: hidden layers (default 3, so 4 convolutions; 0 is allowed).
    - `kernel_size`: taps per convolution (default 5).
    - `activation`: elementwise activation (default `jax.nn.gelu`).
    - `key`: a JAX PRNG key for initialisation.
    - `final_scale`: factor on the initial last-layer weight and bias (default 1e-2).
    - `use_bias`: if false, no layer has a bias; with an odd activation (``tanh``,
      ``sin``) the network is then odd, ``N(-x) = -N(x)`` (see `is_odd`).
    """

    layers: tuple[PeriodicConv1d, ...]
    activation: Callable
    channels_in: int = eqx.field(static=True)
    channels_out: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)

    def __init__(
        self,
        channels_in: int = 1,
        channels_out: int = 1,
        width: int = 32,
        depth: int = 3,
        kernel_size: int = 5,
        activation: Callable = jax.nn.gelu,
        *,
        key: PRNGKeyArray,
        final_scale: float = 1e-2,
        use_bias: bool = True,
    ):
        owner = "PeriodicCNN1d"
        self.use_bias = bool(use_bias)
        self.channels_in = _checks.positive_int(owner, "channels_in", channels_in, 1)
        self.channels_out = _checks.positive_int(owner, "channels_out", channels_out, 1)
        width = _checks.positive_int(owner, "width", width, 32)
        depth = _checks.non_negative_int(owner, "depth", depth, 3)
        kernel_size = _checks.positive_int(owner, "kernel_size", kernel_size, 5)
        self.activation = _checks.activation(owner, activation)
        scale = _checks.final_scale(owner, final_scale)

        self.layers = _cnn_layers(
            PeriodicConv1d,
            self.channels_in,
            self.channels_out,
            width,
            depth,
            kernel_size,
            scale,
            key,
            self.use_bias,
        )

    @property
    def is_odd(self) -> bool:
        """Whether ``N(-x) = -N(x)`` holds by construction (no biases, odd activation)."""
        return not self.use_bias and any(self.activation is f for f in _ODD_ACTIVATIONS)

    def __call__(
        self, x: Float[Array, " n"] | Float[Array, "channels_in n"]
    ) -> Float[Array, " n"] | Float[Array, "channels_out n"]:
        """Apply the network to one sample of shape ``(n,)`` or ``(channels_in, n)``."""
        return _cnn_apply(
            "PeriodicCNN1d",
            self.layers,
            self.activation,
            self.channels_in,
            self.channels_out,
            1,
            x,
        )


class PeriodicCNN2d(eqx.Module):
    r"""Translation-equivariant CNN on a doubly periodic 2-D grid, for local closures.

    The 2-D analogue of `PeriodicCNN1d`: `PeriodicConv2d` layers ``channels_in → width →
    … → width → channels_out`` (``depth`` hidden layers, activation between layers, none
    on the output), exactly equivariant under periodic shifts along either axis, and
    usable on any grid ``(H, W)``.

    Input is one sample: shape ``(H, W)`` (one channel; output ``(H, W)`` if
    ``channels_out == 1``, else ``(channels_out, H, W)``) or ``(channels_in, H, W)``
    (output ``(channels_out, H, W)``). Batch with `jax.vmap`.

    **Arguments:**

    - `channels_in`, `channels_out`: channel counts (default 1).
    - `width`: hidden channels (default 32).
    - `depth`: hidden layers (default 3, so 4 convolutions; 0 is allowed).
    - `kernel_size`: taps per axis, an int or a pair (default 5).
    - `activation`: elementwise activation (default `jax.nn.gelu`).
    - `key`: a JAX PRNG key for initialisation.
    - `final_scale`: factor on the initial last-layer weight and bias (default 1e-2).
    """

    layers: tuple[PeriodicConv2d, ...]
    activation: Callable
    channels_in: int = eqx.field(static=True)
    channels_out: int = eqx.field(static=True)

    def __init__(
        self,
        channels_in: int = 1,
        channels_out: int = 1,
        width: int = 32,
        depth: int = 3,
        kernel_size: int | tuple[int, int] = 5,
        activation: Callable = jax.nn.gelu,
        *,
        key: PRNGKeyArray,
        final_scale: float = 1e-2,
    ):
        owner = "PeriodicCNN2d"
        self.channels_in = _checks.positive_int(owner, "channels_in", channels_in, 1)
        self.channels_out = _checks.positive_int(owner, "channels_out", channels_out, 1)
        width = _checks.positive_int(owner, "width", width, 32)
        depth = _checks.non_negative_int(owner, "depth", depth, 3)
        kernel_size = _checks.positive_int_tuple(owner, "kernel_size", kernel_size, 2, 5)
        self.activation = _checks.activation(owner, activation)
        scale = _checks.final_scale(owner, final_scale)

        self.layers = _cnn_layers(
            PeriodicConv2d,
            self.channels_in,
            self.channels_out,
            width,
            depth,
            kernel_size,
            scale,
            key,
        )

    def __call__(
        self, x: Float[Array, "height width"] | Float[Array, "channels_in height width"]
    ) -> Float[Array, "height width"] | Float[Array, "channels_out height width"]:
        """Apply the network to one sample of shape ``(H, W)`` or ``(channels_in, H, W)``."""
        return _cnn_apply(
            "PeriodicCNN2d",
            self.layers,
            self.activation,
            self.channels_in,
            self.channels_out,
            2,
            x,
        )
