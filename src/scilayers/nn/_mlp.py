"""Multilayer perceptron for pointwise closures and parameter heads."""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _linear(key: PRNGKeyArray, in_size: int, out_size: int, scale: float) -> eqx.nn.Linear:
    """`equinox.nn.Linear` with its weight and bias multiplied by ``scale``.

    Jitted, so that building a network compiles one small program per layer shape rather
    than one per random call.
    """
    return _checks.scale_last(eqx.nn.Linear(in_size, out_size, key=key), scale)


class MLP(eqx.Module):
    r"""Fully connected network acting on one feature vector.

    Computes ``y = L_depth ∘ σ ∘ L_{depth-1} ∘ … ∘ σ ∘ L_0 (x)`` with affine layers
    ``L_i(h) = W_i h + b_i``: ``depth`` hidden layers of ``width`` units, each followed by
    the activation ``σ``, then a linear output layer (no activation on the output).
    ``depth=0`` is a single affine map. Operates on a single sample of shape
    ``(in_size,)``; batch with `jax.vmap`.

    Weights are initialised as in `equinox.nn.Linear` (uniform in ``±1/sqrt(fan_in)``); the
    output layer's weight and bias are then multiplied by ``final_scale``, so that the
    initial output is ``final_scale`` times that of the unscaled network. A closure that
    should start near zero uses e.g. ``final_scale=1e-2``.

    **Arguments:**

    - `in_size`: number of input features (positive int).
    - `out_size`: number of output features (positive int).
    - `width`: units per hidden layer (default 64).
    - `depth`: number of hidden layers (default 2, so 3 affine layers; 0 is allowed).
    - `activation`: elementwise activation (default `jax.nn.gelu`); may be an
      `equinox.Module` with its own learnable arrays.
    - `key`: a JAX PRNG key for initialisation.
    - `final_scale`: factor on the initial output-layer weight and bias (default 1.0).
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: Callable
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width: int = 64,
        depth: int = 2,
        activation: Callable = jax.nn.gelu,
        *,
        key: PRNGKeyArray,
        final_scale: float = 1.0,
    ):
        owner = "MLP"
        self.in_size = _checks.positive_int(owner, "in_size", in_size, 4)
        self.out_size = _checks.positive_int(owner, "out_size", out_size, 1)
        self.width = _checks.positive_int(owner, "width", width, 64)
        self.depth = _checks.non_negative_int(owner, "depth", depth, 2)
        self.activation = _checks.activation(owner, activation)
        scale = _checks.final_scale(owner, final_scale)

        sizes = [self.in_size] + [self.width] * self.depth + [self.out_size]
        keys = jax.random.split(key, len(sizes) - 1)
        scales = [1.0] * (len(sizes) - 2) + [scale]
        self.layers = tuple(
            _linear(k, n_in, n_out, s)
            for n_in, n_out, k, s in zip(sizes[:-1], sizes[1:], keys, scales, strict=True)
        )

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        """Apply the network to one input vector of shape ``(in_size,)``."""
        x = jnp.asarray(x)
        if x.shape != (self.in_size,):
            raise ValueError(
                f"MLP: expected a single input of shape ({self.in_size},), got {x.shape}; "
                "for a batch of samples use jax.vmap"
            )
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)
