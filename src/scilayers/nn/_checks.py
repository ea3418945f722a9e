"""Argument and input-shape checks shared by the networks (private)."""

from __future__ import annotations

import math
import numbers

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array


def positive_int(owner: str, name: str, value, example: int) -> int:
    """``value`` as an ``int`` if it is a positive integer, else a `ValueError` with a fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"{owner}: {name} must be a positive integer (e.g. {name}={example}), got {value!r}"
        )
    return int(value)


def non_negative_int(owner: str, name: str, value, example: int) -> int:
    """``value`` as an ``int`` if it is an integer >= 0, else a `ValueError` with a fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(
            f"{owner}: {name} must be an integer >= 0 (e.g. {name}={example}), got {value!r}"
        )
    return int(value)


def positive_int_tuple(owner: str, name: str, value, ndim: int, example: int) -> tuple[int, ...]:
    """An int or a length-``ndim`` sequence of positive ints, as a tuple of ``ndim`` ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (positive_int(owner, name, value, example),) * ndim
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or len(items) != ndim:
        raise ValueError(
            f"{owner}: {name} must be a positive integer or a tuple of {ndim} positive "
            f"integers (e.g. {name}={example} or {name}={(example,) * ndim}), got {value!r}"
        )
    return tuple(positive_int(owner, name, v, example) for v in items)


def final_scale(owner: str, value) -> float:
    """``value`` as a float if it is finite and >= 0, else a `ValueError` with a fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{owner}: final_scale must be a real number >= 0 (e.g. final_scale=1e-2), "
            f"got {value!r}"
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{owner}: final_scale must be finite and >= 0 (e.g. final_scale=1e-2), got {value!r}"
        )
    return value


def activation(owner: str, value):
    """``value`` if it is callable, else a `ValueError`."""
    if not callable(value):
        raise ValueError(
            f"{owner}: activation must be a callable such as jax.nn.gelu, got {value!r}"
        )
    return value


def scale_last(layer: eqx.Module, scale: float) -> eqx.Module:
    """``layer`` with its ``weight`` and ``bias`` multiplied by ``scale``."""
    if scale == 1.0:
        return layer
    if layer.bias is None:
        return eqx.tree_at(lambda m: m.weight, layer, layer.weight * scale)
    return eqx.tree_at(
        lambda m: (m.weight, m.bias), layer, (layer.weight * scale, layer.bias * scale)
    )


def with_channels(
    owner: str, x, channels: int, spatial_ndim: int, allow_no_channel: bool
) -> tuple[Array, bool]:
    """Bring a single sample to shape ``(channels, *spatial)``.

    Returns the array and whether a channel axis was added (input without channel axis,
    only allowed when ``allow_no_channel`` and ``channels == 1``). Raises `ValueError`
    naming the expected shape otherwise.
    """
    x = jnp.asarray(x)
    spatial = ("n",) if spatial_ndim == 1 else ("H", "W")
    with_c = "(" + ", ".join((str(channels), *spatial)) + ")"
    without_c = "(" + ", ".join(spatial) + ("," if spatial_ndim == 1 else "") + ")"
    if allow_no_channel and x.ndim == spatial_ndim:
        if channels != 1:
            raise ValueError(
                f"{owner}: got input of shape {x.shape} without a channel axis, but the "
                f"network has {channels} input channels; pass shape {with_c}"
            )
        return x[None], True
    if x.ndim == spatial_ndim + 1:
        if x.shape[0] != channels:
            raise ValueError(
                f"{owner}: expected input of shape {with_c} with {channels} channel(s) first, "
                f"got {x.shape}; for a batch of samples use jax.vmap"
            )
        return x, False
    if x.ndim == spatial_ndim:
        raise ValueError(
            f"{owner}: expected a single sample of shape {with_c}, got {x.shape} without a "
            f"channel axis; add one with x[None]"
        )
    expected = f"{with_c} or {without_c}" if allow_no_channel and channels == 1 else with_c
    raise ValueError(
        f"{owner}: expected a single sample of shape {expected}, got {x.shape} "
        f"(rank {x.ndim}); for a batch of samples use jax.vmap"
    )
