"""Tests for scilayers.nn: equivariance, reference convolutions, spectral projections,
initial scale, gradient flow, θ_ml filtering, and argument/shape errors.

Networks are checked in float32 (what they are trained in) whatever jax_enable_x64 says;
the conftest sets jax_numpy_rank_promotion="raise", so implicit broadcasting fails here.
Layers whose weights a test sets itself are built with ``filter_eval_shape`` (structure
only), which skips compiling the random initialiser and keeps the file fast.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scilayers import nn as sln
from scilayers import params


def _abstract(cls, *args, **kwargs):
    """The module's structure with `jax.ShapeDtypeStruct` leaves (no initialiser run)."""
    return eqx.filter_eval_shape(cls, *args, key=jax.random.key(0), **kwargs)


def _filled(module, seed=0, **arrays):
    """``module`` with the named fields set to ``arrays`` and every other array leaf drawn
    uniformly in ±1/sqrt(fan_in), all float32."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            bound = 1.0 / math.sqrt(max(1, math.prod(leaf.shape[1:])))
            return jnp.asarray(rng.uniform(-bound, bound, leaf.shape).astype(np.float32))
        return leaf

    names = tuple(arrays)
    if names:
        module = eqx.tree_at(
            lambda m: tuple(getattr(m, n) for n in names),
            module,
            tuple(jnp.asarray(np.asarray(arrays[n], dtype=np.float32)) for n in names),
        )
    return jax.tree.map(fill, module)


def _normal(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _max_abs(a):
    return float(np.max(np.abs(np.asarray(a))))


@eqx.filter_jit
def _apply(model, x):
    return model(x)


@eqx.filter_jit
def _apply_rolled(model, x, shifts, axes):
    """``model(x)`` and ``model(roll(x, s))`` for every shift ``s``, in one program."""
    rolled = jnp.stack([jnp.roll(x, s, axis=axes) for s in shifts])
    return model(x), jax.vmap(model)(rolled)


# Networks with their real initialiser, built once per (name, final_scale); a sample
# input shape for each.
_CONFIGS = {
    "MLP": (lambda key, s: sln.MLP(5, 3, width=16, key=key, final_scale=s), (5,)),
    "PeriodicCNN1d": (
        lambda key, s: sln.PeriodicCNN1d(width=8, depth=2, key=key, final_scale=s),
        (64,),
    ),
    "PeriodicCNN2d": (
        lambda key, s: sln.PeriodicCNN2d(
            2, 1, width=4, depth=1, kernel_size=(3, 5), key=key, final_scale=s
        ),
        (2, 16, 24),
    ),
    "FNO1d": (
        lambda key, s: sln.FNO1d(width=8, modes=6, depth=2, key=key, final_scale=s),
        (64,),
    ),
}


@functools.cache
def _net(name: str, final_scale: float = 1.0):
    model = _CONFIGS[name][0](jax.random.key(0), final_scale)
    return jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a, np.float32)) if eqx.is_inexact_array(a) else a, model
    )


# --- periodic convolutions against NumPy (float64 references) --------------------------


def _np_circular_conv1d(x, w, b, d):
    """y[o, i] = b[o] + Σ_{c,j} w[o,c,j] x[c, (i + d j - p) mod n], p = d(k-1)//2."""
    _, n = x.shape
    k = w.shape[-1]
    p = d * (k - 1) // 2
    y = np.empty((w.shape[0], n))
    for i in range(n):
        idx = (i + d * np.arange(k) - p) % n
        y[:, i] = b + np.einsum("ocj,cj->o", w, x[:, idx])
    return y


def _np_circular_conv2d(x, w, b, d):
    _, h, wd = x.shape
    kh, kw = w.shape[-2:]
    ph, pw = d[0] * (kh - 1) // 2, d[1] * (kw - 1) // 2
    y = np.empty((w.shape[0], h, wd))
    for i in range(h):
        rows = (i + d[0] * np.arange(kh) - ph) % h
        for j in range(wd):
            cols = (j + d[1] * np.arange(kw) - pw) % wd
            y[:, i, j] = b + np.einsum("ocab,cab->o", w, x[:, rows][:, :, cols])
    return y


@pytest.mark.parametrize(
    ("n", "kernel_size", "dilation"),
    [(3, 5, 2), (64, 4, 1), (128, 5, 2), (128, 1, 1)],
)
def test_periodic_conv1d_matches_numpy_circular_convolution(n, kernel_size, dilation):
    rng = np.random.default_rng(n + 10 * kernel_size + dilation)
    w = rng.standard_normal((3, 2, kernel_size))
    b = rng.standard_normal(3)
    conv = _filled(
        _abstract(sln.PeriodicConv1d, 2, 3, kernel_size, dilation=dilation), weight=w, bias=b
    )
    x = rng.standard_normal((2, n))
    y = _apply(conv, jnp.asarray(x, dtype=jnp.float32))
    assert y.shape == (3, n)
    np.testing.assert_allclose(y, _np_circular_conv1d(x, w, b, dilation), rtol=1e-5, atol=1e-5)


def test_periodic_conv1d_matches_numpy_fft_convolution():
    # Independent of the index formula: circular cross-correlation through the DFT.
    rng = np.random.default_rng(3)
    n, k = 64, 5
    w = rng.standard_normal((1, 1, k))
    conv = _filled(_abstract(sln.PeriodicConv1d, 1, 1, k), weight=w, bias=[0.0])
    x = rng.standard_normal(n)
    kernel = np.zeros(n)
    kernel[(np.arange(k) - k // 2) % n] = w[0, 0]
    expected = np.real(np.fft.ifft(np.fft.fft(x) * np.conj(np.fft.fft(kernel))))
    np.testing.assert_allclose(_apply(conv, x[None].astype(np.float32))[0], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "kernel_size", "dilation"),
    [((8, 12), (3, 2), (2, 1)), ((5, 7), (5, 3), 1), ((2, 3), 3, 2)],
)
def test_periodic_conv2d_matches_numpy_circular_convolution(shape, kernel_size, dilation):
    rng = np.random.default_rng(7)
    conv = _abstract(sln.PeriodicConv2d, 2, 3, kernel_size, dilation=dilation)
    w = rng.standard_normal(conv.weight.shape)
    b = rng.standard_normal(3)
    conv = _filled(conv, weight=w, bias=b)
    x = rng.standard_normal((2, *shape))
    y = _apply(conv, jnp.asarray(x, dtype=jnp.float32))
    expected = _np_circular_conv2d(x, w, b, conv.dilation)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


# --- exact translation equivariance ----------------------------------------------------


def _assert_equivariant(model, x, shifts, axes):
    y, ys = _apply_rolled(model, x, tuple(shifts), axes)
    y, ys = np.asarray(y), np.asarray(ys)
    assert _max_abs(y) > 1e-2, "output too small for a meaningful check"
    for shift, y_shifted in zip(shifts, ys, strict=True):
        np.testing.assert_allclose(y_shifted, np.roll(y, shift, axis=axes), rtol=0, atol=1e-6)
        # and the check has teeth: the output itself is not shift-invariant
        assert _max_abs(y_shifted - y) > 1e-3


@pytest.mark.parametrize("name", ["PeriodicCNN1d", "FNO1d"])
@pytest.mark.parametrize("n", [64, 128])
def test_1d_networks_are_translation_equivariant_at_any_grid_size(name, n):
    _assert_equivariant(_net(name), _normal((n,)), (1, 5, -7, n // 2 + 3), -1)


def test_multichannel_periodic_cnn1d_is_translation_equivariant():
    model = _filled(_abstract(sln.PeriodicCNN1d, 2, 3, width=8, depth=2, kernel_size=4))
    _assert_equivariant(model, _normal((2, 64)), (1, -3, 40), -1)


@pytest.mark.parametrize("shape", [(16, 24), (10, 7)])
def test_periodic_cnn2d_is_translation_equivariant(shape):
    shifts = ((1, 0), (0, -3), (5, 7))
    _assert_equivariant(_net("PeriodicCNN2d"), _normal((2, *shape)), shifts, (-2, -1))


def test_periodic_cnn1d_is_local_and_grid_agnostic():
    # A local periodic CNN applied to a 64-periodic signal on 128 points must give the
    # 64-point output repeated twice: same weights, any grid size.
    model = _net("PeriodicCNN1d")
    x = _normal((64,))
    fine = np.asarray(_apply(model, jnp.tile(x, 2)))
    np.testing.assert_allclose(fine, np.tile(np.asarray(_apply(model, x)), 2), atol=1e-6)


# --- spectral convolution --------------------------------------------------------------


@pytest.mark.parametrize(("n", "modes"), [(64, 5), (128, 5), (8, 5)])
def test_spectral_conv1d_identity_weights_is_low_pass_projection(n, modes):
    eye = np.broadcast_to(np.eye(2)[:, :, None], (2, 2, modes))
    layer = _filled(
        _abstract(sln.SpectralConv1d, 2, 2, modes),
        weight_real=eye,
        weight_imag=np.zeros((2, 2, modes)),
    )
    x = np.random.default_rng(n).standard_normal((2, n))
    x_hat = np.fft.rfft(x, axis=-1)
    x_hat[:, modes:] = 0.0
    expected = np.fft.irfft(x_hat, n=n, axis=-1)
    y = np.asarray(_apply(layer, x.astype(np.float32)))
    np.testing.assert_allclose(y, expected, atol=1e-5)
    if modes == n // 2 + 1:  # every mode kept: the identity
        np.testing.assert_allclose(y, x, atol=1e-5)
    else:  # a projection: applying it twice changes nothing, and it removed something
        np.testing.assert_allclose(_apply(layer, y), y, atol=1e-5)
        assert _max_abs(y - x) > 1e-2


def test_spectral_conv1d_matches_numpy_mode_mixing():
    rng = np.random.default_rng(5)
    n, modes = 32, 6
    wr, wi = rng.standard_normal((2, 2, 3, modes))
    layer = _filled(_abstract(sln.SpectralConv1d, 3, 2, modes), weight_real=wr, weight_imag=wi)
    x = rng.standard_normal((3, n))
    x_hat = np.fft.rfft(x, axis=-1)
    y_hat = np.zeros((2, n // 2 + 1), dtype=complex)
    for k in range(modes):
        y_hat[:, k] = (wr[:, :, k] + 1j * wi[:, :, k]) @ x_hat[:, k]
    expected = np.fft.irfft(y_hat, n=n, axis=-1)
    y = _apply(layer, x.astype(np.float32))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_spectral_conv1d_is_discretisation_invariant():
    # A band-limited input sampled on 64 and 128 points gives the same output function.
    layer = _filled(_abstract(sln.SpectralConv1d, 1, 2, 8))

    def signal(n):
        t = 2 * np.pi * np.arange(n) / n
        u = np.cos(t) + 0.5 * np.sin(3 * t) - 0.3 * np.cos(7 * t) + 0.2 * np.sin(12 * t)
        return u[None].astype(np.float32)

    coarse, fine = _apply(layer, signal(64)), _apply(layer, signal(128))
    assert _max_abs(coarse) > 1e-2
    np.testing.assert_allclose(np.asarray(fine)[:, ::2], coarse, atol=1e-5)


# --- initial scale, gradients, θ_ml ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_final_scale_scales_initial_output(name):
    x = _normal(_CONFIGS[name][1])
    y_full = np.asarray(_apply(_net(name, 1.0), x))
    y_small = np.asarray(_apply(_net(name, 1e-2), x))
    assert _max_abs(y_full) > 1e-2
    np.testing.assert_allclose(y_small, 1e-2 * y_full, rtol=1e-4, atol=1e-8)
    np.testing.assert_array_equal(_apply(_net(name, 0.0), x), np.zeros_like(y_full))


def test_default_final_scale_of_closures_starts_near_zero():
    key = jax.random.key(0)
    x = _normal((64,))
    for model in (
        sln.PeriodicCNN1d(width=8, depth=2, key=key),
        sln.FNO1d(width=8, modes=6, depth=2, key=key),
    ):
        assert _max_abs(_apply(model, x)) < 0.05 * _max_abs(x)


def test_mlp_output_shape_and_gradients_reach_every_weight():
    model = _net("MLP")
    x = _normal((5,))
    assert _apply(model, x).shape == (3,)
    assert len(model.layers) == 3
    assert _apply(jax.vmap(model), jnp.stack([x, 2 * x])).shape == (2, 3)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x)))))(model)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_array))
    assert len(leaves) == 6
    for leaf in leaves:
        assert np.all(np.asarray(leaf) != 0.0), "a weight received no gradient"


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_gradients_reach_every_parameter_array(name):
    x = _normal(_CONFIGS[name][1])
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jnp.sin(3.0 * m(x)))))(_net(name))
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_array))
    assert len(leaves) == len(jax.tree.leaves(eqx.filter(_net(name), eqx.is_array)))
    for leaf in leaves:
        assert np.linalg.norm(np.asarray(leaf)) > 0.0


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_networks_are_pure_theta_ml(name):
    model = _net(name, 1e-2)
    assert not any(params.is_param(x) for x in jax.tree.leaves(model, is_leaf=params.is_param))
    arrays = jax.tree.leaves(eqx.filter(model, eqx.is_array))
    assert arrays and all(jnp.issubdtype(a.dtype, jnp.floating) for a in arrays)
    theta_s, theta_ml, frozen = params.partition(model)
    assert jax.tree.leaves(eqx.filter(theta_s, eqx.is_array)) == []
    assert jax.tree.leaves(eqx.filter(frozen, eqx.is_array)) == []
    assert sum(a.size for a in jax.tree.leaves(theta_ml)) == sum(a.size for a in arrays)


def test_single_channel_input_forms_agree_and_vmap_batches():
    model = _net("PeriodicCNN1d")
    x = _normal((3, 64))
    np.testing.assert_array_equal(_apply(model, x[0]), _apply(model, x[0][None])[0])
    batched = _apply(jax.vmap(model), x)
    np.testing.assert_allclose(batched, np.stack([_apply(model, xi) for xi in x]), atol=1e-6)
    two_out = _filled(_abstract(sln.FNO1d, channels_out=2, width=8, modes=6, depth=1))
    assert _apply(two_out, x[0]).shape == (2, 64)


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda k: sln.MLP(0, 1, key=k), r"in_size must be a positive integer"),
        (lambda k: sln.MLP(2, 1, width=0, key=k), r"width must be a positive integer"),
        (lambda k: sln.MLP(2, 1, width=2.5, key=k), r"width must be a positive integer"),
        (lambda k: sln.MLP(2, 1, depth=-1, key=k), r"depth must be an integer >= 0"),
        (lambda k: sln.MLP(2, 1, activation="relu", key=k), r"activation must be a callable"),
        (lambda k: sln.MLP(2, 1, key=k, final_scale=-1.0), r"final_scale must be finite"),
        (lambda k: sln.MLP(2, 1, key=k, final_scale=float("nan")), r"final_scale"),
        (lambda k: sln.PeriodicConv1d(1, 1, 0, key=k), r"kernel_size must be a positive"),
        (lambda k: sln.PeriodicConv1d(1, 1, 3, key=k, dilation=0), r"dilation must be"),
        (lambda k: sln.PeriodicConv1d(1, 1, True, key=k), r"kernel_size must be a positive"),
        (lambda k: sln.PeriodicConv2d(1, 1, (3, 3, 3), key=k), r"tuple of 2 positive"),
        (lambda k: sln.PeriodicConv2d(1, 1, (3, 0), key=k), r"kernel_size must be a positive"),
        (lambda k: sln.PeriodicCNN1d(channels_in=0, key=k), r"channels_in must be a positive"),
        (lambda k: sln.PeriodicCNN1d(width=0, key=k), r"width must be a positive integer"),
        (lambda k: sln.PeriodicCNN2d(kernel_size=(5,), key=k), r"tuple of 2 positive"),
        (lambda k: sln.SpectralConv1d(1, 1, 0, key=k), r"modes must be a positive integer"),
        (lambda k: sln.FNO1d(depth=0, key=k), r"depth must be a positive integer"),
        (lambda k: sln.FNO1d(modes=-3, key=k), r"modes must be a positive integer"),
    ],
)
def test_bad_constructor_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make(jax.random.key(0))


@pytest.mark.parametrize(
    ("make", "shape", "match"),
    [
        (lambda: _net("MLP"), (4, 5), r"expected a single input of shape \(5,\).*jax\.vmap"),
        (lambda: _net("MLP"), (4,), r"shape \(5,\), got \(4,\)"),
        (lambda: _abstract(sln.PeriodicConv1d, 2, 3, 3), (16,), r"\(2, n\).*x\[None\]"),
        (lambda: _abstract(sln.PeriodicConv1d, 2, 3, 3), (3, 16), r"2 channel\(s\).*jax\.vmap"),
        (lambda: _abstract(sln.PeriodicConv2d, 1, 1, 3), (8, 8), r"\(1, H, W\).*x\[None\]"),
        (lambda: _net("PeriodicCNN1d"), (4, 1, 16), r"\(1, n\) or \(n,\).*jax\.vmap"),
        (lambda: _net("PeriodicCNN1d"), (8, 16), r"shape \(1, n\).*jax\.vmap"),
        (lambda: _abstract(sln.PeriodicCNN1d, 2), (16,), r"pass shape \(2, n\)"),
        (lambda: _abstract(sln.PeriodicCNN2d), (16,), r"\(1, H, W\) or \(H, W\).*jax\.vmap"),
        (lambda: _net("PeriodicCNN2d"), (2, 1, 8, 8), r"rank 4.*jax\.vmap"),
        (lambda: _abstract(sln.SpectralConv1d, 1, 1, 4), (1, 2, 16), r"\(1, n\).*jax\.vmap"),
        (lambda: _net("FNO1d"), (1, 1, 64), r"\(1, n\) or \(n,\).*jax\.vmap"),
        (lambda: _net("FNO1d"), (8,), r"modes=6 needs .* n=10.*modes <= 5"),
        (lambda: _abstract(sln.SpectralConv1d, 1, 1, 16), (1, 16), r"modes <= 9 or a finer"),
    ],
)
def test_wrong_input_shape_raises(make, shape, match):
    model = make()
    with pytest.raises(ValueError, match=match):
        model(np.ones(shape, dtype=np.float32))
